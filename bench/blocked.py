#!/usr/bin/env python3
"""Latency of fast requests while one of 2 workers is blocked in /check.

Per run: start the setup (2 workers); start P probe threads, each looping
"fresh connection, GET /, record latency, sleep --gap ms"; after 0.5 s send one
`/check?ms=3000` (it lands on whichever worker the balancer picks and blocks it);
keep probing until the /check answers, then 0.3 s more. Probes *started* while the
worker was blocked are the sample: p50, p99, max, and how many took >= 500 ms (stuck
behind the blocked worker). Every probe has a 10 s timeout; a run lasts ~4 s.

    python3 bench/blocked.py [--reps 3] [--probes 4] [--gap 5]
"""

import argparse
import threading
import time

import common as C
from common import Setup

SETUPS = [
    ("herd demo, round-robin", "herd-demo", None, "round-robin"),
    ("herd demo, shared", "herd-demo", None, "shared"),
    ("herd run koa.js, round-robin", "herd-node", "koa.js", "round-robin"),
    ("herd run koa.js, shared", "herd-node", "koa.js", "shared"),
    ("node cluster koa.js, rr", "node-cluster", "koa.js", "rr"),
    ("node cluster koa.js, none", "node-cluster", "koa.js", "none"),
    ("pm2 koa.js -i 2", "pm2", "koa.js", None),
]
STUCK_MS = 500


def one_run(check_ms, probes, gap_ms):
    stop = threading.Event()
    samples = []  # (t_start, ms, pid or None, error or None)
    lock = threading.Lock()

    def probe():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                st, h, _ = C.get("/", timeout=10)
                rec = (t0, (time.monotonic() - t0) * 1000, h.get("x-worker-pid"), None if st == 200 else st)
            except Exception as e:  # noqa: BLE001
                rec = (t0, (time.monotonic() - t0) * 1000, None, repr(e))
            with lock:
                samples.append(rec)
            time.sleep(gap_ms / 1000)

    ts = [threading.Thread(target=probe) for _ in range(probes)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    t_check = time.monotonic()
    st, h, _ = C.get(f"/check?ms={check_ms}", timeout=check_ms / 1000 + 30)
    t_done = time.monotonic()
    blocked_pid = h.get("x-worker-pid")
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join()
    during = [s for s in samples if t_check <= s[0] <= t_done]
    before = [s for s in samples if s[0] < t_check]
    lat = [s[1] for s in during]
    stuck = [s for s in during if s[1] >= STUCK_MS]
    return {
        "check_status": st, "check_ms_wall": (t_done - t_check) * 1000, "blocked_pid": blocked_pid,
        "n": len(during), "p50_ms": C.percentile(lat, 50), "p99_ms": C.percentile(lat, 99),
        "max_ms": max(lat, default=None), "stuck": len(stuck),
        "stuck_on_blocked_pid": sum(1 for s in stuck if s[2] == blocked_pid),
        "errors": sum(1 for s in during if s[3] is not None),
        "before_p50_ms": C.percentile([s[1] for s in before], 50),
        "served_by": {p: sum(1 for s in during if s[2] == p) for p in {s[2] for s in during}},
        "latencies": [round(x, 2) for x in lat],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--gap", type=float, default=5)
    ap.add_argument("--check-ms", type=int, default=3000)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    setups = [s for s in SETUPS if (not a.only or any(o in s[0] for o in a.only.split(",")))]
    result = {"machine": C.machine_info(), "probes": a.probes, "gap_ms": a.gap, "check_ms": a.check_ms,
              "stuck_ms": STUCK_MS, "runs": []}
    try:
        for rep in range(a.reps):
            for name, kind, app, bal in setups:
                s = Setup(name, 2, kind, app, bal)
                s.up()
                idle = C.quiet_gate()
                la = C.loadavg()
                r = one_run(a.check_ms, a.probes, a.gap)
                s.down()
                r.update(rep=rep, setup=name, loadavg=la, idle_before=idle)
                result["runs"].append(r)
                C.log(f"rep {rep} {name:30s} n {r['n']:5d} p50 {r['p50_ms']:6.1f} p99 {r['p99_ms']:7.1f} "
                      f"max {r['max_ms']:7.1f} stuck {r['stuck']} (on blocked {r['stuck_on_blocked_pid']}) "
                      f"errors {r['errors']} load {la[0]} idle {idle}")
                C.save_json("blocked.json", result)
    finally:
        C.stop_all()
        C.pm2_kill()
    summ = []
    for name, *_ in setups:
        rs = [r for r in result["runs"] if r["setup"] == name]
        summ.append({"setup": name,
                     "p50_ms": C.median([r["p50_ms"] for r in rs]), "p99_ms": C.median([r["p99_ms"] for r in rs]),
                     "p99_all": [round(r["p99_ms"], 1) for r in rs],
                     "max_ms": C.median([r["max_ms"] for r in rs]), "stuck": [r["stuck"] for r in rs],
                     "n": [r["n"] for r in rs], "errors": [r["errors"] for r in rs]})
    result["summary"] = summ
    for x in summ:
        C.log(f"{x['setup']:30s} p50 {x['p50_ms']:6.1f} p99 {x['p99_ms']:7.1f} {x['p99_all']} "
              f"max {x['max_ms']:7.1f} stuck {x['stuck']} n {x['n']}")
    C.save_json("blocked.json", result)


if __name__ == "__main__":
    main()
