#!/usr/bin/env bash
# deploy/container-check.sh — build the `daemon` image of deploy/Dockerfile
# and check herd as a real container's PID 1, with the two apps of
# deploy/herd.toml (web: hello.js on 8000, api: graceful.js on 8001).
# Run by hand (not in CI); it needs a running Docker engine.
#
# It checks, and prints the figures of:
#   1. the build (time, image size);
#   2. `docker run` to both apps serving (time); herd is PID 1 (its init),
#      the daemon is PID 1's child and the workers are the daemon's;
#   3. the daemon's /healthz, /readyz?app=web and /readyz?app=api answer 200
#      from the host through the published port (Host: localhost:PORT, as
#      `--metrics-host localhost` allows), and a foreign Host gets 421;
#   4. a `kill -9` of a web worker inside the container: a new worker, with
#      a new pid, serves, and /readyz?app=web is 200 again (time);
#   5. `docker stop` with a request in flight on api: the request finishes
#      (200), the stop takes less than the kill timeout, and the container's
#      exit code is 0 (what `docker stop` prints and `docker inspect` says);
#   6. a SIGKILL of the daemon (after `docker start`): PID 1 exits with
#      128+9 = 137.
#
# Usage: deploy/container-check.sh [--offline] [--keep-base] [--image NAME]
#
#   --offline    build with deploy/build-offline.sh (base images from
#                debootstrap and the host's toolchains: no image registry)
#   --keep-base  keep the herd-offline/* base images it made (faster reruns)
#   --image      check this already built `daemon` image; build nothing
#
# Every container it starts and every image it makes is removed at exit
# (the base images too, unless --keep-base); Docker's build cache (crates
# and the cargo target dir of the build stage) is left: `docker builder
# prune` empties it. Each wait has a deadline; the whole run is bounded by
# the build (BUILD_TIMEOUT, default 3600 s) plus about two minutes.
#
# Network: only 127.0.0.1. The container's ports are published on
# 127.0.0.1 at ports Docker picks, and every request goes there.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-docker}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
offline=false
keep_base=false
image=
tag=herd-check-$$
name=herd-check-$$

die() {
	echo "container-check: FAIL: $*" >&2
	exit 1
}
ok() { printf '  ok  %s\n' "$*"; }
figure() { printf '  ==  %-36s %s\n' "$1" "$2"; figures+=("$(printf '%-36s %s' "$1" "$2")"); }
figures=()

while (($#)); do
	case $1 in
	--offline) offline=true; shift ;;
	--keep-base) keep_base=true; shift ;;
	--image) image=${2:?--image needs a name}; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

now_ms() { date +%s%3N; }
# Milliseconds since $1 (a now_ms value).
since() { echo $(($(now_ms) - $1)); }
seconds() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }

# --- cleanup: what this run made, and only that -----------------------------
containers=()
images=()
bases_before=$("$DOCKER" images -q 'herd-offline/*' | sort -u | tr '\n' ' ')
cleanup() {
	local status=$?
	set +e
	for c in "${containers[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
	[[ -n ${slow_pid:-} ]] && kill "$slow_pid" 2>/dev/null
	for i in "${images[@]}"; do "$DOCKER" rmi "$i" >/dev/null 2>&1; done
	if $offline && ! $keep_base && [[ -z $bases_before ]]; then
		"$DOCKER" rmi herd-offline/node:bookworm herd-offline/rust:bookworm \
			herd-offline/debian:bookworm >/dev/null 2>&1
	fi
	rm -rf "${tmp:-/nonexistent}"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "container-check: FAIL: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
tmp=$(mktemp -d)

# Poll `$@` until it succeeds or $1 seconds pass.
wait_for() {
	local limit=$1
	shift
	local deadline=$(($(date +%s) + limit))
	until "$@" 2>/dev/null; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.1
	done
}

# GET http://localhost:PORT/PATH: prints the body, fails unless 200.
get() {
	curl -fsS --max-time 5 "http://localhost:$1$2"
}
# The X-Worker-Pid header of a GET / (web sets it).
worker_pid() {
	curl -fsS --max-time 5 -D - -o /dev/null "http://localhost:$1/" |
		tr -d '\r' | sed -n 's/^[Xx]-[Ww]orker-[Pp]id: //p'
}

# --- 1. build ---------------------------------------------------------------
echo "== build"
if [[ -z $image ]]; then
	image=$tag
	started=$(now_ms)
	if $offline; then
		timeout "$BUILD_TIMEOUT" "$repo/deploy/build-offline.sh" --target daemon --tag "$image" ||
			die "the offline build failed (above)"
	else
		DOCKER_BUILDKIT=1 timeout "$BUILD_TIMEOUT" "$DOCKER" build -f "$repo/deploy/Dockerfile" \
			--target daemon -t "$image" "$repo" || die "docker build failed (above)"
	fi
	images+=("$image")
	figure "build time" "$(seconds "$(since "$started")")"
fi
size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
figure "image size" "$((size / 1000 / 1000)) MB ($size bytes)"

# --- 2. run: both apps serve, herd is PID 1 ---------------------------------
echo "== docker run"
started=$(now_ms)
containers+=("$name")
"$DOCKER" run -d --name "$name" --cpus 2 \
	-p 127.0.0.1::8000 -p 127.0.0.1::8001 -p 127.0.0.1::9209 "$image" >/dev/null
# The host ports Docker picked (anew at each start).
port() { "$DOCKER" port "$name" "$1/tcp" | sed -n 's/^127\.0\.0\.1://p' | head -1; }
published() {
	web=$(port 8000) api=$(port 8001) metrics=$(port 9209)
	[[ -n $web && -n $api && -n $metrics ]] || die "no published ports: $("$DOCKER" port "$name")"
}
published
serving() { get "$web" / >/dev/null && get "$api" / >/dev/null; }
wait_for 60 serving || {
	"$DOCKER" logs "$name" 2>&1 | tail -20
	die "web (localhost:$web) and api (localhost:$api) did not both serve within 60 s"
}
figure "docker run to both apps serving" "$(seconds "$(since "$started")")"
ok "web: $(get "$web" /)"
ok "api: $(get "$api" /)"

# The processes of the container's pid namespace: "PID PPID COMM" lines.
processes() {
	# shellcheck disable=SC2016 # expanded by the container's sh
	"$DOCKER" exec "$name" sh -c 'for d in /proc/[0-9]*; do
		[ -r $d/stat ] && echo "${d#/proc/} $(awk "{print \$4}" $d/stat) $(cat $d/comm)"
	done; true' 2>/dev/null
}
procs=$(processes)
[[ $(awk '$1 == 1 {print $3}' <<<"$procs") == herd ]] || die "PID 1 is not herd: $procs"
# herd's init (PID 1) forks the real herd, the daemon, as its child.
daemon=$(awk '$2 == 1 && $3 == "herd" {print $1}' <<<"$procs")
[[ $daemon =~ ^[0-9]+$ ]] || die "no herd daemon among PID 1's children: $procs"
ok "PID 1 is herd's init ($("$DOCKER" exec "$name" sh -c 'tr "\0" " " </proc/1/cmdline')); the daemon is its child, PID $daemon"
# Every worker is a child of the daemon.
ppids=$(awk '$3 == "node" {print $2}' <<<"$procs" | sort -u | tr '\n' ' ')
nodes=$(awk '$3 == "node"' <<<"$procs" | wc -l)
[[ $ppids == "$daemon " ]] || die "the workers' parents are '$ppids', not the daemon ($daemon)"
((nodes == 4)) || die "$nodes node workers, not 4 (web: 2 for --cpus 2, api: 2)"
ok "4 node workers (web: 2 for --cpus 2, api: 2), all children of the daemon"

# --- 3. health endpoints from the host --------------------------------------
echo "== health endpoints"
get "$metrics" /healthz >/dev/null || die "/healthz on localhost:$metrics"
ok "/healthz: $(get "$metrics" /healthz)"
for app in web api; do
	wait_for 20 get "$metrics" "/readyz?app=$app" >/dev/null ||
		die "/readyz?app=$app is not 200: $(curl -sS "http://localhost:$metrics/readyz?app=$app")"
	ok "/readyz?app=$app: $(get "$metrics" "/readyz?app=$app")"
done
code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Host: rebind.example' "http://localhost:$metrics/healthz")
[[ $code == 421 ]] || die "a foreign Host got $code, not 421"
ok "Host: rebind.example gets 421"

# --- 4. kill -9 of a worker inside is repaired ------------------------------
echo "== kill -9 of a web worker"
victim=$(worker_pid "$web")
[[ -n $victim ]] || die "no X-Worker-Pid from web"
node_pids() { processes | awk '$3 == "node" {print $1}' | tr '\n' ' '; }
before=$(node_pids)
started=$(now_ms)
"$DOCKER" exec "$name" sh -c "kill -9 $victim"
new_worker() {
	local p
	for p in $(node_pids); do
		[[ " $before " == *" $p "* ]] || { echo "$p"; return 0; }
	done
	return 1
}
wait_for 20 new_worker >/dev/null || die "no new worker within 20 s of killing $victim"
replacement=$(new_worker)
# The new worker serves: ask until it answers (the kernel spreads
# connections over both workers), and readiness is back.
served_by_new() { [[ $(worker_pid "$web") == "$replacement" ]]; }
wait_for 20 served_by_new || die "the new worker $replacement did not answer within 20 s"
wait_for 20 get "$metrics" "/readyz?app=web" >/dev/null || die "/readyz?app=web not 200 after the repair"
figure "kill -9 to the new worker serving" "$(seconds "$(since "$started")")"
ok "worker $victim killed; worker $replacement serves; /readyz?app=web is 200"
"$DOCKER" exec "$name" herd list || true

# --- 5. docker stop drains ---------------------------------------------------
echo "== docker stop with a request in flight"
kill_timeout=15 # api's, in deploy/herd.toml
curl -sS --max-time 30 -o "$tmp/slow" -w '%{http_code}' "http://localhost:$api/slow?ms=3000" >"$tmp/slow.code" &
slow_pid=$!
# The request reaches the worker in well under a second on loopback; its
# answer is then due 3 s later, in the middle of the stop.
sleep 1
started=$(now_ms)
stop_said=$("$DOCKER" stop -t 40 "$name")
stop_ms=$(since "$started")
wait "$slow_pid" || true
slow_pid=
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
oom=$("$DOCKER" inspect -f '{{.State.OOMKilled}}' "$name")
figure "docker stop (request in flight: 2 s left)" "$(seconds "$stop_ms")"
figure "exit code" "$exit_code (docker stop printed '$stop_said')"
[[ $(cat "$tmp/slow.code") == 200 ]] || die "the request in flight got '$(cat "$tmp/slow.code")', not 200: $(cat "$tmp/slow")"
ok "the request in flight finished: $(cat "$tmp/slow")"
((stop_ms < kill_timeout * 1000)) || die "the stop took $(seconds "$stop_ms"), not under api's kill timeout ${kill_timeout} s"
((stop_ms >= 1500)) || die "the stop took $(seconds "$stop_ms"): it did not wait for the request in flight"
[[ $exit_code == 0 && $oom == false ]] || die "exit code $exit_code (OOM killed: $oom), not 0"
ok "stopped in $(seconds "$stop_ms") (< kill_timeout ${kill_timeout} s), exit code 0"
echo "  -- the daemon's last words (docker logs):"
"$DOCKER" logs "$name" 2>&1 | tail -6 | sed 's/^/     /'

# --- 6. PID 1 passes on the daemon's death by signal ------------------------
echo "== kill -9 of the daemon (PID 1's child)"
"$DOCKER" start "$name" >/dev/null
published
wait_for 60 serving || die "the restarted container did not serve within 60 s"
daemon=$(processes | awk '$2 == 1 && $3 == "herd" {print $1}')
[[ $daemon =~ ^[0-9]+$ ]] || die "no herd daemon under PID 1 after the restart"
# The exec itself may die with the container (137): what counts is the
# container's exit code.
"$DOCKER" exec -u root "$name" sh -c "kill -9 $daemon" || true
"$DOCKER" wait "$name" >/dev/null
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
[[ $exit_code == 137 ]] || die "exit code $exit_code after SIGKILL of the daemon, not 137"
figure "exit code, daemon SIGKILLed" "$exit_code"

echo
echo "container-check: all checks passed"
printf '  %s\n' "${figures[@]}"
