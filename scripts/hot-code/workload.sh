#!/bin/bash
# What the hot-code profile runs (scripts/hot-code/profile.sh sources this):
# herd's daemon and app supervisors through bench/daemon.sh's memory scenario
# ("steady": start apps, list, idle), then through the rest of the verbs
# ("verbs"); in between, what an idle herd runs once it has let go of its
# code pages ("idle", first in the order). `snap PHASE` records the text pages the daemon and the
# supervisors have mapped so far; `cli` runs the CLI from its own copy of the
# binary, so that its pages are not counted.
EX="$ROOT/examples/node"
RT="$ROOT/tests/runtimes"
serving() { for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 is not serving" >&2; return 1; }
hits() { for _ in $(seq "${2:-20}"); do curl -fs -o /dev/null "http://127.0.0.1:$1/" || true; done; }
pid_of() { cat "$1" 2>/dev/null | tr -dc 0-9; }

# --- steady: what bench/daemon.sh measures ------------------------------------
daemon
PORT=$((BASE + 1)) cli start "$EX/hello.js" --name hello -i 2 >/dev/null
for i in 1 2 3 4 5; do PORT=$((BASE + 10 + i)) cli start "$EX/hello.js" --name "h$i" -i 1 >/dev/null; done
serving $((BASE + 1)); hits $((BASE + 1)) 50; hits $((BASE + 11)) 10
cli list >/dev/null; cli list --json >/dev/null; cli jlist >/dev/null
sleep 12 # the samplers and timers of an idle herd
cli list >/dev/null
snap steady
# --- idle: what runs once each process has let go of its code (Trim) ----------
cli list >/dev/null # each process trims Trim::QUIET after this
python3 "$HERE/hot_code.py" evict-after-trim "$PROFILED" $(herd_pids)
sleep 6
snap idle
cli delete all >/dev/null
snap steady
cli kill >/dev/null

# --- verbs: everything else a daemon and a supervisor do ----------------------
METRICS=127.0.0.1:$((BASE + 99))
DAEMON_ARGS="--metrics $METRICS" daemon
PORT=$((BASE + 1)) cli start "$EX/hello.js" --name hello -i 2 --balance round-robin >/dev/null
PORT=$((BASE + 2)) cli start "$EX/express.js" --name ex -i 2 --max-memory-restart 500M >/dev/null
PORT=$((BASE + 3)) cli start "$RT/python-server.py" --name py -i 2 >/dev/null
PORT=$((BASE + 4)) cli start "$EX/hello.js" --name w -i 1 --watch "$EX" --cron-restart '*/5 * * * * *' >/dev/null || true
serving $((BASE + 1)); serving $((BASE + 2)); hits $((BASE + 1)) 100; hits $((BASE + 2)) 50
for path in /metrics / /healthz "/readyz?app=hello"; do curl -fs -o /dev/null "http://$METRICS$path"; done
cli list >/dev/null; cli show hello >/dev/null; cli env hello >/dev/null; cli jlist >/dev/null
cli logs hello --lines 20 --nostream >/dev/null
cli reload hello >/dev/null; hits $((BASE + 1)) 20
cli restart ex >/dev/null; cli restart hello:0 >/dev/null
cli scale hello 3 >/dev/null; cli scale hello 2 >/dev/null
cli send hello '{"a":1}' >/dev/null; cli signal SIGUSR2 w >/dev/null
cli reset hello >/dev/null; cli flush hello >/dev/null
worker=$(cli list --json | python3 -c "import json,sys; print([w['pid'] for a in json.load(sys.stdin) if a['name']=='hello' for w in a['workers']][0])")
kill -9 "$worker"; sleep 2; hits $((BASE + 1)) 20
touch "$EX/hello.js"; sleep 3
snap verbs
cli stop ex >/dev/null; cli start ex >/dev/null; cli save >/dev/null
snap verbs
kill -9 "$(pid_of "$HERD_HOME/herd.pid")"; sleep 0.5 # a crashed daemon: the next one adopts the apps
DAEMON_ARGS="--metrics $METRICS" daemon
cli list >/dev/null; hits $((BASE + 1)) 20
kill -9 "$(pid_of "$HERD_HOME/apps/0.pid")"; sleep 3 # a crashed supervisor: started again
cli list >/dev/null
snap verbs
cli update >/dev/null; cli list >/dev/null; hits $((BASE + 1)) 20
snap verbs
cli delete py >/dev/null; cli resurrect >/dev/null; sleep 6
snap verbs
cli delete all >/dev/null
snap verbs
cli kill >/dev/null
