//! The object store as the file system sees it: the [`ObjectClient`] trait, the values it returns
//! and its typed errors, each of which says whether trying again may help.
//!
//! Everything above this module (fs, fuse, run) talks to S3 only through this trait. The client
//! is a stack of layers, each an `ObjectClient` wrapping the next:
//!
//! - [`retry::RetryClient`]: the one retry policy (attempts, backoff with jitter, a time bound
//!   on every attempt and on the whole request) for every request of the mount;
//! - [`s3::S3Client`]: aws-sdk-s3, translating SDK results and errors into this crate's types;
//!   its ranged GETs, signed by the SDK, are carried by [`direct_get::DirectGet`] on connections
//!   of its own, which receive a body straight into the block cache's aligned buffers;
//! - for tests only (`cfg(test)` or the `test-util` feature, never in the release binary):
//!   [`memory::MemoryClient`], an in-memory bucket, and [`fault::FaultClient`], which fails,
//!   delays or stalls any operation of any client.
//!
//! This module owns the vocabulary (keys, ETags, listing pages, operation kinds); it must not
//! know about inodes, paths or errno values (the errno mapping lives in `fs/error.rs`).

pub mod buffers;
pub mod direct_get;
#[cfg(any(test, feature = "test-util"))]
pub mod fault;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod metadata;
pub mod retry;
pub mod s3;
pub mod snapshot;

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use metadata::{MAX_USER_METADATA_BYTES, ObjectMetadata, WriteSettings};

/// One object as a listing reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    /// The ETag exactly as the server sent it, quotes included, so it can be replayed in If-Match.
    pub etag: String,
}

/// One page of a ListObjectsV2 call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects directly under the listed prefix (with a delimiter) or all of them (without).
    pub objects: Vec<ObjectSummary>,
    /// Common prefixes, each ending with the delimiter, e.g. `dir/sub/`.
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` when this was the last page.
    pub next_continuation_token: Option<String>,
}

/// The first bytes of the current version of an object and its head, as one GetObject answers
/// them: what an open for reading needs (see [`ObjectClient::get_start`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStart {
    /// The object's head. A GET's answer carries no whole-object checksum: `checksum_crc32c`
    /// is `None` there, whatever the object has.
    pub head: ObjectHead,
    /// Its first `min(len, size)` bytes.
    pub data: Bytes,
}

/// A ranged GET's answer: its bytes and, where asked for and the client took them as the bytes
/// arrived, the CRC32C of each piece of them (see [`ObjectClient::get_range_body`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeBody {
    pub data: Bytes,
    /// The CRC32C of each piece of `data` from its start, in order; the last piece may be
    /// shorter. `None`: not asked for, or not taken by this client.
    pub piece_sums: Option<Vec<u32>>,
}

/// What HeadObject tells about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: String,
    pub version_id: Option<String>,
    /// The headers and user metadata (`x-amz-meta-*`) stored with the object.
    pub metadata: ObjectMetadata,
    /// The object's CRC32C (base64), when the server keeps one and says so.
    pub checksum_crc32c: Option<String>,
}

/// A listing request: the prefix to list, the delimiter (usually `/`), and paging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub continuation_token: Option<String>,
    /// At most this many objects and prefixes in the page; `None` lets the server choose (1000 on S3).
    pub max_keys: Option<u32>,
}

/// One version (or delete marker) as ListObjectVersions reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionSummary {
    pub key: String,
    /// `"null"` for a version written while the bucket was not versioned.
    pub version_id: String,
    pub last_modified: SystemTime,
    /// A delete marker: the key did not exist from this time on (until a later version).
    pub is_delete_marker: bool,
    /// The key's current version (or marker).
    pub is_latest: bool,
    pub size: u64,
    pub etag: String,
}

/// A ListObjectVersions request: as [`ListRequest`], paged by key and version markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub version_id_marker: Option<String>,
    pub max_keys: Option<u32>,
}

/// One page of ListObjectVersions: versions of each key newest first, keys in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionPage {
    pub versions: Vec<VersionSummary>,
    pub common_prefixes: Vec<String>,
    /// Where the next page starts; `None` when this was the last.
    pub next_key_marker: Option<String>,
    pub next_version_id_marker: Option<String>,
}

/// A kind of request, for retry bounds, counters and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    List,
    Head,
    Get,
    /// `put` and `put_with`.
    Put,
    Delete,
    Copy,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
}

impl Op {
    /// Every kind, in [`Op::index`] order.
    pub const ALL: [Op; 11] = [
        Op::List,
        Op::Head,
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::Copy,
        Op::CreateMultipart,
        Op::UploadPart,
        Op::UploadPartCopy,
        Op::CompleteMultipart,
        Op::AbortMultipart,
    ];

    /// A dense index from 0, for per-operation tables.
    pub fn index(self) -> usize {
        match self {
            Op::List => 0,
            Op::Head => 1,
            Op::Get => 2,
            Op::Put => 3,
            Op::Delete => 4,
            Op::Copy => 5,
            Op::CreateMultipart => 6,
            Op::UploadPart => 7,
            Op::UploadPartCopy => 8,
            Op::CompleteMultipart => 9,
            Op::AbortMultipart => 10,
        }
    }

    /// The S3 API name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::List => "ListObjectsV2",
            Op::Head => "HeadObject",
            Op::Get => "GetObject",
            Op::Put => "PutObject",
            Op::Delete => "DeleteObject",
            Op::Copy => "CopyObject",
            Op::CreateMultipart => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::UploadPartCopy => "UploadPartCopy",
            Op::CompleteMultipart => "CompleteMultipartUpload",
            Op::AbortMultipart => "AbortMultipartUpload",
        }
    }
}

/// Every way an object request can fail, as far as the file system needs to tell them apart.
/// [`ObjectError::is_retryable`] splits them into transient failures, worth another attempt,
/// and final answers.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ObjectError {
    #[error("no such key: {0}")]
    NoSuchKey(String),
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// If-Match failed: the object was replaced since its ETag was read.
    #[error("object {0} changed on the server since it was opened")]
    PreconditionFailed(String),
    #[error("requested range not satisfiable for {0}")]
    InvalidRange(String),
    /// The server could not be reached, or the connection broke (refused, reset, DNS, TLS).
    /// Retryable.
    #[error("cannot reach the object store: {0}")]
    Unreachable(String),
    /// No answer, or no progress of a body, within the time bound of an attempt. Retryable.
    #[error("the object store did not answer in time: {0}")]
    TimedOut(String),
    /// The server answered that it cannot serve now: throttling (SlowDown, 503, 429), an
    /// internal error (500, 502, 504), S3's RequestTimeout. Retryable.
    #[error("object store error {code} (transient): {message}")]
    Transient { code: String, message: String },
    /// Any other error the server answered with (a 4xx we do not tell apart). Final.
    #[error("object store error {code}: {message}")]
    Service { code: String, message: String },
}

impl ObjectError {
    /// Whether the same request may succeed if sent again: the connection or the server failed,
    /// not the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjectError::Unreachable(_) | ObjectError::TimedOut(_) | ObjectError::Transient { .. } => true,
            ObjectError::NoSuchKey(_)
            | ObjectError::NoSuchBucket(_)
            | ObjectError::AccessDenied(_)
            | ObjectError::PreconditionFailed(_)
            | ObjectError::InvalidRange(_)
            | ObjectError::Service { .. } => false,
        }
    }

    /// The S3 error code, for answers that carry one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ObjectError::Transient { code, .. } | ObjectError::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The operations the file system needs from an object store.
///
/// Implementations must be cheap to call concurrently from many tasks.
#[async_trait]
pub trait ObjectClient: Send + Sync + 'static {
    /// The bucket this client is bound to (for messages and fsname).
    fn bucket(&self) -> &str;

    /// One ListObjectsV2 page.
    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError>;

    /// HeadObject of the current version.
    async fn head(&self, key: &str) -> Result<ObjectHead, ObjectError> {
        self.head_version(key, None).await
    }

    /// HeadObject, of the version `version_id` when given (versioned buckets).
    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError>;

    /// GetObject of `range` (end exclusive, clamped by the server to the object size), optionally
    /// with `If-Match: etag` so a replaced object fails with [`ObjectError::PreconditionFailed`]
    /// instead of returning bytes of another version.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, ObjectError> {
        self.get_version_range(key, None, range, if_match).await
    }

    /// [`ObjectClient::get_range`] of the version `version_id` when given: on a versioned
    /// bucket, the bytes of that version whatever was written since.
    async fn get_version_range(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, ObjectError> {
        let body = self
            .get_range_body(key, version_id, range, if_match, None)
            .await?;
        Ok(body.data)
    }

    /// [`ObjectClient::get_version_range`], and with `sum_pieces: Some(len)` the CRC32C of each
    /// `len` bytes of the answer where the client takes them as the bytes arrive
    /// ([`crate::checksum::PieceSums`]). The block reader asks for its blocks' sums, which the
    /// disk cache then stores instead of reading each block again to sum it. Every ranged GET
    /// of an object's bytes (all but [`ObjectClient::get_start`]'s) goes through here: layers
    /// over a client (retries, faults, snapshots) implement this one method and pass
    /// `sum_pieces` on.
    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError>;

    /// The head and the first `len` bytes of the current version of `key`. S3 answers both in
    /// one GetObject of `bytes=0-(len-1)`: an open that needs both (close-to-open asks S3 for the
    /// current version; the first read then needs its first bytes) makes one round trip, not a
    /// HEAD and then a GET. This default makes those two requests, the GET pinned to the head's
    /// ETag (and version); clients that can do it in one override it.
    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        let head = self.head(key).await?;
        let data = self
            .get_version_range(
                key,
                head.version_id.as_deref(),
                0..len.min(head.size),
                Some(&head.etag),
            )
            .await?;
        Ok(ObjectStart { head, data })
    }

    /// One ListObjectVersions page.
    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError>;

    /// PutObject of a whole body with S3's defaults (no content type, no metadata, no
    /// condition). Returns the new ETag.
    async fn put(&self, key: &str, body: Bytes) -> Result<String, ObjectError> {
        self.put_with(key, body, &PutOptions::default()).await
    }

    /// PutObject of a whole body with metadata and write conditions.
    /// Returns the new ETag. A failed condition is [`ObjectError::PreconditionFailed`].
    ///
    /// Garage (2.5) ignores `If-None-Match` and `If-Match` on PutObject: there the put always
    /// succeeds. Callers that need the condition on such a server must check it themselves.
    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError>;

    /// DeleteObject. Deleting a key that does not exist succeeds, as on S3.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;

    /// Server-side CopyObject within the bucket: with `metadata` `None` the source's metadata is
    /// copied (`MetadataDirective=COPY`), else the destination gets `metadata` in its place
    /// (`REPLACE`; the only way to copy a key onto itself, which changes its metadata and not
    /// its bytes). With
    /// `if_match`, the copy happens only if the *source* still has that ETag
    /// (`x-amz-copy-source-if-match`), else [`ObjectError::PreconditionFailed`]. A missing source
    /// is [`ObjectError::NoSuchKey`]. Returns the destination's new ETag. Objects over 5 GiB
    /// cannot be copied in one request (S3's limit): use [`ObjectClient::upload_part_copy`].
    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError>;

    /// CreateMultipartUpload with the metadata of `options`. Returns the
    /// upload id. Write conditions belong to [`ObjectClient::complete_multipart`] (S3 checks them
    /// when the object appears): `options` with `if_match` or `if_none_match` set is refused
    /// with `Service { code: "InvalidArgument" }`.
    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError>;

    /// UploadPart: part `part_number` (1..=10,000) of the upload. Returns the part's ETag, to be
    /// passed back in [`ObjectClient::complete_multipart`]. Re-uploading a part number replaces it.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError>;

    /// UploadPartCopy: part `part_number` of the upload is `source_range` (end exclusive, not
    /// empty, inside the source) of `source_key`, copied on the server; with `if_match` only if
    /// the source still has that ETag. Returns the part's ETag.
    ///
    /// Garage refuses to copy from objects it stores inline (a few KiB at most); parts must be
    /// 5 MiB anyway except the last, so this only matters for tiny sources.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        source_range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<String, ObjectError>;

    /// CompleteMultipartUpload of `parts` (ascending part numbers, each with the ETag its upload
    /// returned). Every part but the last must be at least 5 MiB (`EntityTooSmall`), every listed
    /// part must exist with that ETag (`InvalidPart`). With `if_match` / `if_none_match` the
    /// object appears only if the key still has that ETag / does not exist, else
    /// [`ObjectError::PreconditionFailed`] (the upload stays open, to be aborted). Returns the
    /// object's ETag (`"<hex>-<number of parts>"` on S3).
    ///
    /// Garage (2.5) does not check the minimum part size nor the write conditions.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError>;

    /// AbortMultipartUpload: drops the upload and its parts. An unknown upload id is
    /// `Service { code: "NoSuchUpload" }`, as on S3.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError>;
}

/// What a PutObject (or CreateMultipartUpload) carries besides the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// The headers and user metadata the object gets.
    pub metadata: ObjectMetadata,
    /// `If-None-Match: *`: fail with [`ObjectError::PreconditionFailed`] when the key exists.
    pub if_none_match: bool,
    /// `If-Match: etag`: fail with [`ObjectError::PreconditionFailed`] unless the key exists
    /// with this ETag.
    pub if_match: Option<String>,
}

impl PutOptions {
    /// Whether a write condition is set.
    pub fn has_conditions(&self) -> bool {
        self.if_none_match || self.if_match.is_some()
    }
}

/// One part named in a CompleteMultipartUpload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedPart {
    pub part_number: u32,
    /// The ETag UploadPart / UploadPartCopy returned for it.
    pub etag: String,
}

/// The error [`ObjectClient::create_multipart`] gives for options carrying write conditions.
pub(crate) fn conditions_on_create(key: &str) -> ObjectError {
    ObjectError::Service {
        code: "InvalidArgument".to_owned(),
        message: format!(
            "create_multipart({key}): write conditions belong to complete_multipart, where S3 checks them"
        ),
    }
}

/// A shared client is a client: layers can wrap an `Arc` of another layer (or of `dyn
/// ObjectClient`) as well as an owned one.
#[async_trait]
impl<T: ObjectClient + ?Sized> ObjectClient for std::sync::Arc<T> {
    fn bucket(&self) -> &str {
        (**self).bucket()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        (**self).list(request).await
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        (**self).head_version(key, version_id).await
    }

    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        (**self)
            .get_range_body(key, version_id, range, if_match, sum_pieces)
            .await
    }

    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        (**self).get_start(key, len).await
    }

    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        (**self).list_versions(request).await
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError> {
        (**self).put_with(key, body, options).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        (**self).delete(key).await
    }

    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        (**self).copy(source_key, dest_key, if_match, metadata).await
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError> {
        (**self).create_multipart(key, options).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        (**self).upload_part(key, upload_id, part_number, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        source_range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<String, ObjectError> {
        (**self)
            .upload_part_copy(key, upload_id, part_number, source_key, source_range, if_match)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError> {
        (**self)
            .complete_multipart(key, upload_id, parts, if_match, if_none_match)
            .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        (**self).abort_multipart(key, upload_id).await
    }
}
