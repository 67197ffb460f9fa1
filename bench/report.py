#!/usr/bin/env python3
"""Turn bench/results/*.json into bench/results/summary.md and bench/results/chart.png.

Ratios are computed per repetition (runs of one repetition are minutes apart at most,
so they share the machine's load) and the median of those ratios is reported, with the
range over repetitions in brackets.
"""

import json
import os
import statistics

import common as C

R = C.RESULTS


def load(name):
    p = os.path.join(R, name)
    return json.load(open(p)) if os.path.exists(p) else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return f"[{min(xs):.2f}–{max(xs):.2f}]" if xs else ""


def f0(x):
    return "—" if x is None else f"{x:,.0f}"


def f1(x):
    return "—" if x is None else f"{x:.1f}"


def f2(x):
    return "—" if x is None else f"{x:.2f}"


def machine_line(d):
    m = d["machine"]
    return (f"{m.get('nproc')} CPUs ({m.get('cpu', '?')}), kernel {m.get('kernel')}, node {m.get('node')}, "
            f"pm2 {m.get('pm2')}, started {m.get('time')} with load {m.get('loadavg_start')}")


def noise_line(runs):
    loads = [r["loadavg"][0] for r in runs if "loadavg" in r]
    idles = [r.get("idle_before") for r in runs if r.get("idle_before") is not None]
    busy = sum(1 for i in idles if i < 0.6)
    return (f"load average (1 min) during runs: median {med(loads):.1f}, range {min(loads):.1f}–{max(loads):.1f}; "
            f"CPU idle in the 1 s before each measurement: median {100 * med(idles):.0f}%, "
            f"{busy} of {len(idles)} measurements started with < 60% idle (others' jobs)")


def seed_section(d, title):
    out = [f"### {title}", "", f"Path `{d['path']}`, 10 concurrent fresh connections, "
           f"{max(r['rep'] for r in d['runs']) + 1} repetitions. {noise_line(d['runs'])}.", "",
           "| setup | 1 worker: first / last (ms) | 2 workers: first / last (ms) | speedup last(1)/last(2) | 2-worker split of the 10 |",
           "|---|---|---|---|---|"]
    for s in d["summary"]:
        out.append(f"| {s['setup']} | {f0(s['first_1'])} / {f0(s['last_1'])} | {f0(s['first_2'])} / {f0(s['last_2'])} | "
                   f"**{f2(s['speedup_median'])}** {rng(s['speedups'])} | {' '.join('/'.join(map(str, x)) for x in s['splits_2'])} |")
    return out


def per_rep_ratio(runs, a, b, key):
    """median over reps of runs[a]/runs[b] (same rep, same key)."""
    ratios = []
    for rep in sorted({r["rep"] for r in runs}):
        ra = [r for r in runs if r["rep"] == rep and r["setup"] == a and key(r)]
        rb = [r for r in runs if r["rep"] == rep and r["setup"] == b and key(r)]
        if ra and rb and ra[0]["rps"] and rb[0]["rps"]:
            ratios.append(ra[0]["rps"] / rb[0]["rps"])
    return ratios


def throughput_section(d, title, refs):
    runs = d["runs"]
    out = [f"### {title}", "", f"`wrk -t2 -c64 -d{d['duration_s']}s --latency` (wrk shares the 2 cores), "
           f"{max(r['rep'] for r in runs) + 1} repetitions, setups interleaved. {noise_line(runs)}.", ""]
    cases = []
    for r in runs:
        c = (r["path"], r["variant"])
        if c not in cases:
            cases.append(c)
    setups = []
    for r in runs:
        if r["setup"] not in setups:
            setups.append(r["setup"])
    hdr = "| setup | " + " | ".join(f"`{p}` {v}: req/s (p99 ms)" for p, v in cases) + " |"
    out += [hdr, "|---|" + "---|" * len(cases)]
    for s in setups:
        cells = []
        for p, v in cases:
            rs = [r for r in runs if r["setup"] == s and r["path"] == p and r["variant"] == v]
            cells.append(f"{f0(med([r['rps'] for r in rs]))} ({f1(med([r['p99_ms'] for r in rs]))})")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out += ["", "Ratios (median of per-repetition ratios, [range]):", "",
            "| ratio | " + " | ".join(f"`{p}` {v}" for p, v in cases) + " |", "|---|" + "---|" * len(cases)]
    for a, b, label in refs:
        cells = []
        for p, v in cases:
            rs = per_rep_ratio(runs, a, b, lambda r, p=p, v=v: r["path"] == p and r["variant"] == v)
            cells.append(f"**{f2(med(rs))}** {rng(rs)}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    errs = [(r["setup"], r["path"], r["variant"], r["socket_errors"], r["non2xx"]) for r in runs
            if any(r["socket_errors"]) or r["non2xx"]]
    if errs:
        out += ["", "Runs with socket errors [connect, read, write, timeout] or non-2xx: " +
                "; ".join(f"{s} {p} {v} {e} {n}" for s, p, v, e, n in errs)]
    return out


def blocked_section(d, title="### Fast requests while one of 2 workers is blocked in `/check?ms=3000`"):
    out = [title, "",
           f"{d['probes']} probe threads, each: fresh connection, `GET /`, sleep {d['gap_ms']} ms. Sample = probes "
           f"started while the `/check` ran. 'stuck' = probes that took ≥ {d['stuck_ms']} ms. "
           f"{max(r['rep'] for r in d['runs']) + 1} repetitions. {noise_line(d['runs'])}.", "",
           "| setup | probes per run | p50 ms | p99 ms (per run) | max ms | stuck per run |", "|---|---|---|---|---|---|"]
    for s in d["summary"]:
        out.append(f"| {s['setup']} | {'/'.join(map(str, s['n']))} | {f1(s['p50_ms'])} | **{f1(s['p99_ms'])}** "
                   f"({', '.join(f1(x) for x in s['p99_all'])}) | {f0(s['max_ms'])} | {'/'.join(map(str, s['stuck']))} |")
    return out


def footprint_section(d):
    out = []
    if d.get("rss"):
        out += ["### Memory (VmRSS after a 3 s wrk load)", "", "| setup | supervisor | workers |", "|---|---|---|"]
        for r in d["rss"]:
            note = f" ({r['note']})" if r.get("note") else ""
            out.append(f"| {r['setup']} | {r['supervisor_rss_kb'] / 1024:.1f} MB{note} | "
                       f"{', '.join(f'{w / 1024:.1f}' for w in r['workers_rss_kb'] if w)} MB |")
        out.append("")
    if d.get("crash_summary"):
        n = sum(1 for r in d["crash"] if r["setup"] == d["crash_summary"][0]["setup"])
        out += ["### Crash recovery (kill -9 one of 2 workers)", "",
                f"{n} kills per setup. 'process' = the replacement appears as a child of the supervisor; "
                "'serves' = first answer carrying the replacement's pid (4 pollers, every 5 ms each).", "",
                "| setup | kill → process (ms) | kill → replacement serves (ms), median [range] | polls failed / hung ≥ 1 s |",
                "|---|---|---|---|"]
        for s in d["crash_summary"]:
            lo, hi = s["first_answer_ms_range"]
            never = f", {s['never_answered']} never in 10 s" if s["never_answered"] else ""
            out.append(f"| {s['setup']} | {f0(s['spawned_ms_median'])} | **{f0(s['first_answer_ms_median'])}** "
                       f"[{f0(lo)}–{f0(hi)}]{never} | {s['failed_polls']} / {s['hung_polls']} |")
    return out


def accept_section(d):
    out = ["### Investigation: the demo worker's greedy accept loop under `--balance shared`", "",
           "Same `herd run -i 2 --balance shared` primary, same client as seed 003 (10 concurrent), worker = "
           "bench/accept-experiment: `greedy` is src/demo.rs's accept loop as it is, `yield` adds "
           "`tokio::task::yield_now()` after each accept.", "",
           "| path | worker loop | last response, median (max) ms | runs split 5/5 | splits |", "|---|---|---|---|---|"]
    for x in d["summary"]:
        out.append(f"| `{x['path']}` | {x['mode']} | {f0(x['last_ms_median'])} ({f0(x['last_ms_max'])}) | "
                   f"{x['even_5_5']} of {x['runs']} | {' '.join('/'.join(map(str, s)) for s in x['splits'])} |")
    return out


def profile_section(d):
    out = ["### Investigation: CPU per fresh connection (wrk `Connection: close`, 10 s)", "",
           "CPU time (utime+stime, all threads) over the run divided by requests served.", "",
           "| setup | req/s | supervisor µs CPU / conn | supervisor context switches / conn | workers µs CPU / conn |",
           "|---|---|---|---|---|"]
    names = []
    for r in d["runs"]:
        if r["setup"] not in names:
            names.append(r["setup"])
    for n in names:
        rs = [r for r in d["runs"] if r["setup"] == n]
        out.append(f"| {n} | {f0(med([r['rps'] for r in rs]))} | {f1(med([r['supervisor_us_per_conn'] for r in rs]))} | "
                   f"{f2(med([r['supervisor_ctxsw_per_conn'] for r in rs]))} | {f1(med([r['workers_us_per_conn'] for r in rs]))} |")
    return out


def chart(seed, flip, blocked, tdemo, tdemo_cpu, tnode, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (seed, blocked) if p]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.6 * len(panels)))
    if len(panels) == 1:
        axes = [axes]
    i = 0
    if seed:
        ax = axes[i]; i += 1
        ss = seed["summary"]
        xs = range(len(ss))
        w = 0.38
        l1 = [s["last_1"] / 1000 for s in ss]
        l2 = [s["last_2"] / 1000 for s in ss]
        ax.bar([x - w / 2 for x in xs], l1, w, label="1 worker: last response", color="#c8c8c8")
        ax.bar([x + w / 2 for x in xs], l2, w, label="2 workers: last response", color="#3b7dd8")
        ax.scatter([x - w / 2 for x in xs], [s["first_1"] / 1000 for s in ss], marker="_", s=300, color="k",
                   label="first response", zorder=3)
        ax.scatter([x + w / 2 for x in xs], [s["first_2"] / 1000 for s in ss], marker="_", s=300, color="k", zorder=3)
        for x, s in zip(xs, ss):
            ax.text(x + w / 2, s["last_2"] / 1000 + 0.3, f"×{s['speedup_median']:.2f}", ha="center", fontsize=9)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([s["setup"].replace(", ", "\n") for s in ss], fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title(f"Seed 003: 10 concurrent {seed['path']}, fresh connections: first/last response, 1 vs 2 workers\n"
                     "(median of repetitions; ×N = speedup of the last response; target for herd ≥ ×1.8)", fontsize=10)
        ax.axhline(10, color="#3b7dd8", ls=":", lw=0.8)
        ax.legend(fontsize=8, loc="upper right")
    if blocked:
        ax = axes[i]; i += 1
        ss = blocked["summary"]
        xs = range(len(ss))
        w = 0.27
        ax.bar([x - w for x in xs], [s["p50_ms"] for s in ss], w, label="p50", color="#9ecae1")
        ax.bar(list(xs), [s["p99_ms"] for s in ss], w, label="p99", color="#3b7dd8")
        ax.bar([x + w for x in xs], [s["max_ms"] for s in ss], w, label="max", color="#d62728")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([s["setup"].replace(", ", "\n") for s in ss], fontsize=8)
        for x, s in zip(xs, ss):
            ax.text(x + w, s["max_ms"] * 1.15, f"stuck {'/'.join(map(str, s['stuck']))}", ha="center", fontsize=7)
        ax.set_title("Fast GET / (fresh connections, 4 parallel) while 1 of 2 workers is blocked 3 s in /check\n"
                     "(median over repetitions; 'stuck N/N/…' = probes that waited ≥ 500 ms, per run)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    C.log(f"wrote {path}")
    if tdemo or tnode:
        fig, ax = plt.subplots(1, 1, figsize=(12, 8))
        bars = []  # (label, median, values, colour)
        groups = [(tdemo, DEMO_REFS[:3], [("/", "keepalive"), ("/health", "close")], "#3b7dd8", "demo"),
                  (tdemo_cpu, DEMO_REFS[:3], [("/flip?format=none", "keepalive"), ("/flip?format=none", "close")],
                   "#08519c", "demo"),
                  (tnode, NODE_REFS[:4], [("/", "keepalive"), ("/", "close")], "#31a354", "hello.js")]
        for d, refs, cases, colour, tag in groups:
            if not d:
                continue
            for a, b, label in refs:
                for p, v in cases:
                    rs = per_rep_ratio(d["runs"], a, b, lambda r, p=p, v=v: r["path"] == p and r["variant"] == v)
                    bars.append((f"{tag}: {label}  [{p} {v}]", med(rs), rs, colour))
        ys = list(range(len(bars)))[::-1]
        ax.barh(ys, [b[1] or 0 for b in bars], color=[b[3] for b in bars])
        for y, b in zip(ys, bars):
            if b[2]:
                ax.plot([min(b[2]), max(b[2])], [y, y], color="k", lw=1)
            ax.text(0.02, y, f"{b[1]:.2f}" if b[1] else "", va="center", fontsize=7, color="white")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(0.98, color="#555", ls=":", lw=0.8)
        ax.axvline(0.90, color="#d62728", ls=":", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([b[0] for b in bars], fontsize=7)
        ax.set_xlabel("throughput ratio (median of per-repetition ratios; line = range). Dotted: 0.98 and 0.90 targets")
        ax.set_title("Throughput ratios, wrk -t2 -c64 -d10s. Blue: herd demo vs the same worker with no supervisor\n"
                     "(dark blue: server-bound /flip?format=none). Green: hello.js, herd vs Node cluster / pm2", fontsize=10)
        fig.tight_layout()
        fig.subplots_adjust(left=0.34)
        tpath = path.replace("chart.png", "chart-throughput.png")
        fig.savefig(tpath, dpi=110)
        plt.close(fig)
        C.log(f"wrote {tpath}")


DEMO_REFS = [
    ("herd demo -i 2 shared", "limit: 2 workers, one shared socket", "herd shared / limit shared socket"),
    ("herd demo -i 2 reuseport", "limit: 2 workers, SO_REUSEPORT", "herd reuseport / limit SO_REUSEPORT"),
    ("herd demo -i 2 round-robin", "limit: 2 workers, one shared socket", "herd round-robin / limit shared socket"),
    ("herd demo -i 2 round-robin", "limit: 2 workers, SO_REUSEPORT", "herd round-robin / limit SO_REUSEPORT"),
    ("limit: 2 workers, one shared socket", "limit: 1 standalone worker", "limit 2 shared / 1 standalone worker"),
]
NODE_REFS = [
    ("herd run -i 2 shared", "node cluster 2, none", "herd shared / node none"),
    ("herd run -i 2 round-robin", "node cluster 2, rr", "herd rr / node rr"),
    ("herd run -i 2 shared", "pm2 -i 2", "herd shared / pm2"),
    ("herd run -i 2 round-robin", "pm2 -i 2", "herd rr / pm2"),
    ("herd run -i 2 shared", "node cluster 2, rr", "herd shared / node rr"),
    ("herd run -i 2 round-robin", "pm2 -i 2 --no-pmx", "herd rr / pm2 --no-pmx"),
    ("node cluster 2, rr", "node hello.js (1 process)", "node rr / 1 process"),
]


def main():
    seed, flip, blocked = load("seed003.json"), load("seed003-flip.json"), load("blocked.json")
    tdemo, tnode, foot = load("throughput-demo.json"), load("throughput-node.json"), load("footprint.json")
    tdemo_cpu, accept, prof = load("throughput-demo-cpu.json"), load("accept-experiment.json"), load("profile-rr.json")
    md = ["# herd benchmark results (generated by bench/report.py)", ""]
    for d in (seed, flip, blocked, tdemo, tnode, foot):
        if d:
            md += [f"Machine: {machine_line(d)}.", ""]
            break
    if seed and seed.get("summary"):
        md += seed_section(seed, "Seed 003: 10 concurrent CPU-bound requests, 1 vs 2 workers") + [""]
    if flip and flip.get("summary"):
        md += seed_section(flip, "Seed 003 with `/flip` (real CPU work; the two workers compete for the 2 cores "
                                 "with the client and everyone else)") + [""]
    if tdemo and tdemo.get("summary"):
        md += throughput_section(tdemo, "Throughput: herd demo worker, 2 workers vs the no-supervisor limit", DEMO_REFS) + [""]
    if tdemo_cpu and tdemo_cpu.get("summary"):
        md += throughput_section(tdemo_cpu, "Throughput, server-bound: herd demo `/flip?format=none` (~1.05 ms CPU per "
                                            "request), 2 workers vs the no-supervisor limit", DEMO_REFS) + [""]
    if tnode and tnode.get("summary"):
        md += throughput_section(tnode, "Throughput: Node hello.js", NODE_REFS) + [""]
    if blocked and blocked.get("summary"):
        md += blocked_section(blocked) + [""]
    b16 = load("blocked-16probes.json")
    if b16 and b16.get("summary"):
        md += blocked_section(b16, "### The same with 16 parallel probe threads (round-robin setups and their shared "
                                   "counterparts)") + [""]
    if foot:
        md += footprint_section(foot) + [""]
    if accept and accept.get("summary"):
        md += accept_section(accept) + [""]
    if prof and prof.get("runs"):
        md += profile_section(prof) + [""]
    path = os.path.join(R, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    C.log(f"wrote {path}")
    try:
        chart(seed, flip, blocked, tdemo, tdemo_cpu, tnode, os.path.join(R, "chart.png"))
    except ImportError:
        C.log("matplotlib missing: pip install matplotlib (no chart)")


if __name__ == "__main__":
    main()
