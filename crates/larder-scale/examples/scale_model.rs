//! The tables of docs/SCALING.md: lease contention and invalidation
//! fan-out at 1,000 processes, from the per-node costs measured in
//! docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p larder-scale --example scale_model
//! ```

use larder_scale::{simulate, Model, Report};

fn row(label: &str, r: &Report) {
    println!(
        "| {label} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.1} % | {:.0} | {:.0} / {:.0} |",
        r.reads as f64 / r.seconds,
        r.computations_per_sec(),
        r.max_computations_per_epoch,
        r.store_ops_per_sec(),
        r.lease_waits as f64 / r.seconds,
        r.busiest_node_utilization * 100.0,
        r.deliveries_per_sec(),
        r.read_p50_us,
        r.read_p99_us,
    );
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!("| case | reads/s | computations/s | max computations per expiry | store commands/s | lease waits/s | busiest node | bus deliveries/s | read p50 / p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn main() {
    let mut base = Model::default();
    // Four expiries of every key (the first fills are all at start-up, so
    // they expire together: the herd after a deploy).
    base.duration_ns = 40_000_000_000;
    println!(
        "1,000 processes × 100 reads/s over 1,000 hot keys, TTL 10 s, compute 50 ms, \
         RTT 200 µs, 3 nodes at {:.0} ns per command, {} s simulated",
        base.op_ns,
        base.duration_ns / 1_000_000_000
    );

    header("Lease contention (no writes)");
    let mut m = base.clone();
    m.leases = false;
    row("no leases (per-process single-flight only)", &simulate(&m));
    row("leases, losers wait", &simulate(&base));
    let mut m = base.clone();
    m.serve_stale = true;
    m.stale_ns = 5_000_000_000;
    row("leases, losers serve stale", &simulate(&m));
    let mut m = base.clone();
    m.ttl_ns = 1_000_000_000;
    row("leases, TTL 1 s", &simulate(&m));
    let mut m = base.clone();
    m.hot_keys = 10;
    row("leases, 10 hot keys", &simulate(&m));

    header("Invalidation fan-out (near cache in every process, leases on)");
    for w in [0.0, 10.0, 100.0, 1_000.0] {
        let mut m = base.clone();
        m.near_cache = true;
        m.writes_per_sec = w;
        row(&format!("{w:.0} writes/s, sharded pub/sub"), &simulate(&m));
    }
    let mut m = base.clone();
    m.near_cache = true;
    m.writes_per_sec = 1_000.0;
    m.sharded_pubsub = false;
    row("1000 writes/s, broadcast PUBLISH", &simulate(&m));
    let mut m = base.clone();
    m.writes_per_sec = 1_000.0;
    row("1000 writes/s, no near cache", &simulate(&m));

    header("Where one node saturates (1 node, leases, no near cache, 5 s)");
    for reads in [100.0, 300.0, 600.0] {
        let mut m = base.clone();
        m.shards = 1;
        m.reads_per_process = reads;
        m.duration_ns = 5_000_000_000;
        row(&format!("Redis, {:.0}k reads/s", reads), &simulate(&m));
    }
    // A node whose commands each take a wake-up of their own (unpipelined:
    // 19 µs of Redis CPU per GET measured here) saturates far earlier.
    let mut m = base.clone();
    m.shards = 1;
    m.op_ns = 19_000.0;
    m.reads_per_process = 50.0;
    m.duration_ns = 5_000_000_000;
    row("Redis, 50k reads/s, 19 µs per command", &simulate(&m));
    // The memcached pool of scripts/services: 4 servers, 162k gets/s each
    // (memaslap, client and server on one CPU: 6.2 µs per command).
    for reads in [100.0, 600.0] {
        let mut m = base.clone();
        m.shards = 4;
        m.op_ns = 6_170.0;
        m.reads_per_process = reads;
        m.duration_ns = 5_000_000_000;
        row(
            &format!("memcached pool of 4, {:.0}k reads/s", reads),
            &simulate(&m),
        );
    }
}
