#!/usr/bin/env python3
"""Chaos: kill -9 a random worker every 200-500 ms under fresh-connection load.

The hand-run matrix of issue 15.4 (the CI's short version is tests/it/chaos.rs):
every balance mode (shared, reuseport, round-robin) x every app (a Node app with no
cluster code, `examples/node/hello.js`; a LISTEN_FDS app, the fixture server
`herd-test-worker`) x every way to run it (`herd run`, the daemon). pm2 runs the
Node app beside them (`pm2 start hello.js -i 2`, Node's round-robin), when it is
installed.

Each case: start 2 workers, wait until both answer, then for --seconds run
--clients threads that each make one request per fresh connection, back to back,
while a killer sends SIGKILL to a random live worker every 200-500 ms. Every
request is classified:

  ok       200 within 2 s
  refused  connect() got ECONNREFUSED (the socket was closed: must never happen)
  reset    ECONNRESET / EPIPE, or the connection closed before a whole answer
  failed   any other error, or an answer that is not 200
  hung     no whole answer within 2 s (counted here whatever came after; the
           client gives up at 5 s)

A reset or failed request that was open at the moment of a kill is counted "in
flight on a killed worker" - the requests herd cannot save; under reuseport, a
reset that began within 250 ms after a kill is "queued on the killed worker's
socket" (the kernel put it there before herd could close that socket); the rest
are "unexplained". Goal: 0 refused, 0 hung, 0 unexplained.

    python3 bench/chaos.py                          # the whole matrix, 30 s a case
    python3 bench/chaos.py --seconds 10 --only run:round-robin:node
    python3 bench/chaos.py --pm2                    # and pm2 beside the Node cases

HERD (default: $CARGO_TARGET_DIR/release/herd) and the fixture worker beside it
(herd-test-worker) must be built: `cargo build --release -p herd -p herd-test-worker`.
Only loopback (127.0.0.1:$BENCH_PORT); every process is started in its own session
and stopped by its pid (see common.py). Results: bench/results/chaos-<time>.json and
a table on stdout.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import HOST, PORT, REPO, RESULTS, log  # noqa: E402

HUNG = 2.0  # a request slower than this is hung
# Reuseport: a client the kernel queued on a killed worker's own socket before
# herd saw the exit and closed that socket is reset (unless
# net.ipv4.tcp_migrate_req=1 moves it): in flight on the killed worker too. A
# reset that began this soon after a kill is counted so ("queued_on_killed").
QUEUED = 0.25
GIVE_UP = 5.0  # the client's own limit
MODES = ["shared", "reuseport", "round-robin"]
APPS = ["node", "listen-fds"]
RUNNERS = ["run", "daemon"]


def herd_bin():
    if os.environ.get("HERD"):
        return os.environ["HERD"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "herd")


def worker_bin(herd):
    return os.path.join(os.path.dirname(herd), "herd-test-worker")


# --- one request ------------------------------------------------------------------


def one_request(port):
    """One GET on a fresh connection: (outcome, seconds, pid or None)."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Close with an RST, not into TIME_WAIT: thousands of fresh connections a
    # second would use up loopback's ports.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(GIVE_UP)
    try:
        try:
            s.connect((HOST, port))
        except ConnectionRefusedError:
            return "refused", time.monotonic() - t0, None
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - t0
        head, _, body = data.partition(b"\r\n\r\n")
        if not data or not head.startswith(b"HTTP/1.1 "):
            return "reset", took, None  # closed with no whole answer
        status = head.split(b" ", 2)[1]
        if status != b"200":
            return "failed", took, None
        pid = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() in (b"x-worker-pid", b"x-pid"):
                pid = int(v.strip())
        if pid is None and body.startswith(b"{"):
            try:
                pid = json.loads(body).get("pid")
            except ValueError:
                pass
        return "ok", took, pid
    except (ConnectionResetError, BrokenPipeError):
        return "reset", time.monotonic() - t0, None
    except socket.timeout:
        return "hung", time.monotonic() - t0, None
    except OSError as e:
        return f"failed:{e.errno}", time.monotonic() - t0, None
    finally:
        s.close()


class LoadThread(threading.Thread):
    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.records = []  # (start, end, outcome, pid)

    def run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            outcome, took, pid = one_request(self.port)
            self.records.append((start, start + took, outcome, pid))
            if outcome == "refused":
                time.sleep(0.01)  # do not spin on a closed port


# --- the processes -----------------------------------------------------------------


def proc_children(pid):
    return common.children(pid)


def descendants(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in proc_children(p):
            out.append(c)
            todo.append(c)
    return out


def exe_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def state_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


class Case:
    """One server under test: `up()` starts it with 2 workers and waits until both
    answer; `workers()` lists the live worker pids; `down()` stops all of it."""

    def __init__(self, runner, mode, app, herd, port):
        self.runner, self.mode, self.app, self.herd, self.port = runner, mode, app, herd, port
        self.name = f"{runner}:{mode}:{app}"
        self.proc = None
        self.home = None
        self.herd_exe = os.path.realpath(herd)

    def command(self):
        """What runs as each worker, and the options that say how."""
        if self.app == "node":
            return ["--balance", self.mode], [os.path.join(common.EXAMPLES, "hello.js")]
        listen = ["--listen", f"{HOST}:{self.port}", "--balance", self.mode]
        worker = worker_bin(self.herd)
        if self.mode == "round-robin":
            # A program without herd's channel cannot take handed-over
            # connections: the herd-cluster mode of the same fixture can
            # (it takes the listener named `web`).
            listen[1] = f"web={HOST}:{self.port}"
            return listen, [worker, "cluster", "--addr", f"{HOST}:{self.port}"]
        return listen, [worker]

    def env(self):
        return {"PORT": str(self.port)}

    def up(self):
        common.wait_port_free(self.port)
        opts, cmd = self.command()
        if self.runner == "run":
            self.proc = common.start([self.herd, "run", "-i", "2", *opts, "--", *cmd],
                                     env=self.env(), name=self.name)
        elif self.runner == "daemon":
            self.home = tempfile.mkdtemp(prefix="herd-chaos-")
            os.chmod(self.home, 0o700)
            env = {**self.env(), "HERD_HOME": self.home}
            # The daemon in the foreground, in a session of our own.
            self.proc = common.start([self.herd, "daemon"], env=env, name=self.name)
            self.cli("ping")
            script, rest = cmd[0], cmd[1:]
            args = ["start", "--name", "chaos", "-i", "2", *opts, script]
            if rest:
                args += ["--", *rest]
            self.cli(*args)
        elif self.runner == "pm2":
            self.proc = None
            common.pm2_kill()
            common.pm2("start", cmd[0], "-i", "2", "--name", "chaos",
                       env={"PORT": str(self.port)})
        if not self.wait_serving(2, 30):
            raise RuntimeError(f"{self.name} never answered on port {self.port}")

    def wait_serving(self, pids, timeout):
        """Until `pids` different workers answered (or one, after a few seconds)."""
        seen, first, end = set(), None, time.monotonic() + timeout
        while time.monotonic() < end:
            outcome, _, pid = one_request(self.port)
            if outcome == "ok":
                first = first or time.monotonic()
                seen.add(pid)
                if len(seen) >= pids or time.monotonic() - first > 5:
                    return True
            time.sleep(0.02)
        return False

    def cli(self, *args):
        env = dict(os.environ, **self.env(), HERD_HOME=self.home)
        r = subprocess.run([self.herd, *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"herd {' '.join(args)}: {r.stdout}")
        return r.stdout

    def root(self):
        if self.runner == "pm2":
            return common.pm2_daemon_pid()
        return self.proc.pid

    def roots(self):
        """The processes whose descendants are the workers: the root, and under
        the daemon each app's supervisor (detached from the daemon)."""
        root = self.root()
        if root is None:
            return []
        if self.runner == "daemon":
            return [root] + common.app_supervisors(self.home)
        return [root]

    def workers(self):
        """Live workers: descendants of the roots that are not herd (nor pm2)."""
        roots = self.roots()
        out = []
        for p in (d for r in roots for d in descendants(r)):
            if p in roots:
                continue
            if state_of(p) in ("Z", "X"):
                continue
            if exe_of(p) == self.herd_exe:
                continue
            if self.runner == "pm2" and "node" not in exe_of(p):
                continue
            out.append(p)
        return out

    def supervisors(self):
        roots = self.roots()
        below = [p for r in roots for p in descendants(r) if p not in roots]
        return roots + [p for p in below if exe_of(p) == self.herd_exe]

    def down(self):
        if self.runner == "daemon" and self.home:
            try:
                self.cli("kill")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        if self.runner == "pm2":
            common.pm2_kill()
        if self.proc:
            common.stop(self.proc)
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


# --- one case ----------------------------------------------------------------------


def run_case(case, seconds, clients, seed):
    rnd = random.Random(seed)
    case.up()
    supervisors = case.supervisors()
    stop = threading.Event()
    threads = [LoadThread(case.port, stop) for _ in range(clients)]
    for t in threads:
        t.start()
    kills = []  # (time, pid)
    no_worker = 0  # kill rounds that found no live worker
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(rnd.uniform(0.2, 0.5))
        live = case.workers()
        if not live:
            no_worker += 1
            continue
        pid = rnd.choice(live)
        # The moments just before and after kill(2): the killer may be
        # preempted between them on a loaded machine.
        before = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
            kills.append((before, time.monotonic(), pid))
        except ProcessLookupError:
            pass
    # Let the last requests finish (or give up) before counting.
    stop.set()
    for t in threads:
        t.join(GIVE_UP + 1)
    alive_after = all(state_of(p) not in ("Z", "X") for p in supervisors)
    serving_after = case.wait_serving(1, 15)
    state = ""
    if case.runner == "daemon":
        try:
            apps = json.loads(case.cli("list", "--json"))
            state = ",".join(f"{a['name']}={a['status']}" for a in apps)
        except (RuntimeError, ValueError):
            state = "list failed"
    case.down()

    records = [r for t in threads for r in t.records]
    t0 = min((r[0] for r in records), default=0)
    kill_times = sorted(k[0] for k in kills)

    def during_kill(start, end):
        # A kill while the request was open.
        return any(start <= k1 + 0.005 and k0 <= end for k0, k1, _ in kills)

    counts = {"requests": len(records), "ok": 0, "refused": 0, "reset": 0, "failed": 0,
              "hung": 0, "in_flight_killed": 0, "queued_on_killed": 0, "unexplained": 0}
    worst = 0.0
    hung_at = []  # [since the load began, seconds, outcome]
    for start, end, outcome, _ in records:
        took = end - start
        worst = max(worst, took)
        kind = outcome.split(":")[0]
        if took > HUNG or kind == "hung":
            counts["hung"] += 1  # whatever came after
            hung_at.append([round(start - t0, 2), round(took, 2), outcome])
            continue
        counts[kind] += 1
        if kind in ("reset", "failed"):
            if during_kill(start, end):
                counts["in_flight_killed"] += 1
            elif (case.mode == "reuseport" and kind == "reset"
                  and any(k0 <= start <= k0 + QUEUED for k0, _, _ in kills)):
                counts["queued_on_killed"] += 1
            else:
                counts["unexplained"] += 1
    lat = sorted(e - s for s, e, o, _ in records if o == "ok")
    p99 = lat[int(len(lat) * 0.99)] if lat else None
    return {
        "case": case.name, "runner": case.runner, "mode": case.mode, "app": case.app,
        "seconds": seconds, "clients": clients, "kills": len(kills),
        "rounds_without_a_live_worker": no_worker, **counts,
        "slowest_s": round(worst, 3), "p99_ok_s": round(p99, 4) if p99 else None,
        "supervisors_alive": alive_after, "serving_after": serving_after,
        "daemon_list_after": state,
        "hung_at": hung_at,
        "kills_at": [round(k - t0, 2) for k in kill_times],
        "failures": sorted({o for _, _, o, _ in records if o != "ok"}),
        "load": common.loadavg(),
    }


def table(rows):
    cols = ["case", "requests", "kills", "refused", "reset", "failed", "hung",
            "in_flight_killed", "queued_on_killed", "unexplained", "slowest_s", "serving_after"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def main():
    # herd would take it as the default balance mode.
    os.environ.pop("NODE_CLUSTER_SCHED_POLICY", None)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--only", action="append", default=[],
                    help="RUNNER:MODE:APP (each part may be *); repeatable")
    ap.add_argument("--pm2", action="store_true", help="also pm2 with the Node app")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    herd = herd_bin()
    for b in (herd, worker_bin(herd)):
        if not os.access(b, os.X_OK):
            sys.exit(f"chaos.py: {b} is not built: cargo build --release -p herd -p herd-test-worker")
    cases = [(r, m, p) for r in RUNNERS for m in MODES for p in APPS]
    if a.pm2:
        if not os.access(common.PM2, os.X_OK):
            sys.exit(f"chaos.py: pm2 is not at {common.PM2}: npm install --prefix /tmp/pm2 pm2@7")
        cases.append(("pm2", "node-rr", "node"))

    def wanted(c):
        if not a.only:
            return True
        return any(all(w in ("*", v) for w, v in zip(o.split(":"), c)) for o in a.only)

    rows = []
    try:
        for i, (runner, mode, app) in enumerate(c for c in cases if wanted(c)):
            case = Case(runner, mode, app, herd, a.port)
            log(f"== {case.name}: {a.seconds:g} s, {a.clients} clients (load {common.loadavg()})")
            try:
                row = run_case(case, a.seconds, a.clients, a.seed + i)
            except Exception as e:  # noqa: BLE001 - one broken case must not stop the rest
                case.down()
                row = {"case": case.name, "error": str(e)}
            log(json.dumps(row))
            rows.append(row)
    finally:
        common.stop_all()
    os.makedirs(RESULTS, exist_ok=True)
    out = a.out or os.path.join(RESULTS, time.strftime("chaos-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump({"herd": herd, "seconds": a.seconds, "clients": a.clients, "rows": rows}, f,
                  indent=1)
    print(table(rows))
    log(f"results: {out}")
    bad = [r for r in rows if r.get("error") or r.get("refused") or r.get("hung")
           or r.get("unexplained") or not r.get("serving_after")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
