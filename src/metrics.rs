//! What the daemon counts, in one place: the object client (per S3 request), the retry layer,
//! the block cache, the read path, uploads and the FUSE adapter all report here, and nothing
//! else names a metric.
//!
//! Two readers: Prometheus, through the `metrics` facade (a no-op until [`install`] sets a
//! recorder, which `--metrics-addr` serves over HTTP), and `s3mount status`, through the
//! process-wide [`Totals`] and the ring of [`recent_errors`]. Gauges (cache use, staged bytes,
//! read-ahead in flight) are sampled from their owners by [`record_gauges`], once a second.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::{Deserialize, Serialize};

use crate::object::{ObjectError, Op};

/// Latency buckets, in seconds: from a cache-warm HEAD on loopback (well under 1 ms) to a
/// request that spent its retries (a minute).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Failed requests `s3mount status` remembers.
const RECENT_ERRORS: usize = 20;

/// Installs the Prometheus recorder and, with `addr`, its HTTP listener (on the current tokio
/// runtime). Without an address the facade stays a no-op: counting costs nothing.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
        .and_then(|builder| builder.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Process-wide totals, for `s3mount status` (Prometheus has the same by label).
#[derive(Debug, Default)]
pub struct Totals {
    pub s3_requests: AtomicU64,
    pub s3_errors: AtomicU64,
    pub s3_retries: AtomicU64,
    pub bytes_from_s3: AtomicU64,
    pub bytes_from_block_cache: AtomicU64,
    pub bytes_to_readers: AtomicU64,
    pub uploads_started: AtomicU64,
    pub uploads_failed: AtomicU64,
    pub fuse_requests: AtomicU64,
    pub fuse_errors: AtomicU64,
}

pub static TOTALS: Totals = Totals {
    s3_requests: AtomicU64::new(0),
    s3_errors: AtomicU64::new(0),
    s3_retries: AtomicU64::new(0),
    bytes_from_s3: AtomicU64::new(0),
    bytes_from_block_cache: AtomicU64::new(0),
    bytes_to_readers: AtomicU64::new(0),
    uploads_started: AtomicU64::new(0),
    uploads_failed: AtomicU64::new(0),
    fuse_requests: AtomicU64::new(0),
    fuse_errors: AtomicU64::new(0),
};

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The outcome label of an S3 request: `ok`, or the kind of error.
pub fn outcome_of<T>(result: &Result<T, ObjectError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ObjectError::NoSuchKey(_)) => "not_found",
        Err(ObjectError::NoSuchBucket(_)) => "no_such_bucket",
        Err(ObjectError::AccessDenied(_)) => "access_denied",
        Err(ObjectError::PreconditionFailed(_)) => "precondition_failed",
        Err(ObjectError::InvalidRange(_)) => "invalid_range",
        Err(ObjectError::Unreachable(_)) => "unreachable",
        Err(ObjectError::TimedOut(_)) => "timed_out",
        Err(ObjectError::Transient { .. }) => "transient",
        Err(ObjectError::Service { .. }) => "service_error",
    }
}

/// One attempt of one S3 request. A missing key is an answer, not an error, for the totals.
pub fn s3_request(op: Op, outcome: &'static str, elapsed: Duration) {
    add(&TOTALS.s3_requests, 1);
    if !matches!(outcome, "ok" | "not_found" | "precondition_failed") {
        add(&TOTALS.s3_errors, 1);
    }
    counter!("s3mount_s3_requests_total", "operation" => op.name(), "outcome" => outcome).increment(1);
    histogram!("s3mount_s3_request_duration_seconds", "operation" => op.name()).record(elapsed.as_secs_f64());
}

/// A request the retry layer sends again.
pub fn s3_retry(op: Op) {
    add(&TOTALS.s3_retries, 1);
    counter!("s3mount_s3_retries_total", "operation" => op.name()).increment(1);
}

/// Where the bytes a reader got came from.
#[derive(Clone, Copy, Debug)]
pub enum ReadSource {
    /// A GET body.
    S3,
    /// A block file of the disk cache.
    BlockCache,
}

pub fn bytes_read(source: ReadSource, bytes: u64) {
    let (total, label) = match source {
        ReadSource::S3 => (&TOTALS.bytes_from_s3, "s3"),
        ReadSource::BlockCache => (&TOTALS.bytes_from_block_cache, "block_cache"),
    };
    add(total, bytes);
    counter!("s3mount_read_bytes_total", "source" => label).increment(bytes);
}

/// Blocks looked up in the disk cache: found, and not.
pub fn block_cache_lookups(hits: u64, misses: u64) {
    counter!("s3mount_block_cache_hits_total").increment(hits);
    counter!("s3mount_block_cache_misses_total").increment(misses);
}

/// Bytes answered to FUSE reads (what the kernel then keeps in its page cache).
pub fn bytes_to_reader(bytes: u64) {
    add(&TOTALS.bytes_to_readers, bytes);
    counter!("s3mount_fuse_read_bytes_total").increment(bytes);
}

/// An upload of a staged file starts; [`upload_finished`] when it ends.
pub fn upload_started() {
    add(&TOTALS.uploads_started, 1);
    counter!("s3mount_uploads_started_total").increment(1);
    gauge!("s3mount_uploads_in_progress").increment(1.0);
}

pub fn upload_finished(ok: bool, bytes: u64) {
    gauge!("s3mount_uploads_in_progress").decrement(1.0);
    if ok {
        counter!("s3mount_uploaded_bytes_total").increment(bytes);
    } else {
        add(&TOTALS.uploads_failed, 1);
        counter!("s3mount_uploads_failed_total").increment(1);
    }
}

/// One FUSE request answered, `errno` 0 for success.
pub fn fuse_request(op: &'static str, errno: i32, elapsed: Duration) {
    add(&TOTALS.fuse_requests, 1);
    counter!("s3mount_fuse_requests_total", "operation" => op).increment(1);
    histogram!("s3mount_fuse_request_duration_seconds", "operation" => op).record(elapsed.as_secs_f64());
    if errno != 0 {
        add(&TOTALS.fuse_errors, 1);
        counter!("s3mount_fuse_errors_total", "operation" => op, "errno" => errno_name(errno)).increment(1);
    }
}

/// What the gauges show, read from their owners.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Gauges {
    pub cache_bytes: u64,
    pub cache_max_bytes: u64,
    pub read_ahead_bytes: u64,
    pub read_ahead_budget_bytes: u64,
    pub staged_files: u64,
    /// Staged files with changes not yet in S3, and their bytes.
    pub pending_uploads: u64,
    pub pending_upload_bytes: u64,
}

pub fn record_gauges(gauges: &Gauges) {
    gauge!("s3mount_block_cache_bytes").set(gauges.cache_bytes as f64);
    gauge!("s3mount_block_cache_max_bytes").set(gauges.cache_max_bytes as f64);
    gauge!("s3mount_read_ahead_bytes").set(gauges.read_ahead_bytes as f64);
    gauge!("s3mount_read_ahead_budget_bytes").set(gauges.read_ahead_budget_bytes as f64);
    gauge!("s3mount_staged_files").set(gauges.staged_files as f64);
    gauge!("s3mount_pending_uploads").set(gauges.pending_uploads as f64);
    gauge!("s3mount_pending_upload_bytes").set(gauges.pending_upload_bytes as f64);
}

/// A failed request worth a person's attention, as `s3mount status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub operation: String,
    pub path: String,
    pub error: String,
}

static RECENT: Mutex<VecDeque<RecentError>> = Mutex::new(VecDeque::new());

/// Remembers a failure for `s3mount status`, the oldest forgotten past [`RECENT_ERRORS`].
pub fn remember_error(operation: &str, path: &str, error: &str) {
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut recent = crate::lock(&RECENT);
    if recent.len() == RECENT_ERRORS {
        recent.pop_front();
    }
    recent.push_back(RecentError {
        at,
        operation: operation.to_owned(),
        path: path.to_owned(),
        error: error.to_owned(),
    });
}

/// The failures remembered, oldest first.
pub fn recent_errors() -> Vec<RecentError> {
    RECENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// The symbolic name of an errno, for labels and logs (`EIO`), or its number.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOTSUP => "ENOTSUP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::E2BIG => "E2BIG",
        libc::EINTR => "EINTR",
        libc::ENOTCONN => "ENOTCONN",
        _ => "other",
    }
}

/// How loudly a failed request with this errno is logged: the ones applications meet in
/// normal work (a missing file, an absent xattr) at debug, refusals of what S3 or this mount
/// cannot do at info, failures of the service (I/O, time-outs, a full disk) at warn.
pub fn errno_severity(errno: i32) -> tracing::Level {
    match errno {
        libc::ENOENT
        | libc::ENODATA
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::ERANGE
        | libc::EINTR => tracing::Level::DEBUG,
        libc::EPERM
        | libc::EACCES
        | libc::EROFS
        | libc::EXDEV
        | libc::EINVAL
        | libc::ENOTSUP
        | libc::ENAMETOOLONG
        | libc::E2BIG
        | libc::EFBIG
        | libc::ENOSYS
        | libc::EBUSY => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_have_names_and_levels() {
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert_eq!(errno_name(9999), "other");
        assert_eq!(errno_severity(libc::ENOENT), tracing::Level::DEBUG);
        assert_eq!(errno_severity(libc::EROFS), tracing::Level::INFO);
        assert_eq!(errno_severity(libc::EIO), tracing::Level::WARN);
        assert_eq!(errno_severity(libc::ETIMEDOUT), tracing::Level::WARN);
    }

    #[test]
    fn recent_errors_keep_the_last_twenty() {
        for i in 0..25 {
            remember_error("read", &format!("f{i}"), "EIO");
        }
        let recent = recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS);
        assert_eq!(recent.last().unwrap().path, "f24");
    }
}
