#!/usr/bin/env bash
# The herd daemon against pm2, side by side in one run, on the same Node app
# (examples/node/hello.js; bench/logflood.js for the logs). Prints herd / pm2
# ratios against issue 8's targets. By hand only: never part of the test suite.
#
#   bash bench/daemon.sh                # ~10 min on 2 cores; raw output in bench/results/daemon-*.txt
#   KILLS=5 REPS=3 LINES=1000000 bash bench/daemon.sh
#   ONLY=memory bash bench/daemon.sh    # only the memory figures (1 app, 100 apps): ~2 min
#
# herd's memory is counted honestly: each app runs under a supervisor process of its
# own, so herd's figure is the PSS (proportional set size: private pages, plus each
# shared page divided among the processes that map it, from /proc/PID/smaps_rollup)
# summed over the daemon and every app supervisor; pm2's is its daemon's PSS. Neither
# counts the apps' workers (Node processes under both).
#
# Needs: node 20, hyperfine (apt-get install -y hyperfine; else a date +%s%N loop), wrk
# (apt-get install -y wrk), python3. pm2 is installed from npm into $PM2_PREFIX
# (default /tmp/herd-bench-pm2) when missing. herd is target/release/herd, built as
# herd is meant to run on servers, statically linked (`cargo build-static`; LINK=dynamic:
# `cargo build --release`), unless SKIP_BUILD=1; or HERD=path. The report says which.
#
# Everything runs with a private HERD_HOME and PM2_HOME under a temp dir; on exit (also on
# failure or Ctrl-C) the script ends what it started: `herd kill`, `pm2 kill`, its own
# background probers by pid, then removes the temp dir. Loopback only: ports
# $BASE_PORT.. (default 18500) and $BASE_PORT+1000.. / +2000.. for the 100-app runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

HERD="${HERD:-$ROOT/target/release/herd}"
PM2_PREFIX="${PM2_PREFIX:-/tmp/herd-bench-pm2}"
PM2="$PM2_PREFIX/node_modules/.bin/pm2"
BASE_PORT="${BASE_PORT:-18500}"
REPS="${REPS:-3}"          # wrk repetitions (alternating herd / pm2)
KILLS="${KILLS:-5}"        # kill -9 per setup
LINES="${LINES:-1000000}"  # console.log lines
APPS="${APPS:-100}"        # apps for the "100 apps" figures
ONLY="${ONLY:-all}"        # all, or memory (only the 1-app and 100-app memory figures)
WRK_SECONDS="${WRK_SECONDS:-10}"
HELLO="$ROOT/examples/node/hello.js"
FLOOD="$ROOT/bench/logflood.js"
PROBE="$ROOT/bench/daemon_probe.py"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p bench/results
OUT="bench/results/daemon-$STAMP.txt"
RESULTS="bench/results/daemon-$STAMP.json"

TMP="$(mktemp -d /tmp/herd-bench-daemon.XXXXXX)"
export HERD_HOME="$TMP/herd-home"
export PM2_HOME="$TMP/pm2-home"
BG_PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  if [ -x "$HERD" ] && [ -S "$HERD_HOME/herd.sock" ]; then
    timeout 60 "$HERD" kill >/dev/null 2>&1 || true
  fi
  if [ -x "$PM2" ] && [ -d "$PM2_HOME" ]; then
    timeout 60 "$PM2" kill >/dev/null 2>&1 || true
  fi
  # Whatever the two daemons left (they should leave nothing): only their own pids.
  for f in "$HERD_HOME/herd.pid" "$PM2_HOME/pm2.pid"; do
    if [ -f "$f" ]; then
      p=$(tr -dc '0-9' <"$f")
      [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    fi
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }
# record KEY VALUE: one figure into the results JSON (numbers, or JSON values)
declare -A R
record() { R[$1]=$2; echo "   $1 = $2" >&2; }
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

rss_mb() { # pid -> RSS in MB (VmRSS)
  awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"
}
anon_mb() { # pid -> anonymous RSS in MB (RssAnon: what the process allocated, not its mapped binary)
  awk '/^RssAnon:/ {printf "%.1f", $2/1024}' "/proc/$1/status"
}
pss_kb() { # pid... -> the sum of their PSS in kB (smaps_rollup)
  local sum=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
herd_supervisor_pids() { # the live app supervisors of $HERD_HOME (their locked pid files)
  local f p
  for f in "$HERD_HOME"/apps/*.pid; do
    [ -f "$f" ] || continue
    p=$(tr -dc '0-9' <"$f")
    [ -n "$p" ] && [ -d "/proc/$p" ] && echo "$p"
  done
}
# herd's processes: the daemon and every app supervisor -> PSS in MB, and their count
herd_pss_mb() {
  local pids; pids="$(herd_pid) $(herd_supervisor_pids | tr '\n' ' ')"
  # shellcheck disable=SC2086
  awk -v k="$(pss_kb $pids)" 'BEGIN {printf "%.1f", k/1024}'
}
herd_procs() { echo $(( $(herd_supervisor_pids | wc -l) + 1 )); }
pm2_pss_mb() { awk -v k="$(pss_kb "$(pm2_pid)")" 'BEGIN {printf "%.1f", k/1024}'; }
herd_pid() { tr -dc '0-9' <"$HERD_HOME/herd.pid"; }
pm2_pid() { tr -dc '0-9' <"$PM2_HOME/pm2.pid"; }
herd_worker_pids() { # app -> comma-separated worker pids
  "$HERD" list --json | jget "','.join(str(w['pid']) for a in d if a['name']=='$1' for w in a['workers'] if w.get('pid'))"
}
pm2_worker_pids() {
  "$PM2" jlist 2>/dev/null | jget "','.join(str(p['pid']) for p in d if p['name']=='$1' and p.get('pid'))"
}
now_ns() { date +%s%N; }

# list latency in ms (median): hyperfine when installed, else a loop of 20
list_ms() { # name cmd...
  local name=$1; shift
  if command -v hyperfine >/dev/null; then
    hyperfine -N --style none --warmup 3 --min-runs 20 --export-json "$TMP/hf-$name.json" "$*" >&2
    jget "round(d['results'][0]['median']*1000, 1)" <"$TMP/hf-$name.json"
  else
    local ts=()
    for _ in $(seq 20); do
      local t0; t0=$(now_ns); "$@" >/dev/null; ts+=($(( ($(now_ns) - t0) / 1000 )))
    done
    printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
  fi
}

wrk_rps() { # port -> req/s
  wrk -t2 -c64 -d"${WRK_SECONDS}s" "http://127.0.0.1:$1/" | tee -a "$TMP/wrk.txt" | awk '/^Requests\/sec:/ {print $2}'
}

serving() { python3 "$PROBE" serving "$@" --timeout 120 >/dev/null; }

# ---------------------------------------------------------------------------
command -v node >/dev/null || { echo "node is needed" >&2; exit 1; }
[ "$ONLY" = memory ] || command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
if [ ! -x "$PM2" ]; then
  log "installing pm2 into $PM2_PREFIX"
  npm install --prefix "$PM2_PREFIX" --no-audit --no-fund pm2@7 >&2
fi
if [ "${SKIP_BUILD:-0}" != 1 ] && [ "$HERD" = "$ROOT/target/release/herd" ]; then
  if [ "${LINK:-static}" = static ]; then cargo build-static >&2; else cargo build --release >&2; fi
fi
[ -x "$HERD" ] || { echo "no herd binary at $HERD" >&2; exit 1; }
LINKED=$(readelf -lW "$HERD" 2>/dev/null | grep -q 'program interpreter' && echo dynamic || echo static)

{
echo "herd daemon vs pm2, $STAMP"
echo "herd: $HERD ($LINKED, $(git rev-parse --short HEAD), $(git status --porcelain -- . ":!bench/results" | wc -l) dirty files outside bench/results)"
echo "pm2: $(jget "d['version']" <"$PM2_PREFIX/node_modules/pm2/package.json"), node $(node --version), $(nproc) CPUs, $(hyperfine --version 2>/dev/null || echo 'no hyperfine'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# build.rs places these functions first; a stale list (another toolchain or
# Cargo.lock) costs memory: scripts/hot-code/profile.sh makes it again.
ORDER="$ROOT/scripts/hot-code/hot-code.order"
if [ -f "$ORDER" ] && command -v nm >/dev/null; then
  echo "hot code: $(nm "$HERD" | awk 'NR==FNR {if ($0 !~ /^#/) want[$0]=1; next} ($3 in want) {n++; delete want[$3]} END {print n+0}' "$ORDER" -) of $(grep -vc '^#' "$ORDER") functions of scripts/hot-code/hot-code.order are in the binary"
fi
} | tee "$OUT" >&2

record herd_linked "\"$LINKED\""
H1=$BASE_PORT P1=$((BASE_PORT + 1))

# --- 1 app: hello.js with 2 workers ------------------------------------------
log "1 app: hello.js, 2 workers (herd default balance; pm2 cluster mode)"
PORT=$H1 "$HERD" start "$HELLO" --name hello -i 2 >/dev/null
PORT=$P1 "$PM2" start "$HELLO" --name hello -i 2 >/dev/null
serving "$H1" "$P1"
sleep 3
record herd_rss1_mb "$(rss_mb "$(herd_pid)")"
record pm2_rss1_mb "$(rss_mb "$(pm2_pid)")"
record herd_anon1_mb "$(anon_mb "$(herd_pid)")"
record pm2_anon1_mb "$(anon_mb "$(pm2_pid)")"
record herd_pss1_mb "$(herd_pss_mb)"
record herd_procs1 "$(herd_procs)"
record pm2_pss1_mb "$(pm2_pss_mb)"

if [ "$ONLY" != memory ]; then
log "list latency, 1 app"
record herd_list1_ms "$(list_ms herd-list1 "$HERD" list)"
record pm2_list1_ms "$(list_ms pm2-list1 "$PM2" list)"

log "throughput: wrk -t2 -c64 -d${WRK_SECONDS}s, $REPS reps alternating"
hs=() ps=()
for i in $(seq "$REPS"); do
  hs+=("$(wrk_rps "$H1")"); ps+=("$(wrk_rps "$P1")")
  echo "   rep $i: herd ${hs[-1]} pm2 ${ps[-1]} req/s" >&2
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
record herd_rps "$(med "${hs[@]}")"
record pm2_rps "$(med "${ps[@]}")"
record rps_all "\"herd ${hs[*]} / pm2 ${ps[*]}\""

log "kill -9 a worker -> replacement serving ($KILLS kills each)"
python3 "$PROBE" crash "$H1" --pids "$(herd_worker_pids hello)" --kills "$KILLS" >"$TMP/crash-herd.json"
python3 "$PROBE" crash "$P1" --pids "$(pm2_worker_pids hello)" --kills "$KILLS" >"$TMP/crash-pm2.json"
record herd_crash_ms "$(jget "d['median_ms']" <"$TMP/crash-herd.json")"
record pm2_crash_ms "$(jget "d['median_ms']" <"$TMP/crash-pm2.json")"
record herd_crash_hung "$(jget "sum(k['hung_polls'] for k in d['kills'])" <"$TMP/crash-herd.json")"
record pm2_crash_hung "$(jget "sum(k['hung_polls'] for k in d['kills'])" <"$TMP/crash-pm2.json")"
python3 "$PROBE" floor $((BASE_PORT + 2)) --script "$HELLO" --runs "$KILLS" >"$TMP/floor.json"
record node_floor_ms "$(jget "d['median_ms']" <"$TMP/floor.json")"
record crash_all "\"herd $(jget "[k['ms'] for k in d['kills']]" <"$TMP/crash-herd.json") / pm2 $(jget "[k['ms'] for k in d['kills']]" <"$TMP/crash-pm2.json")\""
serving "$H1" "$P1"
sleep 2

log "two reloads under fresh-connection load (2 prober threads)"
reload_under_load() { # name port reload-cmd...
  local name=$1 port=$2; shift 2
  python3 "$PROBE" load "$port" --seconds 300 --out "$TMP/load-$name.json" &
  local lp=$!; BG_PIDS+=("$lp")
  sleep 1
  local t0; t0=$(now_ns)
  "$@" >/dev/null; "$@" >/dev/null
  local took=$(( ($(now_ns) - t0) / 1000000 ))
  sleep 1
  kill -TERM "$lp"; wait "$lp" || true
  record "${name}_reload_failed" "$(jget "d['failed']" <"$TMP/load-$name.json")"
  record "${name}_reload_ok" "$(jget "d['ok']" <"$TMP/load-$name.json")"
  record "${name}_reload_errors" "$(jget "json.dumps(json.dumps(d['errors']))" <"$TMP/load-$name.json")"
  record "${name}_reload_ms" "$took"
}
reload_under_load herd "$H1" "$HERD" reload hello
reload_under_load pm2 "$P1" "$PM2" reload hello
"$HERD" delete hello >/dev/null
"$PM2" delete hello >/dev/null

# --- logs --------------------------------------------------------------------
log "$LINES console.log lines into the log file (1 worker; herd -i 1, pm2 fork mode)"
flood() { # who(herd|pm2) time(0|1) app
  local who=$1 stamp=$2 app=$3 file t0 flag=() sfx=""
  [ "$stamp" = 1 ] && flag=(--time) && sfx="_time"
  t0=$(now_ns)
  if [ "$who" = herd ]; then
    file="$HERD_HOME/logs/$app-out.log"
    # herd rotates at 10 MB by default: no rotation here, so that one file holds every line.
    LINES=$LINES "$HERD" start "$FLOOD" --name "$app" -i 1 --log-max-size 0 "${flag[@]}" >/dev/null
  else
    file="$PM2_HOME/logs/$app-out.log"
    LINES=$LINES "$PM2" start "$FLOOD" --name "$app" "${flag[@]}" >/dev/null
  fi
  python3 "$PROBE" logs "$file" --lines "$LINES" --t0 "$t0" "${flag[@]}" >"$TMP/logs-$who-$app.json"
  record "${who}_logs${sfx}_s" "$(jget "d['seconds']" <"$TMP/logs-$who-$app.json")"
  record "${who}_logs${sfx}_lost" "$(jget "d['lost']" <"$TMP/logs-$who-$app.json")"
  record "${who}_logs${sfx}_corrupted" "$(jget "d['corrupted']" <"$TMP/logs-$who-$app.json")"
  jget "'   examples: %s' % d['examples']" <"$TMP/logs-$who-$app.json" >&2
  if [ "$who" = herd ]; then "$HERD" delete "$app" >/dev/null; else "$PM2" delete "$app" >/dev/null; fi
}
flood herd 0 flood1
flood pm2 0 flood1
flood herd 1 flood2
flood pm2 1 flood2

fi # ONLY != memory

# --- 100 apps -----------------------------------------------------------------
# The apps above are deleted first: only the 100 count.
"$HERD" delete all >/dev/null
"$PM2" delete all >/dev/null
hundred() { # who base-port
  local who=$1 base=$2 t0 ports=()
  log "$APPS apps under $who (hello.js, 1 worker each)"
  t0=$(now_ns)
  for i in $(seq "$APPS"); do
    ports+=($((base + i)))
    if [ "$who" = herd ]; then
      PORT=$((base + i)) "$HERD" start "$HELLO" --name "h$i" -i 1 >/dev/null
    else
      PORT=$((base + i)) "$PM2" start "$HELLO" --name "h$i" >/dev/null
    fi
  done
  local t1; t1=$(now_ns)
  python3 "$PROBE" serving "${ports[@]}" --timeout 300 >"$TMP/serve-$who.json"
  local t2; t2=$(now_ns)
  record "${who}_start100_s" "$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.2f", d/1e9}')"
  record "${who}_serve100_s" "$(awk -v d=$((t2 - t0)) 'BEGIN {printf "%.2f", d/1e9}')"
  sleep 5
  local pid; pid=$([ "$who" = herd ] && herd_pid || pm2_pid)
  record "${who}_rss100_mb" "$(rss_mb "$pid")"
  record "${who}_anon100_mb" "$(anon_mb "$pid")"
  if [ "$who" = herd ]; then
    record herd_pss100_mb "$(herd_pss_mb)"
    record herd_procs100 "$(herd_procs)"
  else
    record pm2_pss100_mb "$(pm2_pss_mb)"
  fi
  if [ "$who" = herd ]; then
    record herd_list100_ms "$(list_ms herd-list100 "$HERD" list)"
    "$HERD" delete all >/dev/null
  else
    record pm2_list100_ms "$(list_ms pm2-list100 "$PM2" list)"
    "$PM2" delete all >/dev/null
  fi
}
hundred herd $((BASE_PORT + 1000))
hundred pm2 $((BASE_PORT + 2000))

# --- report -------------------------------------------------------------------
{
  echo "{"
  first=1
  for k in "${!R[@]}"; do
    [ $first = 1 ] || echo ","
    first=0
    printf '  "%s": %s' "$k" "${R[$k]}"
  done
  echo
  echo "}"
} >"$RESULTS"
{
  echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 "$PROBE" ratios "$RESULTS"
  echo
  echo "raw: $RESULTS; wrk output:"
  cat "$TMP/wrk.txt" 2>/dev/null || true
  echo "crash herd: $(cat "$TMP/crash-herd.json" 2>/dev/null)"
  echo "crash pm2: $(cat "$TMP/crash-pm2.json" 2>/dev/null)"
  echo "node alone, spawn -> serving: $(cat "$TMP/floor.json" 2>/dev/null)"
  for f in "$TMP"/logs-*.json "$TMP"/load-*.json; do
    [ -f "$f" ] && echo "$(basename "$f"): $(cat "$f")"
  done
  true
} | tee -a "$OUT"
