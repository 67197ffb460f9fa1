"""herd's crash backoff under two faults (issue 15 item 3), run by hand:

    python3 bench/backoff.py [chaos] [outage] [--herd PATH] [--worker PATH] [--label NAME]

(a) chaos: `herd run -i 2` serving under fresh-connection load (8 clients, one
    request per connection, at most 400,000 requests) while a random worker is
    killed with SIGKILL every 200-500 ms (uniform, seeded) for 30 s; for the
    LISTEN_FDS fixture (`herd-test-worker`, `--listen`) and for a Node app
    (examples/node/hello.js, herd as its cluster primary). Counted: requests
    answered, failed (refused, reset, any error), hung (not answered within
    2 s), the slowest request, the longest time with no worker process at all
    (sampled every 10 ms), and from herd's own log: slots errored, early
    starts of a killed worker's slot.
(b) outage: `herd run -i 2 --listen` of the fixture with `--require-file FLAG`
    (it exits 1 at start while FLAG is missing: its dependency is down). FLAG is
    removed and both workers crash (`/exit?code=1`), it stays away 10 s, then comes
    back: the time from its return to the first answer, and whether herd gave
    the app up (errored).

Every process is started in its own session and stopped by its pid (bench/common.py).
Results: results/backoff-<label>.json and a line per figure on stdout.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import HOST, log  # noqa: E402

PORT = common.PORT
CLIENTS = 8
HUNG = 2.0
KILL_EVERY = (0.2, 0.5)  # seconds between kills, uniform
CHAOS_FOR = 30.0
MAX_REQUESTS = 400_000  # bound on the load, whatever the machine's speed
OUTAGE_FOR = 10.0


def default_bin(name):
    target = os.environ.get("CARGO_TARGET_DIR", "/work/target-bench")
    return os.path.join(target, "release", name)


def load(stop, results, port):
    """One client: GET / on a fresh connection, again and again (bounded)."""
    while not stop.is_set() and len(results) < MAX_REQUESTS:
        t0 = time.monotonic()
        try:
            st, _, _ = common.get("/", port=port, timeout=10)
            kind = "ok" if st == 200 else f"status {st}"
        except ConnectionRefusedError:
            kind = "refused"
        except ConnectionResetError:
            kind = "reset"
        except TimeoutError:
            kind = "timeout"
        except OSError as e:
            kind = type(e).__name__
        except Exception as e:  # http.client's own (RemoteDisconnected, BadStatusLine)
            kind = type(e).__name__
        results.append((t0, time.monotonic() - t0, kind))


def workers_of(pid):
    return common.children(pid)


def started_logged(argv, env, name, err_path):
    """herd in its own session with its log (stderr) kept for counting."""
    e = dict(os.environ)
    e.update(env)
    err = open(err_path, "w")
    p = subprocess.Popen(argv, env=e, cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=err,
                         start_new_session=True)
    err.close()
    p.bench_name = name
    common._started.append(p)
    return p


def chaos(herd, argv, env, label):
    common.wait_port_free(PORT)
    tmp = tempfile.mkdtemp(prefix="herd-backoff-")
    err_path = os.path.join(tmp, "herd.err")
    p = started_logged([herd, "run", "-i", "2", *argv], env, label, err_path)
    try:
        common.wait_http("/", PORT, timeout=30)
        time.sleep(1.5)  # both workers up past min_uptime
        results, stop = [], threading.Event()
        clients = [threading.Thread(target=load, args=(stop, results, PORT)) for _ in range(CLIENTS)]
        for c in clients:
            c.start()
        rng = random.Random(15)
        kills, empty_longest, empty_since, samples_empty = 0, 0.0, None, 0
        t_end = time.monotonic() + CHAOS_FOR
        next_kill = time.monotonic()
        while time.monotonic() < t_end:
            now = time.monotonic()
            live = workers_of(p.pid)
            if not live:
                samples_empty += 1
                empty_since = empty_since or now
                empty_longest = max(empty_longest, now - empty_since)
            else:
                empty_since = None
            if now >= next_kill:
                if live:
                    try:
                        os.kill(rng.choice(live), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                next_kill += rng.uniform(*KILL_EVERY)
            time.sleep(0.01)
        stop.set()
        for c in clients:
            c.join(15)
        alive = p.poll() is None
    finally:
        common.stop(p)
    text = open(err_path).read()
    kinds = {}
    for _, _, k in results:
        kinds[k] = kinds.get(k, 0) + 1
    hung = sum(1 for _, d, _ in results if d > HUNG)
    # A timeout is a hung request, counted there.
    failed = sum(v for k, v in kinds.items() if k not in ("ok", "timeout"))
    out = {
        "app": label,
        "requests": len(results),
        "ok": kinds.get("ok", 0),
        "failed": failed,
        "failed_by_kind": {k: v for k, v in kinds.items() if k not in ("ok", "timeout")},
        "hung_over_2s": hung,
        "slowest_s": round(max((d for _, d, _ in results), default=0), 3),
        "kills": kills,
        "longest_without_a_worker_s": round(empty_longest, 3),
        "herd_still_running": alive,
        "slots_errored": text.count("so its slot is errored"),
        "early_starts_of_a_killed_slot": text.count("before its backoff ends"),
    }
    log(f"chaos {label}: {json.dumps(out)}")
    return out


def outage(herd, worker, label):
    common.wait_port_free(PORT)
    tmp = tempfile.mkdtemp(prefix="herd-backoff-")
    flag = os.path.join(tmp, "dependency-up")
    open(flag, "w").close()
    err_path = os.path.join(tmp, "herd.err")
    argv = [herd, "run", "-i", "2", "--listen", f"{HOST}:{PORT}", "--", worker, "--require-file", flag]
    p = started_logged(argv, {}, "outage", err_path)
    try:
        common.wait_http("/", PORT, timeout=30)
        time.sleep(1.5)
        os.unlink(flag)
        t_down = time.monotonic()
        # The dependency is gone: each worker crashes on its next request.
        while time.monotonic() - t_down < 5 and workers_of(p.pid):
            try:
                common.get("/exit?code=1", PORT, timeout=1)
            except Exception:
                pass
            time.sleep(0.01)
        time.sleep(max(0.0, OUTAGE_FOR - (time.monotonic() - t_down)))
        open(flag, "w").close()
        t_back = time.monotonic()
        served = None
        while time.monotonic() - t_back < 60:
            try:
                st, _, _ = common.get("/", PORT, timeout=1)
                if st == 200:
                    served = time.monotonic() - t_back
                    break
            except Exception:
                pass
            if p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(0.5)
        ended = p.poll()
    finally:
        common.stop(p)
    text = open(err_path).read()
    errored = "errored" in text
    delays = [float(v) * (0.001 if unit == "ms" else 1.0)
              for v, unit in re.findall(r"restarting it in ([0-9.]+) (ms|s)\b", text)]
    out = {
        "app": "fixture --require-file",
        "outage_s": OUTAGE_FOR,
        "serving_again_after_return_s": None if served is None else round(served, 3),
        "errored": errored,
        "herd_exited": ended is not None,
        "crashes_logged": text.count("exited with code 1"),
        "longest_backoff_logged_s": max(delays, default=None),
        "serving_at_all": served is not None,
    }
    log(f"outage: {json.dumps(out)}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("steps", nargs="*", default=["chaos", "outage"])
    ap.add_argument("--herd", default=common.HERD if os.path.exists(common.HERD) else default_bin("herd"))
    ap.add_argument("--worker", default=None)
    ap.add_argument("--label", default="now")
    a = ap.parse_args()
    worker = a.worker or os.path.join(os.path.dirname(a.herd), "herd-test-worker")
    for b in (a.herd, worker):
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: build herd in release mode first (cargo build --release -p herd --bins)")
    record = {"label": a.label, "herd": a.herd, "loadavg": common.loadavg()}
    try:
        if "chaos" in a.steps:
            record["idle_before"] = common.quiet_gate()
            record["chaos"] = [
                chaos(a.herd, ["--listen", f"{HOST}:{PORT}", "--", worker], {}, "fixture (LISTEN_FDS)"),
                chaos(a.herd, ["--", os.path.join(common.EXAMPLES, "hello.js")], {"PORT": str(PORT)}, "node hello.js"),
            ]
        if "outage" in a.steps:
            record["outage"] = outage(a.herd, worker, a.label)
    finally:
        common.stop_all()
    os.makedirs(common.RESULTS, exist_ok=True)
    path = os.path.join(common.RESULTS, f"backoff-{a.label}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
