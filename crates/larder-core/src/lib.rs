//! # larder-core
//!
//! The foundation of [larder](https://docs.rs/larder): the [`Backend`] trait
//! every storage engine implements, the typed [`Cache`] handle applications
//! use, keys ([`KeyPolicy`]), TTLs ([`Ttl`]) and the value [`envelope`].
//!
//! Most applications depend on the `larder` facade crate instead, which
//! re-exports this crate and adds `Cache::from_url` for the built-in backends.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use larder_core::{Cache, DummyBackend, Ttl};
//!
//! let cache = Cache::builder(DummyBackend).key_prefix("shop").version(2).build()?;
//! assert_eq!(cache.make_key("cart:7")?, "shop:2:cart:7");
//! let total: u32 = cache
//!     .get_or_compute("cart:7", Ttl::secs(30), || async { Ok::<_, larder_core::Error>(99) })
//!     .await?;
//! assert_eq!(total, 99);
//! # Ok::<(), larder_core::Error>(()) }).unwrap();
//! ```
#![warn(missing_docs)]

pub mod backend;
mod blocking;
mod breaker;
mod builder;
mod cache;
mod compute;
mod dummy;
pub mod envelope;
mod error;
mod failure_log;
mod flight;
mod fragment;
mod key;
mod memo;
pub mod near;
mod time;
mod ttl;
pub mod url;
mod value;

pub use async_trait::async_trait;
pub use backend::{
    acquire_lease_by_add, lease_key, Backend, Capabilities, ClearScope, LeaseGrant, LeaseToken,
    WriteGenerations,
};
pub use blocking::BlockingIo;
pub use breaker::{BreakerConfig, BreakerState};
pub use builder::CacheBuilder;
pub use bytes::Bytes;
pub use cache::{
    Cache, DEFAULT_DEADLINE, DEFAULT_MAX_VALUE_BYTES, DEFAULT_STORE_DEADLINE, DEFAULT_TTL,
};
pub use compute::{ComputeError, ComputeOptions, DEFAULT_LEASE_TTL};
pub use dummy::DummyBackend;
pub use envelope::Codec;
pub use error::{io_kind_means_unreachable, Error, Result};
pub use failure_log::{FailureLog, SUMMARY_INTERVAL};
pub use fragment::fragment_key;
pub use key::{stable_hash32, KeyFn, KeyPolicy, MAX_KEY_BYTES};
pub use memo::DecodedMemo;
pub use near::{BusEvent, BusMessage, Invalidation, InvalidationBus, NearBackend};
pub use time::{unix_ms, unix_ms_i64, unix_us, MonotonicMs};
pub use ttl::{Expiry, Resolved, Ttl};
pub use url::CacheUrl;
pub use url::UrlOptions;
pub use value::CacheValue;
