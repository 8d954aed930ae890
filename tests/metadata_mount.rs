//! Object metadata across writes: the real `s3mount` binary mounted on a real S3 server (Garage on
//! loopback), files changed through the mount with `std::fs`, and every object's headers read
//! back with the harness's own S3 client (HeadObject), never through the daemon.
//!
//! What is checked: a rewrite of an existing object keeps every header it had (Content-Type,
//! Cache-Control, Content-Encoding, Content-Disposition, Content-Language and the user metadata
//! `x-amz-meta-*`), whether the file is appended to (`O_APPEND`), overwritten (`O_TRUNC`),
//! truncated (ftruncate, truncate(2)), uploaded in one PutObject or in parts copied on the
//! server (UploadPartCopy), renamed alone or with its directory, or written again after a
//! remount; a change of content drops the user entry `mtime` (the upload time becomes the
//! modification time) and nothing else, while a rename or an open that writes nothing keeps
//! it; a new file gets a Content-Type from its name and nothing more. Every close is checked:
//! close is where the upload happens. Each test owns a unique key prefix; nothing sleeps to
//! synchronise.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use s3mount::object::ObjectMetadata;

use common::{Mount, TestPrefix, assert_same_bytes, close, pseudo_random};

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Opens `path` with `options`, writes `data` and closes it, failing the test on any error.
fn write_with(options: &OpenOptions, path: &Path, data: &[u8]) {
    let mut file = options
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.write_all(data)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    close(file).unwrap_or_else(|e| panic!("closing {} (the upload): {e}", path.display()));
}

/// Appends `data` to the existing file `path` (`O_APPEND`) and closes it.
fn append(path: &Path, data: &[u8]) {
    write_with(OpenOptions::new().append(true), path, data);
}

/// Creates (or truncates) `path`, writes `data` and closes it.
fn write_file(path: &Path, data: &[u8]) {
    write_with(create_0644().truncate(true), path, data);
}

/// `O_CREAT | O_WRONLY` with mode 0644: the mount's default file mode, so a new file has no
/// mode of its own for the daemon to record, whatever the test's umask (short of one that
/// clears bits of 0644).
fn create_0644() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create(true).mode(0o644);
    options
}

/// truncate(2) by path, with no open handle of ours.
fn truncate_path(path: &Path, size: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let size = libc::off_t::try_from(size).expect("size fits off_t");
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::truncate(c_path.as_ptr(), size) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bucket itself (not the mount) holds exactly `expected` at PREFIX/`relative`.
fn assert_object(prefix: &TestPrefix, relative: &str, expected: &[u8]) {
    match prefix.get(relative) {
        None => panic!("{relative} is not in the bucket"),
        Some(body) => assert_same_bytes(&body, expected, &format!("{relative} in the bucket")),
    }
}

fn assert_no_object(prefix: &TestPrefix, relative: &str) {
    if let Some(head) = prefix.head(relative) {
        panic!("{relative} should not be in the bucket, but is: {head:?}");
    }
}

/// The headers and user metadata of PREFIX/`relative`, as HeadObject reports them.
fn metadata_of(prefix: &TestPrefix, relative: &str) -> ObjectMetadata {
    prefix
        .head(relative)
        .unwrap_or_else(|| panic!("{relative} is not in the bucket"))
        .metadata
}

/// PREFIX/`relative` carries exactly `expected` (every header, every user entry, nothing more).
fn assert_metadata(prefix: &TestPrefix, relative: &str, expected: &ObjectMetadata, when: &str) {
    let got = metadata_of(prefix, relative);
    assert_eq!(&got, expected, "metadata of {relative} {when}");
}

/// `name: value` pairs as user metadata.
fn user(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// An object with every representation header a web asset may carry, and user metadata, one
/// name of it in mixed case (S3 stores names lower-cased: see [`stored`]).
fn rich_metadata(content_type: &str) -> ObjectMetadata {
    ObjectMetadata {
        content_type: Some(content_type.to_owned()),
        cache_control: Some("max-age=0".to_owned()),
        content_encoding: Some("identity".to_owned()),
        content_disposition: Some("attachment; filename=\"site asset\"".to_owned()),
        content_language: Some("en-GB".to_owned()),
        user: user(&[("team", "web"), ("Mixed-Case", "Value Kept As Is")]),
        ..ObjectMetadata::default()
    }
}

/// What S3 stores of `metadata`: the user names lower-cased, the values as they were.
fn stored(metadata: &ObjectMetadata) -> ObjectMetadata {
    metadata.clone().normalized()
}

/// Uploads `body` at PREFIX/`relative` with `metadata` and checks the server kept all of it,
/// so a later failure is the mount's, not the server's. Returns the metadata as stored.
fn put_checked(
    prefix: &TestPrefix,
    relative: &str,
    body: &[u8],
    metadata: &ObjectMetadata,
) -> ObjectMetadata {
    prefix.put_with_metadata(relative, body.to_vec(), metadata);
    let expected = stored(metadata);
    assert_metadata(
        prefix,
        relative,
        &expected,
        "as uploaded by the test (the server's own doing)",
    );
    expected
}

/// Unmounts (waiting for the daemon to exit, so whatever it had to upload is done) and mounts the
/// same prefix again, with `extra`, on a fresh cache: what the new mount shows comes from the
/// bucket.
fn remount(mut mount: Mount, prefix: &TestPrefix, extra: &[&str]) -> Mount {
    mount.unmount_and_wait_for_exit();
    drop(mount);
    Mount::start(&[&prefix.source()], extra)
}

/// The daemon's `get_bytes` counter from the stats line it logs at unmount: the bytes it fetched
/// from S3 over the whole mount.
fn unmount_for_get_bytes(mut mount: Mount) -> u64 {
    mount.unmount_and_wait_for_exit();
    let log = mount.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once("stats: ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one stats line in the log:\n{log}");
    lines[0]
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("get_bytes=")?.parse().ok())
        .unwrap_or_else(|| panic!("no get_bytes=N in the stats line {:?}", lines[0]))
}

// ---------------------------------------------------------------------------------------------
// Rewrites keep the headers

#[test]
fn an_append_keeps_every_header_across_opens_and_remounts() {
    let prefix = TestPrefix::new("m-append");
    let metadata = rich_metadata("text/css");
    let expected = put_checked(&prefix, "site/app.css", b"body {}\n", &metadata);
    assert_eq!(
        expected.user.get("mixed-case").map(String::as_str),
        Some("Value Kept As Is"),
        "S3 lower-cases the name and keeps the value"
    );
    let mount = Mount::start(&[&prefix.source()], &[]);

    append(&mount.join("site/app.css"), b"p {}\n");
    assert_object(&prefix, "site/app.css", b"body {}\np {}\n");
    assert_metadata(&prefix, "site/app.css", &expected, "after an append");

    // Opened again on the same mount: the object it stages now is the daemon's own upload.
    append(&mount.join("site/app.css"), b"a {}\n");
    assert_object(&prefix, "site/app.css", b"body {}\np {}\na {}\n");
    assert_metadata(&prefix, "site/app.css", &expected, "after a second append");

    // A fresh daemon knows only what the bucket holds.
    let mount = remount(mount, &prefix, &[]);
    append(&mount.join("site/app.css"), b"b {}\n");
    assert_object(&prefix, "site/app.css", b"body {}\np {}\na {}\nb {}\n");
    assert_metadata(
        &prefix,
        "site/app.css",
        &expected,
        "after an append on a new mount",
    );
}

#[test]
fn o_trunc_ftruncate_and_truncate_keep_every_header() {
    let prefix = TestPrefix::new("m-trunc");
    let original = b"0123456789 the original content\n";
    let metadata = rich_metadata("text/css");
    let mut expected = BTreeMap::new();
    for name in ["otrunc.css", "ftruncate.css", "truncate.css"] {
        expected.insert(name, put_checked(&prefix, name, original, &metadata));
    }
    let mount = Mount::start(&[&prefix.source()], &[]);

    // O_TRUNC, then a new body: the object is replaced, its headers are not.
    write_with(
        OpenOptions::new().write(true).truncate(true),
        &mount.join("otrunc.css"),
        b"new\n",
    );
    assert_object(&prefix, "otrunc.css", b"new\n");
    assert_metadata(&prefix, "otrunc.css", &expected["otrunc.css"], "after O_TRUNC");

    // ftruncate to a shorter size on a file opened for writing.
    let file = OpenOptions::new()
        .write(true)
        .open(mount.join("ftruncate.css"))
        .expect("opening ftruncate.css for writing");
    file.set_len(10).expect("ftruncate to 10");
    close(file).expect("close (the upload)");
    assert_object(&prefix, "ftruncate.css", &original[..10]);
    assert_metadata(
        &prefix,
        "ftruncate.css",
        &expected["ftruncate.css"],
        "after ftruncate",
    );

    // truncate(2) by path, no handle open: checked after a clean unmount, which must finish
    // whatever is pending, and on a new mount.
    truncate_path(&mount.join("truncate.css"), 4).expect("truncate truncate.css to 4");
    let mount = remount(mount, &prefix, &[]);
    assert_object(&prefix, "truncate.css", &original[..4]);
    assert_metadata(
        &prefix,
        "truncate.css",
        &expected["truncate.css"],
        "after truncate(2)",
    );
    for name in ["otrunc.css", "ftruncate.css"] {
        assert_metadata(&prefix, name, &expected[name], "after the remount");
    }
    assert_same_bytes(
        &std::fs::read(mount.join("truncate.css")).expect("reading truncate.css"),
        &original[..4],
        "truncate.css through the new mount",
    );
}

#[test]
fn a_multipart_append_copies_the_untouched_parts_and_keeps_every_header() {
    let prefix = TestPrefix::new("m-multipart");
    // 12 MiB and a few bytes in 5 MiB parts (S3's smallest): parts 1 and 2 are untouched bytes
    // of the old object, copied on the server; part 3 (2 MiB and the tail) is sent.
    let old = pseudo_random(21, 12 * MIB + 5);
    let metadata = rich_metadata("application/x-tar");
    let expected = put_checked(&prefix, "data/big.bin", &old, &metadata);
    let old_etag = prefix.head("data/big.bin").expect("head big.bin").etag;
    assert!(
        !old_etag.contains('-'),
        "the test object is one PutObject: ETag {old_etag}"
    );
    let mount = Mount::start(&[&prefix.source()], &["--part-size", "5MiB"]);

    append(&mount.join("data/big.bin"), b"tail");
    let mut body = old;
    body.extend_from_slice(b"tail");
    assert_object(&prefix, "data/big.bin", &body);
    let etag = prefix.head("data/big.bin").expect("head big.bin").etag;
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "12 MiB in 5 MiB parts is a multipart upload of 3 parts: ETag {etag}"
    );
    assert_metadata(&prefix, "data/big.bin", &expected, "after a multipart append");

    // Had the first two parts been downloaded and sent back, the daemon would have fetched
    // the whole 12 MiB; copied on the server, it fetched only the last part's old bytes.
    let fetched = unmount_for_get_bytes(mount);
    assert!(
        fetched <= 3 * MIB as u64,
        "the daemon fetched {fetched} bytes: the untouched parts were not copied on the server"
    );
}

// ---------------------------------------------------------------------------------------------
// Renames keep the headers

#[test]
fn a_renamed_file_keeps_every_header() {
    let prefix = TestPrefix::new("m-rename");
    let metadata = rich_metadata("text/css");
    let expected = put_checked(&prefix, "a.css", b"a {}\n", &metadata);
    let expected_open = put_checked(&prefix, "open.css", b"open {}\n", &metadata);
    let mount = Mount::start(&[&prefix.source()], &[]);
    // The copy moves Last-Modified: a rename pins the time the file had in `x-amz-meta-mtime`.
    let modified = prefix.head("a.css").expect("a.css").last_modified;
    let seconds = modified.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut expected = expected;
    expected.user.insert("mtime".into(), seconds.to_string());

    // A file nobody has open: one CopyObject.
    std::fs::rename(mount.join("a.css"), mount.join("b.css")).expect("rename a.css to b.css");
    assert_no_object(&prefix, "a.css");
    assert_object(&prefix, "b.css", b"a {}\n");
    assert_metadata(&prefix, "b.css", &expected, "after a rename");

    // A file open for appending, written and not yet closed: uploaded, then copied.
    let mut file = OpenOptions::new()
        .append(true)
        .open(mount.join("open.css"))
        .expect("opening open.css for appending");
    file.write_all(b"more {}\n").expect("appending");
    std::fs::rename(mount.join("open.css"), mount.join("moved.css")).expect("rename open.css while open");
    close(file).expect("close after the rename");
    assert_no_object(&prefix, "open.css");
    assert_object(&prefix, "moved.css", b"open {}\nmore {}\n");
    // Its time is that of its last write, pinned by the rename: there, then set aside.
    let mut moved = metadata_of(&prefix, "moved.css");
    assert!(
        moved.user.remove("mtime").is_some(),
        "the rename pins the time of the last write"
    );
    assert_eq!(
        moved, expected_open,
        "metadata of moved.css after a rename of an open file"
    );

    let mount = remount(mount, &prefix, &[]);
    assert_metadata(&prefix, "b.css", &expected, "after the remount");
    assert_same_bytes(
        &std::fs::read(mount.join("moved.css")).expect("reading moved.css"),
        b"open {}\nmore {}\n",
        "moved.css through the new mount",
    );
}

/// A file opened with `O_TRUNC` is still the existing object (it keeps its headers when closed
/// under its own name), so a rename before its first upload must not take the Content-Type
/// from the new name the way a new file's does.
#[test]
fn a_file_opened_with_o_trunc_and_renamed_before_close_keeps_every_header() {
    let prefix = TestPrefix::new("m-trunc-rename");
    let metadata = rich_metadata("text/css; charset=utf-8");
    let expected = put_checked(&prefix, "site.css", b"old {}\n", &metadata);
    let mount = Mount::start(&[&prefix.source()], &[]);

    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.join("site.css"))
        .expect("opening site.css with O_TRUNC");
    file.write_all(b"new {}\n").expect("writing");
    std::fs::rename(mount.join("site.css"), mount.join("site-v2.css")).expect("rename site.css while open");
    close(file).expect("close after the rename");
    assert_no_object(&prefix, "site.css");
    assert_object(&prefix, "site-v2.css", b"new {}\n");
    assert_metadata(
        &prefix,
        "site-v2.css",
        &expected,
        "after O_TRUNC, a write and a rename before close",
    );
}

#[test]
fn a_renamed_directory_keeps_each_files_metadata() {
    let prefix = TestPrefix::new("m-rename-dir");
    let one = ObjectMetadata {
        content_type: Some("text/plain".to_owned()),
        user: user(&[("k", "one"), ("Owner", "Ana")]),
        ..ObjectMetadata::default()
    };
    let two = ObjectMetadata {
        content_type: Some("application/json".to_owned()),
        cache_control: Some("no-store".to_owned()),
        user: user(&[("k", "two")]),
        ..ObjectMetadata::default()
    };
    let open = ObjectMetadata {
        content_type: Some("text/css".to_owned()),
        user: user(&[("k", "open")]),
        ..ObjectMetadata::default()
    };
    let one = put_checked(&prefix, "d/one.txt", b"one\n", &one);
    let two = put_checked(&prefix, "d/sub/two.json", b"{\"two\": 2}\n", &two);
    let open = put_checked(&prefix, "d/open.css", b"open {}\n", &open);
    let mount = Mount::start(&[&prefix.source()], &[]);

    // One file of the directory is open and changed: the rename uploads it first.
    let mut file = OpenOptions::new()
        .append(true)
        .open(mount.join("d/open.css"))
        .expect("opening d/open.css for appending");
    file.write_all(b"more {}\n").expect("appending");
    std::fs::rename(mount.join("d"), mount.join("e")).expect("rename d to e");
    close(file).expect("close after the rename");

    let keys: Vec<String> = prefix.list_all().into_iter().filter(|key| key != "e/").collect();
    assert_eq!(keys, ["e/one.txt", "e/open.css", "e/sub/two.json"]);
    assert_object(&prefix, "e/one.txt", b"one\n");
    assert_object(&prefix, "e/sub/two.json", b"{\"two\": 2}\n");
    assert_object(&prefix, "e/open.css", b"open {}\nmore {}\n");
    assert_metadata(&prefix, "e/one.txt", &one, "after the directory rename");
    assert_metadata(&prefix, "e/sub/two.json", &two, "after the directory rename");
    assert_metadata(&prefix, "e/open.css", &open, "after the directory rename");
}

// ---------------------------------------------------------------------------------------------
// The POSIX mtime entry, and new files

#[test]
fn a_content_change_drops_the_mtime_entry_and_keeps_the_rest() {
    let prefix = TestPrefix::new("m-mtime");
    let metadata = ObjectMetadata {
        content_type: Some("text/plain".to_owned()),
        cache_control: Some("max-age=60".to_owned()),
        user: user(&[("mtime", "1600000000"), ("team", "web")]),
        ..ObjectMetadata::default()
    };
    let with_time = stored(&metadata);
    let without_time = ObjectMetadata {
        user: user(&[("team", "web")]),
        ..with_time.clone()
    };
    for name in ["appended.txt", "rewritten.txt", "renamed.txt", "untouched.txt"] {
        put_checked(&prefix, name, b"old\n", &metadata);
    }
    let untouched_etag = prefix.head("untouched.txt").expect("head untouched.txt").etag;
    let mount = Mount::start(&[&prefix.source()], &[]);

    append(&mount.join("appended.txt"), b"new\n");
    assert_object(&prefix, "appended.txt", b"old\nnew\n");
    assert_metadata(&prefix, "appended.txt", &without_time, "after an append");

    write_with(
        OpenOptions::new().write(true).truncate(true),
        &mount.join("rewritten.txt"),
        b"new\n",
    );
    assert_object(&prefix, "rewritten.txt", b"new\n");
    assert_metadata(
        &prefix,
        "rewritten.txt",
        &without_time,
        "after O_TRUNC and a write",
    );

    // Not content changes: a rename, and an open for writing that writes nothing.
    std::fs::rename(mount.join("renamed.txt"), mount.join("moved.txt")).expect("rename renamed.txt");
    assert_metadata(&prefix, "moved.txt", &with_time, "after a rename");
    let file = OpenOptions::new()
        .write(true)
        .open(mount.join("untouched.txt"))
        .expect("opening untouched.txt for writing");
    close(file).expect("close");
    let head = prefix.head("untouched.txt").expect("head untouched.txt");
    assert_eq!(head.etag, untouched_etag, "nothing written, nothing uploaded");
    assert_eq!(head.metadata, with_time, "metadata of untouched.txt");
}

#[test]
fn a_new_file_gets_only_a_content_type_from_its_name() {
    let prefix = TestPrefix::new("m-new");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let css = ObjectMetadata::with_content_type(Some("text/css".to_owned()));

    write_file(&mount.join("x.css"), b"x {}\n");
    assert_object(&prefix, "x.css", b"x {}\n");
    assert_metadata(&prefix, "x.css", &css, "of a new file");

    // Rewritten: it keeps what it got, and gains nothing.
    append(&mount.join("x.css"), b"y {}\n");
    assert_object(&prefix, "x.css", b"x {}\ny {}\n");
    assert_metadata(&prefix, "x.css", &css, "after an append");

    // Renamed before its first upload: the type comes from the name it is uploaded under.
    let mut file = create_0644().open(mount.join("draft")).expect("creating draft");
    file.write_all(b"z {}\n").expect("writing draft");
    std::fs::rename(mount.join("draft"), mount.join("z.css")).expect("rename draft to z.css");
    close(file).expect("close after the rename");
    assert_no_object(&prefix, "draft");
    assert_object(&prefix, "z.css", b"z {}\n");
    assert_metadata(&prefix, "z.css", &css, "of a new file renamed before its upload");
}
