//! `MemoryClient`: an in-memory bucket implementing [`ObjectClient`] with S3's semantics
//! (ListObjectsV2 paging and common prefixes, ranged GET with If-Match, content-derived ETags), plus
//! what tests need around it: setup helpers that bypass the request path and per-operation
//! request counters. Faults (errors, latency, stalls) are [`super::fault::FaultClient`]'s, which
//! wraps this client (or any other). Compiled for tests only (`cfg(test)` or the `test-util`
//! feature), never into the release binary.
//!
//! It owns only its own map of objects and its test knobs. It must not know about inodes, paths,
//! caches or errno values, and it must stay a faithful stand-in for the server: when S3 and the
//! convenient answer differ, it answers like S3 and says so here.
//!
//! Choices made where S3 is not what a unit test can reproduce byte for byte:
//! - ETag: S3 uses the quoted MD5 of the body for single-part uploads. Here it is the quoted
//!   hex of two 64-bit `DefaultHasher` (SipHash, fixed keys) digests over the body and its
//!   length: same shape (32 hex digits), same body gives the same ETag, a different body a
//!   different one. Stable within a build, not across Rust releases, and not equal to MD5.
//! - Last-Modified is truncated to whole seconds, as S3 reports it.
//! - Continuation tokens are opaque (`mem1:` plus the hex of the last key or common prefix
//!   returned); a token this client did not produce fails like S3 does, with `InvalidArgument`.
//! - Requests are counted when made, whether they then succeed or fail; setup helpers are not
//!   requests and count nothing.
//! - Multipart: the object's ETag is `"<32 hex>-<number of parts>"` like S3's (the hex is the
//!   hash above over the parts' ETags, where S3 takes the MD5 of their binary MD5s). Upload ids
//!   are `mem-upload-<n>`. Complete checks what S3 checks, in its order: at least one part
//!   (`MalformedXML`), ascending part numbers (`InvalidPartOrder`), every listed part uploaded
//!   with that ETag (`InvalidPart`), every part but the last at least 5 MiB (`EntityTooSmall`),
//!   then the write conditions (412). A failed complete leaves the upload open, as on S3.
//! - Write conditions (`If-None-Match: *`, `If-Match`) on PutObject and CompleteMultipartUpload
//!   are honoured as S3 does since 2024: If-Match on a missing key is `NoSuchKey` (404).
//! - Versions: the bucket is an unversioned one. ListObjectVersions lists every object once as
//!   version `null`, and a HEAD or GET of version `null` is the object; any other version id is
//!   `NoSuchVersion`. Versioned behaviour is tested against moto (scripts/moto-server).
//! - CopyObject of a key onto itself is refused like S3 (`InvalidRequest`) unless it replaces
//!   the metadata. A copy's storage class and encryption are the request's, not the source's
//!   (S3 gives a copy the bucket's defaults unless told).

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::ops::{Bound, Range};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, ListPage, ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata, ObjectStart,
    ObjectSummary, Op, PutOptions, RangeBody, VersionListRequest, VersionPage, VersionSummary,
    conditions_on_create,
};

/// S3's page size when MaxKeys is absent, and also the most it returns when asked for more.
const S3_MAX_KEYS: u32 = 1000;

/// The Content-Type S3 records when PutObject carries none.
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

/// The version id of every object of an unversioned bucket, as S3 reports it.
const NULL_VERSION: &str = "null";

/// Marks (and versions) this client's continuation tokens, so a foreign token is rejected.
const TOKEN_PREFIX: &str = "mem1:";

/// Salt fed to the second ETag hasher so its digest is independent of the first one.
const ETAG_SECOND_HALF_SALT: u8 = 0x5a;

/// S3's smallest part, for every part of a multipart upload but the last: 5 MiB.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// S3's part numbers are 1..=10,000.
const MAX_PART_NUMBER: u32 = 10_000;

/// Number of [`Op`] variants: the size of the per-operation tables.
const OP_COUNT: usize = Op::ALL.len();

/// A snapshot of the request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub list: u64,
    pub head: u64,
    pub get: u64,
    pub put: u64,
    pub delete: u64,
    pub copy: u64,
    pub create_multipart: u64,
    pub upload_part: u64,
    pub upload_part_copy: u64,
    pub complete_multipart: u64,
    pub abort_multipart: u64,
    /// Total bytes returned by successful `get_range` calls.
    pub get_bytes: u64,
    /// Total body bytes of successful `put`/`put_with` and `upload_part` calls (not copies).
    pub put_bytes: u64,
}

/// One stored object.
#[derive(Clone, Debug)]
struct MemoryObject {
    body: Bytes,
    etag: String,
    last_modified: SystemTime,
    /// Its content type is always set (S3's default when the writer gave none).
    metadata: ObjectMetadata,
}

/// One open multipart upload.
#[derive(Debug)]
struct Upload {
    key: String,
    metadata: ObjectMetadata,
    /// Part number -> (body, ETag).
    parts: BTreeMap<u32, (Bytes, String)>,
}

#[derive(Default)]
struct Counters {
    requests: [AtomicU64; OP_COUNT],
    get_bytes: AtomicU64,
    put_bytes: AtomicU64,
}

/// An in-memory S3 bucket. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct MemoryClient {
    bucket: String,
    objects: Mutex<BTreeMap<String, MemoryObject>>,
    /// Open multipart uploads by id. Lock order: `uploads` before `objects`.
    uploads: Mutex<HashMap<String, Upload>>,
    next_upload_id: AtomicU64,
    counters: Counters,
}

impl fmt::Debug for MemoryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryClient")
            .field("bucket", &self.bucket)
            .field("objects", &self.object_count())
            .finish_non_exhaustive()
    }
}

/// The quoted, content-derived ETag described in the module documentation.
fn etag_of(body: &[u8]) -> String {
    let mut first = DefaultHasher::new();
    first.write(body);
    first.write_u64(body.len() as u64);
    let mut second = DefaultHasher::new();
    second.write_u8(ETAG_SECOND_HALF_SALT);
    second.write(body);
    second.write_u64(body.len() as u64);
    format!("\"{:016x}{:016x}\"", first.finish(), second.finish())
}

/// A new object as PutObject stores it: the ETag derived from the body, Last-Modified now, S3's
/// default content type when none is given, metadata keys lower-cased.
fn new_object(body: Bytes, metadata: &ObjectMetadata) -> MemoryObject {
    MemoryObject {
        etag: etag_of(&body),
        body,
        last_modified: now_in_seconds(),
        metadata: stored_metadata(metadata),
    }
}

/// Metadata as S3 stores it: names lower-cased, the default content type filled in.
fn stored_metadata(metadata: &ObjectMetadata) -> ObjectMetadata {
    let mut stored = metadata.clone().normalized();
    stored
        .content_type
        .get_or_insert_with(|| DEFAULT_CONTENT_TYPE.to_owned());
    stored
}

/// The multipart ETag described in the module documentation: `"<32 hex>-<parts>"`.
fn multipart_etag(part_etags: &[&str]) -> String {
    let joined: String = part_etags.iter().map(|etag| etag.trim_matches('"')).collect();
    format!(
        "\"{}-{}\"",
        etag_of(joined.as_bytes()).trim_matches('"'),
        part_etags.len()
    )
}

fn service(code: &str, message: String) -> ObjectError {
    ObjectError::Service {
        code: code.to_owned(),
        message,
    }
}

fn no_such_upload(upload_id: &str) -> ObjectError {
    service(
        "NoSuchUpload",
        format!("The specified multipart upload {upload_id:?} does not exist"),
    )
}

/// Write conditions as S3 checks them on PutObject and CompleteMultipartUpload.
fn check_write_conditions(
    existing: Option<&MemoryObject>,
    key: &str,
    if_match: Option<&str>,
    if_none_match: bool,
) -> Result<(), ObjectError> {
    if if_none_match && existing.is_some() {
        return Err(ObjectError::PreconditionFailed(key.to_owned()));
    }
    if let Some(if_match) = if_match {
        let existing = existing.ok_or_else(|| ObjectError::NoSuchKey(key.to_owned()))?;
        if !etag_matches(if_match, &existing.etag) {
            return Err(ObjectError::PreconditionFailed(key.to_owned()));
        }
    }
    Ok(())
}

/// This bucket keeps no versions: only `null` (the current object) can be asked for.
fn check_version(key: &str, version_id: Option<&str>) -> Result<(), ObjectError> {
    match version_id {
        None | Some(NULL_VERSION) => Ok(()),
        Some(other) => Err(service(
            "NoSuchVersion",
            format!("{key}: the bucket keeps no version {other:?}"),
        )),
    }
}

/// Now, truncated to whole seconds as S3 reports Last-Modified.
fn now_in_seconds() -> SystemTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// Whether an If-Match header value accepts `etag`: `*` matches any existing object, otherwise
/// one of the comma-separated ETags must equal it (quotes optional, as S3 accepts both).
fn etag_matches(if_match: &str, etag: &str) -> bool {
    let stored = etag.trim_matches('"');
    if_match
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_matches('"') == stored)
}

fn encode_token(last: &str) -> String {
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * last.len());
    token.push_str(TOKEN_PREFIX);
    for byte in last.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

fn decode_token(token: &str) -> Result<String, ObjectError> {
    let invalid = || ObjectError::Service {
        code: "InvalidArgument".to_owned(),
        message: "The continuation token provided is incorrect".to_owned(),
    };
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(invalid)?;
    if hex.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| {
            hex.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// The common prefix `key` collapses into: `prefix` plus everything up to and including the first
/// `delimiter` after it, or `None` when no delimiter follows the prefix.
fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: &str) -> Option<&'k str> {
    let rest = &key[prefix.len()..];
    rest.find(delimiter)
        .map(|at| &key[..prefix.len() + at + delimiter.len()])
}

impl MemoryClient {
    /// An empty bucket called `bucket`.
    pub fn new(bucket: &str) -> Self {
        MemoryClient {
            bucket: bucket.to_owned(),
            objects: Mutex::new(BTreeMap::new()),
            uploads: Mutex::new(HashMap::new()),
            next_upload_id: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    /// Setup: stores `body` at `key` with S3's default content type and no user metadata, as
    /// another writer would. Not counted as a request. Returns the new ETag.
    pub fn put_object(&self, key: &str, body: impl Into<Bytes>) -> String {
        self.put_object_with(key, body, None, HashMap::new())
    }

    /// Setup: stores an object with a content type (`None`: S3's default, `binary/octet-stream`)
    /// and user metadata (keys lower-cased, as S3 stores them). Replaces any object at `key`
    /// entirely, metadata included. Not counted as a request. Returns the new ETag.
    pub fn put_object_with(
        &self,
        key: &str,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
        user_metadata: HashMap<String, String>,
    ) -> String {
        let metadata = ObjectMetadata {
            content_type: content_type.map(str::to_owned),
            user: user_metadata.into_iter().collect(),
            ..ObjectMetadata::default()
        };
        self.put_object_with_metadata(key, body, &metadata)
    }

    /// Setup: stores an object with `metadata`, as another writer would. Not counted as a
    /// request. Returns the new ETag.
    pub fn put_object_with_metadata(
        &self,
        key: &str,
        body: impl Into<Bytes>,
        metadata: &ObjectMetadata,
    ) -> String {
        let object = new_object(body.into(), metadata);
        let etag = object.etag.clone();
        lock(&self.objects).insert(key.to_owned(), object);
        etag
    }

    /// Inspection: how many multipart uploads are open (created, neither completed nor aborted).
    pub fn open_multipart_uploads(&self) -> usize {
        lock(&self.uploads).len()
    }

    /// Setup: removes `key`, as another writer would. Returns whether it existed.
    pub fn delete_object(&self, key: &str) -> bool {
        lock(&self.objects).remove(key).is_some()
    }

    /// Setup: backdates (or postdates) an object's Last-Modified, stored exactly as given.
    ///
    /// # Panics
    /// If `key` does not exist: that is a bug in the test's setup.
    pub fn set_last_modified(&self, key: &str, last_modified: SystemTime) {
        match lock(&self.objects).get_mut(key) {
            Some(object) => object.last_modified = last_modified,
            None => panic!(
                "set_last_modified: no object {key:?} in memory bucket {:?}",
                self.bucket
            ),
        }
    }

    /// How many objects the bucket holds.
    pub fn object_count(&self) -> usize {
        lock(&self.objects).len()
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.objects).contains_key(key)
    }

    /// Inspection: the body stored at `key`, without counting a request.
    pub fn body(&self, key: &str) -> Option<Bytes> {
        lock(&self.objects).get(key).map(|object| object.body.clone())
    }

    /// Inspection: every key, in S3's (byte-lexicographic) order.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.objects).keys().cloned().collect()
    }

    /// A snapshot of the request counters.
    pub fn counters(&self) -> RequestCounts {
        let counters = &self.counters;
        let requests = |op: Op| counters.requests[op.index()].load(Ordering::Relaxed);
        RequestCounts {
            list: requests(Op::List),
            head: requests(Op::Head),
            get: requests(Op::Get),
            put: requests(Op::Put),
            delete: requests(Op::Delete),
            copy: requests(Op::Copy),
            create_multipart: requests(Op::CreateMultipart),
            upload_part: requests(Op::UploadPart),
            upload_part_copy: requests(Op::UploadPartCopy),
            complete_multipart: requests(Op::CompleteMultipart),
            abort_multipart: requests(Op::AbortMultipart),
            get_bytes: counters.get_bytes.load(Ordering::Relaxed),
            put_bytes: counters.put_bytes.load(Ordering::Relaxed),
        }
    }

    /// Sets every request counter back to zero.
    pub fn reset_counters(&self) {
        let counters = &self.counters;
        for counter in counters
            .requests
            .iter()
            .chain([&counters.get_bytes, &counters.put_bytes])
        {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The common start of every request: count it.
    fn begin(&self, op: Op) {
        self.counters.requests[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn list_page(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        let start_after = request
            .continuation_token
            .as_deref()
            .map(decode_token)
            .transpose()?;
        let max_keys = request.max_keys.unwrap_or(S3_MAX_KEYS).min(S3_MAX_KEYS) as usize;
        // S3 treats an empty delimiter as no delimiter.
        let delimiter = request
            .delimiter
            .as_deref()
            .filter(|delimiter| !delimiter.is_empty());
        let prefix = request.prefix.as_str();
        let lower = match start_after.as_deref() {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };

        let objects = lock(&self.objects);
        let mut page = ListPage::default();
        let mut returned = 0;
        let mut last: Option<&str> = None;
        let mut truncated = false;
        // Keys sharing `prefix` are contiguous from `prefix` on, and keys sharing a common prefix
        // are contiguous too, so one ordered pass sees each common prefix as one run.
        for (key, object) in objects.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            match delimiter.and_then(|delimiter| common_prefix(key, prefix, delimiter)) {
                Some(common) => {
                    let already_returned = last == Some(common) || start_after.as_deref() >= Some(common);
                    if already_returned {
                        continue;
                    }
                    if returned == max_keys {
                        truncated = true;
                        break;
                    }
                    page.common_prefixes.push(common.to_owned());
                    last = Some(common);
                }
                None => {
                    if returned == max_keys {
                        truncated = true;
                        break;
                    }
                    page.objects.push(ObjectSummary {
                        key: key.clone(),
                        size: object.body.len() as u64,
                        last_modified: object.last_modified,
                        etag: object.etag.clone(),
                    });
                    last = Some(key);
                }
            }
            returned += 1;
        }
        // With max_keys 0 nothing was returned to resume after: the page ends the listing.
        if truncated {
            page.next_continuation_token = last.map(encode_token);
        }
        Ok(page)
    }

    fn head_object(&self, key: &str) -> Result<ObjectHead, ObjectError> {
        let objects = lock(&self.objects);
        let object = objects
            .get(key)
            .ok_or_else(|| ObjectError::NoSuchKey(key.to_owned()))?;
        Ok(ObjectHead {
            size: object.body.len() as u64,
            last_modified: object.last_modified,
            etag: object.etag.clone(),
            version_id: None,
            metadata: object.metadata.clone(),
            checksum_crc32c: None,
        })
    }

    /// Stores one part of an open upload (replacing a part of the same number); returns its ETag.
    fn store_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(service(
                "InvalidArgument",
                format!("Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"),
            ));
        }
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get_mut(upload_id)
            .filter(|upload| upload.key == key)
            .ok_or_else(|| no_such_upload(upload_id))?;
        let etag = etag_of(&body);
        upload.parts.insert(part_number, (body, etag.clone()));
        Ok(etag)
    }

    /// S3's order of checks: existence (404), then If-Match (412), then the range (416).
    fn read_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> Result<Bytes, ObjectError> {
        let objects = lock(&self.objects);
        let object = objects
            .get(key)
            .ok_or_else(|| ObjectError::NoSuchKey(key.to_owned()))?;
        if if_match.is_some_and(|if_match| !etag_matches(if_match, &object.etag)) {
            return Err(ObjectError::PreconditionFailed(key.to_owned()));
        }
        let size = object.body.len() as u64;
        let empty_object_from_zero = size == 0 && range.start == 0;
        if range.start >= size && !empty_object_from_zero {
            return Err(ObjectError::InvalidRange(key.to_owned()));
        }
        let end = range.end.min(size);
        // An empty or inverted range cannot be sent as an HTTP Range header; answer it with no
        // bytes rather than S3's whole-object fallback for a malformed header.
        let start = range.start.min(end);
        Ok(object.body.slice(start as usize..end as usize))
    }
}

#[async_trait]
impl ObjectClient for MemoryClient {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        self.begin(Op::List);
        self.list_page(request)
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        self.begin(Op::Head);
        check_version(key, version_id)?;
        self.head_object(key)
    }

    /// With `sum_pieces`, sums its pieces as the S3 client does while receiving them, so tests
    /// of the block reader and the disk cache go the way a mount's blocks go.
    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        self.begin(Op::Get);
        check_version(key, version_id)?;
        let data = self.read_range(key, range, if_match)?;
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let piece_sums = sum_pieces.map(|piece_len| {
            let mut sums = crate::checksum::PieceSums::new(piece_len);
            sums.update(&data);
            sums.finish()
        });
        Ok(RangeBody { data, piece_sums })
    }

    /// One GetObject, as S3 answers it: the head without its checksum, and the first bytes.
    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        self.begin(Op::Get);
        let mut head = self.head_object(key)?;
        head.checksum_crc32c = None;
        let data = self.read_range(key, 0..len.min(head.size), Some(&head.etag))?;
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(ObjectStart { head, data })
    }

    /// As S3 lists an unversioned bucket: every object once, as version `null`.
    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        self.begin(Op::List);
        let page = self.list_page(&ListRequest {
            prefix: request.prefix.clone(),
            delimiter: request.delimiter.clone(),
            continuation_token: request.key_marker.as_deref().map(encode_token),
            max_keys: request.max_keys,
        })?;
        let next_key_marker = match &page.next_continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => None,
        };
        Ok(VersionPage {
            versions: page
                .objects
                .into_iter()
                .map(|object| VersionSummary {
                    key: object.key,
                    version_id: NULL_VERSION.to_owned(),
                    last_modified: object.last_modified,
                    is_delete_marker: false,
                    is_latest: true,
                    size: object.size,
                    etag: object.etag,
                })
                .collect(),
            common_prefixes: page.common_prefixes,
            next_version_id_marker: next_key_marker.as_ref().map(|_| NULL_VERSION.to_owned()),
            next_key_marker,
        })
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError> {
        self.begin(Op::Put);
        let size = body.len() as u64;
        let mut objects = lock(&self.objects);
        check_write_conditions(
            objects.get(key),
            key,
            options.if_match.as_deref(),
            options.if_none_match,
        )?;
        let object = new_object(body, &options.metadata);
        let etag = object.etag.clone();
        objects.insert(key.to_owned(), object);
        self.counters.put_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.begin(Op::Delete);
        lock(&self.objects).remove(key);
        Ok(())
    }

    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        self.begin(Op::Copy);
        let mut objects = lock(&self.objects);
        let source = objects
            .get(source_key)
            .ok_or_else(|| ObjectError::NoSuchKey(source_key.to_owned()))?;
        if if_match.is_some_and(|if_match| !etag_matches(if_match, &source.etag)) {
            return Err(ObjectError::PreconditionFailed(source_key.to_owned()));
        }
        if source_key == dest_key && metadata.is_none() {
            return Err(service(
                "InvalidRequest",
                format!(
                    "This copy request is illegal because it is trying to copy {source_key:?} to \
                     itself without changing the object's metadata"
                ),
            ));
        }
        // A copy is one new object: its ETag is that of its body, even from a multipart source.
        let metadata = match metadata {
            Some(metadata) => stored_metadata(metadata),
            None => ObjectMetadata {
                storage_class: None,
                sse: None,
                sse_kms_key_id: None,
                ..source.metadata.clone()
            },
        };
        let copied = MemoryObject {
            etag: etag_of(&source.body),
            body: source.body.clone(),
            last_modified: now_in_seconds(),
            metadata,
        };
        let etag = copied.etag.clone();
        objects.insert(dest_key.to_owned(), copied);
        Ok(etag)
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError> {
        self.begin(Op::CreateMultipart);
        if options.has_conditions() {
            return Err(conditions_on_create(key));
        }
        let upload_id = format!(
            "mem-upload-{}",
            self.next_upload_id.fetch_add(1, Ordering::Relaxed)
        );
        let upload = Upload {
            key: key.to_owned(),
            metadata: stored_metadata(&options.metadata),
            parts: BTreeMap::new(),
        };
        lock(&self.uploads).insert(upload_id.clone(), upload);
        Ok(upload_id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        self.begin(Op::UploadPart);
        let size = body.len() as u64;
        let etag = self.store_part(key, upload_id, part_number, body)?;
        self.counters.put_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(etag)
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
        self.begin(Op::UploadPartCopy);
        let body = {
            let objects = lock(&self.objects);
            let source = objects
                .get(source_key)
                .ok_or_else(|| ObjectError::NoSuchKey(source_key.to_owned()))?;
            if if_match.is_some_and(|if_match| !etag_matches(if_match, &source.etag)) {
                return Err(ObjectError::PreconditionFailed(source_key.to_owned()));
            }
            // Unlike GET, S3 does not clamp a copy range: it must lie inside the source.
            let size = source.body.len() as u64;
            if source_range.is_empty() || source_range.end > size {
                return Err(ObjectError::InvalidRange(source_key.to_owned()));
            }
            source
                .body
                .slice(source_range.start as usize..source_range.end as usize)
        };
        self.store_part(key, upload_id, part_number, body)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError> {
        self.begin(Op::CompleteMultipart);
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get(upload_id)
            .filter(|upload| upload.key == key)
            .ok_or_else(|| no_such_upload(upload_id))?;
        if parts.is_empty() {
            return Err(service(
                "MalformedXML",
                "CompleteMultipartUpload names no part".to_owned(),
            ));
        }
        if parts
            .windows(2)
            .any(|pair| pair[0].part_number >= pair[1].part_number)
        {
            return Err(service(
                "InvalidPartOrder",
                "The list of parts was not in ascending order".to_owned(),
            ));
        }
        let mut bodies = Vec::with_capacity(parts.len());
        for part in parts {
            match upload.parts.get(&part.part_number) {
                Some((body, etag)) if etag_matches(&part.etag, etag) && part.etag != "*" => {
                    bodies.push((body, etag.as_str()))
                }
                _ => {
                    return Err(service(
                        "InvalidPart",
                        format!(
                            "Part {} was not uploaded or its ETag is not {}",
                            part.part_number, part.etag
                        ),
                    ));
                }
            }
        }
        if let Some(index) = bodies[..bodies.len() - 1]
            .iter()
            .position(|(body, _)| body.len() < MIN_PART_SIZE)
        {
            return Err(service(
                "EntityTooSmall",
                format!(
                    "Part {} is smaller than the minimum allowed size of {MIN_PART_SIZE} bytes",
                    parts[index].part_number
                ),
            ));
        }
        let mut objects = lock(&self.objects);
        check_write_conditions(objects.get(key), key, if_match, if_none_match)?;
        let mut body = Vec::with_capacity(bodies.iter().map(|(body, _)| body.len()).sum());
        for (part, _) in &bodies {
            body.extend_from_slice(part);
        }
        let etags: Vec<&str> = bodies.iter().map(|(_, etag)| *etag).collect();
        let etag = multipart_etag(&etags);
        let object = MemoryObject {
            body: Bytes::from(body),
            etag: etag.clone(),
            last_modified: now_in_seconds(),
            metadata: upload.metadata.clone(),
        };
        objects.insert(key.to_owned(), object);
        drop(objects);
        uploads.remove(upload_id);
        Ok(etag)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        self.begin(Op::AbortMultipart);
        let mut uploads = lock(&self.uploads);
        match uploads.get(upload_id) {
            Some(upload) if upload.key == key => {
                uploads.remove(upload_id);
                Ok(())
            }
            _ => Err(no_such_upload(upload_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::object::fault::FaultClient;

    /// Ten keys: files at the root, a nested tree, and neighbours of `/` in byte order
    /// (`-` is 0x2d and `0` is 0x30, on either side of `/` at 0x2f).
    const TREE: [&str; 10] = [
        "a-file", "a/1", "a/2", "a/b/3", "a/b/c/4", "a0", "b/5", "c/d/6", "top", "zz/7",
    ];

    fn tree() -> MemoryClient {
        let client = MemoryClient::new("test-bucket");
        for key in TREE {
            client.put_object(key, key.as_bytes().to_vec());
        }
        client
    }

    fn request(prefix: &str, delimiter: Option<&str>, max_keys: Option<u32>) -> ListRequest {
        ListRequest {
            prefix: prefix.to_owned(),
            delimiter: delimiter.map(str::to_owned),
            continuation_token: None,
            max_keys,
        }
    }

    /// One listing entry in the order S3 returns them, objects and prefixes merged.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum Entry {
        Object(String),
        Prefix(String),
    }

    impl Entry {
        fn name(&self) -> &str {
            match self {
                Entry::Object(name) | Entry::Prefix(name) => name,
            }
        }
    }

    fn entries(page: &ListPage) -> Vec<Entry> {
        let mut entries: Vec<Entry> = page
            .objects
            .iter()
            .map(|object| Entry::Object(object.key.clone()))
            .chain(page.common_prefixes.iter().cloned().map(Entry::Prefix))
            .collect();
        entries.sort_by(|a, b| a.name().cmp(b.name()));
        entries
    }

    /// Follows continuation tokens to the end; returns every page's entries.
    async fn all_pages(client: &MemoryClient, mut request: ListRequest) -> Vec<Vec<Entry>> {
        let mut pages = Vec::new();
        loop {
            let page = client.list(&request).await.expect("list");
            pages.push(entries(&page));
            match page.next_continuation_token {
                Some(token) => request.continuation_token = Some(token),
                None => return pages,
            }
            assert!(pages.len() <= TREE.len() + 1, "listing does not terminate");
        }
    }

    #[tokio::test]
    async fn list_without_delimiter_pages_concatenate_to_full_listing() {
        let client = tree();
        let full = client.list(&request("", None, None)).await.unwrap();
        assert_eq!(full.next_continuation_token, None);
        assert!(full.common_prefixes.is_empty());
        let full_keys: Vec<&str> = full.objects.iter().map(|object| object.key.as_str()).collect();
        let mut sorted = TREE.to_vec();
        sorted.sort();
        assert_eq!(full_keys, sorted);

        let pages = all_pages(&client, request("", None, Some(2))).await;
        assert_eq!(pages.len(), 5);
        assert!(pages.iter().all(|page| page.len() == 2));
        let concatenated: Vec<Entry> = pages.concat();
        let expected: Vec<Entry> = sorted.iter().map(|key| Entry::Object(key.to_string())).collect();
        assert_eq!(concatenated, expected);
    }

    #[tokio::test]
    async fn list_with_delimiter_collapses_prefixes_once_across_pages() {
        let client = tree();
        let expected = vec![
            Entry::Object("a-file".into()),
            Entry::Prefix("a/".into()),
            Entry::Object("a0".into()),
            Entry::Prefix("b/".into()),
            Entry::Prefix("c/".into()),
            Entry::Object("top".into()),
            Entry::Prefix("zz/".into()),
        ];
        let single = client.list(&request("", Some("/"), None)).await.unwrap();
        assert_eq!(entries(&single), expected);
        assert_eq!(single.next_continuation_token, None);

        for max_keys in [1, 2, 3] {
            let pages = all_pages(&client, request("", Some("/"), Some(max_keys))).await;
            assert!(pages.iter().all(|page| page.len() <= max_keys as usize));
            let concatenated = pages.concat();
            let distinct: HashSet<&Entry> = concatenated.iter().collect();
            assert_eq!(
                distinct.len(),
                concatenated.len(),
                "an entry repeated with max_keys {max_keys}"
            );
            assert_eq!(concatenated, expected, "max_keys {max_keys}");
        }
    }

    #[tokio::test]
    async fn list_with_delimiter_under_a_prefix() {
        let client = tree();
        let pages = all_pages(&client, request("a/", Some("/"), Some(2))).await;
        assert_eq!(
            pages,
            vec![
                vec![Entry::Object("a/1".into()), Entry::Object("a/2".into())],
                vec![Entry::Prefix("a/b/".into())],
            ]
        );
        // The prefix need not end at a delimiter: "a" matches "a-file", "a/..." and "a0".
        let page = client.list(&request("a", Some("/"), None)).await.unwrap();
        assert_eq!(
            entries(&page),
            vec![
                Entry::Object("a-file".into()),
                Entry::Prefix("a/".into()),
                Entry::Object("a0".into())
            ]
        );
        // A prefix with nothing under it lists empty, and a prefix that is itself a key lists it.
        let empty = client.list(&request("nothing/", Some("/"), None)).await.unwrap();
        assert_eq!(empty, ListPage::default());
        let itself = client.list(&request("top", Some("/"), None)).await.unwrap();
        assert_eq!(entries(&itself), vec![Entry::Object("top".into())]);
    }

    #[tokio::test]
    async fn list_orders_by_bytes_and_reports_sizes_and_etags() {
        let client = MemoryClient::new("b");
        // "é" is 0xc3 0xa9 in UTF-8, after "z"; "Z" (0x5a) sorts before "a" (0x61).
        let etag = client.put_object("é", "12345");
        client.put_object("z", "");
        client.put_object("Z", "x");
        let page = client.list(&request("", None, None)).await.unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|object| object.key.as_str()).collect();
        assert_eq!(keys, ["Z", "z", "é"]);
        assert_eq!(page.objects[2].size, 5);
        assert_eq!(page.objects[2].etag, etag);
        assert_eq!(page.objects[1].size, 0);
    }

    #[tokio::test]
    async fn list_max_keys_zero_default_and_cap() {
        let client = MemoryClient::new("b");
        for index in 0..1005 {
            client.put_object(&format!("k{index:04}"), "");
        }
        let zero = client.list(&request("", None, Some(0))).await.unwrap();
        assert_eq!(zero, ListPage::default());

        let default = client.list(&request("", None, None)).await.unwrap();
        assert_eq!(default.objects.len(), 1000);
        assert!(default.next_continuation_token.is_some());
        let capped = client.list(&request("", None, Some(5000))).await.unwrap();
        assert_eq!(capped.objects.len(), 1000);

        let mut next = request("", None, None);
        next.continuation_token = default.next_continuation_token;
        let rest = client.list(&next).await.unwrap();
        assert_eq!(rest.objects.len(), 5);
        assert_eq!(rest.objects[0].key, "k1000");
        assert_eq!(rest.next_continuation_token, None);
    }

    #[tokio::test]
    async fn list_rejects_a_foreign_continuation_token() {
        let client = tree();
        for token in ["a/1", "mem1:zz", "mem1:6", "mem1:ff"] {
            let mut bad = request("", None, None);
            bad.continuation_token = Some(token.to_owned());
            match client.list(&bad).await {
                Err(ObjectError::Service { code, .. }) => {
                    assert_eq!(code, "InvalidArgument", "token {token}")
                }
                other => panic!("token {token:?} gave {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn list_sees_objects_added_and_removed_between_pages() {
        let client = tree();
        let first = client.list(&request("", Some("/"), Some(2))).await.unwrap();
        assert_eq!(
            entries(&first),
            vec![Entry::Object("a-file".into()), Entry::Prefix("a/".into())]
        );
        // Added inside an already returned prefix: not listed again. Added later: listed.
        client.put_object("a/new", "");
        client.put_object("b0", "");
        assert!(client.delete_object("top"));
        let mut next = request("", Some("/"), None);
        next.continuation_token = first.next_continuation_token;
        let rest = client.list(&next).await.unwrap();
        assert_eq!(
            entries(&rest),
            vec![
                Entry::Object("a0".into()),
                Entry::Prefix("b/".into()),
                Entry::Object("b0".into()),
                Entry::Prefix("c/".into()),
                Entry::Prefix("zz/".into()),
            ]
        );
    }

    #[tokio::test]
    async fn head_reports_metadata_and_missing_keys() {
        let client = MemoryClient::new("b");
        let metadata = HashMap::from([("Mode".to_owned(), "0644".to_owned())]);
        let etag = client.put_object_with("f", "hello", Some("text/plain"), metadata);
        let head = client.head("f").await.unwrap();
        assert_eq!(head.size, 5);
        assert_eq!(head.etag, etag);
        assert_eq!(head.metadata.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            head.metadata.user,
            BTreeMap::from([("mode".to_owned(), "0644".to_owned())])
        );
        assert_eq!(head.version_id, None);
        let since_epoch = head.last_modified.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            since_epoch.subsec_nanos(),
            0,
            "Last-Modified has whole seconds, like S3"
        );

        // A plain put replaces the metadata and falls back to S3's default content type.
        client.put("f", Bytes::from_static(b"x")).await.unwrap();
        let head = client.head("f").await.unwrap();
        assert_eq!(head.metadata.content_type.as_deref(), Some(DEFAULT_CONTENT_TYPE));
        assert!(head.metadata.user.is_empty());

        let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        client.set_last_modified("f", when);
        assert_eq!(client.head("f").await.unwrap().last_modified, when);
        let page = client.list(&request("", None, None)).await.unwrap();
        assert_eq!(page.objects[0].last_modified, when);

        assert_eq!(
            client.head("missing").await,
            Err(ObjectError::NoSuchKey("missing".into()))
        );
    }

    #[tokio::test]
    async fn get_range_clamps_and_rejects_unsatisfiable_ranges() {
        let client = MemoryClient::new("b");
        client.put_object("ten", "0123456789");
        client.put_object("empty", "");
        assert_eq!(client.get_range("ten", 0..100, None).await.unwrap(), "0123456789");
        assert_eq!(client.get_range("ten", 4..8, None).await.unwrap(), "4567");
        assert_eq!(client.get_range("ten", 8..u64::MAX, None).await.unwrap(), "89");
        assert_eq!(
            client.get_range("ten", 10..20, None).await,
            Err(ObjectError::InvalidRange("ten".into()))
        );
        assert_eq!(
            client.get_range("ten", 99..100, None).await,
            Err(ObjectError::InvalidRange("ten".into()))
        );
        assert_eq!(client.get_range("empty", 0..10, None).await.unwrap(), "");
        assert_eq!(
            client.get_range("empty", 1..10, None).await,
            Err(ObjectError::InvalidRange("empty".into()))
        );
        assert_eq!(client.get_range("ten", 5..5, None).await.unwrap(), "");
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 7..5;
        assert_eq!(client.get_range("ten", inverted, None).await.unwrap(), "");
        assert_eq!(
            client.get_range("nope", 0..1, None).await,
            Err(ObjectError::NoSuchKey("nope".into()))
        );
    }

    #[tokio::test]
    async fn get_range_if_match_follows_the_stored_etag() {
        let client = MemoryClient::new("b");
        let first = client.put_object("f", "one");
        assert!(first.starts_with('"') && first.ends_with('"') && first.len() == 34);
        assert_eq!(client.get_range("f", 0..3, Some(&first)).await.unwrap(), "one");
        // Quotes are optional and `*` matches any existing object, as on S3.
        assert_eq!(
            client
                .get_range("f", 0..3, Some(first.trim_matches('"')))
                .await
                .unwrap(),
            "one"
        );
        assert_eq!(client.get_range("f", 0..3, Some("*")).await.unwrap(), "one");

        let second = client.put("f", Bytes::from_static(b"two")).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(
            client.get_range("f", 0..3, Some(&first)).await,
            Err(ObjectError::PreconditionFailed("f".into()))
        );
        assert_eq!(client.get_range("f", 0..3, Some(&second)).await.unwrap(), "two");
        // Precondition is checked before the range, as S3 does.
        assert_eq!(
            client.get_range("f", 50..60, Some(&first)).await,
            Err(ObjectError::PreconditionFailed("f".into()))
        );

        // Same body, same ETag (S3's MD5 ETags behave the same way).
        assert_eq!(client.put_object("g", "two"), second);
    }

    #[tokio::test]
    async fn counters_count_requests_and_bytes() {
        let client = tree();
        assert_eq!(
            client.counters(),
            RequestCounts::default(),
            "setup helpers are not requests"
        );
        client.list(&request("", None, None)).await.unwrap();
        client.head("top").await.unwrap();
        client.head("missing").await.unwrap_err();
        client.get_range("a/b/c/4", 0..100, None).await.unwrap();
        client.get_range("a/b/c/4", 2..4, None).await.unwrap();
        client.get_range("a/b/c/4", 100..200, None).await.unwrap_err();
        client.put("new", Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(
            client.counters(),
            RequestCounts {
                list: 1,
                head: 2,
                get: 3,
                put: 1,
                get_bytes: 7 + 2,
                put_bytes: 3,
                ..RequestCounts::default()
            }
        );
        assert!(client.contains("new"));
        assert_eq!(client.object_count(), TREE.len() + 1);
        client.reset_counters();
        assert_eq!(client.counters(), RequestCounts::default());
    }

    fn options(content_type: Option<&str>, metadata: &[(&str, &str)]) -> PutOptions {
        PutOptions {
            metadata: ObjectMetadata {
                content_type: content_type.map(str::to_owned),
                user: metadata
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
                ..ObjectMetadata::default()
            },
            ..PutOptions::default()
        }
    }

    fn part(part_number: u32, etag: &str) -> CompletedPart {
        CompletedPart {
            part_number,
            etag: etag.to_owned(),
        }
    }

    fn code(result: Result<impl fmt::Debug, ObjectError>) -> String {
        match result {
            Err(ObjectError::Service { code, .. }) => code,
            other => panic!("expected a service error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn put_with_stores_content_type_metadata_and_honours_conditions() {
        let client = MemoryClient::new("b");
        let etag = client
            .put_with(
                "f",
                Bytes::from_static(b"abc"),
                &options(Some("text/css"), &[("Mode", "0644")]),
            )
            .await
            .unwrap();
        let head = client.head("f").await.unwrap();
        assert_eq!(head.etag, etag);
        assert_eq!(head.metadata.content_type.as_deref(), Some("text/css"));
        assert_eq!(
            head.metadata.user,
            BTreeMap::from([("mode".into(), "0644".into())])
        );

        let create_only = PutOptions {
            if_none_match: true,
            ..PutOptions::default()
        };
        assert_eq!(
            client
                .put_with("f", Bytes::from_static(b"new"), &create_only)
                .await,
            Err(ObjectError::PreconditionFailed("f".into()))
        );
        assert_eq!(
            client.body("f").unwrap(),
            "abc",
            "a failed condition stores nothing"
        );
        client
            .put_with("g", Bytes::from_static(b"g"), &create_only)
            .await
            .unwrap();

        let replace = |etag: &str| PutOptions {
            if_match: Some(etag.to_owned()),
            ..PutOptions::default()
        };
        let other = etag_of(b"other");
        assert_eq!(
            client
                .put_with("f", Bytes::from_static(b"x"), &replace(&other))
                .await,
            Err(ObjectError::PreconditionFailed("f".into()))
        );
        assert_eq!(
            client
                .put_with("nope", Bytes::from_static(b"x"), &replace(&etag))
                .await,
            Err(ObjectError::NoSuchKey("nope".into())),
            "If-Match on a missing key is 404 on S3"
        );
        assert!(!client.contains("nope"));
        let second = client
            .put_with("f", Bytes::from_static(b"xyz"), &replace(&etag))
            .await
            .unwrap();
        assert_eq!(client.body("f").unwrap(), "xyz");
        assert_eq!(client.head("f").await.unwrap().etag, second);
        assert_eq!(client.counters().put, 6);
        assert_eq!(client.counters().put_bytes, 3 + 1 + 3);
    }

    #[tokio::test]
    async fn delete_removes_and_tolerates_missing_keys() {
        let client = FaultClient::new(tree());
        client.delete("top").await.unwrap();
        assert!(!client.contains("top"));
        client.delete("top").await.unwrap();
        client.delete("never-was").await.unwrap();
        assert_eq!(client.counters().delete, 3);
        client.fail_next(Op::Delete, 1, ObjectError::AccessDenied("a0".into()));
        assert_eq!(
            client.delete("a0").await,
            Err(ObjectError::AccessDenied("a0".into()))
        );
        assert!(client.contains("a0"), "a failed delete removes nothing");
        assert_eq!(client.object_count(), TREE.len() - 1);
    }

    #[tokio::test]
    async fn copy_copies_body_and_metadata_with_a_source_condition() {
        let client = MemoryClient::new("b");
        let metadata = HashMap::from([("mtime".to_owned(), "1".to_owned())]);
        let source_etag = client.put_object_with("a b+c%d", "body", Some("text/plain"), metadata.clone());
        let etag = client
            .copy("a b+c%d", "dst/é", Some(&source_etag), None)
            .await
            .unwrap();
        assert_eq!(etag, source_etag, "a single-part copy has the ETag of its body");
        let head = client.head("dst/é").await.unwrap();
        assert_eq!(head.metadata.content_type.as_deref(), Some("text/plain"));
        assert_eq!(head.metadata.user, metadata.clone().into_iter().collect());
        assert_eq!(client.body("dst/é").unwrap(), "body");
        assert!(client.contains("a b+c%d"), "the source stays");

        assert_eq!(
            client.copy("a b+c%d", "x", Some(&etag_of(b"stale")), None).await,
            Err(ObjectError::PreconditionFailed("a b+c%d".into()))
        );
        assert!(!client.contains("x"));
        assert_eq!(
            client.copy("missing", "x", None, None).await,
            Err(ObjectError::NoSuchKey("missing".into()))
        );
        assert_eq!(
            code(client.copy("dst/é", "dst/é", None, None).await),
            "InvalidRequest"
        );
        // Overwrites the destination entirely.
        client.put_object_with("y", "old", Some("text/html"), HashMap::new());
        client.copy("a b+c%d", "y", None, None).await.unwrap();
        assert_eq!(client.body("y").unwrap(), "body");
        assert_eq!(
            client.head("y").await.unwrap().metadata.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(client.counters().copy, 5);
    }

    /// `n` bytes, all `fill`.
    fn filled(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[tokio::test]
    async fn multipart_concatenates_parts_in_order_with_an_s3_shaped_etag() {
        let client = MemoryClient::new("b");
        let id = client
            .create_multipart("big", &options(Some("application/x-tar"), &[("Owner", "me")]))
            .await
            .unwrap();
        assert_eq!(client.open_multipart_uploads(), 1);
        // Uploaded out of order, and part 1 uploaded twice: the last upload of a number wins.
        let e2 = client
            .upload_part("big", &id, 2, Bytes::from_static(b"tail"))
            .await
            .unwrap();
        client
            .upload_part("big", &id, 1, filled(MIN_PART_SIZE, b'x'))
            .await
            .unwrap();
        let e1 = client
            .upload_part("big", &id, 1, filled(MIN_PART_SIZE, b'a'))
            .await
            .unwrap();
        assert!(!client.contains("big"), "nothing visible before complete");

        let etag = client
            .complete_multipart("big", &id, &[part(1, &e1), part(2, &e2)], None, false)
            .await
            .unwrap();
        assert!(etag.starts_with('"') && etag.ends_with("-2\""), "{etag}");
        assert_eq!(etag.len(), 1 + 32 + 2 + 1);
        assert_eq!(client.open_multipart_uploads(), 0);
        let body = client.body("big").unwrap();
        assert_eq!(body.len(), MIN_PART_SIZE + 4);
        assert!(body[..MIN_PART_SIZE].iter().all(|&b| b == b'a'));
        assert_eq!(&body[MIN_PART_SIZE..], b"tail");
        let head = client.head("big").await.unwrap();
        assert_eq!(head.etag, etag);
        assert_eq!(head.metadata.content_type.as_deref(), Some("application/x-tar"));
        assert_eq!(
            head.metadata.user,
            BTreeMap::from([("owner".into(), "me".into())])
        );
        // Readable with If-Match on the multipart ETag.
        assert_eq!(
            client
                .get_range("big", MIN_PART_SIZE as u64..u64::MAX, Some(&etag))
                .await
                .unwrap(),
            "tail"
        );
        // The upload is gone: completing or aborting it again fails like S3.
        assert_eq!(
            code(
                client
                    .complete_multipart("big", &id, &[part(1, &e1)], None, false)
                    .await
            ),
            "NoSuchUpload"
        );
        assert_eq!(code(client.abort_multipart("big", &id).await), "NoSuchUpload");
        let counts = client.counters();
        assert_eq!(
            (
                counts.create_multipart,
                counts.upload_part,
                counts.complete_multipart
            ),
            (1, 3, 2)
        );
        assert_eq!(counts.put_bytes, 2 * MIN_PART_SIZE as u64 + 4);
    }

    #[tokio::test]
    async fn complete_checks_parts_like_s3_and_keeps_the_upload_on_failure() {
        let client = MemoryClient::new("b");
        let id = client
            .create_multipart("k", &PutOptions::default())
            .await
            .unwrap();
        let small = client
            .upload_part("k", &id, 1, filled(MIN_PART_SIZE - 1, 1))
            .await
            .unwrap();
        let e2 = client
            .upload_part("k", &id, 2, filled(MIN_PART_SIZE, 2))
            .await
            .unwrap();
        let e3 = client.upload_part("k", &id, 3, filled(10, 3)).await.unwrap();

        let refused: [(&str, Vec<CompletedPart>, &str, &str); 7] = [
            ("k", vec![], "MalformedXML", "no parts"),
            (
                "k",
                vec![part(2, &e2), part(1, &small)],
                "InvalidPartOrder",
                "descending",
            ),
            (
                "k",
                vec![part(2, &e2), part(2, &e2)],
                "InvalidPartOrder",
                "a part twice",
            ),
            ("k", vec![part(1, &e2)], "InvalidPart", "an ETag of another part"),
            ("k", vec![part(4, &e3)], "InvalidPart", "a part never uploaded"),
            (
                "k",
                vec![part(1, &small), part(2, &e2)],
                "EntityTooSmall",
                "a small non-last part",
            ),
            (
                "other",
                vec![part(2, &e2)],
                "NoSuchUpload",
                "an upload id belongs to its key",
            ),
        ];
        for (key, parts, expected, why) in refused {
            let result = client.complete_multipart(key, &id, &parts, None, false).await;
            assert_eq!(code(result), expected, "{why}");
        }
        assert!(!client.contains("k"));
        assert_eq!(
            client.open_multipart_uploads(),
            1,
            "failed completes leave the upload open"
        );

        // A small last part is fine, and parts may skip numbers; unquoted ETags are accepted.
        let etag = client
            .complete_multipart(
                "k",
                &id,
                &[part(2, &e2), part(3, e3.trim_matches('"'))],
                None,
                false,
            )
            .await
            .unwrap();
        assert!(etag.ends_with("-2\""));
        assert_eq!(
            client.body("k").unwrap(),
            [filled(MIN_PART_SIZE, 2), filled(10, 3)].concat()
        );
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn complete_honours_write_conditions() {
        let client = MemoryClient::new("b");
        let old = client.put_object("k", "old");
        let id = client
            .create_multipart("k", &PutOptions::default())
            .await
            .unwrap();
        let e1 = client
            .upload_part("k", &id, 1, Bytes::from_static(b"new"))
            .await
            .unwrap();
        let parts = [part(1, &e1)];
        assert_eq!(
            client.complete_multipart("k", &id, &parts, None, true).await,
            Err(ObjectError::PreconditionFailed("k".into()))
        );
        assert_eq!(
            client
                .complete_multipart("k", &id, &parts, Some(&etag_of(b"x")), false)
                .await,
            Err(ObjectError::PreconditionFailed("k".into()))
        );
        assert_eq!(client.body("k").unwrap(), "old");
        assert_eq!(client.open_multipart_uploads(), 1);
        client
            .complete_multipart("k", &id, &parts, Some(&old), false)
            .await
            .unwrap();
        assert_eq!(client.body("k").unwrap(), "new");

        // Conditions belong to complete, not create.
        let conditional = PutOptions {
            if_none_match: true,
            ..PutOptions::default()
        };
        assert_eq!(
            code(client.create_multipart("k", &conditional).await),
            "InvalidArgument"
        );
        assert_eq!(client.open_multipart_uploads(), 0);
    }

    #[tokio::test]
    async fn upload_part_copy_takes_a_range_of_the_source() {
        let client = MemoryClient::new("b");
        let source: Vec<u8> = (0..=255u8).cycle().take(MIN_PART_SIZE + 100).collect();
        let source_etag = client.put_object("src", source.clone());
        let id = client
            .create_multipart("dst", &PutOptions::default())
            .await
            .unwrap();
        let e1 = client
            .upload_part_copy("dst", &id, 1, "src", 0..MIN_PART_SIZE as u64, Some(&source_etag))
            .await
            .unwrap();
        let e2 = client
            .upload_part("dst", &id, 2, Bytes::from_static(b"appended"))
            .await
            .unwrap();

        assert_eq!(
            client
                .upload_part_copy("dst", &id, 3, "src", 0..10, Some(&etag_of(b"stale")))
                .await,
            Err(ObjectError::PreconditionFailed("src".into()))
        );
        let size = source.len() as u64;
        assert_eq!(
            client
                .upload_part_copy("dst", &id, 3, "src", size - 1..size + 1, None)
                .await,
            Err(ObjectError::InvalidRange("src".into())),
            "a copy range is not clamped"
        );
        assert_eq!(
            client.upload_part_copy("dst", &id, 3, "src", 5..5, None).await,
            Err(ObjectError::InvalidRange("src".into()))
        );
        assert_eq!(
            client.upload_part_copy("dst", &id, 3, "gone", 0..1, None).await,
            Err(ObjectError::NoSuchKey("gone".into()))
        );
        assert_eq!(
            code(
                client
                    .upload_part_copy("dst", "no-such-id", 3, "src", 0..1, None)
                    .await
            ),
            "NoSuchUpload"
        );
        assert_eq!(
            code(client.upload_part("dst", &id, 0, Bytes::new()).await),
            "InvalidArgument"
        );
        assert_eq!(
            code(
                client
                    .upload_part("dst", &id, MAX_PART_NUMBER + 1, Bytes::new())
                    .await
            ),
            "InvalidArgument"
        );

        client
            .complete_multipart("dst", &id, &[part(1, &e1), part(2, &e2)], None, false)
            .await
            .unwrap();
        let body = client.body("dst").unwrap();
        assert_eq!(&body[..MIN_PART_SIZE], &source[..MIN_PART_SIZE]);
        assert_eq!(&body[MIN_PART_SIZE..], b"appended");
        let counts = client.counters();
        assert_eq!((counts.upload_part_copy, counts.upload_part), (6, 3));
        assert_eq!(counts.put_bytes, 8, "copied parts are not uploaded bytes");
    }

    #[tokio::test]
    async fn abort_drops_the_upload_and_faults_hit_the_new_ops() {
        let client = FaultClient::new(MemoryClient::new("b"));
        let id = client
            .create_multipart("k", &PutOptions::default())
            .await
            .unwrap();
        client
            .upload_part("k", &id, 1, Bytes::from_static(b"x"))
            .await
            .unwrap();
        client.fail_next(Op::UploadPart, 1, ObjectError::Unreachable("reset".into()));
        assert_eq!(
            client.upload_part("k", &id, 2, Bytes::from_static(b"y")).await,
            Err(ObjectError::Unreachable("reset".into()))
        );
        client.fail_next(Op::AbortMultipart, 1, ObjectError::Unreachable("reset".into()));
        assert!(client.abort_multipart("k", &id).await.is_err());
        assert_eq!(
            client.open_multipart_uploads(),
            1,
            "a failed abort leaves the upload"
        );
        assert_eq!(code(client.abort_multipart("other", &id).await), "NoSuchUpload");
        client.abort_multipart("k", &id).await.unwrap();
        assert_eq!(client.open_multipart_uploads(), 0);
        assert_eq!(
            code(client.upload_part("k", &id, 2, Bytes::from_static(b"y")).await),
            "NoSuchUpload"
        );
        assert!(!client.contains("k"));

        for (op, error) in [
            (Op::CreateMultipart, ObjectError::AccessDenied("k".into())),
            (Op::CompleteMultipart, ObjectError::Unreachable("reset".into())),
            (Op::Copy, ObjectError::Unreachable("reset".into())),
            (Op::UploadPartCopy, ObjectError::Unreachable("reset".into())),
        ] {
            client.fail_next(op, 1, error);
        }
        assert!(
            client
                .create_multipart("k", &PutOptions::default())
                .await
                .is_err()
        );
        assert_eq!(client.open_multipart_uploads(), 0);
        let id = client
            .create_multipart("k", &PutOptions::default())
            .await
            .unwrap();
        let e1 = client
            .upload_part("k", &id, 1, Bytes::from_static(b"z"))
            .await
            .unwrap();
        assert!(
            client
                .complete_multipart("k", &id, &[part(1, &e1)], None, false)
                .await
                .is_err()
        );
        assert!(!client.contains("k"));
        client
            .complete_multipart("k", &id, &[part(1, &e1)], None, false)
            .await
            .unwrap();
        assert!(client.copy("k", "k2", None, None).await.is_err());
        assert!(!client.contains("k2"));
        assert!(
            client
                .upload_part_copy("k", "any", 1, "k", 0..1, None)
                .await
                .is_err()
        );
        client.set_unreachable(true);
        assert!(matches!(
            client.delete("k").await,
            Err(ObjectError::Unreachable(_))
        ));
        assert!(client.contains("k"));
        client.set_unreachable(false);
        // Calls the faults stopped never reached the bucket.
        let counts = client.counters();
        assert_eq!(counts.abort_multipart, 2);
        assert_eq!(counts.create_multipart, 2);
        assert_eq!(counts.complete_multipart, 1);
        client.reset_counters();
        assert_eq!(client.counters(), RequestCounts::default());
    }
}
