//! Tests of block reads through the disk cache against `MemoryClient` with request counters:
//! hits, misses, single flight, damaged blocks, a cache that cannot write, failures.

use std::sync::Arc;
use std::time::Duration;

use super::disk::{DiskCache, DiskCacheLimits};
use super::*;
use crate::object::Op;
use crate::object::fault::FaultClient;
use crate::object::memory::MemoryClient;

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;
use crate::test_support::pattern;

const MIB: u64 = 1 << 20;

struct Bed {
    client: Arc<Bucket>,
    reader: Arc<BlockReader>,
    object: ObjectVersion,
    body: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn bed_with_limits(size: u64, limits: DiskCacheLimits) -> Bed {
    let client = Arc::new(Bucket::memory("bucket"));
    let body = pattern(size);
    let etag = client.put_object("obj", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(DiskCache::open(dir.path(), limits).unwrap());
    let reader = Arc::new(BlockReader::new(client.clone(), Some(disk)));
    let object = ObjectVersion {
        key: "obj".into(),
        etag,
        size,
        version_id: None,
    };
    Bed {
        client,
        reader,
        object,
        body,
        _dir: dir,
    }
}

fn bed(size: u64) -> Bed {
    bed_with_limits(
        size,
        DiskCacheLimits {
            max_bytes: 1 << 30,
            min_free_bytes: 0,
        },
    )
}

impl Bed {
    fn disk(&self) -> &DiskCache {
        self.reader.disk().unwrap()
    }

    fn expected(&self, blocks: std::ops::Range<u64>) -> &[u8] {
        let start = (blocks.start * BLOCK_SIZE) as usize;
        let end = ((blocks.end * BLOCK_SIZE) as usize).min(self.body.len());
        &self.body[start..end]
    }

    /// Waits until the background writes have put `bytes_at_least` into the cache.
    async fn settled(&self, blocks: u64) {
        for _ in 0..500 {
            if self.disk().size() >= blocks * BLOCK_SIZE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the cache never reached {blocks} blocks (size {})",
            self.disk().size()
        );
    }
}

#[tokio::test]
async fn blocks_come_back_whole_and_the_last_one_short() {
    let bed = bed(3 * MIB + 123);
    let data = bed.reader.read_blocks(&bed.object, 1..4).await.unwrap();
    assert_eq!(&data[..], bed.expected(1..4));
    assert_eq!(data.len() as u64, 2 * MIB + 123);
    // Past the end: nothing, and no request.
    let before = bed.client.counters().get;
    assert!(
        bed.reader
            .read_blocks(&bed.object, 4..6)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(bed.client.counters().get, before);
}

/// A GET's blocks reach the disk with the CRC32Cs the client took as they arrived, each with
/// its own block's (a run not starting at block 0, its last block short), and read back intact.
#[tokio::test]
async fn fetched_blocks_are_stored_with_the_sums_taken_on_arrival() {
    let bed = bed(6 * MIB + 123);
    bed.reader.read_blocks(&bed.object, 3..7).await.unwrap();
    let summed = || bed.disk().counters.summed_on_arrival.load(Ordering::Relaxed);
    for _ in 0..500 {
        if summed() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(summed(), 4, "every block of the GET stored with its sum");
    bed.client.reset_counters();
    let data = bed.reader.read_blocks(&bed.object, 3..7).await.unwrap();
    assert_eq!(&data[..], bed.expected(3..7));
    assert_eq!(bed.client.counters().get, 0, "all four read back from disk");
    assert_eq!(bed.disk().counters.corrupt_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_second_read_is_served_from_disk() {
    let bed = bed(4 * MIB);
    bed.reader.read_blocks(&bed.object, 0..4).await.unwrap();
    assert_eq!(
        bed.client.counters().get,
        1,
        "one GET for a run of missing blocks"
    );
    bed.settled(4).await;
    let data = bed.reader.read_blocks(&bed.object, 0..4).await.unwrap();
    assert_eq!(&data[..], bed.expected(0..4));
    assert_eq!(bed.client.counters().get, 1);
    assert_eq!(bed.reader.counters.cache_hit_blocks.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn partial_hits_fetch_only_the_missing_runs() {
    let bed = bed(6 * MIB);
    bed.reader.read_blocks(&bed.object, 2..3).await.unwrap();
    bed.settled(1).await;
    bed.client.reset_counters();
    let data = bed.reader.read_blocks(&bed.object, 0..6).await.unwrap();
    assert_eq!(&data[..], bed.expected(0..6));
    let counts = bed.client.counters();
    assert_eq!(counts.get, 2, "blocks 0-1 and 3-5: two runs");
    assert_eq!(counts.get_bytes, 5 * MIB);
}

#[tokio::test]
async fn concurrent_readers_of_a_missing_block_cause_one_get() {
    let bed = bed(2 * MIB);
    bed.client.set_latency(Op::Get, Duration::from_millis(200));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let reader = bed.reader.clone();
            let object = bed.object.clone();
            tokio::spawn(async move { reader.read_blocks(&object, 0..2).await })
        })
        .collect();
    for reader in readers {
        assert_eq!(&reader.await.unwrap().unwrap()[..], bed.expected(0..2));
    }
    assert_eq!(bed.client.counters().get, 1);
    assert_eq!(bed.client.counters().get_bytes, 2 * MIB);
}

#[tokio::test]
async fn a_waiter_takes_over_when_the_fetching_reader_goes_away() {
    let bed = bed(MIB);
    bed.client.set_latency(Op::Get, Duration::from_millis(300));
    let owner = {
        let (reader, object) = (bed.reader.clone(), bed.object.clone());
        tokio::spawn(async move { reader.read_blocks(&object, 0..1).await })
    };
    // Let the owner register its fetch before the waiter arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let (reader, object) = (bed.reader.clone(), bed.object.clone());
        tokio::spawn(async move { reader.read_blocks(&object, 0..1).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    owner.abort();
    let data = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&data[..], bed.expected(0..1));
}

#[tokio::test]
async fn errors_reach_every_waiter_and_the_next_read_retries() {
    let bed = bed(MIB);
    bed.client.set_latency(Op::Get, Duration::from_millis(200));
    bed.client
        .fail_next(Op::Get, 1, ObjectError::Unreachable("reset".into()));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (reader, object) = (bed.reader.clone(), bed.object.clone());
            tokio::spawn(async move { reader.read_blocks(&object, 0..1).await })
        })
        .collect();
    for reader in readers {
        assert!(matches!(reader.await.unwrap(), Err(ObjectError::Unreachable(_))));
    }
    bed.client.set_latency(Op::Get, Duration::ZERO);
    assert_eq!(
        &bed.reader.read_blocks(&bed.object, 0..1).await.unwrap()[..],
        bed.expected(0..1)
    );
}

#[tokio::test]
async fn a_damaged_block_on_disk_is_fetched_again_never_returned() {
    let bed = bed(2 * MIB);
    bed.reader.read_blocks(&bed.object, 0..2).await.unwrap();
    bed.settled(2).await;
    // Flip one byte in the middle of every stored block's data.
    let slots = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(super::disk::slots_file(bed.disk().dir()))
        .unwrap();
    let mut damaged = 0;
    for block in super::disk::stored_blocks(bed.disk().dir()).unwrap() {
        use std::os::unix::fs::FileExt;
        let middle = block.data_offset + block.data_len / 2;
        let mut byte = [0u8];
        slots.read_exact_at(&mut byte, middle).unwrap();
        slots.write_all_at(&[byte[0] ^ 0xff], middle).unwrap();
        damaged += 1;
    }
    assert_eq!(damaged, 2);
    bed.client.reset_counters();
    let data = bed.reader.read_blocks(&bed.object, 0..2).await.unwrap();
    assert_eq!(&data[..], bed.expected(0..2));
    assert_eq!(bed.client.counters().get_bytes, 2 * MIB);
    assert_eq!(bed.disk().counters.corrupt_dropped.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_cache_that_cannot_store_still_serves_reads() {
    let bed = bed_with_limits(
        3 * MIB,
        DiskCacheLimits {
            max_bytes: 1000,
            min_free_bytes: 0,
        },
    );
    for _ in 0..2 {
        let data = bed.reader.read_blocks(&bed.object, 0..3).await.unwrap();
        assert_eq!(&data[..], bed.expected(0..3));
    }
    // Nothing could be stored, so nothing is ever served from disk. (The GET count is not
    // checked: a second read may share blocks still waiting for their refused disk write.)
    assert_eq!(bed.disk().size(), 0, "nothing could be cached");
    assert_eq!(bed.reader.counters.cache_hit_blocks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn filling_a_cache_that_cannot_store_says_why() {
    let bed = bed_with_limits(
        3 * MIB,
        DiskCacheLimits {
            max_bytes: 1 << 30,
            min_free_bytes: u64::MAX / 2,
        },
    );
    let error = bed.reader.fill(&bed.object, &|_| {}).await.unwrap_err();
    assert!(error.to_string().contains("--cache-min-free"), "{error}");
    assert_eq!(bed.disk().size(), 0);
}

#[tokio::test]
async fn a_changed_object_never_hits_the_old_blocks() {
    let bed = bed(MIB);
    bed.reader.read_blocks(&bed.object, 0..1).await.unwrap();
    bed.settled(1).await;
    let new_etag = bed.client.put_object("obj", vec![9u8; MIB as usize]);
    let new_version = ObjectVersion {
        etag: new_etag,
        ..bed.object.clone()
    };
    let data = bed.reader.read_blocks(&new_version, 0..1).await.unwrap();
    assert_eq!(&data[..], &vec![9u8; MIB as usize][..]);
    // And the old version's handle, served from cache, stays consistent with itself.
    let old = bed.reader.read_blocks(&bed.object, 0..1).await.unwrap();
    assert_eq!(&old[..], bed.expected(0..1));
}

#[tokio::test]
async fn without_a_disk_every_read_is_a_get() {
    let client = Arc::new(Bucket::memory("bucket"));
    let etag = client.put_object("obj", pattern(MIB));
    let reader = BlockReader::new(client.clone(), None);
    let object = ObjectVersion {
        key: "obj".into(),
        etag,
        size: MIB,
        version_id: None,
    };
    reader.read_blocks(&object, 0..1).await.unwrap();
    reader.read_blocks(&object, 0..1).await.unwrap();
    assert_eq!(client.counters().get, 2);
    assert!(
        reader
            .counters
            .summary()
            .contains("get_requests=2 get_bytes=2097152")
    );
}
