//! One file being written: its staged copy on local disk, and how that copy becomes an object.
//!
//! A staged file may start from an existing object (its *base*) without downloading it: the data
//! file is sparse, and a 1 MiB block of the base is fetched (through the block cache) only when
//! a write covers part of it or a read needs it. On upload, parts made only of untouched base
//! blocks are copied on the server (UploadPartCopy) instead of being downloaded and sent back,
//! so appending to a large object costs about what was appended.
//!
//! Owns the block bookkeeping (which blocks are local), the journal contents at each step, and
//! the upload of one file. It does not know paths, inodes or handles (`fs` does), nor the
//! on-disk layout of the staging area (`staging` does).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::cache::{BLOCK_SIZE, BlockReader, ObjectVersion};
use crate::object::metadata::posix_headers;
use crate::object::{ObjectClient, ObjectError, ObjectHead, ObjectMetadata, PutOptions};
use crate::staging::{
    BaseRecord, JournalRecord, JournalState, Leftover, PageCacheEvictor, StagedFiles, Staging,
    current_boot_id,
};
use crate::upload::{
    self, CopySource, MAX_OBJECT, PlannedPart, UploadBudget, UploadConfig, UploadError, part_range,
    plan_parts,
};

/// A multipart upload begun while a new file is still being written in order: each part the
/// writer has moved past is sent at once, so the upload overlaps the writing and a close only
/// sends the rest.
struct EarlyUpload {
    upload_id: String,
    /// The next part (index from 0) to consider sending.
    next: u64,
    sent: BTreeMap<u64, SentPart>,
    /// Parts in flight at once (`concurrency`): every eligible part is queued at once and takes
    /// a slot when one frees, so the upload keeps going however fast or slow the writer is.
    slots: Arc<Semaphore>,
    /// Drops parts from the page cache once they are in S3.
    evictor: Arc<PageCacheEvictor>,
}

struct SentPart {
    range: Range<u64>,
    /// Written to (or cut) after it was read: sent again at close.
    stale: bool,
    /// Running while `Some`.
    task: Option<JoinHandle<Result<String, UploadError>>>,
    etag: Option<String>,
}

impl SentPart {
    /// Waits for the part's request, if it still runs; a failure makes it stale.
    async fn settle(&mut self) {
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(etag)) => self.etag = Some(etag),
                _ => self.stale = true,
            }
        }
    }
}

/// What uploads and block fetches of staged files need; one per mount.
pub struct WriteContext {
    pub client: Arc<dyn ObjectClient>,
    pub reader: Arc<BlockReader>,
    pub staging: Staging,
    pub upload: UploadConfig,
    pub budget: Arc<UploadBudget>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The staging disk failed (ENOSPC above all): the errno is the disk's.
    #[error("staging file: {0}")]
    Staging(#[from] io::Error),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// A write or truncate past S3's largest object.
    #[error("{0} bytes is more than the largest S3 object")]
    TooLarge(u64),
}

impl WriteError {
    /// Whether S3 could not be reached or did not answer in time (not a throttled answer: a
    /// server that throttles does answer, and the next file may go through).
    pub fn is_unreachable(&self) -> bool {
        match self {
            WriteError::Object(error) | WriteError::Upload(UploadError::Object(error)) => {
                matches!(error, ObjectError::Unreachable(_) | ObjectError::TimedOut(_))
            }
            WriteError::Staging(_) | WriteError::Upload(_) | WriteError::TooLarge(_) => false,
        }
    }
}

/// The object a staged file started from.
#[derive(Clone, Debug)]
struct Base {
    version: ObjectVersion,
    /// The first `len` bytes of the file are the base's, except in local blocks.
    len: u64,
    /// Opened with O_TRUNC: the object is only what the file replaces, none of its content was
    /// ever the file's (so the file has not been in S3, as far as a rename is concerned).
    replaced_only: bool,
}

/// A file being written, staged on local disk. Not synchronised: the caller holds it in a mutex.
pub struct StagedFile {
    key: String,
    files: StagedFiles,
    size: u64,
    base: Option<Base>,
    /// For each block of the base: whether the data file holds it (written, or fetched).
    local: Vec<bool>,
    /// Differs from the object in S3: a close must upload it.
    dirty: bool,
    /// A close began uploading the current content (the journal says `closing`).
    closing: bool,
    /// The ETag of the object that holds exactly this content (`None` while dirty).
    etag: Option<String>,
    mtime: SystemTime,
    /// What the upload sends besides the bytes: the object's own metadata for a file opened from
    /// an object (a rewrite keeps it), changed by xattr and attribute changes on the mount.
    metadata: ObjectMetadata,
    early: Option<EarlyUpload>,
    /// The multipart upload in progress (early or at close), as the journal records it.
    multipart: Option<String>,
    /// Unlinked or replaced while open: kept for its handles, never uploaded.
    deleted: bool,
    /// The data file is on disk as it is now (fsynced since the last change): a journal saying
    /// so lets a recovery after a power loss trust it.
    synced: bool,
}

impl StagedFile {
    /// A new, empty file for `key`: dirty, so closing it creates the object even if nothing
    /// was written.
    pub fn new_empty(ctx: &WriteContext, key: String, metadata: ObjectMetadata) -> Result<Self, WriteError> {
        let files = ctx.staging.create(&JournalRecord {
            key: key.clone(),
            base: None,
            local_blocks: Vec::new(),
            state: JournalState::Dirty,
            upload_id: None,
            boot_id: current_boot_id().map(str::to_owned),
            synced: false,
            metadata: Some(metadata.clone()),
        })?;
        Ok(Self {
            key,
            files,
            size: 0,
            base: None,
            local: Vec::new(),
            dirty: true,
            closing: false,
            etag: None,
            mtime: SystemTime::now(),
            metadata,
            early: None,
            multipart: None,
            deleted: false,
            synced: false,
        })
    }

    /// A file starting as `object` (nothing fetched yet), or empty and dirty when `truncate`;
    /// either way its upload carries `metadata` (the object's own, so a rewrite keeps it).
    pub fn from_object(
        ctx: &WriteContext,
        object: ObjectVersion,
        mtime: SystemTime,
        truncate: bool,
        metadata: ObjectMetadata,
    ) -> Result<Self, WriteError> {
        let base = Base {
            // Truncated at open: none of the object's bytes are the file's, but the object is
            // still the one it replaces (a recovery checks it is still there, unchanged).
            len: if truncate { 0 } else { object.size },
            version: object,
            replaced_only: truncate,
        };
        let mut metadata = metadata;
        if truncate {
            metadata.user.remove(posix_headers::MTIME);
        }
        let blocks = base.len.div_ceil(BLOCK_SIZE) as usize;
        let files = ctx.staging.create(&JournalRecord {
            key: base.version.key.clone(),
            base: Some(base_record(&base)),
            local_blocks: Vec::new(),
            state: if truncate {
                JournalState::Dirty
            } else {
                JournalState::Clean
            },
            upload_id: None,
            boot_id: current_boot_id().map(str::to_owned),
            synced: false,
            metadata: Some(metadata.clone()),
        })?;
        files.data.set_len(base.len)?;
        Ok(Self {
            key: base.version.key.clone(),
            files,
            size: base.len,
            etag: (!truncate).then(|| base.version.etag.clone()),
            base: Some(base),
            local: vec![false; blocks],
            // Emptied: differs from the object, so a close uploads it even if nothing is written.
            dirty: truncate,
            closing: false,
            mtime: if truncate { SystemTime::now() } else { mtime },
            metadata,
            early: None,
            multipart: None,
            deleted: false,
            synced: false,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn mtime(&self) -> SystemTime {
        self.mtime
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The ETag of the object with exactly this content, if there is one.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Whether this content has ever been in S3 under the file's key.
    pub fn exists_remotely(&self) -> bool {
        self.base.as_ref().is_some_and(|base| !base.replaced_only) || self.etag.is_some()
    }

    /// Writes `data` at `offset`. Base blocks the write covers only in part are fetched first.
    pub async fn write(&mut self, ctx: &WriteContext, offset: u64, data: Vec<u8>) -> Result<(), WriteError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_OBJECT)
            .ok_or(WriteError::TooLarge(offset.saturating_add(data.len() as u64)))?;
        if data.is_empty() {
            return Ok(());
        }
        let mut partial: Vec<u64> = [offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE]
            .into_iter()
            .filter(|&block| self.needs_fetch(block) && !self.write_covers_base_of(block, offset..end))
            .collect();
        partial.dedup();
        // Blocks fetched here are local from now on: the journal must say so, or a recovery
        // would fetch them again over this write.
        let fetched = !partial.is_empty();
        self.fetch_blocks(ctx, partial).await?;
        let file = self.files.data.clone();
        blocking(move || file.write_all_at(&data, offset)).await?;
        self.mark_sent_stale(offset..end);
        let mut newly_local = false;
        for block in offset / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE) {
            if let Some(local) = self.local.get_mut(block as usize) {
                newly_local |= !*local;
                *local = true;
            }
        }
        self.size = self.size.max(end);
        self.changed(newly_local || fetched)?;
        self.send_early_parts(ctx).await;
        Ok(())
    }

    /// Up to `len` bytes at `offset`, fetching base blocks the data file does not hold yet.
    pub async fn read(&mut self, ctx: &WriteContext, offset: u64, len: u64) -> Result<Bytes, WriteError> {
        let end = self.size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let missing: Vec<u64> = (offset / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE))
            .filter(|&block| self.needs_fetch(block))
            .collect();
        let fetched = !missing.is_empty();
        self.fetch_blocks(ctx, missing).await?;
        if fetched {
            self.record_journal(false)?;
        }
        let file = self.files.data.clone();
        let data = blocking(move || {
            let mut buffer = vec![0; (end - offset) as usize];
            file.read_exact_at(&mut buffer, offset)?;
            Ok(buffer)
        })
        .await?;
        Ok(Bytes::from(data))
    }

    /// Sets the size: shorter drops the tail (of the base too), longer adds zeros.
    pub fn truncate(&mut self, size: u64) -> Result<(), WriteError> {
        if size > MAX_OBJECT {
            return Err(WriteError::TooLarge(size));
        }
        if size == self.size {
            return Ok(());
        }
        if let Some(base) = &mut self.base {
            base.len = base.len.min(size);
        }
        self.files.data.set_len(size)?;
        self.mark_sent_stale(size.min(self.size)..u64::MAX);
        if let Some(early) = &mut self.early {
            early.next = early
                .sent
                .iter()
                .find(|(_, p)| p.range.end > size)
                .map_or(early.next, |(&i, _)| i);
        }
        self.size = size;
        self.changed(true)
    }

    /// Uploads the content if it differs from the object (a close or fsync). The journal says
    /// `closing` before the first request, so a crash from here on still uploads. On failure the
    /// file stays dirty and staged, for a retry.
    ///
    /// The journal and data reach the disk (fsync) before a multipart upload, which takes long
    /// enough for a power loss to matter; a single PutObject takes milliseconds, where three
    /// fsyncs would triple the cost of every small file, so for it the page cache suffices (a
    /// killed daemon is still covered).
    pub async fn upload(&mut self, ctx: &WriteContext) -> Result<(), WriteError> {
        if !self.dirty || self.deleted {
            return Ok(());
        }
        if !self.closing {
            // At once, before the fsync below (seconds for a large file): a daemon killed from
            // here on leaves a file the next mount of this boot uploads.
            self.closing = true;
            self.record_journal_or_warn(
                false,
                "a crash during this close leaves the file to the recovery folder",
            );
        }
        if !self.synced && !upload::is_single_put(self.size, &ctx.upload) {
            self.sync_to_disk().await;
        }
        crate::metrics::upload_started();
        let sent = self.send(ctx).await;
        crate::metrics::upload_finished(sent.is_ok(), self.size);
        self.became_object(sent?);
        self.record_journal_or_warn(false, "a crash now may upload this content again");
        Ok(())
    }

    /// Puts the data file and then a journal saying so on disk, so that even a power loss
    /// during the upload (a multipart one takes a while) leaves a file the next mount uploads.
    /// Best effort: without it, a recovery in another boot sends the file to the recovery
    /// folder rather than trust data that may be torn.
    async fn sync_to_disk(&mut self) {
        // A durable record fsyncs the data file before it writes the journal saying so.
        self.synced = true;
        let (files, record) = (self.files.clone(), self.journal_record());
        if let Err(error) = blocking(move || files.record(&record, true)).await {
            self.synced = false;
            tracing::warn!(key = %self.key, %error, "cannot put a staged file and its journal on disk before its upload");
        }
    }

    /// The object is now at `key` with ETag `etag` (a rename copied it there): the file follows.
    /// Only for a file that is not dirty.
    pub fn moved_to(&mut self, key: String, etag: String) -> Result<(), WriteError> {
        self.key = key;
        if let Some(base) = &mut self.base {
            base.version.key = self.key.clone();
            base.version.etag = etag.clone();
        }
        self.etag = Some(etag);
        self.record_journal(false)
    }

    /// Renames a file that was never uploaded: only the key it will be uploaded to changes, and
    /// the content type to `content_type` (a new object takes it from its name). What it
    /// replaced was at the old key, and goes with the rename; `replaces`, the object at the new
    /// key ([`object_replaced_at`]), is what it replaces now. That object becomes its base, of
    /// none of its bytes (as for a file truncated at open), so a recovery after a crash finds the
    /// object as the file left it and uploads the file over it: with no base, the object would
    /// look changed remotely, and a file whose close had begun would be set aside instead.
    pub fn rekey(
        &mut self,
        key: String,
        content_type: Option<String>,
        replaces: Option<ObjectVersion>,
    ) -> Result<(), WriteError> {
        self.key = key;
        self.base = replaces.map(|version| Base {
            version,
            len: 0,
            replaced_only: true,
        });
        self.local.clear();
        self.metadata.content_type = content_type;
        self.record_journal(false)
    }

    /// What the upload will send besides the bytes.
    pub fn metadata(&self) -> &ObjectMetadata {
        &self.metadata
    }

    /// Replaces the metadata the upload sends. On a dirty file that is all (the next upload
    /// carries it); on a clean one the caller changes the object too (a copy onto itself) and
    /// then says so with [`StagedFile::moved_to`].
    pub fn set_metadata(&mut self, metadata: ObjectMetadata) -> Result<(), WriteError> {
        self.metadata = metadata;
        self.record_journal(false)
    }

    /// A change of content makes the upload time the file's modification time: a time set
    /// earlier (utimensat, or the object's own `x-amz-meta-mtime`) no longer applies.
    fn drop_content_time(&mut self) {
        self.metadata.user.remove(posix_headers::MTIME);
    }

    /// Deletes the staged copy (the file was unlinked, or is in S3 and no longer open), and any
    /// upload begun early.
    pub fn discard(&mut self, ctx: &WriteContext) {
        self.files.remove();
        let multipart = self.multipart.take();
        if let Some(early) = self.early.take() {
            tokio::spawn(abort_early(ctx.client.clone(), self.key.clone(), early));
        } else if let Some(upload_id) = multipart {
            // A close's upload cut short (the file was unlinked meanwhile): no orphaned parts.
            let (client, key) = (ctx.client.clone(), self.key.clone());
            tokio::spawn(async move {
                if let Err(error) = client.abort_multipart(&key, &upload_id).await {
                    tracing::warn!(%key, %upload_id, %error, "could not abort a multipart upload cut short");
                }
            });
        }
    }

    /// The file lost its name while open (unlinked, or replaced by a rename): its handles keep
    /// it, whole (base blocks fetched now, before the object goes), and it is never uploaded,
    /// even by the next mount after a crash.
    pub async fn mark_deleted(&mut self, ctx: &WriteContext) -> Result<(), WriteError> {
        self.fetch_all(ctx).await?;
        self.deleted = true;
        self.record_journal(false)
    }

    /// Rebuilds a staged file from what an earlier run left, if its journal is readable.
    pub fn from_leftover(leftover: &Leftover, files: StagedFiles) -> Option<Self> {
        let record = leftover.record.as_ref()?;
        let size = files.data.metadata().ok()?.len();
        let base = record.base.as_ref().map(|base| Base {
            version: ObjectVersion {
                key: record.key.clone(),
                etag: base.etag.clone(),
                size: base.object_size,
                version_id: None,
            },
            len: base.len,
            replaced_only: false,
        });
        let blocks = base.as_ref().map_or(0, |b| b.len.div_ceil(BLOCK_SIZE)) as usize;
        let mut local = vec![false; blocks];
        for range in &record.local_blocks {
            for block in range.clone() {
                if let Some(slot) = local.get_mut(block as usize) {
                    *slot = true;
                }
            }
        }
        Some(Self {
            key: record.key.clone(),
            files,
            size,
            base,
            local,
            dirty: record.state != JournalState::Clean,
            closing: record.state == JournalState::Closing,
            etag: None,
            mtime: SystemTime::now(),
            metadata: record.metadata.clone().unwrap_or_default(),
            early: None,
            multipart: None,
            deleted: false,
            synced: record.synced,
        })
    }

    /// Whether the object at the file's key now (`head`) holds this very content: the same size, and
    /// the same bytes wherever the data file holds them (a block of the original object that was
    /// never fetched cannot be compared, and is taken to match). What a daemon killed after its
    /// upload completed, and before it could say so, leaves. Compared a part at a time; any
    /// failure to read either side says no.
    pub async fn is_what_s3_holds(&self, ctx: &WriteContext, head: &ObjectHead) -> bool {
        if head.size != self.size {
            return false;
        }
        let local: Vec<u64> = (0..self.size.div_ceil(BLOCK_SIZE))
            .filter(|&block| !self.needs_fetch(block))
            .collect();
        const RUN_BLOCKS: u64 = 8;
        for run in runs(&local) {
            let mut start = run.start;
            while start < run.end {
                let end = (start + RUN_BLOCKS).min(run.end);
                let range = start * BLOCK_SIZE..(end * BLOCK_SIZE).min(self.size);
                let remote = ctx
                    .client
                    .get_range(&self.key, range.clone(), Some(&head.etag))
                    .await;
                let file = self.files.data.clone();
                let local = blocking(move || {
                    let mut buffer = vec![0; (range.end - range.start) as usize];
                    file.read_exact_at(&mut buffer, range.start)?;
                    Ok(buffer)
                })
                .await;
                match (remote, local) {
                    (Ok(remote), Ok(local)) if remote[..] == local[..] => {}
                    _ => return false,
                }
                start = end;
            }
        }
        true
    }

    /// The ETag the file started from (`None`: it started empty).
    pub fn base_etag(&self) -> Option<&str> {
        self.base.as_ref().map(|b| b.version.etag.as_str())
    }

    /// Fetches every base block the data file lacks (before the file leaves for the recovery
    /// folder, so it holds the whole content).
    pub async fn fetch_all(&mut self, ctx: &WriteContext) -> Result<(), WriteError> {
        let missing: Vec<u64> = (0..self.local.len() as u64)
            .filter(|&b| self.needs_fetch(b))
            .collect();
        self.fetch_blocks(ctx, missing).await
    }

    /// Puts the content in S3: one PutObject, or parts (sent early, copied on the server where
    /// untouched, or read from the data file).
    async fn send(&mut self, ctx: &WriteContext) -> Result<String, WriteError> {
        let options = self.put_options();
        let file = self.files.data.clone();
        let early = self.early.take();
        if upload::is_single_put(self.size, &ctx.upload) {
            if let Some(early) = early {
                abort_early(ctx.client.clone(), self.key.clone(), early).await;
                self.multipart = None;
            }
            self.fetch_range(ctx, 0..self.size).await?;
            let put = upload::put_file(
                ctx.client.clone(),
                &self.key,
                file,
                self.size,
                &options,
                &ctx.budget,
            );
            return Ok(put.await?);
        }
        let (upload_id, mut sent) = match early {
            Some(early) => {
                let (id, sent) = settle_early(early).await;
                (Some(id), sent)
            }
            None => (None, BTreeMap::new()),
        };
        let mut parts = Vec::new();
        for (index, range) in plan_parts(self.size, ctx.upload.part_size)?
            .into_iter()
            .enumerate()
        {
            let sent = sent
                .remove(&(index as u64))
                .filter(|(sent_range, _)| *sent_range == range)
                .map(|(_, etag)| etag);
            let copy_from = sent.is_none().then(|| self.copy_source(&range)).flatten();
            if sent.is_none() && copy_from.is_none() {
                self.fetch_range(ctx, range.clone()).await?;
            }
            parts.push(PlannedPart {
                range,
                copy_from,
                sent,
            });
        }
        let reused = parts.iter().filter(|p| p.sent.is_some()).count();
        tracing::debug!(key = %self.key, parts = parts.len(), reused, "completing a multipart upload");
        let upload_id = match upload_id {
            Some(id) => id,
            None => self.begin_multipart(ctx).await?,
        };
        let client = ctx.client.clone();
        let (key, upload, budget) = (&self.key, &ctx.upload, &ctx.budget);
        let done =
            upload::finish_multipart(client, key, &upload_id, file, parts, &options, upload, budget).await;
        // Completed or aborted: either way no longer open.
        self.multipart = None;
        Ok(done?)
    }

    /// Creates a multipart upload and records it in the journal, so a crash cannot orphan it.
    async fn begin_multipart(&mut self, ctx: &WriteContext) -> Result<String, WriteError> {
        let upload_id = ctx
            .client
            .create_multipart(&self.key, &self.put_options())
            .await?;
        self.multipart = Some(upload_id.clone());
        self.record_journal_or_warn(
            false,
            "a crash leaves this multipart upload open until S3's lifecycle rules end it",
        );
        Ok(upload_id)
    }

    fn put_options(&self) -> PutOptions {
        PutOptions {
            metadata: self.metadata.clone(),
            ..PutOptions::default()
        }
    }

    /// After a write of a new file: queues the parts a sequential writer has moved a whole part
    /// beyond, sent at most `concurrency` at once. Best effort: whatever fails is sent at close.
    async fn send_early_parts(&mut self, ctx: &WriteContext) {
        loop {
            let next = self.early.as_ref().map_or(0, |early| early.next);
            let range = part_range(next, ctx.upload.part_size);
            let part_len = range.end - range.start;
            if range.end.saturating_add(part_len) > self.size || range.is_empty() {
                return;
            }
            let source = self.part_source(&range);
            if source == PartSource::Mixed {
                // Written in part over a base not fetched yet: left to the close.
                return;
            }
            if self.early.is_none() {
                match self.begin_multipart(ctx).await {
                    Ok(upload_id) => {
                        self.early = Some(EarlyUpload {
                            upload_id,
                            next: 0,
                            sent: BTreeMap::new(),
                            slots: Arc::new(Semaphore::new(ctx.upload.concurrency.max(1))),
                            evictor: Arc::new(PageCacheEvictor::new(self.files.data.clone())),
                        })
                    }
                    Err(error) => {
                        tracing::debug!(key = %self.key, %error, "cannot begin an early upload; all parts go at close");
                        return;
                    }
                }
            }
            let Some(early) = self.early.as_mut() else {
                return;
            };
            if source == PartSource::Base {
                // Untouched: copied on the server at close, nothing to send now.
                early.next += 1;
                continue;
            }
            if let Some(previous) = early.sent.get_mut(&next) {
                // The same part number sent twice: the older request must end first.
                previous.settle().await;
            }
            let (client, key, upload_id) = (ctx.client.clone(), self.key.clone(), early.upload_id.clone());
            let (file, slots, evictor, budget, part_range) = (
                self.files.data.clone(),
                early.slots.clone(),
                early.evictor.clone(),
                ctx.budget.clone(),
                range.clone(),
            );
            let task = tokio::spawn(async move {
                // At most `concurrency` parts of this file in flight, however far the writer is.
                let _slot = slots.acquire_owned().await;
                let sent = upload::send_part(
                    client,
                    key,
                    upload_id,
                    next as u32 + 1,
                    file,
                    part_range.clone(),
                    budget,
                )
                .await;
                if sent.is_ok() {
                    evictor.evict(part_range);
                }
                sent
            });
            let part = SentPart {
                range,
                stale: false,
                task: Some(task),
                etag: None,
            };
            early.sent.insert(next, part);
            early.next += 1;
        }
    }

    /// Where the bytes of `range` are: all in the data file, all untouched base, or some of each.
    fn part_source(&self, range: &Range<u64>) -> PartSource {
        let blocks = range.start / BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE);
        let missing = blocks.clone().filter(|&b| self.needs_fetch(b)).count() as u64;
        match missing {
            0 => PartSource::Local,
            n if n == blocks.end - blocks.start && self.copy_source(range).is_some() => PartSource::Base,
            _ => PartSource::Mixed,
        }
    }

    /// Parts sent early that overlap `range` no longer hold the file's bytes. Parts are in
    /// offset order, so the scan goes from the last part back and stops below `range`: a writer
    /// going on past the parts sent (the usual case) costs one look, not one per part.
    fn mark_sent_stale(&mut self, range: Range<u64>) {
        if let Some(early) = &mut self.early {
            for part in early.sent.values_mut().rev() {
                if part.range.end <= range.start {
                    break;
                }
                if part.range.start < range.end {
                    part.stale = true;
                }
            }
        }
    }

    /// Where `range` can be copied from on the server: the base, if every block of the range is
    /// an untouched base block.
    fn copy_source(&self, range: &Range<u64>) -> Option<CopySource> {
        let base = self.base.as_ref()?;
        let untouched = range.end <= base.len
            && (range.start / BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE)).all(|b| self.needs_fetch(b));
        untouched.then(|| CopySource {
            key: base.version.key.clone(),
            etag: base.version.etag.clone(),
        })
    }

    /// After an upload of this content as `etag`: clean, and the new object is the base (the
    /// blocks the data file lacks are the same bytes in the new object).
    fn became_object(&mut self, etag: String) {
        let old_blocks = self.local.len() as u64;
        let blocks = self.size.div_ceil(BLOCK_SIZE);
        self.local = (0..blocks)
            .map(|b| b >= old_blocks || !self.needs_fetch(b))
            .collect();
        self.base = Some(Base {
            version: ObjectVersion {
                key: self.key.clone(),
                etag: etag.clone(),
                size: self.size,
                version_id: None,
            },
            len: self.size,
            replaced_only: false,
        });
        self.etag = Some(etag);
        self.dirty = false;
        self.closing = false;
    }

    /// A base block the data file does not hold yet.
    fn needs_fetch(&self, block: u64) -> bool {
        match &self.base {
            Some(base) => {
                block * BLOCK_SIZE < base.len && !self.local.get(block as usize).copied().unwrap_or(true)
            }
            None => false,
        }
    }

    /// Whether a write of `range` overwrites every byte of `block` that comes from the base.
    fn write_covers_base_of(&self, block: u64, range: Range<u64>) -> bool {
        let base_len = self.base.as_ref().map_or(0, |b| b.len);
        let start = block * BLOCK_SIZE;
        let end = ((block + 1) * BLOCK_SIZE).min(base_len);
        range.start <= start && range.end >= end
    }

    async fn fetch_range(&mut self, ctx: &WriteContext, range: Range<u64>) -> Result<(), WriteError> {
        let missing: Vec<u64> = (range.start / BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE))
            .filter(|&b| self.needs_fetch(b))
            .collect();
        self.fetch_blocks(ctx, missing).await
    }

    /// Copies base blocks (ascending) into the data file, a run of consecutive blocks per read.
    async fn fetch_blocks(&mut self, ctx: &WriteContext, blocks: Vec<u64>) -> Result<(), WriteError> {
        let Some(base) = self.base.clone() else {
            return Ok(());
        };
        for run in runs(&blocks) {
            let data = ctx.reader.read_blocks(&base.version, run.clone()).await?;
            // Only the bytes still the file's: a truncate may have cut the base short.
            let start = run.start * BLOCK_SIZE;
            let keep = (data.len() as u64).min(base.len.saturating_sub(start)) as usize;
            let file = self.files.data.clone();
            self.synced = false;
            blocking(move || file.write_all_at(&data[..keep], start)).await?;
            for block in run {
                self.local[block as usize] = true;
            }
        }
        Ok(())
    }

    /// Notes a change of content; the journal is rewritten when its record changed.
    fn changed(&mut self, local_changed: bool) -> Result<(), WriteError> {
        self.mtime = SystemTime::now();
        self.etag = None;
        let had_time = self.metadata.user.contains_key(posix_headers::MTIME);
        self.drop_content_time();
        // After a close whose upload failed, the file stays promised to S3 (`closing`: a crash
        // uploads it, with what was written since, as the next close would), but what reached
        // the disk is no longer the content: the journal must stop saying `synced`, or a
        // recovery after a power loss would trust data it cannot.
        let was_synced = std::mem::replace(&mut self.synced, false);
        let was_dirty = std::mem::replace(&mut self.dirty, true);
        if !was_dirty || local_changed || was_synced || had_time {
            self.record_journal(false)?;
        }
        Ok(())
    }

    fn record_journal(&self, durable: bool) -> Result<(), WriteError> {
        Ok(self.files.record(&self.journal_record(), durable)?)
    }

    /// [`StagedFile::record_journal`] where a failure must not stop an upload: a full staging
    /// disk (which cannot take the journal's new copy) must not keep staged files from S3.
    /// `risk` says what the stale journal means after a crash.
    fn record_journal_or_warn(&self, durable: bool, risk: &str) {
        if let Err(error) = self.record_journal(durable) {
            tracing::warn!(key = %self.key, %error, "cannot rewrite the journal of a staged file; {risk}");
        }
    }

    fn journal_record(&self) -> JournalRecord {
        let state = match (self.deleted, self.dirty, self.closing) {
            (true, _, _) => JournalState::Deleted,
            (false, false, _) => JournalState::Clean,
            (false, true, false) => JournalState::Dirty,
            (false, true, true) => JournalState::Closing,
        };
        let local_blocks = runs(
            &(0..self.local.len() as u64)
                .filter(|&b| self.local[b as usize])
                .collect::<Vec<_>>(),
        );
        JournalRecord {
            key: self.key.clone(),
            base: self.base.as_ref().map(base_record),
            local_blocks,
            state,
            upload_id: self.multipart.clone(),
            boot_id: current_boot_id().map(str::to_owned),
            synced: self.synced,
            metadata: Some(self.metadata.clone()),
        }
    }
}

/// What the recovery of an earlier run's staged files did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Keys uploaded (their close had begun, and the object had not changed since).
    pub uploaded: Vec<String>,
    /// Staged files moved to the recovery folder: the key (if known) and where the data went.
    pub moved: Vec<(Option<String>, std::path::PathBuf)>,
    /// Keys whose upload failed again; they stay staged for the next mount.
    pub kept: Vec<String>,
}

impl RecoveryReport {
    pub fn is_empty(&self) -> bool {
        self.uploaded.is_empty() && self.moved.is_empty() && self.kept.is_empty()
    }
}

/// Deals with every staged file an earlier run left (it died): a file whose close had begun is
/// uploaded unless its object changed remotely meanwhile; anything else goes to the recovery
/// folder, whole (missing base blocks fetched when the base is unchanged), and is logged.
pub async fn recover(ctx: &WriteContext) -> io::Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    for leftover in ctx.staging.leftovers()? {
        let Some(record) = &leftover.record else {
            if let Some(moved) = set_aside(ctx, &leftover, None, &mut report) {
                tracing::warn!(path = %moved.display(), "staged data of an unknown key moved to the recovery folder");
            }
            continue;
        };
        if let Some(upload_id) = &record.upload_id {
            // Cut by the crash: its parts would linger (and cost) forever.
            match ctx.client.abort_multipart(&record.key, upload_id).await {
                Ok(()) => {
                    tracing::info!(key = %record.key, %upload_id, "aborted a multipart upload cut by a crash")
                }
                Err(error) => {
                    tracing::debug!(key = %record.key, %upload_id, %error, "could not abort a multipart upload cut by a crash")
                }
            }
        }
        if matches!(record.state, JournalState::Clean | JournalState::Deleted) {
            ctx.staging.discard(&leftover);
            continue;
        }
        let key = record.key.clone();
        let adopted = leftover
            .adopt()
            .map(|files| StagedFile::from_leftover(&leftover, files));
        let mut file = match adopted {
            Ok(Some(file)) => file,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(%key, %error, "cannot open a staged file of an earlier run; left where it is");
                report.kept.push(key);
                continue;
            }
        };
        let remote = match object_at(ctx, file.key()).await {
            Ok(remote) => remote,
            Err(error) => {
                tracing::error!(%key, %error, "cannot check the object of a staged file; kept for the next mount");
                report.kept.push(key);
                continue;
            }
        };
        let unchanged = remote_matches_base(remote.as_ref(), &file);
        if record.metadata.is_none()
            && unchanged
            && let Some(head) = &remote
        {
            // A journal from before metadata was recorded: the object it started from has it
            // (less the modification time its content no longer has, if it was written).
            file.metadata = head.metadata.clone();
            if file.dirty {
                file.drop_content_time();
            }
        }
        if record.close_can_be_trusted() && unchanged {
            match file.upload(ctx).await {
                Ok(()) => {
                    file.discard(ctx);
                    tracing::info!(%key, "uploaded a file whose close was interrupted");
                    report.uploaded.push(key);
                }
                Err(error) => {
                    tracing::error!(%key, %error, "upload of an interrupted close failed again; kept for the next mount");
                    report.kept.push(key);
                }
            }
            continue;
        }
        let landed = match &remote {
            Some(head) if record.close_can_be_trusted() && !unchanged => {
                holds_the_metadata(head, file.metadata()) && file.is_what_s3_holds(ctx, head).await
            }
            _ => false,
        };
        if landed {
            // The killed daemon's upload had completed; only its last journal was not written.
            file.discard(ctx);
            tracing::info!(%key, "a file whose close was interrupted had been uploaded already");
            report.uploaded.push(key);
            continue;
        }
        let whole = unchanged && file.fetch_all(ctx).await.is_ok();
        let Some(moved) = set_aside(ctx, &leftover, Some(&key), &mut report) else {
            continue;
        };
        let why = match record.state {
            JournalState::Closing if !unchanged => "the object changed remotely after its close began",
            JournalState::Closing => {
                "its close began before the machine restarted, and its data had not reached the disk"
            }
            _ => "it was never closed",
        };
        tracing::warn!(%key, path = %moved.display(), complete = whole || file.base_etag().is_none(),
            "staged data not uploaded because {why}; moved to the recovery folder");
    }
    Ok(report)
}

/// Moves a leftover to the recovery folder and records it; one that cannot be moved stays
/// staged (and in the report's `kept`), and the others are still dealt with.
fn set_aside(
    ctx: &WriteContext,
    leftover: &Leftover,
    key: Option<&str>,
    report: &mut RecoveryReport,
) -> Option<std::path::PathBuf> {
    match ctx.staging.move_to_recovery(leftover) {
        Ok(moved) => {
            report.moved.push((key.map(str::to_owned), moved.clone()));
            Some(moved)
        }
        Err(error) => {
            tracing::error!(key, path = %leftover.data_path.display(), %error,
                "cannot move staged data to the recovery folder; it stays staged");
            report.kept.push(key.unwrap_or("(unknown key)").to_owned());
            None
        }
    }
}

/// Whether `head` carries what the upload of `metadata` would have given it: the user entries and
/// the content type the file names. In doubt, no: the upload is then sent again, which is safe.
fn holds_the_metadata(head: &ObjectHead, metadata: &ObjectMetadata) -> bool {
    head.metadata.user == metadata.user
        && (metadata.content_type.is_none() || head.metadata.content_type == metadata.content_type)
}

/// The object at `key` that a file renamed to it replaces, if any: what
/// [`StagedFile::rekey`] takes as the file's base. Asked before the rename changes anything.
pub async fn object_replaced_at(ctx: &WriteContext, key: &str) -> Result<Option<ObjectVersion>, WriteError> {
    let head = object_at(ctx, key).await.map_err(WriteError::Object)?;
    Ok(head.map(|head| ObjectVersion {
        key: key.to_owned(),
        etag: head.etag,
        size: head.size,
        version_id: head.version_id,
    }))
}

/// The object at `key` now (`None`: there is none).
async fn object_at(ctx: &WriteContext, key: &str) -> Result<Option<ObjectHead>, ObjectError> {
    match ctx.client.head(key).await {
        Ok(head) => Ok(Some(head)),
        Err(ObjectError::NoSuchKey(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether `remote` is still the version the staged file started from (absent if it started
/// empty).
fn remote_matches_base(remote: Option<&ObjectHead>, file: &StagedFile) -> bool {
    match (remote, file.base_etag()) {
        (Some(head), Some(etag)) => head.etag == etag,
        (Some(_), None) => false,
        (None, base) => base.is_none(),
    }
}

/// Where a part's bytes are, for sending it early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartSource {
    Local,
    Base,
    Mixed,
}

/// Waits for every part sent early; returns the upload id and the parts sent intact, by index.
async fn settle_early(mut early: EarlyUpload) -> (String, BTreeMap<u64, (Range<u64>, String)>) {
    let mut intact = BTreeMap::new();
    for (index, mut part) in std::mem::take(&mut early.sent) {
        part.settle().await;
        if let (false, Some(etag)) = (part.stale, part.etag) {
            intact.insert(index, (part.range, etag));
        }
    }
    (early.upload_id, intact)
}

/// Drops an early upload that will not be completed (no orphaned parts).
async fn abort_early(client: Arc<dyn ObjectClient>, key: String, early: EarlyUpload) {
    let (upload_id, _) = settle_early(early).await;
    if let Err(error) = client.abort_multipart(&key, &upload_id).await {
        tracing::warn!(%key, %upload_id, %error, "could not abort an early multipart upload");
    }
}

fn base_record(base: &Base) -> BaseRecord {
    BaseRecord {
        etag: base.version.etag.clone(),
        object_size: base.version.size,
        len: base.len,
    }
}

/// Ascending block numbers grouped into runs of consecutive ones.
fn runs(blocks: &[u64]) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for &block in blocks {
        match runs.last_mut() {
            Some(run) if run.end == block => run.end += 1,
            _ => runs.push(block..block + 1),
        }
    }
    runs
}

/// Runs file I/O on a blocking thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => Err(io::Error::other(join_error.to_string())),
    }
}

#[cfg(test)]
mod tests;
