#!/usr/bin/env python3
"""A worker that writes bad lines on its herd channel (tests/bad_inputs.rs).

Run under `herd run`: reads the cases (a JSON list of {"hex": ..., "fds": N})
from the file named by its first argument, and for each case i writes the
case's bytes on the channel (HERD_CHANNEL_FD), with N fds alongside
(SCM_RIGHTS, the write ends of fresh pipes), then the marker {"case": i}.
Then {"done": <count>}, and it waits to be stopped. Whatever herd sends back
is read and dropped, so the channel never fills.
"""
import json
import os
import socket
import sys
import threading
import time

fd = int(os.environ["HERD_CHANNEL_FD"])
chan = socket.socket(fileno=fd)
cases = json.load(open(sys.argv[1]))


def drain():
    try:
        while chan.recv(65536):
            pass
    except OSError:
        pass


threading.Thread(target=drain, daemon=True).start()


def send(data, nfds=0):
    fds = []
    for _ in range(nfds):
        r, w = os.pipe()
        os.close(r)
        fds.append(w)
    first = True
    view = memoryview(data)
    while view:
        if first and fds:
            n = socket.send_fds(chan, [bytes(view[:65536])], fds)
        else:
            n = chan.send(view[:65536])
        first = False
        view = view[n:]
    for w in fds:
        os.close(w)


print(f"ipc worker {os.getpid()} sending {len(cases)} cases", flush=True)
for i, case in enumerate(cases):
    send(bytes.fromhex(case["hex"]), case.get("fds", 0))
    send(json.dumps({"case": i}).encode() + b"\n")
send(json.dumps({"done": len(cases)}).encode() + b"\n")
while True:
    time.sleep(60)
