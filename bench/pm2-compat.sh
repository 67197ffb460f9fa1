#!/usr/bin/env bash
# By hand, not CI: the real pm2 process files of tests/pm2-files/ under pm2 7
# and under herd side by side (one after the other, private PM2_HOME /
# HERD_HOME / HOME, the same ports), and a table of what a user can observe
# that differs: jlist count and status fields, env keys, ports answering, log
# file names, and a verb on the file. Only the daemons it started are stopped.
#
#   bash bench/pm2-compat.sh [CASE...] > bench/results/pm2-compat.md
#
# pm2 7 comes from npm into /tmp/pm2-bench unless PM2 names a pm2 binary;
# herd is built with cargo (CARGO_TARGET_DIR, default target/) unless HERD
# names a herd binary.
set -euo pipefail
cd "$(dirname "$0")/.."

PM2=${PM2:-/tmp/pm2-bench/bin/pm2}
if [ ! -x "$PM2" ]; then
    echo "installing pm2 7 into /tmp/pm2-bench" >&2
    npm i -g pm2@7 --prefix /tmp/pm2-bench >&2
    PM2=/tmp/pm2-bench/bin/pm2
fi
if [ -z "${HERD:-}" ]; then
    cargo build --bin herd >&2
    HERD=${CARGO_TARGET_DIR:-target}/debug/herd
fi
for need in node npm python3; do
    command -v "$need" >/dev/null || { echo "pm2-compat: $need is needed" >&2; exit 1; }
done
# (`pm2 --version` would start a daemon: read its package.json instead.)
pkg="$(dirname "$(readlink -f "$PM2")")/../package.json"
echo "pm2 $(node -p "require('$pkg').version"), $("$HERD" --version)" >&2
exec nice -n 19 python3 bench/pm2_compat.py "$PM2" "$HERD" "$@"
