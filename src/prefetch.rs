//! Read-ahead for one open file: detects sequential reading and keeps a growing window of
//! ranged GETs in flight ahead of the reader, within one memory budget shared by the mount.
//!
//! A read outside what is fetched (a random read, a long seek) restarts cleanly: the parts in
//! flight are dropped (their GETs cancelled) and exactly the blocks asked for are fetched, so a
//! random 4 KiB read costs one 1 MiB block. Each further read inside the fetched range counts as
//! sequential and doubles the window, up to `READ_AHEAD_PARTS` parts. One consumed part is kept
//! behind the reader so a short backward seek is served from memory. Demand reads never wait
//! for the budget (they are bounded by the kernel's requests); read-ahead takes what the budget
//! has and shrinks when it is short, so pressure slows read-ahead, never fails a read.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::cache::{BLOCK_SIZE, BlockReader, ObjectVersion, concat, published};
use crate::object::ObjectError;

/// How many parts may be in flight ahead of one reader at full speed: with 8 MiB parts, 64 MiB,
/// enough to keep a fast link busy while the reader consumes.
pub const READ_AHEAD_PARTS: u64 = 8;

/// How far past the fetched range a read may land and still count as sequential, and how far
/// behind the reader data is kept: two blocks, room for the kernel's concurrent read-ahead
/// requests (1 MiB each) to overtake each other, small enough that a seek costs at most that
/// much extra.
const OUT_OF_ORDER_SLACK: u64 = 2 * BLOCK_SIZE;

/// The budget counts in KiB so a `u32` of permits covers budgets up to 4 TiB.
const BUDGET_UNIT: u64 = 1024;

/// Bytes of read-ahead buffers the whole mount may hold.
#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_bytes: u64,
}

impl MemoryBudget {
    pub fn new(total_bytes: u64) -> Self {
        let units = (total_bytes / BUDGET_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            permits: Arc::new(Semaphore::new(units)),
            total_bytes,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes not reserved by any read-ahead.
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * BUDGET_UNIT
    }

    /// Reserves `bytes` if the budget has them now; never waits.
    fn try_reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).ok()?;
        self.permits.clone().try_acquire_many_owned(units).ok()
    }
}

/// Read-ahead tuning.
#[derive(Clone, Debug)]
pub struct ReadAheadConfig {
    /// Size of one ranged GET at full speed (a multiple of the block size).
    pub part_size: u64,
}

/// A part's bytes, one buffer per block as the block reader hands them: a 1 MiB read at a
/// block boundary is one of them, not a slice of a copy of the whole part.
type PartData = Arc<[Bytes]>;

type PartResult = Option<Result<PartData, ObjectError>>;

/// A range of the object being fetched (or fetched) in the background.
struct Part {
    range: Range<u64>,
    result: watch::Receiver<PartResult>,
    task: tokio::task::JoinHandle<()>,
    /// The budget this part holds while it lives; `None` for demand reads.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Part {
    fn drop(&mut self) {
        // A part nobody will read must not keep its GET running.
        self.task.abort();
    }
}

/// The read-ahead state of one open file.
pub struct Prefetcher {
    reader: Arc<BlockReader>,
    budget: Arc<MemoryBudget>,
    config: ReadAheadConfig,
    object: ObjectVersion,
    /// Contiguous parts in offset order; the first may lie wholly behind the reader (kept for
    /// backward seeks).
    parts: VecDeque<Part>,
    /// Where the next part starts (block aligned): the end of the last part.
    fetched_to: u64,
    /// Bytes to keep in flight ahead of the reader; 0 until reading looks sequential.
    window: u64,
}

impl Prefetcher {
    pub fn new(
        reader: Arc<BlockReader>,
        budget: Arc<MemoryBudget>,
        config: ReadAheadConfig,
        object: ObjectVersion,
    ) -> Self {
        Self {
            reader,
            budget,
            config,
            object,
            parts: VecDeque::new(),
            fetched_to: 0,
            window: 0,
        }
    }

    /// Starts with the object's first bytes already here (the open's GET brought them), so
    /// the first reads wait for nothing. They hold read-ahead budget as any part does; with none
    /// to spare now they are not kept, and the first read finds them in the block cache (or
    /// fetches them again without one).
    pub fn seed_start(&mut self, first: Bytes) {
        if first.is_empty() || !self.parts.is_empty() {
            return;
        }
        let len = first.len() as u64;
        let Some(permit) = self.budget.try_reserve(len) else {
            return;
        };
        let (sender, receiver) = watch::channel(None);
        let task = tokio::spawn(async move {
            sender.send_replace(Some(Ok(Arc::from([first]))));
        });
        self.parts.push_back(Part {
            range: 0..len,
            result: receiver,
            task,
            _permit: Some(permit),
        });
        self.fetched_to = block_ceil(len);
    }

    pub fn object(&self) -> &ObjectVersion {
        &self.object
    }

    /// Up to `len` bytes at `offset`. Takes the prefetcher's lock only to plan; the waiting for
    /// data happens outside it, so reads of one file that the kernel sends concurrently proceed.
    pub async fn read(this: &tokio::sync::Mutex<Self>, offset: u64, len: u64) -> Result<Bytes, ObjectError> {
        let (range, pending, reader, object) = {
            let mut prefetcher = this.lock().await;
            let end = prefetcher.object.size.min(offset.saturating_add(len));
            if offset >= end {
                return Ok(Bytes::new());
            }
            prefetcher.plan(offset..end);
            let pending = prefetcher.receivers(offset..end);
            (
                offset..end,
                pending,
                prefetcher.reader.clone(),
                prefetcher.object.clone(),
            )
        };
        match collect(&reader, &object, range, pending).await {
            Ok(data) => Ok(data),
            Err(error) => {
                // Start clean next time: a failed part must be fetched again, not replayed.
                this.lock().await.restart_at(offset);
                Err(error)
            }
        }
    }

    /// [`Prefetcher::read`] when it needs no wait: the lock is free and every byte of the range
    /// has arrived. Answered on the caller's thread, a read costs no hand-over to the runtime and
    /// back (on a cold sequential read, a quarter of the daemon's thread switches). `None`, with
    /// nothing changed, when it would have to wait; the read then goes the usual way. Must be
    /// called within the runtime (the read-ahead it tops up spawns there).
    pub fn try_read_ready(this: &tokio::sync::Mutex<Self>, offset: u64, len: u64) -> Option<Bytes> {
        let mut prefetcher = this.try_lock().ok()?;
        let end = prefetcher.object.size.min(offset.saturating_add(len));
        if offset >= end {
            return Some(Bytes::new());
        }
        let arrived = prefetcher.arrived(offset..end)?;
        let mut pieces = Vec::with_capacity(arrived.len());
        for (part_range, data) in arrived {
            let from = offset.max(part_range.start) - part_range.start;
            let to = end.min(part_range.end) - part_range.start;
            // (A part short of its range: the usual read reports it and starts clean.)
            cut(&data, from..to, &mut pieces).ok()?;
        }
        prefetcher.plan(offset..end);
        drop(prefetcher);
        Some(concat(pieces.into_iter()))
    }

    /// The data of the parts covering `range`, if they cover all of it and have all arrived.
    fn arrived(&self, range: Range<u64>) -> Option<Vec<(Range<u64>, PartData)>> {
        let mut covered_to = range.start;
        let mut arrived = Vec::new();
        for (part_range, receiver) in self.receivers(range.clone()) {
            if part_range.start > covered_to {
                return None;
            }
            let Some(Ok(data)) = &*receiver.borrow() else {
                return None;
            };
            covered_to = covered_to.max(part_range.end);
            arrived.push((part_range, data.clone()));
        }
        (covered_to >= range.end).then_some(arrived)
    }

    /// Makes sure `range` is being fetched, and the window beyond it when reading is sequential.
    fn plan(&mut self, range: Range<u64>) {
        self.backfill_before(range.start);
        // Reads slightly past what is fetched still count: the kernel sends its read-ahead
        // requests concurrently, so they can arrive out of order.
        let sequential = self.parts.front().is_some_and(|p| p.range.start <= range.start)
            && range.start <= self.fetched_to + OUT_OF_ORDER_SLACK;
        if sequential {
            let full = self.config.part_size * READ_AHEAD_PARTS;
            self.window = if self.window == 0 {
                BLOCK_SIZE
            } else {
                (self.window * 2).min(full)
            };
        } else {
            if let Some(first) = self.parts.front() {
                tracing::debug!(key = %self.object.key, offset = range.start, fetched_to = self.fetched_to,
                    first = first.range.start, "read-ahead restarts");
            }
            self.restart_at(range.start);
        }
        self.drop_parts_behind(range.start);
        while self.fetched_to < range.end {
            let len = self.config.part_size.min(block_ceil(range.end) - self.fetched_to);
            self.push_part(len, None);
        }
        self.read_ahead(range.end);
    }

    /// A read landing a little before the first part (a kernel request overtaken by the next
    /// one) gets the blocks in between fetched in front, instead of a restart that would drop
    /// the parts already in flight.
    fn backfill_before(&mut self, offset: u64) {
        let Some(first) = self.parts.front().map(|p| p.range.start) else {
            return;
        };
        if offset < first && first - offset <= OUT_OF_ORDER_SLACK {
            let start = offset - offset % BLOCK_SIZE;
            let part = self.spawn_part(start, first - start, None);
            self.parts.push_front(part);
        }
    }

    /// Keeps `window` bytes in flight past `from`, as far as the budget allows. Tops up only when
    /// less than half the window is left, and then in whole parts, so a reader moving 128 KiB at
    /// a time still causes part-sized GETs, not block-sized ones.
    fn read_ahead(&mut self, from: u64) {
        if self.fetched_to.saturating_sub(from) >= self.window / 2 {
            return;
        }
        let target = self.object.size.min(from.saturating_add(self.window));
        let part = block_ceil(self.config.part_size.min(self.window));
        while self.fetched_to < target {
            match self.reserve_up_to(part) {
                Some((len, permit)) => self.push_part(len, Some(permit)),
                None => {
                    // Budget exhausted: shrink the window to what is in flight.
                    self.window = self.fetched_to.saturating_sub(from);
                    return;
                }
            }
        }
    }

    /// The largest block multiple up to `wanted` bytes the budget grants now.
    fn reserve_up_to(&self, wanted: u64) -> Option<(u64, OwnedSemaphorePermit)> {
        let mut len = wanted;
        loop {
            if let Some(permit) = self.budget.try_reserve(len) {
                return Some((len, permit));
            }
            if len <= BLOCK_SIZE {
                return None;
            }
            len = block_ceil(len / 2);
        }
    }

    /// Appends a part of `len` bytes at the end of what is fetched.
    fn push_part(&mut self, len: u64, permit: Option<OwnedSemaphorePermit>) {
        let part = self.spawn_part(self.fetched_to, len, permit);
        self.fetched_to = block_ceil(part.range.end);
        self.parts.push_back(part);
    }

    /// Starts fetching `len` bytes at `start` (block aligned) in the background.
    fn spawn_part(&self, start: u64, len: u64, permit: Option<OwnedSemaphorePermit>) -> Part {
        let end = (start + len).min(self.object.size);
        let (sender, receiver) = watch::channel(None);
        let reader = self.reader.clone();
        let object = self.object.clone();
        let blocks = start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE);
        let task = tokio::spawn(async move {
            let result = reader.read_block_list(&object, blocks).await.map(PartData::from);
            sender.send_replace(Some(result));
        });
        Part {
            range: start..end,
            result: receiver,
            task,
            _permit: permit,
        }
    }

    /// Drops the parts the reader has left behind, keeping the one that holds the bytes
    /// `OUT_OF_ORDER_SLACK` before `offset` and everything after it: a short backward seek, or
    /// a late kernel request, is served from memory.
    fn drop_parts_behind(&mut self, offset: u64) {
        let keep_from = offset.saturating_sub(OUT_OF_ORDER_SLACK);
        while self.parts.len() >= 2 && self.parts[1].range.start <= keep_from {
            self.parts.pop_front();
        }
    }

    fn restart_at(&mut self, offset: u64) {
        self.parts.clear();
        self.fetched_to = offset - offset % BLOCK_SIZE;
        self.window = 0;
    }

    fn receivers(&self, range: Range<u64>) -> Vec<(Range<u64>, watch::Receiver<PartResult>)> {
        self.parts
            .iter()
            .filter(|p| p.range.start < range.end && range.start < p.range.end)
            .map(|p| (p.range.clone(), p.result.clone()))
            .collect()
    }
}

/// Waits for the parts and cuts `range` out of them. A part dropped meanwhile (a concurrent
/// read of the same file seeked elsewhere) is read directly instead.
async fn collect(
    reader: &BlockReader,
    object: &ObjectVersion,
    range: Range<u64>,
    pending: Vec<(Range<u64>, watch::Receiver<PartResult>)>,
) -> Result<Bytes, ObjectError> {
    let mut pieces = Vec::with_capacity(pending.len());
    for (part_range, mut receiver) in pending {
        let data = match published(&mut receiver).await {
            Some(result) => result?,
            None => {
                let blocks = part_range.start / BLOCK_SIZE..part_range.end.div_ceil(BLOCK_SIZE);
                PartData::from(reader.read_block_list(object, blocks).await?)
            }
        };
        let from = range.start.max(part_range.start) - part_range.start;
        let to = range.end.min(part_range.end) - part_range.start;
        cut(&data, from..to, &mut pieces)?;
    }
    Ok(concat(pieces.into_iter()))
}

/// Appends the slices of `blocks` (a part's, the first starting at its offset 0) that hold the
/// part's bytes `range` to `pieces`; an error when the part is shorter than that.
fn cut(blocks: &[Bytes], range: Range<u64>, pieces: &mut Vec<Bytes>) -> Result<(), ObjectError> {
    let mut block_start = 0u64;
    for block in blocks {
        let block_end = block_start + block.len() as u64;
        if block_start < range.end && range.start < block_end {
            let from = range.start.max(block_start) - block_start;
            let to = range.end.min(block_end) - block_start;
            pieces.push(block.slice(from as usize..to as usize));
        }
        block_start = block_end;
    }
    if block_start < range.end {
        return Err(ObjectError::Service {
            code: "ShortRead".into(),
            message: "part shorter than asked".into(),
        });
    }
    Ok(())
}

fn block_ceil(offset: u64) -> u64 {
    offset.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

#[cfg(test)]
mod tests;
