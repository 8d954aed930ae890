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
        version_id: None,
    }
}

/// Stages the object at `key` as it is now.
async fn stage(s: &Setup, key: &str) -> StagedFile {
    let object = version(&s.client, key).await;
    StagedFile::from_object(
        &s.ctx,
        object,
        SystemTime::now(),
        false,
        ObjectMetadata::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_new_file_is_one_put_with_its_content_type() {
    let s = setup();
    let mut file = StagedFile::new_empty(
        &s.ctx,
        "a.css".into(),
        ObjectMetadata::with_content_type(Some("text/css".into())),
    )
    .unwrap();
    file.write(&s.ctx, 0, b"body {}".to_vec()).await.unwrap();
    assert_eq!(&file.read(&s.ctx, 0, 100).await.unwrap()[..], b"body {}");
    file.upload(&s.ctx).await.unwrap();
    assert_eq!(s.client.body("a.css").as_deref(), Some(&b"body {}"[..]));
    assert_eq!(
        s.client
            .head("a.css")
            .await
            .unwrap()
            .metadata
            .content_type
            .as_deref(),
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
    let mut file = StagedFile::new_empty(&s.ctx, "seq".into(), ObjectMetadata::default()).unwrap();
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
    let mut file = StagedFile::new_empty(&s.ctx, "k".into(), ObjectMetadata::default()).unwrap();
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
        let mut closing = StagedFile::new_empty(&ctx, "closing".into(), ObjectMetadata::default()).unwrap();
        closing.write(&ctx, 0, b"finish me".to_vec()).await.unwrap();
        client.set_unreachable(true);
        assert!(closing.upload(&ctx).await.is_err());
        // A close that began, of an object someone else replaced meanwhile.
        let mut stale =
            StagedFile::from_object(&ctx, changed, SystemTime::now(), false, ObjectMetadata::default())
                .unwrap();
        stale.truncate(0).unwrap();
        stale.write(&ctx, 0, b"mine".to_vec()).await.unwrap();
        assert!(stale.upload(&ctx).await.is_err());
        client.set_unreachable(false);
        // Written, never closed, over a base it fetched only in part.
        let mut open =
            StagedFile::from_object(&ctx, base, SystemTime::now(), false, ObjectMetadata::default()).unwrap();
        open.write(&ctx, 5, b"edit".to_vec()).await.unwrap();
        // Written in order, never closed: parts went early in a multipart upload.
        let mut growing = StagedFile::new_empty(&ctx, "growing".into(), ObjectMetadata::default()).unwrap();
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
    let mut file = StagedFile::new_empty(&s.ctx, "dd".into(), ObjectMetadata::default()).unwrap();
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
    let mut small = StagedFile::new_empty(&ctx, "small".into(), ObjectMetadata::default()).unwrap();
    small.write(&ctx, 0, b"small body".to_vec()).await.unwrap();
    let mut large = StagedFile::new_empty(&ctx, "large".into(), ObjectMetadata::default()).unwrap();
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
        let mut small = StagedFile::new_empty(&ctx, "small".into(), ObjectMetadata::default()).unwrap();
        small.write(&ctx, 0, b"landed".to_vec()).await.unwrap();
        client.fail_next_after_server(Op::Put, 1, ObjectError::Unreachable("reset".into()));
        assert!(small.upload(&ctx).await.is_err());
        let mut large = StagedFile::new_empty(&ctx, "large".into(), ObjectMetadata::default()).unwrap();
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
        let mut other = StagedFile::new_empty(&ctx, "other".into(), ObjectMetadata::default()).unwrap();
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
    let mut file = StagedFile::new_empty(&ctx, "k".into(), ObjectMetadata::default()).unwrap();
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

/// Every header and user entry an object can carry, with the POSIX `mtime` entry a content
/// change drops.
fn rich_metadata() -> ObjectMetadata {
    ObjectMetadata {
        content_type: Some("text/css".into()),
        cache_control: Some("max-age=0".into()),
        content_encoding: Some("identity".into()),
        content_disposition: Some("attachment; filename=\"site asset\"".into()),
        content_language: Some("en-GB".into()),
        storage_class: Some("STANDARD_IA".into()),
        sse: Some("aws:kms".into()),
        sse_kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/k 1".into()),
        user: [
            ("team", "web"),
            ("odd name", "new\nline %41 ü"),
            ("mtime", "1600000000"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect(),
    }
}

/// `metadata` as a change of content leaves it: without the `mtime` entry.
fn without_time(metadata: &ObjectMetadata) -> ObjectMetadata {
    let mut metadata = metadata.clone();
    metadata.user.remove(posix_headers::MTIME);
    metadata
}

/// Stages the object at `key` as it is now, with its own metadata (as an open for writing does).
async fn stage_with_metadata(client: &Bucket, ctx: &WriteContext, key: &str) -> StagedFile {
    let head = client.head(key).await.unwrap();
    let object = ObjectVersion {
        key: key.into(),
        etag: head.etag,
        size: head.size,
        version_id: None,
    };
    StagedFile::from_object(ctx, object, head.last_modified, false, head.metadata).unwrap()
}

#[tokio::test]
async fn recovery_uploads_an_interrupted_close_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    let metadata = rich_metadata();
    let big = pattern(12 * MIB);
    client.put_object_with_metadata("small.css", "body {}", &metadata);
    client.put_object_with_metadata("big.css", big.clone(), &metadata);
    let new_metadata = ObjectMetadata {
        user: [("origin".to_owned(), "mount".to_owned())].into(),
        ..ObjectMetadata::with_content_type(Some("text/css".into()))
    };
    {
        let ctx = context(&client, &dir);
        // Appended to: one PutObject, and a multipart upload whose old parts are copied.
        let mut small = stage_with_metadata(&client, &ctx, "small.css").await;
        small.write(&ctx, 7, b" p {}".to_vec()).await.unwrap();
        let mut large = stage_with_metadata(&client, &ctx, "big.css").await;
        large.write(&ctx, 12 * MIB, b"tail".to_vec()).await.unwrap();
        // A new file, created with metadata.
        let mut new = StagedFile::new_empty(&ctx, "new.css".into(), new_metadata.clone()).unwrap();
        new.write(&ctx, 0, b"new {}".to_vec()).await.unwrap();
        // Each close begins, and the server is down.
        client.set_unreachable(true);
        for file in [&mut small, &mut large, &mut new] {
            assert!(file.upload(&ctx).await.is_err());
        }
        client.set_unreachable(false);
        let journals = journals(&dir);
        assert_eq!(journals.len(), 3);
        for (path, text) in &journals {
            assert!(
                text.contains("state closing") && text.contains("header content-type"),
                "{}: {text}",
                path.display()
            );
        }
        // The daemon dies here: nothing is dropped or discarded.
        std::mem::forget((small, large, new));
    }
    client.reset_counters();
    let ctx = context(&client, &dir);
    let mut report = recover(&ctx).await.unwrap();
    report.uploaded.sort();
    assert_eq!(report.uploaded, ["big.css", "new.css", "small.css"]);
    assert!(report.moved.is_empty() && report.kept.is_empty(), "{report:?}");
    assert_eq!(client.body("small.css").as_deref(), Some(&b"body {} p {}"[..]));
    let mut expected = big;
    expected.extend_from_slice(b"tail");
    assert!(client.body("big.css").as_deref() == Some(&expected[..]));
    assert_eq!(client.body("new.css").as_deref(), Some(&b"new {}"[..]));
    let counts = client.counters();
    assert_eq!(
        (
            counts.create_multipart,
            counts.upload_part_copy,
            counts.upload_part
        ),
        (1, 2, 1),
        "the recovered large file is a multipart upload with its two untouched parts copied"
    );
    assert_eq!(client.open_multipart_uploads(), 0);
    // What the journal recorded, which is the object's metadata less the time a change of
    // content dropped; not the base's metadata as it is in S3.
    for key in ["small.css", "big.css"] {
        assert_eq!(
            client.head(key).await.unwrap().metadata,
            without_time(&metadata),
            "metadata of {key}"
        );
    }
    assert_eq!(client.head("new.css").await.unwrap().metadata, new_metadata);
}

/// Leaves a staged file for `key` (staged from the object there, with its metadata, and
/// appended to) whose close began while the server was down, and rewrites its journal as
/// format 2 wrote it: without metadata.
async fn leave_a_format_2_journal(client: &Arc<Bucket>, dir: &tempfile::TempDir, key: &str) {
    let ctx = context(client, dir);
    let mut file = stage_with_metadata(client, &ctx, key).await;
    let size = file.size();
    file.write(&ctx, size, b"<p>new</p>".to_vec()).await.unwrap();
    client.set_unreachable(true);
    assert!(file.upload(&ctx).await.is_err());
    client.set_unreachable(false);
    std::mem::forget(file);
    let [(path, text)] = &journals(dir)[..] else {
        panic!("one journal expected: {:?}", journals(dir));
    };
    assert!(text.starts_with("s3mount-staged 3\n"), "{text}");
    assert!(
        text.contains("state closing") && text.contains("\nmeta team "),
        "{text}"
    );
    let old: String = text
        .replacen("s3mount-staged 3\n", "s3mount-staged 2\n", 1)
        .lines()
        .filter(|line| !line.starts_with("header ") && !line.starts_with("meta "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!old.contains("text/html") && !old.contains("team"), "{old}");
    std::fs::write(path, old).unwrap();
}

#[tokio::test]
async fn a_format_2_journal_recovers_with_the_unchanged_base_objects_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    let metadata = ObjectMetadata {
        content_type: Some("text/html".into()),
        ..without_time(&rich_metadata())
    };
    client.put_object_with_metadata("page.html", "<p>old</p>", &metadata);
    leave_a_format_2_journal(&client, &dir, "page.html").await;
    let ctx = context(&client, &dir);
    let report = recover(&ctx).await.unwrap();
    assert_eq!(report.uploaded, ["page.html"]);
    assert_eq!(
        client.body("page.html").as_deref(),
        Some(&b"<p>old</p><p>new</p>"[..])
    );
    assert_eq!(client.head("page.html").await.unwrap().metadata, metadata);
}

/// A format-2 recovery uploads a change of content too: the base's `mtime` entry no longer
/// applies to it, as it does not to any other rewrite.
#[tokio::test]
async fn a_format_2_recovery_drops_the_base_objects_mtime_entry() {
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Bucket::memory("b"));
    let metadata = ObjectMetadata {
        content_type: Some("text/html".into()),
        ..rich_metadata()
    };
    assert!(metadata.user.contains_key(posix_headers::MTIME));
    client.put_object_with_metadata("page.html", "<p>old</p>", &metadata);
    leave_a_format_2_journal(&client, &dir, "page.html").await;
    let ctx = context(&client, &dir);
    let report = recover(&ctx).await.unwrap();
    assert_eq!(report.uploaded, ["page.html"]);
    assert_eq!(
        client.head("page.html").await.unwrap().metadata,
        without_time(&metadata),
        "the recovered upload changed the content: the old mtime entry must go"
    );
}
