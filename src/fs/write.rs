//! Writing files: open for writing, create, write, truncate, and the upload on close and fsync.
//!
//! Owns the table of staged files by path (every handle on a path shares one staged file, so
//! writers and readers on this mount see one file), the open(2) flag rules (O_TRUNC, O_APPEND,
//! O_EXCL), what `stat` shows of a file being written, and what happens when its last handle
//! closes: once its content is in S3 the staged copy is dropped; if the upload failed, it is
//! retried in the background and, failing that, left staged for the next mount. The staged file
//! itself (blocks, journal, upload) is `writeback`'s.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::metadata::MetadataCache;
use super::{
    Attr, AttrChange, Creator, Details, Entry, FsError, Handle, Kind, Opened, S3Fs, lock, posix,
    set_attrs_view,
};
use crate::cache::ObjectVersion;
use crate::writeback::{self, RecoveryReport, StagedFile, WriteContext};

/// First wait before retrying an upload that failed after the last handle closed; doubled up to
/// [`RETRY_MAX`] while it keeps failing (the server may be down for a while).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How many times an open for writing stages a path whose staged file other writers keep
/// uploading and dropping under it (each time is a new HEAD); in practice once or twice.
const STAGE_ATTEMPTS: usize = 4;

/// What open(2) flags ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
    pub exclusive: bool,
    /// The process opening (its thread group id), when known.
    pub opener: Option<u32>,
}

impl OpenMode {
    pub fn from_flags(flags: i32) -> Self {
        let access = flags & libc::O_ACCMODE;
        let write = access == libc::O_WRONLY || access == libc::O_RDWR;
        Self {
            write,
            // O_TRUNC with O_RDONLY is undefined in POSIX: it truncates nothing here.
            truncate: write && flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
            exclusive: flags & libc::O_EXCL != 0,
            opener: None,
        }
    }
}

/// A staged file with what the table needs to know without waiting for its lock (an upload
/// holds it for as long as it takes).
pub(super) struct StagedEntry {
    pub(super) file: tokio::sync::Mutex<StagedFile>,
    path: Mutex<Arc<str>>,
    /// What `stat` shows, updated after every change.
    seen: Mutex<Entry>,
    handles: Mutex<Holders>,
    /// Unlinked or replaced by a rename: never uploaded again, dropped at the last close. A
    /// channel, so that a background upload can be cut short the moment it happens.
    unlinked: watch::Sender<bool>,
}

impl StagedEntry {
    fn new(file: StagedFile, path: Arc<str>) -> Arc<Self> {
        let seen = entry_of(&file);
        Arc::new(Self {
            file: tokio::sync::Mutex::new(file),
            path: Mutex::new(path),
            seen: Mutex::new(seen),
            handles: Mutex::new(Holders::default()),
            unlinked: watch::Sender::new(false),
        })
    }

    pub(super) fn seen(&self) -> Entry {
        lock(&self.seen).clone()
    }

    pub(super) fn path(&self) -> Arc<str> {
        lock(&self.path).clone()
    }

    pub(super) fn set_path(&self, path: Arc<str>) {
        *lock(&self.path) = path;
    }

    pub(super) fn update_seen(&self, file: &StagedFile) {
        *lock(&self.seen) = entry_of(file);
    }

    pub(super) fn mark_unlinked(&self) {
        self.unlinked.send_replace(true);
    }

    fn is_unlinked(&self) -> bool {
        *self.unlinked.borrow()
    }

    /// Resolves once the file is unlinked (at once if it is already).
    async fn until_unlinked(&self) {
        let mut unlinked = self.unlinked.subscribe();
        // An error means the sender is gone, which `self` rules out.
        let _ = unlinked.wait_for(|&unlinked| unlinked).await;
    }

    pub(super) fn has_handles(&self) -> bool {
        lock(&self.handles).count > 0
    }

    /// Adds a handle, unless the entry was dropped for good (its staged copy is gone: the
    /// caller opens the path afresh).
    fn acquire_handle(&self) -> bool {
        let mut holders = lock(&self.handles);
        if holders.dropped {
            return false;
        }
        holders.count += 1;
        true
    }

    /// Whether a handle is open on it: a writer, or a reader of what writers left.
    pub(super) fn is_held(&self) -> bool {
        lock(&self.handles).count > 0
    }

    /// Removes a handle; true when it was the last.
    fn release_handle(&self) -> bool {
        let mut holders = lock(&self.handles);
        holders.count = holders.count.saturating_sub(1);
        holders.count == 0
    }

    /// Marks the entry dropped for good if no handle holds it, so that none can be added once
    /// its staged copy is discarded; false when a handle holds it (its close settles it). The
    /// one place that decides, so an open racing a background upload either gets its handle
    /// on a file that stays, or finds the entry gone.
    pub(super) fn drop_unless_held(&self) -> bool {
        let mut holders = lock(&self.handles);
        holders.dropped |= holders.count == 0;
        holders.dropped
    }
}

fn entry_of(file: &StagedFile) -> Entry {
    let metadata = file.metadata();
    let kind = if posix::is_symlink(&metadata.user) {
        Kind::Symlink
    } else {
        Kind::File
    };
    Entry {
        kind,
        size: file.size(),
        mtime: file.mtime(),
        etag: file.etag().map(str::to_owned),
        details: Some(Arc::new(Details {
            metadata: metadata.clone(),
            ..Details::default()
        })),
    }
}

/// The handles of a staged entry, and whether it was dropped for good.
#[derive(Debug, Default)]
pub(super) struct Holders {
    count: usize,
    dropped: bool,
}

/// A handle on a staged file.
pub(super) struct StagedHandle {
    ino: u64,
    entry: Arc<StagedEntry>,
    append: bool,
    writable: bool,
    opener: Option<u32>,
}

/// Staged files by path. A std mutex, never held across an await.
#[derive(Clone, Default)]
pub(super) struct StagedTable {
    by_path: Arc<Mutex<HashMap<Arc<str>, Arc<StagedEntry>>>>,
}

impl StagedTable {
    pub(super) fn get(&self, path: &str) -> Option<Arc<StagedEntry>> {
        lock(&self.by_path).get(path).cloned()
    }

    /// Inserts `entry` at `path` unless one is there already; returns the one that is.
    fn insert_or_get(&self, path: Arc<str>, entry: Arc<StagedEntry>) -> Arc<StagedEntry> {
        lock(&self.by_path).entry(path).or_insert(entry).clone()
    }

    /// Removes the entry at `path` if it is `entry`.
    fn remove_if(&self, path: &str, entry: &Arc<StagedEntry>) {
        let mut table = lock(&self.by_path);
        if table.get(path).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.remove(path);
        }
    }

    /// Takes a settled `entry` out of the table (where it still is), once `record` has told the
    /// metadata cache what its path holds now; both under the table's lock, so that a lookup
    /// finds the staged file or what was recorded, never neither. Finding neither, it would take
    /// the cache's older entry: a `stat` right after a close (which races the release the kernel
    /// sends after it) showed the size from before the close.
    fn remove_settled(&self, entry: &Arc<StagedEntry>, record: impl FnOnce(&str)) {
        let mut table = lock(&self.by_path);
        let path = entry.path();
        record(&path);
        if table.get(&path).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.remove(&path);
        }
    }

    /// Whether `entry` is the one at `path` (a settle takes it out once its last handle went).
    pub(super) fn holds(&self, path: &str, entry: &Arc<StagedEntry>) -> bool {
        lock(&self.by_path)
            .get(path)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Moves `entry` from `from` to `to`, in one hold of the table: only if it is still at
    /// `from` and still has a name (an unlink, or a rename onto `from`, may have taken it out
    /// meanwhile; put at `to`, such an entry would take the writes of the next writer of `to`
    /// and never upload them). Returns whether it moved, and the entry it displaced at `to`.
    pub(super) fn move_entry(
        &self,
        from: &str,
        to: Arc<str>,
        entry: &Arc<StagedEntry>,
    ) -> (bool, Option<Arc<StagedEntry>>) {
        let mut table = lock(&self.by_path);
        let at_from = table.get(from).is_some_and(|e| Arc::ptr_eq(e, entry));
        if !at_from || entry.is_unlinked() {
            return (false, None);
        }
        table.remove(from);
        entry.set_path(to.clone());
        let displaced = table.insert(to, entry.clone());
        (true, displaced.filter(|displaced| !Arc::ptr_eq(displaced, entry)))
    }

    pub(super) fn remove(&self, path: &str) -> Option<Arc<StagedEntry>> {
        lock(&self.by_path).remove(path)
    }

    /// Names of the staged files directly in directory `dir`.
    pub(super) fn children(&self, dir: &str) -> BTreeSet<String> {
        lock(&self.by_path)
            .keys()
            .filter_map(|path| match path.rsplit_once('/') {
                Some((parent, name)) if parent == dir => Some(name.to_owned()),
                None if dir.is_empty() => Some(path.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Entries at `dir`'s descendants, with their paths.
    pub(super) fn under(&self, dir: &str) -> Vec<(Arc<str>, Arc<StagedEntry>)> {
        let prefix = format!("{dir}/");
        lock(&self.by_path)
            .iter()
            .filter(|(path, _)| path.starts_with(&prefix))
            .map(|(path, entry)| (path.clone(), entry.clone()))
            .collect()
    }

    pub(super) fn all(&self) -> Vec<Arc<StagedEntry>> {
        lock(&self.by_path).values().cloned().collect()
    }
}

impl S3Fs {
    /// What the gauges of `metrics` show now: cache use, read-ahead memory, staged files.
    /// Never waits: a staged file busy being written or uploaded counts as pending, with the
    /// size `stat` last showed.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let mut gauges = crate::metrics::Gauges {
            read_ahead_budget_bytes: self.budget.total_bytes(),
            read_ahead_bytes: self
                .budget
                .total_bytes()
                .saturating_sub(self.budget.available_bytes()),
            ..Default::default()
        };
        if let Some(disk) = self.reader.disk() {
            gauges.cache_bytes = disk.size();
            gauges.cache_max_bytes = disk.max_bytes();
        }
        for entry in self.staged.all() {
            if entry.is_unlinked() {
                continue;
            }
            gauges.staged_files += 1;
            let (pending, size) = match entry.file.try_lock() {
                Ok(file) => (file.is_dirty(), file.size()),
                Err(_) => (true, lock(&entry.seen).size),
            };
            if pending {
                gauges.pending_uploads += 1;
                gauges.pending_upload_bytes += size;
            }
        }
        gauges
    }

    /// Creates and opens a file (open with O_CREAT). An existing file is opened instead, unless
    /// O_EXCL. The new file exists on this mount at once, in S3 from its first close.
    pub async fn create(&self, parent: u64, name: &OsStr, flags: i32) -> Result<(Attr, Opened), FsError> {
        self.create_as(parent, name, flags, None, None).await
    }

    /// The attributes of a file `create` opened; the handle is released when they cannot be had
    /// (an unlink came in between), as the kernel, getting an error, never releases it.
    async fn attr_of_opened(&self, ino: u64, opened: Opened) -> Result<(Attr, Opened), FsError> {
        match self.getattr(ino).await {
            Ok(attr) => Ok((attr, opened)),
            Err(error) => {
                self.release(opened.handle).await;
                Err(error)
            }
        }
    }

    /// [`S3Fs::create`] on behalf of process `opener` (see [`S3Fs::flush_from`]), the new file
    /// getting `creator`'s owner and mode where they differ from the mount's defaults.
    pub async fn create_as(
        &self,
        parent: u64,
        name: &OsStr,
        flags: i32,
        opener: Option<u32>,
        creator: Option<Creator>,
    ) -> Result<(Attr, Opened), FsError> {
        let ctx = self.writes()?.clone();
        let (path, pass) = self.pass_for_child(parent, name).await?;
        let path: Arc<str> = Arc::from(path);
        let mode = OpenMode {
            opener,
            ..OpenMode::from_flags(flags)
        };
        if let Some(existing) = self.resolve(&path).await? {
            if mode.exclusive {
                return Err(FsError::Exists);
            }
            if existing.kind == Kind::Dir {
                return Err(FsError::IsADirectory);
            }
            let ino = lock(&self.inodes).remember(&path);
            // The open takes a pass of its own (holding this one, it could wait behind a rename
            // that waits for this one).
            drop(pass);
            let opened = self.open_as(ino, flags, opener).await?;
            return self.attr_of_opened(ino, opened).await;
        }
        let key = self.config.root.file_key(&path);
        let metadata = self.creation_metadata(creator, Kind::File, content_type_of(&path));
        let file = StagedFile::new_empty(&ctx, key, metadata)?;
        let entry = StagedEntry::new(file, path.clone());
        let stored = self.staged.insert_or_get(path.clone(), entry.clone());
        if !Arc::ptr_eq(&stored, &entry) {
            // Another create of the same name won the race.
            entry.file.lock().await.discard(&ctx);
            if mode.exclusive {
                return Err(FsError::Exists);
            }
        }
        self.metadata.changed_unknown(&path);
        let ino = lock(&self.inodes).remember(&path);
        let Some(opened) = self.open_staged(ino, stored.clone(), mode).await? else {
            // The file of a create that won the race was uploaded and dropped just now: it
            // exists in S3, and opens as any existing file.
            drop(pass);
            let opened = self.open_as(ino, flags, opener).await?;
            return self.attr_of_opened(ino, opened).await;
        };
        let seen = stored.seen();
        set_attrs_view(&mut lock(&self.inodes), ino, &seen);
        Ok((self.attr(ino, &seen), opened))
    }

    /// mknod(2) of a regular file: an empty file, created in S3 at once.
    pub async fn mknod_file(
        &self,
        parent: u64,
        name: &OsStr,
        creator: Option<Creator>,
    ) -> Result<Attr, FsError> {
        let flags = libc::O_WRONLY | libc::O_EXCL;
        let (attr, opened) = self.create_as(parent, name, flags, None, creator).await?;
        let flushed = self.flush(opened.handle).await;
        self.release(opened.handle).await;
        flushed.map(|()| attr)
    }

    /// Stages the object at `path` (not downloaded: blocks come when needed) and opens it.
    pub(super) async fn open_for_write(
        &self,
        ino: u64,
        path: &Arc<str>,
        mode: OpenMode,
    ) -> Result<Opened, FsError> {
        let ctx = self.writes()?.clone();
        let key = self.config.root.file_key(path);
        // Another writer on this mount may stage the path at the same time, and its file may be
        // uploaded and dropped before we get a handle on it: then stage the version it made.
        for _ in 0..STAGE_ATTEMPTS {
            let head = self.head_for_open(path, &key).await?;
            let object = ObjectVersion {
                key: key.clone(),
                etag: head.etag,
                size: head.size,
                version_id: head.version_id.clone(),
            };
            let file =
                StagedFile::from_object(&ctx, object, head.last_modified, mode.truncate, head.metadata)?;
            let entry = StagedEntry::new(file, path.clone());
            let stored = self.staged.insert_or_get(path.clone(), entry.clone());
            if !Arc::ptr_eq(&stored, &entry) {
                entry.file.lock().await.discard(&ctx);
            }
            if let Some(opened) = self.open_staged(ino, stored.clone(), mode).await? {
                return Ok(opened);
            }
            self.staged.remove_if(path, &stored);
        }
        tracing::warn!(%key, "gave up staging a file that other writers kept replacing");
        Err(FsError::BadHandle)
    }

    /// A new handle on a staged file; `None` when the entry was dropped meanwhile (its upload
    /// settled): the caller opens the path afresh.
    pub(super) async fn open_staged(
        &self,
        ino: u64,
        entry: Arc<StagedEntry>,
        mode: OpenMode,
    ) -> Result<Option<Opened>, FsError> {
        if !entry.acquire_handle() {
            return Ok(None);
        }
        if mode.truncate {
            let ctx = self.writes()?;
            let mut file = entry.file.lock().await;
            let truncated = file.truncate(0);
            entry.update_seen(&file);
            if let Err(error) = truncated {
                drop(file);
                if entry.release_handle() {
                    self.release_staged_entry(ctx.clone(), entry).await;
                }
                return Err(error.into());
            }
        }
        // The kernel's pages now follow the staged file: older read handles get ESTALE rather
        // than mix their version's pages in. One of their reads may be answered just as this
        // open empties the kernel's cache, and land after it: then the cache is suspect until
        // the next open empties it again.
        let reading_older = self.has_read_handles(ino);
        if let Some(view) = lock(&self.inodes).kernel_view(ino) {
            view.follow_staged_file(reading_older);
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let staged = StagedHandle {
            ino,
            entry,
            append: mode.append,
            writable: mode.write,
            opener: mode.opener,
        };
        lock(&self.files).insert(handle, Handle::Staged(Arc::new(staged)));
        Ok(Some(Opened {
            handle,
            keep_cache: false,
        }))
    }

    pub(super) async fn read_staged(
        &self,
        staged: &StagedHandle,
        offset: u64,
        size: u32,
    ) -> Result<Bytes, FsError> {
        let ctx = self.writes()?;
        let mut file = staged.entry.file.lock().await;
        Ok(file.read(ctx, offset, u64::from(size)).await?)
    }

    /// fstat: attributes through an open handle, which for a staged file hold even after its
    /// name is gone (unlinked or replaced while open).
    pub async fn getattr_handle(&self, ino: u64, handle: u64) -> Result<Attr, FsError> {
        match self.handle(handle) {
            Ok(Handle::Staged(staged)) if staged.entry.is_unlinked() => {
                Ok(self.attr(ino, &staged.entry.seen()))
            }
            _ => self.getattr(ino).await,
        }
    }

    /// Writes `data` at `offset` (at the end, for a handle opened with O_APPEND).
    pub async fn write(&self, handle: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.write_owned(handle, offset, data.to_vec()).await
    }

    /// [`S3Fs::write`] of a buffer the caller gives away (the FUSE adapter's copy of a request).
    pub async fn write_owned(&self, handle: u64, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        let Handle::Staged(staged) = self.handle(handle)? else {
            return Err(FsError::BadHandle);
        };
        if !staged.writable {
            return Err(FsError::BadHandle);
        }
        let ctx = self.writes()?;
        let mut file = staged.entry.file.lock().await;
        let offset = if staged.append { file.size() } else { offset };
        let len = data.len() as u32;
        let written = file.write(ctx, offset, data).await;
        staged.entry.update_seen(&file);
        if let Some(view) = lock(&self.inodes).kernel_view(staged.ino) {
            view.written_through();
        }
        written?;
        Ok(len)
    }

    /// close(2) of one descriptor, and fsync: uploads the file if it changed. An error here is
    /// the caller's to see (EIO); the staged data stays for a retry.
    pub async fn flush(&self, handle: u64) -> Result<(), FsError> {
        match self.handle(handle)? {
            Handle::Read(_) => Ok(()),
            Handle::Staged(staged) => self.upload_staged(&staged.entry, staged.ino).await,
        }
    }

    /// A flush sent for process `caller`. Only the process that opened the handle uploads: the
    /// others are children that inherited the descriptor and closed their copy (every exec in a
    /// multi-threaded writer does), and uploading then would send a half-written file. What they
    /// wrote is uploaded by the opener's close, or at the last close (release) at the latest.
    pub async fn flush_from(&self, handle: u64, caller: Option<u32>) -> Result<(), FsError> {
        if let Handle::Staged(staged) = self.handle(handle)?
            && let (Some(opener), Some(caller)) = (staged.opener, caller)
            && opener != caller
        {
            return Ok(());
        }
        self.flush(handle).await
    }

    pub async fn fsync(&self, handle: u64) -> Result<(), FsError> {
        self.flush(handle).await
    }

    /// Sets the size of a file (truncate, ftruncate).
    pub async fn setattr(&self, ino: u64, size: Option<u64>, handle: Option<u64>) -> Result<Attr, FsError> {
        self.setattr_all(ino, size, &AttrChange::default(), handle).await
    }

    /// setattr: the size (truncate), then mode, owner and times, kept in the object's metadata
    /// (`headers`); with `posix_metadata` off those are accepted and not kept. The kernel has
    /// checked the caller may make the change (`default_permissions`).
    pub async fn setattr_all(
        &self,
        ino: u64,
        size: Option<u64>,
        change: &AttrChange,
        handle: Option<u64>,
    ) -> Result<Attr, FsError> {
        if let Some(size) = size {
            self.writes()?;
            match handle.map(|h| self.handle(h)) {
                Some(Ok(Handle::Staged(staged))) => self.truncate_entry(&staged.entry, size).await?,
                _ => self.truncate_path(ino, size).await?,
            }
        }
        if !change.is_empty() && self.config.posix_metadata.is_kept() {
            let changed = self
                .change_headers(ino, |metadata, kind, shown| change.apply(metadata, kind, shown))
                .await?;
            let attr = self.attr(ino, &changed);
            super::set_attrs_view(&mut lock(&self.inodes), ino, &changed);
            return Ok(attr);
        }
        match handle {
            Some(handle) => self.getattr_handle(ino, handle).await,
            None => self.getattr(ino).await,
        }
    }

    /// truncate(2) by path: through a handle of our own, so it is uploaded like any close.
    async fn truncate_path(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let flags = libc::O_WRONLY | if size == 0 { libc::O_TRUNC } else { 0 };
        let opened = self.open(ino, flags).await?;
        let Handle::Staged(staged) = self.handle(opened.handle)? else {
            return Err(FsError::BadHandle);
        };
        let mut result = self.truncate_entry(&staged.entry, size).await;
        if result.is_ok() {
            result = self.flush(opened.handle).await;
        }
        self.release(opened.handle).await;
        result
    }

    async fn truncate_entry(&self, entry: &StagedEntry, size: u64) -> Result<(), FsError> {
        let mut file = entry.file.lock().await;
        let truncated = file.truncate(size);
        entry.update_seen(&file);
        Ok(truncated?)
    }

    /// Uploads a staged file if it changed, and records what S3 now holds.
    pub(super) async fn upload_staged(&self, entry: &Arc<StagedEntry>, ino: u64) -> Result<(), FsError> {
        let mut file = entry.file.lock().await;
        self.upload_held(entry, &mut file, ino).await
    }

    /// [`S3Fs::upload_staged`] of a file whose lock the caller holds.
    pub(super) async fn upload_held(
        &self,
        entry: &StagedEntry,
        file: &mut StagedFile,
        ino: u64,
    ) -> Result<(), FsError> {
        let ctx = self.writes()?;
        if entry.is_unlinked() || !file.is_dirty() {
            return Ok(());
        }
        let uploaded = file.upload(ctx).await;
        entry.update_seen(file);
        if let Err(error) = uploaded {
            tracing::warn!(key = %file.key(), %error, "upload failed; the data stays staged for a retry");
            return Err(error.into());
        }
        let seen = entry.seen();
        if let Some(view) = lock(&self.inodes).kernel_view(ino) {
            // The kernel's pages hold what was written through it: this very version, unless a
            // read of an older one may have slipped in (then the next open empties them).
            view.attrs = Some(seen.fingerprint());
            view.uploaded_as(seen.fingerprint());
        }
        Ok(())
    }

    pub(super) async fn release_staged(&self, staged: Arc<StagedHandle>) {
        let Some(ctx) = self.writes.clone() else {
            return;
        };
        if staged.entry.release_handle() {
            self.release_staged_entry(ctx, staged.entry.clone()).await;
        }
    }

    /// The last handle of `entry` closed: drop the staged copy once S3 has the content, or keep
    /// trying to upload it in the background.
    async fn release_staged_entry(&self, ctx: Arc<WriteContext>, entry: Arc<StagedEntry>) {
        let settled = settle(&ctx, &self.staged, &self.metadata, &entry).await;
        if !settled {
            tokio::spawn(retry_upload(
                ctx,
                self.staged.clone(),
                self.metadata.clone(),
                entry,
            ));
        }
    }

    /// Deals with the staged files an earlier run left (see [`writeback::recover`]). Call once,
    /// before the mount serves anything.
    pub async fn recover(&self) -> std::io::Result<RecoveryReport> {
        match &self.writes {
            Some(ctx) => writeback::recover(ctx).await,
            None => Ok(RecoveryReport::default()),
        }
    }

    /// Uploads every staged file that differs from S3 (a clean unmount, SIGTERM). Returns how
    /// many could not be uploaded: they stay staged, and the next mount uploads them.
    pub async fn drain_uploads(&self) -> usize {
        let Some(ctx) = self.writes.clone() else {
            return 0;
        };
        let mut failed = 0;
        let mut server_down = false;
        for entry in self.staged.all() {
            let mut file = entry.file.lock().await;
            if entry.is_unlinked() || !file.is_dirty() {
                continue;
            }
            if server_down {
                // One upload spent its retries on a server that does not answer: trying each
                // of the others for as long would keep the exit waiting for minutes.
                failed += 1;
                tracing::error!(key = %file.key(),
                    "not uploaded at exit (S3 is unreachable); the data stays staged and the next mount with this cache directory uploads it");
                continue;
            }
            match file.upload(&ctx).await {
                Ok(()) => tracing::info!(key = %file.key(), "uploaded before exit"),
                Err(error) => {
                    failed += 1;
                    server_down = error.is_unreachable();
                    tracing::error!(key = %file.key(), %error,
                        "upload failed at exit; the data stays staged and the next mount with this cache directory uploads it");
                }
            }
        }
        failed
    }
}

/// At the last close: uploads what is left, then drops the staged copy and remembers the object.
/// Returns false if the upload failed (the entry stays, for a retry).
async fn settle(
    ctx: &WriteContext,
    table: &StagedTable,
    metadata: &MetadataCache,
    entry: &Arc<StagedEntry>,
) -> bool {
    let mut file = entry.file.lock().await;
    if entry.has_handles() {
        return true; // Reopened meanwhile: its own close settles it.
    }
    if entry.is_unlinked() {
        // A handle opened since is the unlink's to keep (`drop_staged` marks it deleted).
        if entry.drop_unless_held() {
            file.discard(ctx);
        }
        return true;
    }
    if file.is_dirty() {
        // An unlink ends the upload at once: a file nobody can name is not worth a minute of
        // retries, and its staging space must come back now (a full disk waits for it).
        let uploaded = tokio::select! {
            uploaded = file.upload(ctx) => uploaded,
            () = entry.until_unlinked() => {
                if entry.drop_unless_held() {
                    file.discard(ctx);
                }
                return true;
            }
        };
        entry.update_seen(&file);
        if let Err(error) = uploaded {
            tracing::warn!(key = %file.key(), %error, "upload after the last close failed; retrying in the background");
            return false;
        }
    }
    if !entry.drop_unless_held() {
        return true; // Reopened during the upload: the file stays, clean, for that handle.
    }
    table.remove_settled(entry, |path| {
        metadata.changed_to(path.to_owned(), Some(entry.seen()));
    });
    file.discard(ctx);
    true
}

/// Retries the upload of a closed file with growing pauses until it succeeds, the file is
/// reopened or unlinked, or the mount ends (then `drain_uploads` and the next mount take over).
async fn retry_upload(
    ctx: Arc<WriteContext>,
    table: StagedTable,
    metadata: MetadataCache,
    entry: Arc<StagedEntry>,
) {
    let mut pause = RETRY_FIRST;
    loop {
        // An unlink settles it at once (its staged copy is dropped), without waiting the pause.
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = entry.until_unlinked() => {}
        }
        if settle(&ctx, &table, &metadata, &entry).await {
            return;
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The Content-Type of a new object, from its name's extension (`core.css`: `text/css`).
pub(super) fn content_type_of(path: &str) -> Option<String> {
    mime_guess::from_path(path).first_raw().map(str::to_owned)
}
