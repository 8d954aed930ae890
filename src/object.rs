//! The object store as the file system sees it: the [`ObjectClient`] trait, the values it returns
//! and its typed errors.
//!
//! Everything above this module (fs, fuse, run) talks to S3 only through this trait, so the file
//! system can be driven by the in-memory client in tests and by the real SDK client in production.
//! This module owns the vocabulary (keys, ETags, listing pages); it must not know about inodes,
//! paths or errno values (the errno mapping lives in `fs/error.rs`).

pub mod buffers;
pub mod memory;
pub mod s3;

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

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

/// What HeadObject tells about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: String,
    pub content_type: Option<String>,
    pub version_id: Option<String>,
    /// User-defined metadata (`x-amz-meta-*`), keys without the prefix, lower-case as S3 stores them.
    pub user_metadata: HashMap<String, String>,
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

/// Every way an object request can fail, as far as the file system needs to tell them apart.
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
    /// The server could not be reached (connection refused, DNS, TLS, timeout).
    #[error("cannot reach the object store: {0}")]
    Unreachable(String),
    /// Any other error the server answered with (throttling, 5xx, unexpected codes).
    #[error("object store error {code}: {message}")]
    Service { code: String, message: String },
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

    /// HeadObject.
    async fn head(&self, key: &str) -> Result<ObjectHead, ObjectError>;

    /// GetObject of `range` (end exclusive, clamped by the server to the object size), optionally
    /// with `If-Match: etag` so a replaced object fails with [`ObjectError::PreconditionFailed`]
    /// instead of returning bytes of another version.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, ObjectError>;

    /// PutObject of a whole body. Returns the new ETag.
    async fn put(&self, key: &str, body: Bytes) -> Result<String, ObjectError>;
}
