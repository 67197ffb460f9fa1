#!/usr/bin/env python3
"""Throughput with wrk (`wrk -t2 -c64 -d10s --latency`; wrk shares the 2 cores).

Two groups, each run in one interleaved loop (every setup once per repetition, so slow
drift in the machine's load hits all setups alike):

  demo:  the herd demo worker (`/` and `/health`; group demo-cpu: `/flip?format=none`,
         ~1.05 ms of CPU per request, server-bound) with 2 workers under
         `herd demo --balance shared|reuseport|round-robin`, against the same worker
         binary with no supervisor at all (bench/limit.py: 2 workers inheriting ONE shared
         socket, or one SO_REUSEPORT socket each), plus 1 standalone worker.
  node:  examples/node/hello.js under herd (shared, round-robin), Node's cluster module
         (rr, none), pm2 -i 2 (default, and --no-pmx) and one plain `node hello.js`.

Variants: keep-alive (wrk's default: 64 connections opened once, so balancing only
matters at connect time) and `Connection: close` (a new connection per request: every
request goes through accept, and in round-robin through herd's hand-over).

    python3 bench/throughput.py [--group demo|demo-cpu|node|all] [--reps 3] [--duration 10]
"""

import argparse
import re
import subprocess

import common as C
from common import Setup

DEMO = [
    Setup("limit: 1 standalone worker", 1, "limit-demo", balance="shared"),
    Setup("limit: 2 workers, one shared socket", 2, "limit-demo", balance="shared"),
    Setup("limit: 2 workers, SO_REUSEPORT", 2, "limit-demo", balance="reuseport"),
    Setup("herd demo -i 2 shared", 2, "herd-demo", balance="shared"),
    Setup("herd demo -i 2 reuseport", 2, "herd-demo", balance="reuseport"),
    Setup("herd demo -i 2 round-robin", 2, "herd-demo", balance="round-robin"),
]
DEMO_CASES = [("/", "keepalive"), ("/health", "keepalive"), ("/health", "close")]
# Server-bound: /flip?format=none costs ~1.05 ms of worker CPU, so 2 workers matter and wrk
# itself needs little CPU (the routes above are wrk-bound: 1 worker does as well as 2).
DEMO_CPU_CASES = [("/flip?format=none", "keepalive"), ("/flip?format=none", "close")]

NODE = [
    Setup("node hello.js (1 process)", 1, "node-single", app="hello.js"),
    Setup("herd run -i 2 shared", 2, "herd-node", app="hello.js", balance="shared"),
    Setup("herd run -i 2 round-robin", 2, "herd-node", app="hello.js", balance="round-robin"),
    Setup("node cluster 2, rr", 2, "node-cluster", app="hello.js", balance="rr"),
    Setup("node cluster 2, none", 2, "node-cluster", app="hello.js", balance="none"),
    Setup("pm2 -i 2", 2, "pm2", app="hello.js"),
    Setup("pm2 -i 2 --no-pmx", 2, "pm2", app="hello.js", extra={"no_pmx": True}),
]
NODE_CASES = [("/", "keepalive"), ("/", "close")]

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def wrk(path, variant, duration, threads=2, conns=64):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "2s"]
    if variant == "close":
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://{C.HOST}:{C.PORT}{path}")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=duration + 30)
    out = r.stdout
    res = {"cmd": " ".join(cmd), "raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = parse_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = [int(x) for x in m.groups()] if m else [0, 0, 0, 0]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def run_group(setups, cases, reps, duration, ready_path, out):
    result = {"machine": C.machine_info(), "duration_s": duration, "runs": []}
    try:
        for rep in range(reps):
            for s in setups:
                s.up(ready_path)
                for path, variant in cases:
                    idle = C.quiet_gate()
                    la = C.loadavg()
                    workers = s.worker_pids()
                    c0 = [C.cpu_s(p) for p in workers]
                    r = wrk(path, variant, duration)
                    # CPU seconds each worker used during the run: shows when one worker
                    # took (nearly) all the connections.
                    r["worker_cpu_s"] = [round(C.cpu_s(p) - c, 2) for p, c in zip(workers, c0)]
                    r.update(rep=rep, setup=s.name, path=path, variant=variant, loadavg=la, idle_before=idle)
                    result["runs"].append(r)
                    C.log(f"rep {rep} {s.name:40s} {path:8s} {variant:9s} {r['rps'] or 0:9.0f} req/s "
                          f"p99 {r['p99_ms']} ms errors {r['socket_errors']} non2xx {r['non2xx']} worker CPU s {r['worker_cpu_s']} "
                          f"load {la[0]} idle {idle}")
                s.down()
                C.save_json(out, result)
    finally:
        C.stop_all()
        C.pm2_kill()
    summ = []
    for s in setups:
        for path, variant in cases:
            rs = [r for r in result["runs"] if r["setup"] == s.name and r["path"] == path and r["variant"] == variant]
            rps = [r["rps"] for r in rs if r["rps"]]
            summ.append({"setup": s.name, "path": path, "variant": variant,
                         "rps_median": C.median(rps), "rps_min": min(rps, default=None), "rps_max": max(rps, default=None),
                         "p99_median_ms": C.median([r["p99_ms"] for r in rs if r["p99_ms"] is not None]),
                         "errors": [r["socket_errors"] for r in rs]})
    result["summary"] = summ
    for x in summ:
        C.log(f"{x['setup']:40s} {x['path']:8s} {x['variant']:9s} {x['rps_median']:9.0f} "
              f"({x['rps_min']:.0f}-{x['rps_max']:.0f}) p99 {x['p99_median_ms']}")
    C.save_json(out, result)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", default="all", choices=["demo", "demo-cpu", "node", "all"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    a = ap.parse_args()
    if a.group in ("demo", "all"):
        run_group(DEMO, DEMO_CASES, a.reps, a.duration, "/health", "throughput-demo.json")
    if a.group in ("demo-cpu", "all"):
        run_group(DEMO, DEMO_CPU_CASES, a.reps, a.duration, "/health", "throughput-demo-cpu.json")
    if a.group in ("node", "all"):
        run_group(NODE, NODE_CASES, a.reps, a.duration, "/", "throughput-node.json")


if __name__ == "__main__":
    main()
