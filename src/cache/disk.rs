//! The on-disk block store: fixed-size blocks of objects, one file each, on local NVMe/EBS.
//!
//! Owns the directory layout, the block file format (a header naming the block and carrying the
//! CRC32C of its data), atomic writes (temp file, then rename), the LRU bound and the free-space
//! floor, and the lock that keeps two mounts out of one directory. It is synchronous: callers
//! run it on blocking threads. It knows nothing of S3 requests or of who is waiting for a block.
//!
//! A block file is trusted only if its header names exactly the block asked for, its length is
//! right and its CRC32C matches; anything else (torn write, truncation, bit rot, a hash
//! collision) is deleted and reported as a miss, never returned.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

use crate::lockfile::{LockError, lock_dir};

/// File format marker and version; a different layout gets a different magic.
const MAGIC: &[u8; 8] = b"s3mblk01";
/// Magic, CRC32C, data length, name length.
const HEADER_LEN: usize = 8 + 4 + 4 + 4;
/// Names longer than this cannot be ours (S3 keys are at most 1,024 bytes, ETags short).
const MAX_NAME_LEN: usize = 4096;

/// Which block of which object version. The namespace (the bucket) keeps equal keys of two
/// buckets apart when one cache directory serves them one after the other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockName {
    pub namespace: String,
    pub key: String,
    pub etag: String,
    pub index: u64,
}

impl BlockName {
    /// The self-description stored in the header: unambiguous, since keys cannot hold NUL.
    fn describe(&self) -> Vec<u8> {
        format!("{}\0{}\0{}\0{}", self.namespace, self.key, self.etag, self.index).into_bytes()
    }

    /// The file name: a SHA-256 of the description, in hex.
    fn file_name(&self) -> String {
        let digest = Sha256::digest(self.describe());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error(
        "cache directory {dir} is in use by another s3mount{holder}; give this mount its own with --cache DIR, or --no-cache"
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot use cache directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

/// Bounds of the cache.
#[derive(Clone, Debug)]
pub struct DiskCacheLimits {
    /// Total bytes of block files at most.
    pub max_bytes: u64,
    /// Keep at least this many bytes free on the file system holding the cache.
    pub min_free_bytes: u64,
}

/// Why a block was not stored: the bound it would break, with the figures a user needs to act.
#[derive(Debug, thiserror::Error)]
enum FitRefusal {
    #[error("the cache is bounded at {max_bytes} bytes (--cache-size)")]
    OverBound { max_bytes: u64 },
    #[error(
        "the disk holding the cache has {free_bytes} bytes free, below the {min_free_bytes} bytes it must keep free (--cache-min-free)"
    )]
    UnderFloor { free_bytes: u64, min_free_bytes: u64 },
}

/// Counters, for the stats line and tests.
#[derive(Debug, Default)]
pub struct DiskCacheCounters {
    pub corrupt_dropped: AtomicU64,
    pub evicted: AtomicU64,
    pub write_failures: AtomicU64,
}

struct Index {
    /// File name -> file size, least recently used first.
    lru: LruCache<String, u64>,
    total_bytes: u64,
}

pub struct DiskCache {
    dir: PathBuf,
    blocks: PathBuf,
    tmp: PathBuf,
    limits: DiskCacheLimits,
    index: Mutex<Index>,
    /// Held for the life of the cache: the exclusive lock on `dir/lock`.
    _lock: Flock<File>,
    /// Set after the first write failure was logged, so a full or broken disk warns once.
    warned: AtomicBool,
    next_tmp: AtomicU64,
    pub counters: DiskCacheCounters,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Opens (creating, 0700) the cache in `dir`, takes its lock, removes leftovers of
    /// interrupted writes and indexes the blocks already there, oldest first.
    pub fn open(dir: &Path, limits: DiskCacheLimits) -> Result<Self, DiskCacheError> {
        let io_error = |source| DiskCacheError::Io {
            dir: dir.to_owned(),
            source,
        };
        let blocks = dir.join("blocks");
        let tmp = dir.join("tmp");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&blocks)
            .map_err(io_error)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(io_error)?;
        let lock = take_lock(dir)?;
        remove_dir_contents(&tmp).map_err(io_error)?;
        let index = scan(&blocks).map_err(io_error)?;
        let cache = Self {
            dir: dir.to_owned(),
            blocks,
            tmp,
            limits,
            index: Mutex::new(index),
            _lock: lock,
            warned: AtomicBool::new(false),
            next_tmp: AtomicU64::new(0),
            counters: DiskCacheCounters::default(),
        };
        if let Err(refusal) = cache.evict_to_fit(0) {
            tracing::warn!(dir = %dir.display(), %refusal, "the block cache cannot store anything now");
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most the block files may take (`--cache-size`).
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Total bytes of block files.
    pub fn size(&self) -> u64 {
        self.lock_index().total_bytes
    }

    /// Whether the block is indexed, without reading it (and without checking it: a damaged
    /// block shows when it is read, and is fetched again then). Marks it recently used.
    pub fn contains(&self, name: &BlockName) -> bool {
        self.lock_index().lru.get(&name.file_name()).is_some()
    }

    /// The block's data, if cached and intact. A damaged file is deleted.
    pub fn get(&self, name: &BlockName) -> Option<Bytes> {
        let file_name = name.file_name();
        let path = self.block_path(&file_name);
        let mut file = File::open(&path).ok()?;
        let mut raw = Vec::new();
        if file.read_to_end(&mut raw).is_err() {
            self.drop_damaged(&file_name, &path);
            return None;
        }
        match decode(&raw, &name.describe()) {
            Some(range) => {
                self.lock_index().lru.promote(&file_name);
                Some(Bytes::from(raw).slice(range))
            }
            None => {
                self.drop_damaged(&file_name, &path);
                None
            }
        }
    }

    /// Stores a block, evicting the least recently used ones to stay within the bounds. Failures
    /// (disk full, unwritable) are logged once and otherwise ignored: the cache is best-effort.
    pub fn put(&self, name: &BlockName, data: &[u8]) {
        let file_name = name.file_name();
        let header = header(&name.describe(), data);
        let size = (header.len() + data.len()) as u64;
        if let Err(refusal) = self.evict_to_fit(size) {
            self.note_failure(&io::Error::new(io::ErrorKind::StorageFull, refusal.to_string()));
            return;
        }
        match self.write_atomically(&file_name, &header, data) {
            Ok(()) => {
                let mut index = self.lock_index();
                if let Some(old) = index.lru.put(file_name, size) {
                    index.total_bytes -= old;
                }
                index.total_bytes += size;
            }
            Err(error) => self.note_failure(&error),
        }
    }

    fn write_atomically(&self, file_name: &str, header: &[u8], data: &[u8]) -> io::Result<()> {
        let tmp_path = self.tmp.join(format!(
            "{}.{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp_path)?;
            file.write_all(header)?;
            file.write_all(data)?;
            let final_path = self.block_path(file_name);
            if let Some(parent) = final_path.parent() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
            }
            fs::rename(&tmp_path, &final_path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        written
    }

    /// Evicts until `incoming` more bytes fit under the size bound and above the free-space
    /// floor. Fails, saying which bound, when they cannot fit even with the cache empty.
    fn evict_to_fit(&self, incoming: u64) -> Result<(), FitRefusal> {
        loop {
            let Some(refusal) = self.refusal(incoming) else {
                return Ok(());
            };
            let victim = {
                let mut index = self.lock_index();
                let victim = index.lru.pop_lru();
                if let Some((_, size)) = &victim {
                    index.total_bytes -= size;
                }
                victim
            };
            let Some((file_name, _)) = victim else {
                return Err(refusal);
            };
            let _ = fs::remove_file(self.block_path(&file_name));
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Which bound `incoming` more bytes would break now, if any.
    fn refusal(&self, incoming: u64) -> Option<FitRefusal> {
        let max_bytes = self.limits.max_bytes;
        if self.lock_index().total_bytes + incoming > max_bytes {
            return Some(FitRefusal::OverBound { max_bytes });
        }
        let min_free_bytes = self.limits.min_free_bytes;
        match free_bytes(&self.dir) {
            Some(free_bytes) if free_bytes < min_free_bytes.saturating_add(incoming) => {
                Some(FitRefusal::UnderFloor {
                    free_bytes,
                    min_free_bytes,
                })
            }
            _ => None,
        }
    }

    fn drop_damaged(&self, file_name: &str, path: &Path) {
        tracing::warn!(path = %path.display(), "dropping a damaged cache block; it will be fetched again");
        self.counters.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
        let _ = fs::remove_file(path);
        let mut index = self.lock_index();
        if let Some(size) = index.lru.pop(file_name) {
            index.total_bytes -= size;
        }
    }

    fn note_failure(&self, error: &io::Error) {
        self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(dir = %self.dir.display(), %error,
                "cannot write to the block cache; reads go on uncached (warned once)");
        }
    }

    /// `blocks/ab/abcdef…`: 256 subdirectories keep any one directory small.
    fn block_path(&self, file_name: &str) -> PathBuf {
        self.blocks.join(&file_name[..2]).join(file_name)
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The header of a block file; the data follows it. Kept apart from the data so writing a block
/// never copies it.
fn header(description: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + description.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(description.len() as u32).to_le_bytes());
    out.extend_from_slice(description);
    out
}

/// The range of the data within `raw`, if `raw` is an intact block named `description`.
fn decode(raw: &[u8], description: &[u8]) -> Option<std::ops::Range<usize>> {
    let header = raw.get(..HEADER_LEN)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let (crc, data_len, name_len) = (word(8), word(12) as usize, word(16) as usize);
    if name_len > MAX_NAME_LEN || raw.get(HEADER_LEN..HEADER_LEN + name_len)? != description {
        return None;
    }
    let start = HEADER_LEN + name_len;
    let data = raw.get(start..)?;
    (data.len() == data_len && crc32c::crc32c(data) == crc).then_some(start..raw.len())
}

/// Takes the cache directory's lock, or says who holds it.
fn take_lock(dir: &Path) -> Result<Flock<File>, DiskCacheError> {
    lock_dir(dir).map_err(|error| match error {
        LockError::Held { holder } => DiskCacheError::InUse {
            dir: dir.to_owned(),
            holder,
        },
        LockError::Io(source) => DiskCacheError::Io {
            dir: dir.to_owned(),
            source,
        },
    })
}

fn remove_dir_contents(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let _ = fs::remove_file(entry?.path());
    }
    Ok(())
}

/// Indexes the block files under `blocks`, least recently written first.
fn scan(blocks: &Path) -> io::Result<Index> {
    let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
    for shard in fs::read_dir(blocks)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(name) = entry.file_name().to_str() {
                found.push((modified, name.to_owned(), metadata.len()));
            }
        }
    }
    found.sort();
    let mut index = Index {
        lru: LruCache::unbounded(),
        total_bytes: 0,
    };
    for (_, name, size) in found {
        index.total_bytes += size;
        index.lru.put(name, size);
    }
    Ok(index)
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(key: &str, index: u64) -> BlockName {
        BlockName {
            namespace: "b".into(),
            key: key.into(),
            etag: "\"e1\"".into(),
            index,
        }
    }

    fn limits(max_bytes: u64) -> DiskCacheLimits {
        DiskCacheLimits {
            max_bytes,
            min_free_bytes: 0,
        }
    }

    fn only_block_file(dir: &Path) -> PathBuf {
        let mut files = Vec::new();
        for shard in fs::read_dir(dir.join("blocks")).unwrap() {
            for entry in fs::read_dir(shard.unwrap().path()).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        assert_eq!(files.len(), 1, "{files:?}");
        files.pop().unwrap()
    }

    #[test]
    fn blocks_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        cache.put(&name("k", 0), b"hello");
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.get(&name("k", 1)), None);
        let other_version = BlockName {
            etag: "\"e2\"".into(),
            ..name("k", 0)
        };
        assert_eq!(
            cache.get(&other_version),
            None,
            "a changed object never serves old blocks"
        );
        drop(cache);
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"hello"[..]));
        assert!(cache.size() > 5);
    }

    #[test]
    fn corrupt_truncated_and_foreign_blocks_are_dropped_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        let data = vec![7u8; 4096];
        for damage in 0..3 {
            cache.put(&name("k", 0), &data);
            let path = only_block_file(dir.path());
            let mut raw = fs::read(&path).unwrap();
            match damage {
                0 => *raw.last_mut().unwrap() ^= 1, // a flipped bit in the data
                1 => raw.truncate(raw.len() - 100), // a torn write
                _ => raw[HEADER_LEN] = b'x',        // another block's name
            }
            fs::write(&path, &raw).unwrap();
            assert_eq!(cache.get(&name("k", 0)), None, "damage {damage}");
            assert!(!path.exists(), "damage {damage}: the file is deleted");
            assert_eq!(cache.size(), 0);
        }
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_size_bound_evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![1u8; 1000];
        let one = (header(&name("k", 0).describe(), &block).len() + block.len()) as u64;
        let cache = DiskCache::open(dir.path(), limits(3 * one)).unwrap();
        for index in 0..3 {
            cache.put(&name("k", index), &block);
        }
        assert!(cache.get(&name("k", 0)).is_some()); // 0 is now the most recently used
        cache.put(&name("k", 3), &block);
        assert!(cache.size() <= 3 * one);
        assert!(cache.get(&name("k", 1)).is_none(), "1 was least recently used");
        assert!(cache.get(&name("k", 0)).is_some());
        assert!(cache.get(&name("k", 3)).is_some());
        // Far past the bound: it stays bounded.
        for index in 4..50 {
            cache.put(&name("k", index), &block);
        }
        assert!(cache.size() <= 3 * one);
        // A smaller bound at the next open trims what is there.
        drop(cache);
        let cache = DiskCache::open(dir.path(), limits(one)).unwrap();
        assert!(cache.size() <= one);
    }

    #[test]
    fn a_block_larger_than_the_cache_is_skipped_with_a_counted_failure() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(100)).unwrap();
        cache.put(&name("k", 0), &[0u8; 1000]);
        assert_eq!(cache.get(&name("k", 0)), None);
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_impossible_free_space_floor_disables_writes_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(
            dir.path(),
            DiskCacheLimits {
                max_bytes: 1 << 30,
                min_free_bytes: u64::MAX / 2,
            },
        )
        .unwrap();
        cache.put(&name("k", 0), b"x");
        assert_eq!(cache.get(&name("k", 0)), None);
    }

    #[test]
    fn leftovers_of_a_killed_write_are_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        cache.put(&name("k", 0), b"whole");
        drop(cache);
        // A process killed between create and rename leaves a temp file behind.
        fs::write(dir.path().join("tmp").join("999.0"), b"half a blo").unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"whole"[..]));
    }

    #[test]
    fn two_caches_cannot_share_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        let second = DiskCache::open(dir.path(), limits(1 << 30)).unwrap_err();
        let message = second.to_string();
        assert!(message.contains("in use by another s3mount"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        assert!(DiskCache::open(dir.path(), limits(1 << 30)).is_ok());
    }

    #[test]
    fn directory_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = DiskCache::open(&root, limits(1 << 30)).unwrap();
        cache.put(&name("k", 0), b"secret");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("blocks")), 0o700);
        assert_eq!(mode(&only_block_file(&root)), 0o600);
    }
}
