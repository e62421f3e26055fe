//! The whole conformance suite against the filesystem backend.

use std::sync::Arc;

use larder_core::Backend;
use larder_core::BlockingIo as FileIo;
use larder_file::{FileBackend, FileConfig};

/// A fresh cache directory per case, under cargo's per-target scratch
/// directory so nothing is left in the system's temp dir.
fn fresh(io: FileIo) -> Arc<dyn Backend> {
    let dir = tempfile::Builder::new()
        .prefix("conformance-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
        .keep();
    Arc::new(
        FileBackend::open(dir, FileConfig::default().max_entries(100_000).io(io)).expect("open"),
    ) as Arc<dyn Backend>
}

mod blocking_pool {
    use super::*;
    larder_testkit::conformance_suite!(|| async { fresh(FileIo::BlockingPool) });
}

mod inline {
    use super::*;
    larder_testkit::conformance_suite!(|| async { fresh(FileIo::Inline) });
}
