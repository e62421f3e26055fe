//! Writing your own backend: implement `Backend` (bytes in, bytes out) and
//! the `Cache` adds typed values, keys, versions and TTL handling on top.
//! This one logs every call and delegates to the memory backend.
//!
//! Run: `cargo run -p larder --example custom_backend`

use larder::backend::{async_trait, Backend, Bytes, Capabilities, ClearScope, Expiry};
use larder::mem::MemBackend;
use larder::prelude::*;
use larder::Result;

struct Logged<B>(B);

#[async_trait]
impl<B: Backend> Backend for Logged<B> {
    fn name(&self) -> &'static str {
        "logged"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let r = self.0.get(key).await;
        println!(
            "  get {key} -> {}",
            if matches!(r, Ok(Some(_))) {
                "hit"
            } else {
                "miss"
            }
        );
        r
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        println!("  set {key} ({} bytes, {ttl:?})", value.len());
        self.0.set(key, value, ttl).await
    }
    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        println!("  add {key}");
        self.0.add(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        println!("  delete {key}");
        self.0.delete(key).await
    }
    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        println!("  incr {key} by {delta}");
        self.0.incr(key, delta).await
    }
    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        self.0.touch(key, ttl).await
    }
    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        println!("  clear {scope:?}");
        self.0.clear(scope).await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cache = Cache::builder(Logged(MemBackend::default()))
        .key_prefix("custom")
        .build()?;
    println!("set and get through the logging backend:");
    cache.set("answer", &42, Ttl::secs(60)).await?;
    let v: Option<i64> = cache.get("answer").await?;
    println!("typed value back: {v:?}");
    println!("batch operations fall back to the trait's default loops:");
    let _ = cache.get_many::<i64, _>(&["answer", "missing"]).await?;
    cache.clear().await?;
    // Check a backend of your own with the conformance suite:
    //   larder_testkit::conformance_suite!(|| async { Arc::new(MyBackend::new()) as Arc<dyn Backend> });
    Ok(())
}
