#!/usr/bin/env python3
"""Syscalls per fresh connection in round-robin: `strace -c -f` on the herd demo -i 2
round-robin supervisor and on one worker while 2000 sequential fresh-connection
GET /health are served. Writes results/strace-rr-{supervisor,worker}.txt.

    python3 bench/strace_rr.py
"""
import os
import sys, subprocess, time, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C
from common import Setup
s = Setup("rr", 2, "herd-demo", balance="round-robin"); s.up("/health")
sup = s.proc.pid; w = C.children(sup)[0]
try:
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(sup), "-o", os.path.join(C.RESULTS, "strace-rr-supervisor.txt")])
    st2 = subprocess.Popen(["strace", "-c", "-f", "-p", str(w), "-o", os.path.join(C.RESULTS, "strace-rr-worker.txt")])
    time.sleep(1)
    # a fixed number of fresh connections, sequential, so counts divide cleanly
    n = 2000
    for i in range(n):
        C.get("/health")
    time.sleep(0.5)
    st.send_signal(2); st2.send_signal(2); st.wait(10); st2.wait(10)
finally:
    s.down(); C.stop_all()
print("connections:", n, "(about half to the traced worker)")
for f in [os.path.join(C.RESULTS, "strace-rr-supervisor.txt"), os.path.join(C.RESULTS, "strace-rr-worker.txt")]:
    print("==", f); print(open(f).read())
