//! The on-disk block store: fixed-size blocks of objects in the slots of one file on local
//! NVMe/EBS (`blocks/slots`).
//!
//! Owns the slot layout (a block's data at the start of its slot, a trailer sector at the end
//! naming the block and carrying the CRC32C of its data and its write sequence), slot allocation
//! and reuse, the LRU bound and the free-space floor, the index saved at a clean close (else
//! rebuilt from the trailers), and the lock that keeps two mounts out of one directory. It is synchronous: callers run it on blocking threads. It knows nothing of S3
//! requests or of who is waiting for a block.
//!
//! Why one file of slots rather than a file per block: creating, renaming and later unlinking a
//! file per 1 MiB block was a sixth of the daemon's CPU on a cold read (inode allocation above
//! all); a block in a slot costs one or two `pwrite`s and is read back with one or two `pread`s
//! (`O_DIRECT` where the file system takes it, into pooled buffers), and a freed slot is reused.
//! A slot freed under the free-space floor, or for damage, is punched out (its disk space given
//! back); one evicted for the size bound keeps its space for the block taking its place (see
//! `Index::kept`).
//!
//! A block is trusted only if the trailer of its slot names exactly the block asked for, with
//! the sequence the index holds, and its data's CRC32C matches; anything else (torn write, bit
//! rot, a hash collision) is dropped, its slot freed, and reported as a miss, never returned. A
//! slot is written only while no index entry points at it, so a read that overlaps a slot's
//! reuse is told apart from damage: its entry is gone when it looks again.

use crate::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use nix::fcntl::{FallocateFlags, Flock, fallocate};
use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

use crate::checksum::crc32c;
use crate::lockfile::{LockError, lock_dir};
use crate::object::buffers::BufferPool;

/// Trailer format marker and version; a different layout gets a different magic.
const MAGIC: &[u8; 8] = b"s3mslot1";
/// The file of slots, in `blocks/`.
const SLOTS_FILE: &str = "slots";
/// The index as it was when the cache was last closed, in `blocks/`: read at open instead of
/// every slot's trailer (one read rather than one per block, seconds on a cache of 20,000 blocks
/// on a disk of a few thousand IOPS), and removed then, so that only a clean close leaves one.
const INDEX_FILE: &str = "index";
/// The saved index's format marker and version.
const INDEX_MAGIC: &[u8; 8] = b"s3midx01";
/// A block's data at most: the start of every slot holds this much room.
const SLOT_DATA: u64 = super::BLOCK_SIZE;
/// Writes to the file, and the buffers they come from, are aligned to this (the largest logical
/// sector size in use), as O_DIRECT asks. GET bodies start at such an address, so whole blocks
/// are written from where they are.
const DIRECT_ALIGN: usize = crate::object::buffers::BODY_ALIGN;
/// The trailer: one sector at the end of each slot.
const TRAILER_LEN: usize = DIRECT_ALIGN;
/// A slot: room for a block's data, then its trailer. The trailer sits at a fixed place, so the
/// index can be rebuilt at open by reading one sector per slot.
const SLOT_LEN: u64 = SLOT_DATA + TRAILER_LEN as u64;
/// The footer ending a trailer: name length, data length, CRC32C, write sequence, magic.
const FOOTER_LEN: usize = 4 + 4 + 4 + 8 + 8;
/// The longest block description a trailer holds (S3 keys are at most 1,024 bytes; a longer
/// name from some other server is simply not cached).
const MAX_NAME_LEN: usize = TRAILER_LEN - FOOTER_LEN;
/// Slots allocated on disk at once when whole blocks grow the file, ahead of their writes: a
/// direct write past the file's end takes the file's inode lock for the whole write on ext4, so
/// the concurrent block writes of a cold read queued on it (spinning and sleeping there were a
/// twentieth of the daemon's CPU); into space already allocated below the end they go side by
/// side, under a shared lock.
const SLOTS_ALLOCATED_AHEAD: u64 = 32;
/// Write buffers kept for reuse between block writes: a fresh buffer for each block cost more
/// CPU in page faults and zeroing than its copy.
const SPARE_WRITE_BUFFERS: usize = 8;

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
    /// The self-description stored in the trailer: unambiguous, since keys cannot hold NUL.
    fn describe(&self) -> Vec<u8> {
        format!("{}\0{}\0{}\0{}", self.namespace, self.key, self.etag, self.index).into_bytes()
    }
}

/// The index's key for a block: the SHA-256 of its description (the trailer's full description
/// settles a collision).
type BlockKey = [u8; 32];

fn key_of(description: &[u8]) -> BlockKey {
    Sha256::digest(description).into()
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
    /// Total bytes of stored blocks at most.
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
    #[error("a block's slot holds at most {SLOT_DATA} bytes and a name of {MAX_NAME_LEN}")]
    TooLarge,
}

/// Counters, for the stats line and tests.
#[derive(Debug, Default)]
pub struct DiskCacheCounters {
    pub corrupt_dropped: AtomicU64,
    pub evicted: AtomicU64,
    /// Slots freed with their disk space given back (evicted under the free-space floor,
    /// damaged, replaced, left by a failed write, or orphans found at open), or, where the file
    /// system cannot punch, with their trailer zeroed.
    pub punched: AtomicU64,
    pub write_failures: AtomicU64,
    /// Blocks stored with the CRC32C their GET took as they arrived, not computed again here.
    pub summed_on_arrival: AtomicU64,
}

/// Where a stored block is, as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    slot: u64,
    data_len: u32,
    /// The write's sequence number, also in the trailer: orders the LRU when the index is rebuilt,
    /// and tells a slot rewritten since apart from the one the entry was made for.
    sequence: u64,
}

impl Entry {
    fn stored_bytes(&self) -> u64 {
        stored_bytes(self.data_len as usize)
    }
}

/// Where a reserved slot's disk space stands, for what its write must do first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotSpace {
    /// A free slot below the file's end, punched out when it was freed (or at open).
    Hole,
    /// A slot added at the file's end: allocated if a run ahead covers it.
    New,
    /// Kept from a block evicted for the size bound, whose data took `data_space` bytes there;
    /// its trailer still names that block.
    Kept { data_space: u64 },
}

struct Index {
    /// Stored blocks, least recently used first.
    lru: LruCache<BlockKey, Entry>,
    /// Bytes of the stored blocks.
    total_bytes: u64,
    /// Bytes of the blocks being written: they count against the bound from their reservation
    /// on, so concurrent writers cannot together pass it.
    reserved_bytes: u64,
    /// Slots below `slot_count` that hold no block and are not being written: those in `kept`
    /// are taken first, then the lowest, so the file stays as short as the cache.
    free: BTreeSet<u64>,
    /// The free slots whose disk space was kept, with the bytes of data space the evicted block
    /// took there: blocks evicted for the size bound leave their slot's space to the block coming
    /// in their place. Punching it out and allocating it again would take the file's inode lock
    /// twice, each time waiting for every write in flight (a cold read past the bound spent a
    /// quarter more CPU). Only the slots between an eviction and the writes that take them are
    /// here; under the free-space floor they are punched out before any block is evicted.
    kept: BTreeMap<u64, u64>,
    /// Slots the file spans.
    slot_count: u64,
    next_sequence: u64,
}

impl Index {
    /// An index of no block over a file of `slot_count` slots, all free.
    fn new(slot_count: u64, next_sequence: u64) -> Self {
        Self {
            lru: LruCache::unbounded(),
            total_bytes: 0,
            reserved_bytes: 0,
            free: (0..slot_count).collect(),
            kept: BTreeMap::new(),
            slot_count,
            next_sequence,
        }
    }

    /// Indexes a stored block as the most recently used, its slot no longer free; returns the
    /// entry it replaces (the same block stored in another slot), whose bytes are no longer
    /// counted.
    fn insert(&mut self, key: BlockKey, entry: Entry) -> Option<Entry> {
        self.free.remove(&entry.slot);
        self.kept.remove(&entry.slot);
        self.total_bytes += entry.stored_bytes();
        let replaced = self.lru.put(key, entry);
        if let Some(old) = &replaced {
            self.total_bytes -= old.stored_bytes();
        }
        replaced
    }
}

pub struct DiskCache {
    dir: PathBuf,
    limits: DiskCacheLimits,
    index: Mutex<Index>,
    /// The slots file, read and written through the page cache.
    slots: File,
    /// The same file opened with O_DIRECT, while the file system takes it (not tmpfs, some FUSE
    /// and network file systems): writes and reads through it spare the copy through the page
    /// cache and its reclaim later, so the cache does not push a training job's data out of RAM
    /// (the kernel caches what is read through the mount anyway).
    direct: Option<File>,
    direct_writes: AtomicBool,
    direct_reads: AtomicBool,
    /// Sector-aligned buffers for the blocks read, reused once the last slice of one is dropped:
    /// a fresh zeroed buffer per block cost more in page faults than the read.
    read_buffers: BufferPool,
    /// Held for the life of the cache: the exclusive lock on `dir/lock`.
    _lock: Flock<File>,
    /// Set after the first write failure was logged, so a full or broken disk warns once.
    warned: AtomicBool,
    /// Set by [`DiskCache::close`]: the index is saved, and nothing more is stored.
    closed: AtomicBool,
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    /// Where the file's space allocated ahead ends (see [`SLOTS_ALLOCATED_AHEAD`]): read without
    /// a lock by every write; `growing` is held to move it.
    allocated_end: AtomicU64,
    growing: Mutex<()>,
    /// Cleared once the file system refused to allocate ahead (no `fallocate`).
    allocates_ahead: AtomicBool,
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
    /// Opens (creating, 0700) the cache in `dir`, takes its lock, removes an older s3mount's
    /// layout, and indexes the blocks already there, least recently written first.
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
        remove_legacy_layout(dir).map_err(io_error)?;
        let path = slots_file(dir);
        let slots = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok();
        let index = match take_saved_index(dir, &slots) {
            Some(index) => index,
            None => scan(&slots).map_err(io_error)?,
        };
        let cache = Self {
            dir: dir.to_owned(),
            limits,
            index: Mutex::new(index),
            direct_writes: AtomicBool::new(direct.is_some()),
            direct_reads: AtomicBool::new(direct.is_some()),
            read_buffers: BufferPool::default(),
            slots,
            direct,
            _lock: lock,
            warned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            spare_buffers: Mutex::new(Vec::new()),
            allocated_end: AtomicU64::new(0),
            growing: Mutex::new(()),
            allocates_ahead: AtomicBool::new(true),
            counters: DiskCacheCounters::default(),
        };
        cache.release_slots(cache.orphans_of_the_scan());
        if let Err(refusal) = cache.evict_to_fit(0) {
            tracing::warn!(dir = %dir.display(), %refusal, "the block cache cannot store anything now");
        }
        cache.compact().map_err(io_error)?;
        let slot_count = cache.lock_index().slot_count;
        cache
            .allocated_end
            .store(slot_count * SLOT_LEN, Ordering::Relaxed);
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most the stored blocks may take (`--cache-size`).
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Total bytes of stored blocks: their data in whole sectors, and a trailer each.
    pub fn size(&self) -> u64 {
        self.lock_index().total_bytes
    }

    /// How many blocks are stored.
    pub fn block_count(&self) -> usize {
        self.lock_index().lru.len()
    }

    /// Whether the block is indexed, without reading it (and without checking it: a damaged
    /// block shows when it is read, and is fetched again then). Marks it recently used.
    pub fn contains(&self, name: &BlockName) -> bool {
        self.lock_index().lru.get(&key_of(&name.describe())).is_some()
    }

    /// Whether the block is indexed, without marking it used: a cheap check before a read.
    pub fn indexes(&self, name: &BlockName) -> bool {
        self.lock_index().lru.contains(&key_of(&name.describe()))
    }

    /// The block's data, if stored and intact. A damaged block is dropped and its slot freed.
    pub fn get(&self, name: &BlockName) -> Option<Bytes> {
        let description = name.describe();
        let key = key_of(&description);
        let entry = *self.lock_index().lru.peek(&key)?;
        // Read and checked outside the lock: a 1 MiB CRC under it would hold up every other
        // reader and writer.
        let intact = self
            .read_slot(&entry)
            .ok()
            .filter(|(data, trailer)| is_intact(&entry, &description, data, trailer));
        let mut index = self.lock_index();
        if index.lru.peek(&key) != Some(&entry) {
            // Evicted (and perhaps rewritten) while we read: a miss, not damage.
            return None;
        }
        match intact {
            Some((data, _)) => {
                index.lru.promote(&key);
                Some(data)
            }
            None => {
                index.lru.pop(&key);
                index.total_bytes -= entry.stored_bytes();
                drop(index);
                tracing::warn!(dir = %self.dir.display(), slot = entry.slot,
                    "dropping a damaged cache block; it will be fetched again");
                self.counters.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                self.release_slots(vec![entry.slot]);
                None
            }
        }
    }

    /// Stores a block, evicting the least recently used ones to stay within the bounds. Failures
    /// (disk full, unwritable) are logged once and otherwise ignored: the cache is best-effort.
    /// `known_crc32c` is the block's CRC32C where it was taken as the block arrived
    /// ([`crate::checksum::PieceSums`]), stored as given (a wrong one makes the block fail its
    /// check when read, and be fetched again); `None`, and it is computed here.
    pub fn put(&self, name: &BlockName, data: &[u8], known_crc32c: Option<u32>) {
        let _ = self.try_put(name, data, known_crc32c);
    }

    /// [`Self::put`], saying why a block could not be stored (a bound it would break, a failed
    /// write): for `s3 mount warm`, whose whole point is that the blocks are there afterwards.
    /// A block another writer's reservation left no room for, and one offered after the cache
    /// was closed, are not stored and not an error.
    pub fn try_put(&self, name: &BlockName, data: &[u8], known_crc32c: Option<u32>) -> io::Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let description = name.describe();
        let data_len = match u32::try_from(data.len()) {
            Ok(len) if u64::from(len) <= SLOT_DATA && description.len() <= MAX_NAME_LEN => len,
            _ => return Err(self.note_failure(io::Error::other(FitRefusal::TooLarge.to_string()))),
        };
        if let Err(refusal) = self.evict_to_fit(stored_bytes(data.len())) {
            // (Closed meanwhile, at unmount: not a failure.)
            if self.closed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let error = io::Error::new(io::ErrorKind::StorageFull, refusal.to_string());
            return Err(self.note_failure(error));
        }
        // Another writer may have taken the room meanwhile: then this block is not cached.
        let Some((entry, space)) = self.reserve_slot(data_len) else {
            return Ok(());
        };
        self.prepare_slot(entry.slot, space, data.len());
        let crc = known_crc32c.unwrap_or_else(|| crc32c(data));
        match self.write_slot(&entry, &description, data, crc) {
            Ok(()) => {
                if known_crc32c.is_some() {
                    self.counters.summed_on_arrival.fetch_add(1, Ordering::Relaxed);
                }
                let mut index = self.lock_index();
                index.reserved_bytes -= entry.stored_bytes();
                let replaced = index.insert(key_of(&description), entry);
                drop(index);
                self.release_slots(replaced.map(|old| old.slot).into_iter().collect());
                Ok(())
            }
            Err(error) => {
                self.lock_index().reserved_bytes -= entry.stored_bytes();
                self.release_slots(vec![entry.slot]);
                Err(self.note_failure(error))
            }
        }
    }

    /// A slot to write a block of `data_len` bytes into, and the write's sequence: no entry
    /// points at it until the write is done. Its bytes are reserved; `None` if they no longer
    /// fit. Also where the slot's disk space stands.
    fn reserve_slot(&self, data_len: u32) -> Option<(Entry, SlotSpace)> {
        let mut index = self.lock_index();
        let stored = stored_bytes(data_len as usize);
        if self.closed.load(Ordering::Relaxed)
            || index.total_bytes + index.reserved_bytes + stored > self.limits.max_bytes
        {
            return None;
        }
        index.reserved_bytes += stored;
        let sequence = index.next_sequence;
        index.next_sequence += 1;
        let (slot, space) = match index.kept.pop_first() {
            Some((slot, data_space)) => {
                index.free.remove(&slot);
                (slot, SlotSpace::Kept { data_space })
            }
            None => match index.free.pop_first() {
                Some(slot) => (slot, SlotSpace::Hole),
                None => {
                    index.slot_count += 1;
                    (index.slot_count - 1, SlotSpace::New)
                }
            },
        };
        let entry = Entry {
            slot,
            data_len,
            sequence,
        };
        Some((entry, space))
    }

    /// Frees the slot of a block evicted for the size bound, keeping its disk space for the
    /// block that takes its place.
    fn keep_slot(&self, evicted: &Entry) {
        let mut index = self.lock_index();
        index.free.insert(evicted.slot);
        let data_space = (evicted.data_len as u64).next_multiple_of(DIRECT_ALIGN as u64);
        index.kept.insert(evicted.slot, data_space);
    }

    /// Takes every kept slot out of the free ones, for their space to be given back.
    fn take_kept(&self) -> Vec<u64> {
        let mut index = self.lock_index();
        let kept: Vec<u64> = std::mem::take(&mut index.kept).into_keys().collect();
        for slot in &kept {
            index.free.remove(slot);
        }
        kept
    }

    /// Readies a reserved `slot` for a block of `data_len` bytes, by where its space stands:
    /// - kept from an evicted block: its trailer, which still names that block, is cleared first
    ///   (a kill during the write must leave a free slot, never the evicted block with part of
    ///   this one's data), and the space this block does not fill goes back to the disk;
    /// - new at the file's end: a whole block allocates the run ahead of it, a smaller one in a
    ///   run allocated ahead gives back what it does not fill.
    fn prepare_slot(&self, slot: u64, space: SlotSpace, data_len: usize) {
        let start = slot * SLOT_LEN;
        let data_space = (data_len as u64).next_multiple_of(DIRECT_ALIGN as u64);
        match space {
            SlotSpace::Kept { data_space: evicted } => {
                if self.clear_trailer(start + SLOT_DATA).is_err() {
                    punch_out(&self.slots, slot..slot + 1);
                }
                punch_out_bytes(&self.slots, start + data_space, start + evicted);
            }
            SlotSpace::New if data_space == SLOT_DATA => self.allocate_ahead_of(slot),
            SlotSpace::New if start + SLOT_LEN <= self.allocated_end.load(Ordering::Relaxed) => {
                punch_out_bytes(&self.slots, start + data_space, start + SLOT_DATA);
            }
            SlotSpace::New | SlotSpace::Hole => {}
        }
    }

    /// Writes a zero sector over the trailer at `at`, in place (its space is allocated: no wait
    /// for the file's other writes).
    fn clear_trailer(&self, at: u64) -> io::Result<()> {
        const ZEROS: [u8; TRAILER_LEN] = [0; TRAILER_LEN];
        if let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_writes.load(Ordering::Relaxed))
        {
            let mut buffer = self.take_buffer();
            let written = match aligned_copy(&mut buffer, &ZEROS) {
                Some(zeros) => direct.write_all_at(zeros, at),
                None => self.slots.write_all_at(&ZEROS, at),
            };
            self.give_back_buffer(buffer);
            return written;
        }
        self.slots.write_all_at(&ZEROS, at)
    }

    /// Gives slots no entry points at any more back their disk space (a hole), then to the free
    /// set. In that order: a slot taken for a new block before its hole was punched would lose
    /// the new block's data to the punch.
    fn release_slots(&self, slots: Vec<u64>) {
        for &slot in &slots {
            punch_out(&self.slots, slot..slot + 1);
        }
        self.counters
            .punched
            .fetch_add(slots.len() as u64, Ordering::Relaxed);
        let mut index = self.lock_index();
        index.free.extend(slots);
    }

    /// The data and trailer of the slot `entry` names, as they are on disk: with O_DIRECT while
    /// the file system takes it, else through the page cache.
    fn read_slot(&self, entry: &Entry) -> io::Result<(Bytes, Vec<u8>)> {
        if let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_reads.load(Ordering::Relaxed))
        {
            match self.read_slot_from(direct, entry, true) {
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(dir = %self.dir.display(), %error,
                        "the block cache's file system refuses O_DIRECT reads: blocks are read through the page cache");
                    self.direct_reads.store(false, Ordering::Relaxed);
                }
                read => return read,
            }
        }
        self.read_slot_from(&self.slots, entry, false)
    }

    /// Reads the slot into a pooled buffer, whole sectors when `direct` (the data's last sector
    /// padded with zeros); data and trailer with one read when the data fills its room.
    fn read_slot_from(&self, file: &File, entry: &Entry, direct: bool) -> io::Result<(Bytes, Vec<u8>)> {
        let start = entry.slot * SLOT_LEN;
        let data_len = entry.data_len as usize;
        let read_len = if direct {
            data_len.next_multiple_of(DIRECT_ALIGN)
        } else {
            data_len
        };
        let mut data = self.read_buffers.take_to_overwrite(read_len);
        let mut trailer_buffer = self.take_buffer();
        let read = (|| {
            let trailer_at = aligned_start(&mut trailer_buffer, TRAILER_LEN)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            trailer_buffer.resize(trailer_at + TRAILER_LEN, 0);
            let trailer = &mut trailer_buffer[trailer_at..];
            if read_len as u64 == SLOT_DATA {
                let slices = &mut [
                    io::IoSliceMut::new(data.as_mut_slice()),
                    io::IoSliceMut::new(trailer),
                ];
                let read =
                    nix::sys::uio::preadv(file, slices, start as libc::off_t).map_err(io::Error::from)?;
                if read != SLOT_LEN as usize {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
            } else {
                file.read_exact_at(data.as_mut_slice(), start)?;
                file.read_exact_at(trailer, start + SLOT_DATA)?;
            }
            Ok(trailer.to_vec())
        })();
        self.give_back_buffer(trailer_buffer);
        let trailer = read?;
        Ok((self.read_buffers.freeze(data).slice(..data_len), trailer))
    }

    /// Writes the block's data at the start of its slot and its trailer at the end: with
    /// O_DIRECT while the file system takes it, else through the page cache.
    fn write_slot(&self, entry: &Entry, description: &[u8], data: &[u8], crc: u32) -> io::Result<()> {
        let mut buffer = self.take_buffer();
        let written = self.write_slot_with(entry, description, data, crc, &mut buffer);
        self.give_back_buffer(buffer);
        written
    }

    fn write_slot_with(
        &self,
        entry: &Entry,
        description: &[u8],
        data: &[u8],
        crc: u32,
        buffer: &mut Vec<u8>,
    ) -> io::Result<()> {
        let start = entry.slot * SLOT_LEN;
        let trailer_bytes = encode_trailer(description, data.len(), crc, entry.sequence);
        if let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_writes.load(Ordering::Relaxed))
        {
            // The data goes from where it is when it is whole sectors at a sector-aligned address
            // (a GET's whole blocks); else it is copied, zero-padded to whole sectors.
            let pieces = if data.is_empty() || is_whole_sectors(data) {
                aligned_copy(buffer, &trailer_bytes).map(|trailer| (data, trailer))
            } else {
                let padded = data.len().next_multiple_of(DIRECT_ALIGN);
                aligned_copy_padded(buffer, data, padded, &trailer_bytes)
            };
            // (No aligned address in `buffer`: this one write goes through the page cache.)
            if let Some((data, trailer)) = pieces {
                match write_data_then_trailer(direct, start, data, trailer) {
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::debug!(dir = %self.dir.display(), %error,
                            "the block cache's file system refuses O_DIRECT: blocks go through the page cache");
                        self.direct_writes.store(false, Ordering::Relaxed);
                    }
                    written => return written,
                }
            }
        }
        write_data_then_trailer(&self.slots, start, data, &trailer_bytes)
    }

    /// Allocates the file's space for `slot`, a new slot at its end about to take a whole block,
    /// and for [`SLOTS_ALLOCATED_AHEAD`] slots past it; not past the slots the size bound fills,
    /// nor into the free-space floor (then the write allocates what it needs itself, as it does
    /// where the file system cannot allocate ahead: a refusal costs only the speed it was for).
    fn allocate_ahead_of(&self, slot: u64) {
        let needed = (slot + 1) * SLOT_LEN;
        if needed <= self.allocated_end.load(Ordering::Relaxed)
            || !self.allocates_ahead.load(Ordering::Relaxed)
        {
            return;
        }
        let _growing = lock(&self.growing);
        let allocated = self.allocated_end.load(Ordering::Relaxed);
        if needed <= allocated {
            return;
        }
        // From the slot's start: the slots between the end of what was allocated ahead and it
        // hold small blocks in their own space, or holes, and stay as they are.
        let from = allocated.max(slot * SLOT_LEN);
        let free = free_bytes(&self.slots).unwrap_or(0);
        let Some(end) = allocation_end(from, needed, &self.limits, free) else {
            return;
        };
        match fallocate(
            &self.slots,
            FallocateFlags::empty(),
            from as libc::off_t,
            (end - from) as libc::off_t,
        ) {
            Ok(()) => self.allocated_end.store(end, Ordering::Relaxed),
            Err(nix::errno::Errno::EOPNOTSUPP) => self.allocates_ahead.store(false, Ordering::Relaxed),
            Err(_) => {}
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

    /// Saves the index for the next open and stores nothing more: the last step of a clean
    /// unmount (and of dropping the cache). Saved to a temp file and renamed, so a kill leaves
    /// either the whole index or none; a saved index that does not check out is ignored and
    /// the slots are scanned.
    pub fn close(&self) {
        let bytes = {
            // Under the index's lock: no eviction or reservation comes after the snapshot (they
            // check `closed` under it too), so no slot it names is rewritten.
            let index = self.lock_index();
            if self.closed.swap(true, Ordering::Relaxed) {
                return;
            }
            encode_index(&index)
        };
        let path = self.dir.join("blocks").join(INDEX_FILE);
        let tmp = path.with_extension("tmp");
        let saved = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| io::Write::write_all(&mut file, &bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(error) = saved {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), %error,
                "cannot save the block cache's index; the next mount reads every block's trailer instead");
        }
    }

    /// The slots the scan at open found holding a block no entry points at (the older copy of a
    /// block stored twice, as a kill between a write and the older copy's release leaves), to be
    /// punched out and reused.
    fn orphans_of_the_scan(&self) -> Vec<u64> {
        let index = self.lock_index();
        let used: BTreeSet<u64> = index.lru.iter().map(|(_, entry)| entry.slot).collect();
        (0..index.slot_count)
            .filter(|slot| !used.contains(slot) && !index.free.contains(slot))
            .collect()
    }

    /// At open: cuts the file after its last stored block (what a larger `--cache-size` or
    /// evictions left past it), and punches out the free slots below, which may hold what a
    /// killed write left.
    fn compact(&self) -> io::Result<()> {
        let mut index = self.lock_index();
        let slot_count = index
            .lru
            .iter()
            .map(|(_, entry)| entry.slot + 1)
            .max()
            .unwrap_or(0);
        index.slot_count = slot_count;
        index.free.retain(|&slot| slot < slot_count);
        index.kept.clear();
        self.slots.set_len(slot_count * SLOT_LEN)?;
        for run in super::contiguous_runs(index.free.iter().copied().collect()) {
            punch_out(&self.slots, run);
        }
        Ok(())
    }

    /// Evicts until `incoming` more bytes fit under the size bound and above the free-space
    /// floor. Fails, saying which bound, when they cannot fit even with the cache empty.
    fn evict_to_fit(&self, incoming: u64) -> Result<(), FitRefusal> {
        let max_bytes = self.limits.max_bytes;
        if incoming > max_bytes {
            return Err(FitRefusal::OverBound { max_bytes });
        }
        loop {
            let Some(refusal) = self.refusal(incoming) else {
                return Ok(());
            };
            if let FitRefusal::UnderFloor { .. } = refusal {
                // Space kept for incoming blocks goes back first, before any block is evicted.
                let kept = self.take_kept();
                if !kept.is_empty() {
                    self.release_slots(kept);
                    continue;
                }
            }
            let victim = {
                let mut index = self.lock_index();
                if self.closed.load(Ordering::Relaxed) {
                    return Err(refusal);
                }
                let victim = index.lru.pop_lru();
                if let Some((_, entry)) = &victim {
                    index.total_bytes -= entry.stored_bytes();
                }
                victim
            };
            let Some((_, entry)) = victim else {
                return Err(refusal);
            };
            match refusal {
                FitRefusal::OverBound { .. } => self.keep_slot(&entry),
                // Under the free-space floor the space must go back to the disk.
                _ => self.release_slots(vec![entry.slot]),
            }
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Which bound `incoming` more bytes would break now, if any.
    fn refusal(&self, incoming: u64) -> Option<FitRefusal> {
        let max_bytes = self.limits.max_bytes;
        let index = self.lock_index();
        if index.total_bytes + index.reserved_bytes + incoming > max_bytes {
            return Some(FitRefusal::OverBound { max_bytes });
        }
        drop(index);
        let min_free_bytes = self.limits.min_free_bytes;
        match free_bytes(&self.slots) {
            Some(free_bytes) if free_bytes < min_free_bytes.saturating_add(incoming) => {
                Some(FitRefusal::UnderFloor {
                    free_bytes,
                    min_free_bytes,
                })
            }
            _ => None,
        }
    }

    /// Counts a block not stored, warns of the first; returns the error for the caller.
    fn note_failure(&self, error: io::Error) -> io::Error {
        self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(dir = %self.dir.display(), %error,
                "cannot write to the block cache; reads go on uncached (warned once)");
        }
        error
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        lock(&self.index)
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        self.close();
    }
}

/// The disk a block of `data_len` bytes takes: its data in whole sectors, and its trailer.
fn stored_bytes(data_len: usize) -> u64 {
    (data_len.next_multiple_of(DIRECT_ALIGN) + TRAILER_LEN) as u64
}

/// A slot's trailer: the block's description at its start, zeros, then the footer (name length,
/// data length, CRC32C of the data, write sequence, magic) ending the sector.
fn encode_trailer(description: &[u8], data_len: usize, crc: u32, sequence: u64) -> [u8; TRAILER_LEN] {
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[..description.len()].copy_from_slice(description);
    let mut footer = Vec::with_capacity(FOOTER_LEN);
    footer.extend_from_slice(&(description.len() as u32).to_le_bytes());
    footer.extend_from_slice(&(data_len as u32).to_le_bytes());
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(&sequence.to_le_bytes());
    footer.extend_from_slice(MAGIC);
    trailer[TRAILER_LEN - FOOTER_LEN..].copy_from_slice(&footer);
    trailer
}

/// What a trailer says, if it is one of ours.
struct Trailer<'a> {
    description: &'a [u8],
    data_len: u32,
    crc: u32,
    sequence: u64,
}

fn decode_trailer(trailer: &[u8]) -> Option<Trailer<'_>> {
    let footer = trailer.get(TRAILER_LEN - FOOTER_LEN..TRAILER_LEN)?;
    if &footer[20..] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]]);
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&footer[12..20]);
    let (name_len, data_len) = (word(0) as usize, word(4));
    let sequence = u64::from_le_bytes(sequence);
    // (A sequence this high was not written by us: counting on from it could overflow.)
    if name_len > MAX_NAME_LEN || u64::from(data_len) > SLOT_DATA || sequence >= 1 << 62 {
        return None;
    }
    Some(Trailer {
        description: &trailer[..name_len],
        data_len,
        crc: word(8),
        sequence,
    })
}

/// Whether `data` and `trailer`, read from `entry`'s slot, are the intact block `description`.
fn is_intact(entry: &Entry, description: &[u8], data: &[u8], trailer: &[u8]) -> bool {
    decode_trailer(trailer).is_some_and(|found| {
        found.description == description
            && found.data_len == entry.data_len
            && found.sequence == entry.sequence
            && crc32c(data) == found.crc
    })
}

/// Whether `data` can be written with O_DIRECT from where it is.
fn is_whole_sectors(data: &[u8]) -> bool {
    data.as_ptr().align_offset(DIRECT_ALIGN) == 0 && data.len().is_multiple_of(DIRECT_ALIGN)
}

/// `bytes` copied to a sector-aligned address in `buffer` (its memory reused), or `None` if the
/// allocator's address cannot be aligned.
fn aligned_copy<'a>(buffer: &'a mut Vec<u8>, bytes: &[u8]) -> Option<&'a [u8]> {
    let start = aligned_start(buffer, bytes.len())?;
    buffer.extend_from_slice(bytes);
    Some(&buffer[start..])
}

/// `data` zero-padded to `padded` bytes, then `trailer`, at a sector-aligned address in `buffer`:
/// the two pieces of a slot write for data that is not whole sectors where it is.
fn aligned_copy_padded<'a>(
    buffer: &'a mut Vec<u8>,
    data: &[u8],
    padded: usize,
    trailer: &[u8],
) -> Option<(&'a [u8], &'a [u8])> {
    let start = aligned_start(buffer, padded + trailer.len())?;
    buffer.extend_from_slice(data);
    buffer.resize(start + padded, 0);
    buffer.extend_from_slice(trailer);
    let (data, trailer) = buffer[start..].split_at(padded);
    Some((data, trailer))
}

/// Empties `buffer`, gives it room for `len` bytes past a sector-aligned address (never moving
/// it while they are pushed) and pads it to that address, which it returns.
fn aligned_start(buffer: &mut Vec<u8>, len: usize) -> Option<usize> {
    buffer.clear();
    buffer.reserve(len + DIRECT_ALIGN);
    let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    if start >= DIRECT_ALIGN {
        return None;
    }
    buffer.resize(start, 0);
    Some(start)
}

/// Writes `data` at `start` and `trailer` at the trailer's place in the slot beginning there:
/// one write when the data fills its room (the two are then contiguous), else two.
fn write_data_then_trailer(file: &File, start: u64, data: &[u8], trailer: &[u8]) -> io::Result<()> {
    if data.len() as u64 == SLOT_DATA {
        let written = nix::sys::uio::pwritev(
            file,
            &[io::IoSlice::new(data), io::IoSlice::new(trailer)],
            start as libc::off_t,
        )
        .map_err(io::Error::from)?;
        if written == data.len() + trailer.len() {
            return Ok(());
        }
    }
    file.write_all_at(data, start)?;
    file.write_all_at(trailer, start + SLOT_DATA)
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

/// Removes what older versions of s3mount kept: a file per block in `blocks/<2 hex>/`, and
/// `tmp/`, where such files were written before their rename. Their blocks are fetched again.
fn remove_legacy_layout(dir: &Path) -> io::Result<()> {
    let mut legacy = vec![dir.join("tmp")];
    for entry in fs::read_dir(dir.join("blocks"))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            legacy.push(entry.path());
        }
    }
    for path in legacy {
        match fs::remove_dir_all(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// A block the slots file holds, as a reader of the file sees it (tests, diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    /// Bucket, key, ETag and block number, NUL-separated.
    pub description: String,
    /// Where its data starts in the slots file.
    pub data_offset: u64,
    pub data_len: u64,
}

/// The slots file of the cache directory `dir`.
pub fn slots_file(dir: &Path) -> PathBuf {
    dir.join("blocks").join(SLOTS_FILE)
}

/// The blocks the cache directory `dir` holds, read from their trailers without the cache's
/// lock (so also while a mount uses it): every slot with a trailer of ours, unchecked.
pub fn stored_blocks(dir: &Path) -> io::Result<Vec<StoredBlock>> {
    let file = match File::open(slots_file(dir)) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        file => file?,
    };
    let mut blocks = Vec::new();
    for_each_trailer(&file, |slot, trailer| {
        blocks.push(StoredBlock {
            description: String::from_utf8_lossy(trailer.description).into_owned(),
            data_offset: slot * SLOT_LEN,
            data_len: u64::from(trailer.data_len),
        });
    })?;
    Ok(blocks)
}

/// Visits every slot holding a trailer of ours, in order, with it; holes (slots never written
/// or punched out) are skipped without a read where the file system can say where data is.
fn for_each_trailer(file: &File, mut visit: impl FnMut(u64, Trailer<'_>)) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut trailer = vec![0u8; TRAILER_LEN];
    let mut slot = 0;
    while slot * SLOT_LEN + SLOT_DATA < len {
        let trailer_at = slot * SLOT_LEN + SLOT_DATA;
        match lseek(file, trailer_at as libc::off_t, Whence::SeekData) {
            // Nothing but holes from here on.
            Err(nix::errno::Errno::ENXIO) => break,
            // This trailer is a hole: on to the slot of the next data.
            Ok(data_at) if data_at as u64 > trailer_at => {
                slot = (data_at as u64 / SLOT_LEN).max(slot + 1);
                continue;
            }
            _ => {}
        }
        if file.read_exact_at(&mut trailer, trailer_at).is_ok()
            && let Some(found) = decode_trailer(&trailer)
        {
            visit(slot, found);
        }
        slot += 1;
    }
    Ok(())
}

/// Indexes the slots file: one trailer read per written slot, blocks ordered by their write
/// sequence (least recently written first). The file spans up to the last slot with a trailer;
/// the slots below it without one are free. Of two slots naming one block the later write wins,
/// and the other is left to [`DiskCache::orphans_of_the_scan`].
fn scan(slots: &File) -> io::Result<Index> {
    let mut found: Vec<(u64, BlockKey, Entry)> = Vec::new();
    for_each_trailer(slots, |slot, trailer| {
        let entry = Entry {
            slot,
            data_len: trailer.data_len,
            sequence: trailer.sequence,
        };
        found.push((trailer.sequence, key_of(trailer.description), entry));
    })?;
    let slot_count = found.last().map_or(0, |(_, _, entry)| entry.slot + 1);
    found.sort_by_key(|(sequence, _, _)| *sequence);
    let next_sequence = found.last().map_or(0, |(sequence, _, _)| sequence + 1);
    let mut index = Index::new(slot_count, next_sequence);
    for (_, key, entry) in found {
        // An older copy's slot is neither indexed nor free: `orphans_of_the_scan` punches it.
        index.insert(key, entry);
    }
    Ok(index)
}

/// The index as bytes: magic, slot count, next sequence, entry count, then each entry (slot,
/// data length, sequence, key) least recently used first, so the LRU order survives as it was,
/// and a CRC32C of all that.
fn encode_index(index: &Index) -> Vec<u8> {
    let mut bytes = INDEX_MAGIC.to_vec();
    bytes.extend_from_slice(&index.slot_count.to_le_bytes());
    bytes.extend_from_slice(&index.next_sequence.to_le_bytes());
    bytes.extend_from_slice(&(index.lru.len() as u64).to_le_bytes());
    for (key, entry) in index.lru.iter().rev() {
        bytes.extend_from_slice(&entry.slot.to_le_bytes());
        bytes.extend_from_slice(&entry.data_len.to_le_bytes());
        bytes.extend_from_slice(&entry.sequence.to_le_bytes());
        bytes.extend_from_slice(key);
    }
    let crc = crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The index [`encode_index`] wrote, if `bytes` is one, whole.
fn decode_index(bytes: &[u8], file_slots: u64) -> Option<Index> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c(body).to_le_bytes() != crc || !body.starts_with(INDEX_MAGIC) {
        return None;
    }
    let mut read = Fields(&body[INDEX_MAGIC.len()..]);
    let (slot_count, next_sequence, count) = (read.u64()?, read.u64()?, read.u64()?);
    // (A sequence this high was not written by us: counting on from it could overflow.)
    if next_sequence >= 1 << 62 {
        return None;
    }
    // The file may end before its last slot (a write that failed), never be shorter by more.
    let slot_count = slot_count.min(file_slots);
    let mut index = Index::new(slot_count, next_sequence);
    for _ in 0..count {
        let slot = read.u64()?;
        let data_len = u32::from_le_bytes(read.take(4)?.try_into().ok()?);
        let sequence = read.u64()?;
        let key: BlockKey = read.take(32)?.try_into().ok()?;
        let entry = Entry {
            slot,
            data_len,
            sequence,
        };
        let sane = slot < slot_count && u64::from(data_len) <= SLOT_DATA && sequence < next_sequence;
        // A slot no longer free is one an earlier entry holds.
        if !sane || !index.free.contains(&slot) || index.insert(key, entry).is_some() {
            return None;
        }
    }
    if !read.0.is_empty() {
        return None;
    }
    Some(index)
}

/// Little-endian fields read one after the other off a byte string.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The index a clean close saved in `dir`, if there is a whole one; removed either way, before
/// anything is written, so that an index saved once is never read again after later writes.
fn take_saved_index(dir: &Path, slots: &File) -> Option<Index> {
    let path = dir.join("blocks").join(INDEX_FILE);
    let found = fs::metadata(&path).ok()?;
    let file_slots = slots.metadata().ok()?.len().div_ceil(SLOT_LEN);
    // No index of this file's slots can be longer (a header, an entry per slot, a CRC).
    let longest = (INDEX_MAGIC.len() as u64 + 24).saturating_add(file_slots.saturating_mul(52)) + 4;
    let bytes = (found.len() <= longest).then(|| fs::read(&path).ok()).flatten();
    // Removed whatever it holds, even unread: once this session writes, it is out of date.
    let removed = fs::remove_file(&path).and_then(|()| File::open(dir.join("blocks"))?.sync_all());
    if let Err(error) = removed {
        tracing::warn!(path = %path.display(), %error, "cannot remove the saved block cache index; scanning instead");
        return None;
    }
    let index = bytes.and_then(|bytes| decode_index(&bytes, file_slots));
    if index.is_none() {
        tracing::warn!(path = %path.display(), "the saved block cache index is damaged; scanning the blocks instead");
    }
    index
}

/// Gives the disk space of bytes `from..to` of the file back (a hole), where the file system
/// can; what stays there is never read (it lies past a block's data).
fn punch_out_bytes(file: &File, from: u64, to: u64) {
    if from < to {
        let _ = fallocate(
            file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            (to - from) as libc::off_t,
        );
    }
}

/// Gives the disk space of `slots` back (a hole). Where the file system cannot punch holes their
/// trailers are zeroed instead, so that a freed slot whose reuse a kill cuts short is never
/// taken at the next open for the block it held before.
fn punch_out(file: &File, slots: Range<u64>) {
    let punched = fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        (slots.start * SLOT_LEN) as libc::off_t,
        ((slots.end - slots.start) * SLOT_LEN) as libc::off_t,
    );
    if punched.is_err() {
        for slot in slots {
            let _ = file.write_all_at(&[0u8; TRAILER_LEN], slot * SLOT_LEN + SLOT_DATA);
        }
    }
}

/// Where the file's allocated space is to end for a whole block's slot ending at `needed`,
/// allocated from `from`: [`SLOTS_ALLOCATED_AHEAD`] slots further, but not past the slots the size bound
/// fills; `None` when `needed` lies past those already (blocks smaller than a slot), or when
/// the run would eat into the free-space floor given `free` bytes free now.
fn allocation_end(from: u64, needed: u64, limits: &DiskCacheLimits, free: u64) -> Option<u64> {
    let bounded = limits.max_bytes.div_ceil(SLOT_LEN).saturating_mul(SLOT_LEN);
    if needed > bounded {
        return None;
    }
    let end = needed
        .saturating_add(SLOTS_ALLOCATED_AHEAD * SLOT_LEN)
        .min(bounded);
    let taken = end - from.min(end);
    (free.saturating_sub(taken) >= limits.min_free_bytes).then_some(end)
}

/// Bytes available to unprivileged users on the file system holding `file`. (Asked of the open
/// file rather than its directory's path, which every block written would look up again.)
fn free_bytes(file: &File) -> Option<u64> {
    let stat = nix::sys::statvfs::fstatvfs(file).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

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

    /// The cache in `dir`, bounded far above what a test stores.
    fn open(dir: &Path) -> DiskCache {
        DiskCache::open(dir, limits(1 << 30)).unwrap()
    }

    fn slots_path(dir: &Path) -> PathBuf {
        slots_file(dir)
    }

    /// The slot the index gives the block.
    fn slot_of(cache: &DiskCache, block: &BlockName) -> u64 {
        cache
            .lock_index()
            .lru
            .peek(&key_of(&block.describe()))
            .expect("indexed")
            .slot
    }

    /// What a kill leaves: no saved index, so the next open scans the slots.
    fn forget_saved_index(dir: &Path) {
        fs::remove_file(dir.join("blocks").join(INDEX_FILE)).unwrap();
    }

    /// Overwrites bytes of the slots file at `offset`.
    fn scribble(dir: &Path, offset: u64, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(slots_path(dir)).unwrap();
        file.write_all_at(bytes, offset).unwrap();
    }

    /// A CRC32C taken on arrival is stored as given: the right one makes a block that reads
    /// back, a wrong one a block that fails its check when read (dropped, never returned).
    #[test]
    fn a_block_is_stored_with_the_crc_it_came_with_and_checked_against_it_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let block = vec![7u8; 70_000];
        cache.put(&name("right", 0), &block, Some(crc32c(&block)));
        cache.put(&name("wrong", 0), &block, Some(crc32c(&block) ^ 1));
        assert_eq!(cache.counters.summed_on_arrival.load(Ordering::Relaxed), 2);
        assert_eq!(cache.get(&name("right", 0)).as_deref(), Some(&block[..]));
        assert_eq!(cache.get(&name("wrong", 0)), None);
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 1);
        cache.put(&name("computed", 0), &block, None);
        assert_eq!(cache.get(&name("computed", 0)).as_deref(), Some(&block[..]));
        assert_eq!(cache.counters.summed_on_arrival.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn blocks_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"hello", None);
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
        let cache = open(dir.path());
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.size(), stored_bytes(5));
        assert_eq!(cache.block_count(), 1);
        // And after a kill, from the trailers.
        drop(cache);
        forget_saved_index(dir.path());
        let cache = open(dir.path());
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"hello"[..]));
        assert_eq!((cache.size(), cache.block_count()), (stored_bytes(5), 1));
    }

    #[test]
    fn corrupt_truncated_and_foreign_blocks_are_dropped_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let data = vec![7u8; 4096];
        for damage in 0..3 {
            cache.put(&name("k", 0), &data, None);
            let slot = slot_of(&cache, &name("k", 0));
            assert_eq!(slot, 0, "damage {damage}: a dropped block's slot is reused");
            match damage {
                // A flipped bit in the data.
                0 => scribble(dir.path(), 100, &[7 ^ 1]),
                // A torn write: the file ends before the trailer.
                1 => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(slots_path(dir.path()))
                        .unwrap();
                    file.set_len(SLOT_DATA + 100).unwrap();
                }
                // Another block's name in the trailer.
                _ => scribble(
                    dir.path(),
                    SLOT_DATA + name("k", 0).describe().len() as u64 - 1,
                    b"x",
                ),
            }
            assert_eq!(cache.get(&name("k", 0)), None, "damage {damage}");
            assert_eq!(cache.size(), 0, "damage {damage}");
            assert_eq!(cache.block_count(), 0, "damage {damage}");
        }
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 3);
        // The damaged blocks are not indexed again at the next open.
        drop(cache);
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 0);
    }

    #[test]
    fn the_size_bound_evicts_least_recently_used_first_and_reuses_slots() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![1u8; 1000];
        let one = stored_bytes(block.len());
        let cache = DiskCache::open(dir.path(), limits(3 * one)).unwrap();
        for index in 0..3 {
            cache.put(&name("k", index), &block, None);
        }
        assert!(cache.get(&name("k", 0)).is_some()); // 0 is now the most recently used
        cache.put(&name("k", 3), &block, None);
        assert!(cache.size() <= 3 * one);
        assert!(cache.get(&name("k", 1)).is_none(), "1 was least recently used");
        assert!(cache.get(&name("k", 0)).is_some());
        assert!(cache.get(&name("k", 3)).is_some());
        // Far past the bound: it stays bounded, and so does the file, its slots reused.
        for index in 4..50 {
            cache.put(&name("k", index), &block, None);
        }
        assert!(cache.size() <= 3 * one);
        assert_eq!(cache.counters.evicted.load(Ordering::Relaxed), 47);
        let file_len = fs::metadata(slots_path(dir.path())).unwrap().len();
        assert!(file_len <= 3 * SLOT_LEN, "{file_len} bytes for 3 slots");
        // A smaller bound at the next open trims what is there, oldest written first.
        drop(cache);
        let cache = DiskCache::open(dir.path(), limits(one)).unwrap();
        assert!(cache.size() <= one);
        assert!(cache.get(&name("k", 49)).is_some(), "the last written stays");
    }

    #[test]
    fn the_file_grows_by_runs_of_slots_allocated_ahead_which_the_next_open_trims() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![3u8; SLOT_DATA as usize];
        let cache = open(dir.path());
        cache.put(&name("k", 0), &block, None);
        // Where the file system cannot allocate ahead, the file grows slot by slot.
        let probe = File::create(dir.path().join("probe")).unwrap();
        let ahead = match fallocate(&probe, FallocateFlags::empty(), 0, 4096) {
            Err(nix::errno::Errno::EOPNOTSUPP) => SLOT_LEN,
            _ => (1 + SLOTS_ALLOCATED_AHEAD) * SLOT_LEN,
        };
        let file = fs::metadata(slots_path(dir.path())).unwrap();
        assert_eq!(
            file.len(),
            ahead,
            "the first write allocated the run after its slot"
        );
        assert!(file.blocks() * 512 >= ahead, "allocated, not sparse");
        cache.put(&name("k", 1), &block, None);
        assert_eq!(
            fs::metadata(slots_path(dir.path())).unwrap().len(),
            ahead.max(2 * SLOT_LEN)
        );
        drop(cache);
        let cache = open(dir.path());
        assert_eq!(
            fs::metadata(slots_path(dir.path())).unwrap().len(),
            2 * SLOT_LEN,
            "what no block uses is cut at open"
        );
        assert_eq!(cache.get(&name("k", 1)).as_deref(), Some(&block[..]));
        assert_eq!(cache.block_count(), 2);
    }

    #[test]
    fn allocating_ahead_stops_at_the_size_bound_and_above_the_free_space_floor() {
        let bounded = |max_bytes, min_free_bytes| DiskCacheLimits {
            max_bytes,
            min_free_bytes,
        };
        let plenty = 1 << 40;
        let run = SLOTS_ALLOCATED_AHEAD * SLOT_LEN;
        assert_eq!(
            allocation_end(0, SLOT_LEN, &bounded(plenty, 0), plenty),
            Some(SLOT_LEN + run)
        );
        assert_eq!(
            allocation_end(0, SLOT_LEN, &bounded(3 * SLOT_LEN - 1, 0), plenty),
            Some(3 * SLOT_LEN),
            "no more slots than the bound fills"
        );
        assert_eq!(
            allocation_end(4 * SLOT_LEN, 5 * SLOT_LEN, &bounded(2 * SLOT_LEN, 0), plenty),
            None,
            "past the bound's slots (small blocks took them) nothing is allocated ahead"
        );
        assert_eq!(
            allocation_end(0, SLOT_LEN, &bounded(u64::MAX, 0), plenty),
            Some(SLOT_LEN + run),
            "no overflow at the largest bound"
        );
        let floor = 1 << 30;
        assert_eq!(
            allocation_end(0, SLOT_LEN, &bounded(plenty, floor), floor + run),
            None,
            "the run would go below the floor"
        );
        assert_eq!(
            allocation_end(0, SLOT_LEN, &bounded(plenty, floor), floor + SLOT_LEN + run),
            Some(SLOT_LEN + run)
        );
    }

    /// Bytes the slots file takes on disk.
    fn allocated(dir: &Path) -> u64 {
        fs::metadata(slots_path(dir)).unwrap().blocks() * 512
    }

    #[test]
    fn small_blocks_take_their_own_space_only_whether_or_not_a_run_was_allocated_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let small = vec![7u8; 5000];
        let small_space = stored_bytes(small.len());
        let cache = open(dir.path());
        for index in 0..40 {
            cache.put(&name("small", index), &small, None);
        }
        assert!(
            allocated(dir.path()) <= 40 * small_space + 4 * DIRECT_ALIGN as u64,
            "{} bytes on disk for 40 blocks of 5000: small blocks allocate nothing ahead",
            allocated(dir.path())
        );
        // A whole block allocates a run ahead; small blocks in it give back what they leave.
        let before_run = allocated(dir.path());
        cache.put(&name("whole", 0), &vec![8u8; SLOT_DATA as usize], None);
        let with_run = allocated(dir.path());
        assert!(
            with_run <= before_run + (1 + SLOTS_ALLOCATED_AHEAD) * SLOT_LEN,
            "{with_run} bytes: the run starts at the whole block's slot, past the small ones"
        );
        for index in 40..43 {
            cache.put(&name("small", index), &small, None);
        }
        let unfilled = 3 * (SLOT_LEN - small_space);
        assert!(
            allocated(dir.path()) + unfilled <= with_run + 4 * DIRECT_ALIGN as u64,
            "{} bytes on disk, {with_run} before 3 small blocks went into the run",
            allocated(dir.path())
        );
        assert_eq!(cache.get(&name("small", 42)).as_deref(), Some(&small[..]));
    }

    #[test]
    fn a_kill_while_a_kept_slot_is_rewritten_leaves_it_free_not_the_evicted_block() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![5u8; SLOT_DATA as usize];
        let cache = DiskCache::open(dir.path(), limits(2 * stored_bytes(block.len()))).unwrap();
        cache.put(&name("k", 0), &block, None);
        cache.put(&name("k", 1), &block, None);
        cache.evict_to_fit(stored_bytes(block.len())).unwrap();
        let (entry, space) = cache.reserve_slot(block.len() as u32).unwrap();
        assert!(matches!(space, SlotSpace::Kept { .. }), "{space:?}");
        cache.prepare_slot(entry.slot, space, block.len());
        // The kill comes with part of the next block's data written, before its trailer.
        scribble(dir.path(), entry.slot * SLOT_LEN, &[9u8; 3 * DIRECT_ALIGN]);
        drop(cache);
        forget_saved_index(dir.path());
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 1, "only the block that was not evicted");
        assert_eq!(cache.get(&name("k", 0)), None);
        assert_eq!(cache.get(&name("k", 1)).as_deref(), Some(&block[..]));
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn under_the_free_space_floor_kept_space_goes_back_before_any_block_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let whole = vec![5u8; SLOT_DATA as usize];
        let mut cache = DiskCache::open(dir.path(), limits(stored_bytes(whole.len()))).unwrap();
        for index in 0..3 {
            cache.put(&name("small", index), &[6u8; 5000], None);
        }
        // The whole block evicts the three small ones, and takes one of their slots.
        cache.put(&name("whole", 0), &whole, None);
        assert_eq!(cache.lock_index().kept.len(), 2);
        let punched = cache.counters.punched.load(Ordering::Relaxed);
        cache.limits.min_free_bytes = u64::MAX;
        assert!(cache.evict_to_fit(0).is_err(), "nothing can meet this floor");
        assert!(cache.lock_index().kept.is_empty());
        assert_eq!(
            cache.counters.punched.load(Ordering::Relaxed) - punched,
            3,
            "the two kept slots, then the whole block's"
        );
    }

    #[test]
    fn a_block_evicted_for_the_size_bound_leaves_its_space_to_the_block_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![5u8; SLOT_DATA as usize];
        let cache = DiskCache::open(dir.path(), limits(2 * stored_bytes(block.len()))).unwrap();
        for index in 0..10 {
            cache.put(&name("k", index), &block, None);
        }
        assert_eq!(cache.counters.evicted.load(Ordering::Relaxed), 8);
        assert_eq!(
            cache.counters.punched.load(Ordering::Relaxed),
            0,
            "each slot went straight to the next block"
        );
        assert_eq!(cache.get(&name("k", 9)).as_deref(), Some(&block[..]));
        // A smaller block in a kept slot gives back what it does not fill.
        let small = vec![6u8; 5000];
        cache.put(&name("small", 0), &small, None);
        let allocated = fs::metadata(slots_path(dir.path())).unwrap().blocks() * 512;
        assert!(
            allocated <= SLOT_LEN + stored_bytes(small.len()) + DIRECT_ALIGN as u64,
            "{allocated} bytes on disk for a block of {SLOT_DATA} and one of 5000"
        );
        assert_eq!(cache.get(&name("small", 0)).as_deref(), Some(&small[..]));
        assert_eq!(cache.get(&name("k", 9)).as_deref(), Some(&block[..]));
    }

    #[test]
    fn an_evicted_block_gives_its_disk_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![2u8; SLOT_DATA as usize];
        let cache = DiskCache::open(dir.path(), limits(2 * stored_bytes(block.len()))).unwrap();
        for index in 0..10 {
            cache.put(&name("k", index), &block, None);
        }
        assert_eq!(cache.block_count(), 2);
        let allocated = fs::metadata(slots_path(dir.path())).unwrap().blocks() * 512;
        assert!(
            allocated <= 2 * SLOT_LEN + 2 * DIRECT_ALIGN as u64,
            "{allocated} bytes on disk for 2 blocks of {SLOT_DATA}"
        );
        // Dropped damage frees its space too.
        scribble(dir.path(), slot_of(&cache, &name("k", 9)) * SLOT_LEN, b"bad");
        assert_eq!(cache.get(&name("k", 9)), None);
        let allocated = fs::metadata(slots_path(dir.path())).unwrap().blocks() * 512;
        assert!(
            allocated <= SLOT_LEN + DIRECT_ALIGN as u64,
            "{allocated} bytes for 1 block"
        );
    }

    #[test]
    fn a_block_starts_its_slot_and_its_trailer_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let cases = [vec![3u8; SLOT_DATA as usize], vec![4u8; 5000], Vec::new()];
        for (index, data) in cases.iter().enumerate() {
            cache.put(&name("k", index as u64), data, None);
        }
        let raw = fs::read(slots_path(dir.path())).unwrap();
        assert!(raw.len() as u64 >= 3 * SLOT_LEN);
        for (index, data) in cases.iter().enumerate() {
            let block = name("k", index as u64);
            let start = (slot_of(&cache, &block) * SLOT_LEN) as usize;
            assert_eq!(
                &raw[start..start + data.len()],
                &data[..],
                "block {index}: data first"
            );
            let trailer = &raw[start + SLOT_DATA as usize..start + SLOT_LEN as usize];
            let decoded = decode_trailer(trailer).expect("a trailer");
            assert_eq!(decoded.description, &block.describe()[..]);
            assert_eq!(decoded.data_len as usize, data.len());
            assert_eq!(decoded.crc, crc32c(data));
            assert_eq!(cache.get(&block).as_deref(), Some(&data[..]));
        }
        let expected: u64 = cases.iter().map(|data| stored_bytes(data.len())).sum();
        assert_eq!(cache.size(), expected);
        assert_eq!(
            stored_bytes(5000),
            3 * DIRECT_ALIGN as u64,
            "two data sectors and a trailer"
        );
    }

    /// Whether the file system holding `dir` takes an O_DIRECT write of one aligned sector.
    fn takes_direct_writes(dir: &Path) -> bool {
        let mut buffer = Vec::new();
        let Some(sector) = aligned_copy(&mut buffer, &[0u8; DIRECT_ALIGN]) else {
            return false;
        };
        let Ok(file) = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
        else {
            return false;
        };
        file.write_all_at(sector, 0).is_ok()
    }

    #[test]
    fn blocks_are_written_direct_where_the_disk_allows_and_buffered_alike_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let block = vec![9u8; SLOT_DATA as usize];
        cache.put(&name("k", 0), &block, None);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&block[..]));
        let probe_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let direct = takes_direct_writes(probe_dir.path());
        assert_eq!(
            (
                cache.direct_writes.load(Ordering::Relaxed),
                cache.direct_reads.load(Ordering::Relaxed)
            ),
            (direct, direct),
            "O_DIRECT is kept exactly where the file system takes it"
        );
        // A block as a GET's body holds it, sector-aligned: written from where it is.
        let mut received: Vec<u8> = Vec::with_capacity(block.len() + DIRECT_ALIGN);
        let pad = received.as_ptr().align_offset(DIRECT_ALIGN);
        received.resize(pad, 0);
        received.extend_from_slice(&block);
        let in_place = &received[pad..];
        assert!(is_whole_sectors(in_place));
        cache.put(&name("k", 1), in_place, None);
        // Not whole sectors where it is (copied), and through the page cache (as on tmpfs).
        cache.put(&name("k", 2), &block[1..], None);
        cache.direct_writes.store(false, Ordering::Relaxed);
        cache.put(&name("k", 3), &block, None);
        cache.put(&name("k", 4), &block[1..], None);
        for index in [0, 1, 3] {
            assert_eq!(
                cache.get(&name("k", index)).as_deref(),
                Some(&block[..]),
                "block {index}"
            );
        }
        for index in [2, 4] {
            assert_eq!(
                cache.get(&name("k", index)).as_deref(),
                Some(&block[1..]),
                "block {index}"
            );
        }
        // And read through the page cache (as on tmpfs), whole and short.
        cache.direct_reads.store(false, Ordering::Relaxed);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&block[..]));
        assert_eq!(cache.get(&name("k", 4)).as_deref(), Some(&block[1..]));
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 0);
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 0);
        drop(cache);
        let cache = open(dir.path());
        assert_eq!(
            cache.block_count(),
            5,
            "every way of writing leaves a block the scan finds"
        );
    }

    #[test]
    fn an_interrupted_write_leaves_a_free_slot_not_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"whole", None);
        drop(cache);
        // A kill after the data of slot 1 was written, before its trailer.
        forget_saved_index(dir.path());
        scribble(dir.path(), SLOT_LEN, b"half a blo");
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 1);
        assert_eq!(cache.size(), stored_bytes(5), "the torn slot is not counted");
        cache.put(&name("k", 1), b"next", None);
        assert_eq!(slot_of(&cache, &name("k", 1)), 1, "the torn slot is reused");
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"whole"[..]));
        assert_eq!(cache.get(&name("k", 1)).as_deref(), Some(&b"next"[..]));
    }

    #[test]
    fn a_block_stored_again_keeps_one_slot_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"first", None);
        cache.put(&name("k", 0), b"second", None);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"second"[..]));
        assert_eq!(cache.block_count(), 1);
        assert_eq!(cache.size(), stored_bytes(6));
        // Two slots naming one block (the older copy back in slot 0, as a kill between a write
        // and the older slot's release leaves): the later write wins at open.
        let (older, newer) = (0, 1);
        assert_eq!(slot_of(&cache, &name("k", 0)), newer);
        drop(cache);
        forget_saved_index(dir.path());
        let mut older_slot = b"first".to_vec();
        older_slot.resize(SLOT_DATA as usize, 0);
        older_slot.extend_from_slice(&encode_trailer(&name("k", 0).describe(), 5, crc32c(b"first"), 0));
        scribble(dir.path(), older * SLOT_LEN, &older_slot);
        let cache = open(dir.path());
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"second"[..]));
        assert_eq!(cache.block_count(), 1);
        assert_eq!(cache.size(), stored_bytes(6));
        cache.put(&name("k", 1), b"third", None);
        assert_eq!(
            slot_of(&cache, &name("k", 1)),
            older,
            "the older copy's slot is free"
        );
    }

    #[test]
    fn reads_racing_evictions_never_see_another_block_nor_call_it_damage() {
        let dir = tempfile::tempdir().unwrap();
        let content = |index: u64| vec![index as u8 + 1; 3 * DIRECT_ALIGN];
        // Room for 2 of 8 blocks: every write evicts, and slots are reused constantly.
        let cache =
            Arc::new(DiskCache::open(dir.path(), limits(2 * stored_bytes(3 * DIRECT_ALIGN))).unwrap());
        let writer = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for round in 0..3000u64 {
                    cache.put(&name("k", round % 8), &content(round % 8), None);
                }
            })
        };
        let mut hits = 0;
        for round in 0..20_000u64 {
            if let Some(data) = cache.get(&name("k", round % 8)) {
                assert_eq!(&data[..], &content(round % 8)[..], "round {round}");
                hits += 1;
            }
            if writer.is_finished() && round > 1000 {
                break;
            }
        }
        writer.join().unwrap();
        assert!(hits > 0, "some reads found their block");
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_clean_close_saves_the_index_which_the_next_open_reads_instead_of_the_trailers() {
        let dir = tempfile::tempdir().unwrap();
        let index_file = dir.path().join("blocks").join(INDEX_FILE);
        let cache = open(dir.path());
        for (index, data) in [b"zero", b"one!", b"two!"].iter().enumerate() {
            cache.put(&name("k", index as u64), &data[..], None);
        }
        assert!(
            cache.get(&name("k", 0)).is_some(),
            "0 is now the most recently used"
        );
        drop(cache);
        assert!(index_file.exists());
        // The trailer of block 1 damaged: the saved index does not read it, so it still lists
        // the block, which its first read then drops.
        let trailer_1 = SLOT_LEN + SLOT_DATA + TRAILER_LEN as u64 - 1;
        scribble(dir.path(), trailer_1, b"?");
        let cache = open(dir.path());
        assert!(!index_file.exists(), "read once, then removed before any write");
        assert_eq!(cache.block_count(), 3);
        assert_eq!(cache.get(&name("k", 1)), None);
        assert_eq!(cache.counters.corrupt_dropped.load(Ordering::Relaxed), 1);
        drop(cache);
        // The order of use survives, not only that of writing: with room for one block, the
        // one used last stays though it was written first.
        let cache = DiskCache::open(dir.path(), limits(stored_bytes(4))).unwrap();
        assert_eq!(cache.block_count(), 1);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"zero"[..]));
        drop(cache);
        // After an open from the saved index, a new block goes to a free slot and a new
        // sequence: every block reads back, also after a kill (from the trailers).
        let cache = open(dir.path());
        cache.put(&name("k", 5), b"five", None);
        assert_ne!(slot_of(&cache, &name("k", 5)), slot_of(&cache, &name("k", 0)));
        drop(cache);
        forget_saved_index(dir.path());
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 2);
        assert_eq!(cache.get(&name("k", 0)).as_deref(), Some(&b"zero"[..]));
        assert_eq!(cache.get(&name("k", 5)).as_deref(), Some(&b"five"[..]));
    }

    #[test]
    fn a_saved_index_that_does_not_add_up_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"zero", None);
        cache.put(&name("k", 1), b"one", None);
        let index = cache.lock_index();
        let entries: Vec<(BlockKey, Entry)> = index.lru.iter().map(|(k, e)| (*k, *e)).collect();
        let saved = |slot_count: u64, next_sequence: u64, entries: &[(BlockKey, Entry)]| {
            let mut crafted = Index::new(slot_count, next_sequence);
            for (key, entry) in entries.iter().rev() {
                crafted.lru.put(*key, *entry);
            }
            encode_index(&crafted)
        };
        assert!(decode_index(&saved(2, 2, &entries), 2).is_some(), "the control");
        let (k0, e0) = entries[1];
        let (k1, e1) = entries[0];
        let two_on_one_slot = [(k0, e0), (k1, Entry { slot: e0.slot, ..e1 })];
        let beyond_the_file = [(k0, e0), (k1, Entry { slot: 7, ..e1 })];
        let from_the_future = [(k0, e0), (k1, Entry { sequence: 9, ..e1 })];
        let too_long = [(
            k0,
            Entry {
                data_len: SLOT_DATA as u32 + 1,
                ..e0
            },
        )];
        for (what, bytes) in [
            ("two entries on one slot", saved(2, 2, &two_on_one_slot)),
            ("a slot beyond the file", saved(8, 10, &beyond_the_file)),
            ("a sequence not yet given", saved(2, 2, &from_the_future)),
            ("a block longer than a slot", saved(2, 2, &too_long)),
            ("an absurd next sequence", saved(2, u64::MAX, &entries)),
        ] {
            assert!(decode_index(&bytes, 2).is_none(), "{what}");
        }
    }

    #[test]
    fn a_damaged_saved_index_is_ignored_and_the_slots_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let index_file = dir.path().join("blocks").join(INDEX_FILE);
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"zero", None);
        cache.put(&name("k", 1), b"one", None);
        drop(cache);
        for damage in 0..2 {
            let mut bytes = fs::read(&index_file).unwrap();
            match damage {
                // A byte of the last entry's name hash (that of block 1, the most recently
                // used): believed, it would make block 1 a miss.
                0 => {
                    let at = bytes.len() - 4 - 1;
                    bytes[at] ^= 1;
                }
                _ => bytes.truncate(bytes.len() - 5),
            }
            fs::write(&index_file, &bytes).unwrap();
            let cache = open(dir.path());
            assert!(!index_file.exists(), "damage {damage}");
            assert_eq!(cache.block_count(), 2, "damage {damage}");
            assert_eq!(
                cache.get(&name("k", 1)).as_deref(),
                Some(&b"one"[..]),
                "damage {damage}"
            );
        }
    }

    #[test]
    fn a_closed_cache_stores_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"before", None);
        cache.close();
        cache.put(&name("k", 1), b"after", None);
        assert_eq!(cache.block_count(), 1);
        assert_eq!(
            cache.get(&name("k", 0)).as_deref(),
            Some(&b"before"[..]),
            "reads go on"
        );
        drop(cache);
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 1);
    }

    #[test]
    fn an_older_layout_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // A file per block in blocks/<2 hex>/, and tmp/ where they were written.
        let shard = dir.path().join("blocks").join("ab");
        fs::create_dir_all(&shard).unwrap();
        fs::write(shard.join("ab12"), b"an old block").unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp").join("999.0"), b"half a blo").unwrap();
        let cache = open(dir.path());
        assert!(!shard.exists());
        assert!(!dir.path().join("tmp").exists());
        assert_eq!((cache.block_count(), cache.size()), (0, 0));
    }

    #[test]
    fn a_block_too_large_for_the_cache_or_a_slot_is_skipped_with_a_counted_failure() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), limits(100)).unwrap();
        cache.put(&name("k", 0), &[0u8; 1000], None);
        assert_eq!(cache.get(&name("k", 0)), None);
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 1);
        let cache = {
            drop(cache);
            open(dir.path())
        };
        cache.put(&name("k", 0), &vec![0u8; SLOT_DATA as usize + 1], None);
        cache.put(&name(&"k".repeat(MAX_NAME_LEN), 0), b"x", None);
        assert_eq!(cache.block_count(), 0);
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 2);
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
        cache.put(&name("k", 0), b"x", None);
        assert_eq!(cache.get(&name("k", 0)), None);
        assert_eq!(cache.counters.write_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_open_holes_are_skipped_and_the_file_is_cut_after_its_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache.put(&name("k", 0), b"zero", None);
        cache.put(&name("k", 1), b"one", None);
        drop(cache);
        forget_saved_index(dir.path());
        // A block far out, beyond 4,000 slots of holes (as a larger --cache-size leaves).
        let mut far = b"far".to_vec();
        far.resize(SLOT_DATA as usize, 0);
        far.extend_from_slice(&encode_trailer(&name("k", 9).describe(), 3, crc32c(b"far"), 0));
        scribble(dir.path(), 4000 * SLOT_LEN, &far);
        let cache = open(dir.path());
        assert_eq!(cache.block_count(), 3);
        assert_eq!(cache.get(&name("k", 9)).as_deref(), Some(&b"far"[..]));
        drop(cache);
        forget_saved_index(dir.path());
        // Room for one block: the two written first (sequence 0) go, and the file ends after
        // the one left.
        let cache = DiskCache::open(dir.path(), limits(stored_bytes(4))).unwrap();
        assert_eq!(cache.block_count(), 1);
        assert_eq!(cache.get(&name("k", 1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(fs::metadata(slots_path(dir.path())).unwrap().len(), 2 * SLOT_LEN);
        drop(cache);
        let cache = open(dir.path());
        cache.put(&name("k", 2), b"two", None);
        assert_eq!(slot_of(&cache, &name("k", 2)), 0, "the lowest free slot");
    }

    #[test]
    fn two_caches_cannot_share_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path());
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
        cache.put(&name("k", 0), b"secret", None);
        cache.close();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("blocks")), 0o700);
        assert_eq!(mode(&slots_path(&root)), 0o600);
        assert_eq!(mode(&root.join("blocks").join(INDEX_FILE)), 0o600);
    }
}
