//! The scale model on small parameters (CI): the properties docs/SCALING.md
//! reads off its large runs hold here too.

use larder_scale::{simulate, Model};

/// 60 processes reading 10 keys that expire every 300 ms, each computation
/// taking 50 ms: several processes miss every key at each expiry.
fn small() -> Model {
    let mut m = Model::default();
    m.processes = 60;
    m.hot_keys = 10;
    m.reads_per_process = 50.0;
    m.ttl_ns = 300_000_000;
    m.compute_ns = 50_000_000;
    m.duration_ns = 3_000_000_000;
    m
}

#[test]
fn leases_hold_every_expiry_to_one_computation() {
    let m = small();
    let with = simulate(&m);
    assert!(with.epochs >= 50, "{with:?}");
    assert_eq!(with.max_computations_per_epoch, 1, "{with:?}");
    assert!(with.lease_waits > 0, "nobody waited for a lease: {with:?}");

    let mut herd = m.clone();
    herd.leases = false;
    let without = simulate(&herd);
    assert!(without.max_computations_per_epoch > 5, "{without:?}");
    assert!(
        without.computations > 3 * with.computations,
        "{} computations without leases, {} with",
        without.computations,
        with.computations
    );
}

#[test]
fn stale_values_answer_lease_losers_at_once() {
    let mut m = small();
    let waiting = simulate(&m);
    m.stale_ns = 1_000_000_000;
    m.serve_stale = true;
    let stale = simulate(&m);
    assert!(stale.stale_served > 0, "{stale:?}");
    assert_eq!(stale.max_computations_per_epoch, 1);
    assert!(
        stale.lease_waits < waiting.lease_waits / 2,
        "{stale:?} vs {waiting:?}"
    );
    assert!(
        stale.read_p99_us < waiting.read_p99_us,
        "p99 {} µs serving stale, {} µs waiting",
        stale.read_p99_us,
        waiting.read_p99_us
    );
}

#[test]
fn each_write_reaches_every_near_cache_and_costs_recomputation() {
    let mut m = small();
    m.ttl_ns = 60_000_000_000; // nothing expires: only writes invalidate
    m.near_cache = true;
    let quiet = simulate(&m);
    assert_eq!(quiet.bus_deliveries, 0);
    assert!(quiet.near_hits * 10 > quiet.reads * 9, "{quiet:?}");
    m.writes_per_sec = 50.0;
    let busy = simulate(&m);
    assert!(busy.bus_deliveries > 0);
    assert_eq!(
        busy.bus_deliveries % m.processes as u64,
        0,
        "one delivery per process per write"
    );
    let writes = busy.bus_deliveries / m.processes as u64;
    assert!(
        (100..=200).contains(&writes),
        "{writes} writes in 3 s at 50/s"
    );
    assert!(
        busy.computations > quiet.computations + writes / 2,
        "{busy:?}"
    );
    assert!(busy.near_hits < quiet.near_hits);
    assert!(busy.max_computations_per_epoch <= 1, "{busy:?}");
}

#[test]
fn a_node_past_its_capacity_shows_as_utilization_and_latency() {
    let mut m = small();
    let fine = simulate(&m);
    assert!(fine.busiest_node_utilization < 0.1, "{fine:?}");
    m.shards = 1;
    m.op_ns = 400_000.0; // 2,500 commands/s for ~3,000 reads/s
    let over = simulate(&m);
    assert!(over.busiest_node_utilization > 0.95, "{over:?}");
    assert!(over.read_p50_us > 10.0 * fine.read_p50_us, "{over:?}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let mut m = small();
    m.near_cache = true;
    m.writes_per_sec = 20.0;
    assert_eq!(simulate(&m), simulate(&m));
    let mut other = m.clone();
    other.seed = 2;
    assert_ne!(simulate(&m), simulate(&other));
}
