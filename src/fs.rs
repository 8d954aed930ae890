//! The file system: namespace, inodes, open handles and attributes over an [`ObjectClient`],
//! written without any fuser type so it can be driven directly in tests.
//!
//! Owns: the mapping of paths to keys (via `names`), the inode table (`inode`), directory
//! streams (`dir`), the metadata cache (moka, with a TTL and negative entries), and the
//! consistency rule: close-to-open (every open asks S3 for the object's current ETag and size,
//! and every read of that handle is pinned to that version: cached blocks are keyed by its ETag,
//! GETs carry If-Match). Reads go through the handle's `Prefetcher` and the mount's
//! `BlockReader` (disk cache). Writes are staged (`write`, over `writeback::StagedFile`) and
//! uploaded on close; namespace changes go to S3 at once (`namespace`). Must not touch the
//! kernel protocol (`fuse.rs`) or the process (`run.rs`).

pub mod dir;
pub mod error;
mod gates;
mod headers;
pub mod inode;
mod metadata;
pub mod names;
mod namespace;
pub mod posix;
mod readdir;
mod walk;
mod write;
pub mod xattr;

use crate::lock;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use moka::sync::Cache;

use crate::cache::disk::DiskCache;
use crate::cache::{BlockReader, ObjectVersion, ReadCounters};
use crate::object::{ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata, WriteSettings};
use crate::prefetch::{MemoryBudget, Prefetcher, ReadAheadConfig};
use crate::staging::Staging;
use crate::upload::{UploadBudget, UploadConfig};
use crate::writeback::WriteContext;
pub use error::FsError;
use inode::{InodeTable, ROOT_INO};
use metadata::{DirKnowledge, MetadataCache};
use names::{RootPrefix, check_os_name, join};

/// How many distinct hidden keys we remember having warned about, so each is logged once.
const WARNED_KEYS: u64 = 10_000;
/// With exact POSIX metadata, HEADs in flight at once for the files a listing just showed, ahead
/// of the lookups `ls -l` is about to make of them one by one.
const DETAILS_AHEAD: usize = 32;
/// `st_blksize`: the I/O size we advise. Reads are served in ranged GETs, so bigger is better.
const BLOCK_SIZE: u32 = 1 << 20;

/// How many times [`S3Fs::resolve`] asks S3 what is at a path when each answer was overtaken by
/// a change this mount made to it; the last answer is taken whatever it is.
const RESOLVE_ATTEMPTS: usize = 3;

/// How many times [`S3Fs::open_as`] opens a path whose reading open was overtaken by a writer's
/// open (each time, the next attempt opens the writer's staged file, unless it settled already).
const OPEN_ATTEMPTS: usize = 3;

/// What the file system may ask of the kernel: drop its cached attributes and pages of an inode
/// (the object changed under it). Implemented by the FUSE adapter; absent in unit tests.
pub trait KernelCache: Send + Sync {
    fn invalidate(&self, ino: u64);
}

/// Ownership, modes and cache settings for the whole mount.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub root: RootPrefix,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of files and directories (no type bits).
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long a file's or directory's metadata is trusted (a negative lookup: at most 1 s).
    pub metadata_ttl: Duration,
    pub read_only: bool,
    /// ListObjectsV2 page size (`None`: the server's default, 1000).
    pub list_page_size: Option<u32>,
    pub read_ahead: ReadAheadConfig,
    /// Bytes all read-ahead buffers of the mount may hold together.
    pub read_ahead_memory: u64,
    /// Part size and parts in flight of each upload.
    pub upload: UploadConfig,
    /// Bytes all upload part buffers of the mount may hold together.
    pub upload_memory: u64,
    /// A directory rename moves at most this many keys; beyond, it fails with EXDEV (and `mv`
    /// falls back to copying file by file).
    pub max_rename_keys: usize,
    /// Whether modes, owners and times are kept in `x-amz-meta-*` (s3fs's headers), and how
    /// they reach `stat`.
    pub posix_metadata: PosixMetadata,
    /// Encryption and storage class of the objects this mount creates (the S3 client adds the
    /// ACL); recorded in their metadata like any header, so the system attributes show them.
    pub write: WriteSettings,
}

/// How POSIX attributes kept in object metadata are used. A listing carries no metadata, so
/// this is the choice between `ls -l` at the speed of the listing and `stat` exact after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PosixMetadata {
    /// Kept, and read whenever the object is looked at closely (a lookup S3 answers, an open, an
    /// xattr): an entry a listing just showed has the mount's defaults (and a symlink another
    /// tool wrote shows as a file) until then. No request per listed entry.
    Lazy,
    /// Kept, and a lookup never takes an entry from a listing alone: one HEAD per entry (cached
    /// for the metadata TTL), so modes, owners, times and symlinks are always right, and
    /// permission checks (`default_permissions`) always see the stored mode.
    Exact,
    /// Not read (every object shows the mount's defaults), and chmod, chown and utimensat are
    /// accepted and not kept. Symlinks still work.
    Off,
}

impl PosixMetadata {
    pub fn is_kept(self) -> bool {
        self != PosixMetadata::Off
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    /// An object whose body is the link's target (s3fs's form) or that names one in a header.
    Symlink,
}

/// What we know of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// The object's Last-Modified: its last write or metadata change (the change time); for a
    /// file being written, its last write; for a directory without marker, the mount time.
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// What a HEAD told besides size and ETag; `None` when only a listing has been seen (a
    /// listing carries no metadata) or the directory has no marker object.
    pub details: Option<Arc<Details>>,
}

/// An object's metadata as a HEAD (or this mount's own write) tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    pub metadata: crate::object::ObjectMetadata,
    pub version_id: Option<String>,
    pub checksum_crc32c: Option<String>,
}

impl Entry {
    fn dir(mtime: SystemTime) -> Self {
        Self {
            kind: Kind::Dir,
            size: 0,
            mtime,
            etag: None,
            details: None,
        }
    }

    /// The POSIX attributes the object's metadata states (none for a listed entry).
    fn posix(&self) -> posix::Posix {
        self.details
            .as_ref()
            .map(|details| posix::Posix::from_user(&details.metadata.user))
            .unwrap_or_default()
    }

    /// Identifies this version of the path: equal fingerprints, same kind, size and object. The
    /// time is left out on purpose: a listing reports it to the millisecond, HeadObject to the
    /// second, and the ETag already tells one version of the bytes from another.
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        (self.kind, self.size, &self.etag).hash(&mut hasher);
        hasher.finish()
    }
}

/// Attributes as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub blksize: u32,
}

/// Who creates a file, directory or symlink, and the permission bits asked for (umask applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creator {
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
}

/// What chmod, chown and utimensat ask to change (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrChange {
    /// Permission bits (the type bits are the file's own).
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl AttrChange {
    pub fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }

    /// Writes the change into an object's user metadata (type bits from the mode it keeps, or
    /// from `kind` through the caller's default).
    fn apply_to(&self, metadata: &mut ObjectMetadata, type_bits: u32) {
        let user = &mut metadata.user;
        if let Some(perm) = self.perm {
            posix::set_mode(user, type_bits | (perm & 0o7777));
        }
        posix::set_owner(user, self.uid, self.gid);
        if let Some(atime) = self.atime {
            posix::set_time(user, crate::object::metadata::posix_headers::ATIME, atime);
        }
        if let Some(mtime) = self.mtime {
            posix::set_time(user, crate::object::metadata::posix_headers::MTIME, mtime);
        }
    }

    /// [`AttrChange::apply_to`] with the type bits of `kind`. `shown_mtime` is the mtime the
    /// object shows now: a new mtime alone (UTIME_OMIT for atime) leaves the atime, which
    /// followed the mtime until then, at it.
    pub(crate) fn apply(
        &self,
        metadata: &mut ObjectMetadata,
        kind: Kind,
        shown_mtime: SystemTime,
    ) -> Result<(), FsError> {
        let atime = crate::object::metadata::posix_headers::ATIME;
        if self.mtime.is_some() && self.atime.is_none() && !metadata.user.contains_key(atime) {
            posix::set_time(&mut metadata.user, atime, shown_mtime);
        }
        let (type_bits, change) = match kind {
            Kind::File => (posix::S_IFREG, *self),
            Kind::Dir => (posix::S_IFDIR, *self),
            // A link's own mode is always 0777 (chmod follows links); owner and times are its own.
            Kind::Symlink => (posix::S_IFLNK, AttrChange { perm: None, ..*self }),
        };
        change.apply_to(metadata, type_bits);
        Ok(())
    }
}

/// One readdir entry as handed to the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// `statfs` figures. S3 has no capacity, so the numbers say "plenty" (as Mountpoint does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// An open file handle: a read of one object version, or a handle on a staged file.
#[derive(Clone)]
enum Handle {
    Read(Arc<OpenFile>),
    Staged(Arc<write::StagedHandle>),
}

/// An open file: the object as it was at open time.
struct OpenFile {
    ino: u64,
    /// Fingerprint of the version opened, to notice a newer one opened on this inode since.
    version: u64,
    prefetcher: tokio::sync::Mutex<Prefetcher>,
}

/// What `open` hands back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub handle: u64,
    /// The kernel's cached pages are of this very version: it may keep them.
    pub keep_cache: bool,
}

/// The file system. All methods take `&self` and are safe to call concurrently.
pub struct S3Fs {
    client: Arc<dyn ObjectClient>,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    /// path -> what is there (`None`: nothing), for `metadata_ttl`.
    metadata: MetadataCache,
    files: Mutex<HashMap<u64, Handle>>,
    /// Files being written on this mount, by path: every handle on a path shares one.
    staged: write::StagedTable,
    /// Keeps renames and the opens for writing or metadata changes of the names they move apart.
    gates: gates::PathGates,
    /// `None` on a read-only mount.
    writes: Option<Arc<WriteContext>>,
    dirs: Mutex<HashMap<u64, Arc<readdir::OpenDir>>>,
    next_handle: AtomicU64,
    warned_keys: Cache<String, ()>,
    /// Directories have no time of their own in S3; they show the mount time.
    mount_time: SystemTime,
    kernel_cache: std::sync::OnceLock<Arc<dyn KernelCache>>,
    reader: Arc<BlockReader>,
    budget: Arc<MemoryBudget>,
    /// Bounds the HEADs that fetch listed files' metadata ahead of their lookups.
    details_ahead: Arc<tokio::sync::Semaphore>,
    /// Tree walks under way, and the first pages of directories listed ahead of them.
    walks: Mutex<walk::Walks<readdir::ListedAhead>>,
}

impl S3Fs {
    /// A file system over `client`; blocks are cached in `disk` when given, writes staged in
    /// `staging` (without it, or with `read_only`, every change is refused with EROFS).
    pub fn new(
        client: Arc<dyn ObjectClient>,
        config: FsConfig,
        disk: Option<Arc<DiskCache>>,
        staging: Option<Staging>,
    ) -> Self {
        let metadata = MetadataCache::new(config.metadata_ttl);
        let reader = Arc::new(BlockReader::new(client.clone(), disk));
        let writes = staging.filter(|_| !config.read_only).map(|staging| {
            Arc::new(WriteContext {
                client: client.clone(),
                reader: reader.clone(),
                staging,
                upload: config.upload.clone(),
                budget: Arc::new(UploadBudget::new(config.upload_memory)),
            })
        });
        Self {
            inodes: Mutex::new(InodeTable::new()),
            metadata,
            files: Mutex::new(HashMap::new()),
            staged: write::StagedTable::default(),
            gates: gates::PathGates::default(),
            writes,
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            warned_keys: Cache::new(WARNED_KEYS),
            mount_time: SystemTime::now(),
            kernel_cache: std::sync::OnceLock::new(),
            reader,
            budget: Arc::new(MemoryBudget::new(config.read_ahead_memory)),
            details_ahead: Arc::new(tokio::sync::Semaphore::new(DETAILS_AHEAD)),
            walks: Mutex::new(walk::Walks::new(
                config.metadata_ttl.min(readdir::WALK_PAGE_MAX_AGE),
            )),
            client,
            config,
        }
    }

    /// What the read path has done so far (GETs, bytes, cache hits).
    pub fn read_counters(&self) -> &ReadCounters {
        &self.reader.counters
    }

    /// Closes the block cache at unmount, once nothing reads any more: its index is saved for
    /// the next mount, which then need not read every block's trailer.
    pub fn close_block_cache(&self) {
        if let Some(disk) = self.reader.disk() {
            disk.close();
        }
    }

    /// Connects the kernel's cache, once the session exists. Later calls are ignored.
    pub fn set_kernel_cache(&self, kernel_cache: Arc<dyn KernelCache>) {
        let _ = self.kernel_cache.set(kernel_cache);
    }

    /// The client and block reader `s3mount warm` fills this mount's cache through.
    pub fn warm_source(&self) -> (Arc<dyn ObjectClient>, Arc<BlockReader>) {
        (self.client.clone(), self.reader.clone())
    }

    /// The path of `ino` for a log line (`inode N` once the kernel has forgotten it).
    pub fn path_for_log(&self, ino: u64) -> String {
        match lock(&self.inodes).path(ino) {
            Some(path) if path.is_empty() => "/".to_owned(),
            Some(path) => path.to_string(),
            None => format!("inode {ino}"),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// How many inodes the kernel currently holds references to (the root included).
    pub fn live_inodes(&self) -> usize {
        lock(&self.inodes).len()
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let parent_path = self.path_of(parent)?;
        let name = check_os_name(name)?;
        let path = join(&parent_path, name);
        names::check_key_len(&self.config.root, &path)?;
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        let mut inodes = lock(&self.inodes);
        let ino = inodes.remember(&path);
        set_attrs_view(&mut inodes, ino, &entry);
        Ok(self.attr(ino, &entry))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        lock(&self.inodes).forget(ino, count);
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let path = self.path_of(ino)?;
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        set_attrs_view(&mut lock(&self.inodes), ino, &entry);
        Ok(self.attr(ino, &entry))
    }

    /// Opens a file with open(2) `flags`. A path being written on this mount opens its staged
    /// file; opening for writing stages the object; otherwise the handle reads the object.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        self.open_as(ino, flags, None).await
    }

    /// [`S3Fs::open`] on behalf of process `opener` (see [`S3Fs::flush_from`]).
    pub async fn open_as(&self, ino: u64, flags: i32, opener: Option<u32>) -> Result<Opened, FsError> {
        let mode = write::OpenMode {
            opener,
            ..write::OpenMode::from_flags(flags)
        };
        let mut path = self.path_of(ino)?;
        if path.is_empty() {
            return Err(FsError::IsADirectory);
        }
        if mode.write {
            self.writes()?;
            // Not while a rename moves the file: staged from the key the rename deletes, or
            // uploaded before the rename's copy lands over it, what it writes would be lost.
            let (path, _pass) = self.pass_to_change(|| self.path_of(ino)).await?;
            if let Some(entry) = self.staged.get(&path)
                && let Some(opened) = self.open_staged(ino, entry, mode).await?
            {
                return Ok(opened);
            }
            return self.open_for_write(ino, &path, mode).await;
        }
        for attempt in 0..OPEN_ATTEMPTS {
            if attempt > 0 {
                // After a refusal, the writer's staged file may have been renamed, and the inode
                // with it.
                path = self.path_of(ino)?;
            }
            if let Some(entry) = self.staged.get(&path)
                && let Some(opened) = self.open_staged(ino, entry, mode).await?
            {
                return Ok(opened);
            }
            if let Some(opened) = self.open_for_read(ino, &path).await? {
                return Ok(opened);
            }
        }
        // A writer's staged file came and went at each attempt: rare enough to be an error.
        Err(ObjectError::PreconditionFailed(self.config.root.file_key(&path)).into())
    }

    /// Opens a file for reading. Close-to-open: asks S3 for the current object, whatever the
    /// cache says, and pins the handle to that ETag. `None` when a writer opened the file while
    /// S3 was asked: its staged file is what the file holds now, and the kernel's pages are its;
    /// the caller opens that instead.
    async fn open_for_read(&self, ino: u64, path: &Arc<str>) -> Result<Option<Opened>, FsError> {
        let key = self.config.root.file_key(path);
        let sent = self.metadata.stamp();
        let known = self.metadata.get(path).flatten();
        let (mut head, first) = self.ask_for_open(path, &key, known.as_ref()).await?;
        keep_known_checksum(&mut head, known.as_ref());
        let fresh = file_entry_from_head(&head);
        let version = fresh.fingerprint();
        // A writer that opens after this takes the pages from under this handle, whose reads
        // then get ESTALE; one open now (it may have opened after S3 was asked) keeps them.
        let Some(keep_cache) = self.note_pages_version(ino, version) else {
            return Ok(None);
        };
        self.forget_stale_kernel_view(ino, &fresh);
        self.metadata.remember_answer(path.to_string(), Some(fresh), sent);
        let object = ObjectVersion {
            key,
            etag: head.etag,
            size: head.size,
            version_id: head.version_id,
        };
        let mut prefetcher = Prefetcher::new(
            self.reader.clone(),
            self.budget.clone(),
            self.config.read_ahead.clone(),
            object,
        );
        if let Some(first) = first {
            prefetcher.seed_start(first);
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            ino,
            version,
            prefetcher: tokio::sync::Mutex::new(prefetcher),
        };
        lock(&self.files).insert(handle, Handle::Read(Arc::new(file)));
        Ok(Some(Opened { handle, keep_cache }))
    }

    /// Reads up to `size` bytes at `offset` of the object as it was at open. Once a newer version
    /// has been opened on this inode, the kernel's pages are that version's: an older handle gets
    /// ESTALE rather than mixing its bytes into them.
    pub async fn read(&self, handle: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let file = match self.handle(handle)? {
            Handle::Read(file) => file,
            Handle::Staged(staged) => return self.read_staged(&staged, offset, size).await,
        };
        self.check_pages_still_of(&file).await?;
        let data = Prefetcher::read(&file.prefetcher, offset, u64::from(size)).await?;
        // Again once the bytes are here: a newer version opened meanwhile (the GET may take a
        // while) owns the kernel's pages now, and these must not land among them.
        self.check_pages_still_of(&file).await?;
        Ok(data)
    }

    /// [`S3Fs::read`] of bytes already here, answered without waiting (on the caller's thread);
    /// `None` when that cannot be, and the read must go the usual way.
    pub fn try_read_now(&self, handle: u64, offset: u64, size: u32) -> Option<Bytes> {
        let Ok(Handle::Read(file)) = self.handle(handle) else {
            return None;
        };
        let pages_are_ours = || {
            lock(&self.inodes)
                .kernel_view(file.ino)
                .and_then(|view| view.pages)
                .is_none_or(|pages| pages == file.version)
        };
        if !pages_are_ours() {
            return None;
        }
        let data = Prefetcher::try_read_ready(&file.prefetcher, offset, u64::from(size))?;
        pages_are_ours().then_some(data)
    }

    /// ESTALE once the kernel's pages of the file's inode belong to another version than the
    /// one `file` reads.
    async fn check_pages_still_of(&self, file: &OpenFile) -> Result<(), FsError> {
        let pages = lock(&self.inodes)
            .kernel_view(file.ino)
            .and_then(|view| view.pages);
        if pages.is_some_and(|pages| pages != file.version) {
            let key = file.prefetcher.lock().await.object().key.clone();
            return Err(ObjectError::PreconditionFailed(key).into());
        }
        Ok(())
    }

    /// Whether a handle reading a version of `ino` (not a staged file) is open: its reads may be
    /// in flight, and put that version's pages in the kernel's cache at any moment.
    fn has_read_handles(&self, ino: u64) -> bool {
        lock(&self.files)
            .values()
            .any(|handle| matches!(handle, Handle::Read(file) if file.ino == ino))
    }

    /// Closes a handle. The last handle of a staged file uploads what a failed close left.
    pub async fn release(&self, handle: u64) {
        let removed = lock(&self.files).remove(&handle);
        if let Some(Handle::Staged(staged)) = removed {
            self.release_staged(staged).await;
        }
    }

    /// The object an open finds (close-to-open: always asked of S3), in one request; a vanished
    /// one is forgotten. For a file this mount last saw (listed, or looked up within the
    /// metadata TTL) holding at most one block, a GET of the first block, which the first read
    /// needs anyway and which comes with the head, rather than a HEAD and then that GET: a round
    /// trip saved per file, most of the time of reading small files from an S3 tens of
    /// milliseconds away. A HEAD otherwise: when it was larger (how it will be read is not
    /// known: a random 4 KiB read of a large file must not pay for a first block it does not
    /// want), empty, not seen (`--metadata-ttl 0`), or when the disk cache holds the first
    /// block of the version last seen (a warm cache).
    async fn ask_for_open(
        &self,
        path: &str,
        key: &str,
        known: Option<&Entry>,
    ) -> Result<(ObjectHead, Option<Bytes>), FsError> {
        let get_first_block = known.is_some_and(|entry| {
            (1..=crate::cache::BLOCK_SIZE).contains(&entry.size)
                && !entry
                    .etag
                    .as_deref()
                    .is_some_and(|etag| self.reader.has_first_block(key, etag))
        });
        let answer = if get_first_block {
            self.reader
                .open_with_first_block(key)
                .await
                .map(|(head, first)| (head, Some(first)))
        } else {
            self.client.head(key).await.map(|head| (head, None))
        };
        answer.map_err(|error| self.open_failed(path, error))
    }

    /// The object an open for writing finds (close-to-open: always asked).
    async fn head_for_open(&self, path: &str, key: &str) -> Result<ObjectHead, FsError> {
        self.client
            .head(key)
            .await
            .map_err(|error| self.open_failed(path, error))
    }

    /// An open's request failed: a vanished object is forgotten, and ENOENT.
    fn open_failed(&self, path: &str, error: ObjectError) -> FsError {
        if let ObjectError::NoSuchKey(_) = error {
            self.metadata.forget(path);
            return FsError::NotFound;
        }
        error.into()
    }

    fn handle(&self, handle: u64) -> Result<Handle, FsError> {
        lock(&self.files).get(&handle).cloned().ok_or(FsError::BadHandle)
    }

    /// The write-back context, or EROFS on a read-only mount.
    fn writes(&self) -> Result<&Arc<WriteContext>, FsError> {
        self.writes.as_ref().ok_or(FsError::ReadOnly)
    }

    pub fn statfs(&self) -> StatFs {
        // Large round numbers: "free" must never make `cp` or `df` believe the disk is full.
        const PLENTY: u64 = 1 << 40;
        StatFs {
            blocks: PLENTY,
            bfree: PLENTY,
            bavail: PLENTY,
            files: PLENTY,
            ffree: PLENTY,
            bsize: BLOCK_SIZE,
            namelen: names::NAME_MAX as u32,
            frsize: BLOCK_SIZE,
        }
    }

    /// When the kernel holds attributes of `ino` other than `fresh` (another writer replaced the
    /// object since the kernel was told), makes it drop them and the pages read under them.
    fn forget_stale_kernel_view(&self, ino: u64, fresh: &Entry) {
        let stale = match lock(&self.inodes).kernel_view(ino) {
            Some(view) if view.attrs.is_some_and(|attrs| attrs != fresh.fingerprint()) => {
                view.attrs = None;
                true
            }
            _ => false,
        };
        if stale && let Some(kernel_cache) = self.kernel_cache.get() {
            kernel_cache.invalidate(ino);
        }
    }

    /// Records that the kernel's pages of `ino` will now come from `version`: `Some(true)` when
    /// they already did and nothing else may have slipped in (the kernel may keep its page
    /// cache). `None`, changing nothing, while a handle is open on the staged file at the inode's
    /// path: a writer opened the file after this open asked S3 (even if an fsync has uploaded a
    /// version since), and the pages are the writer's, which its own reads are served from; the
    /// open must take the staged file instead of filling them with the version S3 gave.
    fn note_pages_version(&self, ino: u64, version: u64) -> Option<bool> {
        // Under the inodes' lock, which a writer's open takes after its handle to make the pages
        // its own: either that has happened and its handle is seen here, or it comes after and
        // this handle's reads get ESTALE. (A staged file unlinked while open is in no table: it
        // holds nothing back.)
        let mut inodes = lock(&self.inodes);
        let writer_open = inodes
            .path(ino)
            .and_then(|path| self.staged.get(&path))
            .is_some_and(|entry| entry.is_held());
        if writer_open {
            return None;
        }
        Some(
            inodes
                .kernel_view(ino)
                .is_some_and(|view| view.opened_for_read(version)),
        )
    }

    fn path_of(&self, ino: u64) -> Result<Arc<str>, FsError> {
        lock(&self.inodes).path(ino).ok_or(FsError::BadHandle)
    }

    /// What is at `path`: from the cache if fresh, else from S3 (a HEAD of the file key and a
    /// one-key LIST of the directory prefix, concurrently; a directory shadows a file).
    ///
    /// An answer to a question this mount's own change of `path` overtook (a close uploaded a new
    /// version while the HEAD was on its way) may describe what was there before: given to the
    /// kernel, it would make a writer's `stat` after its own close show the old size until the
    /// TTL ran out. So it is not believed: the path is resolved again, which mostly finds what
    /// the change left in the cache.
    async fn resolve(&self, path: &str) -> Result<Option<Entry>, FsError> {
        let mut attempt = 1;
        loop {
            let (entry, overtaken) = self.resolve_once(path).await?;
            if !overtaken || attempt == RESOLVE_ATTEMPTS {
                return Ok(entry);
            }
            attempt += 1;
        }
    }

    /// One pass of [`S3Fs::resolve`]: what is at `path`, and whether a change of it by this mount
    /// overtook the requests that found it.
    async fn resolve_once(&self, path: &str) -> Result<(Option<Entry>, bool), FsError> {
        if path.is_empty() {
            return Ok((Some(Entry::dir(self.mount_time)), false));
        }
        if let Some(entry) = self.staged.get(path) {
            return Ok((Some(entry.seen()), false));
        }
        if let Some(entry) = self.metadata.get(path) {
            let entry = match entry {
                // Listed, never looked at closely: with exact POSIX attributes, looked at now.
                Some(entry)
                    if entry.details.is_none() && self.config.posix_metadata == PosixMetadata::Exact =>
                {
                    let sent = self.metadata.stamp();
                    return match self.with_details(path, entry).await {
                        // Gone, unless a change of this mount (a create) overtook the HEAD.
                        Err(FsError::NotFound) => Ok((None, self.metadata.changed_since(path, sent))),
                        detailed => detailed.map(|(entry, overtaken)| (Some(entry), overtaken)),
                    };
                }
                entry => entry,
            };
            return Ok((entry, false));
        }
        if self.known_absent(path).await {
            return Ok((None, false));
        }
        let key = self.config.root.file_key(path);
        let list = ListRequest {
            prefix: self.config.root.dir_prefix(path),
            delimiter: Some("/".to_owned()),
            continuation_token: None,
            max_keys: Some(1),
        };
        let sent = self.metadata.stamp();
        let (head, listing) = tokio::join!(self.client.head(&key), self.client.list(&list));
        let listing = listing?;
        let entry = if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            let has_marker = listing.objects.first().is_some_and(|o| o.key == list.prefix);
            Some(self.dir_entry_with_marker(&list.prefix, has_marker).await?)
        } else {
            match head {
                Ok(head) => Some(file_entry_from_head(&head)),
                Err(ObjectError::NoSuchKey(_)) => None,
                Err(error) => return Err(error.into()),
            }
        };
        self.metadata
            .remember_answer(path.to_owned(), entry.clone(), sent);
        Ok((entry, self.metadata.changed_since(path, sent)))
    }

    /// Whether `path` is known to hold nothing without asking S3: its directory's every name is
    /// known, and fresh (or made fresh again by one listing page), and it is not among them.
    async fn known_absent(&self, path: &str) -> bool {
        match self.metadata.dir_knowledge(path) {
            DirKnowledge::Absent => true,
            DirKnowledge::Unknown => false,
            DirKnowledge::Stale { dir } => {
                self.list_complete_dir(&dir).await;
                self.metadata.dir_knowledge(path) == DirKnowledge::Absent
            }
        }
    }

    /// Lists the directory `dir` again (one page) to keep knowing its every name; a directory
    /// of more names than a page, or a failed listing, is not kept whole any more.
    async fn list_complete_dir(&self, dir: &str) {
        let prefix = self.config.root.dir_prefix(dir);
        let list = ListRequest {
            prefix: prefix.clone(),
            delimiter: Some("/".to_owned()),
            continuation_token: None,
            max_keys: Some(metadata::COMPLETE_DIR_NAMES as u32),
        };
        let at = std::time::Instant::now();
        match self.client.list(&list).await {
            Ok(page) if page.next_continuation_token.is_none() => {
                let files = page.objects.iter().map(|object| object.key.as_str());
                let dirs = page.common_prefixes.iter().map(String::as_str);
                let names = files
                    .chain(dirs)
                    .filter_map(|key| key.strip_prefix(prefix.as_str()))
                    .map(|name| name.trim_end_matches('/'))
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.metadata.refresh_complete_dir(dir, names, at);
            }
            _ => self.metadata.forget_complete_dir(dir),
        }
    }

    /// The key that holds `path`'s metadata: its object, or a directory's marker.
    fn key_of(&self, path: &str, kind: Kind) -> String {
        match kind {
            Kind::Dir => self.config.root.dir_prefix(path),
            Kind::File | Kind::Symlink => self.config.root.file_key(path),
        }
    }

    /// `entry` with its metadata: as it is when it has it, else from a HEAD of its key (cached).
    /// A directory without marker has nothing to add; a listed file gone meanwhile is NotFound.
    /// With it, whether a change of `path` by this mount overtook the HEAD (a close uploaded a
    /// new version while it was on its way): then the answer may describe what was there before,
    /// and is not for the kernel to keep (see [`S3Fs::resolve`]).
    async fn with_details(&self, path: &str, entry: Entry) -> Result<(Entry, bool), FsError> {
        let key = self.key_of(path, entry.kind);
        if entry.details.is_some() {
            return Ok((entry, false));
        }
        if key.is_empty() {
            // The bucket's root: no object.
            let root = Entry {
                details: Some(Arc::default()),
                ..entry
            };
            return Ok((root, false));
        }
        let sent = self.metadata.stamp();
        let detailed = match (entry.kind, self.client.head(&key).await) {
            (Kind::Dir, Ok(head)) => Entry {
                kind: Kind::Dir,
                ..file_entry_from_head(&head)
            },
            (Kind::Dir, Err(ObjectError::NoSuchKey(_))) => Entry {
                details: Some(Arc::default()),
                ..entry
            },
            (_, Ok(head)) => file_entry_from_head(&head),
            (_, Err(ObjectError::NoSuchKey(_))) => {
                // Not what this mount put there since the HEAD left, which it knows better.
                if !self.metadata.changed_since(path, sent) {
                    self.metadata.forget(path);
                }
                return Err(FsError::NotFound);
            }
            (_, Err(error)) => return Err(error.into()),
        };
        if !path.is_empty() {
            self.metadata
                .remember_answer(path.to_owned(), Some(detailed.clone()), sent);
        }
        Ok((detailed, self.metadata.changed_since(path, sent)))
    }

    /// A directory, with its marker object's metadata (its mode, owner and attributes) when it
    /// has one: one more HEAD, only for a directory with a marker, only when not cached.
    async fn dir_entry_with_marker(&self, marker: &str, has_marker: bool) -> Result<Entry, FsError> {
        if !has_marker {
            return Ok(Entry::dir(self.mount_time));
        }
        match self.client.head(marker).await {
            Ok(head) => Ok(Entry {
                kind: Kind::Dir,
                size: 0,
                etag: Some(head.etag.clone()),
                ..file_entry_from_head(&head)
            }),
            Err(ObjectError::NoSuchKey(_)) => Ok(Entry::dir(self.mount_time)),
            Err(error) => Err(error.into()),
        }
    }

    /// The metadata of a new object: its content type, and the creator's mode and owner where
    /// they differ from the mount's defaults (so an object written as the mount's own user
    /// carries no extra header). A symlink always says it is one.
    fn creation_metadata(
        &self,
        creator: Option<Creator>,
        kind: Kind,
        content_type: Option<String>,
    ) -> ObjectMetadata {
        let mut metadata = self
            .config
            .write
            .complete(&ObjectMetadata::with_content_type(content_type));
        let user = &mut metadata.user;
        if kind == Kind::Symlink {
            posix::set_mode(user, posix::S_IFLNK | 0o777);
        }
        let Some(creator) = creator.filter(|_| self.config.posix_metadata.is_kept()) else {
            return metadata;
        };
        let (type_bits, default_perm) = match kind {
            Kind::File => (posix::S_IFREG, self.config.file_mode),
            Kind::Dir => (posix::S_IFDIR, self.config.dir_mode),
            Kind::Symlink => (posix::S_IFLNK, 0o777),
        };
        let perm = creator.perm & 0o7777;
        if kind != Kind::Symlink && perm != u32::from(default_perm) {
            posix::set_mode(user, type_bits | perm);
        }
        let uid = (creator.uid != self.config.uid).then_some(creator.uid);
        let gid = (creator.gid != self.config.gid).then_some(creator.gid);
        posix::set_owner(user, uid, gid);
        metadata
    }

    /// `stat`'s view of `entry`: the POSIX attributes its metadata keeps, the mount's defaults
    /// for the others (and for all of them with `posix_metadata` off).
    fn attr(&self, ino: u64, entry: &Entry) -> Attr {
        let (default_perm, nlink) = match entry.kind {
            Kind::File => (self.config.file_mode, 1),
            Kind::Dir => (self.config.dir_mode, 2),
            Kind::Symlink => (0o777, 1),
        };
        let kept = if self.config.posix_metadata.is_kept() {
            entry.posix()
        } else {
            posix::Posix::default()
        };
        let mtime = kept.mtime.unwrap_or(entry.mtime);
        Attr {
            ino,
            kind: entry.kind,
            size: entry.size,
            mtime,
            atime: kept.atime.unwrap_or(mtime),
            ctime: entry.mtime,
            perm: match entry.kind {
                Kind::Symlink => 0o777,
                Kind::File | Kind::Dir => kept.perm().unwrap_or(default_perm),
            },
            uid: kept.uid.unwrap_or(self.config.uid),
            gid: kept.gid.unwrap_or(self.config.gid),
            nlink,
            blksize: BLOCK_SIZE,
        }
    }
}

/// Records that the kernel is being given `entry`'s attributes for `ino`.
fn set_attrs_view(inodes: &mut InodeTable, ino: u64, entry: &Entry) {
    if let Some(view) = inodes.kernel_view(ino) {
        view.attrs = Some(entry.fingerprint());
    }
}

fn file_entry_from_head(head: &ObjectHead) -> Entry {
    let kind = if posix::is_symlink(&head.metadata.user) {
        Kind::Symlink
    } else {
        Kind::File
    };
    Entry {
        kind,
        size: head.size,
        mtime: head.last_modified,
        etag: Some(head.etag.clone()),
        details: Some(Arc::new(Details {
            metadata: head.metadata.clone(),
            version_id: head.version_id.clone(),
            checksum_crc32c: head.checksum_crc32c.clone(),
        })),
    }
}

/// A GET's answer carries no whole-object checksum: keep the one a HEAD of the same version
/// told earlier, so `user.s3.checksum_crc32c` does not vanish because the file was opened.
fn keep_known_checksum(head: &mut ObjectHead, known: Option<&Entry>) {
    if head.checksum_crc32c.is_some() {
        return;
    }
    let Some(known) = known.filter(|entry| entry.etag.as_deref() == Some(head.etag.as_str())) else {
        return;
    };
    if let Some(details) = &known.details {
        head.checksum_crc32c = details.checksum_crc32c.clone();
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_metadata;
