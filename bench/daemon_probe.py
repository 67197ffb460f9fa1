#!/usr/bin/env python3
"""Measuring helpers for bench/daemon.sh (herd daemon vs pm2). Never a test.

    daemon_probe.py serving PORT [PORT ...] --timeout S     wait until every port answers GET /
    daemon_probe.py crash PORT --pids P1,P2 --kills N       kill -9 a worker, time until a new pid answers
    daemon_probe.py load PORT --seconds S --out FILE        fresh-connection prober (until SIGTERM or S)
    daemon_probe.py logs FILE --lines N [--time] --t0 NS    wait for N lines, then count lost/corrupted
    daemon_probe.py floor PORT --script hello.js --runs N    Node alone: spawn -> first answer (ms)
    daemon_probe.py ratios RESULTS.json                     the summary table

Each prints one JSON object on stdout (what daemon.sh records); diagnostics go to stderr.
Only `floor` starts a process (node, in its own session, killed by its pid); `crash` sends
SIGKILL only to the worker pids it is given.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import sys
import threading
import time

HOST = "127.0.0.1"


def get(port, timeout=2.0):
    """One GET / on a fresh connection: (status, worker pid or None)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise OSError(f"no HTTP answer ({len(data)} bytes)")
    status = int(lines[0].split()[1])
    pid = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-worker-pid":
            pid = int(v.strip())
    return status, pid


def cmd_serving(a):
    t0 = time.monotonic()
    end = t0 + a.timeout
    pending = set(a.ports)
    while pending and time.monotonic() < end:
        for p in sorted(pending):
            try:
                if get(p, timeout=1.0)[0] == 200:
                    pending.discard(p)
            except OSError:
                pass
        if pending:
            time.sleep(0.01)
    out = {"serving_s": round(time.monotonic() - t0, 3), "not_serving": sorted(pending)}
    print(json.dumps(out))
    return 0 if not pending else 1


def cmd_crash(a):
    """Kill -9 one worker (in turn), poll GET / every ~2 ms on fresh connections, stop the clock
    at the first answer from a pid that was not a worker before the kill."""
    pids = [int(p) for p in a.pids.split(",") if p]
    results = []
    for k in range(a.kills):
        known = set(pids)
        victim = pids[k % len(pids)]
        hung = 0
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = None
        while time.monotonic() - t0 < a.timeout:
            t = time.monotonic()
            try:
                st, pid = get(a.port, timeout=1.0)
                if st == 200 and pid is not None and pid not in known:
                    new = pid
                    break
            except OSError:
                if time.monotonic() - t >= 1.0:
                    hung += 1
            time.sleep(0.002)
        took = (time.monotonic() - t0) * 1000
        results.append({"killed": victim, "new": new, "ms": round(took, 1), "hung_polls": hung})
        print(f"  kill -9 {victim}: replacement {new} served after {took:.0f} ms", file=sys.stderr)
        if new is None:
            break
        pids = [p for p in pids if p != victim] + [new]
        # let the replacement settle (and any restart backoff reset) before the next kill
        time.sleep(a.settle)
    ok = [r["ms"] for r in results if r["new"] is not None]
    print(json.dumps({"median_ms": statistics.median(ok) if ok else None,
                      "min_ms": min(ok, default=None), "max_ms": max(ok, default=None),
                      "kills": results, "pids_after": pids}))
    return 0 if len(ok) == a.kills else 1


def cmd_floor(a):
    """How long Node itself takes from spawn to serving hello.js: the floor under any
    supervisor's kill -9 -> replacement serving."""
    import subprocess
    runs = []
    for _ in range(a.runs):
        env = dict(os.environ, PORT=str(a.port))
        t0 = time.monotonic()
        p = subprocess.Popen(["node", a.script], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while time.monotonic() - t0 < 10:
                try:
                    if get(a.port, timeout=1.0)[0] == 200:
                        runs.append(round((time.monotonic() - t0) * 1000, 1))
                        break
                except OSError:
                    time.sleep(0.002)
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        time.sleep(0.3)
    print(json.dumps({"median_ms": statistics.median(runs) if runs else None, "runs": runs}))
    return 0


def cmd_load(a):
    """Fresh connections as fast as `threads` loops can make them; count failures."""
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "errors": {}}

    def loop():
        while not stop.is_set():
            try:
                st, _ = get(a.port, timeout=5.0)
                ok = st == 200
                err = None if ok else f"status {st}"
            except OSError as e:
                ok, err = False, type(e).__name__
            with lock:
                if ok:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    counts["errors"][err] = counts["errors"].get(err, 0) + 1

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ts = [threading.Thread(target=loop, daemon=True) for _ in range(a.threads)]
    for t in ts:
        t.start()
    end = time.monotonic() + a.seconds
    while not stop.is_set() and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    for t in ts:
        t.join(timeout=6)
    with open(a.out, "w") as f:
        json.dump(counts, f)
    return 0


STAMP = re.compile(rb"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?: $")
LINE = re.compile(rb"^(.*?)line (\d+) x{40}$")


def cmd_logs(a):
    """Wait until FILE has N lines (counting as it grows), then check every line."""
    t0 = a.t0 / 1e9  # the caller's clock (date +%s%N) just before `start`
    end = time.time() + a.timeout
    seen = 0
    off = 0
    done_at = None
    last_growth = time.time()
    while time.time() < end:
        try:
            with open(a.file, "rb") as f:
                f.seek(off)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            off += len(chunk)
            seen += chunk.count(b"\n")
            last_growth = time.time()
        if done_at is None and seen >= a.lines:
            done_at = time.time()
        if done_at is not None and time.time() - last_growth > 1.0:
            break
        if done_at is None and time.time() - last_growth > a.stall:
            break
        time.sleep(0.02)
    got = [False] * a.lines
    corrupted = dup = 0
    examples = []
    with open(a.file, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n")
            m = LINE.match(line)
            ok = m is not None
            if ok:
                prefix = m.group(1)
                ok = (STAMP.match(prefix) is not None) if a.time else prefix == b""
            if ok:
                i = int(m.group(2))
                ok = i < a.lines
            if not ok:
                corrupted += 1
                if len(examples) < 5:
                    examples.append(line[:160].decode("utf-8", "replace"))
                continue
            if got[i]:
                dup += 1
            got[i] = True
    lost = a.lines - sum(got)
    out = {"seconds": round(done_at - t0, 3) if done_at else None, "lines_in_file": seen,
           "lost": lost, "corrupted": corrupted, "duplicated": dup, "examples": examples}
    print(json.dumps(out))
    return 0


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if abs(v) >= 10 else f"{v:.3g}{unit}"
    return f"{v:,}{unit}"


def cmd_ratios(a):
    with open(a.results) as f:
        r = json.load(f)
    rows = []  # (figure, herd, pm2, ratio, target, met)

    def row(name, h, p, target_op, target, unit="", better="low"):
        ratio = (h / p) if (h is not None and p) else None
        met = None
        if ratio is not None and target is not None:
            met = ratio <= target if target_op == "<=" else ratio >= target
        rows.append((name, fmt(h, unit), fmt(p, unit), f"{ratio:.3f}×" if ratio is not None else "—",
                     f"{target_op} {target}×" if target is not None else "", met))

    g = r.get
    row("herd's PSS (daemon + supervisors) vs pm2 daemon's, 1 app", g("herd_pss1_mb"), g("pm2_pss1_mb"), "<=", 0.10, " MB")
    row("herd's PSS (daemon + supervisors) vs pm2 daemon's, 100 apps", g("herd_pss100_mb"), g("pm2_pss100_mb"), "<=", 0.5, " MB")
    row("daemon RSS, 1 app (hello.js, 2 workers)", g("herd_rss1_mb"), g("pm2_rss1_mb"), "<=", 0.10, " MB")
    row("daemon RSS, 100 apps (1 worker each)", g("herd_rss100_mb"), g("pm2_rss100_mb"), "<=", 0.10, " MB")
    row("… its anonymous RSS (RssAnon), 1 app", g("herd_anon1_mb"), g("pm2_anon1_mb"), "<=", None, " MB")
    row("… its anonymous RSS (RssAnon), 100 apps", g("herd_anon100_mb"), g("pm2_anon100_mb"), "<=", None, " MB")
    row("`list` latency, 1 app (median)", g("herd_list1_ms"), g("pm2_list1_ms"), "<=", 0.05, " ms")
    row("`list` latency, 100 apps (median)", g("herd_list100_ms"), g("pm2_list100_ms"), "<=", None, " ms")
    row("`start` ×100, CLI time", g("herd_start100_s"), g("pm2_start100_s"), "<=", 0.10, " s")
    row("`start` ×100 → all 100 serving", g("herd_serve100_s"), g("pm2_serve100_s"), "<=", None, " s")
    row("hello.js 2 workers, wrk req/s (median)", g("herd_rps"), g("pm2_rps"), ">=", 1.10, "")
    row("kill -9 worker → replacement serves (median)", g("herd_crash_ms"), g("pm2_crash_ms"), "<=", 0.6, " ms")
    floor = g("node_floor_ms")
    if floor is not None and g("herd_crash_ms") is not None and g("pm2_crash_ms") is not None:
        row("… minus Node's own spawn → serving (floor)", round(g("herd_crash_ms") - floor, 1),
            round(g("pm2_crash_ms") - floor, 1), "<=", None, " ms")
    row("1M console.log lines → file", g("herd_logs_s"), g("pm2_logs_s"), "<=", 0.5, " s")
    row("1M lines with --time → file", g("herd_logs_time_s"), g("pm2_logs_time_s"), "<=", 0.5, " s")
    print("| figure | herd | pm2 | herd / pm2 | target | met |")
    print("|---|---|---|---|---|---|")
    for name, h, p, ratio, target, met in rows:
        print(f"| {name} | {h} | {p} | **{ratio}** | {target} | {'' if met is None else ('yes' if met else '**no**')} |")
    print()
    print("| count | herd | pm2 | target |")
    print("|---|---|---|---|")
    for name, key, target in [
        ("polls hung ≥ 1 s after a kill -9 (all kills)", "crash_hung", ""),
        ("fresh-connection failures across two reloads", "reload_failed", "0"),
        ("  … of requests made during them", "reload_ok", ""),
        ("lines lost (1M, plain)", "logs_lost", "0"),
        ("lines lost (1M, --time)", "logs_time_lost", "0"),
        ("lines corrupted (1M, --time)", "logs_time_corrupted", "0"),
        ("lines corrupted (1M, plain)", "logs_corrupted", "0"),
    ]:
        print(f"| {name} | {fmt(g('herd_' + key))} | {fmt(g('pm2_' + key))} | {target} |")
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serving")
    s.add_argument("ports", type=int, nargs="+")
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("crash")
    s.add_argument("port", type=int)
    s.add_argument("--pids", required=True)
    s.add_argument("--kills", type=int, default=5)
    s.add_argument("--timeout", type=float, default=10)
    s.add_argument("--settle", type=float, default=2.0)
    s = sub.add_parser("floor")
    s.add_argument("port", type=int)
    s.add_argument("--script", required=True)
    s.add_argument("--runs", type=int, default=5)
    s = sub.add_parser("load")
    s.add_argument("port", type=int)
    s.add_argument("--seconds", type=float, default=120)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", required=True)
    s = sub.add_parser("logs")
    s.add_argument("file")
    s.add_argument("--lines", type=int, default=1_000_000)
    s.add_argument("--time", action="store_true")
    s.add_argument("--t0", type=int, required=True)
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--stall", type=float, default=20)
    s = sub.add_parser("ratios")
    s.add_argument("results")
    a = ap.parse_args()
    return {"serving": cmd_serving, "crash": cmd_crash, "floor": cmd_floor, "load": cmd_load, "logs": cmd_logs,
            "ratios": cmd_ratios}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
