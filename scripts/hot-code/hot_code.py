#!/usr/bin/env python3
"""The two steps of scripts/hot-code/profile.sh that read /proc and the binary.

  hot_code.py snap BIN OUT PID...    append to OUT the file offsets of BIN's code
                                     pages that these processes have mapped
  hot_code.py evict-after-trim BIN PID...
                                     wait until each of these processes has let
                                     go of its code pages (herd_engine's
                                     memory::Trim), then evict BIN's pages that
                                     none maps from the page cache
  hot_code.py order BIN PAGES...     print the functions on those pages, one
                                     symbol a line: the order file for the linker

The profiled binary places every function at a page of its own (LLVM's
-align-all-functions=12), its file is evicted from the page cache and the
disk's readahead is off: a page is then mapped only when a process ran code on
it, so the pages give exactly the functions that ran.
"""
import bisect
import os
import subprocess
import sys
import time

PAGE = 4096


def snap(binary, out, pids, append=True):
    binary = os.path.realpath(binary)
    pages = set()
    for pid in pids:
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
        except OSError:
            continue  # it ended meanwhile
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[1] != "r-xp" or os.path.realpath(f[5]) != binary:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            offset = int(f[2], 16)
            with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                pagemap.seek(lo // PAGE * 8)
                entries = memoryview(pagemap.read((hi - lo) // PAGE * 8)).cast("Q")
                for i, entry in enumerate(entries):
                    if entry >> 63:  # present
                        pages.add(i * PAGE + offset)
    with open(out, "a" if append else "w") as f:
        f.writelines(f"{p}\n" for p in sorted(pages))


def mapped_pages(binary, pid):
    """How many of BIN's code pages the process has mapped (0 if it is gone)."""
    before = PAGES_FILE
    try:
        snap(binary, before, [pid], append=False)
        return sum(1 for _ in open(before))
    finally:
        if os.path.exists(before):
            os.remove(before)


PAGES_FILE = f"/tmp/hot-code-pages.{os.getpid()}"


def evict_after_trim(binary, pids, timeout=10.0):
    """The idle phase starts from nothing mapped: once every process has
    trimmed (its mapped code pages fell to under half), drop BIN's pages no
    process maps from the page cache, so that only what runs from then on
    is read (readahead is off) and mapped again."""
    start = {pid: mapped_pages(binary, pid) for pid in pids}
    waiting = {pid for pid, n in start.items() if n > 0}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if mapped_pages(binary, pid) * 2 > start[pid]}
        time.sleep(0.005)
    if waiting:
        sys.exit(f"processes {sorted(waiting)} did not trim within {timeout} s")
    fd = os.open(binary, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def code_segment_delta(binary):
    """Virtual address minus file offset of the executable segment."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in "".join(f[6:-1]):
            return int(f[2], 16) - int(f[1], 16)
    sys.exit(f"{binary}: no executable segment")


def order(binary, page_files):
    delta = code_segment_delta(binary)
    functions = []  # (address, name)
    out = subprocess.run(["nm", "-n", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in "tTW":
            functions.append((int(f[0], 16), f[2]))
    starts = [a for a, _ in functions]
    seen = set()
    for path in page_files:  # the first file's functions first
        listed = 0
        for page in sorted({int(x) + delta for x in open(path)}):
            # every function that starts on this page (one, in the profiled build)
            i = bisect.bisect_left(starts, page)
            while i < len(functions) and functions[i][0] < page + PAGE:
                name = functions[i][1]
                if name not in seen:
                    seen.add(name)
                    listed += 1
                    print(name)
                i += 1
        print(f"{path}: {listed} functions", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "evict-after-trim":
        evict_after_trim(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif len(sys.argv) >= 4 and sys.argv[1] == "order":
        order(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
