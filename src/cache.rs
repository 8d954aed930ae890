//! Block-granular reads of object versions: the disk cache first, then one ranged GET per run of
//! missing blocks, with single flight so concurrent readers of one missing block cause one GET.
//!
//! Owns the block size, the in-flight registry, the hand-off of fetched blocks to the disk cache
//! (in the background, bounded, so a slow disk never slows a reader) and the read counters.
//! It does not decide what to read ahead: that is `prefetch`'s job.

pub mod disk;

use crate::lock;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, watch};

use crate::object::{ObjectClient, ObjectError, ObjectHead};
use disk::{BlockName, DiskCache};

/// The cache's unit: 1 MiB, as Mountpoint. Small enough that a random 4 KiB read costs one
/// 1 MiB GET, large enough that a 1 GiB object is 1,024 files, not a million.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Bytes of fetched blocks waiting to be written to disk at most; beyond that new blocks are
/// not cached (the cache is best-effort, memory is not).
const PENDING_WRITE_BYTES: usize = 64 << 20;

/// One version of one object: what a cached block belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// On a versioned bucket, the version: every GET names it, so a handle reads the version it
    /// opened whatever is written since (`None`: the current one, checked by its ETag).
    pub version_id: Option<String>,
}

/// Counters for the stats line, benchmarks and tests.
#[derive(Debug, Default)]
pub struct ReadCounters {
    pub get_requests: AtomicU64,
    pub get_bytes: AtomicU64,
    pub cache_hit_blocks: AtomicU64,
    /// Blocks neither on disk nor in flight: fetched from S3 by this reader.
    pub cache_miss_blocks: AtomicU64,
    /// Blocks another reader was already fetching: waited for, not fetched again.
    pub shared_blocks: AtomicU64,
}

impl ReadCounters {
    /// `name=value` pairs, space separated, for the log line at unmount.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "get_requests={} get_bytes={} cache_hit_blocks={} cache_miss_blocks={} shared_blocks={}",
            get(&self.get_requests),
            get(&self.get_bytes),
            get(&self.cache_hit_blocks),
            get(&self.cache_miss_blocks),
            get(&self.shared_blocks)
        )
    }
}

type BlockResult = Option<Result<Bytes, ObjectError>>;
type InFlightKey = (ObjectVersion, u64);
/// Blocks being fetched, and fetched blocks on their way to disk: a reader that finds its block
/// here waits for (or takes) that block instead of fetching it again.
type InFlight = Arc<Mutex<HashMap<InFlightKey, watch::Receiver<BlockResult>>>>;

/// A block fetched from S3, and its CRC32C where the client took it as the bytes arrived (the
/// disk cache stores it rather than reading the block again to compute it).
struct FetchedBlock {
    index: u64,
    data: Bytes,
    crc32c: Option<u32>,
}

/// Reads blocks of object versions through the disk cache.
pub struct BlockReader {
    client: Arc<dyn ObjectClient>,
    disk: Option<Arc<DiskCache>>,
    in_flight: InFlight,
    pending_writes: Arc<Semaphore>,
    pub counters: ReadCounters,
}

impl BlockReader {
    pub fn new(client: Arc<dyn ObjectClient>, disk: Option<Arc<DiskCache>>) -> Self {
        Self {
            client,
            disk,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            pending_writes: Arc::new(Semaphore::new(PENDING_WRITE_BYTES)),
            counters: ReadCounters::default(),
        }
    }

    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The bytes of `blocks` (block indices) of `object`, concatenated; the last block of the
    /// object may be short. Blocks past the end are not returned.
    pub async fn read_blocks(
        &self,
        object: &ObjectVersion,
        blocks: Range<u64>,
    ) -> Result<Bytes, ObjectError> {
        Ok(concat(self.read_block_list(object, blocks).await?.into_iter()))
    }

    /// [`BlockReader::read_blocks`] one buffer per block, as they came (slices of one GET's
    /// body, or cached files): no copy to join them, which a reader of a block at a time (the
    /// kernel's 1 MiB reads) never needs.
    pub async fn read_block_list(
        &self,
        object: &ObjectVersion,
        blocks: Range<u64>,
    ) -> Result<Vec<Bytes>, ObjectError> {
        let blocks = blocks.start..blocks.end.min(object.size.div_ceil(BLOCK_SIZE));
        let mut found: Vec<Option<Bytes>> = self.cached_on_disk(object, blocks.clone()).await;
        let missing: Vec<u64> = blocks
            .clone()
            .filter(|b| found[(b - blocks.start) as usize].is_none())
            .collect();
        if !missing.is_empty() {
            for (block, data) in self.fetch_missing(object, &missing).await? {
                found[(block - blocks.start) as usize] = Some(data);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// What the disk cache holds of `blocks`, in order (`None` where it holds nothing).
    async fn cached_on_disk(&self, object: &ObjectVersion, blocks: Range<u64>) -> Vec<Option<Bytes>> {
        let Some(disk) = self.disk.clone() else {
            return blocks.map(|_| None).collect();
        };
        let count = (blocks.end - blocks.start) as usize;
        let names: Vec<BlockName> = blocks
            .map(|index| block_name(&*self.client, object, index))
            .collect();
        // The index is in memory: a run of blocks none of which is stored (a cold read) costs
        // no blocking task and no thread switch.
        let found: Vec<Option<Bytes>> = if names.iter().any(|name| disk.indexes(name)) {
            // A lookup task that did not finish (a runtime shutting down) holds nothing: every
            // block is fetched, and the caller still gets one answer per block.
            tokio::task::spawn_blocking(move || names.iter().map(|name| disk.get(name)).collect())
                .await
                .unwrap_or_else(|_| vec![None; count])
        } else {
            vec![None; count]
        };
        let hits = found.iter().flatten().count() as u64;
        self.counters.cache_hit_blocks.fetch_add(hits, Ordering::Relaxed);
        let hit_bytes = found.iter().flatten().map(|b| b.len() as u64).sum();
        crate::metrics::bytes_read(crate::metrics::ReadSource::BlockCache, hit_bytes);
        crate::metrics::block_cache_lookups(hits, found.len() as u64 - hits);
        found
    }

    /// Fetches the given blocks (sorted), joining fetches already in flight for some of them.
    async fn fetch_missing(
        &self,
        object: &ObjectVersion,
        missing: &[u64],
    ) -> Result<Vec<(u64, Bytes)>, ObjectError> {
        let (mut owned, waiting) = self.claim(object, missing);
        self.counters
            .cache_miss_blocks
            .fetch_add(owned.senders.len() as u64, Ordering::Relaxed);
        self.counters
            .shared_blocks
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        let mut result = Vec::with_capacity(missing.len());
        for run in contiguous_runs(owned.senders.keys().copied().collect()) {
            let data = self.get_run(object, run, &mut owned).await?;
            result.extend(data);
        }
        for (block, mut receiver) in waiting {
            let data = match published(&mut receiver).await {
                Some(result) => result?,
                // The owner gave up (its reader went away): fetch the block ourselves.
                None => {
                    let mut own = Box::pin(self.fetch_missing(object, &[block])).await?;
                    own.pop()
                        .map(|(_, data)| data)
                        .ok_or_else(|| ObjectError::Unreachable("block fetch returned nothing".into()))?
                }
            };
            result.push((block, data));
        }
        result.sort_by_key(|(block, _)| *block);
        Ok(result)
    }

    /// Registers us as the fetcher of every block nobody is fetching; returns ours (with the
    /// senders to publish them) and the receivers of the others.
    fn claim(
        &self,
        object: &ObjectVersion,
        blocks: &[u64],
    ) -> (InFlightGuard<'_>, Vec<(u64, watch::Receiver<BlockResult>)>) {
        let mut registry = lock(&self.in_flight);
        let mut owned = InFlightGuard {
            in_flight: &self.in_flight,
            object: object.clone(),
            senders: HashMap::new(),
        };
        let mut waiting = Vec::new();
        for &block in blocks {
            let key = (object.clone(), block);
            match registry.get(&key) {
                Some(receiver) => waiting.push((block, receiver.clone())),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    registry.insert(key, receiver);
                    owned.senders.insert(block, sender);
                }
            }
        }
        (owned, waiting)
    }

    /// Whether the disk cache holds the first block of `key` at `etag`: then an open that
    /// finds that version current reads it from disk, and needs only S3's head.
    pub fn has_first_block(&self, key: &str, etag: &str) -> bool {
        let Some(disk) = &self.disk else { return false };
        disk.contains(&block_name_at(&*self.client, key, etag, 0))
    }

    /// A GET of file data answered `data` where `expected` bytes were asked: a short answer is
    /// an error, a whole one is counted (stats line and metrics) as bytes from S3.
    fn count_fetched(&self, key: &str, expected: u64, data: &Bytes) -> Result<(), ObjectError> {
        if data.len() as u64 != expected {
            return Err(ObjectError::Service {
                code: "ShortRead".into(),
                message: format!("asked {expected} bytes of {key}, got {}", data.len()),
            });
        }
        self.counters.get_bytes.fetch_add(expected, Ordering::Relaxed);
        crate::metrics::bytes_read(crate::metrics::ReadSource::S3, expected);
        Ok(())
    }

    /// Opens the current version of `key` with one GetObject of its first block
    /// ([`ObjectClient::get_start`]): its head, and that block (the whole object when it is
    /// smaller), which goes to the disk cache and to waiting readers as any fetched block does,
    /// and is returned for the opener's first reads.
    pub async fn open_with_first_block(&self, key: &str) -> Result<(ObjectHead, Bytes), ObjectError> {
        self.counters.get_requests.fetch_add(1, Ordering::Relaxed);
        let start = self.client.get_start(key, BLOCK_SIZE).await?;
        let head = start.head;
        let expected = BLOCK_SIZE.min(head.size);
        self.count_fetched(key, expected, &start.data)?;
        if expected > 0 {
            let object = ObjectVersion {
                key: key.to_owned(),
                etag: head.etag.clone(),
                size: head.size,
                version_id: head.version_id.clone(),
            };
            let (mut owned, _already_in_flight) = self.claim(&object, &[0]);
            if owned.senders.contains_key(&0) {
                self.counters.cache_miss_blocks.fetch_add(1, Ordering::Relaxed);
                owned.publish(0, Ok(start.data.clone()));
                let first = FetchedBlock {
                    index: 0,
                    data: start.data.clone(),
                    crc32c: None,
                };
                self.store_in_background(&object, &[first], &mut owned);
            }
        }
        Ok((head, start.data))
    }

    /// One ranged GET for a run of blocks, of exactly the run's bytes (a short body is an
    /// error), counted; the blocks sliced out of it, with the CRC32C of each where the client
    /// took them. Both the readers' path and [`Self::fill`] fetch through here.
    async fn get_blocks(
        &self,
        object: &ObjectVersion,
        run: Range<u64>,
    ) -> Result<Vec<FetchedBlock>, ObjectError> {
        let range = run.start * BLOCK_SIZE..(run.end * BLOCK_SIZE).min(object.size);
        let expected = range.end - range.start;
        self.counters.get_requests.fetch_add(1, Ordering::Relaxed);
        let body = self
            .client
            .get_range_body(
                &object.key,
                object.version_id.as_deref(),
                range.clone(),
                Some(&object.etag),
                Some(BLOCK_SIZE as usize),
            )
            .await?;
        let data = body.data;
        self.count_fetched(&object.key, expected, &data)?;
        // (Sums of another count than the blocks' are not this run's: left out, not trusted.)
        let sums = body
            .piece_sums
            .filter(|sums| sums.len() as u64 == run.end - run.start);
        Ok(run
            .enumerate()
            .map(|(nth, block)| {
                let start = nth * BLOCK_SIZE as usize;
                let end = (start + BLOCK_SIZE as usize).min(data.len());
                let data = data.slice(start..end);
                let crc32c = sums.as_ref().map(|sums| sums[nth]);
                // Debug builds (every test) check each sum against its block here, in the
                // reading task, so a wrong one fails the test that read it. A release build
                // trusts it (checking would cost what summing on arrival saves): a wrong one
                // would only make the block look damaged when read back, and be fetched again.
                debug_assert!(
                    crc32c.is_none_or(|crc| crc == crate::checksum::crc32c(&data)),
                    "the CRC32C taken on arrival of block {block} of {} is not its bytes'",
                    object.key
                );
                FetchedBlock {
                    index: block,
                    data,
                    crc32c,
                }
            })
            .collect())
    }

    /// One ranged GET for a run of blocks; publishes each block to waiters and the disk cache.
    async fn get_run(
        &self,
        object: &ObjectVersion,
        run: Range<u64>,
        owned: &mut InFlightGuard<'_>,
    ) -> Result<Vec<(u64, Bytes)>, ObjectError> {
        let blocks = match self.get_blocks(object, run.clone()).await {
            Ok(blocks) => blocks,
            Err(error) => {
                owned.publish_error(run, &error);
                return Err(error);
            }
        };
        for block in &blocks {
            owned.publish(block.index, Ok(block.data.clone()));
        }
        self.store_in_background(object, &blocks, owned);
        Ok(blocks
            .into_iter()
            .map(|block| (block.index, block.data))
            .collect())
    }

    /// Hands the blocks of one GET to the disk cache without waiting, all to one blocking task
    /// (a task each made a thread switch per block, a tenth of the daemon's CPU on a cold read);
    /// drops a block when too much is pending. A block's in-flight entry, holding its data,
    /// stays until it is on disk, so a reader arriving in between takes it from there rather
    /// than fetching it again.
    fn store_in_background(
        &self,
        object: &ObjectVersion,
        blocks: &[FetchedBlock],
        owned: &mut InFlightGuard<'_>,
    ) {
        let Some(disk) = self.disk.clone() else { return };
        let mut writes = Vec::with_capacity(blocks.len());
        for block in blocks {
            let Ok(permit) = self
                .pending_writes
                .clone()
                .try_acquire_many_owned(block.data.len().max(1) as u32)
            else {
                continue;
            };
            let sender = owned.senders.remove(&block.index);
            let name = block_name(&*self.client, object, block.index);
            let key = (object.clone(), block.index);
            writes.push((name, block.data.clone(), block.crc32c, key, sender, permit));
        }
        if writes.is_empty() {
            return;
        }
        let in_flight = self.in_flight.clone();
        tokio::task::spawn_blocking(move || {
            for (name, data, crc32c, key, sender, permit) in writes {
                disk.put(&name, &data, crc32c);
                lock(&in_flight).remove(&key);
                drop((sender, permit));
            }
        });
    }
}

/// Blocks fetched from S3 in one GET by [`BlockReader::fill`].
const FILL_RUN_BLOCKS: u64 = 8;

/// What [`BlockReader::fill`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    pub fetched_bytes: u64,
    pub cached_bytes: u64,
}

impl BlockReader {
    /// Puts every block of `object` in the disk cache: those not there yet are fetched (a GET
    /// per 8 blocks) and written before this returns, unlike a reader's blocks, which go to
    /// disk in the background and may be dropped when the disk lags. `progress` hears of each
    /// run of blocks: its bytes, and whether they were cached already. A block the cache cannot
    /// store (a bound, a failed write) is an error that says why: warming that leaves nothing
    /// on disk must not look done. What `s3mount warm` does; without a disk cache there is
    /// nothing to fill.
    pub async fn fill(
        &self,
        object: &ObjectVersion,
        progress: &(dyn Fn(Filled) + Sync),
    ) -> Result<Filled, ObjectError> {
        let Some(disk) = self.disk.clone() else {
            return Ok(Filled::default());
        };
        let mut total = Filled::default();
        let blocks = object.size.div_ceil(BLOCK_SIZE);
        let mut start = 0;
        while start < blocks {
            let run = start..(start + FILL_RUN_BLOCKS).min(blocks);
            start = run.end;
            let names: Vec<BlockName> = run
                .clone()
                .map(|i| block_name(&*self.client, object, i))
                .collect();
            let lookup = disk.clone();
            let present: Vec<bool> =
                tokio::task::spawn_blocking(move || names.iter().map(|n| lookup.contains(n)).collect())
                    .await
                    .unwrap_or_default();
            let mut missing = Vec::new();
            let mut cached = 0;
            for (index, block) in run.clone().enumerate() {
                let len = (object.size - block * BLOCK_SIZE).min(BLOCK_SIZE);
                match present.get(index) {
                    Some(true) => cached += len,
                    _ => missing.push(block),
                }
            }
            let mut done = Filled {
                cached_bytes: cached,
                ..Filled::default()
            };
            for missing_run in contiguous_runs(missing) {
                done.fetched_bytes += self.fetch_to_disk(object, missing_run, &disk).await?;
            }
            total.fetched_bytes += done.fetched_bytes;
            total.cached_bytes += done.cached_bytes;
            progress(done);
        }
        Ok(total)
    }

    /// One GET of `run`, written to disk block by block before returning its byte count.
    async fn fetch_to_disk(
        &self,
        object: &ObjectVersion,
        run: Range<u64>,
        disk: &Arc<DiskCache>,
    ) -> Result<u64, ObjectError> {
        let blocks = self.get_blocks(object, run).await?;
        let fetched = blocks.iter().map(|block| block.data.len() as u64).sum();
        let named: Vec<(BlockName, FetchedBlock)> = blocks
            .into_iter()
            .map(|block| (block_name(&*self.client, object, block.index), block))
            .collect();
        let disk = disk.clone();
        let stored = tokio::task::spawn_blocking(move || {
            named
                .iter()
                .try_for_each(|(name, block)| disk.try_put(name, &block.data, block.crc32c))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|stored| stored.map_err(|e| format!("the block cache cannot store it: {e}")));
        stored.map_err(|message| ObjectError::Service {
            code: "CacheWrite".into(),
            message,
        })?;
        Ok(fetched)
    }
}

/// The blocks this task fetches: their senders, and removal from the registry when done or
/// abandoned (a dropped sender tells waiters to fetch for themselves).
struct InFlightGuard<'a> {
    in_flight: &'a InFlight,
    object: ObjectVersion,
    senders: HashMap<u64, watch::Sender<BlockResult>>,
}

impl InFlightGuard<'_> {
    fn publish(&self, block: u64, result: Result<Bytes, ObjectError>) {
        if let Some(sender) = self.senders.get(&block) {
            sender.send_replace(Some(result));
        }
    }

    fn publish_error(&self, run: Range<u64>, error: &ObjectError) {
        for block in run {
            self.publish(block, Err(error.clone()));
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut registry = lock(self.in_flight);
        for block in self.senders.keys() {
            registry.remove(&(self.object.clone(), *block));
        }
    }
}

fn block_name(client: &dyn ObjectClient, object: &ObjectVersion, index: u64) -> BlockName {
    block_name_at(client, &object.key, &object.etag, index)
}

/// A block's name: the bucket, the key and the ETag (a version's blocks are never another's).
fn block_name_at(client: &dyn ObjectClient, key: &str, etag: &str, index: u64) -> BlockName {
    BlockName {
        namespace: client.bucket().to_owned(),
        key: key.to_owned(),
        etag: etag.to_owned(),
        index,
    }
}

/// Block (or slot) numbers, sorted, grouped into runs of consecutive ones.
fn contiguous_runs(mut blocks: Vec<u64>) -> Vec<Range<u64>> {
    blocks.sort_unstable();
    let mut runs: Vec<Range<u64>> = Vec::new();
    for block in blocks {
        match runs.last_mut() {
            Some(run) if run.end == block => run.end += 1,
            _ => runs.push(block..block + 1),
        }
    }
    runs
}

/// The value a watch channel's sender publishes, or `None` if it went away without one.
pub(crate) async fn published<T: Clone>(receiver: &mut watch::Receiver<Option<T>>) -> Option<T> {
    match receiver.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    }
}

/// One buffer from several; zero-copy when there is only one.
pub(crate) fn concat(parts: impl Iterator<Item = Bytes>) -> Bytes {
    let parts: Vec<Bytes> = parts.collect();
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        out.extend_from_slice(&part);
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
