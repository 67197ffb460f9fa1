#!/usr/bin/env python3
"""Seed 003's experiment: 10 concurrent CPU-bound requests against 1 worker vs 2 workers.

Each request is a fresh connection from its own thread; all 10 are released at once by
a barrier. Recorded per request: time from release to the full answer, the worker pid
that answered, and X-Response-Time. "first"/"last" are the fastest/slowest of the 10.
Speedup = last(1 worker) / last(2 workers), computed per repetition, median reported.

    python3 bench/seed003.py [--reps 3] [--path /check?ms=2000] [--only NAME,...]
"""

import argparse
import threading
import time

import common as C
from common import Setup

SETUPS = [
    # name, kind, app, balance
    ("herd demo, round-robin", "herd-demo", None, "round-robin"),
    ("herd demo, shared", "herd-demo", None, "shared"),
    ("herd run koa.js, shared", "herd-node", "koa.js", "shared"),
    ("herd run koa.js, round-robin", "herd-node", "koa.js", "round-robin"),
    ("pm2 koa.js", "pm2", "koa.js", None),
    ("node cluster koa.js, rr", "node-cluster", "koa.js", "rr"),
    ("node cluster koa.js, none", "node-cluster", "koa.js", "none"),
]


def fire(path, n=10, timeout=120):
    barrier = threading.Barrier(n + 1)
    out = [None] * n

    def one(i):
        barrier.wait()
        t0 = time.monotonic()
        try:
            st, h, _ = C.get(path, timeout=timeout)
            out[i] = {"ms": (time.monotonic() - t0) * 1000, "status": st,
                      "pid": h.get("x-worker-pid"), "x_response_time": h.get("x-response-time")}
        except Exception as e:  # noqa: BLE001 - record any failure
            out[i] = {"ms": (time.monotonic() - t0) * 1000, "error": repr(e)}

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait()
    for t in ts:
        t.join()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--path", default="/check?ms=2000")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="seed003.json")
    ap.add_argument("--demo-only", action="store_true", help="only the herd demo setups (for /flip)")
    a = ap.parse_args()
    setups = [s for s in SETUPS if (not a.only or any(o in s[0] for o in a.only.split(",")))]
    if a.demo_only:
        setups = [s for s in setups if s[1] == "herd-demo"]
    result = {"machine": C.machine_info(), "path": a.path, "runs": []}
    try:
        for rep in range(a.reps):
            for name, kind, app, bal in setups:
                for n in (1, 2):
                    s = Setup(name, n, kind, app, bal)
                    s.up()
                    idle = C.quiet_gate()
                    la = C.loadavg()
                    reqs = fire(a.path)
                    s.down()
                    oks = [r["ms"] for r in reqs if r.get("status") == 200]
                    run = {"rep": rep, "setup": name, "workers": n, "loadavg": la, "idle_before": idle, "requests": reqs,
                           "first_ms": min(oks) if oks else None, "last_ms": max(oks) if oks else None,
                           "errors": sum(1 for r in reqs if r.get("status") != 200),
                           "per_pid": {}}
                    for r in reqs:
                        if r.get("pid"):
                            run["per_pid"][r["pid"]] = run["per_pid"].get(r["pid"], 0) + 1
                    result["runs"].append(run)
                    C.log(f"rep {rep} {name} -i {n}: first {run['first_ms']:.0f} ms, last {run['last_ms']:.0f} ms, "
                          f"split {sorted(run['per_pid'].values())}, errors {run['errors']}, load {la[0]} idle {idle}")
                    C.save_json(a.out, result)
    finally:
        C.stop_all()
        C.pm2_kill()
    summarize(result)
    C.save_json(a.out, result)


def summarize(result):
    summ = []
    names = []
    for r in result["runs"]:
        if r["setup"] not in names:
            names.append(r["setup"])
    for name in names:
        one = [r for r in result["runs"] if r["setup"] == name and r["workers"] == 1]
        two = [r for r in result["runs"] if r["setup"] == name and r["workers"] == 2]
        speedups = [o["last_ms"] / t["last_ms"] for o, t in zip(one, two) if o["last_ms"] and t["last_ms"]]
        summ.append({
            "setup": name,
            "first_1": C.median([r["first_ms"] for r in one]), "last_1": C.median([r["last_ms"] for r in one]),
            "first_2": C.median([r["first_ms"] for r in two]), "last_2": C.median([r["last_ms"] for r in two]),
            "speedup_median": C.median(speedups), "speedup_min": min(speedups, default=None),
            "speedup_max": max(speedups, default=None), "speedups": speedups,
            "splits_2": [sorted(r["per_pid"].values()) for r in two],
        })
    result["summary"] = summ
    for s in summ:
        C.log(f"{s['setup']:32s} 1w first/last {s['first_1']:7.0f}/{s['last_1']:7.0f}  "
              f"2w first/last {s['first_2']:7.0f}/{s['last_2']:7.0f}  speedup {s['speedup_median']:.2f} "
              f"({s['speedup_min']:.2f}-{s['speedup_max']:.2f}) splits {s['splits_2']}")


if __name__ == "__main__":
    main()
