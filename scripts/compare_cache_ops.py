#!/usr/bin/env python3
"""Prints a Markdown table comparing two cache_ops JSON files (Django's and larder's).

usage: compare_cache_ops.py DJANGO.json LARDER.json
"""
import json
import sys

PAIRS = [("locmem", "mem"), ("filebased", "file"), ("filebased", "file_inline")]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    dj = json.load(open(sys.argv[1]))
    la = json.load(open(sys.argv[2]))
    ops = dj["ops"]
    print(f"Django run {dj['date_utc']}, larder run {la['date_utc']}; "
          f"pin_cpu django={dj['config'].get('pin_cpu')} larder={la['config'].get('pin_cpu')}\n")
    print("| Django backend | larder backend | op | Django ops/s | larder ops/s | larder ns/op | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for d, l in PAIRS:
        if d not in dj["results"] or l not in la["results"]:
            continue
        dr, lr = dj["results"][d], la["results"][l]
        if "error" in dr or "error" in lr:
            continue
        for op in ops:
            a, b = dr[op]["ops_per_sec"], lr[op]["ops_per_sec"]
            print(f"| {d} | {l} | {op} | {a:,.0f} | {b:,.0f} | {1e9 / b:,.0f} | {b / a:,.1f}x |")


if __name__ == "__main__":
    main()
