//! # larder-scale
//!
//! A discrete-event model of many application processes sharing one larder
//! cache: what lease contention and invalidation fan-out cost at a scale
//! this repository's 2-core machine cannot run (1,000 processes), from the
//! per-node costs it can measure. docs/SCALING.md uses it; CI runs it on
//! small parameters (`tests/model.rs`).
//!
//! What is modelled, per the code it stands for:
//!
//! - `processes` each read `hot_keys` keys uniformly at random, as Poisson
//!   arrivals of `reads_per_process` per second.
//! - A read goes to the process's near cache first (when `near_cache`: an
//!   in-process copy dropped by the invalidation bus), then to the store.
//!   Concurrent reads of one key in one process share one fetch (larder's
//!   single-flight).
//! - The store is `shards` nodes, each a FIFO server costing `op_ns` of its
//!   time per command; every command pays `rtt_ns` of network round trip.
//!   A key lives on shard `key % shards`.
//! - A miss with `leases` on asks for the key's lease (`lease_acquire`);
//!   the winner computes (`compute_ns`) and fills, losers serve the stale
//!   value when `serve_stale` and one is left, else poll with larder's
//!   backoff (5 ms doubling to 50 ms, plus up to half again of jitter),
//!   a GET and another lease request per round, as `wait_for_lease` does.
//!   Without leases every process that misses computes (the herd).
//! - Values live `ttl_ns`, and stay servable as stale for `stale_ns` more.
//! - `writes_per_sec` writes, each to a random hot key: one delete on the
//!   key's shard and, with a near cache, one publish to every process.
//!   Classic `PUBLISH` on a Redis Cluster is broadcast: every node handles
//!   every message and delivers it to its own subscribers (a share of the
//!   processes); sharded pub/sub (`SPUBLISH`) costs only the key's shard,
//!   which delivers to all of them. A fill that started before a write to
//!   its key is not stored (larder's write generations).
//!
//! Not modelled: network bandwidth, client CPU, the origin database's own
//! saturation (computations per second are reported for that), node
//! failures.

#![warn(missing_docs)]

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

const NS_PER_SEC: f64 = 1e9;
/// Time a near-cache hit takes (an in-process map read), for latencies.
const NEAR_HIT_NS: u64 = 150;
/// larder's lease-wait backoff: first delay, cap (compute.rs).
const BACKOFF_START_NS: u64 = 5_000_000;
const BACKOFF_CAP_NS: u64 = 50_000_000;

/// The parameters of one run; [`Model::default`] is a 1,000-process site.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Model {
    /// Application processes sharing the cache.
    pub processes: u32,
    /// Keys read (uniformly).
    pub hot_keys: u32,
    /// Reads per second in each process.
    pub reads_per_process: f64,
    /// How long a value is fresh, ns.
    pub ttl_ns: u64,
    /// How long past its TTL a value may still be served stale, ns.
    pub stale_ns: u64,
    /// How long computing a value takes (the origin query), ns.
    pub compute_ns: u64,
    /// Network round trip to a store node, ns.
    pub rtt_ns: u64,
    /// A store node's time per command, ns (1 / its peak commands per
    /// second).
    pub op_ns: f64,
    /// A store node's time per pub/sub message delivered, ns.
    pub delivery_ns: f64,
    /// Store nodes (Redis Cluster masters; 1 for one server).
    pub shards: u32,
    /// Sharded pub/sub (`SPUBLISH`) rather than broadcast `PUBLISH`.
    pub sharded_pubsub: bool,
    /// Writes per second, all processes together.
    pub writes_per_sec: f64,
    /// A near cache in each process, kept by the invalidation bus.
    pub near_cache: bool,
    /// One computation per expiry across processes (leases).
    pub leases: bool,
    /// Lease losers serve the stale value while the winner computes.
    pub serve_stale: bool,
    /// Simulated time, ns.
    pub duration_ns: u64,
    /// Seed of the random draws (same seed, same report).
    pub seed: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            processes: 1_000,
            hot_keys: 1_000,
            reads_per_process: 100.0,
            ttl_ns: 10 * 1_000_000_000,
            stale_ns: 0,
            compute_ns: 50_000_000,
            rtt_ns: 200_000,
            // A busy Redis node: 680k GET/s (redis-benchmark -c1 -P64 on
            // this machine, docs/BENCHMARKS.md), 1.47 µs per command.
            op_ns: 1_470.0,
            // Redis CPU per PUBLISH with 200 subscribers, less one with
            // none, per subscriber (docs/SCALING.md): 270 ns.
            delivery_ns: 270.0,
            shards: 3,
            sharded_pubsub: true,
            writes_per_sec: 0.0,
            near_cache: false,
            leases: true,
            serve_stale: false,
            duration_ns: 10 * 1_000_000_000,
            seed: 1,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// Reads served (all processes).
    pub reads: u64,
    /// Reads answered by the process's near cache.
    pub near_hits: u64,
    /// Reads answered with a stale value while another process computed.
    pub stale_served: u64,
    /// Values computed (origin queries).
    pub computations: u64,
    /// Times a key went missing and was computed again (expiries and
    /// writes that a read then found missing).
    pub epochs: u64,
    /// Most computations of one key for one epoch: 1 is "one computation
    /// per expiry".
    pub max_computations_per_epoch: u32,
    /// Commands sent to the store (deletes, reads, leases, fills,
    /// publishes).
    pub store_ops: u64,
    /// Of which lease requests and polls by processes waiting for a lease.
    pub lease_waits: u64,
    /// Busy time of the busiest store node over the run (1.0: saturated;
    /// above 1, its queue grew without bound).
    pub busiest_node_utilization: f64,
    /// Pub/sub messages delivered to processes.
    pub bus_deliveries: u64,
    /// Read latency, median and 99th percentile, µs.
    pub read_p50_us: f64,
    /// See `read_p50_us`.
    pub read_p99_us: f64,
    /// Simulated seconds.
    pub seconds: f64,
}

impl Report {
    /// Store commands per second.
    pub fn store_ops_per_sec(&self) -> f64 {
        self.store_ops as f64 / self.seconds
    }
    /// Computations per second (the origin's load from the cache).
    pub fn computations_per_sec(&self) -> f64 {
        self.computations as f64 / self.seconds
    }
    /// Pub/sub deliveries per second.
    pub fn deliveries_per_sec(&self) -> f64 {
        self.bus_deliveries as f64 / self.seconds
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Lease,
    Poll,
    Fill { write_gen: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Read { p: u32 },
    Reply { p: u32, k: u32, op: Op },
    Computed { p: u32, k: u32, write_gen: u64 },
    Retry { p: u32, k: u32 },
    Write,
    Deliver { k: u32 },
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Earliest first out of the max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Key {
    /// When the stored value was filled (None: no value).
    filled_at: Option<u64>,
    /// A read has seen the value go (the epoch is counted).
    missing: bool,
    write_gen: u64,
    /// The write generation the epoch's computations are for: a write
    /// starts a new epoch (its value must be computed again).
    epoch_gen: u64,
    lease: Option<(u32, u64)>,
    computes_this_epoch: u32,
}

struct Flight {
    waiting: Vec<u64>,
    backoff: u64,
}

struct Sim<'m> {
    m: &'m Model,
    rng: fastrand::Rng,
    queue: BinaryHeap<Item>,
    seq: u64,
    keys: Vec<Key>,
    /// Near cache: per process, per key, when the copy was filled.
    near: Vec<Vec<Option<u64>>>,
    flights: Vec<HashMap<u32, Flight>>,
    node_free: Vec<u64>,
    node_busy: Vec<f64>,
    latencies: Vec<u32>,
    r: Report,
}

impl<'m> Sim<'m> {
    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn exp(&mut self, rate_per_sec: f64) -> u64 {
        let u = 1.0 - self.rng.f64(); // (0, 1]
        (-u.ln() / rate_per_sec * NS_PER_SEC) as u64
    }

    /// One command on node `node` costing `cost` ns of its time, sent at
    /// `now`: when its reply is back.
    fn command(&mut self, now: u64, node: usize, cost: f64) -> u64 {
        self.r.store_ops += 1;
        let arrive = now + self.m.rtt_ns / 2;
        let start = arrive.max(self.node_free[node]);
        self.node_free[node] = start + cost as u64;
        self.node_busy[node] += cost;
        self.node_free[node] + self.m.rtt_ns / 2
    }

    fn send(&mut self, now: u64, p: u32, k: u32, op: Op) {
        let node = (k % self.m.shards) as usize;
        let back = self.command(now, node, self.m.op_ns);
        self.at(back, Ev::Reply { p, k, op });
    }

    fn fresh(&self, k: u32, now: u64) -> bool {
        self.keys[k as usize]
            .filled_at
            .is_some_and(|f| now < f + self.m.ttl_ns)
    }

    fn stale(&self, k: u32, now: u64) -> bool {
        self.keys[k as usize]
            .filled_at
            .is_some_and(|f| now < f + self.m.ttl_ns + self.m.stale_ns)
    }

    /// Every read of `k` waiting in `p` is answered.
    fn finish(&mut self, p: u32, k: u32, now: u64, near_copy: Option<u64>) {
        if let Some(f) = self.flights[p as usize].remove(&k) {
            for started in f.waiting {
                self.latencies
                    .push(((now - started) / 1_000).min(u32::MAX as u64) as u32);
            }
        }
        if self.m.near_cache {
            self.near[p as usize][k as usize] = near_copy;
        }
    }

    fn start_compute(&mut self, p: u32, k: u32, now: u64) {
        let key = &mut self.keys[k as usize];
        if key.epoch_gen != key.write_gen {
            key.epoch_gen = key.write_gen;
            key.computes_this_epoch = 0;
            // Written since the miss was seen: a value to compute again.
            self.r.epochs += 1;
        }
        key.computes_this_epoch += 1;
        self.r.max_computations_per_epoch = self
            .r
            .max_computations_per_epoch
            .max(key.computes_this_epoch);
        self.r.computations += 1;
        let write_gen = key.write_gen;
        self.at(now + self.m.compute_ns, Ev::Computed { p, k, write_gen });
    }

    /// The value is gone as far as readers can tell: a new epoch.
    fn note_missing(&mut self, k: u32) {
        let key = &mut self.keys[k as usize];
        if !key.missing {
            key.missing = true;
            key.computes_this_epoch = 0;
            key.epoch_gen = key.write_gen;
            self.r.epochs += 1;
        }
    }

    fn on_miss(&mut self, p: u32, k: u32, now: u64) {
        self.note_missing(k);
        if self.m.leases {
            self.send(now, p, k, Op::Lease);
        } else {
            self.start_compute(p, k, now);
        }
    }

    fn step(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Read { p } => {
                let next = now + self.exp(self.m.reads_per_process);
                self.at(next, Ev::Read { p });
                self.r.reads += 1;
                let k = self.rng.u32(0..self.m.hot_keys);
                if self.m.near_cache {
                    if let Some(f) = self.near[p as usize][k as usize] {
                        if now < f + self.m.ttl_ns {
                            self.r.near_hits += 1;
                            self.latencies.push((NEAR_HIT_NS / 1_000) as u32);
                            return;
                        }
                    }
                }
                if let Some(f) = self.flights[p as usize].get_mut(&k) {
                    f.waiting.push(now);
                    return;
                }
                self.flights[p as usize].insert(
                    k,
                    Flight {
                        waiting: vec![now],
                        backoff: BACKOFF_START_NS,
                    },
                );
                self.send(now, p, k, Op::Get);
            }
            Ev::Reply { p, k, op } => match op {
                Op::Get | Op::Poll => {
                    if self.fresh(k, now) {
                        let f = self.keys[k as usize].filled_at;
                        self.finish(p, k, now, f);
                    } else if matches!(op, Op::Poll) {
                        self.r.lease_waits += 1;
                        self.send(now, p, k, Op::Lease);
                    } else {
                        self.on_miss(p, k, now);
                    }
                }
                Op::Lease => {
                    let key = &mut self.keys[k as usize];
                    let free = key.lease.is_none_or(|(_, until)| until <= now);
                    if free {
                        // larder's lease TTL: 5 s.
                        key.lease = Some((p, now + 5_000_000_000));
                        if self.fresh(k, now) {
                            // Filled just before: larder re-reads on a win.
                            self.keys[k as usize].lease = None;
                            let f = self.keys[k as usize].filled_at;
                            self.finish(p, k, now, f);
                        } else {
                            self.start_compute(p, k, now);
                        }
                    } else if self.m.serve_stale && self.stale(k, now) {
                        self.r.stale_served += self.flights[p as usize]
                            .get(&k)
                            .map_or(0, |f| f.waiting.len())
                            as u64;
                        self.finish(p, k, now, None);
                    } else {
                        // A lease request always belongs to a flight.
                        let Some(f) = self.flights[p as usize].get_mut(&k) else {
                            return;
                        };
                        let backoff = f.backoff;
                        f.backoff = (backoff * 2).min(BACKOFF_CAP_NS);
                        let jitter = self.rng.u64(0..=backoff / 2);
                        self.at(now + backoff + jitter, Ev::Retry { p, k });
                    }
                }
                Op::Fill { write_gen } => {
                    let key = &mut self.keys[k as usize];
                    let stored = key.write_gen == write_gen;
                    if stored {
                        key.filled_at = Some(now);
                        key.missing = false;
                    }
                    if key.lease.is_some_and(|(holder, _)| holder == p) {
                        key.lease = None;
                    }
                    self.finish(p, k, now, stored.then_some(now));
                }
            },
            Ev::Computed { p, k, write_gen } => {
                self.send(now, p, k, Op::Fill { write_gen });
            }
            Ev::Retry { p, k } => {
                self.r.lease_waits += 1;
                self.send(now, p, k, Op::Poll);
            }
            Ev::Write => {
                let next = now + self.exp(self.m.writes_per_sec);
                self.at(next, Ev::Write);
                let k = self.rng.u32(0..self.m.hot_keys);
                let key = &mut self.keys[k as usize];
                key.write_gen += 1;
                key.filled_at = None;
                let node = (k % self.m.shards) as usize;
                let deleted = self.command(now, node, self.m.op_ns);
                if self.m.near_cache {
                    let n = self.m.processes as f64;
                    let delivered = if self.m.sharded_pubsub {
                        self.command(now, node, self.m.op_ns + n * self.m.delivery_ns)
                    } else {
                        // Broadcast: every node handles the message and
                        // delivers it to its share of the subscribers.
                        let share = n / self.m.shards as f64;
                        let mut last = 0;
                        for node in 0..self.m.shards as usize {
                            let back =
                                self.command(now, node, self.m.op_ns + share * self.m.delivery_ns);
                            last = last.max(back);
                        }
                        last
                    };
                    self.r.bus_deliveries += self.m.processes as u64;
                    self.at(delivered.max(deleted), Ev::Deliver { k });
                }
            }
            Ev::Deliver { k } => {
                for p in 0..self.m.processes as usize {
                    self.near[p][k as usize] = None;
                }
            }
        }
    }
}

/// Runs `m` and reports what happened.
///
/// ```
/// let mut m = larder_scale::Model::default();
/// m.processes = 20;
/// m.hot_keys = 10;
/// m.duration_ns = 2_000_000_000;
/// m.ttl_ns = 200_000_000;
/// let r = larder_scale::simulate(&m);
/// assert_eq!(r.max_computations_per_epoch, 1); // leases: no herd
/// ```
pub fn simulate(m: &Model) -> Report {
    assert!(
        m.processes > 0 && m.hot_keys > 0 && m.shards > 0,
        "an empty model"
    );
    assert!(m.reads_per_process > 0.0, "no reads to model");
    let k = m.hot_keys as usize;
    let mut sim = Sim {
        m,
        rng: fastrand::Rng::with_seed(m.seed),
        queue: BinaryHeap::new(),
        seq: 0,
        keys: (0..k).map(|_| Key::default()).collect(),
        near: if m.near_cache {
            vec![vec![None; k]; m.processes as usize]
        } else {
            Vec::new()
        },
        flights: (0..m.processes).map(|_| HashMap::new()).collect(),
        node_free: vec![0; m.shards as usize],
        node_busy: vec![0.0; m.shards as usize],
        latencies: Vec::new(),
        r: Report {
            reads: 0,
            near_hits: 0,
            stale_served: 0,
            computations: 0,
            epochs: 0,
            max_computations_per_epoch: 0,
            store_ops: 0,
            lease_waits: 0,
            busiest_node_utilization: 0.0,
            bus_deliveries: 0,
            read_p50_us: 0.0,
            read_p99_us: 0.0,
            seconds: m.duration_ns as f64 / NS_PER_SEC,
        },
    };
    for p in 0..m.processes {
        let first = sim.exp(m.reads_per_process);
        sim.at(first, Ev::Read { p });
    }
    if m.writes_per_sec > 0.0 {
        let first = sim.exp(m.writes_per_sec);
        sim.at(first, Ev::Write);
    }
    while let Some(Item { at, ev, .. }) = sim.queue.pop() {
        if at > m.duration_ns {
            break;
        }
        sim.step(at, ev);
    }
    let mut r = sim.r;
    r.busiest_node_utilization = sim
        .node_busy
        .iter()
        .fold(0.0f64, |a, &b| a.max(b / m.duration_ns as f64));
    let mut lat = sim.latencies;
    lat.sort_unstable();
    let pick = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() - 1) as f64 * q) as usize] as f64
    };
    r.read_p50_us = pick(0.50);
    r.read_p99_us = pick(0.99);
    r
}
