//! Behaviour specific to the filesystem backend.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use larder_core::{Backend, Cache, Ttl};
use larder_file::{FileBackend, FileConfig};

fn dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("file-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
        .keep()
}

fn entry_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in std::fs::read_dir(root).unwrap().flatten() {
        if !top.path().is_dir() {
            continue;
        }
        for sub in std::fs::read_dir(top.path()).unwrap().flatten() {
            if !sub.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_are_private() {
    let root = dir().join("nested/cache");
    let cache = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    cache.set("secret", "token", Ttl::secs(60)).await.unwrap();
    let files = entry_files(&root);
    assert_eq!(files.len(), 1);
    let file_mode = std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(file_mode, 0o600, "file mode {file_mode:o}");
    let mut d = files[0].parent().unwrap();
    while d != root.parent().unwrap() {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", d.display());
        d = d.parent().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_empty_files_read_as_misses_and_are_removed() {
    let root = dir();
    let cache = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    cache.set("a", "A", Ttl::secs(60)).await.unwrap();
    cache.set("b", "B", Ttl::secs(60)).await.unwrap();
    let files = entry_files(&root);
    assert_eq!(files.len(), 2);
    std::fs::write(&files[0], b"").unwrap();
    std::fs::write(&files[1], b"LDF1\x01").unwrap();
    assert_eq!(cache.get::<String>("a").await.unwrap(), None);
    assert_eq!(cache.get::<String>("b").await.unwrap(), None);
    assert!(entry_files(&root).is_empty(), "corrupt files were kept");
    // And the keys work again.
    cache.set("a", "again", Ttl::secs(60)).await.unwrap();
    assert_eq!(
        cache.get::<String>("a").await.unwrap().as_deref(),
        Some("again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_is_enforced_by_culling() {
    let root = dir();
    let backend = FileBackend::open(&root, FileConfig::default().max_entries(50)).unwrap();
    let cache = Cache::new(backend.clone());
    for i in 0..200 {
        cache
            .set(&format!("k{i}"), &i, Ttl::secs(60))
            .await
            .unwrap();
        assert!(
            backend.approximate_len() <= 50,
            "count {} after {i}",
            backend.approximate_len()
        );
    }
    let on_disk = entry_files(&root).len();
    assert!(on_disk <= 50, "{on_disk} files on disk");
    // The newest entry survives a cull (oldest-written go first).
    assert_eq!(cache.get::<i32>("k199").await.unwrap(), Some(199));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_culled_first() {
    let root = dir();
    let backend = FileBackend::open(&root, FileConfig::default().max_entries(10)).unwrap();
    let cache = Cache::new(backend.clone());
    for i in 0..10 {
        cache
            .set(
                &format!("short{i}"),
                &i,
                Ttl::After(std::time::Duration::from_millis(200)),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    cache.set("long", "kept", Ttl::secs(60)).await.unwrap();
    assert_eq!(backend.approximate_len(), 1);
    assert_eq!(
        cache.get::<String>("long").await.unwrap().as_deref(),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_counts_existing_entries_and_keeps_data() {
    let root = dir();
    {
        let cache = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
        for i in 0..25 {
            cache.set(&format!("k{i}"), &i, Ttl::Never).await.unwrap();
        }
    }
    let backend = FileBackend::open(&root, FileConfig::default()).unwrap();
    assert_eq!(backend.approximate_len(), 25);
    let cache = Cache::new(backend);
    assert_eq!(cache.get::<i32>("k7").await.unwrap(), Some(7));
}

/// Two independent handles on one directory take separate `flock`s, as two
/// processes would: increments from both must all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_two_handles_are_atomic() {
    let root = dir();
    let a = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    let b = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    a.set("n", &0, Ttl::Never).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                c.incr("n", 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.get::<i64>("n").await.unwrap(), Some(200));
}

/// A delete rewrites the expiry only: the key reads as absent at once, and
/// the file goes at the next cull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_entries_are_tombstones_until_culled() {
    let root = dir();
    let backend = FileBackend::open(&root, FileConfig::default().max_entries(5)).unwrap();
    let cache = Cache::new(backend.clone());
    cache.set("gone", "v", Ttl::secs(60)).await.unwrap();
    assert!(cache.delete("gone").await.unwrap());
    assert!(!cache.has_key("gone").await.unwrap());
    assert!(
        !cache.delete("gone").await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(
        entry_files(&root).len(),
        1,
        "the tombstone stays until a cull"
    );
    for i in 0..6 {
        cache
            .set(&format!("k{i}"), &i, Ttl::secs(60))
            .await
            .unwrap();
    }
    assert!(entry_files(&root).len() <= 5);
    assert!(!cache.has_key("gone").await.unwrap());
}

/// A writer killed half way leaves a file whose checksum fails: it reads as
/// a miss and is removed, and other keys are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_file_is_a_miss_and_removed() {
    let root = dir();
    let cache = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    cache
        .set("k", &"x".repeat(5000), Ttl::secs(60))
        .await
        .unwrap();
    cache.set("other", "fine", Ttl::secs(60)).await.unwrap();
    let files = entry_files(&root);
    let victim = files
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let full = std::fs::read(victim).unwrap();
    // Same length, but the second half is from "another write".
    let mut torn = full.clone();
    for b in &mut torn[full.len() / 2..] {
        *b = b'y';
    }
    std::fs::write(victim, &torn).unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    assert!(!victim.exists(), "corrupt file kept");
    assert_eq!(
        cache.get::<String>("other").await.unwrap().as_deref(),
        Some("fine")
    );
}

/// A value that shrinks leaves no stale tail that a reader could return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrinking_values_read_back_exactly() {
    let root = dir();
    let cache = Cache::new(FileBackend::open(&root, FileConfig::default()).unwrap());
    cache
        .set("k", &"long".repeat(10_000), Ttl::secs(60))
        .await
        .unwrap();
    cache.set("k", "short", Ttl::secs(60)).await.unwrap();
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("short")
    );
    let len = std::fs::metadata(entry_files(&root).pop().unwrap())
        .unwrap()
        .len();
    assert!(len < 100, "file not shrunk: {len} bytes");
}

#[test]
fn bad_urls_say_what_is_wrong() {
    let mut u = larder_core::CacheUrl::parse("file://").unwrap();
    let err = FileBackend::from_url(&mut u).unwrap_err().to_string();
    assert!(err.contains("names no directory"), "{err}");
    let mut u = larder_core::CacheUrl::parse("file://host/x").unwrap();
    let err = FileBackend::from_url(&mut u).unwrap_err().to_string();
    assert!(err.contains("local directory"), "{err}");
    let mut u = larder_core::CacheUrl::parse("file:///tmp/x?max_entries=0").unwrap();
    assert!(FileBackend::from_url(&mut u).is_err());
    // A path that is a file, not a directory.
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let err = FileBackend::open(f.path(), FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot create") || err.contains("not a directory"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_name_and_capabilities() {
    let b = FileBackend::open(dir(), FileConfig::default()).unwrap();
    assert_eq!(b.name(), "file");
    let caps = b.capabilities();
    assert!(caps.persistent && caps.shared && caps.prefix_clear);
}
