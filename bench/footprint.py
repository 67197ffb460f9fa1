#!/usr/bin/env python3
"""Footprint and crash recovery.

RSS: after start-up, a 3 s wrk load (`wrk -t1 -c8 -d3s`) and 1 s of rest, the VmRSS of
the process that supervises (herd; pm2's God daemon, which is also pm2's cluster
primary; the node-cluster.js primary) and of each worker.

Crash recovery: kill -9 one worker (a child of the supervisor), then poll `GET /` on
fresh connections from 4 threads, each every 5 ms, staggered (each poll bounded by a 1 s
timeout, the whole wait by 10 s; a 2 ms /proc watcher notes when the new process appears)
until a worker pid that did not exist before answers. Recorded: kill -> replacement
process exists (seen in /proc as a new child), kill -> first answer from the
replacement, and polls that failed or hung (>= 1 s) in between. --kills per setup,
2.5 s apart (longer than herd's --min-uptime 1 s, so no crash backoff applies).

    python3 bench/footprint.py [--kills 5]
"""

import argparse
import os
import signal
import subprocess
import threading
import time

import common as C
from common import Setup

RSS_SETUPS = [
    Setup("herd run -i 2 hello.js (shared)", 2, "herd-node", app="hello.js", balance="shared"),
    Setup("herd run -i 2 hello.js (round-robin)", 2, "herd-node", app="hello.js", balance="round-robin"),
    Setup("herd demo -i 2 (round-robin)", 2, "herd-demo", balance="round-robin"),
    Setup("node cluster 2 hello.js (rr)", 2, "node-cluster", app="hello.js", balance="rr"),
    Setup("pm2 -i 2 hello.js", 2, "pm2", app="hello.js"),
]
CRASH_SETUPS = [
    Setup("herd run -i 2 hello.js, shared", 2, "herd-node", app="hello.js", balance="shared"),
    Setup("herd run -i 2 hello.js, round-robin", 2, "herd-node", app="hello.js", balance="round-robin"),
    Setup("herd demo -i 2, round-robin", 2, "herd-demo", balance="round-robin"),
    Setup("herd demo -i 2, shared", 2, "herd-demo", balance="shared"),
    Setup("node cluster hello.js, rr", 2, "node-cluster", app="hello.js", balance="rr"),
    Setup("node cluster hello.js, none", 2, "node-cluster", app="hello.js", balance="none"),
    Setup("pm2 -i 2 hello.js", 2, "pm2", app="hello.js"),
]


def worker_pids(s):
    sup = s.supervisor_pids()[0]
    return C.children(sup)


def rss(setups):
    out = []
    try:
        for s in setups:
            s.up()
            subprocess.run(["wrk", "-t1", "-c8", "-d3s", f"http://{C.HOST}:{C.PORT}/"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=40)
            time.sleep(1)
            sup = s.supervisor_pids()[0]
            ws = C.children(sup)
            r = {"setup": s.name, "supervisor_pid": sup, "supervisor_rss_kb": C.rss_kb(sup),
                 "workers_rss_kb": [C.rss_kb(w) for w in ws]}
            if s.kind == "pm2":
                r["note"] = "pm2 God daemon = pm2's cluster primary"
            out.append(r)
            C.log(f"{s.name:40s} supervisor {r['supervisor_rss_kb']} kB, workers {r['workers_rss_kb']} kB")
            s.down()
    finally:
        C.stop_all()
        C.pm2_kill()
    return out


def one_kill(s, pollers=4):
    """kill -9 the oldest worker; `pollers` threads each poll every 5 ms (staggered), so
    one poll that hangs on the dead worker does not hold up the others."""
    before = set(worker_pids(s))
    victim = min(before)
    known = {str(p) for p in before}
    done = threading.Event()
    lock = threading.Lock()
    st = {"spawned_ms": None, "first_answer_ms": None, "failed": 0, "hung": 0, "polls": 0}
    t0 = time.monotonic()

    def watch_spawn():
        while not done.is_set() and time.monotonic() - t0 < 10:
            if set(worker_pids(s)) - before:
                st["spawned_ms"] = (time.monotonic() - t0) * 1000
                return
            time.sleep(0.002)

    def poll(k):
        time.sleep(0.005 * k / pollers)
        while not done.is_set() and time.monotonic() - t0 < 10:
            t1 = time.monotonic()
            try:
                code, h, _ = C.get("/", timeout=1)
                with lock:
                    st["polls"] += 1
                    if code == 200 and h.get("x-worker-pid") not in known:
                        if st["first_answer_ms"] is None:
                            st["first_answer_ms"] = (time.monotonic() - t0) * 1000
                        done.set()
                    elif code != 200:
                        st["failed"] += 1
            except Exception:  # noqa: BLE001
                with lock:
                    st["polls"] += 1
                    st["hung" if time.monotonic() - t1 >= 0.99 else "failed"] += 1
            time.sleep(0.005)

    ts = [threading.Thread(target=watch_spawn)] + [threading.Thread(target=poll, args=(k,)) for k in range(pollers)]
    os.kill(victim, signal.SIGKILL)
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done.set()
    return {"victim": victim, "spawned_ms": st["spawned_ms"], "first_answer_ms": st["first_answer_ms"],
            "failed_polls": st["failed"], "hung_polls": st["hung"], "polls": st["polls"]}


def crash(setups, kills):
    out = []
    try:
        for s in setups:
            s.up()
            for k in range(kills):
                r = one_kill(s)
                r["setup"] = s.name
                r["loadavg"] = C.loadavg()
                out.append(r)
                C.log(f"{s.name:40s} kill {k}: spawned {r['spawned_ms']}, first answer {r['first_answer_ms']} ms, "
                      f"failed {r['failed_polls']}, hung {r['hung_polls']}")
                time.sleep(2.5)
            s.down()
    finally:
        C.stop_all()
        C.pm2_kill()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--skip-rss", action="store_true")
    a = ap.parse_args()
    result = {"machine": C.machine_info()}
    if not a.skip_rss:
        result["rss"] = rss(RSS_SETUPS)
        C.save_json("footprint.json", result)
    result["crash"] = crash(CRASH_SETUPS, a.kills)
    summ = []
    for s in CRASH_SETUPS:
        rs = [r for r in result["crash"] if r["setup"] == s.name]
        firsts = [r["first_answer_ms"] for r in rs if r["first_answer_ms"] is not None]
        summ.append({"setup": s.name, "first_answer_ms_median": C.median(firsts),
                     "first_answer_ms_range": [min(firsts, default=None), max(firsts, default=None)],
                     "spawned_ms_median": C.median([r["spawned_ms"] for r in rs if r["spawned_ms"] is not None]),
                     "never_answered": sum(1 for r in rs if r["first_answer_ms"] is None),
                     "failed_polls": sum(r["failed_polls"] for r in rs), "hung_polls": sum(r["hung_polls"] for r in rs)})
    result["crash_summary"] = summ
    for x in summ:
        C.log(f"{x['setup']:40s} spawned {x['spawned_ms_median']:.0f} ms, first answer {x['first_answer_ms_median']:.0f} ms "
              f"{x['first_answer_ms_range']}, never {x['never_answered']}, failed {x['failed_polls']}, hung {x['hung_polls']}")
    C.save_json("footprint.json", result)


if __name__ == "__main__":
    main()
