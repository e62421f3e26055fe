//! Memory backend against the raw stores it could be built on, in one run.
//!
//! 10k keys, 100-byte values, one thread. Run pinned for stable numbers:
//! `taskset -c 0 cargo bench -p larder-mem --bench mem`
//!
//! The larder rows are polled once with a no-op waker: the memory backend
//! never waits, so this measures larder's own work (key building, the
//! backend trait, the envelope, decoding) without an async runtime's.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use larder_core::{Bytes, Cache, Expiry, Ttl};
use larder_mem::MemBackend;

const KEYS: usize = 10_000;

fn main() {
    divan::main();
}

// Every bench: 200 samples of 2,000 calls each, so a sample is well above
// the timer's precision and the median is stable on a noisy VM.

fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory backend never waits"),
    }
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("bench:key:{i}")).collect()
}

fn value() -> String {
    "v".repeat(100)
}

struct Cycle(usize);
impl Cycle {
    fn next(&mut self) -> usize {
        // Sequential, as the Django harness cycles its key pool.
        self.0 = (self.0 + 1) % KEYS;
        self.0
    }
}

mod raw {
    use super::*;

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn std_hashmap_get(b: divan::Bencher) {
        let keys = keys();
        let map: HashMap<String, Bytes> = keys
            .iter()
            .map(|k| (k.clone(), Bytes::from(value())))
            .collect();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(map.get(keys[c.next()].as_str()).cloned()));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn quick_cache_get(b: divan::Bencher) {
        let keys = keys();
        let map = quick_cache::sync::Cache::<String, Bytes>::new(KEYS * 2);
        for k in &keys {
            map.insert(k.clone(), Bytes::from(value()));
        }
        let mut c = Cycle(0);
        b.bench_local(|| black_box(map.get(keys[c.next()].as_str())));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn moka_get(b: divan::Bencher) {
        let keys = keys();
        let map = moka::sync::Cache::<String, Bytes>::new(KEYS as u64 * 2);
        for k in &keys {
            map.insert(k.clone(), Bytes::from(value()));
        }
        let mut c = Cycle(0);
        b.bench_local(|| black_box(map.get(keys[c.next()].as_str())));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn quick_cache_insert(b: divan::Bencher) {
        let keys = keys();
        let map = quick_cache::sync::Cache::<String, Bytes>::new(KEYS * 2);
        let v = Bytes::from(value());
        let mut c = Cycle(0);
        b.bench_local(|| map.insert(keys[c.next()].clone(), v.clone()));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn moka_insert(b: divan::Bencher) {
        let keys = keys();
        let map = moka::sync::Cache::<String, Bytes>::new(KEYS as u64 * 2);
        let v = Bytes::from(value());
        let mut c = Cycle(0);
        b.bench_local(|| map.insert(keys[c.next()].clone(), v.clone()));
    }
}

mod larder {
    use super::*;

    fn filled() -> (Cache, MemBackend, Vec<String>) {
        let keys = keys();
        let cache = Cache::builder(MemBackend::with_max_entries(KEYS as u64 * 2))
            .build()
            .unwrap();
        let v = value();
        for k in &keys {
            ready(cache.set(k, &v, Ttl::secs(3600))).unwrap();
        }
        (cache, MemBackend::default(), keys)
    }

    /// The storage key: `:1:` + key, validated.
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn make_key(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(cache.make_key(&keys[c.next()]).unwrap()));
    }

    /// The storage key as the hot path builds it (a reused buffer).
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn with_key_reused_buffer(b: divan::Bencher) {
        let policy = larder_core::KeyPolicy::default();
        let head = policy.head(1);
        let keys = keys();
        let mut c = Cycle(0);
        b.bench_local(|| {
            black_box(
                policy
                    .with_key(head.as_deref(), &keys[c.next()], 1, |k| k.len())
                    .unwrap(),
            )
        });
    }

    /// The coarse clock read every expiring hit pays.
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn coarse_clock(b: divan::Bencher) {
        b.bench_local(|| black_box(coarsetime::Instant::now_without_cache_update()));
    }

    /// The synchronous fast path alone.
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn backend_get_immediate(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let backend = cache.backend().clone();
        let skeys: Vec<String> = keys.iter().map(|k| cache.make_key(k).unwrap()).collect();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(backend.get_immediate(&skeys[c.next()])));
    }

    /// Decoding a stored 100-byte string from its envelope.
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn envelope_decode(b: divan::Bencher) {
        let bytes = larder_core::envelope::encode(&value(), &Default::default(), None).unwrap();
        b.bench_local(|| black_box(larder_core::envelope::decode::<String>(&bytes).unwrap()));
    }

    /// The backend alone, through the object-safe trait (bytes out).
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn backend_get(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let backend = cache.backend().clone();
        let skeys: Vec<String> = keys.iter().map(|k| cache.make_key(k).unwrap()).collect();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(ready(backend.get(&skeys[c.next()])).unwrap()));
    }

    /// What an application calls: typed get hit of a 100-byte String.
    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn cache_get_hit(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(ready(cache.get::<String>(&keys[c.next()])).unwrap()));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn cache_get_miss(b: divan::Bencher) {
        let (cache, _, _) = filled();
        let misses: Vec<String> = (0..KEYS).map(|i| format!("absent:{i}")).collect();
        let mut c = Cycle(0);
        b.bench_local(|| black_box(ready(cache.get::<String>(&misses[c.next()])).unwrap()));
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn cache_set(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let v = value();
        let mut c = Cycle(0);
        b.bench_local(|| ready(cache.set(&keys[c.next()], &v, Ttl::secs(3600))).unwrap());
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn cache_get_many10(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let groups: Vec<Vec<&str>> = keys
            .chunks(10)
            .map(|g| g.iter().map(String::as_str).collect())
            .collect();
        let mut i = 0;
        b.bench_local(|| {
            i = (i + 1) % groups.len();
            black_box(ready(cache.get_many::<String, _>(&groups[i])).unwrap())
        });
    }

    #[divan::bench(sample_count = 200, sample_size = 2000)]
    fn backend_set(b: divan::Bencher) {
        let (cache, _, keys) = filled();
        let backend = cache.backend().clone();
        let skeys: Vec<String> = keys.iter().map(|k| cache.make_key(k).unwrap()).collect();
        let v = Bytes::from(value());
        let mut c = Cycle(0);
        b.bench_local(|| {
            ready(backend.set(
                &skeys[c.next()],
                v.clone(),
                Expiry::After(std::time::Duration::from_secs(3600)),
            ))
            .unwrap()
        });
    }
}
