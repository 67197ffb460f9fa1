#!/usr/bin/env bash
# herd run's in-place upgrade (SIGUSR2, issue 14.3) under fresh-connection load: how long
# from the signal to the app resumed on the new binary, how long the app was paused (not
# accepting: clients wait in the kernel's listen queue), and what the clients saw (failures,
# latency). Two apps: the fixture worker with LISTEN_FDS (workers accept themselves: herd is
# out of the data path) and a Node app in round-robin (herd accepts every connection).
# By hand only: never part of the test suite.
#
#   bash bench/upgrade.sh                  # ~1 min; output in bench/results/upgrade-*.txt
#   UPGRADES=20 THREADS=8 bash bench/upgrade.sh
#
# herd is $CARGO_TARGET_DIR/release/herd (built with `cargo build --release` unless
# SKIP_BUILD=1; or HERD=path, WORKER=path). Needs python3 and node. Everything runs under a
# temp dir; on exit the script stops the herd it started (by pid) and removes the dir.
# Loopback only: port $PORT (default 18700) for the Node app, an ephemeral one otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HERD="${HERD:-$TARGET/release/herd}"
WORKER="${WORKER:-$TARGET/release/herd-test-worker}"
UPGRADES="${UPGRADES:-10}"
THREADS="${THREADS:-4}"
PORT="${PORT:-18700}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p herd -p herd-test-worker --bins >&2
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p bench/results
OUT="bench/results/upgrade-$STAMP.txt"
TMP="$(mktemp -d /tmp/herd-bench-upgrade.XXXXXX)"
HERD_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$HERD_PID" ] && kill -0 "$HERD_PID" 2>/dev/null; then
    kill -TERM "$HERD_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$HERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HERD_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT INT TERM

cat >"$TMP/app.js" <<'EOF'
'use strict';
require('node:http').createServer((req, res) => {
  res.end(`${process.pid}\n`);
}).listen(Number(process.env.PORT));
EOF

# The load: THREADS threads, one fresh connection per request, until the file `stop` exists.
cat >"$TMP/load.py" <<'EOF'
import json, os, socket, sys, threading, time
addr, threads, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(':', 1)
lat, fails, lock = [], {}, threading.Lock()
def run():
    while not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            data = b''
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            ok = data.startswith(b'HTTP/1.1 200')
            err = None if ok else 'status'
        except OSError as e:
            err = type(e).__name__
        with lock:
            if err:
                fails[err] = fails.get(err, 0) + 1
            else:
                lat.append(time.monotonic() - t0)
ts = [threading.Thread(target=run) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0
print(json.dumps({'ok': len(lat), 'failed': fails, 'p50_ms': round(q(0.5), 2),
                  'p99_ms': round(q(0.99), 2), 'max_ms': round(q(1.0), 2)}))
EOF

wait_for() {  # FILE PATTERN COUNT TIMEOUT_S
  local n
  for _ in $(seq $(($4 * 20))); do
    n=$(grep -c -- "$2" "$1" || true)
    [ "$n" -ge "$3" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $3 × '$2' in $1" >&2
  tail -20 "$1" >&2
  return 1
}

bench() {  # NAME ARGS...
  local name=$1; shift
  local dir="$TMP/$name"
  mkdir -p "$dir"
  cp "$HERD" "$dir/herd"
  (cd "$dir" && PORT=$PORT exec "$dir/herd" "$@" >"$dir/out" 2>"$dir/err") &
  HERD_PID=$!
  wait_for "$dir/err" " ready (pid" 2 30
  local addr
  addr=$(sed -n 's/^herd: listening on \([0-9.:]*\).*/\1/p' "$dir/err" | head -1)
  [ -n "$addr" ] || addr="127.0.0.1:$PORT"
  python3 "$TMP/load.py" "$addr" "$THREADS" "$dir/stop" >"$dir/load.json" &
  local load=$!
  sleep 2
  for i in $(seq "$UPGRADES"); do
    cp "$HERD" "$dir/herd.new" && mv "$dir/herd.new" "$dir/herd"
    kill -USR2 "$HERD_PID"
    wait_for "$dir/err" "upgraded in place" "$i" 30
    sleep 0.3
  done
  sleep 1
  touch "$dir/stop"
  wait "$load"
  kill -TERM "$HERD_PID"
  wait "$HERD_PID" || true
  HERD_PID=""
  python3 - "$name" "$dir/err" "$dir/load.json" <<'EOF'
import json, re, statistics, sys
name, err, load = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
def ms(s):
    v, unit = re.match(r'([0-9.]+) ?(\S+)', s).groups()
    return float(v) * {'ms': 1, 's': 1000, 'µs': 0.001, 'us': 0.001}.get(unit, 1)
total, paused = [], []
for line in open(err):
    m = re.search(r'upgraded in place: .*; (.+) from SIGUSR2, app paused (.+)\)$', line)
    if m:
        total.append(ms(m.group(1))); paused.append(ms(m.group(2)))
med = lambda v: round(statistics.median(v), 1)
print(f"{name}: {len(total)} upgrades; SIGUSR2 → resumed median {med(total)} ms (max {max(total):.1f}); "
      f"app paused median {med(paused)} ms (max {max(paused):.1f}); load {load['ok']} requests, "
      f"failed {sum(load['failed'].values())} {load['failed'] or ''}, latency p50 {load['p50_ms']} ms, "
      f"p99 {load['p99_ms']} ms, max {load['max_ms']} ms")
EOF
}

{
  echo "# herd run in-place upgrade, $STAMP, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# herd: $HERD ($(stat -c %s "$HERD") bytes); $UPGRADES upgrades per app, $THREADS load threads"
  bench listen-fds run -i 2 --listen 127.0.0.1:0 --wait-ready -- "$WORKER" --notify-ready
  bench node-round-robin run -i 2 --balance round-robin -- node "$TMP/app.js"
} | tee "$OUT"
