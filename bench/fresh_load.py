"""Fresh-connection HTTP load on loopback for bench/reload-reuseport.sh: THREADS
threads, each opening a new connection per GET / (Connection: close), until
SECONDS pass or SIGTERM; prints one JSON object:

    {"ok": N, "<failure>": N, ..., "windows": [[start_s, length_ms, failures], ...]}

A failure is the exception's class name (ConnectionRefusedError,
ConnectionResetError, BrokenPipeError ...), "empty" for a connection closed
without an answer, "bad" for an answer other than 200. `windows` are the
stretches of time with failures (failures less than 50 ms apart are one
stretch; start_s counts from the load's start): a restart's downtime shows
as one window of its length.

    python3 bench/fresh_load.py PORT SECONDS [THREADS]
"""
import collections
import json
import signal
import socket
import sys
import threading
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
counts = collections.Counter()
failed_at = []
lock = threading.Lock()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
start = time.monotonic()
GAP = 0.05


def one():
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    if not answer:
        return "empty"
    status = answer.split(b" ", 2)[1:2]
    return "ok" if answer.startswith(b"HTTP/1.") and status == [b"200"] else "bad"


def worker():
    end = start + seconds
    while time.monotonic() < end and not stop.is_set():
        try:
            kind = one()
        except OSError as e:
            kind = type(e).__name__
        with lock:
            counts[kind] += 1
            if kind != "ok":
                failed_at.append(time.monotonic() - start)


def windows(times):
    out = []
    for t in sorted(times):
        if out and t - out[-1][1] < GAP:
            out[-1][1] = t
            out[-1][2] += 1
        else:
            out.append([t, t, 1])
    return [[round(a, 2), round((b - a) * 1000), n] for a, b, n in out]


pool = [threading.Thread(target=worker) for _ in range(threads)]
for t in pool:
    t.start()
while any(t.is_alive() for t in pool):
    time.sleep(0.1)
print(json.dumps({**counts, "windows": windows(failed_at)}))
