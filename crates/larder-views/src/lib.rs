//! # larder-views
//!
//! Denormalized views: documents actively set by asynchronous workers into
//! persistent storage, so nothing falls out of cache (the talk's closing
//! advice). Being built in steps (issue 7); this first step is the
//! versioned document store: [`DocStore`] and its embedded default,
//! [`RedbStore`].
#![warn(missing_docs)]

mod store;

pub use store::{DocStore, RedbStore, Versioned};
