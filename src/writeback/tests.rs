//! Staged files against the in-memory client: sparse bases, server-side copies of untouched
//! parts, parts sent early, and recovery after a crash.

use std::sync::Arc;

use super::*;
use crate::cache::BlockReader;
use crate::object::Op;
use crate::object::fault::FaultClient;
use crate::object::memory::MemoryClient;

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;
use crate::test_support::pattern;

const MIB: u64 = 1 << 20;

struct Setup {
    client: Arc<Bucket>,
    ctx: WriteContext,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    setup_in(dir)
}

fn setup_in(dir: tempfile::TempDir) -> Setup {
    let client = Arc::new(Bucket::memory("b"));
    Setup {
        ctx: context(&client, &dir),
        client,
        _dir: dir,
    }
}

fn context(client: &Arc<Bucket>, dir: &tempfile::TempDir) -> WriteContext {
    WriteContext {
        client: client.clone(),
        reader: Arc::new(BlockReader::new(client.clone(), None)),
        staging: Staging::open(dir.path()).unwrap(),
        upload: UploadConfig {
            part_size: 5 * MIB,
            concurrency: 2,
        },
        budget: Arc::new(UploadBudget::new(32 * MIB)),
    }
}

/// The object at `key` as it is now.
async fn version(client: &MemoryClient, key: &str) -> ObjectVersion {
    let head = client.head(key).await.unwrap();
    ObjectVersion {
        key: key.into(),
        etag: head.etag,
        size: head.size,
    }
}

/// Stages the object at `key` as it is now.
async fn stage(s: &Setup, key: &str) -> StagedFile {
    let object = version(&s.client, key).await;
    StagedFile::from_object(&s.ctx, object, SystemTime::now(), false, None).unwrap()
}

#[tokio::test]
async fn a_new_file_is_one_put_with_its_content_type() {
    let s = setup();
    let mut file = StagedFile::new_empty(&s.ctx, "a.css".into(), Some("text/css".into())).unwrap();
    file.write(&s.ctx, 0, b"body {}".to_vec()).await.unwrap();
    assert_eq!(&file.read(&s.ctx, 0, 100).await.unwrap()[..], b"body {}");
    file.upload(&s.ctx).await.unwrap();
    assert_eq!(s.client.body("a.css").as_deref(), Some(&b"body {}"[..]));
    assert_eq!(
        s.client.head("a.css").await.unwrap().content_type.as_deref(),
        Some("text/css")
    );
    assert!(!file.is_dirty());
    file.upload(&s.ctx).await.unwrap();
    assert_eq!(s.client.counters().put, 1, "a clean file is not uploaded again");
}

#[tokio::test]
async fn an_append_to_a_large_object_copies_the_untouched_parts() {
    let s = setup();
    let old = pattern(23 * MIB);
    s.client.put_object("big", old.clone());
    let mut file = stage(&s, "big").await;
    s.client.reset_counters();
    file.write(&s.ctx, 23 * MIB, b"tail".to_vec()).await.unwrap();
    file.upload(&s.ctx).await.unwrap();
    let mut expected = old;
    expected.extend_from_slice(b"tail");
    assert!(s.client.body("big").as_deref() == Some(&expected[..]));
    let counts = s.client.counters();
    // Parts of 5 MiB: four untouched ones copied, the last (3 MiB + 4 bytes) fetched and sent.
    assert_eq!((counts.upload_part_copy, counts.upload_part), (4, 1));
    assert!(counts.get_bytes <= 3 * MIB, "fetched {} bytes", counts.get_bytes);
}

#[tokio::test]
async fn a_partial_write_fetches_only_the_blocks_it_touches() {
    let s = setup();
    let old = pattern(4 * MIB);
    s.client.put_object("k", old.clone());
    let mut file = stage(&s, "k").await;
    s.client.reset_counters();
    file.write(&s.ctx, MIB + 10, b"XY".to_vec()).await.unwrap();
    assert_eq!(
        s.client.counters().get_bytes,
        MIB,
        "one block fetched to merge the write"
    );
    let read = file.read(&s.ctx, MIB, 20).await.unwrap();
    let mut expected = old[MIB as usize..MIB as usize + 20].to_vec();
    expected[10..12].copy_from_slice(b"XY");
    assert_eq!(&read[..], &expected[..]);
    file.upload(&s.ctx).await.unwrap();
    let mut whole = old;
    whole[MIB as usize + 10..MIB as usize + 12].copy_from_slice(b"XY");
    assert!(s.client.body("k").as_deref() == Some(&whole[..]));
}

#[tokio::test]
async fn truncating_a_base_and_growing_again_reads_zeros() {
    let s = setup();
    s.client.put_object("k", pattern(3 * MIB));
    let mut file = stage(&s, "k").await;
    file.truncate(MIB + 5).unwrap();
    file.truncate(2 * MIB).unwrap();
    let read = file.read(&s.ctx, MIB, MIB).await.unwrap();
    assert_eq!(&read[..5], &pattern(MIB + 5)[MIB as usize..]);
    assert!(
        read[5..].iter().all(|&b| b == 0),
        "bytes cut by the truncate come back as zeros"
    );
    file.upload(&s.ctx).await.unwrap();
    assert_eq!(s.client.body("k").map(|b| b.len() as u64), Some(2 * MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_writer_sends_parts_before_close_and_a_rewrite_resends_one() {
    let s = setup();
    let body = pattern(30 * MIB);
    let mut file = StagedFile::new_empty(&s.ctx, "seq".into(), None).unwrap();
    for offset in (0..30 * MIB).step_by(MIB as usize) {
        let chunk = body[offset as usize..(offset + MIB) as usize].to_vec();
        file.write(&s.ctx, offset, chunk).await.unwrap();
    }
    // The parts run as background tasks, `concurrency` (2) at a time: wait (bounded) for at
    // least two to reach the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.client.counters().upload_part < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let sent_before_close = s.client.counters().upload_part;
    assert!(
        sent_before_close >= 2,
        "only {sent_before_close} parts went early"
    );
    // Rewriting bytes of the first part, already sent, makes it go again at close.
    file.write(&s.ctx, 7, body[7..9].to_vec()).await.unwrap();
    file.upload(&s.ctx).await.unwrap();
    assert!(s.client.body("seq").as_deref() == Some(&body[..]));
    assert_eq!(s.client.open_multipart_uploads(), 0);
    assert_eq!(
        s.client.counters().upload_part,
        6 + 1,
        "six parts, the first twice"
    );
}

#[tokio::test]
async fn a_failed_close_keeps_the_data_and_the_next_close_sends_it() {
    let s = setup();
    let body = pattern(12 * MIB);
    let mut file = StagedFile::new_empty(&s.ctx, "k".into(), None).unwrap();
    file.write(&s.ctx, 0, body.clone()).await.unwrap();
    s.client
        .fail_next(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
    assert!(file.upload(&s.ctx).await.is_err());
    assert!(file.is_dirty());
    assert!(!s.client.contains("k"), "never a partial object");
    assert_eq!(s.client.open_multipart_uploads(), 0, "aborted");
    file.upload(&s.ctx).await.unwrap();
    assert!(s.client.body("k").as_deref() == Some(&body[..]));
}

#[tokio::test]
async fn recovery_uploads_an_interrupted_close_and_sets_aside_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("base", pattern(3 * MIB));
    client.put_object("changed", "old");
    {
        let ctx = context(&client, &dir);
        let (changed, base) = (version(&client, "changed").await, version(&client, "base").await);
        // A close that began (journal "closing") but never finished: the server was down.
        let mut closing = StagedFile::new_empty(&ctx, "closing".into(), None).unwrap();
        closing.write(&ctx, 0, b"finish me".to_vec()).await.unwrap();
        client.set_unreachable(true);
        assert!(closing.upload(&ctx).await.is_err());
        // A close that began, of an object someone else replaced meanwhile.
        let mut stale = StagedFile::from_object(&ctx, changed, SystemTime::now(), false, None).unwrap();
        stale.truncate(0).unwrap();
        stale.write(&ctx, 0, b"mine".to_vec()).await.unwrap();
        assert!(stale.upload(&ctx).await.is_err());
        client.set_unreachable(false);
        // Written, never closed, over a base it fetched only in part.
        let mut open = StagedFile::from_object(&ctx, base, SystemTime::now(), false, None).unwrap();
        open.write(&ctx, 5, b"edit".to_vec()).await.unwrap();
        // Written in order, never closed: parts went early in a multipart upload.
        let mut growing = StagedFile::new_empty(&ctx, "growing".into(), None).unwrap();
        for offset in (0..12 * MIB).step_by(MIB as usize) {
            growing.write(&ctx, offset, vec![1; MIB as usize]).await.unwrap();
        }
        assert_eq!(client.open_multipart_uploads(), 1);
        // The daemon dies here: nothing is dropped or discarded.
        std::mem::forget((closing, stale, open, growing));
    }
    client.put_object("changed", "theirs");
    let ctx = context(&client, &dir);
    let report = recover(&ctx).await.unwrap();
    assert_eq!(report.uploaded, vec!["closing".to_owned()]);
    assert_eq!(client.body("closing").as_deref(), Some(&b"finish me"[..]));
    assert_eq!(
        client.body("changed").as_deref(),
        Some(&b"theirs"[..]),
        "theirs is not overwritten"
    );
    assert_eq!(report.moved.len(), 3);
    assert_eq!(
        client.open_multipart_uploads(),
        0,
        "the upload cut by the crash is aborted"
    );
    let moved_base = report
        .moved
        .iter()
        .find(|(key, _)| key.as_deref() == Some("base"))
        .unwrap();
    let mut expected = pattern(3 * MIB);
    expected[5..9].copy_from_slice(b"edit");
    assert!(
        std::fs::read(&moved_base.1).unwrap() == expected,
        "the recovery copy is whole"
    );
    assert!(ctx.staging.leftovers().unwrap().is_empty());
}

/// dd opens, dups the descriptor and closes the original (a flush of the empty file) before it
/// writes: parts must still go early, and each only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_flushed_empty_then_written_in_order_still_sends_parts_early() {
    let s = setup();
    let body = pattern(30 * MIB);
    let mut file = StagedFile::new_empty(&s.ctx, "dd".into(), None).unwrap();
    file.upload(&s.ctx).await.unwrap();
    for offset in (0..30 * MIB).step_by(MIB as usize) {
        let chunk = body[offset as usize..(offset + MIB) as usize].to_vec();
        file.write(&s.ctx, offset, chunk).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.client.counters().upload_part < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(s.client.counters().upload_part >= 4, "parts went before close");
    file.upload(&s.ctx).await.unwrap();
    assert!(s.client.body("dd").as_deref() == Some(&body[..]));
    assert_eq!(s.client.counters().upload_part, 6, "each part once");
}

/// The journals in the staging area of `dir`, by path.
fn journals(dir: &tempfile::TempDir) -> Vec<(std::path::PathBuf, String)> {
    let mut journals: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "journal"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            (path, text)
        })
        .collect();
    journals.sort();
    journals
}

/// Closes a small file ("small", one PutObject) and a large one ("large", multipart, written in
/// order so a part went early) against a server that never answers, and kills the daemon (the
/// upload tasks are dropped) once both journals say their close began.
async fn close_then_kill(client: &Arc<Bucket>, dir: &tempfile::TempDir) {
    let ctx = Arc::new(context(client, dir));
    let mut small = StagedFile::new_empty(&ctx, "small".into(), None).unwrap();
    small.write(&ctx, 0, b"small body".to_vec()).await.unwrap();
    let mut large = StagedFile::new_empty(&ctx, "large".into(), None).unwrap();
    for offset in (0..12 * MIB).step_by(MIB as usize) {
        large.write(&ctx, offset, pattern(MIB)).await.unwrap();
    }
    client.set_all_stalled(true);
    let uploads: Vec<_> = [small, large]
        .into_iter()
        .map(|mut file| {
            let ctx = ctx.clone();
            tokio::spawn(async move { file.upload(&ctx).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let journals = journals(dir);
        let closing = journals
            .iter()
            .filter(|(_, t)| t.contains("state closing"))
            .count();
        let synced = journals.iter().filter(|(_, t)| t.contains("synced yes")).count();
        if closing == 2 && synced == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "journals never said closing: {journals:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for upload in uploads {
        upload.abort();
        assert!(upload.await.unwrap_err().is_cancelled());
    }
    client.set_all_stalled(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_cut_by_a_kill_is_uploaded_by_the_next_mount_of_this_boot() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    close_then_kill(&client, &dir).await;
    let ctx = context(&client, &dir);
    let mut report = recover(&ctx).await.unwrap();
    report.uploaded.sort();
    assert_eq!(report.uploaded, vec!["large".to_owned(), "small".to_owned()]);
    assert_eq!(client.body("small").as_deref(), Some(&b"small body"[..]));
    let expected: Vec<u8> = (0..12).flat_map(|_| pattern(MIB)).collect();
    assert!(
        client.body("large").as_deref() == Some(&expected[..]),
        "the large file is whole"
    );
    assert_eq!(
        client.open_multipart_uploads(),
        0,
        "the early upload cut by the kill is aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_only_a_close_whose_data_reached_the_disk_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    close_then_kill(&client, &dir).await;
    // The machine restarted: the journals were written in another boot.
    for (path, text) in journals(&dir) {
        let boot = crate::staging::current_boot_id().unwrap();
        std::fs::write(&path, text.replace(boot, "an-earlier-boot")).unwrap();
    }
    let ctx = context(&client, &dir);
    let report = recover(&ctx).await.unwrap();
    assert_eq!(
        report.uploaded,
        vec!["large".to_owned()],
        "its data was fsynced before its upload"
    );
    assert!(
        !client.contains("small"),
        "page-cache-only data may be torn after a power loss"
    );
    assert_eq!(report.moved.len(), 1);
    let (key, path) = &report.moved[0];
    assert_eq!(key.as_deref(), Some("small"));
    assert_eq!(
        std::fs::read(path).unwrap(),
        b"small body",
        "kept in the recovery folder"
    );
}

#[tokio::test]
async fn a_close_killed_after_its_upload_landed_is_recognised_not_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    let large_body: Vec<u8> = (0..12).flat_map(|_| pattern(MIB)).collect();
    {
        let ctx = context(&client, &dir);
        // The server stores each upload, and the answer is lost: the daemon dies before it
        // hears back, its journals still saying the closes began.
        let mut small = StagedFile::new_empty(&ctx, "small".into(), None).unwrap();
        small.write(&ctx, 0, b"landed".to_vec()).await.unwrap();
        client.fail_next_after_server(Op::Put, 1, ObjectError::Unreachable("reset".into()));
        assert!(small.upload(&ctx).await.is_err());
        let mut large = StagedFile::new_empty(&ctx, "large".into(), None).unwrap();
        large.write(&ctx, 0, large_body.clone()).await.unwrap();
        client.fail_next_after_server(Op::CompleteMultipart, 1, ObjectError::Unreachable("reset".into()));
        assert!(large.upload(&ctx).await.is_err());
        assert!(
            client.contains("small") && client.contains("large"),
            "both landed"
        );
        std::mem::forget((small, large));
    }
    // Another writer's object of the same size: not this content, so it is set aside.
    {
        let ctx = context(&client, &dir);
        let mut other = StagedFile::new_empty(&ctx, "other".into(), None).unwrap();
        other.write(&ctx, 0, b"mine!".to_vec()).await.unwrap();
        client.set_unreachable(true);
        assert!(other.upload(&ctx).await.is_err());
        client.set_unreachable(false);
        std::mem::forget(other);
    }
    client.put_object("other", "their");
    let puts_before = client.counters().put;
    let ctx = context(&client, &dir);
    let mut report = recover(&ctx).await.unwrap();
    report.uploaded.sort();
    assert_eq!(report.uploaded, vec!["large".to_owned(), "small".to_owned()]);
    assert_eq!(client.counters().put, puts_before, "nothing sent twice");
    assert_eq!(client.body("small").as_deref(), Some(&b"landed"[..]));
    assert!(client.body("large").as_deref() == Some(&large_body[..]));
    assert_eq!(report.moved.len(), 1, "the other writer's object is a conflict");
    assert_eq!(report.moved[0].0.as_deref(), Some("other"));
    assert_eq!(client.body("other").as_deref(), Some(&b"their"[..]));
}

#[tokio::test]
async fn a_write_after_a_failed_close_is_no_longer_trusted_after_a_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    let ctx = context(&client, &dir);
    let mut file = StagedFile::new_empty(&ctx, "k".into(), None).unwrap();
    file.write(&ctx, 0, pattern(12 * MIB)).await.unwrap();
    client.set_unreachable(true);
    assert!(file.upload(&ctx).await.is_err());
    let (_, text) = journals(&dir).pop().unwrap();
    assert!(
        text.contains("state closing") && text.contains("synced yes"),
        "{text}"
    );
    // Written again: still promised to S3 (the next close would send it all), but what is on
    // disk is not this content any more.
    file.write(&ctx, 0, b"changed".to_vec()).await.unwrap();
    let (path, text) = journals(&dir).pop().unwrap();
    assert!(
        text.contains("state closing") && text.contains("synced no"),
        "{text}"
    );
    client.set_unreachable(false);
    // The machine loses power here.
    std::mem::forget(file);
    drop(ctx);
    let boot = crate::staging::current_boot_id().unwrap();
    std::fs::write(&path, text.replace(boot, "an-earlier-boot")).unwrap();
    let ctx = context(&client, &dir);
    let report = recover(&ctx).await.unwrap();
    assert!(
        report.uploaded.is_empty(),
        "unsynced data after a power loss: not uploaded"
    );
    assert_eq!(report.moved.len(), 1, "kept in the recovery folder");
    assert!(!client.contains("k"));
}
