#!/usr/bin/env python3
"""What seed 003's /flip speedup can be on this machine, whatever the balancer does.

seed003.py measures last(1 worker) / last(2 workers) for 10 concurrent /flip requests.
With a perfect 5/5 split the answer is 2.0 only if two flips run side by side as fast
as one alone. This script measures that, in the same conditions and interleaved:
- "1 worker": 10 concurrent /flip to one `herd demo -i 1` (as seed003.py);
- "2 x 1 worker": two separate `herd demo -i 1 --balance shared` (no supervisor in the
  data path) on two ports, 5 concurrent /flip to
  each, released together: a 5/5 split that no balancer decides.
ceiling = last(1 worker) / last(2 x 1 worker), per repetition, median reported.

    HERD=target/release/herd python3 bench/flip_ceiling.py [--reps 5] [--out flip-ceiling.json]
"""

import argparse
import threading
import time

import common as C


def fire(targets):
    """One thread per (port, path); all released by one barrier. Returns ms per request."""
    barrier = threading.Barrier(len(targets) + 1)
    out = [None] * len(targets)

    def one(i, port):
        barrier.wait()
        t0 = time.monotonic()
        try:
            st, _, _ = C.get("/flip", port=port, timeout=120)
            out[i] = (time.monotonic() - t0) * 1000 if st == 200 else None
        except Exception:  # noqa: BLE001 - a failure is recorded as None
            out[i] = None

    ts = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(targets)]
    for t in ts:
        t.start()
    barrier.wait()
    for t in ts:
        t.join()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="flip-ceiling.json")
    a = ap.parse_args()
    p1, p2 = C.PORT, C.PORT + 1
    result = {"machine": C.machine_info(), "runs": []}
    try:
        for rep in range(a.reps):
            for setup, ports in (("1 worker", [p1]), ("2 x 1 worker", [p1, p2])):
                procs = [C.start([C.HERD, "demo", "-i", "1", "--balance", "shared", "--listen", f"{C.HOST}:{p}"],
                                 name=f"demo {p}")
                         for p in ports]
                for p in ports:
                    C.wait_http("/", port=p)
                time.sleep(1.2)
                idle = C.quiet_gate()
                la = C.loadavg()
                targets = [p1] * 10 if len(ports) == 1 else [p1] * 5 + [p2] * 5
                ms = fire(targets)
                for pr in procs:
                    C.stop(pr)
                for p in ports:
                    C.wait_port_free(p)
                ok = [m for m in ms if m is not None]
                run = {"rep": rep, "setup": setup, "ms": ms, "last_ms": max(ok) if ok else None,
                       "first_ms": min(ok) if ok else None, "errors": len(ms) - len(ok),
                       "loadavg": la, "idle_before": idle}
                result["runs"].append(run)
                C.log(f"rep {rep} {setup}: first {run['first_ms']:.0f} ms, last {run['last_ms']:.0f} ms, "
                      f"errors {run['errors']}, load {la[0]} idle {idle}")
                C.save_json(a.out, result)
    finally:
        C.stop_all()
    one = [r for r in result["runs"] if r["setup"] == "1 worker"]
    two = [r for r in result["runs"] if r["setup"] == "2 x 1 worker"]
    ceil = [o["last_ms"] / t["last_ms"] for o, t in zip(one, two) if o["last_ms"] and t["last_ms"]]
    result["summary"] = {"ceiling_median": C.median(ceil), "ceiling_min": min(ceil, default=None),
                         "ceiling_max": max(ceil, default=None), "ceilings": ceil}
    C.log(f"ceiling (last 1 worker / last 2 separate workers, 5 each): median {C.median(ceil):.2f} "
          f"[{min(ceil):.2f}-{max(ceil):.2f}] {[round(c, 2) for c in ceil]}")
    C.save_json(a.out, result)


if __name__ == "__main__":
    main()
