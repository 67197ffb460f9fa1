#!/usr/bin/env python3
"""A worker that writes bad lines on its herd channel (tests/bad_inputs.rs).

Run under `herd run`: reads the cases (a JSON list of {"hex": ..., "fds": N,
"acks": bool}) from the file named by its first argument, says `ipc worker
<pid> waiting`, waits until the file named by its second argument exists (so
the test can count herd's fds first), and for each case i writes the case's
bytes on the channel (HERD_CHANNEL_FD), with N fds alongside (SCM_RIGHTS,
the write ends of fresh pipes), then the marker {"case": i}. Then
{"done": <count>}, and it waits to be stopped.

What herd sends back is read: each handle message is acknowledged as Node
does (NODE_HANDLE_ACK) and its fd closed — except while a case says
`acks: false`; the acknowledgements owed are sent when one says true again.
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
send_lock = threading.Lock()
state = {"acking": True, "owed": 0}


def send(data, nfds=0):
    fds = []
    for _ in range(nfds):
        r, w = os.pipe()
        os.close(r)
        fds.append(w)
    with send_lock:
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


ACK = b'{"cmd":"NODE_HANDLE_ACK"}\n'


def read_from_herd():
    pending = b""
    try:
        while True:
            data, fds, _, _ = socket.recv_fds(chan, 65536, 16)
            for f in fds:
                os.close(f)
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("cmd") == "NODE_HANDLE":
                    if state["acking"]:
                        send(ACK)
                    else:
                        state["owed"] += 1
    except OSError:
        pass


threading.Thread(target=read_from_herd, daemon=True).start()

print(f"ipc worker {os.getpid()} waiting", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
for i, case in enumerate(cases):
    acking = case.get("acks", True)
    if acking and not state["acking"]:
        # Give herd time to send what it sends for the last case first.
        time.sleep(0.5)
        send(ACK * state["owed"])
        state["owed"] = 0
    state["acking"] = acking
    send(bytes.fromhex(case["hex"]), case.get("fds", 0))
    send(json.dumps({"case": i}).encode() + b"\n")
send(json.dumps({"done": len(cases)}).encode() + b"\n")
while True:
    time.sleep(60)
