//! Invalidation without deleting: versions and prefixes.
//!
//! Bumping a cache's version makes every old entry unreachable at once
//! (Django's VERSION), and `incr_version` moves one key forward. Prefixes
//! keep two caches on one backend apart, and `clear` only touches its own.
//!
//! Run: `cargo run -p larder --example versions`

use std::sync::Arc;

use larder::backend::Backend;
use larder::mem::MemBackend;
use larder::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let pages = Cache::builder_arc(backend.clone())
        .key_prefix("pages")
        .build()?;
    let sessions = Cache::builder_arc(backend).key_prefix("sessions").build()?;

    pages.set("home", "<h1>v1</h1>", Ttl::Default).await?;
    sessions.set("abc", "user 7", Ttl::Default).await?;

    // Deploy a new template: read and write at version 2 from now on.
    let pages_v2 = pages.version(2);
    println!(
        "v2 sees the old page? {:?}",
        pages_v2.get::<String>("home").await?
    );
    pages_v2.set("home", "<h1>v2</h1>", Ttl::Default).await?;

    // Move a single key forward instead.
    sessions.incr_version("abc", 1).await?;
    println!(
        "session at v2: {:?}",
        sessions.version(2).get::<String>("abc").await?
    );

    // clear() removes only the "pages" prefix.
    pages.clear().await?;
    println!(
        "after pages.clear(): page v2 = {:?}, session v2 = {:?}",
        pages_v2.get::<String>("home").await?,
        sessions.version(2).get::<String>("abc").await?
    );
    Ok(())
}
