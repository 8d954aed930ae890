//! `FaultClient<C>`: wraps any [`ObjectClient`] and makes its operations fail, wait or stall on
//! demand, so every layer above (retries, the file system, uploads) can be tested against a
//! server at its worst: queued errors, an answer lost after the server acted, added latency, a
//! request that never answers, an endpoint that cannot be reached.
//!
//! Owns only its knobs; the wrapped client keeps its own state and counters, and a request that
//! a fault stops before it reaches the server is not seen by it. Compiled for tests only
//! (`cfg(test)` or the `test-util` feature), never into the release binary. It derefs to the
//! wrapped client, so a test keeps using its setup helpers (`put_object`, `counters`, ...).

use crate::lock;
use std::collections::VecDeque;
use std::ops::{Deref, Range};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{
    CompletedPart, ListPage, ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata, ObjectStart,
    Op, PutOptions, RangeBody, VersionListRequest, VersionPage,
};

const OP_COUNT: usize = Op::ALL.len();

/// When a queued error strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// Before the request reaches the server: nothing happened there.
    Before,
    /// After the server acted: the answer is lost (a reset after the write, say).
    After,
}

#[derive(Debug)]
struct Fault {
    remaining: usize,
    error: ObjectError,
    moment: Moment,
}

/// Any [`ObjectClient`] with injectable faults.
pub struct FaultClient<C> {
    inner: C,
    faults: Mutex<[VecDeque<Fault>; OP_COUNT]>,
    latency: Mutex<[Duration; OP_COUNT]>,
    answer_latency: Mutex<[Duration; OP_COUNT]>,
    unreachable: AtomicBool,
    /// Stalled operations, as a bit set by [`Op::index`]; waiters watch it change.
    stalled: watch::Sender<u16>,
    /// Calls of each operation made through this wrapper, whatever became of them.
    calls: [AtomicU64; OP_COUNT],
}

impl<C> FaultClient<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            faults: Mutex::new(Default::default()),
            latency: Mutex::new([Duration::ZERO; OP_COUNT]),
            answer_latency: Mutex::new([Duration::ZERO; OP_COUNT]),
            unreachable: AtomicBool::new(false),
            stalled: watch::Sender::new(0),
            calls: Default::default(),
        }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Makes the next `n` calls of `op` fail with `error` before they reach the server (after
    /// any faults already queued for `op`). Chosen when a call starts, so concurrent calls
    /// consume them in the order they were made.
    pub fn fail_next(&self, op: Op, n: usize, error: ObjectError) {
        self.queue(op, n, error, Moment::Before);
    }

    /// Makes the next `n` calls of `op` reach the server and do their work, then fail with
    /// `error` as if the answer had been lost: what a retry of a request that succeeded sees.
    pub fn fail_next_after_server(&self, op: Op, n: usize, error: ObjectError) {
        self.queue(op, n, error, Moment::After);
    }

    fn queue(&self, op: Op, n: usize, error: ObjectError, moment: Moment) {
        if n > 0 {
            lock(&self.faults)[op.index()].push_back(Fault {
                remaining: n,
                error,
                moment,
            });
        }
    }

    /// Makes every later call of `op` wait `latency` (a tokio sleep, so other tasks go on)
    /// before it is sent. `Duration::ZERO` removes the delay.
    pub fn set_latency(&self, op: Op, latency: Duration) {
        lock(&self.latency)[op.index()] = latency;
    }

    /// Makes every later call of `op` wait `latency` after the server acted, before its answer
    /// arrives: the answer describes the bucket as it was before the wait.
    pub fn set_answer_latency(&self, op: Op, latency: Duration) {
        lock(&self.answer_latency)[op.index()] = latency;
    }

    /// While `true`, every call fails with [`ObjectError::Unreachable`] (queued faults are left
    /// for later, not consumed).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Relaxed);
    }

    /// While `true`, calls of `op` hang before they reach the server (an endpoint that accepts
    /// and answers nothing); calls already hanging go on when it is set back to `false`.
    pub fn set_stalled(&self, op: Op, stalled: bool) {
        let bit = 1u16 << op.index();
        self.stalled.send_modify(|set| {
            if stalled {
                *set |= bit;
            } else {
                *set &= !bit;
            }
        });
    }

    /// Stalls or releases every operation at once.
    pub fn set_all_stalled(&self, stalled: bool) {
        for op in Op::ALL {
            self.set_stalled(op, stalled);
        }
    }

    /// Calls of `op` made through this wrapper so far, failed and stalled ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op.index()].load(Ordering::Relaxed)
    }

    /// What every call goes through before the server: count, pick a fault, wait, stall.
    /// Returns the error to fail with now, or the one to fail with once the server answered.
    async fn begin(&self, op: Op) -> Result<Option<ObjectError>, ObjectError> {
        self.calls[op.index()].fetch_add(1, Ordering::Relaxed);
        let fault = match self.unreachable.load(Ordering::Relaxed) {
            true => Some((
                ObjectError::Unreachable("the endpoint is set unreachable".to_owned()),
                Moment::Before,
            )),
            false => self.take_fault(op),
        };
        let latency = lock(&self.latency)[op.index()];
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut stalled = self.stalled.subscribe();
        // An error only means the sender is gone, which `self` rules out.
        let _ = stalled.wait_for(|set| set & (1 << op.index()) == 0).await;
        match fault {
            Some((error, Moment::Before)) => Err(error),
            Some((error, Moment::After)) => Ok(Some(error)),
            None => Ok(None),
        }
    }

    fn take_fault(&self, op: Op) -> Option<(ObjectError, Moment)> {
        let mut faults = lock(&self.faults);
        let queue = &mut faults[op.index()];
        let fault = queue.front_mut()?;
        fault.remaining -= 1;
        let taken = (fault.error.clone(), fault.moment);
        if fault.remaining == 0 {
            queue.pop_front();
        }
        Some(taken)
    }
}

impl FaultClient<super::memory::MemoryClient> {
    /// An empty in-memory bucket called `bucket`, with faults to inject.
    pub fn memory(bucket: &str) -> Self {
        Self::new(super::memory::MemoryClient::new(bucket))
    }
}

impl<C> Deref for FaultClient<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.inner
    }
}

impl<C> FaultClient<C> {
    /// The answer of a call of `op` that reached the server, after its answer latency, unless
    /// the answer is to be lost.
    async fn answer<T>(
        &self,
        op: Op,
        result: Result<T, ObjectError>,
        lost: Option<ObjectError>,
    ) -> Result<T, ObjectError> {
        let latency = lock(&self.answer_latency)[op.index()];
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match lost {
            Some(error) => Err(error),
            None => result,
        }
    }
}

#[async_trait]
impl<C: ObjectClient> ObjectClient for FaultClient<C> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        let lost = self.begin(Op::List).await?;
        self.answer(Op::List, self.inner.list(request).await, lost).await
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        let lost = self.begin(Op::Head).await?;
        let answer = self.inner.head_version(key, version_id).await;
        self.answer(Op::Head, answer, lost).await
    }

    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        let lost = self.begin(Op::Get).await?;
        let answer = self
            .inner
            .get_range_body(key, version_id, range, if_match, sum_pieces)
            .await;
        self.answer(Op::Get, answer, lost).await
    }

    async fn get_start(&self, key: &str, len: u64) -> Result<ObjectStart, ObjectError> {
        let lost = self.begin(Op::Get).await?;
        let answer = self.inner.get_start(key, len).await;
        self.answer(Op::Get, answer, lost).await
    }

    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        let lost = self.begin(Op::List).await?;
        let answer = self.inner.list_versions(request).await;
        self.answer(Op::List, answer, lost).await
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<String, ObjectError> {
        let lost = self.begin(Op::Put).await?;
        self.answer(Op::Put, self.inner.put_with(key, body, options).await, lost)
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let lost = self.begin(Op::Delete).await?;
        self.answer(Op::Delete, self.inner.delete(key).await, lost).await
    }

    async fn copy(
        &self,
        source_key: &str,
        dest_key: &str,
        if_match: Option<&str>,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        let lost = self.begin(Op::Copy).await?;
        self.answer(
            Op::Copy,
            self.inner.copy(source_key, dest_key, if_match, metadata).await,
            lost,
        )
        .await
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> Result<String, ObjectError> {
        let lost = self.begin(Op::CreateMultipart).await?;
        self.answer(
            Op::CreateMultipart,
            self.inner.create_multipart(key, options).await,
            lost,
        )
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, ObjectError> {
        let lost = self.begin(Op::UploadPart).await?;
        let uploaded = self.inner.upload_part(key, upload_id, part_number, body).await;
        self.answer(Op::UploadPart, uploaded, lost).await
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
        let lost = self.begin(Op::UploadPartCopy).await?;
        let copied = self
            .inner
            .upload_part_copy(key, upload_id, part_number, source_key, source_range, if_match)
            .await;
        self.answer(Op::UploadPartCopy, copied, lost).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String, ObjectError> {
        let lost = self.begin(Op::CompleteMultipart).await?;
        let completed = self
            .inner
            .complete_multipart(key, upload_id, parts, if_match, if_none_match)
            .await;
        self.answer(Op::CompleteMultipart, completed, lost).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        let lost = self.begin(Op::AbortMultipart).await?;
        self.answer(
            Op::AbortMultipart,
            self.inner.abort_multipart(key, upload_id).await,
            lost,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::object::memory::MemoryClient;

    fn bucket() -> FaultClient<MemoryClient> {
        let client = FaultClient::new(MemoryClient::new("b"));
        client.put_object("top", "top");
        client
    }

    fn list_all() -> ListRequest {
        ListRequest::default()
    }

    #[tokio::test]
    async fn fail_next_fails_exactly_n_calls_of_one_op_in_order() {
        let client = bucket();
        let throttled = ObjectError::Transient {
            code: "SlowDown".into(),
            message: "reduce rate".into(),
        };
        client.fail_next(Op::Get, 2, throttled.clone());
        client.fail_next(Op::Get, 1, ObjectError::AccessDenied("top".into()));
        assert_eq!(
            client.head("top").await.unwrap().size,
            3,
            "other operations are not affected"
        );
        assert_eq!(client.get_range("top", 0..3, None).await, Err(throttled.clone()));
        assert_eq!(client.get_range("top", 0..3, None).await, Err(throttled));
        assert_eq!(
            client.get_range("top", 0..3, None).await,
            Err(ObjectError::AccessDenied("top".into()))
        );
        assert_eq!(client.get_range("top", 0..3, None).await.unwrap(), "top");
        assert_eq!(client.calls(Op::Get), 4);
        assert_eq!(client.counters().get, 1, "failed calls never reached the bucket");

        client.fail_next(Op::Put, 1, ObjectError::Unreachable("reset".into()));
        assert!(client.put("p", Bytes::from_static(b"1")).await.is_err());
        assert!(
            !client.contains("p"),
            "a put failed before the server stores nothing"
        );
        client.put("p", Bytes::from_static(b"1")).await.unwrap();
        assert!(client.contains("p"));
    }

    #[tokio::test]
    async fn an_answer_lost_after_the_server_acted_leaves_its_effect() {
        let client = bucket();
        client.fail_next_after_server(Op::Put, 1, ObjectError::Unreachable("reset".into()));
        assert!(client.put("p", Bytes::from_static(b"1")).await.is_err());
        assert!(
            client.contains("p"),
            "the server stored it; only the answer was lost"
        );
        client.fail_next_after_server(Op::Delete, 1, ObjectError::TimedOut("slow".into()));
        assert!(client.delete("p").await.is_err());
        assert!(!client.contains("p"));
    }

    #[tokio::test]
    async fn unreachable_fails_everything_until_cleared() {
        let client = bucket();
        client.fail_next(Op::Head, 1, ObjectError::AccessDenied("top".into()));
        client.set_unreachable(true);
        assert!(matches!(
            client.list(&list_all()).await,
            Err(ObjectError::Unreachable(_))
        ));
        assert!(matches!(
            client.head("top").await,
            Err(ObjectError::Unreachable(_))
        ));
        assert!(matches!(
            client.put("x", Bytes::new()).await,
            Err(ObjectError::Unreachable(_))
        ));
        assert!(!client.contains("x"));
        client.set_unreachable(false);
        // The queued fault was kept for the first call after the outage.
        assert_eq!(
            client.head("top").await,
            Err(ObjectError::AccessDenied("top".into()))
        );
        assert!(client.head("top").await.is_ok());
    }

    #[tokio::test]
    async fn a_stalled_operation_hangs_alone_until_released() {
        let client = Arc::new(bucket());
        client.set_stalled(Op::Get, true);
        let stalled = tokio::spawn({
            let client = client.clone();
            async move { client.get_range("top", 0..3, None).await }
        });
        while client.calls(Op::Get) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            client.head("top").await.unwrap().size,
            3,
            "other operations go on"
        );
        client.put("during", Bytes::from_static(b"x")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stalled.is_finished(), "the stalled GET is still waiting");
        assert_eq!(client.counters().get, 0, "it never reached the server");
        client.set_stalled(Op::Get, false);
        assert_eq!(stalled.await.unwrap().unwrap(), "top");
    }

    #[tokio::test]
    async fn an_answer_delayed_describes_the_bucket_before_the_delay() {
        let client = Arc::new(bucket());
        client.set_answer_latency(Op::Head, Duration::from_millis(100));
        let head = tokio::spawn({
            let client = client.clone();
            async move { client.head("top").await }
        });
        while client.counters().head == 0 {
            tokio::task::yield_now().await;
        }
        client.delete_object("top");
        assert_eq!(
            head.await.unwrap().unwrap().size,
            3,
            "the server answered before the delete"
        );
    }

    #[tokio::test]
    async fn latency_delays_the_call() {
        let client = bucket();
        // Long enough to be measurable, short enough not to slow the suite.
        let latency = Duration::from_millis(20);
        client.set_latency(Op::Head, latency);
        let started = tokio::time::Instant::now();
        client.head("top").await.unwrap();
        assert!(started.elapsed() >= latency);
        client.set_latency(Op::Head, Duration::ZERO);
        assert_eq!(client.counters().head, 1);
    }
}
