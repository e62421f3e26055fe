#!/usr/bin/env python3
"""Markdown table from one bench-http-vs-django run: Django's http.json
beside larder's http_larder.json (same wrk settings, same run).

  scripts/compare_http.py RESULTS_DIR > comparison.md
"""
import json
import os
import sys


def load(d, name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return {"results": []}
    with open(p) as f:
        return json.load(f)


def main():
    d = sys.argv[1]
    django = load(d, "http.json")
    larder = load(d, "http_larder.json")
    rows = [("Django " + r["mode"], r) for r in django["results"]] + [(r["mode"], r) for r in larder["results"]]
    by = {name: r["requests_per_sec"] for name, r in rows}
    base = by.get("Django locmem")
    ngx = by.get("nginx_cache")
    cfg = larder.get("config") or django.get("config") or {}
    print(f"# Cached page, one run: wrk -t{cfg.get('threads')} -c{cfg.get('connections')} -d{cfg.get('duration')}s\n")
    print("| server | req/s | p50 ms | p99 ms | non-2xx | x Django locmem | x nginx proxy_cache |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        rps = r["requests_per_sec"]
        xb = f"{rps / base:.1f}x" if base else "-"
        xn = f"{rps / ngx:.2f}x" if ngx else "-"
        print(f"| {name} | {rps:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} | {xb} | {xn} |")
    npass, lpass = by.get("nginx_pass"), by.get("larder_proxy_pass")
    if npass and lpass:
        print(f"\nPass-through of the uncacheable page (/private): larder proxy {lpass:,.0f} req/s, "
              f"nginx {npass:,.0f} req/s, {lpass / npass:.2f}x")


if __name__ == "__main__":
    main()
