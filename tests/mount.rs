//! Mount tests: the real `s3mount` binary, mounted on a real S3 server (Garage on loopback, from
//! `scripts/s3-server`), checked with `std::fs` and plain shell tools.
//!
//! Every test owns a unique key prefix of the test bucket and mounts only that prefix, so the
//! tests are independent and run in parallel. Mounts are undone by the [`Mount`] guard even when a
//! test fails. Nothing here sleeps to synchronise: conditions are polled with a bound.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use common::metrics::{MetricsEndpoint, Scrape};
use common::{
    Mount, TestPrefix, assert_fails_before_mount, is_mounted, names, pseudo_random, settings, tree,
    wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Expected tree (relative path -> `None` for a directory, `Some(size)` for a file) of a set of
/// uploaded objects, directories implied by their keys (and by `dir/` markers).
fn expected_tree(objects: &[(&str, Vec<u8>)]) -> BTreeMap<String, Option<u64>> {
    let mut tree = BTreeMap::new();
    for (key, body) in objects {
        let path = key.trim_end_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            tree.insert(dir.to_string_lossy().into_owned(), None);
            parent = dir.parent();
        }
        let value = if key.ends_with('/') {
            None
        } else {
            Some(body.len() as u64)
        };
        tree.insert(path.to_owned(), value);
    }
    tree
}

/// A small tree with nested prefixes, an explicit directory marker, an empty file and odd names.
fn small_tree() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("README.txt", b"This bucket is mounted by s3mount.\n".to_vec()),
        (
            "2021/doc-example-bucket/math/john.txt",
            b"John: 3 + 4 = 7\n".to_vec(),
        ),
        (
            "2021/doc-example-bucket/math/jane.txt",
            b"Jane: 6 * 7 = 42\n".to_vec(),
        ),
        (
            "2021/doc-example-bucket/art/notes.md",
            b"# Art\n\nSketches.\n".to_vec(),
        ),
        ("2021/summary.csv", b"name,score\njohn,7\njane,42\n".to_vec()),
        (
            "images/cat.json",
            br#"{"name": "cat", "label": "tabby"}"#.to_vec(),
        ),
        (
            "images/dog.json",
            br#"{"name": "dog", "label": "corgi"}"#.to_vec(),
        ),
        ("data/shard-0000.bin", pseudo_random(7, 300 * KIB + 17)),
        ("empty.bin", Vec::new()),
        ("explicit-dir/", Vec::new()),
        ("name with spaces.txt", b"spaces\n".to_vec()),
        ("unicode-\u{e9}t\u{e9}.txt", "\u{e9}t\u{e9}\n".as_bytes().to_vec()),
    ]
}

fn upload(prefix: &TestPrefix, objects: &[(&str, Vec<u8>)]) {
    for (key, body) in objects {
        prefix.put(key, body.clone());
    }
}

fn within(a: SystemTime, b: SystemTime, tolerance: Duration) -> bool {
    let difference = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .expect("one order holds");
    difference <= tolerance
}

// ---------------------------------------------------------------------------------------------
// The namespace

/// `find` over a tree of directories, as a dataset's class folders are walked: every file is
/// found, and each directory is listed once (the first pages of the directories the walk goes to
/// next are asked for ahead of it, and used when it gets there, not asked for again).
#[test]
fn find_over_a_tree_finds_every_file_and_lists_each_directory_once() {
    let prefix = TestPrefix::new("walk");
    let (dirs, files) = (12, 25);
    for d in 0..dirs {
        for f in 0..files {
            prefix.put(&format!("tree/d{d:02}/f{f:02}"), "x");
        }
    }
    let endpoint = MetricsEndpoint::on_free_port();
    let addr = endpoint.arg();
    let mount = Mount::start(&[&prefix.source()], &["--metrics-addr", &addr]);
    let before = endpoint.wait_until_answering(&mount);
    let output = Command::new("find")
        .arg(mount.join("tree"))
        .args(["-type", "f"])
        .output()
        .expect("running find");
    assert!(
        output.status.success(),
        "find: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut found: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.rsplit('/').take(2).collect::<Vec<_>>().join("<"))
        .collect();
    found.sort();
    let mut expected: Vec<String> = (0..dirs)
        .flat_map(|d| (0..files).map(move |f| format!("f{f:02}<d{d:02}")))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
    let lists = |scrape: &Scrape| scrape.sum("s3mount_s3_requests_total", &[("operation", "ListObjectsV2")]);
    let after = endpoint.scrape(&mount);
    // The lookup of `tree` (one LIST of a key, beside its HEAD), its listing, one per directory.
    assert_eq!(
        lists(&after) - lists(&before),
        (2 + dirs) as f64,
        "{}",
        after.show("s3mount_s3_requests_total")
    );
}

#[test]
fn tree_shows_names_kinds_sizes_contents_and_mtimes() {
    let prefix = TestPrefix::new("tree");
    let objects = small_tree();
    upload(&prefix, &objects);
    let mount = Mount::start(&[&prefix.source()], &[]);

    assert_eq!(tree(mount.path()), expected_tree(&objects), "tree of the mount");
    assert_eq!(
        names(mount.path()),
        [
            "2021",
            "README.txt",
            "data",
            "empty.bin",
            "explicit-dir",
            "images",
            "name with spaces.txt",
            "unicode-\u{e9}t\u{e9}.txt"
        ]
    );
    assert_eq!(
        names(&mount.join("2021/doc-example-bucket/math")),
        ["jane.txt", "john.txt"]
    );
    assert!(
        names(&mount.join("explicit-dir")).is_empty(),
        "an empty directory marker is an empty dir"
    );

    let now = SystemTime::now();
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    for (key, body) in &objects {
        let path = mount.join(key.trim_end_matches('/'));
        let metadata = std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        assert_eq!((metadata.uid(), metadata.gid()), (uid, gid), "owner of {key}");
        if key.ends_with('/') {
            assert!(metadata.is_dir(), "{key} is a directory");
            assert_eq!(
                metadata.permissions().mode() & 0o7777,
                0o755,
                "default mode of {key}"
            );
            continue;
        }
        assert!(metadata.is_file(), "{key} is a file");
        assert_eq!(metadata.len(), body.len() as u64, "size of {key}");
        assert_eq!(
            metadata.blocks(),
            (body.len() as u64).div_ceil(512),
            "st_blocks of {key}, for du"
        );
        assert_eq!(
            metadata.permissions().mode() & 0o7777,
            0o644,
            "default mode of {key}"
        );
        let mtime = metadata.modified().expect("mtime");
        assert!(
            within(mtime, now, Duration::from_secs(60)),
            "mtime of {key} is {mtime:?}, now is {now:?}"
        );
        let content = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            content == *body,
            "content of {key} differs from what was uploaded"
        );
    }
    let john = mount.join("2021/doc-example-bucket/math/john.txt");
    assert_eq!(
        std::fs::read_to_string(&john).expect("reading john.txt"),
        "John: 3 + 4 = 7\n"
    );
    for dir in ["2021", "2021/doc-example-bucket", "images", "data"] {
        assert!(
            std::fs::metadata(mount.join(dir)).expect("stat dir").is_dir(),
            "{dir} is a directory"
        );
    }
    assert_eq!(
        std::fs::metadata(mount.join("no-such-file"))
            .map_err(|e| e.kind())
            .err(),
        Some(io::ErrorKind::NotFound)
    );

    for dir in [
        mount.path().to_owned(),
        mount.join("2021/doc-example-bucket/math"),
    ] {
        let output = Command::new("ls")
            .arg("-l")
            .arg(&dir)
            .output()
            .expect("running ls");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ls -l {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        for name in names(&dir) {
            assert!(
                stdout.contains(&name),
                "ls -l {} does not list {name:?}:\n{stdout}",
                dir.display()
            );
        }
    }
}

#[test]
fn prefix_forms_show_the_same_tree() {
    let prefix = TestPrefix::new("prefix-forms");
    let objects = vec![
        ("top.txt", b"top\n".to_vec()),
        ("sub/inner.txt", b"inner\n".to_vec()),
        ("sub/deeper/leaf.bin", pseudo_random(1, 4099)),
    ];
    upload(&prefix, &objects);
    // A sibling outside the prefix sharing its leading characters must not show up.
    let sibling = TestPrefix::new("prefix-forms-sibling");
    sibling.put("outside.txt", b"no".to_vec());
    let expected = expected_tree(&objects);

    let bucket = prefix.bucket();
    let trimmed = prefix.prefix_trimmed();
    let forms: [(&str, Vec<String>); 4] = [
        ("s3://B/P/", vec![format!("s3://{bucket}/{trimmed}/")]),
        ("s3://B/P", vec![format!("s3://{bucket}/{trimmed}")]),
        ("B:/P", vec![format!("{bucket}:/{trimmed}")]),
        (
            "B --prefix P",
            vec![bucket.to_owned(), "--prefix".to_owned(), trimmed.to_owned()],
        ),
    ];
    for (form, args) in &forms {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mount = Mount::start(&args, &[]);
        assert_eq!(tree(mount.path()), expected, "tree when mounted as {form}");
        assert_eq!(
            std::fs::read(mount.join("sub/inner.txt")).expect("reading"),
            b"inner\n",
            "{form}"
        );
    }
}

#[test]
fn large_object_reads_back_intact() {
    let prefix = TestPrefix::new("large");
    let size = 64 * MIB;
    let data = pseudo_random(64, size);
    let expected = sha256(&data);
    prefix.put("big.bin", data);
    let mount = Mount::start(&[&prefix.source()], &[]);

    let path = mount.join("big.bin");
    assert_eq!(std::fs::metadata(&path).expect("stat big.bin").len(), size as u64);
    let mut hasher = Sha256::new();
    let copied =
        io::copy(&mut File::open(&path).expect("opening big.bin"), &mut hasher).expect("reading big.bin");
    assert_eq!(copied, size as u64, "bytes read");
    let got: [u8; 32] = hasher.finalize().into();
    if got != expected {
        // Say where it went wrong, to tell a stale block from a shifted one.
        let data = pseudo_random(64, size);
        let read = std::fs::read(&path).expect("reading big.bin again");
        let first = data.iter().zip(&read).position(|(a, b)| a != b);
        panic!("sha256 of big.bin through the mount differs; first differing byte at {first:?}");
    }
}

#[test]
fn keys_that_cannot_be_paths_are_hidden() {
    let prefix = TestPrefix::new("bad-keys");
    let long = "n".repeat(256);
    let good: Vec<(String, Vec<u8>)> = vec![
        ("good.txt".into(), b"good\n".to_vec()),
        ("dir/ok.txt".into(), b"ok\n".to_vec()),
        ("m".repeat(255), b"255 bytes is allowed\n".to_vec()),
    ];
    // Keys that cannot be paths. Garage (2.x) stores each of them verbatim: the upload below
    // fails the test if it refuses one, and the listing check makes sure none was normalised.
    let bad: Vec<String> = vec![
        "bad/a//b".into(),       // empty component: `a` is a directory whose only key is hidden
        "bad/./x".into(),        // `.` component
        "bad/../y".into(),       // `..` component
        format!("bad/{long}"),   // a 256-byte file name
        format!("bad/{long}/z"), // a 256-byte directory name
        "marker/".into(),        // a directory marker with a body
        "bad/marker/".into(),
    ];
    for (key, body) in &good {
        prefix.put(key, body.clone());
    }
    for key in &bad {
        if let Err(error) = prefix.try_put(key, b"data that cannot be shown\n".to_vec()) {
            panic!("Garage refused key {key:?} ({error}); drop it from this test and say so here");
        }
    }
    let mut stored = prefix.list_all();
    stored.sort();
    let mut uploaded: Vec<String> = good
        .iter()
        .map(|(k, _)| k.clone())
        .chain(bad.iter().cloned())
        .collect();
    uploaded.sort();
    assert_eq!(stored, uploaded, "the server stored the keys verbatim");

    let mount = Mount::start(&[&prefix.source()], &[]);
    // `bad` and `marker` exist as prefixes of other keys, so they are directories; what is under
    // them cannot be shown. The 255-byte name is the longest allowed and shows.
    assert_eq!(
        names(mount.path()),
        ["bad", "dir", "good.txt", "marker", "m".repeat(255).as_str()]
    );
    assert_eq!(names(&mount.join("bad")), ["a", "marker"]);
    assert!(
        names(&mount.join("bad/a")).is_empty(),
        "bad/a holds only the key with `//`"
    );
    assert!(
        names(&mount.join("marker")).is_empty(),
        "a marker with a body is not a file"
    );
    assert!(
        names(&mount.join("bad/marker")).is_empty(),
        "a marker with a body is not a file"
    );
    for (key, body) in &good {
        assert_eq!(
            std::fs::read(mount.join(key)).unwrap_or_else(|e| panic!("reading {key}: {e}")),
            *body
        );
    }
    let too_long = std::fs::metadata(mount.join(&format!("bad/{long}"))).expect_err("a 256-byte name");
    assert_eq!(too_long.raw_os_error(), Some(libc::ENAMETOOLONG));

    // The daemon survived all of that and still serves.
    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1, "one daemon for the mount: {pids:?}");
    assert!(is_mounted(mount.path()));
    assert_eq!(
        std::fs::read(mount.join("good.txt")).expect("reading good.txt again"),
        b"good\n"
    );
}

#[test]
fn a_name_that_is_both_file_and_prefix_is_a_directory() {
    let prefix = TestPrefix::new("file-and-prefix");
    prefix.put("a", b"the file a\n".to_vec());
    prefix.put("a/b", b"the file a/b\n".to_vec());
    prefix.put("c/", Vec::new());
    prefix.put("c", b"the file c\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);

    assert_eq!(names(mount.path()), ["a", "c"]);
    let expected: BTreeMap<String, Option<u64>> = [
        ("a".to_owned(), None),
        ("a/b".to_owned(), Some(13)),
        ("c".to_owned(), None),
    ]
    .into();
    assert_eq!(tree(mount.path()), expected);
    assert!(std::fs::metadata(mount.join("a")).expect("stat a").is_dir());
    assert!(
        std::fs::metadata(mount.join("c")).expect("stat c").is_dir(),
        "an explicit marker also wins"
    );
    assert_eq!(
        std::fs::read(mount.join("a/b")).expect("reading a/b"),
        b"the file a/b\n"
    );
    let read_dir_as_file = std::fs::read(mount.join("a")).expect_err("a is a directory");
    assert_eq!(read_dir_as_file.raw_os_error(), Some(libc::EISDIR));
}

// ---------------------------------------------------------------------------------------------
// Errors before anything is mounted

/// `s3mount SOURCE MOUNTPOINT` against the test server, plus `extra`.
fn mount_command(source: &str, mount_point: &Path, extra: &[&str]) -> Command {
    let mut command = common::s3mount_command();
    command
        .arg(source)
        .arg(mount_point)
        .args(common::endpoint_args())
        .args(extra);
    command
}

fn empty_dir() -> (TempDir, std::path::PathBuf) {
    settings(); // First, before this test starts anything (see `common::load_settings`).
    let dir = TempDir::new().expect("temporary directory");
    let path = dir.path().canonicalize().expect("canonical path");
    (dir, path)
}

#[test]
fn error_missing_bucket() {
    let (_dir, mount_point) = empty_dir();
    let bucket = format!("s3mount-no-such-bucket-{}", std::process::id());
    let command = mount_command(&bucket, &mount_point, &[]);
    assert_fails_before_mount(command, &mount_point, &["does not exist", &bucket]);
}

#[test]
fn error_access_denied() {
    let (_dir, mount_point) = empty_dir();
    let s = settings();
    let mut command = mount_command(&s.bucket, &mount_point, &[]);
    command
        .env("AWS_ACCESS_KEY_ID", &s.denied_access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s.denied_secret_access_key);
    assert_fails_before_mount(command, &mount_point, &["access denied"]);
}

#[test]
fn error_unreachable_endpoint() {
    let (_dir, mount_point) = empty_dir();
    let s = settings();
    let mut command = common::s3mount_command();
    // Port 1 (tcpmux) is privileged and unused: the connection is refused at once.
    command.arg(&s.bucket).arg(&mount_point).args([
        "--endpoint-url",
        "http://127.0.0.1:1",
        "--force-path-style",
        "--region",
        &s.region,
    ]);
    let started = std::time::Instant::now();
    assert_fails_before_mount(command, &mount_point, &["cannot reach"]);
    // The probe tries 3 times within 5 s, whatever --max-attempts says: a typo in the endpoint
    // fails the mount at once, not after a minute of retries.
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(8),
        "refused, yet the mount took {took:?} to fail"
    );
}

#[test]
fn error_mount_point_missing() {
    let (dir, _) = empty_dir();
    let mount_point = dir.path().join("missing");
    let command = mount_command(&settings().bucket, &mount_point, &[]);
    assert_fails_before_mount(command, &mount_point, &["does not exist", "missing"]);
    assert!(!mount_point.exists(), "the mount point must not be created");
}

#[test]
fn error_mount_point_not_a_directory() {
    let (dir, _) = empty_dir();
    let mount_point = dir.path().join("file");
    std::fs::write(&mount_point, b"a file").expect("creating a file");
    let command = mount_command(&settings().bucket, &mount_point, &[]);
    assert_fails_before_mount(command, &mount_point, &["is not a directory"]);
}

#[test]
fn error_mount_point_not_empty() {
    let (_dir, mount_point) = empty_dir();
    std::fs::write(mount_point.join("something"), b"x").expect("creating a file");
    let command = mount_command(&settings().bucket, &mount_point, &[]);
    assert_fails_before_mount(command, &mount_point, &["is not empty"]);
}

#[test]
fn error_bad_option_values_are_usage_errors() {
    let (_dir, mount_point) = empty_dir();
    for bad in [
        ["--file-mode", "999"],
        ["--dir-mode", "rwxr-xr-x"],
        ["--metadata-ttl", "soon"],
        ["--uid", "nobody"],
    ] {
        let output = common::run_bounded(mount_command(&settings().bucket, &mount_point, &bad));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: exit status; stderr: {stderr}"
        );
        assert!(
            stderr.contains("error:") && stderr.contains(bad[0]),
            "{bad:?}: stderr: {stderr}"
        );
        assert!(!is_mounted(&mount_point), "{bad:?} mounted something");
    }
}

// ---------------------------------------------------------------------------------------------
// Writes, statfs, options

#[test]
fn read_only_option_sets_the_kernel_flag() {
    let prefix = TestPrefix::new("read-only");
    prefix.put("f.txt", b"f\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &["--read-only"]);
    let info = common::mount_at(mount.path()).expect("mounted");
    assert!(
        info.options.split(',').any(|o| o == "ro"),
        "mount options {:?} lack ro",
        info.options
    );
    let error = File::create(mount.join("new.txt")).expect_err("create on a read-only mount");
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    assert_eq!(std::fs::read(mount.join("f.txt")).expect("reading"), b"f\n");
}

#[test]
fn df_works() {
    let prefix = TestPrefix::new("df");
    prefix.put("f.txt", b"f\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let output = Command::new("df").arg(mount.path()).output().expect("running df");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&*mount.path().to_string_lossy()),
        "df names the mount point:\n{stdout}"
    );
    let statvfs = nix_statvfs(mount.path());
    assert!(
        statvfs.f_bavail > 0 && statvfs.f_blocks > 0,
        "df reports space: {stdout}"
    );
}

fn nix_statvfs(path: &Path) -> libc::statvfs {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    unsafe {
        let mut buffer: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c_path.as_ptr(), &mut buffer),
            0,
            "statvfs: {}",
            io::Error::last_os_error()
        );
        buffer
    }
}

#[test]
fn owner_and_mode_options_apply() {
    let prefix = TestPrefix::new("modes");
    prefix.put("dir/f.txt", b"f\n".to_vec());
    let mount = Mount::start(
        &[&prefix.source()],
        &[
            "--uid",
            "1234",
            "--gid",
            "4321",
            "--file-mode",
            "0640",
            "--dir-mode",
            "750",
        ],
    );
    let file = std::fs::metadata(mount.join("dir/f.txt")).expect("stat file");
    let dir = std::fs::metadata(mount.join("dir")).expect("stat dir");
    for (what, metadata, mode) in [("file", &file, 0o640), ("dir", &dir, 0o750)] {
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (1234, 4321),
            "owner of the {what}"
        );
        assert_eq!(metadata.permissions().mode() & 0o7777, mode, "mode of the {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// Consistency and concurrency

#[test]
fn an_object_replaced_while_open_fails_the_old_handle() {
    let prefix = TestPrefix::new("replaced");
    let old = pseudo_random(1, 8 * MIB);
    // A different size, too: a new open must see the new size, not the kernel's cached one.
    let new = pseudo_random(2, 8 * MIB + 4321);
    prefix.put("f.bin", old.clone());
    let mount = Mount::start(&[&prefix.source()], &[]);

    let file = File::open(mount.join("f.bin")).expect("opening f.bin");
    // No kernel read-ahead on this handle: a read far from the first one must reach the daemon,
    // rather than be served from pages the kernel fetched of the old object in advance.
    // SAFETY: a valid open descriptor; the advice only changes caching.
    let advice = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(advice, 0, "posix_fadvise");
    let mut first = vec![0; 4 * KIB];
    file.read_exact_at(&mut first, 0).expect("first read");
    assert!(first == old[..4 * KIB], "first read returns the old object");

    prefix.put("f.bin", new.clone());

    let mut later = vec![0; 4 * KIB];
    let offset = 6 * MIB;
    match file.read_exact_at(&mut later, offset as u64) {
        Err(error) => assert!(
            matches!(error.raw_os_error(), Some(libc::ESTALE) | Some(libc::EIO)),
            "a read of a replaced object fails with ESTALE or EIO, not {error}"
        ),
        Ok(()) if later == new[offset..offset + 4 * KIB] => {
            panic!("the old handle returned bytes of the new object")
        }
        Ok(()) if later == old[offset..offset + 4 * KIB] => {
            panic!("the old handle returned old bytes the daemon cannot have fetched before the replace")
        }
        Ok(()) => panic!("the old handle returned bytes of neither version"),
    }
    drop(file);

    let reread = std::fs::read(mount.join("f.bin")).expect("reading f.bin after a new open");
    assert_eq!(reread.len(), new.len(), "a new open sees the new size");
    assert!(reread == new, "a new open reads the new content");
}

#[test]
fn changes_by_another_writer_show_up() {
    let prefix = TestPrefix::new("other-writer");
    prefix.put("f.txt", b"version 1\n".to_vec());
    // The default metadata TTL (60 s): what must show up at once does not depend on it.
    let mount = Mount::start(&[&prefix.source()], &[]);
    assert_eq!(names(mount.path()), ["f.txt"]);
    assert_eq!(
        std::fs::metadata(mount.join("f.txt")).expect("stat f.txt").len(),
        10
    );
    let missing = std::fs::metadata(mount.join("new.txt")).expect_err("new.txt does not exist yet");
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));

    prefix.put("new.txt", b"new\n".to_vec());
    prefix.put("f.txt", b"version 2, longer\n".to_vec());

    // Listings are never cached: a new key is listed at once.
    assert_eq!(names(mount.path()), ["f.txt", "new.txt"]);
    // A "does not exist" answer is trusted for a bounded time (1 s) only.
    wait_until("new.txt can be looked up", || mount.join("new.txt").exists());
    assert_eq!(
        std::fs::read(mount.join("new.txt")).expect("reading new.txt"),
        b"new\n"
    );
    // Close-to-open: a new open sees the new object, its new size included, even though the
    // kernel was told the old size (stat above) less than a metadata TTL ago, and the listing
    // above already saw the new version.
    assert_eq!(
        std::fs::read_to_string(mount.join("f.txt")).expect("reading f.txt"),
        "version 2, longer\n",
        "a new open must read the whole new object, not the new bytes cut to the old size"
    );
    assert_eq!(
        std::fs::metadata(mount.join("f.txt")).expect("stat f.txt").len(),
        18
    );
}

#[test]
fn stat_completes_while_a_large_read_runs() {
    let prefix = TestPrefix::new("concurrency");
    let big = pseudo_random(3, 32 * MIB);
    let big_hash = sha256(&big);
    prefix.put("big.bin", big);
    let small: Vec<String> = (0..16).map(|i| format!("small/f{i:02}.txt")).collect();
    for (i, key) in small.iter().enumerate() {
        prefix.put(key, vec![b'x'; i + 1]);
    }
    // TTL 0: every stat goes to the daemon and on to S3, so it competes with the reads.
    let mount = Mount::start(&[&prefix.source()], &["--metadata-ttl", "0"]);

    let started = Arc::new(AtomicBool::new(false));
    let reader = {
        let path = mount.join("big.bin");
        let started = started.clone();
        std::thread::spawn(move || -> io::Result<[u8; 32]> {
            let mut file = File::open(path)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0; MIB];
            let mut first = true;
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    return Ok(hasher.finalize().into());
                }
                hasher.update(&buffer[..n]);
                if first {
                    first = false;
                    started.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    wait_until("the reader has read its first MiB", || {
        started.load(Ordering::SeqCst) || reader.is_finished()
    });
    let mut rounds = 0;
    while rounds == 0 || !reader.is_finished() {
        for (i, key) in small.iter().enumerate() {
            let metadata = std::fs::metadata(mount.join(key)).unwrap_or_else(|e| panic!("stat {key}: {e}"));
            assert!(
                metadata.is_file() && metadata.len() == i as u64 + 1,
                "{key}: {metadata:?}"
            );
        }
        assert_eq!(names(&mount.join("small")).len(), small.len());
        rounds += 1;
    }
    let got = reader.join().expect("reader thread").expect("reading big.bin");
    assert!(
        got == big_hash,
        "big.bin read intact while stats ran ({rounds} rounds of stats)"
    );
}

// ---------------------------------------------------------------------------------------------
// The process

#[test]
fn sigterm_unmounts_a_foreground_mount_and_exits_0() {
    let prefix = TestPrefix::new("sigterm-fg");
    prefix.put("f.txt", b"f\n".to_vec());
    let mut mount = Mount::foreground(&[&prefix.source()], &[]);
    assert_eq!(std::fs::read(mount.join("f.txt")).expect("reading f.txt"), b"f\n");

    let child = mount.child().expect("foreground child");
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: signalling our own child, which has not been waited for yet.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill: {}",
        io::Error::last_os_error()
    );
    let status = common::wait_for_exit(child, "s3mount --foreground after SIGTERM");
    mount.assert_stopped_cleanly(status, "after SIGTERM");
}

/// Sends `signal` to the daemon of a background mount: the mount must go away and the daemon exit.
fn signal_unmounts_a_background_mount(name: &str, signal: libc::c_int) {
    let prefix = TestPrefix::new(name);
    prefix.put("f.txt", b"f\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    assert_eq!(std::fs::read(mount.join("f.txt")).expect("reading f.txt"), b"f\n");

    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    let pid = pids[0];
    // SAFETY: signalling the daemon this test started.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill: {}",
        io::Error::last_os_error()
    );
    wait_until("the mount is gone after the signal", || !is_mounted(mount.path()));
    wait_until("the daemon has exited after the signal", || {
        !common::process_alive(pid)
    });
}

#[test]
fn sigterm_unmounts_a_background_mount() {
    signal_unmounts_a_background_mount("sigterm-bg", libc::SIGTERM);
}

#[test]
fn sigint_unmounts_a_background_mount() {
    signal_unmounts_a_background_mount("sigint-bg", libc::SIGINT);
}

#[test]
fn fusermount_unmount_stops_the_daemon() {
    let prefix = TestPrefix::new("fusermount");
    prefix.put("f.txt", b"f\n".to_vec());
    let mut mount = Mount::start(&[&prefix.source()], &[]);
    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    mount.unmount();
    wait_until("the daemon has exited after the unmount", || {
        !common::process_alive(pids[0])
    });
}

#[test]
fn help_mentions_every_option() {
    let output: Output = common::run_s3mount(&[OsStr::new("--help")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "--help: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for option in [
        "SOURCE",
        "MOUNTPOINT",
        "--prefix",
        "--region",
        "--endpoint-url",
        "--force-path-style",
        "--profile",
        "--no-sign-request",
        "--read-only",
        "--uid",
        "--gid",
        "--file-mode",
        "--dir-mode",
        "--allow-other",
        "-f, --foreground",
        "--metadata-ttl",
        "--log-level",
        "--log-file",
    ] {
        assert!(
            stdout.contains(option),
            "--help does not mention {option}:\n{stdout}"
        );
    }
}
