#!/usr/bin/env bash
# Reloads of apps that listen by themselves, under fresh-connection load on
# loopback: how many connections fail, and when.
#
# - bun, deno: `herd run -i 2` of tests/runtimes/{bun,deno}-server.ts, which listen
#   with reusePort (SO_REUSEPORT): herd reloads them start-first. Run with
#   net.ipv4.tcp_migrate_req at each value of MIGRATE (default: 0, the kernel's
#   default; see the README's "Which reload an app gets").
# - fork: `herd run -i 1` of tests/runtimes/python-server.py, which binds its port
#   alone (no SO_REUSEPORT): herd reloads it stop-first (pm2's restart); the
#   connections refused while the one instance restarts are its downtime.
#
#   bash bench/reload-reuseport.sh                          # 20 reloads per case
#   RELOADS=2 CASES="bun fork" bash bench/reload-reuseport.sh
#
# Each case runs in a network namespace of its own (`unshare -n`, hence root), where
# tcp_migrate_req is set: the machine's own setting is never touched. In it: herd,
# bench/fresh_load.py (4 threads, a new connection per request) and RELOADS SIGHUPs,
# each after the previous reload finished. Needs: `npm ci --prefix tests/runtimes`,
# python3, unshare (util-linux). herd is $CARGO_TARGET_DIR/release/herd (built unless
# SKIP_BUILD=1; or HERD=path). On exit everything the script started is ended by pid.
# Prints one line per case: the load's counts by outcome and its failure windows
# ([start s, length ms, failures]).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HERD_GIVEN="${HERD:-}"
HERD="${HERD:-$TARGET/release/herd}"
RELOADS="${RELOADS:-20}"
CASES="${CASES:-bun deno fork}"
MIGRATE="${MIGRATE:-0}"
PORT="${PORT:-18950}"
BIN="$ROOT/tests/runtimes/node_modules/.bin"

if [ "${1:-}" = "--case" ]; then
  # One case, inside its namespace: --case CASE MIGRATE
  case_=$2 migrate=$3
  ip link set lo up 2>/dev/null || python3 - <<'PY'
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sH", b"lo", 0)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
PY
  echo "$migrate" > /proc/sys/net/ipv4/tcp_migrate_req
  instances=2
  case $case_ in
    bun) cmd=("$BIN/bun" "$ROOT/tests/runtimes/bun-server.ts") ;;
    deno) cmd=("$BIN/deno" run --allow-net --allow-env --unstable-net "$ROOT/tests/runtimes/deno-server.ts") ;;
    fork) cmd=(python3 "$ROOT/tests/runtimes/python-server.py"); instances=1 ;;
    *) echo "unknown case $case_ (bun, deno, fork)" >&2; exit 2 ;;
  esac
  err=$(mktemp)
  PORT=$PORT VERSION=1 "$HERD" run -i "$instances" -- "${cmd[@]}" >/dev/null 2>"$err" &
  herd=$!
  load=
  cleanup() {
    set +e
    [ -n "$load" ] && kill "$load" 2>/dev/null
    kill -INT "$herd" 2>/dev/null
    wait
    rm -f "$err" "$err.load"
  }
  trap cleanup EXIT
  for _ in $(seq 200); do [ "$(grep -c ' ready ' "$err")" -ge "$instances" ] && break; sleep 0.1; done
  python3 "$ROOT/bench/fresh_load.py" "$PORT" $((RELOADS * 30 + 30)) > "$err.load" &
  load=$!
  sleep 1
  for i in $(seq "$RELOADS"); do
    kill -HUP $herd
    for _ in $(seq 300); do [ "$(grep -c 'reload finished\|reload aborted' "$err")" -ge "$i" ] && break; sleep 0.1; done
    sleep 0.5
  done
  kill -TERM $load; wait $load || true
  load=
  echo "$case_ -i $instances tcp_migrate_req=$migrate reloads=$(grep -c 'reload finished' "$err")/$RELOADS" \
    "restart=$(grep -c 'is a restart' "$err") $(cat "$err.load")"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then echo "run as root: each case needs a network namespace (unshare -n)" >&2; exit 2; fi
if [ -z "${SKIP_BUILD:-}" ] && [ -z "$HERD_GIVEN" ]; then
  CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet --bin herd
fi
for case_ in $CASES; do
  if [ "$case_" = fork ]; then migrates=0; else migrates=$MIGRATE; fi
  for migrate in $migrates; do
    unshare -n env HERD="$HERD" RELOADS="$RELOADS" PORT="$PORT" bash "$0" --case "$case_" "$migrate"
  done
done
