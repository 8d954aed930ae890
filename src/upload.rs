//! Uploading a staged file as one object: a single PutObject when small, otherwise a multipart
//! upload in concurrent parts whose size grows with the file so any size up to S3's 5 TiB limit
//! fits in 10,000 parts. A failed multipart upload is aborted (no orphaned parts) and the error
//! returned; the staged file is never touched, so the caller can retry.
//!
//! Owns the part plan, the upload protocol (parts read from the staged file, or copied on the
//! server from an object version for the untouched ranges of a modified object), server-side
//! copies of any size, and the memory budget of part buffers. It does not decide when to upload,
//! which key, or which ranges may be copied: that is the write-back's (`writeback`).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::object::buffers::BufferPool;
use crate::object::{CompletedPart, ObjectClient, ObjectError, ObjectMetadata, PutOptions};

/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last).
const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's largest object.
pub const MAX_OBJECT: u64 = 5 << 40;
/// Part sizes are whole MiB, so they line up with cache blocks.
const MIB: u64 = 1 << 20;

/// How to upload.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Files up to this size go in one PutObject; larger ones in parts of at least this size.
    pub part_size: u64,
    /// Parts in flight at once (each one buffer of a part in memory).
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading the staged file: {0}")]
    Staging(#[from] std::io::Error),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("{size} bytes is larger than the largest S3 object ({MAX_OBJECT} bytes)")]
    TooLarge { size: u64 },
}

/// Parts of one size in the schedule: after every thousand the size doubles.
const PARTS_PER_TIER: u64 = 1_000;
/// Tiers of doubling sizes; the last tier's parts are S3's largest, so with any first size of
/// at least 5 MiB the 10,000 parts hold more than the largest object.
const TIERS: u64 = MAX_PARTS / PARTS_PER_TIER;

/// The size of the parts of `tier`.
fn tier_part_size(first: u64, tier: u64) -> u64 {
    if tier + 1 >= TIERS {
        MAX_PART
    } else {
        (first << tier).min(MAX_PART)
    }
}

/// Where part `index` (from 0) lies in any upload with parts of at least `part_size`. The
/// schedule does not depend on the file's size, so parts sent while a file is still growing are
/// the parts of its final upload: `part_size` (raised to S3's minimum) for the first thousand
/// parts, then twice that for the next thousand, and so on.
pub fn part_range(index: u64, part_size: u64) -> Range<u64> {
    let first = part_size.max(MIN_PART).div_ceil(MIB) * MIB;
    let mut start = 0;
    for tier in 0..TIERS {
        let size = tier_part_size(first, tier);
        let in_tier = index.saturating_sub(tier * PARTS_PER_TIER);
        if in_tier < PARTS_PER_TIER {
            let part_start = start + in_tier * size;
            return part_start..part_start + size;
        }
        start += PARTS_PER_TIER * size;
    }
    start..start
}

/// The byte ranges of the parts of a `size`-byte upload: [`part_range`]'s schedule, the last
/// part cut at `size`.
pub fn plan_parts(size: u64, part_size: u64) -> Result<Vec<Range<u64>>, UploadError> {
    if size > MAX_OBJECT {
        return Err(UploadError::TooLarge { size });
    }
    let mut parts = Vec::new();
    for index in 0..MAX_PARTS {
        let range = part_range(index, part_size);
        parts.push(range.start..range.end.min(size));
        if range.end >= size {
            break;
        }
    }
    Ok(parts)
}

/// Whether a `size`-byte file goes up in one PutObject rather than in parts.
pub fn is_single_put(size: u64, config: &UploadConfig) -> bool {
    size <= config.part_size
}

/// One part of a multipart upload: its byte range, read from the staged file or copied on the
/// server from the same range of another object version, or already sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPart {
    pub range: Range<u64>,
    pub copy_from: Option<CopySource>,
    /// The ETag of this very range, sent earlier in the same upload.
    pub sent: Option<String>,
}

/// An object version whose bytes a part copies (UploadPartCopy, checked with If-Match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySource {
    pub key: String,
    pub etag: String,
}

/// What a writing daemon holds besides part buffers (runtime, FUSE request buffers, HTTP
/// connections, the inode table): peak RSS less the part budget was 22 MiB in `scripts/bench`
/// W3 (four 1 GiB files written at once).
pub const DAEMON_BASE_MEMORY: u64 = 32 * MIB;

/// The part-buffer budget that keeps a writing daemon's memory within `max_memory`: what is
/// left after its base, and never less than one smallest part, so uploads still go, one at a
/// time, under a tiny budget.
pub fn part_budget_within(max_memory: u64) -> u64 {
    max_memory.saturating_sub(DAEMON_BASE_MEMORY).max(MIN_PART)
}

/// Bytes of part buffers all uploads of a mount may hold at once. Parts wait for room, so four
/// files of 1 GiB written at once cost no more memory than one.
#[derive(Clone, Debug)]
pub struct UploadBudget {
    permits: Arc<Semaphore>,
    units: u32,
    /// Part buffers are reused: fresh 8 MiB buffers cost page faults and clearing on every part.
    buffers: BufferPool,
}

/// The budget's unit: 1 MiB.
const BUDGET_UNIT: u64 = MIB;

impl UploadBudget {
    pub fn new(total_bytes: u64) -> Self {
        let units = (total_bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
            buffers: BufferPool::default(),
        }
    }

    /// Waits until `bytes` (at most the whole budget, so one huge part cannot wait forever) fit.
    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = (bytes.div_ceil(BUDGET_UNIT).max(1)).min(u64::from(self.units)) as u32;
        match self.permits.clone().acquire_many_owned(units).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("upload budget closed"),
        }
    }
}

/// Uploads the first `size` bytes of `file` as `key`, all read from the file: one PutObject or
/// a multipart upload. Returns the new ETag.
pub async fn upload_file(
    client: Arc<dyn ObjectClient>,
    key: &str,
    file: Arc<File>,
    size: u64,
    options: &PutOptions,
    config: &UploadConfig,
    budget: &UploadBudget,
) -> Result<String, UploadError> {
    if is_single_put(size, config) {
        return put_file(client, key, file, size, options, budget).await;
    }
    let parts = plan_parts(size, config.part_size)?
        .into_iter()
        .map(|range| PlannedPart {
            range,
            copy_from: None,
            sent: None,
        })
        .collect();
    upload_multipart(client, key, file, parts, options, config, budget).await
}

/// One PutObject of the first `size` bytes of `file`.
pub async fn put_file(
    client: Arc<dyn ObjectClient>,
    key: &str,
    file: Arc<File>,
    size: u64,
    options: &PutOptions,
    budget: &UploadBudget,
) -> Result<String, UploadError> {
    let _memory = budget.reserve(size).await;
    let body = read_range(file, 0..size, budget).await?;
    Ok(client.put_with(key, body, options).await?)
}

/// A multipart upload of `parts` (ascending, contiguous, as [`plan_parts`] makes them), at most
/// `config.concurrency` at once. Aborted on any failure. Returns the new ETag.
pub async fn upload_multipart(
    client: Arc<dyn ObjectClient>,
    key: &str,
    file: Arc<File>,
    parts: Vec<PlannedPart>,
    options: &PutOptions,
    config: &UploadConfig,
    budget: &UploadBudget,
) -> Result<String, UploadError> {
    let create = PutOptions {
        if_match: None,
        if_none_match: false,
        ..options.clone()
    };
    let upload_id = client.create_multipart(key, &create).await?;
    finish_multipart(client, key, &upload_id, file, parts, options, config, budget).await
}

/// Sends what is left of multipart upload `upload_id` and completes it; aborts it on failure.
#[allow(clippy::too_many_arguments)]
pub async fn finish_multipart(
    client: Arc<dyn ObjectClient>,
    key: &str,
    upload_id: &str,
    file: Arc<File>,
    parts: Vec<PlannedPart>,
    options: &PutOptions,
    config: &UploadConfig,
    budget: &UploadBudget,
) -> Result<String, UploadError> {
    let upload = Upload {
        client: &client,
        key,
        upload_id,
    };
    match upload_parts(&upload, file, parts, config.concurrency, budget).await {
        Ok(completed) => {
            let done = client
                .complete_multipart(
                    key,
                    upload_id,
                    &completed,
                    options.if_match.as_deref(),
                    options.if_none_match,
                )
                .await;
            match done {
                Ok(etag) => Ok(etag),
                Err(error) => Err(abort(&upload, error.into()).await),
            }
        }
        Err(error) => Err(abort(&upload, error).await),
    }
}

/// Copies `source` (`size` bytes, with ETag `etag`) to `dest` (which may be `source` itself, when
/// `metadata` is given) on the server, with `metadata` in place of the source's (`None`: the
/// source's user metadata and content headers, as CopyObject copies them): one CopyObject up to
/// 5 GiB (S3's limit for it), a multipart copy above (which copies no metadata by itself: the
/// source's is read first when none is given).
pub async fn copy_object(
    client: Arc<dyn ObjectClient>,
    source: &str,
    dest: &str,
    size: u64,
    etag: &str,
    metadata: Option<&ObjectMetadata>,
    config: &UploadConfig,
) -> Result<String, UploadError> {
    if size <= MAX_PART {
        return Ok(client.copy(source, dest, Some(etag), metadata).await?);
    }
    let options = PutOptions {
        metadata: match metadata {
            Some(metadata) => metadata.clone(),
            None => client.head(source).await?.metadata,
        },
        ..PutOptions::default()
    };
    let copy_from = CopySource {
        key: source.to_owned(),
        etag: etag.to_owned(),
    };
    // Copies hold no buffer here: a budget of one unit per part in flight suffices.
    let budget = UploadBudget::new(config.concurrency.max(1) as u64 * BUDGET_UNIT);
    let parts = plan_parts(size, MAX_PART.min(config.part_size.max(1 << 30)))?
        .into_iter()
        .map(|range| PlannedPart {
            range,
            copy_from: Some(copy_from.clone()),
            sent: None,
        })
        .collect();
    let no_file = Arc::new(File::open("/dev/null")?);
    upload_multipart(client, dest, no_file, parts, &options, config, &budget).await
}

/// Sends one part read from `file` (an early part of a file still being written); returns its
/// ETag. Waits for room in the budget first.
pub async fn send_part(
    client: Arc<dyn ObjectClient>,
    key: String,
    upload_id: String,
    part_number: u32,
    file: Arc<File>,
    range: Range<u64>,
    budget: Arc<UploadBudget>,
) -> Result<String, UploadError> {
    let _memory = budget.reserve(range.end - range.start).await;
    let body = read_range(file, range, &budget).await?;
    Ok(client.upload_part(&key, &upload_id, part_number, body).await?)
}

/// The multipart upload in progress.
struct Upload<'a> {
    client: &'a Arc<dyn ObjectClient>,
    key: &'a str,
    upload_id: &'a str,
}

/// Uploads every part, at most `concurrency` at once; the parts come back in order.
async fn upload_parts(
    upload: &Upload<'_>,
    file: Arc<File>,
    parts: Vec<PlannedPart>,
    concurrency: usize,
    budget: &UploadBudget,
) -> Result<Vec<CompletedPart>, UploadError> {
    let mut running = JoinSet::new();
    let mut completed = Vec::with_capacity(parts.len());
    for (index, part) in parts.into_iter().enumerate() {
        let part_number = index as u32 + 1;
        if let Some(etag) = part.sent {
            completed.push(CompletedPart { part_number, etag });
            continue;
        }
        if running.len() >= concurrency.max(1) {
            completed.push(next_finished(&mut running).await?);
        }
        let memory = match part.copy_from {
            Some(_) => None,
            None => Some(budget.reserve(part.range.end - part.range.start).await),
        };
        let (client, key, upload_id, file, buffers) = (
            upload.client.clone(),
            upload.key.to_owned(),
            upload.upload_id.to_owned(),
            file.clone(),
            budget.clone(),
        );
        running.spawn(async move {
            let _memory = memory;
            let etag = match part.copy_from {
                Some(source) => {
                    client
                        .upload_part_copy(
                            &key,
                            &upload_id,
                            part_number,
                            &source.key,
                            part.range,
                            Some(&source.etag),
                        )
                        .await?
                }
                None => {
                    let body = read_range(file, part.range, &buffers).await?;
                    client.upload_part(&key, &upload_id, part_number, body).await?
                }
            };
            Ok::<_, UploadError>(CompletedPart { part_number, etag })
        });
    }
    while !running.is_empty() {
        completed.push(next_finished(&mut running).await?);
    }
    completed.sort_by_key(|part| part.part_number);
    Ok(completed)
}

async fn next_finished(
    running: &mut JoinSet<Result<CompletedPart, UploadError>>,
) -> Result<CompletedPart, UploadError> {
    match running.join_next().await {
        Some(Ok(part)) => part,
        Some(Err(join_error)) => Err(UploadError::Staging(std::io::Error::other(
            join_error.to_string(),
        ))),
        None => Err(UploadError::Staging(std::io::Error::other("no part was running"))),
    }
}

/// Aborts the multipart upload after `error`, and returns `error` (an abort failure is logged:
/// the upload's parts may then linger until the bucket's lifecycle rule removes them).
async fn abort(upload: &Upload<'_>, error: UploadError) -> UploadError {
    let (key, upload_id) = (upload.key, upload.upload_id);
    if let Err(abort_error) = upload.client.abort_multipart(key, upload_id).await {
        tracing::warn!(%key, %upload_id, %abort_error, "could not abort a failed multipart upload");
    }
    error
}

/// Reads `range` of the staged file on a blocking thread, into a buffer of the budget's pool.
async fn read_range(file: Arc<File>, range: Range<u64>, budget: &UploadBudget) -> Result<Bytes, UploadError> {
    let pool = budget.buffers.clone();
    let read = tokio::task::spawn_blocking(move || {
        let len = (range.end - range.start) as usize;
        let mut buffer = pool.take(len);
        buffer.resize(len);
        file.read_exact_at(buffer.as_mut_slice(), range.start)?;
        Ok::<_, std::io::Error>(pool.freeze(buffer))
    });
    match read.await {
        Ok(result) => Ok(result?),
        Err(join_error) => Err(UploadError::Staging(std::io::Error::other(
            join_error.to_string(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::object::Op;
    use crate::object::fault::FaultClient;
    use crate::object::memory::MemoryClient;

    /// The in-memory bucket behind a fault wrapper: the tests inject faults.
    type Bucket = FaultClient<MemoryClient>;

    const CONFIG: UploadConfig = UploadConfig {
        part_size: 8 * MIB,
        concurrency: 4,
    };

    fn staged(size: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
        let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&body).unwrap();
        (file, body)
    }

    /// Uploads the whole staged file as "k" with default options.
    async fn upload(
        client: &Arc<Bucket>,
        file: &tempfile::NamedTempFile,
        size: u64,
    ) -> Result<String, UploadError> {
        upload_file(
            client.clone(),
            "k",
            Arc::new(file.reopen().unwrap()),
            size,
            &PutOptions::default(),
            &CONFIG,
            &UploadBudget::new(64 * MIB),
        )
        .await
    }

    #[test]
    fn the_part_budget_leaves_the_daemon_base_and_never_drops_below_one_part() {
        assert_eq!(part_budget_within(128 * MIB), 96 * MIB);
        assert_eq!(
            part_budget_within(32 * MIB),
            MIN_PART,
            "no room left: one part at a time"
        );
        assert_eq!(part_budget_within(0), MIN_PART);
    }

    #[test]
    fn parts_grow_so_any_object_fits_in_ten_thousand() {
        assert_eq!(plan_parts(0, 8 * MIB).unwrap(), vec![0..0]);
        assert_eq!(plan_parts(20 * MIB, 8 * MIB).unwrap().len(), 3);
        assert_eq!(plan_parts(8 * MIB, 8 * MIB).unwrap(), vec![0..8 * MIB]);
        assert_eq!(
            part_range(1000, 8 * MIB),
            8000 * MIB..8016 * MIB,
            "the second thousand doubles"
        );
        assert_eq!(
            plan_parts(20 * MIB, MIB).unwrap()[0],
            0..5 * MIB,
            "raised to S3's minimum"
        );
        for size in [80_000 * MIB, 1 << 40, MAX_OBJECT] {
            let parts = plan_parts(size, 8 * MIB).unwrap();
            assert!(parts.len() as u64 <= MAX_PARTS, "{size}: {} parts", parts.len());
            assert_eq!(parts.last().unwrap().end, size);
            assert!(parts.iter().all(|p| p.end - p.start <= MAX_PART));
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert!(matches!(
            plan_parts(MAX_OBJECT + 1, 8 * MIB),
            Err(UploadError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_small_file_is_one_put() {
        let client = Arc::new(Bucket::memory("b"));
        let (file, body) = staged(1000);
        let options = PutOptions {
            metadata: ObjectMetadata::with_content_type(Some("text/plain".into())),
            ..PutOptions::default()
        };
        let budget = UploadBudget::new(64 * MIB);
        upload_file(
            client.clone(),
            "k",
            Arc::new(file.reopen().unwrap()),
            1000,
            &options,
            &CONFIG,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(client.body("k").as_deref(), Some(&body[..]));
        assert_eq!(client.counters().put, 1);
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn a_large_file_goes_up_in_parts_and_comes_back_whole() {
        let client = Arc::new(Bucket::memory("b"));
        let size = 21 * MIB + 3;
        let (file, body) = staged(size);
        upload(&client, &file, size).await.unwrap();
        assert_eq!(client.body("k").as_deref(), Some(&body[..]));
        assert_eq!(client.counters().put, 0);
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload_and_keeps_the_old_object() {
        let client = Arc::new(Bucket::memory("b"));
        client.put_object("k", "old");
        let size = 30 * MIB;
        let (file, _) = staged(size);
        client.fail_next(Op::UploadPart, 1, ObjectError::Unreachable("reset".into()));
        let error = upload(&client, &file, size).await;
        assert!(matches!(
            error,
            Err(UploadError::Object(ObjectError::Unreachable(_)))
        ));
        assert_eq!(client.open_multipart_uploads(), 0, "no orphaned parts");
        assert_eq!(
            client.body("k").as_deref(),
            Some(&b"old"[..]),
            "never a half object"
        );
        // The staged file is untouched: a retry succeeds.
        upload(&client, &file, size).await.unwrap();
        assert_eq!(client.body("k").map(|b| b.len() as u64), Some(size));
    }

    #[tokio::test]
    async fn a_failed_completion_aborts_too() {
        let client = Arc::new(Bucket::memory("b"));
        let size = 12 * MIB;
        let (file, _) = staged(size);
        client.fail_next(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
        assert!(upload(&client, &file, size).await.is_err());
        assert_eq!(client.open_multipart_uploads(), 0);
        assert!(!client.contains("k"));
    }

    #[tokio::test]
    async fn untouched_ranges_are_copied_on_the_server() {
        let client = Arc::new(Bucket::memory("b"));
        let size = 20 * MIB;
        let (file, body) = staged(size);
        let old = client.put_object("src", Bytes::from(body[..16 << 20].to_vec()));
        let parts: Vec<PlannedPart> = plan_parts(size, CONFIG.part_size)
            .unwrap()
            .into_iter()
            .map(|range| PlannedPart {
                copy_from: (range.end <= 16 * MIB).then(|| CopySource {
                    key: "src".into(),
                    etag: old.clone(),
                }),
                range,
                sent: None,
            })
            .collect();
        let file = Arc::new(file.reopen().unwrap());
        let budget = UploadBudget::new(8 * MIB);
        upload_multipart(
            client.clone(),
            "k",
            file,
            parts,
            &PutOptions::default(),
            &CONFIG,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(client.body("k").as_deref(), Some(&body[..]));
        let counts = client.counters();
        assert_eq!((counts.upload_part_copy, counts.upload_part), (2, 1));
    }

    #[tokio::test]
    async fn a_copy_above_five_gib_goes_in_parts() {
        // Only the plan is checked at that size: the memory client would need 5 GiB of RAM.
        let parts = plan_parts(6 << 30, 1 << 30).unwrap();
        assert_eq!(parts.len(), 6);
        let client = Arc::new(Bucket::memory("b"));
        let etag = client.put_object("a", "small");
        let copied = copy_object(client.clone(), "a", "b", 5, &etag, None, &CONFIG)
            .await
            .unwrap();
        assert_eq!(client.body("b").as_deref(), Some(&b"small"[..]));
        assert!(!copied.is_empty());
    }
}
