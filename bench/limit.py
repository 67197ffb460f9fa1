#!/usr/bin/env python3
"""The no-supervisor limit: N copies of a LISTEN_FDS-speaking server that share a
port with no supervisor at all.

    limit.py --workers 2 --mode shared|reuseport --listen 127.0.0.1:18431 -- CMD ARGS...

shared:    this script binds ONE socket and every worker inherits it as fd 3
           (LISTEN_FDS=1, LISTEN_PID=<its own pid>): exactly what `herd --balance shared`
           gives a worker, minus herd.
reuseport: this script binds one SO_REUSEPORT socket per worker, each passed as fd 3:
           what `herd --balance reuseport` gives, minus herd.

Each worker also gets HERD_WORKER_ID=<slot> (so `herd demo` runs its worker code) and
HERD_INSTANCES; no IPC channel and no NOTIFY_SOCKET. This script then only waits (it
is never in the data path); SIGINT/SIGTERM are passed on to the workers.
"""

import argparse
import os
import signal
import socket
import sys


def bind(host, port, reuseport):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(511)
    s.setblocking(False)  # herd passes nonblocking fds
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=["shared", "reuseport"], default="shared")
    ap.add_argument("--listen", default="127.0.0.1:18431")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    host, port = a.listen.rsplit(":", 1)
    port = int(port)

    shared = bind(host, port, False) if a.mode == "shared" else None
    pids = []
    for slot in range(a.workers):
        sock = shared if shared else bind(host, port, True)
        pid = os.fork()
        if pid == 0:
            fd = sock.fileno()
            if fd != 3:
                os.dup2(fd, 3)
            os.set_inheritable(3, True)
            env = dict(os.environ)
            env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="demo",
                       HERD_WORKER_ID=str(slot), HERD_INSTANCES=str(a.workers))
            for k in ("NOTIFY_SOCKET", "HERD_CHANNEL_FD", "HERD_ROUND_ROBIN"):
                env.pop(k, None)
            os.execvpe(cmd[0], cmd, env)
        pids.append(pid)
        if not shared:
            sock.close()
    if shared:
        shared.close()
    print(f"limit: {a.workers} workers ({a.mode}) pids {' '.join(map(str, pids))}", file=sys.stderr, flush=True)

    def forward(sig, _frame):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    alive = set(pids)
    while alive:
        try:
            pid, _ = os.wait()
            alive.discard(pid)
        except ChildProcessError:
            break
        except InterruptedError:
            continue


if __name__ == "__main__":
    main()
