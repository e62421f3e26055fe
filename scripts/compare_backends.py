#!/usr/bin/env python3
"""Summarizes one bench-backends-vs-django run as Markdown.

usage: compare_backends.py RESULTS_DIR
"""
import csv
import json
import re
import sys
from pathlib import Path


def load(p):
    return json.loads(Path(p).read_text())


def redis_benchmark(path):
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[row["test"]] = float(row["rps"])
    return rows


def memaslap(path):
    text = Path(path).read_text()
    gets = int(re.search(r"cmd_get: (\d+)", text).group(1))
    secs = float(re.search(r"Run time: ([\d.]+)s", text).group(1))
    tps = int(re.search(r"TPS: (\d+)", text).group(1))
    return gets / secs, tps


def main():
    d = Path(sys.argv[1])
    dj = load(d / "cache_ops_pinned.json")["results"]
    c1 = load(d / "larder_backends_c1.json")["results"]
    c64 = load(d / "larder_backends_c64.json")["results"]
    rb1, rb64 = redis_benchmark(d / "redis_benchmark_c1.csv"), redis_benchmark(d / "redis_benchmark_c64.csv")
    ms1, ms64 = memaslap(d / "memaslap_c1.txt"), memaslap(d / "memaslap_c64.txt")

    print("### One connection, one request in flight, pinned (ops/s, median of 3)\n")
    print("| op | Django db (SQLite) | larder sqlite | ratio | larder sqlite, io=inline | ratio | Django redis | larder redis | ratio | Django pymemcache | larder memcached | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for op in ["set", "get_hit", "get_miss", "get_many10", "incr", "get_or_set"]:
        cells = []
        for dj_name, l_name in [("db", "sqlite"), ("db", "sqlite_inline"), ("redis", "redis"), ("pymemcache", "memcached")]:
            if l_name == "sqlite_inline":
                b = c1[l_name][op]["ops_per_sec"]
                cells += [f"{b:,.0f}", f"{b / dj['db'][op]['ops_per_sec']:.1f}x"]
                continue
            a = dj[dj_name][op]["ops_per_sec"]
            b = c1[l_name][op]["ops_per_sec"]
            cells += [f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.1f}x"]
        print(f"| {op} | " + " | ".join(cells) + " |")

    print("\n### Against the servers' own benchmark clients, same pinning (GET/s)\n")
    print("| in flight | larder redis get | redis-benchmark GET | larder / tool | larder memcached get | memaslap get | larder / tool |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    lr1, lr64 = c1["redis"]["get_hit"]["ops_per_sec"], c64["redis"]["get_hit"]["ops_per_sec"]
    lm1, lm64 = c1["memcached"]["get_hit"]["ops_per_sec"], c64["memcached"]["get_hit"]["ops_per_sec"]
    print(f"| 1 | {lr1:,.0f} | {rb1['GET']:,.0f} | {lr1 / rb1['GET']:.0%} | {lm1:,.0f} | {ms1[0]:,.0f} | {lm1 / ms1[0]:.0%} |")
    print(f"| 64 | {lr64:,.0f} | {rb64['GET']:,.0f} | {lr64 / rb64['GET']:.0%} | {lm64:,.0f} | {ms64[0]:,.0f} | {lm64 / ms64[0]:.0%} |")
    print(f"\nSET/s: redis-benchmark c1 {rb1['SET']:,.0f}, c64 {rb64['SET']:,.0f}; "
          f"larder redis c1 {c1['redis']['set']['ops_per_sec']:,.0f}, c64 {c64['redis']['set']['ops_per_sec']:,.0f}; "
          f"larder memcached c1 {c1['memcached']['set']['ops_per_sec']:,.0f}, c64 {c64['memcached']['set']['ops_per_sec']:,.0f}. "
          f"memaslap TPS (gets plus its prefill sets): c1 {ms1[1]:,}, c64 {ms64[1]:,}.")


if __name__ == "__main__":
    main()
