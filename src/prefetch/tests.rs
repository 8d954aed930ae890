//! Tests of the read-ahead window and the memory budget against `MemoryClient` with request
//! counters (no disk cache, so every block read is a GET and the counters tell the whole story).

use std::sync::Arc;

use tokio::sync::Mutex;

use super::*;
use crate::object::fault::FaultClient;
use crate::object::memory::MemoryClient;

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;
use crate::test_support::pattern;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

struct Bed {
    client: Arc<Bucket>,
    reader: Arc<BlockReader>,
    budget: Arc<MemoryBudget>,
    body: Vec<u8>,
    object: ObjectVersion,
}

fn bed(size: u64, budget: u64) -> Bed {
    let client = Arc::new(Bucket::memory("bucket"));
    let body = pattern(size);
    let etag = client.put_object("obj", body.clone());
    let reader = Arc::new(BlockReader::new(client.clone(), None));
    let object = ObjectVersion {
        key: "obj".into(),
        etag,
        size,
        version_id: None,
    };
    Bed {
        client,
        reader,
        budget: Arc::new(MemoryBudget::new(budget)),
        body,
        object,
    }
}

impl Bed {
    fn prefetcher(&self) -> Mutex<Prefetcher> {
        let config = ReadAheadConfig { part_size: 8 * MIB };
        Mutex::new(Prefetcher::new(
            self.reader.clone(),
            self.budget.clone(),
            config,
            self.object.clone(),
        ))
    }

    async fn check(&self, prefetcher: &Mutex<Prefetcher>, offset: u64, len: u64) {
        let data = Prefetcher::read(prefetcher, offset, len).await.unwrap();
        let end = (offset + len).min(self.body.len() as u64) as usize;
        let start = (offset as usize).min(end);
        assert_eq!(&data[..], &self.body[start..end], "read of {len} at {offset}");
    }

    /// After a sequential read of 100 MiB: every byte fetched once, in parts that grew to their
    /// bound (1 + 1 + 2 + 4 + 8 MiB, then 8 MiB parts: far fewer GETs than the 100 blocks).
    async fn read_ahead_was_exact(&self, prefetcher: &Mutex<Prefetcher>) {
        let counts = self.client.counters();
        assert_eq!(counts.get_bytes, 100 * MIB, "every byte fetched exactly once");
        assert!(counts.get <= 20, "{} GETs", counts.get);
        assert_eq!(
            prefetcher.lock().await.window,
            8 * 8 * MIB,
            "the window grew to its bound"
        );
    }

    /// Waits until every GET started has finished (read-ahead runs in the background).
    async fn settled(&self, prefetcher: &Mutex<Prefetcher>) {
        let pending: Vec<_> = {
            let p = prefetcher.lock().await;
            p.parts.iter().map(|part| part.result.clone()).collect()
        };
        for mut receiver in pending {
            let _ = receiver.wait_for(Option::is_some).await;
        }
    }
}

#[tokio::test]
async fn a_sequential_reader_gets_growing_parts_and_nothing_twice() {
    let bed = bed(100 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    let mut offset = 0;
    while offset < 100 * MIB {
        bed.check(&prefetcher, offset, 128 * KIB).await;
        offset += 128 * KIB;
    }
    bed.read_ahead_was_exact(&prefetcher).await;
}

#[tokio::test]
async fn a_random_small_read_costs_one_block() {
    let bed = bed(64 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    bed.check(&prefetcher, 40 * MIB + 12_345, 4 * KIB).await;
    bed.settled(&prefetcher).await;
    assert_eq!(bed.client.counters().get_bytes, MIB);
    assert_eq!(bed.client.counters().get, 1);
}

#[tokio::test]
async fn random_reads_never_grow_the_window() {
    let bed = bed(256 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    for i in 0..20u64 {
        let offset = (i * 37 % 200) * MIB + 4096;
        bed.check(&prefetcher, offset, 4 * KIB).await;
    }
    bed.settled(&prefetcher).await;
    assert_eq!(bed.client.counters().get_bytes, 20 * MIB);
}

#[tokio::test]
async fn a_forward_seek_inside_the_window_reuses_what_is_in_flight() {
    let bed = bed(64 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    let mut offset = 0;
    for _ in 0..8 {
        bed.check(&prefetcher, offset, 128 * KIB).await;
        offset += 128 * KIB;
    }
    bed.settled(&prefetcher).await;
    let fetched_to = prefetcher.lock().await.fetched_to;
    let before = bed.client.counters().get_bytes;
    assert_eq!(before, fetched_to, "what was planned was fetched, once");
    // Skip ahead, but stay inside what is fetched: no new GET for it.
    let target = fetched_to - 64 * KIB;
    let data = Prefetcher::read(&prefetcher, target, 32 * KIB).await.unwrap();
    assert_eq!(
        &data[..],
        &bed.body[target as usize..(target + 32 * KIB) as usize]
    );
    let parts_before_target = bed.client.counters().get_bytes;
    assert!(parts_before_target >= before, "only the window ahead is new");
    let first_restart_free = prefetcher.lock().await.parts.front().map(|p| p.range.start);
    assert!(first_restart_free.is_some_and(|s| s <= target));
}

#[tokio::test]
async fn a_short_backward_seek_is_served_from_the_kept_part() {
    let bed = bed(64 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    let mut offset = 0;
    while offset < 20 * MIB {
        bed.check(&prefetcher, offset, 128 * KIB).await;
        offset += 128 * KIB;
    }
    bed.settled(&prefetcher).await;
    let before = bed.client.counters().get_bytes;
    bed.check(&prefetcher, offset - 512 * KIB, 128 * KIB).await;
    assert_eq!(bed.client.counters().get_bytes, before, "served from memory");
}

#[tokio::test]
async fn a_far_seek_restarts_and_releases_everything() {
    let bed = bed(128 * MIB, 64 * MIB);
    let prefetcher = bed.prefetcher();
    let mut offset = 0;
    for _ in 0..30 {
        bed.check(&prefetcher, offset, MIB).await;
        offset += MIB;
    }
    assert!(
        bed.budget.available_bytes() < bed.budget.total_bytes(),
        "read-ahead holds budget"
    );
    bed.check(&prefetcher, 120 * MIB, 4 * KIB).await;
    {
        let p = prefetcher.lock().await;
        assert_eq!(p.window, 0);
        assert_eq!(p.parts.len(), 1, "only the demanded block");
    }
    assert_eq!(
        bed.budget.available_bytes(),
        bed.budget.total_bytes(),
        "nothing leaked"
    );
    drop(prefetcher);
    assert_eq!(bed.budget.available_bytes(), bed.budget.total_bytes());
}

#[tokio::test]
async fn many_readers_share_a_small_budget_and_all_reads_succeed() {
    let bed = Arc::new(bed(40 * MIB, 4 * MIB));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let bed = bed.clone();
            tokio::spawn(async move {
                let prefetcher = bed.prefetcher();
                let mut offset = 0;
                while offset < 40 * MIB {
                    bed.check(&prefetcher, offset, 256 * KIB).await;
                    offset += 256 * KIB;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(bed.budget.available_bytes(), bed.budget.total_bytes());
}

#[tokio::test]
async fn reads_at_and_past_the_end() {
    let bed = bed(3 * MIB + 100, 64 * MIB);
    let prefetcher = bed.prefetcher();
    bed.check(&prefetcher, 3 * MIB, 4096).await;
    assert!(
        Prefetcher::read(&prefetcher, 3 * MIB + 100, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        Prefetcher::read(&prefetcher, 10 * MIB, 10)
            .await
            .unwrap()
            .is_empty()
    );
    bed.check(&prefetcher, 0, 10 * MIB).await;
}

#[tokio::test]
async fn out_of_order_reads_like_the_kernels_async_read_ahead_do_not_thrash() {
    let bed = bed(32 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    // Pairs arrive swapped, as concurrent kernel read-ahead requests can.
    let mut offset = 0;
    while offset < 32 * MIB {
        bed.check(&prefetcher, offset + 128 * KIB, 128 * KIB).await;
        bed.check(&prefetcher, offset, 128 * KIB).await;
        offset += 256 * KIB;
    }
    assert_eq!(bed.client.counters().get_bytes, 32 * MIB);
}

#[tokio::test]
async fn a_first_request_overtaken_by_the_next_block_costs_nothing_extra() {
    let bed = bed(16 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    // The kernel's second read-ahead request (block 1) arrives before its first (block 0).
    bed.check(&prefetcher, MIB, MIB).await;
    bed.check(&prefetcher, 0, MIB).await;
    let mut offset = 2 * MIB;
    while offset < 16 * MIB {
        bed.check(&prefetcher, offset, MIB).await;
        offset += MIB;
    }
    bed.settled(&prefetcher).await;
    assert_eq!(bed.client.counters().get_bytes, 16 * MIB);
}

#[tokio::test]
async fn a_failed_part_is_fetched_again_on_the_next_read() {
    let bed = bed(4 * MIB, 64 * MIB);
    let prefetcher = bed.prefetcher();
    bed.client.fail_next(
        crate::object::Op::Get,
        1,
        ObjectError::Unreachable("reset".into()),
    );
    assert!(Prefetcher::read(&prefetcher, 0, 4096).await.is_err());
    bed.check(&prefetcher, 0, 4096).await;
}

#[tokio::test]
async fn a_read_of_bytes_already_arrived_is_answered_without_waiting_and_keeps_reading_ahead() {
    let bed = bed(100 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    assert!(
        Prefetcher::try_read_ready(&prefetcher, 0, MIB).is_none(),
        "nothing fetched yet: the read must wait"
    );
    assert!(
        prefetcher.lock().await.parts.is_empty(),
        "a read that would wait changes nothing"
    );
    // Two reads the usual way: the second, sequential, starts the read-ahead.
    bed.check(&prefetcher, 0, MIB).await;
    bed.check(&prefetcher, MIB, MIB).await;
    bed.settled(&prefetcher).await;
    let gets = bed.client.counters().get;
    let fetched_to = prefetcher.lock().await.fetched_to;
    assert!(fetched_to > 2 * MIB, "{fetched_to}");
    // Every block up to what is fetched reads without waiting, and the read-ahead moves on.
    let mut offset = 2 * MIB;
    while offset + MIB <= fetched_to {
        let data = Prefetcher::try_read_ready(&prefetcher, offset, MIB).expect("arrived");
        assert_eq!(&data[..], &bed.body[offset as usize..(offset + MIB) as usize]);
        offset += MIB;
    }
    assert!(
        prefetcher.lock().await.fetched_to > fetched_to,
        "the read-ahead went on past {fetched_to}"
    );
    bed.settled(&prefetcher).await;
    assert!(bed.client.counters().get > gets);
    // A read across two parts, and one past the end.
    let data = Prefetcher::try_read_ready(&prefetcher, offset - 4 * KIB, 8 * KIB).expect("arrived");
    assert_eq!(
        &data[..],
        &bed.body[(offset - 4 * KIB) as usize..(offset + 4 * KIB) as usize]
    );
    assert_eq!(
        Prefetcher::try_read_ready(&prefetcher, 200 * MIB, MIB).as_deref(),
        Some(&[][..])
    );
}

#[tokio::test]
async fn a_read_that_finds_the_prefetcher_busy_or_a_part_failed_goes_the_usual_way() {
    let bed = bed(64 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    bed.check(&prefetcher, 0, MIB).await;
    bed.check(&prefetcher, MIB, MIB).await;
    bed.settled(&prefetcher).await;
    {
        let _busy = prefetcher.lock().await;
        assert!(Prefetcher::try_read_ready(&prefetcher, 2 * MIB, MIB).is_none());
    }
    // The read-ahead this read starts fails.
    bed.client
        .fail_next(crate::object::Op::Get, 1, ObjectError::AccessDenied("no".into()));
    assert!(Prefetcher::try_read_ready(&prefetcher, 2 * MIB, MIB).is_some());
    bed.settled(&prefetcher).await;
    let (failed, parts, window) = {
        let p = prefetcher.lock().await;
        let failed = p
            .parts
            .iter()
            .find(|part| matches!(&*part.result.borrow(), Some(Err(_))));
        let failed = failed.expect("a failed part").range.clone();
        (failed, p.parts.len(), p.window)
    };
    assert!(Prefetcher::try_read_ready(&prefetcher, failed.start, MIB).is_none());
    {
        let p = prefetcher.lock().await;
        assert_eq!(
            (p.parts.len(), p.window),
            (parts, window),
            "a read that went nowhere changed nothing"
        );
    }
    assert!(Prefetcher::read(&prefetcher, failed.start, MIB).await.is_err());
    bed.check(&prefetcher, failed.start, MIB).await;
}

/// A sequential reader whose reads are answered without waiting wherever they can be reads
/// ahead exactly as one whose reads all wait: the same GETs, every byte once.
#[tokio::test]
async fn reads_answered_without_waiting_read_ahead_as_the_usual_ones_do() {
    let bed = bed(100 * MIB, 256 * MIB);
    let prefetcher = bed.prefetcher();
    let mut offset = 0;
    let mut answered_at_once = 0;
    while offset < 100 * MIB {
        let data = match Prefetcher::try_read_ready(&prefetcher, offset, 128 * KIB) {
            Some(data) => {
                answered_at_once += 1;
                data
            }
            None => Prefetcher::read(&prefetcher, offset, 128 * KIB).await.unwrap(),
        };
        let at = offset as usize;
        assert_eq!(&data[..], &bed.body[at..at + 128 * KIB as usize], "at {offset}");
        offset += 128 * KIB;
        if offset % (4 * MIB) == 0 {
            // Let the read-ahead land now and then, as a reader slower than the network does.
            bed.settled(&prefetcher).await;
        }
    }
    assert!(
        answered_at_once > 400,
        "{answered_at_once} of 800 reads answered at once"
    );
    bed.read_ahead_was_exact(&prefetcher).await;
}
