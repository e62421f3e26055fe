#!/usr/bin/env python3
"""Markdown tables from one bench-stampede-vs-django run: Django's
stampede.json beside larder's scenario JSON files.

  scripts/compare_stampede.py RESULTS_DIR > comparison.md
"""
import json
import os
import sys


def load(d, name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def fmt(ms):
    """Milliseconds to 3 significant digits (memory hits are microseconds)."""
    if ms is None or ms != ms:
        return "-"
    return f"{ms:.3g}"


def herd_rows(doc, who):
    rows = []
    for r in (doc or {}).get("results", []):
        if "error" in r:
            rows.append(f"| {who} | {r['backend']} | error: {r['error']} | | | | |")
            continue
        L = r["latency_ms"]
        rows.append(
            f"| {who} | {r['backend']} {r['pattern']} ({r.get('processes', 1)}x{r['clients'] // r.get('processes', 1)}) "
            f"| {r['origin_calls_per_expiry_mean']:.1f} [{r['origin_calls_per_expiry_min']}-{r['origin_calls_per_expiry_max']}] "
            f"| {L['p50']:.1f} | {L['p99']:.1f} | {L['max']:.1f} | {len(r['errors'])} |"
        )
    return rows


def main():
    d = sys.argv[1]
    django = load(d, "stampede.json")
    print(f"# Stampede scenarios, one run ({d})\n")
    print("Origin sleeps 200 ms, TTL 1 s; callers released together right after the value expired.\n")
    print("| who | backend, pattern (processes x callers) | origin calls per expiry, mean [min-max] | p50 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in herd_rows(django, "Django") + herd_rows(load(d, "larder_stampede.json"), "larder") + herd_rows(
        load(d, "larder_multi_process_stampede.json"), "larder"
    ):
        print(row)
    for beta in ("1.0", "0.1"):
        hot = load(d, f"larder_hot_key_beta{beta}.json")
        if not hot:
            continue
        print(f"\n## Hot key, steady load (XFetch beta = {beta})\n")
        print("| backend | configuration | requests | failures | recomputes per TTL | p99 ms (all) | p99 ms during expiry | max ms during expiry | during-expiry p99 / plain-hit p99 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in hot["results"]:
            if "error" in r:
                print(f"| {r['backend']} | error: {r['error']} |||||||")
                continue
            de = r["during_expiry_latency_ms"]
            ratio = r["p99_during_expiry_over_plain_p99"]
            per = r["recomputes_per_ttl_cycle"]
            print(
                f"| {r['backend']} | {r['config']} | {r['requests']} | {r['failures']} | {'-' if per is None else per} "
                f"| {fmt(r['latency_ms']['p99'])} | {fmt(de['p99'])} | {fmt(de['max'])} | {'-' if ratio is None else ratio} |"
            )
    down = load(d, "larder_cache_down.json")
    if down:
        print("\n## Cache server killed and restarted under load\n")
        print("| backend | requests | failures | success | p99 ms before | p99 ms while down | p99 ms after | breaker at end |")
        print("|---|---|---|---|---|---|---|---|")
        for r in down["results"]:
            if "error" in r:
                print(f"| {r['backend']} | error: {r['error']} |||||||")
                continue
            print(
                f"| {r['backend']} | {r['requests']} | {r['failures']} | {r['success_rate'] * 100:.3f}% "
                f"| {fmt(r['latency_ms_before']['p99'])} | {fmt(r['latency_ms_down']['p99'])} | {fmt(r['latency_ms_after']['p99'])} | {r['breaker_state_at_end']} |"
            )


if __name__ == "__main__":
    main()
