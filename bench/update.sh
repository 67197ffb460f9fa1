#!/usr/bin/env bash
# `herd update` (issue 14.3) with many apps: the daemon and each app's supervisor replaced
# in place by a new copy of the herd binary (a new inode at the same path, as a package
# upgrade does), under fresh-connection load on the first app. Prints the time the daemon
# took to serve again, each app's time (herd update's own lines), the whole command's
# time, and what the clients saw. By hand only: never part of the test suite.
#
#   bash bench/update.sh                  # ~1 min; output in bench/results/update-*.txt
#   APPS=20 UPDATES=3 bash bench/update.sh
#
# herd is $CARGO_TARGET_DIR/release/herd (built with `cargo build --release` unless
# SKIP_BUILD=1; or HERD=path, WORKER=path). The daemon runs from a copy under a temp dir,
# which the script replaces before each update. Needs python3. On exit the script runs
# `herd kill` on its own HERD_HOME, stops its load by pid and removes the temp dir.
# Loopback only: ports $PORT.. (default 18800) for the apps.
#
# Measured (3 Dec 2026, release build under nice -n 19, 2 cores shared with other
# builds, load average 4-9; 20 apps of the fixture worker, 1 worker each, 4 threads of
# fresh-connection load on app0), three updates in a row:
#   herd update in all:          367 ms, 275 ms, 229 ms
#   the daemon serving again:     21 ms,  41 ms,  18 ms (same pid, new binary)
#   per app (supervisor exec'd,   median 10 / 10 / 8 ms, max 78 / 21 / 18 ms
#     app resumed, seen serving)
#   load on app0: 68,260 requests, 0 failed (no failure window)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SRC_HERD="${HERD:-$TARGET/release/herd}"
WORKER="${WORKER:-$TARGET/release/herd-test-worker}"
APPS="${APPS:-20}"
UPDATES="${UPDATES:-3}"
THREADS="${THREADS:-4}"
PORT="${PORT:-18800}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p herd -p herd-test-worker --bins >&2
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p bench/results
OUT="bench/results/update-$STAMP.txt"
TMP="$(mktemp -d /tmp/herd-bench-update.XXXXXX)"
export HERD_HOME="$TMP/home"
HERD="$TMP/bin/herd"
LOAD_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
  fi
  timeout 60 "$SRC_HERD" kill >/dev/null 2>&1 || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT INT TERM

mkdir -p "$TMP/bin" "$HERD_HOME"
put_new_binary() {
  cp "$SRC_HERD" "$TMP/bin/herd.new"
  mv "$TMP/bin/herd.new" "$HERD"
}
put_new_binary

{
  echo "# bench/update.sh $STAMP: $APPS apps, $UPDATES updates, $THREADS load threads"
  echo "# $(uname -r), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"

for i in $(seq 0 $((APPS - 1))); do
  "$HERD" start --name "app$i" --listen "127.0.0.1:$((PORT + i))" --ready-delay 100ms \
    "$WORKER" >/dev/null
done
"$HERD" list >/dev/null

python3 bench/fresh_load.py "$PORT" 600 "$THREADS" >"$TMP/load.json" &
LOAD_PID=$!
sleep 2

for u in $(seq 1 "$UPDATES"); do
  put_new_binary
  start=$(date +%s%N)
  "$SRC_HERD" update >"$TMP/update.txt"
  end=$(date +%s%N)
  echo "update $u: $(( (end - start) / 1000000 )) ms in all" | tee -a "$OUT"
  sed 's/^/  /' "$TMP/update.txt" | tee -a "$OUT"
  python3 - "$TMP/update.txt" <<'EOF' | tee -a "$OUT"
import re, sys
ms = []
for line in open(sys.argv[1]):
    m = re.search(r"upgraded in ([0-9.]+) (ms|s)\b", line)
    if m:
        ms.append(float(m.group(1)) * (1000 if m.group(2) == "s" else 1))
if ms:
    ms.sort()
    print(f"  per app: median {ms[len(ms) // 2]:.0f} ms, max {ms[-1]:.0f} ms, sum {sum(ms):.0f} ms over {len(ms)} apps")
EOF
  sleep 1
done

kill -TERM "$LOAD_PID"
wait "$LOAD_PID" || true
LOAD_PID=""
echo "load on app0: $(cat "$TMP/load.json")" | tee -a "$OUT"
echo "# written to $OUT"
