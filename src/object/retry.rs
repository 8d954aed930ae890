//! `RetryClient<C>`: the one retry policy of the mount, around any [`ObjectClient`].
//!
//! Every request is tried up to `max_attempts` times while its error is retryable
//! ([`ObjectError::is_retryable`]: throttling, 5xx, timeouts, broken or refused connections),
//! with exponential backoff and jitter between attempts. Each attempt has a time bound, so a
//! request never waits on a dead connection for ever, and no attempt starts once `max_retry_time`
//! has passed since the first: the whole request is bounded by about `max_retry_time` plus one
//! attempt. That bound matters more than usual here: a process waiting on a FUSE request cannot
//! be interrupted (fuser answers the kernel's INTERRUPT with ENOSYS), so the bound is how long
//! Ctrl-C or `timeout` may have to wait.
//!
//! Owns the policy (what is retried, how often, how long to wait, how long an attempt may take)
//! and the few answers that only make sense after a retry (a completion or abort that already
//! happened). It must not know about files or errno values; the SDK's own retries are off, so
//! this is the only place a request is sent twice.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    CompletedPart, ListPage, ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata, ObjectStart,
    Op, PutOptions, RangeBody, VersionListRequest, VersionPage,
};

/// The first pause between attempts; each later one doubles, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between two attempts. With [`BASE_BACKOFF`], ten attempts wait 36 to 72
/// seconds in all (equal jitter), which the default total bound of 60 s caps: Mountpoint's
/// "about a minute".
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// The slowest transfer an attempt with a body is allowed before it counts as stalled: the
/// bound of a GET or PUT grows by one second per MiB, so a slow link is not a dead one.
const MIN_TRANSFER_BYTES_PER_SECOND: u64 = 1 << 20;
/// CopyObject and CompleteMultipartUpload make the server work for as long as the object is
/// large (S3 documents minutes for big completions) while the client only waits: their
/// attempts get this long, at least.
const SERVER_WORK_TIMEOUT: Duration = Duration::from_secs(300);
/// How far the server's Last-Modified of a completion may seem to lie before our first attempt
/// (its whole seconds, and the clocks' difference) and still be taken as that completion's.
const COMPLETION_CLOCK_MARGIN: Duration = Duration::from_secs(5);
/// How fast UploadPartCopy is assumed to copy at worst on the server, for its attempt bound.
const MIN_SERVER_COPY_BYTES_PER_SECOND: u64 = 16 << 20;

/// How requests are retried and bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// How long an attempt without a body may take; attempts with one get longer in proportion
    /// to its size. Also the longest silence inside a streamed body (the SDK client's bound).
    pub request_timeout: Duration,
    /// No attempt starts later than this after the first one.
    pub max_retry_time: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            request_timeout: Duration::from_secs(10),
            max_retry_time: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The bound of one attempt of `op` moving `bytes` of body (0 for none).
    pub fn attempt_timeout(&self, op: Op, bytes: u64) -> Duration {
        let base = self.request_timeout;
        match op {
            Op::List | Op::Head | Op::Delete | Op::CreateMultipart | Op::AbortMultipart => base,
            Op::Get | Op::Put | Op::UploadPart => {
                base.saturating_add(transfer_time(bytes, MIN_TRANSFER_BYTES_PER_SECOND))
            }
            Op::UploadPartCopy => base.saturating_add(transfer_time(bytes, MIN_SERVER_COPY_BYTES_PER_SECOND)),
            Op::Copy | Op::CompleteMultipart => base.max(SERVER_WORK_TIMEOUT),
        }
    }

    /// The pause before attempt `attempt` (2 for the first retry): half of the exponential
    /// step for sure, the other half at random, so that many clients throttled at once do not
    /// come back at once, and no pause is ever close to zero.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(2).min(16);
        let step = BASE_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// `bytes` at `rate` per second, capped at a day so that a range of `0..u64::MAX` (a whole
/// object of unknown size) still has a bound.
fn transfer_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs((bytes / rate).min(86_400))
}

/// Any [`ObjectClient`] with the mount's retry policy in front of it.
pub struct RetryClient<C> {
    inner: C,
    policy: RetryPolicy,
}

/// What a request is, for its bound and for the logs.
struct Request<'a> {
    op: Op,
    key: &'a str,
    bytes: u64,
}

impl<C: ObjectClient> RetryClient<C> {
    pub fn new(inner: C, policy: RetryPolicy) -> Self {
        let policy = RetryPolicy {
            max_attempts: policy.max_attempts.max(1),
            ..policy
        };
        Self { inner, policy }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy says stop. Returns the
    /// last error, and whether an earlier attempt failed in a way that may have reached the
    /// server (for the answers that only make sense after a retry).
    async fn run<T, F, Fut>(&self, request: Request<'_>, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, ObjectError>> + Send,
    {
        let timeout = self.policy.attempt_timeout(request.op, request.bytes);
        let first = Instant::now();
        let mut number = 1;
        let mut retried = false;
        loop {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(ObjectError::TimedOut(format!(
                    "{} of {} got no answer within {timeout:?}",
                    request.op.name(),
                    request.key
                ))),
            };
            // Every attempt of every request passes here, timed-out ones included: the one
            // place S3 requests are counted.
            crate::metrics::s3_request(request.op, crate::metrics::outcome_of(&result), started.elapsed());
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let pause = self.policy.backoff(number + 1);
            let out_of_time = first.elapsed() + pause > self.policy.max_retry_time;
            if !error.is_retryable() || number >= self.policy.max_attempts || out_of_time {
                if error.is_retryable() {
                    tracing::warn!(op = request.op.name(), key = request.key, attempts = number,
                        elapsed = ?first.elapsed(), %error, "S3 request failed after every attempt");
                }
                return Err(Failure { error, retried });
            }
            tracing::debug!(op = request.op.name(), key = request.key, attempt = number, ?pause,
                %error, "S3 request failed; trying again");
            crate::metrics::s3_retry(request.op);
            tokio::time::sleep(pause).await;
            number += 1;
            retried = true;
        }
    }
}

/// A request that failed: its last error, and whether it had been sent more than once.
struct Failure {
    error: ObjectError,
    retried: bool,
}

impl From<Failure> for ObjectError {
    fn from(failure: Failure) -> Self {
        failure.error
    }
}

/// An upload the server no longer knows: after a retry, what an earlier attempt that did reach
/// it (completion, abort) left behind.
fn is_no_such_upload(failure: &Failure) -> bool {
    failure.retried && failure.error.code() == Some("NoSuchUpload")
}

#[async_trait]
impl<C: ObjectClient> ObjectClient for RetryClient<C> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        let what = Request {
            op: Op::List,
            key: &request.prefix,
            bytes: 0,
        };
        Ok(self.run(what, || self.inner.list(request)).await?)
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        let what = Request {
            op: Op::Head,
            key,
            bytes: 0,
        };
        Ok(self
            .run(what, || self.inner.head_version(key, version_id))
            .await?)
    }

    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        let what = Request {
            op: Op::Get,
            key,
            bytes: range.end.saturating_sub(range.start),
        };
        Ok(self
            .run(what, || {
                self.inner
                    .get_range_body(key, version_id, range.clone(), if_match, sum_pieces)
            })
            .await?)
    }

    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        let what = Request {
            op: Op::Get,
            key,
            bytes: len,
        };
        Ok(self.run(what, || self.inner.get_start(key, len)).await?)
    }

    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        let what = Request {
            op: Op::List,
            key: &request.prefix,
            bytes: 0,
        };
        Ok(self.run(what, || self.inner.list_versions(request)).await?)
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError> {
        let what = Request {
            op: Op::Put,
            key,
            bytes: body.len() as u64,
        };
        // Sending the same body again is idempotent. With a write condition, a retry after an
        // attempt that did land may be refused by that condition: the caller sees 412.
        Ok(self
            .run(what, || self.inner.put_with(key, body.clone(), options))
            .await?)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let what = Request {
            op: Op::Delete,
            key,
            bytes: 0,
        };
        Ok(self.run(what, || self.inner.delete(key)).await?)
    }

    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        let what = Request {
            op: Op::Copy,
            key: source_key,
            bytes: 0,
        };
        Ok(self
            .run(what, || self.inner.copy(source_key, dest_key, if_match, metadata))
            .await?)
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError> {
        let what = Request {
            op: Op::CreateMultipart,
            key,
            bytes: 0,
        };
        // An attempt whose answer was lost leaves an upload nobody knows the id of: S3's
        // lifecycle rule for incomplete uploads is the only cure (see docs/SEMANTICS.md).
        Ok(self
            .run(what, || self.inner.create_multipart(key, options))
            .await?)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        let what = Request {
            op: Op::UploadPart,
            key,
            bytes: body.len() as u64,
        };
        Ok(self
            .run(what, || {
                self.inner.upload_part(key, upload_id, part_number, body.clone())
            })
            .await?)
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
        let what = Request {
            op: Op::UploadPartCopy,
            key,
            bytes: source_range.end.saturating_sub(source_range.start),
        };
        Ok(self
            .run(what, || {
                let range = source_range.clone();
                self.inner
                    .upload_part_copy(key, upload_id, part_number, source_key, range, if_match)
            })
            .await?)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError> {
        let what = Request {
            op: Op::CompleteMultipart,
            key,
            bytes: 0,
        };
        let first_sent = std::time::SystemTime::now();
        let completed = self
            .run(what, || {
                self.inner
                    .complete_multipart(key, upload_id, parts, if_match, if_none_match)
            })
            .await;
        match completed {
            Ok(etag) => Ok(etag),
            Err(failure) if is_no_such_upload(&failure) => {
                self.completed_earlier(key, parts.len(), first_sent, failure)
                    .await
            }
            Err(failure) => Err(failure.error),
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        let what = Request {
            op: Op::AbortMultipart,
            key,
            bytes: 0,
        };
        match self
            .run(what, || self.inner.abort_multipart(key, upload_id))
            .await
        {
            Ok(()) => Ok(()),
            // An earlier attempt aborted it; only its answer was lost.
            Err(failure) if is_no_such_upload(&failure) => Ok(()),
            Err(failure) => Err(failure.error),
        }
    }
}

impl<C: ObjectClient> RetryClient<C> {
    /// A completion retried after an attempt whose answer was lost finds the upload gone: the
    /// lost attempt completed it if the key now holds an object of that many parts (S3's
    /// multipart ETag ends in `-<parts>`) made since the first attempt was sent (so not the
    /// version it replaces, which may have as many parts). Otherwise the upload really is
    /// unknown (aborted meanwhile, say), and the error stands: the caller keeps its data.
    async fn completed_earlier(
        &self,
        key: &str,
        parts: usize,
        first_sent: std::time::SystemTime,
        failure: Failure,
    ) -> Result<String, ObjectError> {
        let suffix = format!("-{parts}\"");
        // Last-Modified has whole seconds, and the server's clock is not ours.
        let made_since = |modified: std::time::SystemTime| modified + COMPLETION_CLOCK_MARGIN >= first_sent;
        match self.head(key).await {
            Ok(head) if head.etag.ends_with(&suffix) && made_since(head.last_modified) => {
                tracing::info!(key, etag = %head.etag, "a multipart completion whose answer was lost had succeeded");
                Ok(head.etag)
            }
            _ => Err(failure.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::object::fault::FaultClient;
    use crate::object::memory::MemoryClient;

    fn throttled() -> ObjectError {
        ObjectError::Transient {
            code: "SlowDown".into(),
            message: "reduce your request rate".into(),
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            request_timeout: Duration::from_secs(2),
            max_retry_time: Duration::from_secs(60),
        }
    }

    fn client(max_attempts: u32) -> RetryClient<Arc<FaultClient<MemoryClient>>> {
        let bucket = Arc::new(FaultClient::new(MemoryClient::new("b")));
        bucket.put_object("k", "value");
        RetryClient::new(bucket, policy(max_attempts))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_an_attempt_succeeds() {
        let client = client(10);
        let faults = client.inner();
        faults.fail_next(Op::Get, 3, throttled());
        faults.fail_next(Op::Get, 2, ObjectError::Unreachable("reset".into()));
        faults.fail_next(Op::Get, 1, ObjectError::TimedOut("stalled".into()));
        assert_eq!(client.get_range("k", 0..5, None).await.unwrap(), "value");
        assert_eq!(faults.calls(Op::Get), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_are_not_retried() {
        let client = client(10);
        let faults = client.inner();
        for error in [
            ObjectError::AccessDenied("k".into()),
            ObjectError::PreconditionFailed("k".into()),
            ObjectError::Service {
                code: "InvalidArgument".into(),
                message: "no".into(),
            },
        ] {
            let before = faults.calls(Op::Head);
            faults.fail_next(Op::Head, 1, error.clone());
            assert_eq!(client.head("k").await, Err(error));
            assert_eq!(faults.calls(Op::Head), before + 1, "sent once");
        }
        assert!(matches!(
            client.head("missing").await,
            Err(ObjectError::NoSuchKey(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_error_returned() {
        let client = client(4);
        let faults = client.inner();
        faults.fail_next(Op::List, 100, throttled());
        let started = Instant::now();
        assert_eq!(client.list(&ListRequest::default()).await, Err(throttled()));
        assert_eq!(faults.calls(Op::List), 4);
        // Three pauses: at least half of 250 ms, 500 ms and 1 s; at most all of them.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(875), "{waited:?}");
        assert!(waited <= Duration::from_millis(1750), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ten_attempts_back_off_for_about_a_minute() {
        // The pauses alone, without the total bound (which may stop the tenth attempt).
        let bucket = Arc::new(FaultClient::new(MemoryClient::new("b")));
        let client = RetryClient::new(
            bucket,
            RetryPolicy {
                max_retry_time: Duration::from_secs(3600),
                ..policy(10)
            },
        );
        client.inner().fail_next(Op::Put, 100, throttled());
        let started = Instant::now();
        assert!(client.put("p", Bytes::from_static(b"x")).await.is_err());
        let waited = started.elapsed();
        assert_eq!(client.inner().calls(Op::Put), 10);
        assert!(
            waited >= Duration::from_secs(35) && waited <= Duration::from_secs(72),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_bound_stops_retries_before_the_attempts_run_out() {
        let client = client(10);
        client.inner().fail_next(Op::Put, 100, throttled());
        let started = Instant::now();
        assert!(client.put("p", Bytes::from_static(b"x")).await.is_err());
        // No attempt starts 60 s after the first; each fails at once here.
        assert!(
            started.elapsed() <= Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        assert!(
            client.inner().calls(Op::Put) >= 8,
            "the pauses before the eighth sum to at most 32 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_attempt_times_out_and_the_next_one_succeeds() {
        let client = client(10);
        let faults = client.inner().clone();
        faults.set_stalled(Op::Head, true);
        let head = tokio::spawn(async move { client.head("k").await });
        // The first attempt hangs until its 2 s bound; release the server just after.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        faults.set_stalled(Op::Head, false);
        assert_eq!(head.await.unwrap().unwrap().size, 5);
        assert_eq!(faults.calls(Op::Head), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_endpoint_fails_within_the_retry_time() {
        let bucket = Arc::new(FaultClient::new(MemoryClient::new("b")));
        bucket.set_all_stalled(true);
        let client = RetryClient::new(
            bucket.clone(),
            RetryPolicy {
                max_attempts: 100,
                request_timeout: Duration::from_secs(2),
                max_retry_time: Duration::from_secs(10),
            },
        );
        let started = Instant::now();
        let result = client.head("k").await;
        assert!(matches!(result, Err(ObjectError::TimedOut(_))), "{result:?}");
        // No attempt starts after 10 s, and each lasts 2 s.
        assert!(
            started.elapsed() <= Duration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
        assert!(bucket.calls(Op::Head) >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_gets_time_in_proportion_to_its_size() {
        let policy = policy(3);
        assert_eq!(policy.attempt_timeout(Op::Head, 0), Duration::from_secs(2));
        assert_eq!(policy.attempt_timeout(Op::Get, 8 << 20), Duration::from_secs(10));
        assert_eq!(
            policy.attempt_timeout(Op::UploadPart, 64 << 20),
            Duration::from_secs(66)
        );
        assert_eq!(
            policy.attempt_timeout(Op::CompleteMultipart, 0),
            SERVER_WORK_TIMEOUT
        );
        assert_eq!(
            policy.attempt_timeout(Op::Get, u64::MAX),
            Duration::from_secs(2 + 86_400)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_answer_was_lost_is_recognised() {
        let client = client(5);
        let faults = client.inner();
        let id = client
            .create_multipart("big", &PutOptions::default())
            .await
            .unwrap();
        let part = Bytes::from(vec![7u8; 5 << 20]);
        let e1 = client.upload_part("big", &id, 1, part).await.unwrap();
        let e2 = client
            .upload_part("big", &id, 2, Bytes::from_static(b"end"))
            .await
            .unwrap();
        let parts = [
            CompletedPart {
                part_number: 1,
                etag: e1,
            },
            CompletedPart {
                part_number: 2,
                etag: e2,
            },
        ];
        faults.fail_next_after_server(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
        let etag = client
            .complete_multipart("big", &id, &parts, None, false)
            .await
            .unwrap();
        assert_eq!(etag, client.head("big").await.unwrap().etag);
        assert!(etag.ends_with("-2\""));
        assert_eq!(faults.calls(Op::CompleteMultipart), 2);

        // An upload that vanished (aborted by a lifecycle rule, say) is not taken as completed
        // because the key holds an older object with as many parts.
        let id = client
            .create_multipart("big", &PutOptions::default())
            .await
            .unwrap();
        client.inner().abort_multipart("big", &id).await.unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        faults.set_last_modified("big", an_hour_ago);
        faults.fail_next(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
        let vanished = client.complete_multipart("big", &id, &parts, None, false).await;
        assert_eq!(vanished.unwrap_err().code(), Some("NoSuchUpload"));

        // An abort whose answer was lost: the retry finds nothing to abort, and that is success.
        let id = client
            .create_multipart("gone", &PutOptions::default())
            .await
            .unwrap();
        faults.fail_next_after_server(Op::AbortMultipart, 1, ObjectError::Unreachable("reset".into()));
        client.abort_multipart("gone", &id).await.unwrap();
        assert_eq!(faults.open_multipart_uploads(), 0);
        // Without a retry, an unknown upload stays an error.
        let code = client.abort_multipart("gone", &id).await.unwrap_err();
        assert_eq!(code.code(), Some("NoSuchUpload"));
    }
}
