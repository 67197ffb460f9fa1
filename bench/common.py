"""Shared helpers for herd's hand-run benchmarks (never run as unit tests).

Every process a benchmark starts is started here, in its own session (so its
process group id is its pid), remembered, and stopped by that pid: SIGINT to
the leader, then SIGKILL to the group it leads. pm2 is driven with a private
PM2_HOME and always ended with `pm2 kill` on that home.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")
HERD = os.environ.get("HERD", "/work/target-bench/release/herd")
NODE = os.environ.get("NODE", "node")
PM2 = os.environ.get("PM2", "/tmp/pm2/node_modules/.bin/pm2")
PM2_HOME = os.environ.get("PM2_HOME_BENCH", "/tmp/herd-bench-pm2-home")
PORT = int(os.environ.get("BENCH_PORT", "18431"))
HOST = "127.0.0.1"
EXAMPLES = os.path.join(REPO, "examples", "node")
NODE_CLUSTER = os.path.join(BENCH, "node-cluster.js")
LIMIT = os.path.join(BENCH, "limit.py")

_started = []  # Popen objects we started and have not reaped yet


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_idle(interval=1.0):
    """Fraction of all CPUs idle over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = snap()
    time.sleep(interval)
    i1, t1 = snap()
    return (i1 - i0) / max(t1 - t0, 1)


def quiet_gate(min_idle=0.6, max_wait=45):
    """Before a measurement: wait (at most max_wait s) until at least min_idle of the
    CPUs were idle over a 1 s sample, so other people's builds on this shared machine
    disturb fewer runs. Returns the last idle fraction (recorded with each result)."""
    end = time.time() + max_wait
    idle = cpu_idle()
    while idle < min_idle and time.time() < end:
        idle = cpu_idle()
    return round(idle, 3)


def port_free(port=PORT):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port_free(port=PORT, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if port_free(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} still busy after {timeout}s")


def get(path, port=PORT, timeout=30, headers=None):
    """One GET on a fresh connection: (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def wait_http(path="/", port=PORT, timeout=20, want_pids=0, pid_timeout=6):
    """Wait until the server answers 200; with want_pids, also wait (at most pid_timeout
    more seconds) until that many distinct X-Worker-Pid values were seen. A shared socket
    may keep waking the same idle worker, so missing pids only warn."""
    end = time.time() + timeout
    pids = set()
    last = None
    first_ok = None
    while time.time() < end:
        try:
            st, h, _ = get(path, port, timeout=2)
            if st == 200:
                first_ok = first_ok or time.time()
                pids.add(h.get("x-worker-pid"))
                if len(pids) >= max(want_pids, 1):
                    return pids
                if time.time() - first_ok > pid_timeout:
                    log(f"warning: saw only {len(pids)} of {want_pids} worker pids; going on")
                    return pids
        except OSError as e:
            last = e
        time.sleep(0.02)
    raise RuntimeError(f"server on {port} not ready (saw pids {pids}, last error {last})")


def start(argv, env=None, cwd=REPO, quiet=True, name=None):
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.DEVNULL if quiet else None
    p = subprocess.Popen(argv, env=e, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
    p.bench_name = name or os.path.basename(argv[0])
    _started.append(p)
    return p


def stop(p, grace=5.0):
    """SIGINT the leader, wait, then SIGKILL its process group (its pid)."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the group we created; leftovers only
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if p in _started:
        _started.remove(p)


def stop_all():
    for p in list(_started):
        stop(p)


def pm2(*args, env=None, check=True):
    e = dict(os.environ)
    e["PM2_HOME"] = PM2_HOME
    e.update(env or {})
    r = subprocess.run([PM2, *args], env=e, cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"pm2 {' '.join(args)} failed: {r.stdout[-2000:]}")
    return r.stdout


def pm2_kill():
    if os.path.isdir(PM2_HOME):
        pm2("kill", check=False)


def pm2_daemon_pid():
    try:
        with open(os.path.join(PM2_HOME, "pm2.pid")) as f:
            return int(f.read().strip())
    except OSError:
        return None


def children(pid):
    """Direct children of pid, whichever of its threads forked them."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return sorted(set(out))


def app_supervisors(home):
    """The live app supervisors of a herd daemon's HERD_HOME: the pids in their
    locked pid files, apps/<id>.pid. They are detached from the daemon (not its
    children): each is its app's workers' parent."""
    apps = os.path.join(home, "apps")
    try:
        names = sorted(os.listdir(apps))
    except OSError:
        return []
    out = []
    for name in names:
        if not name.endswith(".pid"):
            continue
        try:
            with open(os.path.join(apps, name)) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0 and os.path.exists(f"/proc/{pid}"):
            out.append(pid)
    return out


def cpu_s(pid):
    """utime+stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- setups: how to start each server under test ---------------------------------

class Setup:
    """A server under test: `up()` starts it and waits until every worker answers,
    `down()` stops everything it started."""

    def __init__(self, name, workers, kind, app=None, balance=None, extra=None):
        self.name, self.workers, self.kind = name, workers, kind
        self.app, self.balance, self.extra = app, balance, extra or {}
        self.proc = None

    def up(self, ready_path="/"):
        wait_port_free()
        env = {"PORT": str(PORT)}
        k = self.kind
        if k == "herd-demo":
            self.proc = start([HERD, "demo", "-i", str(self.workers), "--listen", f"{HOST}:{PORT}",
                               "--balance", self.balance], name=self.name)
        elif k == "limit-demo":
            self.proc = start([sys.executable, LIMIT, "--workers", str(self.workers),
                               "--mode", self.balance, "--listen", f"{HOST}:{PORT}", "--",
                               HERD, "demo", "--listen", f"{HOST}:{PORT}"], name=self.name)
        elif k == "herd-node":
            self.proc = start([HERD, "run", "-i", str(self.workers), "--balance", self.balance,
                               "--", os.path.join(EXAMPLES, self.app)], env=env, name=self.name)
        elif k == "node-cluster":
            self.proc = start([NODE, NODE_CLUSTER, str(self.workers), self.balance,
                               os.path.join(EXAMPLES, self.app)], env=env, name=self.name)
        elif k == "node-single":
            self.proc = start([NODE, os.path.join(EXAMPLES, self.app)], env=env, name=self.name)
        elif k == "pm2":
            pm2_kill()
            args = ["start", os.path.join(EXAMPLES, self.app), "-i", str(self.workers),
                    "--name", "bench"]
            if self.extra.get("no_pmx"):
                args.append("--no-pmx")
            pm2(*args, env=env)
        else:
            raise ValueError(k)
        # herd demo and pm2 need every worker up before a measurement starts.
        time.sleep(0.3)
        wait_http(ready_path, want_pids=self.workers, timeout=30)
        if k in ("herd-node", "herd-demo", "pm2", "node-cluster"):
            # herd counts a worker ready after --ready-delay (1 s) without --wait-ready;
            # let every setup settle the same way before measuring.
            time.sleep(1.2)

    def down(self):
        if self.kind == "pm2":
            pm2_kill()
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        wait_port_free()

    def worker_pids(self):
        """The processes that serve."""
        if self.kind == "node-single":
            return [self.proc.pid]
        sup = pm2_daemon_pid() if self.kind == "pm2" else self.proc.pid
        return children(sup)

    def supervisor_pids(self):
        """The process(es) that supervise but do not serve."""
        if self.kind == "pm2":
            return [pm2_daemon_pid()]
        if self.kind in ("herd-demo", "herd-node", "node-cluster"):
            return [self.proc.pid]
        return []


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def percentile(xs, q):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def save_json(name, data):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    log(f"wrote {path}")
    return path


def machine_info():
    info = {"nproc": os.cpu_count(), "loadavg_start": loadavg(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                           if l.startswith("model name"))
    except StopIteration:
        pass
    for k, cmd in [("node", [NODE, "--version"]), ("herd_commit", ["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
                   ("kernel", ["uname", "-r"])]:
        try:
            info[k] = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=20).stdout.strip()
        except OSError:
            pass
    try:
        pkg = os.path.join(os.path.dirname(os.path.dirname(PM2)), "pm2", "package.json")
        info["pm2"] = json.load(open(pkg))["version"]  # not `pm2 --version`: it starts a daemon
    except (OSError, ValueError, KeyError):
        pass
    return info
