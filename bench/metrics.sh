#!/usr/bin/env bash
# The cost of `herd daemon --metrics` (issue 9, item 7): the daemon's CPU and
# RSS with 20 apps x 2 workers, metrics off, against the same with metrics on
# while the status page is "open" (its /api/apps poll every second, as the
# page does) and Prometheus scrapes /metrics every 5 s. Only the daemon's own
# process is measured (its workers and the pollers are not counted).
#
#   bash bench/metrics.sh                # DURATION=60 s per setup, REPS=2
#   DURATION=30 REPS=1 bash bench/metrics.sh
#
# Hand-run, never part of the test suite. Every process it starts is stopped
# by its pid (the daemon by `herd kill` in its own HERD_HOME); only loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-60}"
REPS="${REPS:-2}"
APPS="${APPS:-20}"
PORT="${BENCH_METRICS_PORT:-18432}"
TARGET="${CARGO_TARGET_DIR:-target}"
HERD="${HERD:-$TARGET/release/herd}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release -p herd; fi
HERD="$(realpath "$HERD")"
mkdir -p bench/results
out=bench/results/metrics.txt
tick=$(getconf CLK_TCK)

pollers=()
home=""
daemon=""
cleanup() {
  for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; done
  pollers=()
  if [ -n "$home" ]; then
    HERD_HOME="$home" timeout 30 "$HERD" kill >/dev/null 2>&1 || true
    if [ -n "$daemon" ]; then
      for _ in $(seq 100); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$daemon" 2>/dev/null || true
      wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$home"
  fi
  home=""; daemon=""
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# measure MODE: start a daemon, 20 apps x 2 workers, measure DURATION seconds.
measure() {
  local mode=$1
  home=$(mktemp -d /tmp/herd-bench-metrics.XXXXXX)
  local args=(daemon)
  [ "$mode" = on ] && args+=(--metrics "127.0.0.1:$PORT")
  HERD_HOME="$home" setsid "$HERD" "${args[@]}" >"$home/daemon.out" 2>&1 &
  daemon=$!
  for _ in $(seq 50); do [ -S "$home/herd.sock" ] && break; sleep 0.1; done
  for i in $(seq "$APPS"); do
    HERD_HOME="$home" "$HERD" start --name "app$i" -i 2 --ready-delay 100ms sleep -- 100000 >/dev/null
  done
  # All 40 workers online.
  for _ in $(seq 100); do
    n=$(HERD_HOME="$home" "$HERD" list --json | python3 -c 'import json,sys; print(sum(a["online"] for a in json.load(sys.stdin)))')
    [ "$n" = $((APPS * 2)) ] && break
    sleep 0.2
  done
  if [ "$mode" = on ]; then
    ( while :; do curl -s -o /dev/null "http://127.0.0.1:$PORT/api/apps"; sleep 1; done ) &
    pollers+=($!)
    ( while :; do curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics"; sleep 5; done ) &
    pollers+=($!)
  fi
  sleep 5 # settle: the first samples, the first polls
  local t0 c0 sum=0 max=0 n=0 r
  t0=$(date +%s.%N); c0=$(cpu_ticks "$daemon")
  for _ in $(seq "$DURATION"); do
    r=$(rss_kb "$daemon"); sum=$((sum + r)); n=$((n + 1)); [ "$r" -gt "$max" ] && max=$r
    sleep 1
  done
  local c1 t1
  c1=$(cpu_ticks "$daemon"); t1=$(date +%s.%N)
  local metrics_bytes=-
  [ "$mode" = on ] && metrics_bytes=$(curl -s "http://127.0.0.1:$PORT/metrics" | wc -c)
  python3 - "$mode" "$c0" "$c1" "$tick" "$t0" "$t1" "$sum" "$n" "$max" "$metrics_bytes" <<'EOF' | tee -a "$out"
import sys
mode, c0, c1, tick, t0, t1, s, n, mx, mb = sys.argv[1:]
cpu = (int(c1) - int(c0)) / int(tick) / (float(t1) - float(t0)) * 100
print(f"{mode:>4}  cpu {cpu:5.2f} % of a core   rss avg {int(s) / int(n) / 1024:5.2f} MiB   max {int(mx) / 1024:5.2f} MiB   /metrics {mb} bytes")
EOF
  cleanup
}

{
  echo "== $(date -u +%FT%TZ) herd $(git rev-parse --short HEAD); $APPS apps x 2 workers; ${DURATION}s per run; load $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$out"
for rep in $(seq "$REPS"); do
  measure off
  measure on
done
