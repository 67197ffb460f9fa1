#!/usr/bin/env python3
"""pm2-compat.sh's runner: each real pm2 process file of tests/pm2-files/
under pm2 7 and under herd, one manager after the other, each in a private
home (PM2_HOME / HERD_HOME, and HOME for `~` in log paths), on the same
ports; then a table of what a user can observe that differs.

For each file: `start FILE [--env X]` as a pm2 user would run it, then
- jlist: how many elements, and per element (name, pm2_env.status,
  exec_mode, instances, restart_time);
- the ports the stand-ins say they listen on (their out logs, as jlist names
  them) and which answer on loopback;
- env keys of interest, as the stand-ins echo them;
- the log file names (relative to the home or the file's folder);
- a verb on the file (reload --env, startOrReload, --only, stop, delete) and
  the jlist statuses after it.
Only the daemons it started are stopped (`pm2 kill` / `herd kill` with their
home, then their pid if still alive).

Usage: pm2_compat.py PM2 HERD [CASE...]  (prints a Markdown table)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(ROOT, "tests", "pm2-files")
KEYS = ["NODE_ENV", "PORT", "NODE_APP_INSTANCE", "INSTANCE_ID", "name", "pm_id", "NODE_PORT",
        "COMMON_VARIABLE", "DEBUG", "PYTHONUNBUFFERED"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def free_run(n):
    for _ in range(50):
        base = free_port()
        ok = True
        for p in range(base, base + n):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            s.close()
        if ok:
            return base
    raise SystemExit("no free ports in a row")


# (case, folder, file, run from, start args, {sub: port-kind}, CLI PORT?, verb after start)
# port kinds: "p" a free port, "run3" three free ports in a row.
CASES = [
    ("ecobackend", "ecobackend", "ecosystem.config.js", ".", [], {}, True, ["stop"]),
    ("task-6.2hd", "task-6.2hd", "ecosystem.config.js", ".", [],
     {"PORT: 3000": "p", "PORT: 80": "p"}, False, ["reload", "--env", "production"]),
    ("webrtc", "webrtc-signaling-server", "ecosystem.config.js", ".", ["--env", "production"], {}, True, ["delete"]),
    ("docker-node", "docker-node", "ecosystem.config.js", ".", [], {"PORT: 4000": "run3"}, False, ["stop"]),
    ("firtree", "firtree-backend", "ecosystem.config.js", ".", [], {}, True, ["restart"]),
    ("ekta", "ekta", "ecosystem.config.js", ".", ["--env", "prod"], {}, True, ["stop"]),
    ("formdee", "formdee", "ecosystem.config.js", ".", [], {}, True, ["delete"]),
    ("osz-backend", "osz-backend", "config/ecosystem.config.js", ".", [], {}, True, ["stop"]),
    ("micro-services", "node-micro-services", "process.yml", ".", ["--only", "engine"], {}, False, ["startOrReload"]),
    ("1ibrary", "1ibrary", "ecosystem.json", ".", ["--env", "production"], {}, True, ["delete"]),
    ("crawler", "crawler", "process.yml", ".", [], {}, True, ["stop"]),
    ("jiradataxl", "jiradataxl", "ecosystem.config.js", ".", [], {"PORT: 3545": "p"}, False, ["stop"]),
    ("echo-python", "echo-python", "p1/ecosystem.config.js", "p1", ["--env", "production"], {}, False, ["delete"]),
    ("tapplace", "tapplace", "ecosystem.config.js", ".", [], {}, True, ["stop"]),
    ("games-ecommerce", "games-ecommerce", "ecosystem.config.js", ".", ["--env", "production"], {}, True, ["stop"]),
    ("rts-multiplayer", "rts-multiplayer", "ecosystem.config.js", ".", [], {"port        : 3000": "p"}, False, ["stop"]),
    ("service-report", "service-report", "ecosystem.config.js", ".", [], {"PORT: 3000": "p"}, False,
     ["reload", "--env", "production"]),
    ("wa-gateway", "wa-gateway", "ecosystem.config.js", ".", [], {"PORT: 3007": "p"}, False, ["delete"]),
    ("fluentd-local", "fluentd-local", "app-on-local/ecosystem.config.js", "app-on-local", [],
     {"PORT: 5005": "p"}, False, ["stop"]),
    ("mapcode", "mapcode", "ecosystem.config.js", ".", ["--env", "production"], {}, True, ["stop"]),
]


class Manager:
    def __init__(self, kind, binary, work):
        self.kind = kind
        self.binary = binary
        self.home = os.path.join(work, kind + "-home")
        self.user_home = os.path.join(work, kind + "-user")
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(self.user_home, exist_ok=True)

    def env(self, extra):
        e = dict(os.environ)
        e.pop("PM2_HOME", None)
        e.pop("HERD_HOME", None)
        # Set in some shells; the file or the manager sets it, or not.
        e.pop("PYTHONUNBUFFERED", None)
        e["HOME"] = self.user_home
        e["PM2_HOME" if self.kind == "pm2" else "HERD_HOME"] = self.home
        e.update(extra)
        return e

    def run(self, args, cwd, extra=None, timeout=60):
        p = subprocess.run([self.binary] + args, cwd=cwd, env=self.env(extra or {}),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    def jlist(self, cwd):
        code, out = self.run(["jlist"], cwd)
        # pm2 may print a banner line before the JSON on its first use.
        start = out.find("[")
        try:
            return json.loads(out[start:out.rfind("]") + 1]) if start >= 0 else []
        except json.JSONDecodeError:
            return []

    def pid_file(self):
        return os.path.join(self.home, "pm2.pid" if self.kind == "pm2" else "herd.pid")

    def kill(self, cwd):
        pid = None
        try:
            pid = int(open(self.pid_file()).read().strip())
        except (OSError, ValueError):
            pass
        try:
            self.run(["kill"], cwd, timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if pid:
            deadline = time.time() + 5
            while time.time() < deadline and alive(pid):
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/env", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return None


def listening(path):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return []
    return [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"listening on (\d+) process (\d+)", text)]


def rel(path, mgr, case_dir):
    if not path:
        return "-"
    for prefix, name in [(mgr.home + "/", "HOME/"), (case_dir + "/", "./"), (mgr.user_home + "/", "~/")]:
        if path.startswith(prefix):
            return name + path[len(prefix):]
    return path


def observe(mgr, case_dir, cwd, known, n_wait=True):
    """What a user sees: jlist, ports, env, logs."""
    deadline = time.time() + 12
    jl = mgr.jlist(cwd)
    while n_wait and time.time() < deadline:
        jl = mgr.jlist(cwd)
        if jl and all(e["pm2_env"]["status"] in ("online", "stopped", "errored") for e in jl):
            break
        time.sleep(0.2)
    obs = {}
    obs["jlist elements"] = str(len(jl))
    obs["jlist (name, status, exec_mode, instances, restart_time)"] = "; ".join(sorted(
        f"{e['name']} {e['pm2_env'].get('status')} {e['pm2_env'].get('exec_mode')} {e['pm2_env'].get('instances')}"
        f" {e['pm2_env'].get('restart_time')}"
        for e in jl))
    outs = sorted({e["pm2_env"].get("pm_out_log_path") for e in jl if e["pm2_env"].get("pm_out_log_path")})
    errs = sorted({e["pm2_env"].get("pm_err_log_path") for e in jl if e["pm2_env"].get("pm_err_log_path")})
    obs["out logs"] = ", ".join(rel(p, mgr, case_dir) for p in outs)
    obs["error logs"] = ", ".join(rel(p, mgr, case_dir) for p in errs)
    # The stand-ins say where they listen; wait a moment for every online one.
    online = sum(1 for e in jl if e["pm2_env"].get("status") == "online")
    ports = []
    deadline = time.time() + 6
    while time.time() < deadline:
        ports = sorted({p for path in outs for p, _ in listening(path)})
        said = {pid for path in outs for _, pid in listening(path)}
        if online == 0 or len(said) >= online:
            break
        time.sleep(0.2)
    answering = []
    envs = {}
    # Also the ports the file or the command gave (a line the manager lost
    # must not hide a worker that serves).
    ports = sorted(set(ports) | set(known))
    for p in ports:
        # Several fresh connections: in cluster mode each may reach another worker.
        answers = [a for a in (get(p) for _ in range(8)) if a]
        if answers:
            answering.append(p)
        for a in answers:
            for k in KEYS:
                v = a["env"].get(k)
                if v is not None:
                    envs.setdefault(k, set()).add(str(v))
    obs["ports said in the out logs"] = str(len({p for path in outs for p, _ in listening(path)}))
    obs["ports answering"] = f"{len(answering)}/{len(ports)}"
    for k in KEYS:
        if k in envs:
            obs[f"env {k}"] = ",".join(sorted(envs[k]))
    lines = 0
    for path in outs:
        try:
            lines += sum(1 for l in open(path, errors="replace") if l.strip())
        except OSError:
            pass
    obs["out log lines"] = str(lines)
    return obs, ports


def run_case(case, mgr, work, ports):
    name, folder, file, sub, start_args, subs, cli_port, verb = case
    case_dir = os.path.join(work, mgr.kind, name)
    shutil.copytree(os.path.join(FILES, folder), case_dir)
    path = os.path.join(case_dir, file)
    body = open(path).read()
    for i, from_ in enumerate(subs):
        body = body.replace(from_, f"{from_.split(':')[0]}: {ports[i]}")
    open(path, "w").write(body)
    cwd = os.path.join(case_dir, sub)
    rel_file = os.path.relpath(path, cwd)
    extra = {"PORT": str(ports[-1])} if cli_port else {}
    obs = {}
    try:
        t = time.time()
        code, out = mgr.run(["start", rel_file] + start_args, cwd, extra)
        obs["start exit"] = str(code)
        obs["start took (s)"] = f"{time.time() - t:.1f}"
        known = [int(v) for k, v in extra.items()] + [ports[i] + j for i, kind in enumerate(subs.values())
                                                      for j in range(3 if kind == "run3" else 1)]
        o, _ = observe(mgr, case_dir, cwd, known)
        obs.update(o)
        code, out = mgr.run([verb[0], rel_file] + verb[1:], cwd, extra)
        obs[f"`{' '.join(verb)}` exit"] = str(code)
        time.sleep(0.5)
        o, _ = observe(mgr, case_dir, cwd, known)
        for k in ["jlist elements", "jlist (name, status, exec_mode, instances, restart_time)", "ports answering",
                  "env NODE_ENV"]:
            obs[f"after {verb[0]}: {k}"] = o.get(k, "-")
    finally:
        mgr.kill(cwd)
    return obs


def main():
    pm2_bin, herd_bin = sys.argv[1], sys.argv[2]
    only = set(sys.argv[3:])
    work = tempfile.mkdtemp(prefix="pm2-compat-")
    rows = []
    try:
        for case in CASES:
            if only and case[0] not in only:
                continue
            subs = case[5]
            ports = []
            for kind in subs.values():
                ports.append(free_run(3) if kind == "run3" else free_port())
            ports.append(free_port())
            res = {}
            for kind, binary in [("pm2", pm2_bin), ("herd", herd_bin)]:
                mgr = Manager(kind, binary, os.path.join(work, case[0]))
                os.makedirs(os.path.join(work, case[0], kind), exist_ok=True)
                res[kind] = run_case(case, mgr, os.path.join(work, case[0]), ports)
            keys = list(dict.fromkeys(list(res["pm2"]) + list(res["herd"])))
            for k in keys:
                a, b = res["pm2"].get(k, "-"), res["herd"].get(k, "-")
                rows.append((case[0], k, a, b))
            print(f"done {case[0]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| file | observed | pm2 7 | herd | |")
    print("|---|---|---|---|---|")
    for name, k, a, b in rows:
        if k == "start took (s)":
            mark = ""
        else:
            mark = "" if a == b else "**differs**"
        print(f"| {name} | {k} | {a} | {b} | {mark} |")


if __name__ == "__main__":
    main()
