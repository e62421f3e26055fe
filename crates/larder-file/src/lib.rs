//! # larder-file
//!
//! The filesystem backend for [larder](https://docs.rs/larder): one file per
//! key, shared safely by every process that opens the same directory.
//!
//! Layout and guarantees:
//!
//! - `root/aa/bb/<xxh3-128 of the key>`; directories are created `0700` and
//!   files `0600`, so other users of the machine cannot read cached data.
//! - A file holds a header (magic, expiry in unix milliseconds, lengths, an
//!   xxh3 checksum of key and value), the full key and the value. A hash
//!   collision therefore reads as a miss, never as another key's value.
//! - Mutations of one shard (`aa`) take an in-process mutex and an `flock`
//!   on `root/aa/.lock`, so `add`, `incr` and `touch` are atomic across
//!   threads *and* processes.
//! - Writes overwrite the file in place. A reader that catches a write half
//!   done sees a checksum mismatch and reads again under the shard lock, so
//!   it never returns half a value; a writer killed mid-write leaves a file
//!   whose checksum fails, which is removed.
//! - `touch` and `delete` rewrite only the 8-byte expiry (a delete is an
//!   expiry in the past); expired files are removed in bulk by the cull.
//!   Why not write-to-temp-then-rename, as Django does? Because replacing or
//!   unlinking a file frees its blocks, and on a filesystem mounted with
//!   `discard` (common on cloud VMs) that costs ~300 µs per operation against
//!   ~10 µs for an in-place write (measured; see docs/BENCHMARKS.md).
//! - Empty, truncated, torn or foreign files read as misses.
//! - The bound (`max_entries`, default 10,000) is enforced without listing the
//!   directory on every set, which is what makes Django's `FileBasedCache`
//!   slow: the entry count is kept in memory (one scan when the directory is
//!   opened) and the directory is scanned only when the count passes the
//!   bound. The cull then removes expired entries and, if still over, the
//!   oldest-written `1/cull_frequency` of them.
//!
//! Blocking file I/O runs on tokio's blocking pool, or inline with
//! [`BlockingIo::Inline`] (`?io=inline`), which is about twice as fast for
//! files in the page cache.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use larder_core::{Cache, Ttl};
//! use larder_file::{FileBackend, FileConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let cache = Cache::new(FileBackend::open(dir.path(), FileConfig::default())?);
//! cache.set("page:/", "<html>…</html>", Ttl::secs(60)).await?;
//! assert!(cache.has_key("page:/").await?);
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
#![warn(missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder_core::envelope::parse_integer;
use larder_core::{
    async_trait, lease_key, Backend, BlockingIo, Bytes, CacheUrl, Capabilities, ClearScope, Error,
    Expiry, LeaseGrant, LeaseToken, Result,
};

const MAGIC: &[u8; 4] = b"LDF2";
/// magic(4) expiry_ms(8) key_len(2) value_len(4) checksum(8)
const HEADER: usize = 4 + 8 + 2 + 4 + 8;
const EXPIRY_AT: u64 = 4;
/// An expiry long past: what `delete` writes.
const TOMBSTONE: u64 = 1;
const SHARDS: usize = 256;
const NAME: &str = "file";

/// Settings of a [`FileBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileConfig {
    /// Entries kept before a cull (default 10,000).
    pub max_entries: u64,
    /// A cull removes `1/cull_frequency` of the entries (default 3, Django's
    /// `CULL_FREQUENCY`); 0 removes everything.
    pub cull_frequency: u64,
    /// Where file I/O runs (default [`BlockingIo::BlockingPool`]).
    pub io: BlockingIo,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            max_entries: 10_000,
            cull_frequency: 3,
            io: BlockingIo::BlockingPool,
        }
    }
}

impl FileConfig {
    /// Sets [`max_entries`](Self::max_entries).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }
    /// Sets [`cull_frequency`](Self::cull_frequency).
    pub fn cull_frequency(mut self, n: u64) -> Self {
        self.cull_frequency = n;
        self
    }
    /// Sets [`io`](Self::io).
    pub fn io(mut self, io: BlockingIo) -> Self {
        self.io = io;
        self
    }
}

/// A cache backend storing one file per key under a directory.
#[derive(Clone)]
pub struct FileBackend {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    config: FileConfig,
    /// Entries believed to exist (exact for this process's own writes,
    /// corrected by every cull's scan).
    count: AtomicI64,
    locks: Vec<Mutex<Option<File>>>,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackend")
            .field("root", &self.inner.root)
            .field("config", &self.inner.config)
            .finish()
    }
}

fn io_err(e: io::Error) -> Error {
    Error::backend(NAME, e)
}

/// Never 0: 0 means "no expiry" in the entry header.
fn now_ms() -> u64 {
    larder_core::unix_ms().max(1)
}

fn deadline_ms(ttl: Expiry) -> u64 {
    match ttl {
        Expiry::Never => 0,
        Expiry::After(d) => now_ms()
            .saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
            .max(2),
    }
}

/// A decoded file.
struct Stored {
    expires_ms: u64,
    value: Vec<u8>,
}

enum Read_ {
    Absent,
    /// Expired or deleted: a miss; the file is reused or culled later.
    Expired,
    /// Checksum or length mismatch: a write in progress, or a corrupt file.
    Torn,
    /// Another key's file (hash collision).
    Other,
    Live(Stored),
}

impl FileBackend {
    /// Opens (creating it if needed) a cache directory.
    pub fn open(root: impl AsRef<Path>, config: FileConfig) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if config.max_entries == 0 {
            return Err(Error::config(
                "file cache max_entries must be greater than 0",
            ));
        }
        create_dir(&root).map_err(|e| {
            Error::config(format!(
                "cannot create cache directory {}: {e}",
                root.display()
            ))
        })?;
        let md = fs::metadata(&root).map_err(io_err)?;
        if !md.is_dir() {
            return Err(Error::config(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let inner = Inner {
            root,
            config,
            count: AtomicI64::new(0),
            locks: (0..SHARDS).map(|_| Mutex::new(None)).collect(),
        };
        let n = inner.scan(|_, _| Ok(false)).map_err(io_err)?;
        inner.count.store(n as i64, Ordering::Relaxed);
        Ok(FileBackend {
            inner: Arc::new(inner),
        })
    }

    /// Opens from `file:///path?max_entries=N&cull_frequency=N&io=pool|inline`,
    /// taking those options out of the URL.
    pub fn from_url(url: &mut CacheUrl) -> Result<Self> {
        if !url.authority().is_empty() && url.authority() != "localhost" {
            return Err(Error::config(format!(
                "file:// URLs name a local directory: write file:///absolute/path, got {:?}",
                url.as_str()
            )));
        }
        if url.path().is_empty() || url.path() == "/" {
            return Err(Error::config(format!(
                "file:// URL {:?} names no directory; write file:///var/cache/myapp",
                url.as_str()
            )));
        }
        let mut config = FileConfig::default();
        if let Some(n) = url.take_parsed("max_entries")? {
            config.max_entries = n;
        }
        if let Some(n) = url.take_parsed("cull_frequency")? {
            config.cull_frequency = n;
        }
        if let Some(io) = url.take("io") {
            config.io = BlockingIo::parse("file", &io)?;
        }
        let path = url.path().to_owned();
        Self::open(path, config)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Entries this process believes exist (exact after a cull or open).
    pub fn approximate_len(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed).max(0) as u64
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.config.io.run(NAME, &self.inner, f).await
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

/// Holds a shard: the mutex guard, and the `flock` on its file, which is
/// released on drop (closing nothing: the lock file stays open for reuse).
struct ShardLock<'a> {
    guard: MutexGuard<'a, Option<File>>,
}

impl Drop for ShardLock<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.guard.as_ref() {
            if let Err(e) = f.unlock() {
                tracing::error!(error = %e, "file cache: could not release a shard lock");
            }
        }
    }
}

impl Inner {
    fn hash(key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(key.as_bytes())
    }

    fn shard_of(hash: u128) -> usize {
        (hash >> 120) as usize
    }

    fn path_of(&self, key: &str) -> (usize, PathBuf) {
        let h = Self::hash(key);
        let hex = format!("{h:032x}");
        let mut p = self.root.clone();
        p.push(&hex[0..2]);
        p.push(&hex[2..4]);
        p.push(&hex);
        (Self::shard_of(h), p)
    }

    /// Takes the shard's lock: a mutex for this process's threads, then
    /// `flock` for other processes (flock alone does not exclude threads
    /// sharing one open file).
    fn lock(&self, shard: usize) -> Result<ShardLock<'_>> {
        let mut guard = self.locks[shard].lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let dir = self.root.join(format!("{shard:02x}"));
            create_dir(&dir).map_err(io_err)?;
            let f = open_private(&dir.join(".lock"), false).map_err(io_err)?;
            *guard = Some(f);
        }
        if let Some(f) = guard.as_ref() {
            f.lock().map_err(io_err)?;
        }
        Ok(ShardLock { guard })
    }

    fn read(&self, key: &str, path: &Path) -> Result<Read_> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read_::Absent),
            Err(e) => return Err(io_err(e)),
        };
        let Some(h) = Header::parse(&bytes) else {
            return Ok(Read_::Torn);
        };
        let end = HEADER + h.key_len + h.value_len;
        if bytes.len() < end || checksum(&bytes[HEADER..end]) != h.checksum {
            return Ok(Read_::Torn);
        }
        if &bytes[HEADER..HEADER + h.key_len] != key.as_bytes() {
            return Ok(Read_::Other);
        }
        if h.expires_ms != 0 && h.expires_ms <= now_ms() {
            return Ok(Read_::Expired);
        }
        let mut value = bytes;
        value.truncate(end);
        value.drain(..HEADER + h.key_len);
        Ok(Read_::Live(Stored {
            expires_ms: h.expires_ms,
            value,
        }))
    }

    /// Reads without the lock; only a torn read is retried under it (then no
    /// writer of this shard is active, so what it sees is what is stored, and
    /// a file still torn is corrupt and removed).
    fn read_live(&self, key: &str, shard: usize, path: &Path) -> Result<Option<Stored>> {
        match self.read(key, path)? {
            Read_::Live(s) => Ok(Some(s)),
            Read_::Absent | Read_::Other | Read_::Expired => Ok(None),
            Read_::Torn => {
                let _lock = self.lock(shard)?;
                self.read_locked(key, path)
            }
        }
    }

    /// Reads with the shard lock held, removing a corrupt file.
    fn read_locked(&self, key: &str, path: &Path) -> Result<Option<Stored>> {
        match self.read(key, path)? {
            Read_::Live(s) => Ok(Some(s)),
            Read_::Absent | Read_::Other | Read_::Expired => Ok(None),
            Read_::Torn => {
                tracing::warn!(path = %path.display(), "corrupt cache file removed");
                self.remove(path)?;
                Ok(None)
            }
        }
    }

    fn remove(&self, path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Writes an entry in place. Call with the shard lock held.
    fn write(&self, key: &str, path: &Path, expires_ms: u64, value: &[u8]) -> Result<()> {
        let key_len = u16::try_from(key.len()).map_err(|_| Error::InvalidKey {
            key: key.to_owned(),
            reason: "longer than 65535 bytes".into(),
        })?;
        let value_len = u32::try_from(value.len()).map_err(|_| Error::ValueTooLarge {
            size: value.len(),
            limit: u32::MAX as usize,
        })?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(key.as_bytes());
        hasher.update(value);
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..12].copy_from_slice(&expires_ms.to_le_bytes());
        header[12..14].copy_from_slice(&key_len.to_le_bytes());
        header[14..18].copy_from_slice(&value_len.to_le_bytes());
        header[18..26].copy_from_slice(&hasher.digest().to_le_bytes());
        let (mut f, created) = match open_private(path, false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    create_dir(dir).map_err(io_err)?;
                }
                (open_private(path, true).map_err(io_err)?, true)
            }
            Err(e) => return Err(io_err(e)),
        };
        if created {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let total = (HEADER + key.len() + value.len()) as u64;
        let mut buf = Vec::with_capacity(total as usize);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(value);
        f.write_all(&buf)
            .and_then(|_| {
                // Shrink only when the old entry was longer: freeing blocks
                // is the expensive part on `discard` filesystems.
                if f.metadata()?.len() > total {
                    f.set_len(total)?;
                }
                Ok(())
            })
            .map_err(io_err)
    }

    /// Ends the lease on `key`, if any (a tombstone, like `delete`). Call
    /// with the lock held.
    fn break_lease(&self, path: &Path) -> Result<()> {
        match self.write_expiry(&lease_path(path), TOMBSTONE) {
            Err(Error::Backend { source, .. })
                if source
                    .downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The live lease's id on `key`, if any. Call with the lock held.
    fn live_lease(&self, key: &str, path: &Path) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read_locked(&lease_key(key), &lease_path(path))?
            .map(|s| s.value))
    }

    fn lease_acquire(&self, key: &str, ttl: Duration, seen: Option<Bytes>) -> Result<LeaseGrant> {
        let (shard, path) = self.path_of(key);
        let _lock = self.lock(shard)?;
        if self.live_lease(key, &path)?.is_some() {
            return Ok(LeaseGrant::Held);
        }
        let lease = LeaseToken::new(seen);
        let expires = now_ms() + (ttl.as_millis() as u64).max(1);
        // A new lease file is created exclusively (O_EXCL); an expired one
        // is overwritten, under the shard lock like every write.
        self.write(
            &lease_key(key),
            &lease_path(&path),
            expires,
            lease.id_hex().as_bytes(),
        )?;
        Ok(LeaseGrant::Won(lease))
    }

    fn lease_fill(&self, key: &str, value: &[u8], ttl: Expiry, lease: &LeaseToken) -> Result<bool> {
        let (shard, path) = self.path_of(key);
        let stored = {
            let _lock = self.lock(shard)?;
            if self.live_lease(key, &path)?.as_deref() != Some(lease.id_hex().as_bytes()) {
                return Ok(false);
            }
            self.remove(&lease_path(&path))?;
            let current = self.read_locked(key, &path)?;
            if !lease.still_seen(current.as_ref().map(|s| &s.value[..])) {
                return Ok(false);
            }
            self.write(key, &path, deadline_ms(ttl), value)?;
            true
        };
        self.cull_if_needed()?;
        Ok(stored)
    }

    fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        let (shard, path) = self.path_of(key);
        let _lock = self.lock(shard)?;
        if self.live_lease(key, &path)?.as_deref() == Some(lease.id_hex().as_bytes()) {
            self.remove(&lease_path(&path))?;
        }
        Ok(())
    }

    /// Rewrites only the expiry of an existing file. Call with the lock held.
    fn write_expiry(&self, path: &Path, expires_ms: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(path).map_err(io_err)?;
        f.write_all_at(&expires_ms.to_le_bytes(), EXPIRY_AT)
            .map_err(io_err)
    }

    fn cull_if_needed(&self) -> Result<()> {
        if self.count.load(Ordering::Relaxed) <= self.config.max_entries as i64 {
            return Ok(());
        }
        self.cull()
    }

    /// Removes expired entries, then, if still over the bound, the oldest
    /// written `1/cull_frequency`. Resets the count from what it saw.
    fn cull(&self) -> Result<()> {
        let now = now_ms();
        let mut live: Vec<(SystemTime, PathBuf)> = Vec::new();
        self.scan(|path, md| {
            let expired =
                read_header(path).is_none_or(|h| h.expires_ms != 0 && h.expires_ms <= now);
            if expired {
                return Ok(true);
            }
            live.push((md.modified().unwrap_or(UNIX_EPOCH), path.to_path_buf()));
            Ok(false)
        })
        .map_err(io_err)?;
        let max = self.config.max_entries as usize;
        if live.len() > max {
            let remove = match self.config.cull_frequency {
                0 => live.len(),
                f => (live.len() / f as usize).max(live.len() - max),
            };
            live.sort_unstable_by_key(|(t, _)| *t);
            for (_, path) in live.drain(..remove) {
                let _ = fs::remove_file(path);
            }
        }
        self.count.store(live.len() as i64, Ordering::Relaxed);
        Ok(())
    }

    /// Visits every entry file; `visit` returns whether to delete it.
    /// Returns how many entry files remain.
    fn scan(
        &self,
        mut visit: impl FnMut(&Path, &fs::Metadata) -> io::Result<bool>,
    ) -> io::Result<u64> {
        let mut remaining = 0;
        for top in read_dir_or_empty(&self.root)? {
            let top = top?;
            if !top.file_type()?.is_dir() {
                continue;
            }
            for sub in read_dir_or_empty(&top.path())? {
                let sub = sub?;
                if !sub.file_type()?.is_dir() {
                    continue;
                }
                for file in read_dir_or_empty(&sub.path())? {
                    let file = file?;
                    let path = file.path();
                    let Ok(md) = file.metadata() else { continue };
                    if visit(&path, &md)? {
                        let _ = fs::remove_file(&path);
                    } else {
                        remaining += 1;
                    }
                }
            }
        }
        Ok(remaining)
    }
}

fn read_dir_or_empty(
    path: &Path,
) -> io::Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>> {
    match fs::read_dir(path) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

struct Header {
    expires_ms: u64,
    key_len: usize,
    value_len: usize,
    checksum: u64,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER || &b[..4] != MAGIC {
            return None;
        }
        Some(Header {
            expires_ms: u64::from_le_bytes(b[4..12].try_into().ok()?),
            key_len: u16::from_le_bytes(b[12..14].try_into().ok()?) as usize,
            value_len: u32::from_le_bytes(b[14..18].try_into().ok()?) as usize,
            checksum: u64::from_le_bytes(b[18..26].try_into().ok()?),
        })
    }
}

fn checksum(key_and_value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key_and_value)
}

/// The header of a file, `None` when the file is not a valid entry.
fn read_header(path: &Path) -> Option<Header> {
    let mut f = File::open(path).ok()?;
    let mut header = [0u8; HEADER];
    f.read_exact(&mut header).ok()?;
    Header::parse(&header)
}

/// The key stored in a file.
fn read_key(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut header = [0u8; HEADER];
    f.read_exact(&mut header).ok()?;
    let h = Header::parse(&header)?;
    let mut key = vec![0u8; h.key_len];
    f.read_exact(&mut key).ok()?;
    String::from_utf8(key).ok()
}

/// The file holding the lease on the entry at `path`: same directory and
/// shard, so one lock covers both.
fn lease_path(path: &Path) -> PathBuf {
    path.with_extension("lease")
}

fn open_private(path: &Path, create_new: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[async_trait]
impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_prefix_clear(true)
            .with_persistent(true)
            .with_shared(true)
            .with_leases(true)
    }

    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.lease_acquire(&key, ttl, seen))
            .await
    }

    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let key = key.to_owned();
        let lease = lease.clone();
        self.blocking(move |inner| inner.lease_fill(&key, &value, ttl, &lease))
            .await
    }

    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        let key = key.to_owned();
        let lease = lease.clone();
        self.blocking(move |inner| inner.lease_release(&key, &lease))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            Ok(inner
                .read_live(&key, shard, &path)?
                .map(|s| Bytes::from(s.value)))
        })
        .await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.blocking(move |inner| {
            keys.iter()
                .map(|key| {
                    let (shard, path) = inner.path_of(key);
                    Ok(inner
                        .read_live(key, shard, &path)?
                        .map(|s| Bytes::from(s.value)))
                })
                .collect()
        })
        .await
    }

    async fn has_key(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            {
                let _lock = inner.lock(shard)?;
                inner.write(&key, &path, deadline_ms(ttl), &value)?;
            }
            inner.cull_if_needed()
        })
        .await
    }

    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        let entries: Vec<(String, Bytes)> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.blocking(move |inner| {
            let expires = deadline_ms(ttl);
            let mut failed = Vec::new();
            for (key, value) in &entries {
                let (shard, path) = inner.path_of(key);
                let result = inner
                    .lock(shard)
                    .and_then(|_lock| inner.write(key, &path, expires, value));
                if let Err(e) = result {
                    tracing::warn!(key = %key, error = %e, "file cache: entry not stored");
                    failed.push(key.clone());
                }
            }
            inner.cull_if_needed()?;
            Ok(failed)
        })
        .await
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            let stored = {
                let _lock = inner.lock(shard)?;
                // A colliding key's file is replaced: the cache keeps one of the two.
                if inner.read_locked(&key, &path)?.is_some() {
                    false
                } else {
                    inner.write(&key, &path, deadline_ms(ttl), &value)?;
                    true
                }
            };
            if stored {
                inner.cull_if_needed()?;
            }
            Ok(stored)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            let _lock = inner.lock(shard)?;
            // Also when the entry is absent: a computation that started
            // before this invalidation must not store after it.
            inner.break_lease(&path)?;
            if inner.read_locked(&key, &path)?.is_none() {
                return Ok(false);
            }
            inner.write_expiry(&path, TOMBSTONE)?;
            Ok(true)
        })
        .await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            n += u64::from(self.delete(key).await?);
        }
        Ok(n)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            let _lock = inner.lock(shard)?;
            let Some(stored) = inner.read_locked(&key, &path)? else {
                return Err(Error::NotFound { key });
            };
            let n = parse_integer(&stored.value)
                .ok_or_else(|| Error::NotANumber { key: key.clone() })?;
            let m = n
                .checked_add(delta)
                .ok_or_else(|| Error::Overflow { key: key.clone() })?;
            inner.write(&key, &path, stored.expires_ms, m.to_string().as_bytes())?;
            Ok(m)
        })
        .await
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let (shard, path) = inner.path_of(&key);
            let _lock = inner.lock(shard)?;
            if inner.read_locked(&key, &path)?.is_none() {
                return Ok(false);
            }
            inner.write_expiry(&path, deadline_ms(ttl))?;
            Ok(true)
        })
        .await
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        let prefix = match scope {
            ClearScope::All => None,
            ClearScope::Prefix(p) => Some(p.to_owned()),
        };
        self.blocking(move |inner| {
            let remaining = inner
                .scan(|path, _| {
                    Ok(match &prefix {
                        None => true,
                        // Unreadable files are not ours to judge; corrupt
                        // ones are removed by the next read of their key.
                        Some(p) => read_key(path).is_some_and(|k| k.starts_with(p.as_str())),
                    })
                })
                .map_err(io_err)?;
            inner.count.store(remaining as i64, Ordering::Relaxed);
            Ok(())
        })
        .await
    }
}
