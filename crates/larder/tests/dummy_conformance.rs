//! The dummy backend against the cases that apply to a cache that stores nothing.

use std::sync::Arc;

use larder::backend::Backend;
use larder::DummyBackend;

larder_testkit::dummy_suite!(|| async { Arc::new(DummyBackend) as Arc<dyn Backend> });
