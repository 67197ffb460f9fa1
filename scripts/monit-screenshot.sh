#!/usr/bin/env bash
# Take docs/monit.png, the README's picture of `herd monit`: a throwaway
# daemon (temp HERD_HOME) with two apps of the test fixture server under a
# little HTTP traffic, monit in a 120x44 tmux pane, the pane's colours
# (`capture-pane -e`) turned into HTML (scripts/ansi2html.py) and
# photographed by headless Chromium. Needs tmux, chromium, curl, python3.
# Not part of CI. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p herd
herd=$PWD/target/debug/herd
worker=$PWD/target/debug/herd-test-worker
work=$(mktemp -d /tmp/herd-monit-shot.XXXXXX)
sock=herd-monit-shot-$$
traffic=
cleanup() {
  [ -n "$traffic" ] && kill "$traffic" 2>/dev/null || true
  tmux -L "$sock" kill-server 2>/dev/null || true
  rm -f "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/$sock"
  HERD_HOME=$work/home "$herd" kill >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export HERD_HOME=$work/home

"$herd" start --name web --listen 127.0.0.1:0 -i 4 "$worker" -- --log-requests >/dev/null
"$herd" start --name api --listen 127.0.0.1:0 -i 2 "$worker" >/dev/null
addr=$("$herd" list --json | python3 -c 'import json,sys; print([a for a in json.load(sys.stdin) if a["name"]=="web"][0]["listen"][0])')
( while :; do curl -s "http://$addr/" >/dev/null; curl -s "http://$addr/env" >/dev/null; curl -s "http://$addr/slow?ms=20" >/dev/null; sleep 0.05; done ) &
traffic=$!

tmux -L "$sock" -f /dev/null new-session -d -x 120 -y 44 -e "HERD_HOME=$HERD_HOME" "$herd monit"
sleep 40   # let the sparklines fill a little
tmux -L "$sock" capture-pane -e -p > "$work/screen.txt"
python3 scripts/ansi2html.py < "$work/screen.txt" > "$work/screen.html"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --hide-scrollbars --screenshot="$PWD/docs/monit.png" --window-size=1000,700 "file://$work/screen.html" 2>/dev/null
echo "wrote docs/monit.png"
