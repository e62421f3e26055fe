#!/usr/bin/env python3
"""Writes ketama reference vectors from an independent implementation.

uhashring's 'ketama' ring is libketama's continuum (the one libmemcached uses
for non-default ports): per server 40 MD5 digests of "host:port-i", 4 points
each. The vectors pin larder-memcached's ring to it:

    pip install uhashring==2.5 && python3 scripts/ketama_vectors.py \
        > crates/larder-memcached/tests/ketama_vectors.json
"""
import json

from uhashring import HashRing

POOLS = [
    ["127.0.0.1:21211", "127.0.0.1:21212", "127.0.0.1:21213"],
    ["10.0.0.1:11212", "10.0.0.2:11212", "10.0.0.3:11212", "10.0.0.4:11212", "10.0.0.5:11212"],
    ["cache-a:7000", "cache-b:7000"],
]
KEYS = [f"key{i}" for i in range(600)] + [f"app:1:user:{i}" for i in range(300)] + [
    "", "ключ", "日本語:キー", "x" * 250, "app:1:#" + "ab" * 32,
]

out = []
for pool in POOLS:
    ring = HashRing(nodes=pool, hash_fn="ketama")
    out.append({"servers": pool, "keys": {k: ring.get_node(k) for k in KEYS}})
print(json.dumps(out, ensure_ascii=False))
