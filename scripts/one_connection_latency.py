#!/usr/bin/env python3
"""Added latency of a pass-through at one connection, from wrk --latency runs.

Reads <dir>/c1_<target>_<round>.txt (wrk -t1 -c1 --latency output) for the
targets axum_private (the origin itself), nginx_pass and larder_proxy_pass,
and prints the median over rounds of each target's p50 and p99, and what
each proxy adds to the origin's p50.
"""
import glob
import os
import re
import statistics
import sys

UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def percentile(text, p):
    m = re.search(rf"^\s*{p}%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        raise SystemExit(f"no {p}% line in wrk output")
    return float(m.group(1)) * UNITS[m.group(2)]


def rate(text):
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))


def main(d):
    rows = {}
    for target in ("axum_private", "nginx_pass", "larder_proxy_pass"):
        files = sorted(glob.glob(os.path.join(d, f"c1_{target}_*.txt")))
        if not files:
            raise SystemExit(f"no runs for {target} in {d}")
        texts = [open(f).read() for f in files]
        rows[target] = (
            statistics.median(percentile(t, 50) for t in texts),
            statistics.median(percentile(t, 99) for t in texts),
            statistics.median(rate(t) for t in texts),
            len(texts),
        )
    origin = rows["axum_private"][0]
    print("| target (one connection, /private) | p50 µs | p99 µs | req/s | p50 added to the origin |")
    print("|---|---:|---:|---:|---:|")
    for target, (p50, p99, rps, n) in rows.items():
        added = "—" if target == "axum_private" else f"+{p50 - origin:.1f} µs"
        print(f"| {target} (median of {n}) | {p50:.1f} | {p99:.1f} | {rps:,.0f} | {added} |")


if __name__ == "__main__":
    main(sys.argv[1])
