//! The production [`ObjectClient`]: aws-sdk-s3 bound to one bucket.
//!
//! Owns the SDK configuration (region, endpoint, addressing style, credentials provider chain)
//! and the translation of SDK results and errors into this crate's types, retryable or final.
//! It must not grow any file-system logic. The SDK's own retries are off: the one retry policy
//! is `retry::RetryClient`'s, which bounds every attempt. Below it, this client bounds what only
//! it can see: a GET's wait for its answer and every silence inside a streamed body
//! (`request_timeout`, the same bound), and an upload body that stops moving (the SDK's
//! stalled-stream protection, with that bound as its grace period).
//!
//! Ranged GETs (the read-ahead's parts and the cache's blocks) are signed by the SDK and carried
//! by `direct_get` on connections of this client's own, which receive each body straight into
//! the aligned buffer the block cache writes from: the copy out of the SDK's buffers was a tenth
//! of a cold read's CPU. A GET that path declines, an anonymous mount's, and every GET with
//! `--sdk-gets` go through the SDK. Errors come out the same either way (`classify_service_error`).
//!
//! Integrity of uploads: every PutObject and UploadPart carries the CRC32C of its body
//! (`x-amz-checksum-crc32c`), which the server checks, in place of a SHA-256 signature of the
//! payload (`UNSIGNED-PAYLOAD`). The request itself is still signed. CRC32C is computed by the CPU
//! at memory speed; the SHA-256 cost the daemon and the server about 0.5 CPU-second per GiB each.
//! S3 then needs the algorithm named at CreateMultipartUpload and every part's checksum repeated
//! at CompleteMultipartUpload, so the client keeps the checksums of the uploads it has open.

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, EncodingType, MetadataDirective,
    ObjectCannedAcl, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::buffers::BufferPool;
use super::direct_get::{DirectGet, GetFailure, SignedGet};
use super::{
    CompletedPart, ListPage, ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata, ObjectStart,
    ObjectSummary, PutOptions, RangeBody, VersionListRequest, VersionPage, VersionSummary, WriteSettings,
    conditions_on_create,
};
use crate::checksum::{PieceSums, crc32c};

/// Region used when neither the command line, the environment nor a profile names one. S3 itself
/// answers a wrong-region request with a redirect error that names the right one.
const FALLBACK_REGION: &str = "us-east-1";

/// How long to wait for a TCP/TLS connection before calling the endpoint unreachable. Long enough
/// for a cross-region handshake, short enough that a wrong `--endpoint-url` fails the mount quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a presigned GET stays valid: it is sent at once, so this only covers a clock that
/// moves between signing and sending.
const PRESIGNED_FOR: Duration = Duration::from_secs(300);

/// Where and how to reach the bucket. Credentials are not here: they come from the AWS provider
/// chain (environment, profile, web identity, IMDS), never from the command line.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    /// Send anonymous requests (public buckets).
    pub no_sign_request: bool,
    /// The longest wait for a GET's answer, and the longest silence inside any body, before
    /// the attempt fails as timed out (`None`: [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Option<Duration>,
    /// Send ranged GETs through the SDK's HTTP client, not on this client's own connections
    /// (`direct_get`); for diagnosis. Anonymous mounts always do.
    pub sdk_gets: bool,
}

/// [`S3Settings::request_timeout`] when none is given: the retry policy's default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// aws-sdk-s3 client for one bucket.
#[derive(Clone, Debug)]
pub struct S3Client {
    client: aws_sdk_s3::Client,
    bucket: String,
    buffers: BufferPool,
    /// Where ranged GETs go unless it declined one or the settings say otherwise.
    direct: Option<Arc<DirectGet>>,
    part_checksums: PartChecksums,
    request_timeout: Duration,
    write: WriteSettings,
}

/// The CRC32C (base64) of each part of the multipart uploads in progress, by upload id and part
/// number, beside the ETag it was given: CompleteMultipartUpload must repeat them. An upload's
/// entry goes when it is completed, or when its abort is sent, whether or not that succeeds.
#[derive(Clone, Debug, Default)]
struct PartChecksums(Arc<Mutex<HashMap<String, BTreeMap<u32, EtagAndChecksum>>>>);

/// A part's ETag and its CRC32C (base64).
type EtagAndChecksum = (String, String);

impl PartChecksums {
    fn record(&self, upload_id: &str, part_number: u32, etag: &str, checksum: String) {
        let mut uploads = lock(&self.0);
        uploads
            .entry(upload_id.to_owned())
            .or_default()
            .insert(part_number, (etag.to_owned(), checksum));
    }

    /// The checksum of the part as last uploaded, if that upload gave it `etag`.
    fn of(&self, upload_id: &str, part_number: u32, etag: &str) -> Option<String> {
        let uploads = lock(&self.0);
        let (recorded_etag, checksum) = uploads.get(upload_id)?.get(&part_number)?;
        (recorded_etag == etag).then(|| checksum.clone())
    }

    fn forget(&self, upload_id: &str) {
        let mut uploads = lock(&self.0);
        uploads.remove(upload_id);
    }
}

/// The `x-amz-checksum-crc32c` value of `body`: its CRC32C, big-endian, in base64.
fn crc32c_header(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32c(body).to_be_bytes())
}

impl S3Client {
    /// Builds the SDK client. Makes no request: the first call tells whether the bucket is there.
    pub async fn new(settings: S3Settings) -> Result<Self, ObjectError> {
        let request_timeout = settings.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).build())
            // One attempt per call: `RetryClient` retries, with one policy for every request.
            .retry_config(RetryConfig::disabled())
            // A body that moves no byte for this long fails its attempt (which is retried).
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(request_timeout)
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if settings.no_sign_request {
            loader = loader.no_credentials();
        }
        let sdk_config = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.force_path_style)
            // S3-compatible servers differ in their support for the newer flexible checksums,
            // the SDK's aws-chunked trailers above all: the SDK adds none of its own. Uploads
            // carry the CRC32C this client computes (see the module's doc). Data integrity on
            // disk is the block cache's CRC32C.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk_config.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        let buffers = BufferPool::default();
        // A presigned GET needs credentials to sign with: anonymous GETs stay the SDK's.
        let direct = (!settings.sdk_gets && !settings.no_sign_request)
            .then(|| Arc::new(DirectGet::new(buffers.clone(), request_timeout, CONNECT_TIMEOUT)));
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: settings.bucket,
            buffers,
            direct,
            part_checksums: PartChecksums::default(),
            request_timeout,
            write: WriteSettings::default(),
        })
    }

    /// Whether the bucket keeps versions (GetBucketVersioning says Enabled, or Suspended: the
    /// versions kept before suspension still are).
    pub async fn keeps_versions(&self) -> Result<bool, ObjectError> {
        let output = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.map_error(e, ""))?;
        Ok(output.status().is_some())
    }

    fn canned_acl(&self) -> Option<ObjectCannedAcl> {
        self.write.acl.as_deref().map(ObjectCannedAcl::from)
    }

    /// This client with the mount's write settings on every write.
    pub fn with_write_settings(mut self, write: WriteSettings) -> Self {
        self.write = write;
        self
    }

    /// The `expected` bytes of a GET's body, streamed into one (pooled) buffer; a body that ends
    /// early is an error worth a retry, as a reset is.
    async fn read_body(
        &self,
        key: &str,
        mut body: ByteStream,
        expected: u64,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        let mut data = self.buffers.take(usize::try_from(expected).unwrap_or(usize::MAX));
        // (Summed chunk by chunk as the SDK hands them over, while they are in the CPU's cache.)
        let mut sums = sum_pieces.map(PieceSums::new);
        let what = format!("body of {key}");
        while let Some(chunk) = self.bounded(&what, body.next()).await? {
            let chunk = chunk.map_err(|e| ObjectError::Unreachable(format!("reading {what}: {e}")))?;
            data.extend_from_slice(&chunk);
            if let Some(sums) = &mut sums {
                sums.update(&chunk);
            }
        }
        if (data.len() as u64) < expected {
            // The connection ended cleanly but early: as good as a reset, and worth a retry.
            return Err(ObjectError::Unreachable(format!(
                "{what} ended after {} of {expected} bytes",
                data.len()
            )));
        }
        Ok(RangeBody {
            data: self.buffers.freeze(data),
            piece_sums: sums.map(PieceSums::finish),
        })
    }

    /// A GetObject of `range_header` (`bytes=A-B`), of a version when given, on a condition.
    fn ranged_get(
        &self,
        key: &str,
        version_id: Option<&str>,
        range_header: &str,
        if_match: Option<&str>,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(range_header)
            .set_version_id(version_id.map(str::to_owned))
            .set_if_match(if_match.map(str::to_owned))
    }

    /// Whether ranged GETs go on this client's own connections: the direct path is on and has
    /// declined none.
    pub fn gets_directly(&self) -> bool {
        self.direct.as_ref().is_some_and(|direct| direct.is_on())
    }

    /// How many GETs had their body carried on this client's own connections.
    pub fn gets_carried_directly(&self) -> u64 {
        self.direct.as_ref().map_or(0, |direct| direct.carried())
    }

    /// A ranged GET signed by the SDK and carried by [`DirectGet`], which reads its body
    /// straight into a pooled buffer. `None` when it is not to be sent that way: the direct path
    /// is off, the SDK could not presign it (the SDK path then says why), or the direct path
    /// declined it, which turns it off for the rest of the mount (said once, in the log).
    async fn get_direct(
        &self,
        key: &str,
        version_id: Option<&str>,
        range_header: &str,
        if_match: Option<&str>,
        range: Range<u64>,
        sum_pieces: Option<usize>,
    ) -> Option<Result<RangeBody, ObjectError>> {
        let direct = self.direct.as_ref().filter(|direct| direct.is_on())?;
        let presigning = PresigningConfig::expires_in(PRESIGNED_FOR).ok()?;
        let presign = self
            .ranged_get(key, version_id, range_header, if_match)
            .presigned(presigning);
        let presigned = match self.bounded(&format!("signing a GET of {key}"), presign).await {
            Ok(Ok(presigned)) => presigned,
            Ok(Err(error)) => {
                tracing::debug!(key, error = %source_chain(&error), "GET not presigned; through the SDK");
                return None;
            }
            Err(timed_out) => return Some(Err(timed_out)),
        };
        let signed = SignedGet {
            uri: presigned.uri().to_owned(),
            headers: presigned
                .headers()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        };
        match direct.get(&signed, range, sum_pieces).await {
            Ok(body) => Some(Ok(body)),
            Err(GetFailure::Refused {
                status,
                code,
                message,
                request_id,
            }) => Some(Err(classify_service_error(
                status,
                code.as_deref(),
                &with_request_id(&message, request_id.as_deref()),
                &self.bucket,
                key,
            ))),
            Err(GetFailure::Failed(error)) => Some(Err(error)),
            Err(GetFailure::Unclassified(status)) => {
                tracing::debug!(
                    key,
                    status,
                    "an error document not read; the GET goes again through the SDK"
                );
                None
            }
            Err(GetFailure::Declined(reason)) => {
                direct.turn_off(&reason);
                None
            }
        }
    }

    /// Waits for `future` at most the request timeout: a step of a request that got no answer
    /// (or no byte of its body) in that time failed, as timed out.
    async fn bounded<T>(&self, what: &str, future: impl Future<Output = T>) -> Result<T, ObjectError> {
        tokio::time::timeout(self.request_timeout, future)
            .await
            .map_err(|_| ObjectError::TimedOut(format!("{what}: nothing within {:?}", self.request_timeout)))
    }
}

/// An [`ObjectHead`] of a HeadObject or GetObject answer (two SDK types with the same
/// accessors), of `size` bytes and checksum `checksum`.
macro_rules! head_of {
    ($output:expr, $size:expr, $checksum:expr) => {{
        let output = &$output;
        let owned = |value: Option<&str>| value.map(str::to_owned);
        let metadata = ObjectMetadata {
            content_type: owned(output.content_type()),
            cache_control: owned(output.cache_control()),
            content_encoding: owned(output.content_encoding()),
            content_disposition: owned(output.content_disposition()),
            content_language: owned(output.content_language()),
            storage_class: owned(output.storage_class().map(StorageClass::as_str)),
            sse: owned(output.server_side_encryption().map(ServerSideEncryption::as_str)),
            sse_kms_key_id: owned(output.ssekms_key_id()),
            user: output
                .metadata()
                .map(|user| user.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        };
        ObjectHead {
            size: $size,
            last_modified: to_system_time(output.last_modified()),
            etag: output.e_tag().unwrap_or_default().to_owned(),
            version_id: owned(output.version_id()),
            metadata: metadata.normalized(),
            checksum_crc32c: $checksum,
        }
    }};
}

#[async_trait]
impl ObjectClient for S3Client {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&request.prefix)
            .set_delimiter(request.delimiter.clone())
            .set_continuation_token(request.continuation_token.clone())
            .set_max_keys(request.max_keys.map(|n| n.min(i32::MAX as u32) as i32))
            // Keys may hold bytes XML 1.0 cannot carry (ESC, BEL...): one such key would make
            // the whole page unreadable, and with it the directory. URL-encoded, every key fits.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| self.map_error(e, &request.prefix))?;
        // A server that ignores the parameter says so by not echoing it: its keys are as stored.
        let decode = |text: &str| match output.encoding_type() {
            Some(EncodingType::Url) => decode_listed(text),
            _ => Some(text.to_owned()),
        };
        let objects = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ObjectSummary {
                    key: decode(object.key()?)?,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(object.last_modified()),
                    etag: object.e_tag().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        let common_prefixes = output
            .common_prefixes()
            .iter()
            .filter_map(|p| decode(p.prefix()?))
            .collect();
        let next_continuation_token = match output.is_truncated() {
            Some(true) => output.next_continuation_token().map(str::to_owned),
            _ => None,
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_continuation_token,
        })
    }

    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        let output = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&request.prefix)
            .set_delimiter(request.delimiter.clone())
            .set_key_marker(request.key_marker.clone())
            .set_version_id_marker(request.version_id_marker.clone())
            .set_max_keys(request.max_keys.map(|n| n.min(i32::MAX as u32) as i32))
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| self.map_error(e, &request.prefix))?;
        let decode = |text: &str| match output.encoding_type() {
            Some(EncodingType::Url) => decode_listed(text),
            _ => Some(text.to_owned()),
        };
        let versions = output.versions().iter().filter_map(|version| {
            Some(VersionSummary {
                key: decode(version.key()?)?,
                version_id: version.version_id().unwrap_or("null").to_owned(),
                last_modified: to_system_time(version.last_modified()),
                is_delete_marker: false,
                is_latest: version.is_latest() == Some(true),
                size: version.size().unwrap_or(0).max(0) as u64,
                etag: version.e_tag().unwrap_or_default().to_owned(),
            })
        });
        let markers = output.delete_markers().iter().filter_map(|marker| {
            Some(VersionSummary {
                key: decode(marker.key()?)?,
                version_id: marker.version_id().unwrap_or("null").to_owned(),
                last_modified: to_system_time(marker.last_modified()),
                is_delete_marker: true,
                is_latest: marker.is_latest() == Some(true),
                size: 0,
                etag: String::new(),
            })
        });
        // The SDK parts versions and delete markers; S3 sent them in one order (by key, newest
        // first), which this restores. Times are to the second or millisecond, so a version and
        // a marker written together tie: the latest goes first.
        let mut versions: Vec<VersionSummary> = versions.chain(markers).collect();
        versions.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.is_latest.cmp(&a.is_latest))
                .then(b.last_modified.cmp(&a.last_modified))
        });
        let truncated = output.is_truncated() == Some(true);
        Ok(VersionPage {
            versions,
            common_prefixes: output
                .common_prefixes()
                .iter()
                .filter_map(|p| decode(p.prefix()?))
                .collect(),
            next_key_marker: output.next_key_marker().filter(|_| truncated).and_then(decode),
            next_version_id_marker: output
                .next_version_id_marker()
                .filter(|_| truncated)
                .map(str::to_owned),
        })
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        let output = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        let size = output.content_length().unwrap_or(0).max(0) as u64;
        Ok(head_of!(
            output,
            size,
            output.checksum_crc32_c().map(str::to_owned)
        ))
    }

    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        if len == 0 {
            let head = self.head(key).await?;
            return Ok(ObjectStart {
                head,
                data: Bytes::new(),
            });
        }
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes=0-{}", len - 1))
            .send();
        let output = match self.bounded(&format!("GET {key}"), request).await? {
            Ok(output) => output,
            // An empty object has no byte 0: S3 refuses any range of it. Its head says all.
            Err(error) => match self.map_error(error, key) {
                ObjectError::InvalidRange(_) => {
                    let head = self.head(key).await?;
                    return Ok(ObjectStart {
                        head,
                        data: Bytes::new(),
                    });
                }
                other => return Err(other),
            },
        };
        let length = output.content_length().map_or(0, |length| length.max(0) as u64);
        // `Content-Range: bytes 0-N/SIZE` gives the object's size; a server that ignored the
        // range sent it all, and its length is the size.
        let size = output
            .content_range()
            .and_then(|range| range.rsplit_once('/'))
            .and_then(|(_, total)| total.parse::<u64>().ok())
            .unwrap_or(length);
        let head = head_of!(output, size, None);
        let expected = length.min(len).min(size);
        let data = self.read_body(key, output.body, expected, None).await?.data;
        Ok(ObjectStart { head, data })
    }

    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        if range.is_empty() {
            return Ok(RangeBody {
                data: Bytes::new(),
                piece_sums: sum_pieces.map(|_| Vec::new()),
            });
        }
        // HTTP ranges are inclusive at both ends.
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        if let Some(answer) = self
            .get_direct(key, version_id, &header, if_match, range.clone(), sum_pieces)
            .await
        {
            return answer;
        }
        let request = self.ranged_get(key, version_id, &header, if_match).send();
        let output = self
            .bounded(&format!("GET {key}"), request)
            .await?
            .map_err(|e| self.map_error(e, key))?;
        // Streamed into one (pooled) buffer of the answer's size: collecting the chunks and
        // joining them would hold every part twice at its peak. The answer, not the request,
        // sizes it: the server clamps the range (`0..u64::MAX` reads a whole object).
        let expected = output
            .content_length()
            .map_or(range.end - range.start, |length| length.max(0) as u64)
            .min(range.end - range.start);
        self.read_body(key, output.body, expected, sum_pieces).await
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError> {
        let metadata = self.write.complete(&options.metadata);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_crc32_c(crc32c_header(&body))
            .body(ByteStream::from(body))
            .set_acl(self.canned_acl());
        let output = with_metadata!(request, &metadata)
            .set_if_none_match(options.if_none_match.then(|| "*".to_owned()))
            .set_if_match(options.if_match.clone())
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        Ok(output.e_tag().unwrap_or_default().to_owned())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        Ok(())
    }

    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dest_key)
            .copy_source(copy_source(&self.bucket, source_key))
            .set_copy_source_if_match(if_match.map(str::to_owned))
            .set_acl(self.canned_acl());
        // A copy takes the bucket's default encryption and STANDARD unless told: a COPY says the
        // mount's, a REPLACE the object's own (else the mount's).
        let replaced = metadata.map(|metadata| self.write.complete(metadata));
        request = match &replaced {
            None => request
                .metadata_directive(MetadataDirective::Copy)
                .set_storage_class(self.write.storage_class.as_deref().map(StorageClass::from))
                .set_server_side_encryption(self.write.sse.as_deref().map(ServerSideEncryption::from))
                .set_ssekms_key_id(self.write.sse_kms_key_id.clone()),
            Some(metadata) => {
                with_metadata!(request.metadata_directive(MetadataDirective::Replace), metadata)
            }
        };
        let output = request
            .send()
            .await
            // The source is what can be missing or changed; name it.
            .map_err(|e| self.map_error(e, source_key))?;
        Ok(output
            .copy_object_result()
            .and_then(|result| result.e_tag())
            .unwrap_or_default()
            .to_owned())
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError> {
        if options.has_conditions() {
            return Err(conditions_on_create(key));
        }
        let metadata = self.write.complete(&options.metadata);
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_acl(self.canned_acl());
        let output = with_metadata!(request, &metadata)
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| ObjectError::Service {
                code: "MissingUploadId".to_owned(),
                message: format!("CreateMultipartUpload of {key} answered without an upload id"),
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        let checksum = crc32c_header(&body);
        let output = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number_i32(part_number))
            .checksum_crc32_c(checksum.clone())
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        let etag = output.e_tag().unwrap_or_default().to_owned();
        self.part_checksums
            .record(upload_id, part_number, &etag, checksum);
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
        if source_range.is_empty() {
            return Err(ObjectError::InvalidRange(source_key.to_owned()));
        }
        let output = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number_i32(part_number))
            .copy_source(copy_source(&self.bucket, source_key))
            // HTTP ranges are inclusive at both ends.
            .copy_source_range(format!("bytes={}-{}", source_range.start, source_range.end - 1))
            .set_copy_source_if_match(if_match.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.map_error(e, source_key))?;
        let result = output.copy_part_result();
        let etag = result
            .and_then(|result| result.e_tag())
            .unwrap_or_default()
            .to_owned();
        // The server computed this part's checksum; a server that gives none leaves the part
        // without one at completion.
        if let Some(checksum) = result.and_then(|result| result.checksum_crc32_c()) {
            self.part_checksums
                .record(upload_id, part_number, &etag, checksum.to_owned());
        }
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError> {
        let parts = parts
            .iter()
            .map(|part| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(part_number_i32(part.part_number))
                    .e_tag(&part.etag)
                    .set_checksum_crc32_c(self.part_checksums.of(upload_id, part.part_number, &part.etag))
                    .build()
            })
            .collect();
        let output = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .set_if_match(if_match.map(str::to_owned))
            .set_if_none_match(if_none_match.then(|| "*".to_owned()))
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        self.part_checksums.forget(upload_id);
        Ok(output.e_tag().unwrap_or_default().to_owned())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        // An upload being aborted is never completed, even when the abort fails (its callers
        // log that and move on): its checksums can go now.
        self.part_checksums.forget(upload_id);
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.map_error(e, key))?;
        Ok(())
    }
}

/// Sets every header of an [`ObjectMetadata`] on a PutObject, CreateMultipartUpload or
/// CopyObject builder (three SDK types with the same setters: one list of what is sent).
macro_rules! with_metadata {
    ($request:expr, $metadata:expr) => {{
        let metadata: &ObjectMetadata = $metadata;
        $request
            .set_content_type(metadata.content_type.clone())
            .set_cache_control(metadata.cache_control.clone())
            .set_content_encoding(metadata.content_encoding.clone())
            .set_content_disposition(metadata.content_disposition.clone())
            .set_content_language(metadata.content_language.clone())
            .set_storage_class(storage_class(metadata))
            .set_server_side_encryption(sse(metadata))
            .set_ssekms_key_id(metadata.sse_kms_key_id.clone())
            .set_metadata(user_metadata(metadata))
    }};
}
use with_metadata;

/// The user metadata to send, `None` when there is none (no empty header set).
fn user_metadata(metadata: &ObjectMetadata) -> Option<HashMap<String, String>> {
    (!metadata.user.is_empty()).then(|| {
        metadata
            .user
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    })
}

fn storage_class(metadata: &ObjectMetadata) -> Option<StorageClass> {
    metadata.storage_class.as_deref().map(StorageClass::from)
}

fn sse(metadata: &ObjectMetadata) -> Option<ServerSideEncryption> {
    metadata.sse.as_deref().map(ServerSideEncryption::from)
}

/// A key or prefix of a listing made with `encoding-type=url`: percent-decoded, with `+` for a
/// space as AWS writes it (a literal `+` comes as `%2B`; Garage writes `%20` for a space, which
/// decodes the same). `None` for what does not decode to UTF-8, which no S3 key can be.
fn decode_listed(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(decoded) => Some(decoded.into_owned()),
        Err(_) => {
            tracing::warn!(
                listed = text,
                "skipping a listed key that is not URL-encoded UTF-8"
            );
            None
        }
    }
}

/// S3 part numbers are 1..=10,000; a larger value is sent saturated and refused by the server.
fn part_number_i32(part_number: u32) -> i32 {
    i32::try_from(part_number).unwrap_or(i32::MAX)
}

/// The `x-amz-copy-source` value: `bucket/key`, URL-encoded as S3 requires (the SDK sends it
/// verbatim). Every byte but the unreserved ones (RFC 3986) and `/` is percent-encoded, so
/// spaces, `+`, `?`, `#`, `%` and non-ASCII keys survive the trip.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    utf8_percent_encode(&format!("{bucket}/{key}"), KEEP).to_string()
}

impl S3Client {
    /// Turns an SDK error into the few cases the file system tells apart. `key` names what was
    /// asked for, for the message.
    fn map_error<E, R>(&self, error: SdkError<E, R>, key: &str) -> ObjectError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HttpStatus + 'static,
    {
        let described = source_chain(&error);
        match &error {
            SdkError::ServiceError(context) => classify_service_error(
                context.raw().http_status(),
                context.err().code(),
                &with_request_id(
                    context.err().message().unwrap_or(&described),
                    context.raw().request_id(),
                ),
                &self.bucket,
                key,
            ),
            SdkError::DispatchFailure(failure) => match failure.as_connector_error() {
                Some(connector) if connector.is_timeout() => ObjectError::TimedOut(described),
                // A request the SDK could not build or sign will not do better next time.
                Some(connector) if connector.is_user() => ObjectError::Service {
                    code: "ClientError".to_owned(),
                    message: described,
                },
                // Refused, reset, DNS, TLS, or a dispatch failure of another kind.
                _ => ObjectError::Unreachable(described),
            },
            SdkError::TimeoutError(_) => ObjectError::TimedOut(described),
            // The answer broke off or could not be read (a reset mid-body, a stalled stream).
            SdkError::ResponseError(_) => ObjectError::Unreachable(described),
            _ => ObjectError::Service {
                code: "ClientError".to_owned(),
                message: described,
            },
        }
    }
}

/// An error and its causes, as one line: "dispatch failure: io error: Connection refused". (The
/// SDK's DisplayErrorContext appends a Debug dump of the whole error, response headers and
/// all, which no one reading a log line or a mount's one-line error should have to read.)
pub(super) fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        // Wrappers often repeat their cause's text; say it once.
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

/// What an error needs of a raw response, whatever response type the SDK error carries.
trait HttpStatus {
    fn http_status(&self) -> u16;
    /// S3's `x-amz-request-id`: what AWS support asks for about a failed request.
    fn request_id(&self) -> Option<&str>;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }

    fn request_id(&self) -> Option<&str> {
        self.headers().get("x-amz-request-id")
    }
}

/// The server's message with the request id it gave, so that the one log line of a failure
/// names what to quote to the provider.
fn with_request_id(message: &str, request_id: Option<&str>) -> String {
    match request_id.filter(|id| !id.is_empty()) {
        Some(id) => format!("{message} (request id {id})"),
        None => message.to_owned(),
    }
}

/// Maps a status and an S3 error code to an [`ObjectError`]. The code wins where present; the
/// status decides for responses without a body (HEAD) or with an unexpected code.
fn classify_service_error(
    status: u16,
    code: Option<&str>,
    message: &str,
    bucket: &str,
    key: &str,
) -> ObjectError {
    match (code, status) {
        (Some("NoSuchBucket"), _) => ObjectError::NoSuchBucket(bucket.to_owned()),
        (Some("NoSuchKey"), _) | (None, 404) | (Some("NotFound"), _) => {
            ObjectError::NoSuchKey(key.to_owned())
        }
        (Some("PreconditionFailed"), _) | (_, 412) => ObjectError::PreconditionFailed(key.to_owned()),
        (Some("InvalidRange"), _) | (_, 416) => ObjectError::InvalidRange(key.to_owned()),
        (Some(code), 403) => ObjectError::AccessDenied(format!("{code}: {message}")),
        (None, 403) => ObjectError::AccessDenied(format!("bucket {bucket}")),
        (code, status) if is_transient(status, code) => ObjectError::Transient {
            code: code
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: message.to_owned(),
        },
        (code, status) => ObjectError::Service {
            code: code
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: message.to_owned(),
        },
    }
}

/// S3 error codes that say "not now" whatever their status: throttling and S3's own timeouts.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    // 400 on S3: "Your socket connection to the server was not read from or written to within
    // the timeout period." The next attempt, on a fresh connection, usually goes through.
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Whether an answer with this status and code is a transient failure of the server: a 5xx,
/// 429, or a throttling or timeout code.
fn is_transient(status: u16, code: Option<&str>) -> bool {
    // 501 Not Implemented and 505 HTTP Version Not Supported will say the same next time.
    let server_failed = status >= 500 && !matches!(status, 501 | 505);
    server_failed || status == 429 || code.is_some_and(|code| TRANSIENT_CODES.contains(&code))
}

fn to_system_time(time: Option<&DateTime>) -> SystemTime {
    time.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_header_is_the_big_endian_checksum_in_base64() {
        // 0xE3069283: CRC32C's check value, of "123456789".
        assert_eq!(crc32c_header(b"123456789"), "4waSgw==");
        assert_eq!(crc32c_header(b""), "AAAAAA==");
    }

    #[test]
    fn part_checksums_follow_the_last_upload_of_each_part() {
        let checksums = PartChecksums::default();
        checksums.record("u1", 1, "\"a\"", "one".to_owned());
        checksums.record("u1", 1, "\"b\"", "again".to_owned());
        checksums.record("u2", 1, "\"a\"", "other".to_owned());
        // A completion naming the replaced ETag gets no checksum: S3 refuses that part anyway.
        assert_eq!(checksums.of("u1", 1, "\"a\""), None);
        assert_eq!(checksums.of("u1", 1, "\"b\"").as_deref(), Some("again"));
        checksums.forget("u1");
        assert_eq!(checksums.of("u1", 1, "\"b\""), None);
        assert_eq!(checksums.of("u2", 1, "\"a\"").as_deref(), Some("other"));
    }

    #[tokio::test]
    async fn a_failed_abort_still_forgets_the_part_checksums() {
        // Nothing listens on port 9 of loopback: every request fails to connect.
        let client = S3Client::new(S3Settings {
            bucket: "b".to_owned(),
            region: Some("us-east-1".to_owned()),
            endpoint_url: Some("http://127.0.0.1:9".to_owned()),
            force_path_style: true,
            profile: None,
            no_sign_request: true,
            request_timeout: None,
            sdk_gets: false,
        })
        .await
        .unwrap();
        client.part_checksums.record("u1", 1, "\"a\"", "crc".to_owned());
        assert!(client.abort_multipart("k", "u1").await.is_err());
        assert_eq!(client.part_checksums.of("u1", 1, "\"a\""), None);
    }

    #[test]
    fn listed_keys_are_url_decoded_as_aws_and_garage_encode_them() {
        // Garage: everything but the unreserved characters, `/` included.
        assert_eq!(
            decode_listed("odd2%2Fa%20b%2Bc%25d").as_deref(),
            Some("odd2/a b+c%d")
        );
        assert_eq!(
            decode_listed("odd2%2Fesc%1B%5B31m").as_deref(),
            Some("odd2/esc\u{1b}[31m")
        );
        assert_eq!(decode_listed("%C3%A9%20%C3%BC").as_deref(), Some("é ü"));
        // AWS: `+` for a space, `/` left as it is.
        assert_eq!(decode_listed("dir/a+b%2Bc").as_deref(), Some("dir/a b+c"));
        assert_eq!(decode_listed("%FF"), None, "not UTF-8");
    }

    #[test]
    fn copy_source_is_url_encoded() {
        assert_eq!(
            copy_source("b", "dir/plain-file_1.txt~"),
            "b/dir/plain-file_1.txt~"
        );
        assert_eq!(
            copy_source("b", "a b+c?d#e%f&g=h"),
            "b/a%20b%2Bc%3Fd%23e%25f%26g%3Dh"
        );
        assert_eq!(copy_source("b", "é/ü"), "b/%C3%A9/%C3%BC");
    }

    #[test]
    fn an_error_is_one_line_of_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch failure")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(source_chain(&error), "dispatch failure: Connection refused");
    }

    #[test]
    fn a_request_id_is_kept_in_the_message() {
        assert_eq!(
            with_request_id("busy", Some("4442587FB7D0A2F9")),
            "busy (request id 4442587FB7D0A2F9)"
        );
        assert_eq!(with_request_id("busy", Some("")), "busy");
        assert_eq!(with_request_id("busy", None), "busy");

        let mut response = aws_smithy_runtime_api::http::Response::new(
            503.try_into().expect("a status"),
            aws_smithy_types::body::SdkBody::empty(),
        );
        assert_eq!(response.request_id(), None);
        response
            .headers_mut()
            .insert("x-amz-request-id", "4442587FB7D0A2F9");
        assert_eq!(
            (response.http_status(), response.request_id()),
            (503, Some("4442587FB7D0A2F9"))
        );
    }

    #[test]
    fn codes_win_over_statuses() {
        let e = classify_service_error(404, Some("NoSuchBucket"), "m", "b", "k");
        assert_eq!(e, ObjectError::NoSuchBucket("b".into()));
        let e = classify_service_error(404, None, "m", "b", "k");
        assert_eq!(e, ObjectError::NoSuchKey("k".into()));
        let e = classify_service_error(412, None, "m", "b", "k");
        assert_eq!(e, ObjectError::PreconditionFailed("k".into()));
        let e = classify_service_error(403, Some("InvalidAccessKeyId"), "bad key", "b", "k");
        assert_eq!(e, ObjectError::AccessDenied("InvalidAccessKeyId: bad key".into()));
        let e = classify_service_error(503, Some("SlowDown"), "busy", "b", "k");
        assert_eq!(
            e,
            ObjectError::Transient {
                code: "SlowDown".into(),
                message: "busy".into()
            }
        );
        let e = classify_service_error(500, None, "boom", "b", "k");
        assert_eq!(
            e,
            ObjectError::Transient {
                code: "HTTP 500".into(),
                message: "boom".into()
            }
        );
        let e = classify_service_error(400, Some("RequestTimeout"), "idle socket", "b", "k");
        assert!(e.is_retryable(), "{e:?}");
        let e = classify_service_error(429, None, "slow down", "b", "k");
        assert!(e.is_retryable(), "{e:?}");
        for status in [502, 504] {
            assert!(classify_service_error(status, None, "gateway", "b", "k").is_retryable());
        }
        let e = classify_service_error(400, Some("InvalidArgument"), "bad", "b", "k");
        assert!(!e.is_retryable(), "other 4xx are final: {e:?}");
        assert!(!classify_service_error(409, Some("BucketNotEmpty"), "m", "b", "k").is_retryable());
        assert!(!classify_service_error(501, Some("NotImplemented"), "m", "b", "k").is_retryable());
    }
}
