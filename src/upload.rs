//! Uploading a staged file as one object: a single PutObject when small, otherwise a multipart
//! upload in concurrent parts whose size grows with the file so any size up to S3's 5 TiB limit
//! fits in 10,000 parts. A failed multipart upload is aborted (no orphaned parts) and the error
//! returned; the staged file is never touched, so the caller can retry.
//!
//! Owns the part plan and the upload protocol. It reads the staged file but does not decide when
//! to upload or what the file's key is: that is the file system's write-back (issue 4), which is
//! not wired in yet.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::object::{CompletedPart, ObjectClient, ObjectError, PutOptions};

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

/// The byte ranges of the parts of a `size`-byte upload: `part_size` (raised to S3's minimum,
/// and grown in whole MiB until 10,000 parts suffice), the last part shorter.
pub fn plan_parts(size: u64, part_size: u64) -> Result<Vec<Range<u64>>, UploadError> {
    if size > MAX_OBJECT {
        return Err(UploadError::TooLarge { size });
    }
    let at_least = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let part = part_size.max(MIN_PART).max(at_least).min(MAX_PART);
    Ok((0..size.div_ceil(part).max(1))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect())
}

/// Uploads the first `size` bytes of the staged file at `path` as `key`. Returns the new ETag.
pub async fn upload_file(
    client: Arc<dyn ObjectClient>,
    key: &str,
    path: &Path,
    size: u64,
    options: &PutOptions,
    config: &UploadConfig,
) -> Result<String, UploadError> {
    let file = Arc::new(File::open(path)?);
    if size <= config.part_size {
        let body = read_range(file, 0..size).await?;
        return Ok(client.put_with(key, body, options).await?);
    }
    let parts = plan_parts(size, config.part_size)?;
    let create = PutOptions {
        if_match: None,
        if_none_match: false,
        ..options.clone()
    };
    let upload_id = client.create_multipart(key, &create).await?;
    match upload_parts(&client, key, &upload_id, file, parts, config.concurrency).await {
        Ok(completed) => {
            let done = client
                .complete_multipart(
                    key,
                    &upload_id,
                    &completed,
                    options.if_match.as_deref(),
                    options.if_none_match,
                )
                .await;
            match done {
                Ok(etag) => Ok(etag),
                Err(error) => Err(abort(&client, key, &upload_id, error.into()).await),
            }
        }
        Err(error) => Err(abort(&client, key, &upload_id, error).await),
    }
}

/// Uploads every part, at most `concurrency` at once; the parts come back in order.
async fn upload_parts(
    client: &Arc<dyn ObjectClient>,
    key: &str,
    upload_id: &str,
    file: Arc<File>,
    parts: Vec<Range<u64>>,
    concurrency: usize,
) -> Result<Vec<CompletedPart>, UploadError> {
    let mut running = JoinSet::new();
    let mut completed = Vec::with_capacity(parts.len());
    for (index, range) in parts.into_iter().enumerate() {
        if running.len() >= concurrency.max(1) {
            completed.push(next_finished(&mut running).await?);
        }
        let (client, key, upload_id, file) =
            (client.clone(), key.to_owned(), upload_id.to_owned(), file.clone());
        let part_number = index as u32 + 1;
        running.spawn(async move {
            let body = read_range(file, range).await?;
            let etag = client.upload_part(&key, &upload_id, part_number, body).await?;
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
async fn abort(
    client: &Arc<dyn ObjectClient>,
    key: &str,
    upload_id: &str,
    error: UploadError,
) -> UploadError {
    if let Err(abort_error) = client.abort_multipart(key, upload_id).await {
        tracing::warn!(%key, %upload_id, %abort_error, "could not abort a failed multipart upload");
    }
    error
}

/// Reads `range` of the staged file on a blocking thread.
async fn read_range(file: Arc<File>, range: Range<u64>) -> Result<Bytes, UploadError> {
    let read = tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buffer, range.start)?;
        Ok::<_, std::io::Error>(Bytes::from(buffer))
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
    use crate::object::memory::{MemoryClient, Op};

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
        client: &Arc<MemoryClient>,
        file: &tempfile::NamedTempFile,
        size: u64,
    ) -> Result<String, UploadError> {
        upload_file(
            client.clone(),
            "k",
            file.path(),
            size,
            &PutOptions::default(),
            &CONFIG,
        )
        .await
    }

    #[test]
    fn parts_grow_so_any_object_fits_in_ten_thousand() {
        assert_eq!(plan_parts(0, 8 * MIB).unwrap(), vec![0..0]);
        assert_eq!(plan_parts(20 * MIB, 8 * MIB).unwrap().len(), 3);
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
        let client = Arc::new(MemoryClient::new("b"));
        let (file, body) = staged(1000);
        let options = PutOptions {
            content_type: Some("text/plain".into()),
            ..PutOptions::default()
        };
        upload_file(client.clone(), "k", file.path(), 1000, &options, &CONFIG)
            .await
            .unwrap();
        assert_eq!(client.body("k").as_deref(), Some(&body[..]));
        assert_eq!(client.counters().put, 1);
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn a_large_file_goes_up_in_parts_and_comes_back_whole() {
        let client = Arc::new(MemoryClient::new("b"));
        let size = 21 * MIB + 3;
        let (file, body) = staged(size);
        upload(&client, &file, size).await.unwrap();
        assert_eq!(client.body("k").as_deref(), Some(&body[..]));
        assert_eq!(client.counters().put, 0);
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload_and_keeps_the_old_object() {
        let client = Arc::new(MemoryClient::new("b"));
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
        let client = Arc::new(MemoryClient::new("b"));
        let size = 12 * MIB;
        let (file, _) = staged(size);
        client.fail_next(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
        assert!(upload(&client, &file, size).await.is_err());
        assert_eq!(client.open_multipart_uploads(), 0);
        assert!(!client.contains("k"));
    }
}
