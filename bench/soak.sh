#!/usr/bin/env bash
# Soak (issue 15.6), by hand: 30 minutes of steady fresh-connection load on
# two apps under one herd daemon, a rolling reload of both every minute, a
# kill -9 of a random worker every 10 s, and each minute the RSS, PSS and fd
# count of every herd process (and the workers'). What it does and how to
# read it: bench/soak.py. Runs niced (the machine is shared).
#
#   bash bench/soak.sh                  # the issue's run (30 min)
#   bash bench/soak.sh --minutes 3      # any soak.py option
#
# Builds herd and the fixture server in release mode first (SKIP_BUILD=1 to
# use what is built). CARGO_TARGET_DIR (default: target/) says where.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  nice -n 10 cargo build --release -p herd -p herd-test-worker
fi
command -v node >/dev/null || { echo "soak.sh: needs node (the Node app is examples/node/hello.js)" >&2; exit 1; }
exec nice -n 10 python3 bench/soak.py "$@"
