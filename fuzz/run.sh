#!/usr/bin/env bash
# Fuzz herd's parsers with cargo-fuzz (libFuzzer), one target at a time.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 600 s each, every target
#
# Installs cargo-fuzz when it is missing (needs a nightly toolchain:
# `rustup toolchain install nightly`). Each target runs under `nice -n 19`,
# and without a network where `unshare -n` works (a listen address with a
# host name would otherwise be resolved by DNS). The corpus each run grows
# is kept in fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET starts it.
# A crash is saved in fuzz/artifacts/TARGET/: fix it, then keep the input as
# fuzz/regressions/TARGET/<what-it-found> — tests/it/fuzz_regressions.rs runs
# every saved input in CI. What each target asserts: fuzz/src/lib.rs.
#
# Environment: CARGO_TARGET_DIR (default: target/fuzz beside the workspace's),
# FUZZ_JOBS (parallel libFuzzer jobs per target, default 1),
# FUZZ_SANITIZER (address, or none for speed; default address).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^herd-fuzz$')
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/run.sh: cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  nice -n 19 cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(cd .. && pwd)/target/fuzz}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
parallel=()
if [ "$jobs" -gt 1 ]; then
  parallel=(-jobs="$jobs" -workers="$jobs")
fi

# Without a network when we can: nothing a target runs may reach one.
offline=()
if unshare -n true 2>/dev/null; then
  offline=(unshare -n)
elif unshare -rn true 2>/dev/null; then
  offline=(unshare -rn)
fi

# Build every target first, with the network (crates may need fetching);
# the runs below are offline and only find the build done.
echo "== building ${#targets[@]} targets (sanitizer $sanitizer)" >&2
for t in "${targets[@]}"; do
  nice -n 19 cargo +nightly fuzz build --sanitizer "$sanitizer" "$t" >&2
done

summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f ! -name '*.log' | wc -l)
  echo "== $t: ${seconds}s" >&2
  start=$(date +%s)
  log="artifacts/$t/last-run.log"
  set +e
  CARGO_NET_OFFLINE=true nice -n 19 "${offline[@]}" cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" \
    "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" "${parallel[@]}" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  after=$(find "artifacts/$t" -type f ! -name '*.log' | wc -l)
  # (a run that never started has no stats: no match is not an error)
  execs=$({ grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" || true; } | awk '{s+=$2} END {print s+0}')
  cov=$({ grep -o 'cov: [0-9]*' "$log" || true; } | tail -n 1 | awk '{print $2}')
  line="$t: ${took}s, ${execs} inputs, coverage ${cov:-?}, exit $rc, new crash files $((after - before))"
  echo "   $line" >&2
  summary+=("$line")
done
printf '\n== summary\n' >&2
printf '%s\n' "${summary[@]}"
