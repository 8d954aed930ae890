//! The on-disk block store: fixed-size blocks of objects, one file each, on local NVMe/EBS.
//!
//! Owns the directory layout, the block file format (the data, then a footer naming the block
//! and carrying the CRC32C of its data), atomic writes (a temp file beside the block's, then a
//! rename within its directory; with O_DIRECT where the file system takes it), the LRU bound
//! and the free-space floor, and the lock that keeps two mounts out of one directory. It is
//! synchronous: callers run it on blocking threads. It knows nothing of S3 requests or of who
//! is waiting for a block.
//!
//! A block file is trusted only if its footer names exactly the block asked for, its length is
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
const MAGIC: &[u8; 8] = b"s3mblk02";
/// The magic of the layout before (a header ahead of the data): such files are dropped quietly.
const OLD_MAGIC: &[u8; 8] = b"s3mblk01";
/// The footer's fixed part, after the name: name length, data length, CRC32C, magic.
const FOOTER_LEN: usize = 4 + 4 + 4 + 8;
/// A block file's length, and the address of the buffer it is written from, are multiples of
/// this (the largest logical sector size in use), as O_DIRECT asks. GET bodies start at such an
/// address, so their whole blocks are written from where they are.
const DIRECT_ALIGN: usize = crate::object::buffers::BODY_ALIGN;
/// Write buffers kept for reuse between block writes: a fresh 1 MiB buffer for each block cost
/// more CPU in page faults and zeroing than its copy.
const SPARE_WRITE_BUFFERS: usize = 8;
/// Names longer than this cannot be ours (S3 keys are at most 1,024 bytes, ETags short).
const MAX_NAME_LEN: usize = 4096;
/// How a block file being written is named until its rename: block files are hex, so a name
/// with this start is never one (a kill between the write and the rename leaves it; `open`
/// removes it).
const TEMP_PREFIX: &str = ".tmp.";

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
    /// The self-description stored in the footer: unambiguous, since keys cannot hold NUL.
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
    limits: DiskCacheLimits,
    index: Mutex<Index>,
    /// Held for the life of the cache: the exclusive lock on `dir/lock`.
    _lock: Flock<File>,
    /// Set after the first write failure was logged, so a full or broken disk warns once.
    warned: AtomicBool,
    /// Cleared when the file system refuses O_DIRECT (tmpfs, some FUSE and network file
    /// systems): block files then go through the page cache.
    direct_writes: AtomicBool,
    spare_buffers: Mutex<Vec<Vec<u8>>>,
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&blocks)
            .map_err(io_error)?;
        let lock = take_lock(dir)?;
        remove_legacy_temp_dir(dir).map_err(io_error)?;
        let index = scan(&blocks).map_err(io_error)?;
        let cache = Self {
            dir: dir.to_owned(),
            blocks,
            limits,
            index: Mutex::new(index),
            _lock: lock,
            warned: AtomicBool::new(false),
            direct_writes: AtomicBool::new(true),
            spare_buffers: Mutex::new(Vec::new()),
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
            None if raw.starts_with(OLD_MAGIC) => {
                // Written by an older s3mount: not damaged, only in a layout no longer read.
                self.forget_file(&file_name, &path);
                None
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
        let description = name.describe();
        let size = encoded_len(description.len(), data.len()) as u64;
        if let Err(refusal) = self.evict_to_fit(size) {
            self.note_failure(&io::Error::new(io::ErrorKind::StorageFull, refusal.to_string()));
            return;
        }
        match self.write_atomically(&file_name, &description, data) {
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

    fn take_buffer(&self) -> Vec<u8> {
        lock(&self.spare_buffers).pop().unwrap_or_default()
    }

    fn give_back_buffer(&self, buffer: Vec<u8>) {
        let mut spares = lock(&self.spare_buffers);
        if spares.len() < SPARE_WRITE_BUFFERS {
            spares.push(buffer);
        }
    }

    /// Writes the block file under a temp name in its own directory, then renames it: a rename
    /// within one directory takes only that directory's lock (one across directories takes the
    /// file system's rename lock, and every write shared one temp directory's), and the
    /// directory is made only when it is missing (the first block of its shard, or a cache
    /// directory removed under a live mount).
    fn write_atomically(&self, file_name: &str, description: &[u8], data: &[u8]) -> io::Result<()> {
        let final_path = self.block_path(file_name);
        let tmp_path = final_path.with_file_name(format!(
            "{TEMP_PREFIX}{}.{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            match self.write_new_file(&tmp_path, description, data) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = final_path.parent() {
                        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
                    }
                    self.write_new_file(&tmp_path, description, data)?;
                }
                written => written?,
            }
            fs::rename(&tmp_path, &final_path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        written
    }

    /// Writes the block file of `data` to a new file at `path`.
    fn write_new_file(&self, path: &Path, description: &[u8], data: &[u8]) -> io::Result<()> {
        let mut buffer = self.take_buffer();
        let written = self.write_new_file_with(path, description, data, &mut buffer);
        self.give_back_buffer(buffer);
        written
    }

    /// With O_DIRECT while the file system takes it, which spares the copy into the page cache
    /// and its reclaim later; else through the page cache. Whole blocks of a GET's body (whole
    /// sectors at a sector-aligned address) go from where they were received, and `buffer`
    /// holds only the footer's sector; anything else is copied into `buffer` for O_DIRECT.
    fn write_new_file_with(
        &self,
        path: &Path,
        description: &[u8],
        data: &[u8],
        buffer: &mut Vec<u8>,
    ) -> io::Result<()> {
        if self.direct_writes.load(Ordering::Relaxed) {
            let data_in_place = is_whole_sectors(data);
            let from = if data_in_place { data.len() } else { 0 };
            let rest = BlockFile::encode(buffer, description, data, from);
            if rest.aligned {
                let pieces: &[&[u8]] = if data_in_place {
                    &[data, rest.bytes]
                } else {
                    &[rest.bytes]
                };
                match write_file(path, pieces, libc::O_DIRECT) {
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::debug!(dir = %self.dir.display(), %error,
                            "the block cache's file system refuses O_DIRECT: block files go through the page cache");
                        self.direct_writes.store(false, Ordering::Relaxed);
                        let _ = fs::remove_file(path);
                    }
                    written => return written,
                }
            }
        }
        let rest = BlockFile::encode(buffer, description, data, data.len());
        write_file(path, &[data, rest.bytes], 0)
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
        self.forget_file(file_name, path);
    }

    /// Deletes a block file and its index entry.
    fn forget_file(&self, file_name: &str, path: &Path) {
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
        lock(&self.index)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A block file's bytes, as written in one go: the data at offset 0 (so a whole block is
/// sector-aligned on disk and read back as one slice), zeros, then the block's description and
/// the footer (name length, data length, CRC32C of the data, magic) ending the file, whose length
/// is the smallest multiple of [`DIRECT_ALIGN`] that holds them all.
struct BlockFile<'a> {
    /// The file's bytes from where [`BlockFile::encode`] was asked to start.
    bytes: &'a [u8],
    /// Whether `bytes` starts at an address aligned to [`DIRECT_ALIGN`].
    aligned: bool,
}

impl<'a> BlockFile<'a> {
    /// Lays the file's bytes from `from` on out in `buffer` (its earlier contents dropped, its
    /// memory reused): `from` is 0 (the whole file, a copy of the data) or the data's length (the
    /// rest, written after the data from where it is). Only the padding is zeroed.
    fn encode(buffer: &'a mut Vec<u8>, description: &[u8], data: &[u8], from: usize) -> Self {
        debug_assert!(from == 0 || from == data.len());
        let len = encoded_len(description.len(), data.len());
        buffer.clear();
        // Room for the bytes at any alignment, so the pushes below never move the buffer.
        buffer.reserve(len - from + DIRECT_ALIGN);
        let offset = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        // `align_offset` may decline to align; such a buffer is written through the page cache.
        let aligned = offset < DIRECT_ALIGN;
        let start = if aligned { offset } else { 0 };
        buffer.resize(start, 0);
        if from == 0 {
            buffer.extend_from_slice(data);
        }
        buffer.resize(start + len - from - FOOTER_LEN - description.len(), 0);
        buffer.extend_from_slice(description);
        buffer.extend_from_slice(&(description.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        buffer.extend_from_slice(MAGIC);
        debug_assert_eq!(buffer.len(), start + len - from);
        Self {
            bytes: &buffer[start..],
            aligned,
        }
    }
}

/// Whether `data` can be written with O_DIRECT from where it is.
fn is_whole_sectors(data: &[u8]) -> bool {
    !data.is_empty()
        && data.as_ptr().align_offset(DIRECT_ALIGN) == 0
        && data.len().is_multiple_of(DIRECT_ALIGN)
}

/// The length of the block file of `data_len` bytes named by a description of `name_len`.
fn encoded_len(name_len: usize, data_len: usize) -> usize {
    (data_len + name_len + FOOTER_LEN).next_multiple_of(DIRECT_ALIGN)
}

/// The range of the data within `raw`, if `raw` is an intact block file named `description`.
fn decode(raw: &[u8], description: &[u8]) -> Option<std::ops::Range<usize>> {
    let footer_start = raw.len().checked_sub(FOOTER_LEN)?;
    let footer = &raw[footer_start..];
    if &footer[12..] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]]);
    let (name_len, data_len, crc) = (word(0) as usize, word(4) as usize, word(8));
    // The exact length catches a torn or truncated file before any slicing depends on it.
    if name_len > MAX_NAME_LEN || raw.len() != encoded_len(name_len, data_len) {
        return None;
    }
    if &raw[footer_start - name_len..footer_start] != description {
        return None;
    }
    (crc32c::crc32c(&raw[..data_len]) == crc).then_some(0..data_len)
}

/// Writes `pieces`, one after the other, to a new file at `path` opened with the extra `flags`.
fn write_file(path: &Path, pieces: &[&[u8]], flags: i32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)?;
    pieces.iter().try_for_each(|piece| file.write_all(piece))
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

/// Removes `tmp/`, where an older s3mount wrote block files before their rename, with whatever
/// an interrupted write left in it.
fn remove_legacy_temp_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir.join("tmp")) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
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
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                // A write killed before its rename.
                let _ = fs::remove_file(entry.path());
                continue;
            }
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
                0 => raw[100] ^= 1,                 // a flipped bit in the data
                1 => raw.truncate(raw.len() - 100), // a torn write
                _ => {
                    let name_end = raw.len() - FOOTER_LEN;
                    raw[name_end - 1] = b'x' // another block's name
                }
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
        let one = encoded_len(name("k", 0).describe().len(), block.len()) as u64;
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
    fn a_block_file_starts_with_its_data_and_is_whole_sectors_long() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        // A whole block needs one sector more for its name; a short one shares its last sector.
        let cases = [
            (vec![3u8; 1 << 20], (1 << 20) + DIRECT_ALIGN),
            (vec![4u8; 5000], 2 * DIRECT_ALIGN),
            (Vec::new(), DIRECT_ALIGN),
        ];
        for (data, file_len) in cases {
            cache.put(&name("k", 0), &data);
            let raw = fs::read(only_block_file(dir.path())).unwrap();
            assert_eq!(&raw[..data.len()], &data[..], "the data at offset 0");
            assert_eq!(raw.len(), file_len, "{} bytes of data", data.len());
            assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&data[..]));
            assert_eq!(cache.size(), raw.len() as u64);
        }
    }

    /// Whether the file system holding `dir` takes an O_DIRECT write of one aligned sector.
    fn takes_direct_writes(dir: &Path) -> bool {
        let mut buffer = Vec::new();
        let file = BlockFile::encode(&mut buffer, b"probe", b"", 0);
        file.aligned && write_file(&dir.join("probe"), &[file.bytes], libc::O_DIRECT).is_ok()
    }

    #[test]
    fn blocks_are_written_direct_where_the_disk_allows_and_buffered_alike_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        let block = vec![9u8; 1 << 20];
        cache.put(&name("k", 0), &block);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&block[..]));
        let probe_dir = tempfile::tempdir_in(dir.path()).unwrap();
        assert_eq!(
            cache.direct_writes.load(Ordering::Relaxed),
            takes_direct_writes(probe_dir.path()),
            "O_DIRECT is kept exactly where the file system takes it"
        );
        // A block as a GET's body holds it, sector-aligned: written from where it is.
        let mut received: Vec<u8> = Vec::with_capacity(block.len() + DIRECT_ALIGN);
        let pad = received.as_ptr().align_offset(DIRECT_ALIGN);
        received.resize(pad, 0);
        received.extend_from_slice(&block);
        let in_place = &received[pad..];
        assert!(is_whole_sectors(in_place));
        cache.put(&name("k", 1), in_place);
        // Through the page cache (as on tmpfs).
        cache.direct_writes.store(false, Ordering::Relaxed);
        cache.put(&name("k", 2), &block);
        let file_of = |index| fs::read(cache.block_path(&name("k", index).file_name())).unwrap();
        // The same layout whichever way it was written: only the block index in the name differs.
        let copied = file_of(0);
        for index in 1..3 {
            let other = file_of(index);
            assert_eq!(other.len(), copied.len(), "block {index}");
            let differing = other.iter().zip(&copied).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 1, "block {index}");
        }
        for index in 0..3 {
            assert_eq!(
                cache.get(&name("k", index)).as_deref(),
                Some(&block[..]),
                "block {index}"
            );
        }
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_block_file_of_the_old_layout_is_a_quiet_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        cache.put(&name("k", 0), b"new layout");
        let path = only_block_file(dir.path());
        let mut old = OLD_MAGIC.to_vec();
        old.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &old).unwrap();
        assert_eq!(cache.get(&name("k", 0)), None);
        assert!(!path.exists(), "the old file is deleted");
        assert_eq!(cache.size(), 0);
        assert_eq!(
            cache.counters.corrupt_dropped.load(Ordering::Relaxed),
            0,
            "not damage"
        );
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
        // A process killed between create and rename leaves a temp file beside the blocks;
        // an older s3mount, in tmp/.
        let block = only_block_file(dir.path());
        let temp = block.with_file_name(".tmp.999.0");
        fs::write(&temp, b"half a blo").unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp").join("999.0"), b"half a blo").unwrap();
        let cache = DiskCache::open(dir.path(), limits(1 << 30)).unwrap();
        assert!(!temp.exists());
        assert!(!dir.path().join("tmp").exists());
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"whole"[..]));
        assert_eq!(
            cache.size(),
            fs::metadata(&block).unwrap().len(),
            "the temp file is not indexed"
        );
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
