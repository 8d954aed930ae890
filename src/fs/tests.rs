//! Unit tests of the file system driven through `MemoryClient`, without mounting: what a user of
//! the mount would see (names, sizes, contents, errors) and what it costs in requests.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::object::Op;
use crate::object::fault::FaultClient;
use crate::object::memory::MemoryClient;

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;
use crate::prefetch::ReadAheadConfig;

/// The mount settings of the unit tests (also `tests_metadata`'s).
pub(super) fn config(prefix: &str) -> FsConfig {
    FsConfig {
        root: RootPrefix::new(prefix).unwrap(),
        uid: 1000,
        gid: 1000,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl: Duration::from_secs(60),
        read_only: false,
        list_page_size: None,
        read_ahead: ReadAheadConfig { part_size: 8 << 20 },
        read_ahead_memory: 64 << 20,
        upload: crate::upload::UploadConfig {
            part_size: 8 << 20,
            concurrency: 4,
        },
        upload_memory: 64 << 20,
        max_rename_keys: 1000,
        posix_metadata: PosixMetadata::Lazy,
        write: Default::default(),
    }
}

fn mount(client: &Arc<Bucket>, prefix: &str) -> S3Fs {
    S3Fs::new(client.clone(), config(prefix), None, None)
}

async fn list_names(fs: &S3Fs, ino: u64) -> Vec<(String, Kind)> {
    let handle = fs.opendir(ino).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let mut batch = Vec::new();
        // A small reply buffer, like the kernel's, so paging through readdir is exercised.
        let mut add = |e: DirEntry| {
            if batch.len() == 7 {
                return true;
            }
            batch.push(e);
            false
        };
        fs.readdir(ino, handle, offset, &mut add).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        names.extend(batch.into_iter().map(|e| (e.name, e.kind)));
    }
    fs.releasedir(handle);
    names
}

async fn lookup_path(fs: &S3Fs, path: &str) -> Result<Attr, FsError> {
    let mut ino = ROOT_INO;
    let mut attr = fs.getattr(ino).await?;
    for name in path.split('/') {
        attr = fs.lookup(ino, OsStr::new(name)).await?;
        ino = attr.ino;
    }
    Ok(attr)
}

async fn read_all(fs: &S3Fs, ino: u64) -> Result<Vec<u8>, FsError> {
    let handle = fs.open(ino, libc::O_RDONLY).await?.handle;
    let mut data = Vec::new();
    loop {
        let chunk = fs.read(handle, data.len() as u64, 4096).await?;
        if chunk.is_empty() {
            break;
        }
        data.extend_from_slice(&chunk);
    }
    fs.release(handle).await;
    Ok(data)
}

#[tokio::test]
async fn prefixes_are_directories_and_objects_files() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("2021/doc-example-bucket/math/john.txt", "john");
    client.put_object("2021/doc-example-bucket/math/jane.txt", "jane!");
    client.put_object("2021/empty-dir/", "");
    client.put_object("top.txt", "top");
    let fs = mount(&client, "");
    let root = list_names(&fs, ROOT_INO).await;
    assert_eq!(
        root,
        vec![
            (".".into(), Kind::Dir),
            ("..".into(), Kind::Dir),
            ("2021".into(), Kind::Dir),
            ("top.txt".into(), Kind::File)
        ]
    );
    let math = lookup_path(&fs, "2021/doc-example-bucket/math").await.unwrap();
    assert_eq!(math.kind, Kind::Dir);
    assert_eq!(math.perm, 0o755);
    let names: Vec<_> = list_names(&fs, math.ino)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![".", "..", "jane.txt", "john.txt"]);
    let jane = lookup_path(&fs, "2021/doc-example-bucket/math/jane.txt")
        .await
        .unwrap();
    assert_eq!(
        (jane.kind, jane.size, jane.perm, jane.uid),
        (Kind::File, 5, 0o644, 1000)
    );
    assert_eq!(read_all(&fs, jane.ino).await.unwrap(), b"jane!");
    // An explicit marker is a directory even with nothing under it.
    let empty = lookup_path(&fs, "2021/empty-dir").await.unwrap();
    assert_eq!(empty.kind, Kind::Dir);
    assert_eq!(list_names(&fs, empty.ino).await.len(), 2);
    assert!(matches!(
        lookup_path(&fs, "2021/nope").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_prefix_becomes_the_root() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("datasets/imagenet/train/0.jpg", "0");
    client.put_object("datasets/imagenet/val.txt", "v");
    client.put_object("datasets/other/x", "x");
    let fs = mount(&client, "datasets/imagenet/");
    let names: Vec<_> = list_names(&fs, ROOT_INO)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![".", "..", "train", "val.txt"]);
    let zero = lookup_path(&fs, "train/0.jpg").await.unwrap();
    assert_eq!(read_all(&fs, zero.ino).await.unwrap(), b"0");
    assert!(matches!(lookup_path(&fs, "x").await, Err(FsError::NotFound)));
}

#[tokio::test]
async fn file_and_prefix_of_one_name_show_the_directory() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("a", "file");
    client.put_object("a/b", "inner");
    let fs = mount(&client, "");
    let names = list_names(&fs, ROOT_INO).await;
    assert_eq!(names[2..], [("a".to_owned(), Kind::Dir)]);
    assert_eq!(lookup_path(&fs, "a").await.unwrap().kind, Kind::Dir);
    // Without the cache the lookup rule agrees with the listing rule.
    let fresh = mount(&client, "");
    assert_eq!(lookup_path(&fresh, "a").await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn bad_names_are_refused_without_a_request() {
    let client = Arc::new(Bucket::memory("b"));
    let fs = mount(&client, "");
    client.reset_counters();
    let long = "x".repeat(256);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new(&long)).await.unwrap_err().errno(),
        libc::ENAMETOOLONG
    );
    let counts = client.counters();
    assert_eq!(counts.head + counts.list, 0);
}

#[tokio::test]
async fn ls_l_costs_no_request_per_entry() {
    let client = Arc::new(Bucket::memory("b"));
    for i in 0..2_500 {
        client.put_object(&format!("big/f{i:05}"), vec![0u8; i % 7]);
    }
    let fs = mount(&client, "");
    let dir = lookup_path(&fs, "big").await.unwrap();
    client.reset_counters();
    let names = list_names(&fs, dir.ino).await;
    assert_eq!(names.len(), 2_502);
    for (name, _) in &names[2..] {
        let attr = fs.lookup(dir.ino, OsStr::new(name)).await.unwrap();
        assert_eq!(attr.kind, Kind::File);
    }
    let counts = client.counters();
    // One ListObjectsV2 per 1,000 names, and nothing per entry.
    assert_eq!((counts.list, counts.head, counts.get), (3, 0, 0));
}

#[tokio::test]
async fn a_huge_directory_streams_one_page_at_a_time() {
    let client = Arc::new(Bucket::memory("b"));
    for i in 0..100_000 {
        client.put_object(&format!("huge/{i:06}"), "");
    }
    let mut cfg = config("");
    cfg.list_page_size = Some(1000);
    let fs = S3Fs::new(client.clone(), cfg, None, None);
    let dir = lookup_path(&fs, "huge").await.unwrap();
    let handle = fs.opendir(dir.ino).await.unwrap();
    let (mut count, mut offset, mut most_buffered) = (0u64, 0u64, 0usize);
    loop {
        let mut batch = 0;
        let mut last = offset;
        let mut add = |e: DirEntry| {
            if batch == 100 {
                return true;
            }
            batch += 1;
            last = e.offset;
            false
        };
        fs.readdir(dir.ino, handle, offset, &mut add).await.unwrap();
        let open = lock(&fs.dirs).get(&handle).cloned().unwrap();
        most_buffered = most_buffered.max(open.listing.lock().await.stream.buffered());
        if batch == 0 {
            break;
        }
        count += batch;
        offset = last;
    }
    assert_eq!(count, 100_002);
    // A page, and the file held back from the page before (see DirStream::held).
    assert!(most_buffered <= 1001, "buffered {most_buffered} entries");
}

/// opendir of a directory the cache knows nothing of any more (its entry expired, or was evicted
/// by the entries of directories listed before it, as in a `find` over 100,000 keys) asks S3
/// nothing: the kernel opens only what it holds as a directory, and the listing tells the rest.
#[tokio::test]
async fn opendir_of_a_directory_no_longer_cached_sends_no_request() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/a", "1");
    client.put_object("d/b", "2");
    let mut cfg = config("");
    cfg.metadata_ttl = Duration::ZERO;
    let fs = S3Fs::new(client.clone(), cfg, None, None);
    let dir = lookup_path(&fs, "d").await.unwrap();
    client.reset_counters();
    let handle = fs.opendir(dir.ino).await.unwrap();
    let counts = client.counters();
    assert_eq!((counts.head, counts.list), (0, 0), "opendir sent requests");
    fs.releasedir(handle);
    let names: Vec<String> = list_names(&fs, dir.ino)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, [".", "..", "a", "b"]);
    assert_eq!(client.counters().head, 0, "listing d sent a HEAD");
}

/// Waits (at most 10 s) until `client` has been sent `count` LISTs in all.
async fn lists_sent(client: &Bucket, count: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.counters().list < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} LISTs sent, {count} expected",
            client.counters().list
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads `dir` from `offset` through a reply that takes `room` entries; their names.
async fn readdir_names(fs: &S3Fs, dir: u64, handle: u64, offset: u64, room: usize) -> Vec<String> {
    readdir_entries(fs, dir, handle, offset, room)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// Reads `dir` from `offset` through a reply that takes `room` entries.
async fn readdir_entries(fs: &S3Fs, dir: u64, handle: u64, offset: u64, room: usize) -> Vec<DirEntry> {
    let mut entries = Vec::new();
    let mut add = |e: DirEntry| {
        if entries.len() == room {
            return true;
        }
        entries.push(e);
        false
    };
    fs.readdir(dir, handle, offset, &mut add).await.unwrap();
    entries
}

/// The names of `dir` from `offset` to its end (see [`readdir_to_end`]).
async fn readdir_rest(fs: &S3Fs, dir: u64, handle: u64, offset: u64) -> Vec<String> {
    let entries = readdir_to_end(fs, dir, handle, offset).await;
    entries.into_iter().map(|e| e.name).collect()
}

/// The entries of `dir` from `offset` to its end, as the kernel reads them: reply after reply
/// (each may end where the next page is not listed yet) until one comes back empty.
pub(super) async fn readdir_to_end(fs: &S3Fs, dir: u64, handle: u64, mut offset: u64) -> Vec<DirEntry> {
    let mut entries = Vec::new();
    loop {
        let reply = readdir_entries(fs, dir, handle, offset, 100_000).await;
        let Some(last) = reply.last() else {
            return entries;
        };
        offset = last.offset;
        entries.extend(reply);
    }
}

#[tokio::test]
async fn listing_pages_are_asked_for_ahead_while_the_reader_takes_this_one() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..30 {
        client.put_object(&format!("d/f{n:02}"), "x");
    }
    let mut cfg = config("");
    cfg.list_page_size = Some(10);
    let fs = S3Fs::new(client.clone(), cfg, None, None);
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    let handle = fs.opendir(d).await.unwrap();
    let before = client.counters().list;
    // The dots and eight of the first page's ten names (its last is held until the next page
    // shows no `f09/`): the other two pages, not needed yet, are listed meanwhile.
    let first = readdir_names(&fs, d, handle, 0, 10).await;
    assert_eq!(first.last().map(String::as_str), Some("f07"));
    lists_sent(&client, before + 3).await;
    let rest = readdir_rest(&fs, d, handle, 10).await;
    let expected: Vec<String> = (8..30).map(|n| format!("f{n:02}")).collect();
    assert_eq!(rest, expected);
    assert_eq!(
        client.counters().list,
        before + 3,
        "each page asked for once, none after the last"
    );
    // A rewind lists from the start again, the page asked for ahead of it dropped.
    let again = readdir_rest(&fs, d, handle, 0).await;
    assert_eq!(again.len(), 32);
    fs.releasedir(handle);
}

#[tokio::test]
async fn a_page_listed_ahead_longer_ago_than_the_ttl_is_listed_again() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..30 {
        client.put_object(&format!("d/f{n:02}"), "x");
    }
    let mut cfg = config("");
    cfg.list_page_size = Some(10);
    cfg.metadata_ttl = Duration::from_millis(300);
    let fs = S3Fs::new(client.clone(), cfg, None, None);
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    let handle = fs.opendir(d).await.unwrap();
    let before = client.counters().list;
    readdir_names(&fs, d, handle, 0, 10).await;
    lists_sent(&client, before + 3).await;
    // The reader pauses past the TTL: what waits is too old to hand out.
    client.put_object("d/f15x", "new meanwhile");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rest = readdir_rest(&fs, d, handle, 10).await;
    fs.releasedir(handle);
    assert!(rest.iter().any(|name| name == "f15x"), "listed again: {rest:?}");
    assert_eq!(rest.len(), 23);
    // Pages 2 and 3 asked again, and a fourth the new key pushed the last one into.
    assert_eq!(client.counters().list, before + 6);
}

#[tokio::test]
async fn a_page_asked_for_ahead_before_an_unlink_does_not_bring_the_file_back() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..20 {
        client.put_object(&format!("d/f{n:02}"), "x");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.list_page_size = Some(10);
    let fs = writable_with(&client, &dir, cfg);
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    lookup_path(&fs, "d/f15").await.unwrap();
    let handle = fs.opendir(d).await.unwrap();
    let before = client.counters().list;
    client.set_answer_latency(Op::List, Duration::from_millis(300));
    readdir_names(&fs, d, handle, 0, 10).await;
    // The second page is on its way (answered 300 ms after it was asked) when f15 goes.
    lists_sent(&client, before + 2).await;
    client.set_answer_latency(Op::List, Duration::ZERO);
    fs.unlink(d, OsStr::new("f15")).await.unwrap();
    let rest = readdir_rest(&fs, d, handle, 10).await;
    assert!(
        rest.iter().any(|name| name == "f15"),
        "the page predates the unlink: {rest:?}"
    );
    fs.releasedir(handle);
    assert_eq!(
        fs.lookup(d, OsStr::new("f15")).await.unwrap_err().errno(),
        libc::ENOENT,
        "the page predates the unlink and must not have cached the file again"
    );
    assert_eq!(lookup_path(&fs, "d/f16").await.unwrap().size, 1);
}

/// `t/d00` .. `t/dNN`, each holding `f0`, `f1` and `f2`.
fn walkable_tree(client: &Bucket, dirs: usize) -> Vec<String> {
    let names: Vec<String> = (0..dirs).map(|n| format!("d{n:02}")).collect();
    for name in &names {
        for f in 0..3 {
            client.put_object(&format!("t/{name}/f{f}"), "x");
        }
    }
    names
}

/// The names `find` would see in `t/NAME`, opening it as a walker does.
async fn walk_into(fs: &S3Fs, name: &str) -> Vec<String> {
    let ino = lookup_path(fs, &format!("t/{name}")).await.unwrap().ino;
    list_names(fs, ino).await.into_iter().map(|(n, _)| n).collect()
}

// Paused clock: the walk's pace is not at the mercy of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_tree_walk_has_the_next_directories_listed_ahead_each_once() {
    let client = Arc::new(Bucket::memory("b"));
    let dirs = walkable_tree(&client, 10);
    let fs = mount(&client, "");
    let t = lookup_path(&fs, "t").await.unwrap().ino;
    list_names(&fs, t).await;
    let before = client.counters().list;
    assert_eq!(walk_into(&fs, &dirs[0]).await, [".", "..", "f0", "f1", "f2"]);
    // A second sibling opened in listing order is a walk: the next four are listed ahead.
    walk_into(&fs, &dirs[1]).await;
    lists_sent(&client, before + 2 + walk::WALK_AHEAD as u64).await;
    // Their opens take those pages; each further open asks for one more sibling ahead.
    for name in &dirs[2..] {
        assert_eq!(
            walk_into(&fs, name).await,
            [".", "..", "f0", "f1", "f2"],
            "{name}"
        );
    }
    assert_eq!(client.counters().list, before + 10, "each directory listed once");
    // Opened out of order, nothing is asked for ahead.
    walk_into(&fs, &dirs[7]).await;
    walk_into(&fs, &dirs[3]).await;
    assert_eq!(client.counters().list, before + 12);
}

// Paused clock: the walk's pace is not at the mercy of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_page_a_walk_had_listed_ahead_is_listed_again_once_older_than_a_second_or_the_ttl() {
    let client = Arc::new(Bucket::memory("b"));
    let dirs = walkable_tree(&client, 6);
    let mut cfg = config("");
    cfg.metadata_ttl = Duration::from_millis(300);
    let fs = S3Fs::new(client.clone(), cfg, None, None);
    let t = lookup_path(&fs, "t").await.unwrap().ino;
    list_names(&fs, t).await;
    let before = client.counters().list;
    walk_into(&fs, &dirs[0]).await;
    walk_into(&fs, &dirs[1]).await;
    lists_sent(&client, before + 2 + walk::WALK_AHEAD as u64).await;
    client.put_object(&format!("t/{}/new", dirs[2]), "another writer's");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let names = walk_into(&fs, &dirs[2]).await;
    assert!(names.iter().any(|n| n == "new"), "listed again: {names:?}");
}

// Paused clock: the walk's pace is not at the mercy of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_page_a_walk_had_listed_ahead_does_not_bring_back_a_file_unlinked_since() {
    let client = Arc::new(Bucket::memory("b"));
    let dirs = walkable_tree(&client, 4);
    let staging = tempfile::tempdir().unwrap();
    let fs = writable(&client, &staging);
    let t = lookup_path(&fs, "t").await.unwrap().ino;
    list_names(&fs, t).await;
    let before = client.counters().list;
    walk_into(&fs, &dirs[0]).await;
    walk_into(&fs, &dirs[1]).await;
    lists_sent(&client, before + 4).await;
    // The pages of d02 and d03 were asked for before this unlink.
    let d2 = lookup_path(&fs, &format!("t/{}", dirs[2])).await.unwrap().ino;
    lookup_path(&fs, &format!("t/{}/f1", dirs[2])).await.unwrap();
    fs.unlink(d2, OsStr::new("f1")).await.unwrap();
    let listed = client.counters().list;
    walk_into(&fs, &dirs[2]).await;
    assert_eq!(
        client.counters().list,
        listed,
        "d02's page was the one listed ahead"
    );
    assert_eq!(
        fs.lookup(d2, OsStr::new("f1")).await.unwrap_err().errno(),
        libc::ENOENT,
        "the page predates the unlink and must not have cached the file again"
    );
}

#[tokio::test]
async fn forget_releases_inodes_and_numbers_stay_stable() {
    let client = Arc::new(Bucket::memory("b"));
    for i in 0..500 {
        client.put_object(&format!("f{i}"), "x");
    }
    let fs = mount(&client, "");
    let mut first = Vec::new();
    for i in 0..500 {
        first.push(
            fs.lookup(ROOT_INO, OsStr::new(&format!("f{i}")))
                .await
                .unwrap()
                .ino,
        );
    }
    assert_eq!(fs.live_inodes(), 501);
    for ino in &first {
        fs.forget(*ino, 1);
    }
    assert_eq!(fs.live_inodes(), 1);
    for (i, ino) in first.iter().enumerate() {
        assert_eq!(
            fs.lookup(ROOT_INO, OsStr::new(&format!("f{i}")))
                .await
                .unwrap()
                .ino,
            *ino
        );
    }
}

#[tokio::test]
async fn a_replaced_object_fails_the_read_instead_of_mixing_versions() {
    const SIZE: usize = 3 << 20;
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", vec![1u8; SIZE]);
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(&fs.read(handle, 0, 4096).await.unwrap()[..], &[1u8; 4096][..]);
    client.put_object("f", vec![2u8; SIZE]);
    // What this handle already fetched is of its own version: consistent, not mixed.
    assert_eq!(&fs.read(handle, 4096, 4096).await.unwrap()[..], &[1u8; 4096][..]);
    // What it has not must come from that version too, and S3 no longer has it.
    let error = fs.read(handle, 2 << 20, 4096).await.unwrap_err();
    assert_eq!(error.errno(), libc::ESTALE);
    fs.release(handle).await;
    // Close-to-open: the next open sees the new object.
    assert_eq!(read_all(&fs, ino).await.unwrap(), vec![2u8; SIZE]);
}

#[tokio::test]
async fn open_refreshes_size_despite_the_metadata_cache() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "short");
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    client.put_object("f", "a longer body");
    assert_eq!(
        fs.getattr(ino).await.unwrap().size,
        5,
        "within the TTL the cached size is served"
    );
    assert_eq!(read_all(&fs, ino).await.unwrap(), b"a longer body");
    assert_eq!(
        fs.getattr(ino).await.unwrap().size,
        13,
        "open refreshed the cache"
    );
}

/// Records which inodes the file system asked the kernel to forget.
#[derive(Default)]
struct RecordingKernel(std::sync::Mutex<Vec<u64>>);

impl KernelCache for RecordingKernel {
    fn invalidate(&self, ino: u64) {
        self.0.lock().unwrap().push(ino);
    }
}

#[tokio::test]
async fn open_drops_the_kernels_view_when_the_object_changed_since_it_was_told() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "v1");
    let fs = mount(&client, "");
    let kernel = Arc::new(RecordingKernel::default());
    fs.set_kernel_cache(kernel.clone());
    let f = lookup_path(&fs, "d/f").await.unwrap();
    let d = lookup_path(&fs, "d").await.unwrap();
    // Unchanged: no invalidation.
    let handle = fs.open(f.ino, libc::O_RDONLY).await.unwrap().handle;
    fs.release(handle).await;
    assert!(kernel.0.lock().unwrap().is_empty());
    // Replaced, and a listing refreshes the metadata cache before the open: the kernel still
    // holds the old size, so the open must still invalidate it.
    client.put_object("d/f", "version two");
    assert_eq!(list_names(&fs, d.ino).await.len(), 3);
    let handle = fs.open(f.ino, libc::O_RDONLY).await.unwrap().handle;
    fs.release(handle).await;
    assert_eq!(*kernel.0.lock().unwrap(), vec![f.ino]);
    // Once the kernel asks again it is up to date, and the next open leaves it alone.
    assert_eq!(fs.getattr(f.ino).await.unwrap().size, 11);
    let handle = fs.open(f.ino, libc::O_RDONLY).await.unwrap().handle;
    fs.release(handle).await;
    assert_eq!(kernel.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_reopened_unchanged_file_keeps_the_page_cache_and_old_handles_go_stale() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "v1");
    let fs = mount(&client, "");
    let d = lookup_path(&fs, "d").await.unwrap();
    // A listing (millisecond times) then a lookup, as `ls -l` does, before the opens.
    list_names(&fs, d.ino).await;
    let f = lookup_path(&fs, "d/f").await.unwrap();
    let first = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    assert!(!first.keep_cache, "nothing of it is cached by the kernel yet");
    let second = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    assert!(second.keep_cache, "same version: the kernel may keep its pages");
    client.put_object("d/f", "version two");
    let third = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    assert!(!third.keep_cache, "a new version: its pages must be read again");
    assert_eq!(
        fs.read(first.handle, 0, 10).await.unwrap_err().errno(),
        libc::ESTALE
    );
    assert_eq!(&fs.read(third.handle, 0, 20).await.unwrap()[..], b"version two");
}

/// A read of bytes already arrived is answered on the caller's thread, but never once the
/// kernel's pages belong to a newer version: the usual read then says ESTALE.
#[tokio::test]
async fn reads_answered_without_waiting_keep_the_estale_rule() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "v1");
    let fs = mount(&client, "");
    let f = lookup_path(&fs, "d/f").await.unwrap();
    let first = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(first.handle, 0, 2).await.unwrap()[..], b"v1");
    assert_eq!(fs.try_read_now(first.handle, 0, 2).as_deref(), Some(&b"v1"[..]));
    client.put_object("d/f", "version two");
    let newer = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    assert!(fs.try_read_now(first.handle, 0, 2).is_none());
    assert_eq!(
        fs.read(first.handle, 0, 2).await.unwrap_err().errno(),
        libc::ESTALE
    );
    assert_eq!(&fs.read(newer.handle, 0, 20).await.unwrap()[..], b"version two");
}

#[tokio::test]
async fn writes_are_refused_for_now() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "x");
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    assert_eq!(
        fs.open(ino, libc::O_WRONLY).await.unwrap_err().errno(),
        libc::EROFS
    );
}

#[tokio::test]
async fn server_errors_become_errors_not_panics() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "x");
    let fs = mount(&client, "");
    client.set_unreachable(true);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap_err().errno(),
        libc::EIO
    );
    assert!(fs.opendir(ROOT_INO).await.is_ok());
    client.set_unreachable(false);
    let d = lookup_path(&fs, "d").await.unwrap();
    client.fail_next(Op::List, 1, ObjectError::AccessDenied("no".into()));
    let handle = fs.opendir(d.ino).await.unwrap();
    let mut add = |_: DirEntry| false;
    assert_eq!(
        fs.readdir(d.ino, handle, 2, &mut add).await.unwrap_err().errno(),
        libc::EACCES
    );
    // The stream recovers on the next call.
    let mut names = Vec::new();
    let mut add = |e: DirEntry| {
        names.push(e.name);
        false
    };
    fs.readdir(d.ino, handle, 2, &mut add).await.unwrap();
    assert_eq!(names, vec!["f"]);
    // The open's GET (of the first block) fails: the open does, with EIO; the next one works.
    client.fail_next(Op::Get, 1, ObjectError::Unreachable("reset".into()));
    let f = lookup_path(&fs, "d/f").await.unwrap();
    assert_eq!(
        fs.open(f.ino, libc::O_RDONLY).await.unwrap_err().errno(),
        libc::EIO
    );
    let handle = fs.open(f.ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(&fs.read(handle, 0, 10).await.unwrap()[..], b"x");
}

#[tokio::test]
async fn a_slow_read_does_not_block_a_lookup() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("slow", "data");
    client.put_object("other", "x");
    let fs = Arc::new(mount(&client, ""));
    let ino = lookup_path(&fs, "slow").await.unwrap().ino;
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    client.set_latency(Op::Get, Duration::from_secs(30));
    let reader = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.read(handle, 0, 4).await })
    };
    let lookup = tokio::time::timeout(Duration::from_secs(5), fs.lookup(ROOT_INO, OsStr::new("other"))).await;
    assert!(lookup.expect("lookup waited for the slow GET").is_ok());
    assert!(!reader.is_finished());
    reader.abort();
}

#[test]
fn statfs_reports_space() {
    let client = Arc::new(Bucket::memory("b"));
    let fs = mount(&client, "");
    let s = fs.statfs();
    assert!(s.bavail > 0 && s.ffree > 0);
    assert_eq!(s.namelen, 255);
}

/// A writable file system over `client`, staging in `dir`.
pub(super) fn writable(client: &Arc<Bucket>, dir: &tempfile::TempDir) -> S3Fs {
    writable_with(client, dir, config(""))
}

/// A writable file system over `client` with `config`, staging in `dir`.
pub(super) fn writable_with(client: &Arc<Bucket>, dir: &tempfile::TempDir, config: FsConfig) -> S3Fs {
    let staging = crate::staging::Staging::open(dir.path()).unwrap();
    S3Fs::new(client.clone(), config, None, Some(staging))
}

/// A writable file system over a bucket holding one file, `f` with `body`: the bucket, the
/// staging directory (kept alive with it), the file system and `f`'s inode.
async fn writable_with_file(body: &'static str) -> (Arc<Bucket>, tempfile::TempDir, Arc<S3Fs>, u64) {
    writable_with_object("f", body).await
}

/// [`writable_with_file`] with the file at `path` (looked up, directories included).
async fn writable_with_object(
    path: &str,
    body: &'static str,
) -> (Arc<Bucket>, tempfile::TempDir, Arc<S3Fs>, u64) {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object(path, body);
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let ino = lookup_path(&fs, path).await.unwrap().ino;
    (client, dir, fs, ino)
}

async fn create_file(fs: &S3Fs, parent: u64, name: &str, body: &[u8]) -> (u64, u64) {
    let (attr, opened) = fs
        .create(parent, OsStr::new(name), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, body).await.unwrap();
    (attr.ino, opened.handle)
}

#[tokio::test]
async fn a_new_file_is_listed_and_sized_before_its_upload() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("z-existing", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let (ino, handle) = create_file(&fs, ROOT_INO, "new.txt", b"hello").await;
    assert!(!client.contains("new.txt"), "not uploaded before close");
    let names = list_names(&fs, ROOT_INO).await;
    assert!(names.contains(&("new.txt".to_owned(), Kind::File)), "{names:?}");
    assert!(names.contains(&("z-existing".to_owned(), Kind::File)));
    assert_eq!(fs.getattr(ino).await.unwrap().size, 5);
    fs.flush(handle).await.unwrap();
    fs.release(handle).await;
    assert_eq!(client.body("new.txt").as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        client
            .head("new.txt")
            .await
            .unwrap()
            .metadata
            .content_type
            .as_deref(),
        Some("text/plain")
    );
    let names = list_names(&fs, ROOT_INO).await;
    assert_eq!(
        names.iter().filter(|(n, _)| n == "new.txt").count(),
        1,
        "listed once"
    );
}

#[tokio::test]
async fn o_excl_o_append_and_o_trunc_behave_as_posix_says() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("log", "one\n");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let excl = fs
        .create(
            ROOT_INO,
            OsStr::new("log"),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        )
        .await;
    assert_eq!(excl.unwrap_err().errno(), libc::EEXIST);
    let ino = lookup_path(&fs, "log").await.unwrap().ino;
    let append = fs
        .open(ino, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap()
        .handle;
    fs.write(append, 0, b"two\n").await.unwrap();
    fs.flush(append).await.unwrap();
    fs.release(append).await;
    assert_eq!(client.body("log").as_deref(), Some(&b"one\ntwo\n"[..]));
    let trunc = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap().handle;
    fs.flush(trunc).await.unwrap();
    fs.release(trunc).await;
    assert_eq!(client.body("log").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn an_unlinked_open_file_is_never_uploaded() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let (ino, handle) = create_file(&fs, ROOT_INO, "tmp", b"scratch").await;
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    assert_eq!(
        fs.getattr_handle(ino, handle).await.unwrap().size,
        7,
        "fstat still works"
    );
    assert_eq!(
        &fs.read(handle, 0, 100).await.unwrap()[..],
        b"scratch",
        "still readable"
    );
    fs.flush(handle).await.unwrap();
    fs.release(handle).await;
    assert!(!client.contains("tmp"));
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging")).unwrap().count(),
        1,
        "only the lock is left"
    );
}

#[tokio::test]
async fn mkdir_rmdir_and_rename_follow_posix() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let d = fs.mkdir(ROOT_INO, OsStr::new("d")).await.unwrap();
    assert!(client.contains("d/"), "an empty directory is a marker");
    assert_eq!(
        fs.mkdir(ROOT_INO, OsStr::new("d")).await.unwrap_err().errno(),
        libc::EEXIST
    );
    let (_, handle) = create_file(&fs, d.ino, "f.json", b"{}").await;
    assert_eq!(
        fs.rmdir(ROOT_INO, OsStr::new("d")).await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    // Renamed before its first upload: it goes up once, under the new name.
    fs.rename(d.ino, OsStr::new("f.json"), ROOT_INO, OsStr::new("g.json"), 0)
        .await
        .unwrap();
    fs.flush(handle).await.unwrap();
    fs.release(handle).await;
    assert_eq!(client.body("g.json").as_deref(), Some(&b"{}"[..]));
    assert!(!client.contains("d/f.json"));
    assert_eq!(client.counters().copy, 0);
    // An uploaded file: copied, then deleted; NOREPLACE refuses an existing target.
    client.put_object("h", "other");
    let noreplace = fs.rename(ROOT_INO, OsStr::new("g.json"), ROOT_INO, OsStr::new("h"), 1);
    assert_eq!(noreplace.await.unwrap_err().errno(), libc::EEXIST);
    fs.rename(ROOT_INO, OsStr::new("g.json"), d.ino, OsStr::new("moved"), 0)
        .await
        .unwrap();
    assert_eq!(client.body("d/moved").as_deref(), Some(&b"{}"[..]));
    assert!(!client.contains("g.json"));
    // A directory: every key under it moves.
    fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .await
        .unwrap();
    assert_eq!(client.keys(), vec!["e/".to_owned(), "e/moved".into(), "h".into()]);
    assert_eq!(lookup_path(&fs, "e/moved").await.unwrap().size, 2);
    fs.unlink(d.ino, OsStr::new("moved")).await.unwrap();
    fs.rmdir(ROOT_INO, OsStr::new("e")).await.unwrap();
    assert_eq!(client.keys(), vec!["h".to_owned()]);
}

#[tokio::test]
async fn a_read_only_mount_refuses_every_change() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "x");
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    let refused = [
        fs.create(ROOT_INO, OsStr::new("n"), libc::O_WRONLY | libc::O_CREAT)
            .await
            .map(drop),
        fs.open(ino, libc::O_RDWR).await.map(drop),
        fs.mkdir(ROOT_INO, OsStr::new("d")).await.map(drop),
        fs.unlink(ROOT_INO, OsStr::new("f")).await,
        fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), 0)
            .await,
        fs.setattr(ino, Some(0), None).await.map(drop),
    ];
    for result in refused {
        assert_eq!(result.unwrap_err().errno(), libc::EROFS);
    }
    assert_eq!(client.keys(), vec!["f".to_owned()]);
}

#[tokio::test]
async fn only_the_opening_process_uploads_on_close() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let (_, opened) = fs
        .create_as(ROOT_INO, OsStr::new("ckpt"), flags, Some(100), None)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"half").await.unwrap();
    // A child that inherited the descriptor closes its copy: no half-written upload.
    fs.flush_from(opened.handle, Some(200)).await.unwrap();
    assert!(!client.contains("ckpt"));
    fs.write(opened.handle, 4, b" and whole").await.unwrap();
    fs.flush_from(opened.handle, Some(100)).await.unwrap();
    assert_eq!(client.body("ckpt").as_deref(), Some(&b"half and whole"[..]));
    fs.release(opened.handle).await;
}

/// Every transient failure the retry layer can give up with.
fn transient_errors() -> Vec<ObjectError> {
    vec![
        ObjectError::TimedOut("stalled".into()),
        ObjectError::Unreachable("reset".into()),
        ObjectError::Transient {
            code: "SlowDown".into(),
            message: "reduce your request rate".into(),
        },
        ObjectError::Transient {
            code: "HTTP 500".into(),
            message: "internal error".into(),
        },
    ]
}

#[tokio::test]
async fn a_transient_error_is_never_not_found_nor_a_new_empty_file() {
    for error in transient_errors() {
        let errno = FsError::from(error.clone()).errno();
        assert!(errno == libc::EIO || errno == libc::ETIMEDOUT, "{error:?}");
        for failing in [Op::Head, Op::List] {
            let client = Arc::new(Bucket::memory("b"));
            let etag = client.put_object("data.bin", "precious");
            let dir = tempfile::tempdir().unwrap();
            let fs = writable(&client, &dir);
            // A lookup (stat), an open and a create of an existing file while S3 fails.
            client.fail_next(failing, 1, error.clone());
            let looked_up = fs.lookup(ROOT_INO, OsStr::new("data.bin")).await;
            assert_eq!(
                looked_up.unwrap_err().errno(),
                errno,
                "lookup, {failing:?} failing with {error:?}"
            );
            client.fail_next(failing, 1, error.clone());
            let created = fs
                .create(ROOT_INO, OsStr::new("data.bin"), libc::O_WRONLY | libc::O_CREAT)
                .await;
            assert_eq!(
                created.unwrap_err().errno(),
                errno,
                "create, {failing:?} failing with {error:?}"
            );
            assert_eq!(client.counters().put, 0, "nothing was written over the object");
            // Nothing negative was remembered: the next lookup asks again and finds the file.
            let ino = fs.lookup(ROOT_INO, OsStr::new("data.bin")).await.unwrap().ino;
            client.fail_next(Op::Head, 1, error.clone());
            let opened = fs.open(ino, libc::O_RDWR).await;
            assert_eq!(
                opened.unwrap_err().errno(),
                errno,
                "open for writing while HEAD fails"
            );
            let opened = fs.open(ino, libc::O_RDONLY | libc::O_TRUNC).await.unwrap();
            fs.release(opened.handle).await;
            assert_eq!(client.body("data.bin").as_deref(), Some(&b"precious"[..]));
            assert_eq!(client.head("data.bin").await.unwrap().etag, etag);
        }
    }
}

#[tokio::test]
async fn unlinking_a_file_whose_upload_keeps_failing_frees_its_space_at_once() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let (_, handle) = create_file(&fs, ROOT_INO, "big.bin", &vec![7u8; 3 << 20]).await;
    client.set_unreachable(true);
    assert_eq!(fs.flush(handle).await.unwrap_err().errno(), libc::EIO);
    // The last close: the upload goes on in the background, and keeps failing.
    fs.release(handle).await;
    // Disk space the staging area takes: its files, and the files already removed from it
    // that a descriptor of this process still holds open (their space is not free either).
    let staging = std::fs::canonicalize(dir.path().join("staging")).unwrap();
    let staged_bytes = || -> u64 {
        let listed = std::fs::read_dir(&staging)
            .unwrap()
            .filter_map(|entry| Some(entry.ok()?.path()));
        let held_open = std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|fd| {
            let fd = fd.ok()?.path();
            let target = std::fs::read_link(&fd).ok()?;
            let deleted = target.to_string_lossy().ends_with(" (deleted)");
            (deleted && target.starts_with(&staging)).then_some(fd)
        });
        listed
            .chain(held_open)
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|metadata| std::os::unix::fs::MetadataExt::blocks(&metadata) * 512)
            .sum()
    };
    assert!(staged_bytes() >= 3 << 20, "staged while it waits for S3");
    let retries_before = client.calls(Op::Put);
    // S3 comes back just for the delete, as a user's `rm` would find it.
    client.set_unreachable(false);
    client.fail_next(
        Op::Put,
        1000,
        ObjectError::Unreachable("still down for uploads".into()),
    );
    fs.unlink(ROOT_INO, OsStr::new("big.bin")).await.unwrap();
    assert!(
        staged_bytes() < 64 << 10,
        "space freed at once: {} bytes",
        staged_bytes()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        client.calls(Op::Put) <= retries_before + 1,
        "no retries after the unlink: {} then {}",
        retries_before,
        client.calls(Op::Put)
    );
    assert!(!client.contains("big.bin"));
}

#[tokio::test]
async fn a_directory_rename_cut_midway_leaves_every_key_at_one_name() {
    let client = Arc::new(Bucket::memory("b"));
    let names: Vec<String> = (0..40).map(|i| format!("{i:02}")).collect();
    for name in &names {
        client.put_object(&format!("src/{name}"), name.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    lookup_path(&fs, "src").await.unwrap();
    // The server goes away once 16 keys have moved: every later request fails, as a request
    // does once its retries are spent.
    client.set_latency(Op::Copy, Duration::from_millis(1));
    let faults = client.clone();
    let watcher = tokio::spawn(async move {
        while faults.counters().delete < 16 {
            tokio::task::yield_now().await;
        }
        faults.set_unreachable(true);
    });
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("src"), ROOT_INO, OsStr::new("dst"), 0)
        .await;
    watcher.await.unwrap();
    client.set_unreachable(false);
    assert_eq!(renamed.unwrap_err().errno(), libc::EIO);
    let keys = client.keys();
    let (mut moved, mut left, mut both) = (0, 0, 0);
    for name in &names {
        let at_old = keys.contains(&format!("src/{name}"));
        let at_new = keys.contains(&format!("dst/{name}"));
        assert!(at_old || at_new, "{name} lost: {keys:?}");
        if at_new {
            assert_eq!(
                client.body(&format!("dst/{name}")).as_deref(),
                Some(name.as_bytes())
            );
        }
        match (at_old, at_new) {
            (true, true) => both += 1,
            (false, true) => moved += 1,
            _ => left += 1,
        }
    }
    assert!(moved > 0 && left > 0, "cut midway: {moved} moved, {left} left");
    // Only a move whose copy landed just as the server went away can be at both names.
    assert!(both <= RENAME_CONCURRENCY_FOR_TESTS, "{both} keys at both names");
    // Once the server is back, the rest moves with a rename of what is left into place.
    for name in &names {
        if keys.contains(&format!("src/{name}")) && keys.contains(&format!("dst/{name}")) {
            client.delete_object(&format!("src/{name}"));
        }
    }
    let src = lookup_path(&fs, "src").await.unwrap().ino;
    let dst = lookup_path(&fs, "dst").await.unwrap().ino;
    for name in &names {
        if client.contains(&format!("src/{name}")) {
            fs.rename(src, OsStr::new(name), dst, OsStr::new(name), 0)
                .await
                .unwrap();
        }
    }
    let expected: Vec<String> = names.iter().map(|n| format!("dst/{n}")).collect();
    assert_eq!(client.keys(), expected, "every key once, at its new name");
}

/// Moves of a directory rename in flight at once (namespace.rs).
const RENAME_CONCURRENCY_FOR_TESTS: usize = 16;

#[tokio::test]
async fn a_read_of_an_older_version_in_flight_never_mixes_its_pages_with_the_new_ones() {
    let (client, _dir, fs, ino) = writable_with_file("old content").await;
    let old = fs.open(ino, libc::O_RDONLY).await.unwrap();
    // A slow GET: the old handle's read is still on its way while the file is appended to.
    client.set_latency(Op::Get, Duration::from_millis(300));
    let reader = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.read(old.handle, 0, 100).await })
    };
    while client.calls(Op::Get) == 0 {
        tokio::task::yield_now().await;
    }
    client.set_latency(Op::Get, Duration::ZERO);
    let append = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(append.handle, 0, b" and more").await.unwrap();
    fs.flush(append.handle).await.unwrap();
    fs.release(append.handle).await;
    let stale = reader.await.unwrap();
    assert_eq!(
        stale.map(|data| data.len()).unwrap_err().errno(),
        libc::ESTALE,
        "its bytes would land in the kernel's cache of the new version"
    );
    fs.release(old.handle).await;
    let fresh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(
        !fresh.keep_cache,
        "the kernel's cache may hold the old read: it must be emptied"
    );
    assert_eq!(
        &fs.read(fresh.handle, 0, 100).await.unwrap()[..],
        b"old content and more"
    );
    fs.release(fresh.handle).await;
    let again = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(again.keep_cache, "once emptied, the cache is the new version's");
}

/// Opens for reading whose answers (the old version) arrive after a writer staged the file open
/// the staged file instead. The kernel's pages are the writer's (its own reads are served from
/// them), so an older version's reads must not fill them: the stress test caught a reader getting
/// the old bytes after such an open, and a review showed the writer could too. The margins (the
/// writer opens and writes within 500 ms) are wide for a loaded CI machine.
#[tokio::test]
async fn opens_answered_after_a_writer_staged_the_file_open_the_staged_file() {
    let (client, _dir, fs, ino) = writable_with_file("old content").await;
    // Two opens sent before the writer's, answered after it: one before its write, one after.
    let first = open_answered_late(&fs, &client, ino, Duration::from_millis(500)).await;
    let second = open_answered_late(&fs, &client, ino, Duration::from_millis(1500)).await;
    answer_at_once(&client);
    let writer = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        &fs.read(first.handle, 0, 100).await.unwrap()[..],
        b"",
        "the staged file, emptied by O_TRUNC, not the old version"
    );
    fs.write(writer.handle, 0, b"new content").await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(&fs.read(second.handle, 0, 100).await.unwrap()[..], b"new content");
    fs.flush(writer.handle).await.unwrap();
    for handle in [writer.handle, first.handle, second.handle] {
        fs.release(handle).await;
    }
    let fresh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(
        fresh.keep_cache,
        "no older version's reads got into the pages: they hold what was written, the new version"
    );
    assert_eq!(&fs.read(fresh.handle, 0, 100).await.unwrap()[..], b"new content");
    fs.release(fresh.handle).await;
}

/// The same after the writer's fsync: the upload made the pages that version's, but the writer
/// is still open and writing, and an open answered with the fsynced (or the older) version must
/// still read what the writer holds rather than fill the writer's pages from S3.
#[tokio::test]
async fn an_open_answered_after_a_writers_fsync_reads_what_the_writer_holds() {
    let (client, _dir, fs, ino) = writable_with_file("AAAAAAAAAAA").await;
    let reader = open_answered_late(&fs, &client, ino, Duration::from_millis(1000)).await;
    answer_at_once(&client);
    let writer = fs.open(ino, libc::O_RDWR).await.unwrap();
    fs.write(writer.handle, 0, b"BB").await.unwrap();
    fs.fsync(writer.handle).await.unwrap();
    assert_eq!(client.body("f").as_deref(), Some(&b"BBAAAAAAAAA"[..]));
    fs.write(writer.handle, 2, b"CC").await.unwrap();
    let reader = reader.await.unwrap().unwrap();
    assert_eq!(&fs.read(reader.handle, 0, 100).await.unwrap()[..], b"BBCCAAAAAAA");
    assert_eq!(&fs.read(writer.handle, 0, 100).await.unwrap()[..], b"BBCCAAAAAAA");
    fs.release(reader.handle).await;
    fs.release(writer.handle).await;
}

/// A writer that goes on writing after an fsync leaves the kernel's pages the staged file's,
/// not mixed: once it closes, the next open keeps them (they hold what was written, which is
/// what S3 has), instead of emptying a cache that holds the right bytes.
#[tokio::test]
async fn a_writer_going_on_after_an_fsync_leaves_pages_the_next_open_keeps() {
    let (client, _dir, fs, ino) = writable_with_file("AAAAAAAAAAA").await;
    let writer = fs.open(ino, libc::O_RDWR).await.unwrap();
    fs.write(writer.handle, 0, b"BB").await.unwrap();
    fs.fsync(writer.handle).await.unwrap();
    fs.write(writer.handle, 2, b"CC").await.unwrap();
    fs.flush(writer.handle).await.unwrap();
    fs.release(writer.handle).await;
    assert_eq!(client.body("f").as_deref(), Some(&b"BBCCAAAAAAA"[..]));
    let fresh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(fresh.keep_cache, "the pages are the version the close uploaded");
    assert_eq!(&fs.read(fresh.handle, 0, 100).await.unwrap()[..], b"BBCCAAAAAAA");
    fs.release(fresh.handle).await;
}

/// A file unlinked while a writer still holds it open, then created there again, opens for
/// reading as usual: the unlinked staged file holds nothing back (the
/// kernel keeps the inode, and so its number, alive while the writer's descriptor is open).
#[tokio::test]
async fn a_file_recreated_while_an_unlinked_one_is_still_open_opens_for_reading() {
    let (client, _dir, fs, ino) = writable_with_file("first").await;
    let writer = fs.open(ino, libc::O_WRONLY).await.unwrap();
    fs.write(writer.handle, 0, b"FIRST").await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    // Put there again, and closed.
    let (_, created) = fs
        .create(ROOT_INO, OsStr::new("f"), libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(created.handle, 0, b"from here").await.unwrap();
    fs.flush(created.handle).await.unwrap();
    fs.release(created.handle).await;
    let again = lookup_path(&fs, "f").await.unwrap().ino;
    let reader = fs.open(again, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(reader.handle, 0, 100).await.unwrap()[..], b"from here");
    fs.release(reader.handle).await;
    fs.release(writer.handle).await;
    assert_eq!(
        client.body("f").as_deref(),
        Some(&b"from here"[..]),
        "the unlinked file is not uploaded"
    );
}

/// A lookup whose question was overtaken by this mount's change of the path (its HEAD answered
/// with the old object after a close uploaded the new one) answers with what the change left,
/// not with the old size: the kernel would show it to the writer's next `stat`.
#[tokio::test]
async fn a_lookup_overtaken_by_a_close_of_the_same_file_answers_with_the_new_file() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "old content");
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let lookup = {
        let fs = fs.clone();
        let lookup = async move { fs.lookup(ROOT_INO, OsStr::new("f")).await };
        sent_now_answered_late(&client, Duration::from_millis(300), 2, lookup).await
    };
    answer_at_once(&client);
    rewrite(&fs, ROOT_INO, "f", b"the new, longer content").await;
    let looked_up = lookup.await.unwrap().unwrap();
    assert_eq!(
        looked_up.size, 23,
        "the answer from before the close is not believed"
    );
}

/// A writable file system with exact POSIX metadata over a bucket holding `f` ("old content"),
/// its root listed (`f` known without its details) and the HEADs a listing starts ahead held
/// back (while the permit lives), so that a lookup's own HEAD completes `f`.
async fn exact_with_f_listed() -> (
    Arc<Bucket>,
    tempfile::TempDir,
    Arc<S3Fs>,
    tokio::sync::OwnedSemaphorePermit,
) {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "old content");
    let dir = tempfile::tempdir().unwrap();
    let mut exact = config("");
    exact.posix_metadata = PosixMetadata::Exact;
    let fs = Arc::new(writable_with(&client, &dir, exact));
    let ahead = hold_details_ahead(&fs).await;
    let listed = list_names(&fs, ROOT_INO).await;
    assert!(listed.iter().any(|(name, _)| name == "f"), "{listed:?}");
    (client, dir, fs, ahead)
}

/// A lookup of `f` whose `requests` requests are sent now and answered 300 ms later.
async fn lookup_of_f_answered_late(
    fs: &Arc<S3Fs>,
    client: &Arc<Bucket>,
    requests: u64,
) -> tokio::task::JoinHandle<Result<Attr, FsError>> {
    let fs = fs.clone();
    let lookup = async move { fs.lookup(ROOT_INO, OsStr::new("f")).await };
    sent_now_answered_late(client, Duration::from_millis(300), requests, lookup).await
}

/// With exact POSIX metadata a lookup completes a listed entry with a HEAD of its own. A close of
/// the same file that overtakes that HEAD wins, as it does over a lookup's first HEAD: the answer
/// from before the close is not believed.
#[tokio::test]
async fn an_exact_lookup_of_a_listed_file_overtaken_by_a_close_answers_with_the_new_file() {
    let (client, _dir, fs, _ahead) = exact_with_f_listed().await;
    let lookup = lookup_of_f_answered_late(&fs, &client, 1).await;
    answer_at_once(&client);
    rewrite(&fs, ROOT_INO, "f", b"the new, longer content").await;
    let looked_up = lookup.await.unwrap().unwrap();
    assert_eq!(
        looked_up.size, 23,
        "the HEAD's answer from before the close is not believed"
    );
}

/// The atomic-save pattern: write a temporary file, close it, rename it over the real name. The
/// kernel sends the release after close(2) returns, so the rename races the release that settles
/// the staged file. Here the settle wins the file's lock while the rename, which had already
/// found the file staged, waits for it: the rename must then move the object, not the staged
/// file just let go, and leave nothing staged (a staged entry left at the new name would hide
/// every later version other writers put there).
#[tokio::test]
async fn a_rename_that_waited_for_the_settle_of_the_last_close_moves_the_object() {
    let (client, _dir, fs, writer) = tmp_written_beside_final().await;
    // Both wait for the file's lock, the release first (tokio's mutex is fair).
    let staged = fs.staged.get("tmp").unwrap();
    let held = staged.file.lock().await;
    let release = spawn_release(&fs, writer);
    let_the_others_run().await;
    let rename = spawn_rename(&fs, "tmp", "final");
    let_the_others_run().await;
    let heads = client.calls(Op::Head);
    drop(held);
    release.await.unwrap();
    rename.await.unwrap().unwrap();
    assert_eq!(
        client.calls(Op::Head) - heads,
        1,
        "the settle went first: the rename HEADed the object it moved (a staged move HEADs nothing)"
    );
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    assert_eq!(client.body("final").as_deref(), Some(&b"the new version"[..]));
    assert!(fs.staged.all().is_empty(), "nothing is left staged");
    client.put_object("final", "a later version, from elsewhere");
    let ino = lookup_path(&fs, "final").await.unwrap().ino;
    assert_eq!(
        read_all(&fs, ino).await.unwrap(),
        b"a later version, from elsewhere"
    );
}

/// A file system over a bucket holding `final` ("the old version"), with `tmp` created, written
/// ("the new version") and flushed, its writer's handle still open, and `final` looked up.
async fn tmp_written_beside_final() -> (Arc<Bucket>, tempfile::TempDir, Arc<S3Fs>, u64) {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("final", "the old version");
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let (_, writer) = create_file(&fs, ROOT_INO, "tmp", b"the new version").await;
    fs.flush(writer).await.unwrap();
    lookup_path(&fs, "final").await.unwrap();
    (client, dir, fs, writer)
}

fn spawn_rename(
    fs: &Arc<S3Fs>,
    from: &'static str,
    to: &'static str,
) -> tokio::task::JoinHandle<Result<(), FsError>> {
    let fs = fs.clone();
    tokio::spawn(async move {
        fs.rename(ROOT_INO, OsStr::new(from), ROOT_INO, OsStr::new(to), 0)
            .await
    })
}

fn spawn_release(fs: &Arc<S3Fs>, handle: u64) -> tokio::task::JoinHandle<()> {
    let fs = fs.clone();
    tokio::spawn(async move { fs.release(handle).await })
}

/// Lets the tasks spawned on this (current-thread) runtime run until they wait on something.
async fn let_the_others_run() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// The other order: the rename takes the staged file's lock first, and the release's settle
/// waits behind it. The settle then finds the file at its new name and lets it go there.
#[tokio::test]
async fn a_rename_that_took_the_lock_before_the_settle_moves_the_staged_file() {
    let (client, _dir, fs, writer) = tmp_written_beside_final().await;
    let staged = fs.staged.get("tmp").unwrap();
    let held = staged.file.lock().await;
    let rename = spawn_rename(&fs, "tmp", "final");
    let_the_others_run().await;
    let release = spawn_release(&fs, writer);
    let_the_others_run().await;
    let heads = client.calls(Op::Head);
    drop(held);
    rename.await.unwrap().unwrap();
    release.await.unwrap();
    assert_eq!(
        client.calls(Op::Head),
        heads,
        "the staged file moved, not the object"
    );
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    assert_eq!(client.body("final").as_deref(), Some(&b"the new version"[..]));
    assert!(fs.staged.all().is_empty(), "the settle let it go at its new name");
}

/// A file whose upload at the last close failed stays staged for a retry: a rename then moves
/// the staged file (uploading it itself), and the retry's settle lets it go at the new name.
#[tokio::test]
async fn a_rename_of_a_file_whose_last_upload_failed_moves_it_and_it_settles_later() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("final", "the old version");
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let (_, writer) = create_file(&fs, ROOT_INO, "tmp", b"the new version").await;
    client.fail_next(Op::Put, 1, ObjectError::AccessDenied("no".into()));
    fs.release(writer).await;
    assert!(fs.staged.get("tmp").is_some(), "kept for a retry");
    fs.rename(ROOT_INO, OsStr::new("tmp"), ROOT_INO, OsStr::new("final"), 0)
        .await
        .unwrap();
    assert!(
        fs.staged.get("final").is_some(),
        "staged at its new name, for the retry"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs.staged.all().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the retry never settled it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    assert_eq!(client.body("final").as_deref(), Some(&b"the new version"[..]));
}

/// An unlink of the source while the rename's copy is on its way waits for the rename, then
/// finds nothing at the old name. (Before the gates it took the staged file's name mid-rename,
/// and the rename then gave the unlinked file the new one, where the next writer's data went
/// into a file never uploaded.) The next writer of the new name shares the renamed file, and
/// its data is in S3 once its close succeeds.
#[tokio::test]
async fn an_unlink_of_the_source_during_the_rename_waits_and_finds_nothing() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let (_, first) = create_file(&fs, ROOT_INO, "tmp", b"renamed").await;
    fs.flush(first).await.unwrap();
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "tmp", "final").await;
    let unlink = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.unlink(ROOT_INO, OsStr::new("tmp")).await })
    };
    let_the_others_run().await;
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    let unlinked = unlink.await.unwrap();
    assert!(
        matches!(unlinked, Err(FsError::NotFound)),
        "the unlink came after the rename: {unlinked:?}"
    );
    assert!(
        fs.staged.get("final").is_some(),
        "the open file followed its name"
    );
    let ino = lookup_path(&fs, "final").await.unwrap().ino;
    let second = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    fs.write(second.handle, 0, b"second writer").await.unwrap();
    fs.flush(second.handle).await.unwrap();
    fs.release(second.handle).await;
    fs.release(first).await;
    assert_eq!(
        client.body("final").as_deref(),
        Some(&b"second writer"[..]),
        "the second writer's close succeeded, so its data is in S3"
    );
}

/// Starts a rename of `from` to `to` and returns once its copy is on its way, held there until
/// the test lets copies go (`set_stalled(Op::Copy, false)`).
async fn spawn_rename_held_at_its_copy(
    client: &Bucket,
    fs: &Arc<S3Fs>,
    from: &'static str,
    to: &'static str,
) -> tokio::task::JoinHandle<Result<(), FsError>> {
    client.set_stalled(Op::Copy, true);
    let rename = spawn_rename(fs, from, to);
    while client.calls(Op::Copy) == 0 {
        tokio::task::yield_now().await;
    }
    rename
}

/// A writer that opens `ino` for writing, writes `data` at its start, and closes it.
fn spawn_write_at_start(
    fs: &Arc<S3Fs>,
    ino: u64,
    data: &'static [u8],
) -> tokio::task::JoinHandle<Result<(), FsError>> {
    let fs = fs.clone();
    tokio::spawn(async move {
        let opened = fs.open(ino, libc::O_WRONLY).await?;
        fs.write(opened.handle, 0, data).await?;
        let flushed = fs.flush(opened.handle).await;
        fs.release(opened.handle).await;
        flushed
    })
}

/// A writer that opens a rename's target while the rename's copy is on its way waits for the
/// rename: otherwise its upload could land first and the copy over it, its close having
/// reported success. The inode it opened was replaced meanwhile: ESTALE, on which the kernel
/// looks the name up again and opens what the rename put there, and writes over it.
#[tokio::test]
async fn a_writer_of_the_target_during_a_rename_goes_after_it() {
    let (client, _dir, fs, first) = tmp_written_beside_final().await;
    fs.release(first).await;
    let final_ino = lookup_path(&fs, "final").await.unwrap().ino;
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "tmp", "final").await;
    let writer = {
        let fs = fs.clone();
        tokio::spawn(async move {
            let flags = libc::O_WRONLY | libc::O_TRUNC;
            let stale = fs.open(final_ino, flags).await.unwrap_err();
            assert_eq!(stale.errno(), libc::ESTALE, "{stale}");
            let ino = lookup_path(&fs, "final").await.unwrap().ino;
            let opened = fs.open(ino, flags).await?;
            fs.write(opened.handle, 0, b"the writer's").await?;
            let flushed = fs.flush(opened.handle).await;
            fs.release(opened.handle).await;
            flushed
        })
    };
    let_the_others_run().await;
    assert!(!writer.is_finished(), "the writer waits for the rename");
    assert_eq!(client.calls(Op::Put), 1, "only tmp's own upload so far");
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    assert_eq!(client.body("final").as_deref(), Some(&b"the writer's"[..]));
}

/// An open for writing of a rename's source while the object is being moved waits, then opens
/// the file at its new name (the inode it opens moved there): staged from the source key, which
/// the rename deletes, its untouched bytes could never be uploaded.
#[tokio::test]
async fn an_open_for_writing_of_the_source_during_a_rename_opens_the_moved_file() {
    let (client, _dir, fs, tmp_ino) = writable_with_object("tmp", "moved content").await;
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "tmp", "final").await;
    let writer = spawn_write_at_start(&fs, tmp_ino, b"MOVED");
    let_the_others_run().await;
    assert!(!writer.is_finished(), "the writer waits for the rename");
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    assert_eq!(client.body("final").as_deref(), Some(&b"MOVED content"[..]));
    assert!(fs.staged.all().is_empty());
}

/// A directory rename holds the files below it too: an open for writing of one of them while
/// the keys are being moved waits, then opens the file under the directory's new name.
#[tokio::test]
async fn an_open_for_writing_below_a_directory_being_renamed_opens_it_at_the_new_name() {
    let (client, _dir, fs, f_ino) = writable_with_object("d/f", "moved content").await;
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "d", "e").await;
    let writer = spawn_write_at_start(&fs, f_ino, b"MOVED");
    let_the_others_run().await;
    assert!(!writer.is_finished(), "the writer waits for the rename");
    assert!(fs.staged.all().is_empty(), "nothing staged under the rename");
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(client.keys(), vec!["e/f".to_owned()]);
    assert_eq!(client.body("e/f").as_deref(), Some(&b"MOVED content"[..]));
}

/// A close through a handle opened before a directory rename, coming while the rename moves
/// the keys, waits for the file to follow the directory: uploaded to the old key between the
/// copy and the delete, its data would be gone once its close had succeeded.
#[tokio::test]
async fn a_close_of_a_file_open_under_a_directory_being_renamed_uploads_it_at_the_new_name() {
    let (client, _dir, fs, f_ino) = writable_with_object("d/f", "old content").await;
    let opened = fs.open(f_ino, libc::O_WRONLY).await.unwrap();
    client.set_stalled(Op::Delete, true);
    let rename = spawn_rename(&fs, "d", "e");
    while client.calls(Op::Delete) == 0 {
        tokio::task::yield_now().await;
    }
    let writer = {
        let fs = fs.clone();
        tokio::spawn(async move {
            fs.write(opened.handle, 0, b"NEW").await?;
            let flushed = fs.flush(opened.handle).await;
            fs.release(opened.handle).await;
            flushed
        })
    };
    // The writer's staging goes through blocking threads: give it time to get as far as it can
    // (a PUT, without the fix), or to show it waits.
    let puts = client.calls(Op::Put);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while !writer.is_finished() && client.calls(Op::Put) == puts && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!writer.is_finished(), "the writer waits for its file to follow");
    assert_eq!(client.calls(Op::Put), puts, "nothing uploaded to the old key");
    client.set_stalled(Op::Delete, false);
    rename.await.unwrap().unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(client.keys(), vec!["e/f".to_owned()]);
    assert_eq!(client.body("e/f").as_deref(), Some(&b"NEW content"[..]));
}

/// mkdir, symlink and unlink inside a directory being renamed wait for the rename (the kernel
/// does not hold them back), then happen under its new name.
#[tokio::test]
async fn namespace_changes_inside_a_directory_being_renamed_happen_under_its_new_name() {
    let (client, _dir, fs, _) = writable_with_object("d/gone", "unlinked").await;
    client.put_object("d/f", "content");
    let d_ino = lookup_path(&fs, "d").await.unwrap().ino;
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "d", "e").await;
    let changes = {
        let fs = fs.clone();
        tokio::spawn(async move {
            let name = OsStr::new;
            let mkdir = fs.mkdir(d_ino, name("x"));
            let symlink = fs.symlink(d_ino, name("s"), b"f", None);
            let unlink = fs.unlink(d_ino, name("gone"));
            let (made, linked, unlinked) = tokio::join!(mkdir, symlink, unlink);
            made.and(linked).and(unlinked)
        })
    };
    let_the_others_run().await;
    assert!(!changes.is_finished(), "the changes wait for the rename");
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    changes.await.unwrap().unwrap();
    assert_eq!(
        client.keys(),
        vec!["e/f".to_owned(), "e/s".to_owned(), "e/x/".to_owned()]
    );
}

/// A chmod of a rename's source while the object is being moved waits, then changes the file at
/// its new name; made on the source key, it would be deleted with it (or fail, the key gone).
#[tokio::test]
async fn a_metadata_change_of_the_source_during_a_rename_changes_the_moved_file() {
    let (client, _dir, fs, tmp_ino) = writable_with_object("tmp", "content").await;
    let rename = spawn_rename_held_at_its_copy(&client, &fs, "tmp", "final").await;
    let chmod = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.setxattr(tmp_ino, OsStr::new("user.note"), b"kept", 0).await })
    };
    let_the_others_run().await;
    assert!(!chmod.is_finished(), "the change waits for the rename");
    client.set_stalled(Op::Copy, false);
    rename.await.unwrap().unwrap();
    chmod.await.unwrap().unwrap();
    assert_eq!(client.keys(), vec!["final".to_owned()]);
    let final_ino = lookup_path(&fs, "final").await.unwrap().ino;
    assert_eq!(
        fs.getxattr(final_ino, OsStr::new("user.note")).await.unwrap(),
        b"kept"
    );
}

/// With exact POSIX metadata, a listed file's HEAD that answers "no such key" after this mount
/// created the file again and closed it is not believed either.
#[tokio::test]
async fn an_exact_lookup_whose_not_found_a_create_overtook_answers_with_the_new_file() {
    let (client, _dir, fs, _ahead) = exact_with_f_listed().await;
    client.inner().delete_object("f");
    let lookup = lookup_of_f_answered_late(&fs, &client, 1).await;
    answer_at_once(&client);
    rewrite(&fs, ROOT_INO, "f", b"the new, longer content").await;
    assert_eq!(lookup.await.unwrap().unwrap().size, 23);
}

/// The kernel sends a release after close(2) returns, so a writer's `stat` right after its close
/// races the release that drops the staged file: it must find the staged file or what its upload
/// left in the metadata cache, never the size from before. Many rounds, as the race is narrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stat_racing_the_last_release_never_shows_the_size_before_the_close() {
    let (_client, _dir, fs, ino) = writable_with_file("").await;
    for round in 1..=300u64 {
        let body = vec![b'x'; round as usize];
        let writer = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
        fs.write(writer.handle, 0, &body).await.unwrap();
        fs.flush(writer.handle).await.unwrap();
        let release = {
            let fs = fs.clone();
            tokio::spawn(async move { fs.release(writer.handle).await })
        };
        loop {
            let released = release.is_finished();
            assert_eq!(fs.getattr(ino).await.unwrap().size, round, "round {round}");
            if released {
                break;
            }
        }
    }
}

/// Starts an open of `ino` for reading whose request is sent now and answered `latency` later
/// (describing the bucket as it is now); returns once the request is sent.
async fn open_answered_late(
    fs: &Arc<S3Fs>,
    client: &Arc<Bucket>,
    ino: u64,
    latency: Duration,
) -> tokio::task::JoinHandle<Result<Opened, FsError>> {
    let fs = fs.clone();
    let open = async move { fs.open(ino, libc::O_RDONLY).await };
    sent_now_answered_late(client, latency, 1, open).await
}

/// The requests whose answers [`sent_now_answered_late`] delays.
const LATE_OPS: [Op; 3] = [Op::Get, Op::Head, Op::List];

/// Runs `work`, whose `requests` requests (GET, HEAD, LIST) are sent now and answered `latency`
/// later, describing the bucket as it is now; returns once they are sent.
pub(super) async fn sent_now_answered_late<T: Send + 'static>(
    client: &Bucket,
    latency: Duration,
    requests: u64,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let sent = || LATE_OPS.iter().map(|&op| client.calls(op)).sum::<u64>();
    for op in LATE_OPS {
        client.set_answer_latency(op, latency);
    }
    let before = sent();
    let task = tokio::spawn(work);
    while sent() < before + requests {
        tokio::task::yield_now().await;
    }
    task
}

/// A writer's whole life on `name` in `parent`: opened with `O_TRUNC`, `body` written, closed.
pub(super) async fn rewrite(fs: &S3Fs, parent: u64, name: &str, body: &[u8]) {
    let (_, writer) = fs
        .create(parent, OsStr::new(name), libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(writer.handle, 0, body).await.unwrap();
    fs.flush(writer.handle).await.unwrap();
    fs.release(writer.handle).await;
}

/// Holds every permit of the HEADs a listing starts ahead (exact POSIX metadata), so that they
/// wait and the HEAD a lookup or readdirplus makes of its own is the one that completes an entry.
pub(super) async fn hold_details_ahead(fs: &S3Fs) -> tokio::sync::OwnedSemaphorePermit {
    fs.details_ahead
        .clone()
        .acquire_many_owned(DETAILS_AHEAD as u32)
        .await
        .unwrap()
}

/// Later requests are answered without delay again.
pub(super) fn answer_at_once(client: &Bucket) {
    for op in LATE_OPS {
        client.set_answer_latency(op, Duration::ZERO);
    }
}

#[tokio::test]
async fn the_exit_drain_stops_trying_once_s3_is_found_unreachable() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    for name in ["one", "two", "three"] {
        create_file(&fs, ROOT_INO, name, name.as_bytes()).await;
    }
    client.set_unreachable(true);
    assert_eq!(fs.drain_uploads().await, 3, "none could be uploaded");
    assert_eq!(
        client.calls(Op::Put),
        1,
        "one upload found S3 down; the others stay staged untried"
    );
    client.set_unreachable(false);
    assert_eq!(fs.drain_uploads().await, 0, "with S3 back, every one goes");
    assert_eq!(
        client.keys(),
        vec!["one".to_owned(), "three".into(), "two".into()]
    );
}

#[tokio::test]
async fn a_file_reopened_while_its_last_close_uploads_keeps_its_content() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let (ino, handle) = create_file(&fs, ROOT_INO, "f", b"first").await;
    // The last close's upload is slow: the file is opened again, and appended to, meanwhile.
    client.set_latency(Op::Put, Duration::from_millis(300));
    let closing = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.release(handle).await })
    };
    while client.calls(Op::Put) == 0 {
        tokio::task::yield_now().await;
    }
    let again = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(again.handle, 0, b" and more").await.unwrap();
    closing.await.unwrap();
    client.set_latency(Op::Put, Duration::ZERO);
    assert_eq!(
        client.body("f").as_deref(),
        Some(&b"first"[..]),
        "the first close's upload"
    );
    fs.flush(again.handle).await.unwrap();
    fs.release(again.handle).await;
    assert_eq!(client.body("f").as_deref(), Some(&b"first and more"[..]));
    let read = fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(
        &fs.read(read.handle, 0, 100).await.unwrap()[..],
        b"first and more"
    );
}

#[tokio::test]
async fn a_listing_sent_before_an_unlink_does_not_bring_the_file_back() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "x");
    client.put_object("d/g", "y");
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    lookup_path(&fs, "d/f").await.unwrap();
    // A readdir's page, read from the bucket before the unlink, is still on its way after it.
    client.set_answer_latency(Op::List, Duration::from_millis(300));
    let listed_before = client.counters().list;
    let lister = {
        let fs = fs.clone();
        tokio::spawn(async move { list_names(&fs, d).await })
    };
    while client.counters().list == listed_before {
        tokio::task::yield_now().await;
    }
    client.set_answer_latency(Op::List, Duration::ZERO);
    fs.unlink(d, OsStr::new("f")).await.unwrap();
    let listed = lister.await.unwrap();
    assert!(
        listed.iter().any(|(name, _)| name == "f"),
        "the page predates the unlink: {listed:?}"
    );
    assert_eq!(
        fs.lookup(d, OsStr::new("f")).await.unwrap_err().errno(),
        libc::ENOENT,
        "the older page must not have cached the file again"
    );
    assert_eq!(
        lookup_path(&fs, "d/g").await.unwrap().size,
        1,
        "its other entries are kept"
    );
}

// ---------------------------------------------------------------------------------------------
// Opening for reading: one request

/// Bytes of `len` that differ at every offset a block boundary could misplace.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
}

/// Reads the whole file as the kernel does, 128 KiB at a time.
async fn read_handle(fs: &S3Fs, handle: u64, size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        let chunk = fs.read(handle, data.len() as u64, 128 << 10).await.unwrap();
        assert!(!chunk.is_empty(), "a read before the end returned nothing");
        data.extend_from_slice(&chunk);
    }
    data
}

#[tokio::test]
async fn an_open_for_reading_is_one_get_and_a_small_file_needs_no_other_request() {
    let client = Arc::new(Bucket::memory("b"));
    let body = patterned(100 << 10);
    client.put_object("small.bin", body.clone());
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "small.bin").await.unwrap().ino;
    let (heads, gets) = (client.calls(Op::Head), client.calls(Op::Get));

    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(client.calls(Op::Head) - heads, 0, "the open sends no HEAD");
    assert_eq!(client.calls(Op::Get) - gets, 1, "the open is one GET");
    assert_eq!(read_handle(&fs, handle, body.len()).await, body);
    assert_eq!(fs.read(handle, body.len() as u64, 4096).await.unwrap().len(), 0);
    assert_eq!(
        client.calls(Op::Get) - gets,
        1,
        "the reads are served by the open's GET"
    );
}

#[tokio::test]
async fn a_file_listed_larger_than_a_block_opens_with_a_head() {
    let client = Arc::new(Bucket::memory("b"));
    let body = patterned((3 << 20) + 5);
    client.put_object("big.bin", body.clone());
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "big.bin").await.unwrap().ino;
    let (heads, gets) = (client.calls(Op::Head), client.calls(Op::Get));
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    // How it will be read is not known: a random reader wants no first block.
    assert_eq!(client.calls(Op::Head) - heads, 1, "the open is a HEAD");
    assert_eq!(client.calls(Op::Get) - gets, 0, "and fetches nothing");
    assert_eq!(read_handle(&fs, handle, body.len()).await, body);
    // A backward seek into the first block after reading on.
    assert_eq!(&fs.read(handle, 10, 20).await.unwrap()[..], &body[10..30]);
}

#[tokio::test]
async fn an_empty_file_opens_and_reads_as_empty() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("empty", Vec::<u8>::new());
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "empty").await.unwrap().ino;
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(fs.read(handle, 0, 4096).await.unwrap().len(), 0);
}

#[tokio::test]
async fn an_open_by_get_sees_the_object_replaced_since_the_listing() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "old contents");
    let fs = mount(&client, "");
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    client.put_object("f", "the new contents, longer");
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(
        &fs.read(handle, 0, 4096).await.unwrap()[..],
        b"the new contents, longer"
    );
    let attr = fs.getattr(ino).await.unwrap();
    assert_eq!(attr.size, 24, "the open's answer updates the size");
    fs.release(handle).await;

    // Replaced by a file of several blocks: the open's GET brings the first, reads go on.
    let body = patterned((2 << 20) + 3);
    client.put_object("f", body.clone());
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(read_handle(&fs, handle, body.len()).await, body);
    assert_eq!(fs.getattr(ino).await.unwrap().size, body.len() as u64);
}

#[tokio::test]
async fn an_open_whose_first_block_is_cached_sends_a_head_and_no_get() {
    let client = Arc::new(Bucket::memory("b"));
    let body = patterned(300 << 10);
    client.put_object("f", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let limits = crate::cache::disk::DiskCacheLimits {
        max_bytes: 1 << 30,
        min_free_bytes: 0,
    };
    let disk = Arc::new(crate::cache::disk::DiskCache::open(dir.path(), limits).unwrap());
    let fs = S3Fs::new(client.clone(), config(""), Some(disk.clone()), None);
    let ino = lookup_path(&fs, "f").await.unwrap().ino;
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(read_handle(&fs, handle, body.len()).await, body);
    fs.release(handle).await;
    // The block goes to disk in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk.size() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first block never reached the disk cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (heads, gets) = (client.calls(Op::Head), client.calls(Op::Get));
    let handle = fs.open(ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(read_handle(&fs, handle, body.len()).await, body);
    assert_eq!(
        client.calls(Op::Head) - heads,
        1,
        "a warm open asks S3 with a HEAD"
    );
    assert_eq!(client.calls(Op::Get) - gets, 0, "and reads from the disk cache");
}

// ---------------------------------------------------------------------------------------------
// Complete directories: lookups of new names in a directory this mount just made

/// Head and List calls so far.
fn lookups_sent(client: &Bucket) -> (u64, u64) {
    (client.calls(Op::Head), client.calls(Op::List))
}

#[tokio::test]
async fn copying_files_into_a_new_directory_sends_only_their_puts() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("dst")).await.unwrap_err().errno(),
        libc::ENOENT
    );
    let dst = fs.mkdir(ROOT_INO, OsStr::new("dst")).await.unwrap().ino;
    let before = lookups_sent(&client);
    // As cp does: a lookup that finds nothing, then create, write, close.
    for i in 0..10 {
        let name = format!("f{i}");
        let missing = fs.lookup(dst, OsStr::new(&name)).await.unwrap_err();
        assert_eq!(missing.errno(), libc::ENOENT, "{name} before its create");
        let (_, handle) = create_file(&fs, dst, &name, name.as_bytes()).await;
        fs.flush(handle).await.unwrap();
        fs.release(handle).await;
    }
    let (heads, lists) = lookups_sent(&client);
    // The negative answer mkdir's lookup left is up to a second old: at most one listing page
    // makes it fresh again, and then no request per file.
    assert_eq!(heads - before.0, 0, "no HEAD per new name");
    assert!(
        lists - before.1 <= 1,
        "at most one listing, not one per file: {}",
        lists - before.1
    );
    for i in 0..10 {
        let name = format!("f{i}");
        assert_eq!(
            client.body(&format!("dst/{name}")).as_deref(),
            Some(name.as_bytes())
        );
        let found = fs.lookup(dst, OsStr::new(&name)).await.unwrap();
        assert_eq!(found.size, name.len() as u64, "{name} is found after its upload");
    }
}

#[tokio::test]
async fn a_new_directory_shows_another_writers_key_within_the_negative_ttl() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let dst = fs.mkdir(ROOT_INO, OsStr::new("dst")).await.unwrap().ino;
    client.put_object("dst/theirs", "from another machine");
    // Within the second a negative answer is trusted it may be hidden; after it, never.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let found = fs.lookup(dst, OsStr::new("theirs")).await.unwrap();
    assert_eq!(found.size, 20);
}

#[tokio::test]
async fn names_made_unlinked_or_renamed_in_a_new_directory_are_answered_right() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("elsewhere", "moved in");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let dst = fs.mkdir(ROOT_INO, OsStr::new("dst")).await.unwrap().ino;
    let (_, handle) = create_file(&fs, dst, "a", b"a").await;
    fs.flush(handle).await.unwrap();
    fs.release(handle).await;
    fs.rename(ROOT_INO, OsStr::new("elsewhere"), dst, OsStr::new("b"), 0)
        .await
        .unwrap();
    fs.mkdir(dst, OsStr::new("sub")).await.unwrap();
    assert_eq!(fs.lookup(dst, OsStr::new("a")).await.unwrap().size, 1);
    assert_eq!(fs.lookup(dst, OsStr::new("b")).await.unwrap().size, 8);
    assert_eq!(fs.lookup(dst, OsStr::new("sub")).await.unwrap().kind, Kind::Dir);
    fs.unlink(dst, OsStr::new("a")).await.unwrap();
    assert_eq!(
        fs.lookup(dst, OsStr::new("a")).await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert!(!client.contains("dst/a"));
}

#[tokio::test]
async fn with_metadata_ttl_0_every_lookup_asks_s3() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable_with(
        &client,
        &dir,
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..config("")
        },
    );
    let dst = fs.mkdir(ROOT_INO, OsStr::new("dst")).await.unwrap().ino;
    let before = lookups_sent(&client);
    assert_eq!(
        fs.lookup(dst, OsStr::new("x")).await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(lookups_sent(&client).0 - before.0, 1, "the lookup HEADs");
}
