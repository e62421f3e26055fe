//! The whole conformance suite against the memory backend.

use std::sync::Arc;

use larder_core::Backend;
use larder_mem::MemBackend;

mod by_entries {
    use super::*;
    larder_testkit::conformance_suite!(|| async {
        Arc::new(MemBackend::default()) as Arc<dyn Backend>
    });
}

mod by_bytes {
    use super::*;
    larder_testkit::conformance_suite!(|| async {
        Arc::new(MemBackend::with_max_bytes(256 << 20)) as Arc<dyn Backend>
    });
}
