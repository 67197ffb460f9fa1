#!/usr/bin/env python3
"""Where does round-robin lose fresh-connection throughput? CPU accounting per connection.

For each setup: `wrk -t2 -c64 -d10s -H 'Connection: close'` on /health (demo) or /
(hello.js); CPU time (utime+stime from /proc/PID/stat, all threads) of the supervisor and
of the workers over the run, divided by the requests wrk completed; plus the supervisor's
context switches. With --perf, also `perf record -g` on the supervisor for 5 s of the run
(report in results/perf-rr-*.txt).

    python3 bench/profile_rr.py [--perf]
"""

import argparse
import os
import subprocess
import threading
import time

import common as C
from common import Setup
import throughput

SETUPS = [
    (Setup("herd demo -i 2 shared", 2, "herd-demo", balance="shared"), "/health"),
    (Setup("herd demo -i 2 round-robin", 2, "herd-demo", balance="round-robin"), "/health"),
    (Setup("limit: 2 workers, one shared socket", 2, "limit-demo", balance="shared"), "/health"),
    (Setup("herd run -i 2 hello.js shared", 2, "herd-node", app="hello.js", balance="shared"), "/"),
    (Setup("herd run -i 2 hello.js round-robin", 2, "herd-node", app="hello.js", balance="round-robin"), "/"),
    (Setup("node cluster 2 hello.js rr", 2, "node-cluster", app="hello.js", balance="rr"), "/"),
]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / TICK
    except OSError:
        return 0.0


def ctxsw(pid):
    n = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        n += int(line.split()[1])
    except OSError:
        pass
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    out = {"machine": C.machine_info(), "runs": []}
    try:
        for rep in range(a.reps):
            for s, path in SETUPS:
                s.up(path)
                sup = s.proc.pid
                workers = C.children(sup)
                idle = C.quiet_gate()
                c0 = {p: cpu_s(p) for p in [sup] + workers}
                x0 = ctxsw(sup)
                perf = None
                if a.perf and rep == 0 and s.kind != "limit-demo":
                    name = s.name.replace(" ", "_").replace(".", "")
                    rep_file = os.path.join(C.RESULTS, f"perf-{name}.data")

                    def run_perf():
                        time.sleep(2)
                        subprocess.run(["perf", "record", "-F", "999", "-g", "-o", rep_file, "-p", str(sup),
                                        "--", "sleep", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       timeout=60)
                    perf = threading.Thread(target=run_perf)
                    perf.start()
                w = throughput.wrk(path, "close", 10)
                if perf:
                    perf.join()
                c1 = {p: cpu_s(p) for p in [sup] + workers}
                x1 = ctxsw(sup)
                s.down()
                reqs = (w["rps"] or 0) * 10
                r = {"rep": rep, "setup": s.name, "rps": w["rps"], "idle_before": idle,
                     "supervisor_cpu_s": c1[sup] - c0[sup],
                     "workers_cpu_s": sum(c1[p] - c0[p] for p in workers),
                     "supervisor_us_per_conn": (c1[sup] - c0[sup]) / reqs * 1e6 if reqs else None,
                     "workers_us_per_conn": sum(c1[p] - c0[p] for p in workers) / reqs * 1e6 if reqs else None,
                     "supervisor_ctxsw_per_conn": (x1 - x0) / reqs if reqs else None}
                out["runs"].append(r)
                C.log(f"rep {rep} {s.name:36s} {w['rps']:8.0f} req/s  supervisor {r['supervisor_cpu_s']:.2f} s CPU "
                      f"({r['supervisor_us_per_conn']:.1f} us/conn, {r['supervisor_ctxsw_per_conn']:.2f} ctxsw/conn), "
                      f"workers {r['workers_cpu_s']:.2f} s ({r['workers_us_per_conn']:.1f} us/conn) idle {idle}")
                C.save_json("profile-rr.json", out)
    finally:
        C.stop_all()


if __name__ == "__main__":
    main()
