#!/usr/bin/env python3
"""Soak (issue 15.6): herd's daemon under steady load for a long time, with a
rolling reload of every app each minute and a kill -9 of a random worker every
10 s; every minute, the RSS, PSS and open fds of every herd process (the
daemon, and app supervisors when there are any) and of the workers. Growth is
what this looks for: pm2's daemon grows to GBs (pm2 #4737, #5145, #6113).

Run it with bench/soak.sh (which builds herd first); by hand:

    python3 bench/soak.py --minutes 30          # the issue's run
    python3 bench/soak.py --minutes 3 --reload-every 20 --kill-every 5   # a quick look

Two apps under one daemon in a private HERD_HOME: `examples/node/hello.js -i 2`
(round-robin: herd hands every connection over) and the fixture server
`herd-test-worker --log-requests -i 2` (shared socket; one log line per request,
so the log path is soaked too). --clients threads make fresh-connection
requests against both, paced by --pause. Only loopback; every process is
started in its own session and stopped by its pid. Results:
bench/results/soak-<time>.json and a table on stdout.
"""

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import HOST, REPO, RESULTS, log  # noqa: E402

NODE_PORT = int(os.environ.get("BENCH_PORT", "18431"))
FIXTURE_PORT = NODE_PORT + 1


def herd_bin():
    if os.environ.get("HERD"):
        return os.environ["HERD"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "herd")


def one_request(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(5)
    try:
        s.connect((HOST, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            return "reset"  # closed with no answer
        return "ok" if data.startswith(b"HTTP/1.1 200") else "bad answer"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        return "hung"
    except OSError as e:
        return f"error {e.errno}"
    finally:
        s.close()


class Load(threading.Thread):
    def __init__(self, ports, pause, stop):
        super().__init__(daemon=True)
        self.ports, self.pause, self.stop = ports, pause, stop
        self.counts = {}
        self.lock = threading.Lock()

    def run(self):
        i = 0
        while not self.stop.is_set():
            outcome = one_request(self.ports[i % len(self.ports)])
            i += 1
            with self.lock:
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
            time.sleep(self.pause)

    def take(self):
        with self.lock:
            c, self.counts = self.counts, {}
        return c


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def descendants(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in common.children(p):
            out.append(c)
            todo.append(c)
    return out


def exe_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class Daemon:
    def __init__(self, herd):
        self.herd = herd
        self.home = tempfile.mkdtemp(prefix="herd-soak-")
        os.chmod(self.home, 0o700)
        self.env = {"HERD_HOME": self.home, "PORT": str(NODE_PORT)}
        self.proc = common.start([herd, "daemon"], env=self.env, name="herd daemon")
        self.cli("ping")

    def cli(self, *args, check=True):
        r = subprocess.run([self.herd, *args], env=dict(os.environ, **self.env),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"herd {' '.join(args)}: {r.stdout}")
        return r.stdout

    def processes(self):
        """(herd processes, workers): the daemon, then each app's supervisor
        and any herd process below them; the workers are the rest below."""
        herd_exe = os.path.realpath(self.herd)
        roots = [self.proc.pid] + common.app_supervisors(self.home)
        below = [p for r in roots for p in descendants(r) if p not in roots]
        herds = roots + [p for p in below if exe_of(p) == herd_exe]
        workers = [p for p in below if exe_of(p) != herd_exe]
        return herds, workers

    def stop(self):
        self.cli("kill", check=False)
        common.stop(self.proc)
        shutil.rmtree(self.home, ignore_errors=True)


def sample(daemon, minute, load_counts, events):
    herds, workers = daemon.processes()
    row = {"minute": round(minute, 2), "t": time.time(), "load": common.loadavg()[0],
           "requests": load_counts, **events, "herd": []}
    for p in herds:
        row["herd"].append({"pid": p, "rss_kb": proc_status(p, "VmRSS"), "pss_kb": pss_kb(p),
                            "fds": fds(p), "threads": proc_status(p, "Threads")})
    row["workers"] = {
        "count": len(workers),
        "rss_kb": sum(proc_status(p, "VmRSS") or 0 for p in workers),
        "fds": sum(fds(p) or 0 for p in workers),
    }
    try:
        logs = os.path.join(daemon.home, "logs")
        row["log_bytes"] = sum(os.path.getsize(os.path.join(logs, f)) for f in os.listdir(logs))
    except OSError:
        row["log_bytes"] = None
    return row


def main():
    # herd would take it as the default balance mode.
    os.environ.pop("NODE_CLUSTER_SCHED_POLICY", None)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--reload-every", type=float, default=60, help="seconds")
    ap.add_argument("--kill-every", type=float, default=10, help="seconds")
    ap.add_argument("--sample-every", type=float, default=60, help="seconds")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--pause", type=float, default=0.005, help="seconds between a client's requests")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    herd = herd_bin()
    worker = os.path.join(os.path.dirname(herd), "herd-test-worker")
    for b in (herd, worker):
        if not os.access(b, os.X_OK):
            sys.exit(f"soak.py: {b} is not built: cargo build --release -p herd -p herd-test-worker")
    rnd = random.Random(1)
    common.wait_port_free(NODE_PORT)
    common.wait_port_free(FIXTURE_PORT)
    d = Daemon(herd)
    rows = []
    stop = threading.Event()
    loads = []
    try:
        d.cli("start", os.path.join(common.EXAMPLES, "hello.js"), "--name", "node", "-i", "2",
              "--balance", "round-robin")
        d.cli("start", "--name", "fixture", "-i", "2", "--listen", f"{HOST}:{FIXTURE_PORT}",
              worker, "--", "--log-requests")
        for port in (NODE_PORT, FIXTURE_PORT):
            common.wait_http("/", port=port, timeout=30)
        loads = [Load([NODE_PORT, FIXTURE_PORT], a.pause, stop) for _ in range(a.clients)]
        for t in loads:
            t.start()
        start = time.monotonic()
        end = start + a.minutes * 60
        next_reload = start + a.reload_every
        next_kill = start + a.kill_every
        next_sample = start
        events = {"reloads": 0, "reload_failures": 0, "kills": 0}
        while True:
            now = time.monotonic()
            if now >= next_sample:
                counts = {}
                for t in loads:
                    for k, v in t.take().items():
                        counts[k] = counts.get(k, 0) + v
                minute = (now - start) / 60
                row = sample(d, minute, counts, dict(events))
                rows.append(row)
                h = row["herd"][0]
                sup = row["herd"][1:]
                log(f"[{minute:5.1f} min] daemon rss {h['rss_kb']} kB pss {h['pss_kb']} kB fds {h['fds']}"
                    f" | supervisors {len(sup)}: rss {sum(x['rss_kb'] or 0 for x in sup)} kB"
                    f" pss {sum(x['pss_kb'] or 0 for x in sup)} kB fds {sum(x['fds'] or 0 for x in sup)}"
                    f" | workers {row['workers']['count']}"
                    f" | requests {counts} | {events}")
                next_sample += a.sample_every
                if now >= end:
                    break
            if now >= next_kill:
                _, workers = d.processes()
                if workers:
                    try:
                        os.kill(rnd.choice(workers), 9)
                        events["kills"] += 1
                    except ProcessLookupError:
                        pass
                next_kill += a.kill_every
            if now >= next_reload:
                for app in ("node", "fixture"):
                    try:
                        d.cli("reload", app)
                        events["reloads"] += 1
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        events["reload_failures"] += 1
                        log(f"reload {app}: {e}")
                next_reload += a.reload_every
            time.sleep(max(0.0, min(next_sample, next_kill, next_reload) - time.monotonic()))
    finally:
        stop.set()
        for t in loads:
            t.join(6)
        d.stop()
        common.stop_all()

    os.makedirs(RESULTS, exist_ok=True)
    out = a.out or os.path.join(RESULTS, time.strftime("soak-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump({"herd": herd, "args": vars(a), "rows": rows}, f, indent=1)
    print("| minute | daemon RSS kB | daemon PSS kB | daemon fds | other herd processes (RSS kB/fds each) "
          "| workers | worker fds | requests (ok / other) | reloads | kills |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        h = r["herd"][0]
        others = ", ".join(f"{x['rss_kb']}/{x['fds']}" for x in r["herd"][1:]) or "-"
        ok = r["requests"].get("ok", 0)
        other = sum(v for k, v in r["requests"].items() if k != "ok")
        print(f"| {r['minute']} | {h['rss_kb']} | {h['pss_kb']} | {h['fds']} | {others} "
              f"| {r['workers']['count']} | {r['workers']['fds']} | {ok} / {other} "
              f"| {r['reloads']} | {r['kills']} |")
    log(f"results: {out}")


if __name__ == "__main__":
    main()
