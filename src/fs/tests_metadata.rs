//! Unit tests of object metadata through the file system: extended attributes, POSIX attributes
//! kept in `x-amz-meta-*`, symlinks, and the rules of `headers` (copy onto itself, staged files).
//! Every test checks what the bucket stores (through the client), not only what the file system
//! says, and what it costs in requests.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::tests::{config, readdir_to_end, writable, writable_with};
use super::*;
use crate::object::Op;
use crate::object::fault::FaultClient;
use crate::object::memory::{MemoryClient, RequestCounts};

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;

/// A time Last-Modified is backdated to, so a change of it shows: 2020-09-13T12:26:40Z.
const OLD: u64 = 1_600_000_000;

/// A read-only file system over `client`, with nothing cached: what another mount sees.
fn fresh(client: &Arc<Bucket>, config: FsConfig) -> S3Fs {
    S3Fs::new(client.clone(), config, None, None)
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

async fn ino_of(fs: &S3Fs, path: &str) -> u64 {
    lookup_path(fs, path).await.unwrap().ino
}

async fn list_dir(fs: &S3Fs, ino: u64) -> Vec<(String, Kind)> {
    let handle = fs.opendir(ino).await.unwrap();
    let entries = readdir_to_end(fs, ino, handle, 0).await;
    fs.releasedir(handle);
    entries
        .into_iter()
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| (e.name, e.kind))
        .collect()
}

/// User metadata from pairs.
fn user(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// User metadata for `put_object_with`.
fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    user(pairs).into_iter().collect()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// What the bucket holds at `key` (one HEAD, counted: take counts before).
async fn stored(client: &Bucket, key: &str) -> ObjectHead {
    client.head(key).await.unwrap()
}

/// The names a listxattr answer holds.
fn names(listed: &[u8]) -> Vec<String> {
    assert_eq!(listed.last(), Some(&0), "every name NUL-terminated");
    listed
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8(name.to_vec()).unwrap())
        .collect()
}

/// Requests that write anything to the bucket.
fn writes(counts: &RequestCounts) -> u64 {
    counts.put
        + counts.copy
        + counts.delete
        + counts.create_multipart
        + counts.upload_part
        + counts.upload_part_copy
        + counts.complete_multipart
}

/// Name-value pairs of user metadata.
type Pairs = &'static [(&'static str, &'static str)];

fn os(name: &str) -> &OsStr {
    OsStr::new(name)
}

async fn set(fs: &S3Fs, ino: u64, name: &str, value: &[u8]) -> Result<(), FsError> {
    fs.setxattr(ino, os(name), value, 0).await
}

async fn get(fs: &S3Fs, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
    fs.getxattr(ino, os(name)).await
}

fn errno<T: std::fmt::Debug>(result: Result<T, FsError>) -> i32 {
    result.unwrap_err().errno()
}

fn chmod(perm: u32) -> AttrChange {
    AttrChange {
        perm: Some(perm),
        ..AttrChange::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Extended attributes

#[tokio::test]
async fn user_attributes_round_trip_on_a_file() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "data", Some("text/csv"), meta(&[("owner", "ml")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    assert_eq!(get(&fs, ino, "user.owner").await.unwrap(), b"ml");
    // Names are lower-cased, as S3 stores them, and found in any case.
    set(&fs, ino, "user.Team", b"vision").await.unwrap();
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.user.get("team").map(String::as_str), Some("vision"));
    assert!(!head.metadata.user.contains_key("Team"));
    assert_eq!(head.metadata.user.get("owner").map(String::as_str), Some("ml"));
    assert_eq!(get(&fs, ino, "user.TEAM").await.unwrap(), b"vision");
    assert_eq!(get(&fs, ino, "user.team").await.unwrap(), b"vision");
    let listed = names(&fs.listxattr(ino).await.unwrap());
    assert!(listed.contains(&"user.team".to_owned()), "{listed:?}");
    assert!(listed.contains(&"user.owner".to_owned()), "{listed:?}");
    assert!(
        !listed.iter().any(|name| name == "user.mtime"),
        "the pinned mtime is stat's: {listed:?}"
    );
    // Another mount sees it.
    let other = fresh(&client, config(""));
    let other_ino = ino_of(&other, "f").await;
    assert_eq!(get(&other, other_ino, "user.team").await.unwrap(), b"vision");
    // Removed, in S3 too.
    fs.removexattr(ino, os("user.TEAM")).await.unwrap();
    let head = stored(&client, "f").await;
    assert!(
        !head.metadata.user.contains_key("team"),
        "{:?}",
        head.metadata.user
    );
    assert_eq!(head.metadata.user.get("owner").map(String::as_str), Some("ml"));
    assert_eq!(errno(get(&fs, ino, "user.team").await), libc::ENODATA);
    assert!(!names(&fs.listxattr(ino).await.unwrap()).contains(&"user.team".to_owned()));
    assert_eq!(
        client.body("f").as_deref(),
        Some(&b"data"[..]),
        "the bytes never change"
    );
}

#[tokio::test]
async fn user_attributes_on_directories_with_and_without_a_marker() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("marked/", "");
    client.put_object("marked/x", "x");
    client.put_object("bare/x", "x");
    client.put_object("other/x", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);

    // With a marker: copied onto itself.
    let marked = ino_of(&fs, "marked").await;
    client.reset_counters();
    set(&fs, marked, "user.team", b"ml").await.unwrap();
    let counts = client.counters();
    assert_eq!((counts.head, counts.copy, counts.put), (1, 1, 0));
    let head = stored(&client, "marked/").await;
    assert_eq!(head.metadata.user.get("team").map(String::as_str), Some("ml"));
    assert_eq!(head.size, 0);
    assert_eq!(get(&fs, marked, "user.team").await.unwrap(), b"ml");
    assert_eq!(get(&fs, marked, "user.s3.key").await.unwrap(), b"marked/");
    assert!(names(&fs.listxattr(marked).await.unwrap()).contains(&"user.team".to_owned()));
    fs.removexattr(marked, os("user.team")).await.unwrap();
    assert!(
        !stored(&client, "marked/")
            .await
            .metadata
            .user
            .contains_key("team")
    );

    // Without: the marker is created, carrying the attribute.
    let bare = ino_of(&fs, "bare").await;
    assert!(!client.contains("bare/"));
    // A removal that fails creates nothing.
    assert_eq!(errno(fs.removexattr(bare, os("user.nope")).await), libc::ENODATA);
    assert!(!client.contains("bare/"), "no marker for a change refused");
    client.reset_counters();
    set(&fs, bare, "user.team", b"nlp").await.unwrap();
    let counts = client.counters();
    assert_eq!((counts.put, counts.copy), (1, 0), "one PUT of the marker");
    assert_eq!(client.body("bare/").as_deref(), Some(&b""[..]));
    let head = stored(&client, "bare/").await;
    assert_eq!(head.metadata.user.get("team").map(String::as_str), Some("nlp"));
    assert_eq!(get(&fs, bare, "user.team").await.unwrap(), b"nlp");
    assert_eq!(lookup_path(&fs, "bare").await.unwrap().kind, Kind::Dir);
    assert_eq!(client.body("bare/x").as_deref(), Some(&b"x"[..]));
    // Another mount sees it on the marker, and removes it there.
    let other = fresh(&client, config(""));
    let other_bare = ino_of(&other, "bare").await;
    assert_eq!(get(&other, other_bare, "user.team").await.unwrap(), b"nlp");
    fs.removexattr(bare, os("user.team")).await.unwrap();
    assert!(client.contains("bare/"), "the marker stays");
    assert!(!stored(&client, "bare/").await.metadata.user.contains_key("team"));

    // A directory without marker and without attributes lists only its key.
    let other_dir = ino_of(&fs, "other").await;
    assert_eq!(names(&fs.listxattr(other_dir).await.unwrap()), ["user.s3.key"]);
    assert_eq!(errno(get(&fs, other_dir, "user.team").await), libc::ENODATA);

    // The bucket's root has no object to keep anything on.
    assert_eq!(errno(set(&fs, ROOT_INO, "user.team", b"x").await), libc::EPERM);
    assert!(!client.contains(""));
}

#[tokio::test]
async fn names_s3_cannot_carry_are_einval_and_posix_names_are_hidden() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with(
        "f",
        "x",
        None,
        meta(&[
            ("mode", "33188"),
            ("uid", "1000"),
            ("mtime", "1600000000"),
            ("ok", "1"),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let before = stored(&client, "f").await;
    client.reset_counters();
    let bad: [&[u8]; 9] = [
        b"user.",
        b"user.a b",
        b"user.caf\xc3\xa9",
        b"user.x\xff",
        b"user.a:b",
        b"user.mode",
        b"user.UID",
        b"user.mtime",
        b"user.--symlink-target",
    ];
    for name in bad {
        let name = OsStr::from_bytes(name);
        assert_eq!(
            errno(fs.setxattr(ino, name, b"v", 0).await),
            libc::EINVAL,
            "{name:?}"
        );
        assert_eq!(errno(fs.removexattr(ino, name).await), libc::EINVAL, "{name:?}");
    }
    assert_eq!(
        client.counters(),
        RequestCounts::default(),
        "refused without a request"
    );
    // The POSIX entries are stat's: not attributes, though S3 has them.
    assert_eq!(errno(get(&fs, ino, "user.mode").await), libc::ENODATA);
    assert_eq!(errno(get(&fs, ino, "user.a b").await), libc::ENODATA);
    let listed = names(&fs.listxattr(ino).await.unwrap());
    assert!(listed.contains(&"user.ok".to_owned()));
    for hidden in ["user.mode", "user.uid", "user.mtime"] {
        assert!(
            !listed.iter().any(|name| name == hidden),
            "{hidden} in {listed:?}"
        );
    }
    assert_eq!(stored(&client, "f").await, before, "nothing changed");
}

#[tokio::test]
async fn values_of_any_bytes_round_trip() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "x", None, meta(&[("legacy", "=?UTF-8?B?Y2Fmw6k=?=")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    // S3's own encoding of non-ASCII metadata (another writer's) reads decoded.
    assert_eq!(get(&fs, ino, "user.legacy").await.unwrap(), "café".as_bytes());
    set(&fs, ino, "user.plain", b"hello world").await.unwrap();
    assert_eq!(
        stored(&client, "f")
            .await
            .metadata
            .user
            .get("plain")
            .map(String::as_str),
        Some("hello world"),
        "printable ASCII is stored as it is"
    );
    let values: [(&str, &[u8]); 6] = [
        ("binary", b"\x00\x01binary\xff\x7f"),
        ("utf8", "caf\u{e9} \u{2615} \u{1f600}".as_bytes()),
        ("empty", b""),
        ("padded", b" padded "),
        ("looks", b"=?UTF-8?B?aGk=?="),
        ("newline", b"two\nlines"),
    ];
    for (name, value) in values {
        set(&fs, ino, &format!("user.{name}"), value).await.unwrap();
    }
    let head = stored(&client, "f").await;
    let other = fresh(&client, config(""));
    let other_ino = ino_of(&other, "f").await;
    for (name, value) in values {
        let kept = head.metadata.user.get(name).unwrap();
        assert!(
            kept.starts_with("=?UTF-8?B?") && kept.ends_with("?="),
            "{name}: {kept:?}"
        );
        assert!(
            kept.bytes().all(|b| (0x21..0x7f).contains(&b)),
            "{name}: {kept:?}"
        );
        assert_eq!(
            get(&fs, ino, &format!("user.{name}")).await.unwrap(),
            value,
            "{name}"
        );
        assert_eq!(
            get(&other, other_ino, &format!("user.{name}")).await.unwrap(),
            value,
            "{name}"
        );
    }
}

#[tokio::test]
async fn create_and_replace_flags_give_eexist_and_enodata() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let create = libc::XATTR_CREATE;
    let replace = libc::XATTR_REPLACE;
    assert_eq!(
        errno(fs.setxattr(ino, os("user.a"), b"1", replace).await),
        libc::ENODATA
    );
    assert!(!stored(&client, "f").await.metadata.user.contains_key("a"));
    fs.setxattr(ino, os("user.a"), b"1", create).await.unwrap();
    assert_eq!(
        stored(&client, "f")
            .await
            .metadata
            .user
            .get("a")
            .map(String::as_str),
        Some("1")
    );
    client.reset_counters();
    assert_eq!(
        errno(fs.setxattr(ino, os("user.A"), b"2", create).await),
        libc::EEXIST
    );
    assert_eq!(client.counters().copy, 0, "a refused change copies nothing");
    fs.setxattr(ino, os("user.a"), b"2", replace).await.unwrap();
    assert_eq!(
        stored(&client, "f")
            .await
            .metadata
            .user
            .get("a")
            .map(String::as_str),
        Some("2")
    );
    fs.setxattr(ino, os("user.a"), b"3", 0).await.unwrap();
    assert_eq!(
        stored(&client, "f")
            .await
            .metadata
            .user
            .get("a")
            .map(String::as_str),
        Some("3")
    );
    fs.removexattr(ino, os("user.a")).await.unwrap();
    client.reset_counters();
    assert_eq!(errno(fs.removexattr(ino, os("user.a")).await), libc::ENODATA);
    assert_eq!(client.counters().copy, 0);
    // A content header exists when the object has it (S3 always gives a content type).
    let header = os("user.s3.content_type");
    assert_eq!(
        errno(fs.setxattr(ino, header, b"text/csv", create).await),
        libc::EEXIST
    );
    fs.setxattr(ino, header, b"text/csv", replace).await.unwrap();
    assert_eq!(
        stored(&client, "f").await.metadata.content_type.as_deref(),
        Some("text/csv")
    );
    let absent = os("user.s3.content_language");
    assert_eq!(
        errno(fs.setxattr(ino, absent, b"en", replace).await),
        libc::ENODATA
    );
    assert_eq!(errno(fs.removexattr(ino, absent).await), libc::ENODATA);
    fs.setxattr(ino, absent, b"en", create).await.unwrap();
    assert_eq!(
        stored(&client, "f").await.metadata.content_language.as_deref(),
        Some("en")
    );
}

#[tokio::test]
async fn user_metadata_past_2_kib_is_e2big() {
    let client = Arc::new(Bucket::memory("b"));
    // The mtime is there already: the change adds nothing else.
    client.put_object_with("f", "x", None, meta(&[("mtime", "1600000000")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let limit = crate::object::MAX_USER_METADATA_BYTES;
    assert_eq!(limit, 2048);
    let room = limit - "mtime1600000000".len() - "big".len();
    client.reset_counters();
    assert_eq!(
        errno(set(&fs, ino, "user.big", &vec![b'x'; room + 1]).await),
        libc::E2BIG
    );
    assert_eq!(client.counters().copy, 0, "refused before the copy");
    set(&fs, ino, "user.big", &vec![b'x'; room]).await.unwrap();
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.user_bytes(), limit, "exactly at the limit");
    assert_eq!(head.metadata.user.get("big").map(String::len), Some(room));
    // One more entry, even empty, is past it.
    assert_eq!(errno(set(&fs, ino, "user.c", b"").await), libc::E2BIG);
    assert_eq!(
        stored(&client, "f").await.metadata.user_bytes(),
        limit,
        "unchanged"
    );
}

#[tokio::test]
async fn the_limit_counts_the_mtime_a_change_pins() {
    let client = Arc::new(Bucket::memory("b"));
    // No mtime kept yet: the change pins one (`mtime` + 10 digits) on top of the attribute.
    client.put_object("f", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let full = vec![b'x'; crate::object::MAX_USER_METADATA_BYTES - "big".len()];
    match set(&fs, ino, "user.big", &full).await {
        Ok(()) => {
            let head = stored(&client, "f").await;
            assert!(
                head.metadata.user_fits(),
                "S3 refuses (MetadataTooLarge) what the mount sent: {} bytes of user metadata",
                head.metadata.user_bytes()
            );
        }
        Err(error) => assert_eq!(error.errno(), libc::E2BIG),
    }
}

#[tokio::test]
async fn chmod_of_a_file_with_full_metadata_never_sends_too_much() {
    let client = Arc::new(Bucket::memory("b"));
    let full = "x".repeat(crate::object::MAX_USER_METADATA_BYTES - "big".len());
    client.put_object_with("g", "x", None, meta(&[("big", &full)]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "g").await;
    // The change adds `mode` (and the pinned mtime) to metadata already at the limit.
    match fs.setattr_all(ino, None, &chmod(0o600), None).await {
        Ok(_) => {
            let head = stored(&client, "g").await;
            assert!(
                head.metadata.user_fits(),
                "S3 refuses (MetadataTooLarge) what the mount sent: {} bytes of user metadata",
                head.metadata.user_bytes()
            );
        }
        Err(error) => assert_eq!(error.errno(), libc::E2BIG),
    }
}

#[tokio::test]
async fn system_attributes_show_the_objects_headers() {
    let client = Arc::new(Bucket::memory("b"));
    let metadata = ObjectMetadata {
        content_type: Some("text/csv".into()),
        cache_control: Some("max-age=60".into()),
        ..ObjectMetadata::default()
    };
    let etag = client.put_object_with_metadata("pre/d/k.csv", "12345", &metadata);
    client.set_last_modified("pre/d/k.csv", at(OLD));
    let fs = fresh(&client, config("pre/"));
    let ino = ino_of(&fs, "d/k.csv").await;
    client.reset_counters();
    let value = |name: &'static str| {
        let fs = &fs;
        async move { String::from_utf8(get(fs, ino, name).await.unwrap()).unwrap() }
    };
    assert_eq!(value("user.s3.etag").await, etag);
    assert_eq!(value("user.s3.size").await, "5");
    assert_eq!(value("user.s3.key").await, "pre/d/k.csv", "the key, not the path");
    assert_eq!(value("user.s3.last_modified").await, "2020-09-13T12:26:40Z");
    assert_eq!(value("user.s3.content_type").await, "text/csv");
    assert_eq!(value("user.s3.cache_control").await, "max-age=60");
    assert_eq!(value("user.s3.storage_class").await, "STANDARD");
    assert_eq!(value("user.S3.Size").await, "5", "names in any case");
    assert_eq!(
        errno(get(&fs, ino, "user.s3.content_encoding").await),
        libc::ENODATA
    );
    assert_eq!(errno(get(&fs, ino, "user.s3.nope").await), libc::ENODATA);
    let listed = names(&fs.listxattr(ino).await.unwrap());
    for name in [
        "user.s3.key",
        "user.s3.etag",
        "user.s3.size",
        "user.s3.last_modified",
        "user.s3.storage_class",
        "user.s3.content_type",
        "user.s3.cache_control",
    ] {
        assert!(listed.contains(&name.to_owned()), "{name} not in {listed:?}");
    }
    assert!(!listed.iter().any(|name| name == "user.s3.refresh"));
    assert!(!listed.iter().any(|name| name == "user.s3.content_encoding"));
    assert_eq!(client.counters().head, 0, "the lookup's HEAD answers them all");
    // The ETag and Last-Modified agree with S3's.
    let head = stored(&client, "pre/d/k.csv").await;
    assert_eq!(head.etag, etag);
    assert_eq!(head.last_modified, at(OLD));
}

#[tokio::test]
async fn system_attributes_are_read_only_but_the_content_headers() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "x", Some("text/plain"), meta(&[("team", "ml")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let before = stored(&client, "f").await;
    client.reset_counters();
    for name in [
        "user.s3.etag",
        "user.s3.size",
        "user.s3.key",
        "user.s3.last_modified",
        "user.s3.version_id",
        "user.s3.checksum_crc32c",
        "user.s3.storage_class",
        "user.s3.sse",
        "user.s3.sse_kms_key_id",
        "user.s3.made_up",
    ] {
        assert_eq!(errno(set(&fs, ino, name, b"1").await), libc::EPERM, "{name}");
        assert_eq!(errno(fs.removexattr(ino, os(name)).await), libc::EPERM, "{name}");
    }
    assert_eq!(writes(&client.counters()), 0);
    assert_eq!(stored(&client, "f").await, before, "nothing changed");
    // The content headers are set on S3.
    let headers: [(&str, &str); 5] = [
        ("content_type", "application/json"),
        ("cache_control", "no-cache"),
        ("content_encoding", "gzip"),
        ("content_disposition", "attachment; filename=\"f.json\""),
        ("content_language", "en-GB"),
    ];
    for (name, value) in headers {
        set(&fs, ino, &format!("user.s3.{name}"), value.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            get(&fs, ino, &format!("user.s3.{name}")).await.unwrap(),
            value.as_bytes()
        );
    }
    let head = stored(&client, "f").await;
    let m = &head.metadata;
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.cache_control.as_deref(), Some("no-cache"));
    assert_eq!(m.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(
        m.content_disposition.as_deref(),
        Some("attachment; filename=\"f.json\"")
    );
    assert_eq!(m.content_language.as_deref(), Some("en-GB"));
    assert_eq!(
        m.user.get("team").map(String::as_str),
        Some("ml"),
        "user entries kept"
    );
    assert_eq!(client.body("f").as_deref(), Some(&b"x"[..]));
    // A value a header cannot carry is refused.
    assert_eq!(
        errno(set(&fs, ino, "user.s3.cache_control", b"a\nb").await),
        libc::EINVAL
    );
    assert_eq!(
        errno(set(&fs, ino, "user.s3.content_language", "fran\u{e7}ais".as_bytes()).await),
        libc::EINVAL
    );
    // Removed from S3.
    fs.removexattr(ino, os("user.s3.cache_control")).await.unwrap();
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.cache_control, None);
    assert_eq!(head.metadata.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(errno(get(&fs, ino, "user.s3.cache_control").await), libc::ENODATA);
}

#[tokio::test]
async fn foreign_namespaces_are_enotsup_to_set_and_enodata_to_read() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    client.reset_counters();
    // Features this file system does not have are not supported even to read (so `ls -l` stops
    // asking); any other foreign name is merely not there.
    for (name, read) in [
        ("security.selinux", libc::ENOTSUP),
        ("system.posix_acl_access", libc::ENOTSUP),
        ("system.posix_acl_default", libc::ENOTSUP),
        ("security.capability", libc::ENODATA),
        ("trusted.overlay.opaque", libc::ENODATA),
        ("team", libc::ENODATA),
    ] {
        assert_eq!(errno(set(&fs, ino, name, b"v").await), libc::ENOTSUP, "{name}");
        assert_eq!(
            errno(fs.removexattr(ino, os(name)).await),
            libc::ENOTSUP,
            "{name}"
        );
        assert_eq!(errno(get(&fs, ino, name).await), read, "{name}");
    }
    assert_eq!(client.counters(), RequestCounts::default());
}

#[tokio::test]
async fn writing_refresh_drops_the_cached_metadata() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "x", None, meta(&[("team", "a")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    assert_eq!(get(&fs, ino, "user.team").await.unwrap(), b"a");
    // Another machine changes the metadata.
    client.put_object_with("f", "x", None, meta(&[("team", "b")]));
    client.reset_counters();
    assert_eq!(
        get(&fs, ino, "user.team").await.unwrap(),
        b"a",
        "cached for the TTL"
    );
    assert_eq!(client.counters().head, 0);
    set(&fs, ino, "user.s3.refresh", b"1").await.unwrap();
    assert_eq!(writes(&client.counters()), 0, "refresh writes nothing");
    assert_eq!(get(&fs, ino, "user.team").await.unwrap(), b"b");
    assert_eq!(client.counters().head, 1, "asked S3 again");
    assert_eq!(errno(get(&fs, ino, "user.s3.refresh").await), libc::ENODATA);
}

// ---------------------------------------------------------------------------------------------
// The one metadata-change path

#[tokio::test]
async fn a_change_is_one_head_and_one_copy_and_keeps_every_other_header() {
    let client = Arc::new(Bucket::memory("b"));
    let metadata = ObjectMetadata {
        content_type: Some("text/csv".into()),
        cache_control: Some("max-age=60".into()),
        content_encoding: Some("identity".into()),
        content_disposition: Some("inline".into()),
        content_language: Some("en".into()),
        storage_class: Some("STANDARD_IA".into()),
        sse: Some("AES256".into()),
        sse_kms_key_id: None,
        user: user(&[("team", "ml"), ("uid", "7"), ("note", "=?UTF-8?B?Y2Fmw6k=?=")]),
    };
    let body = vec![7u8; 100_000];
    client.put_object_with_metadata("f", body.clone(), &metadata);
    client.set_last_modified("f", at(OLD));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    client.reset_counters();
    set(&fs, ino, "user.owner", b"me").await.unwrap();
    let counts = client.counters();
    assert_eq!(
        (counts.head, counts.copy, counts.put, counts.get, counts.list),
        (1, 1, 0, 0, 0),
        "{counts:?}"
    );
    assert_eq!(writes(&counts), 1);
    assert_eq!(
        (counts.get_bytes, counts.put_bytes),
        (0, 0),
        "the bytes never leave S3"
    );
    let head = stored(&client, "f").await;
    let mut expected = metadata.clone();
    expected.user.insert("owner".into(), "me".into());
    // chmod must not move the mtime: the old Last-Modified is kept in `mtime`.
    expected.user.insert("mtime".into(), OLD.to_string());
    assert_eq!(head.metadata, expected);
    assert_eq!(client.body("f").as_deref(), Some(&body[..]));
    assert!(head.last_modified > at(OLD), "the copy is the change time");
    let attr = fs.getattr(ino).await.unwrap();
    assert_eq!(attr.mtime, at(OLD), "mtime unchanged");
    assert!(attr.ctime > at(OLD), "ctime moved");
    assert_eq!(attr.uid, 7);
    // A second change keeps the pinned time as it is.
    set(&fs, ino, "user.owner", b"you").await.unwrap();
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata.user.get("mtime").map(String::as_str),
        Some("1600000000")
    );
    assert_eq!(head.metadata.user.get("owner").map(String::as_str), Some("you"));
    let other = fresh(&client, config(""));
    assert_eq!(lookup_path(&other, "f").await.unwrap().mtime, at(OLD));
}

#[tokio::test]
async fn a_change_that_changes_nothing_writes_nothing() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with(
        "f",
        "x",
        Some("text/csv"),
        meta(&[
            ("team", "ml"),
            ("mode", "33188"),
            ("uid", "7"),
            ("bin", "=?UTF-8?B?AAE=?="),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let before = stored(&client, "f").await;
    client.reset_counters();
    set(&fs, ino, "user.team", b"ml").await.unwrap();
    set(&fs, ino, "user.bin", b"\x00\x01").await.unwrap();
    set(&fs, ino, "user.s3.content_type", b"text/csv").await.unwrap();
    fs.setattr_all(
        ino,
        None,
        &AttrChange {
            perm: Some(0o644),
            uid: Some(7),
            ..AttrChange::default()
        },
        None,
    )
    .await
    .unwrap();
    let counts = client.counters();
    assert_eq!(writes(&counts), 0, "{counts:?}");
    // Each change reads the object's current headers (to compare and to copy on a condition):
    // one HEAD each, nothing more.
    assert!(counts.head <= 4, "{counts:?}");
    assert_eq!(stored(&client, "f").await, before, "not even Last-Modified moved");
}

#[tokio::test]
async fn a_replace_between_head_and_copy_restarts_from_a_fresh_head() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "old content", Some("text/plain"), meta(&[("legacy", "1")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(writable(&client, &dir));
    let ino = ino_of(&fs, "f").await;
    client.reset_counters();
    // The copy waits; meanwhile another writer replaces the object.
    client.set_stalled(Op::Copy, true);
    let change = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.setxattr(ino, os("user.team"), b"ours", 0).await })
    };
    while client.calls(Op::Copy) == 0 {
        tokio::task::yield_now().await;
    }
    client.put_object_with("f", "new content", Some("text/html"), meta(&[("owner", "them")]));
    client.set_last_modified("f", at(OLD + 100));
    client.set_stalled(Op::Copy, false);
    change.await.unwrap().unwrap();
    let counts = client.counters();
    assert_eq!((counts.head, counts.copy, counts.put), (2, 2, 0), "{counts:?}");
    assert_eq!(
        client.body("f").as_deref(),
        Some(&b"new content"[..]),
        "never the old content back"
    );
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.content_type.as_deref(), Some("text/html"));
    assert_eq!(
        head.metadata.user,
        user(&[("owner", "them"), ("team", "ours"), ("mtime", "1600000100")]),
        "the new object's headers plus the change, and nothing of the old ones"
    );
    assert_eq!(get(&fs, ino, "user.team").await.unwrap(), b"ours");
    assert_eq!(errno(get(&fs, ino, "user.legacy").await), libc::ENODATA);
    assert_eq!(fs.getattr(ino).await.unwrap().size, 11);
}

#[tokio::test]
async fn a_change_replaced_on_every_attempt_gives_up_and_leaves_the_object() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "theirs");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let before = stored(&client, "f").await;
    client.reset_counters();
    client.fail_next(Op::Copy, 100, ObjectError::PreconditionFailed("f".into()));
    let error = set(&fs, ino, "user.team", b"ours").await.unwrap_err();
    let attempts = client.calls(Op::Copy);
    assert_eq!(error.errno(), libc::ESTALE);
    assert!(
        (2..=5).contains(&attempts),
        "a few attempts, then a stop: {attempts}"
    );
    assert_eq!(client.counters().head, attempts, "a fresh HEAD before each copy");
    assert_eq!(client.counters().put, 0);
    assert_eq!(stored(&client, "f").await, before);
}

// ---------------------------------------------------------------------------------------------
// POSIX attributes

#[tokio::test]
async fn chmod_chown_and_utimens_persist_in_s3fs_headers() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with(
        "f",
        "data",
        Some("text/csv"),
        meta(&[("mode", "33261"), ("team", "ml")]),
    );
    client.set_last_modified("f", at(OLD));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    assert_eq!(fs.getattr(ino).await.unwrap().perm, 0o755);
    client.reset_counters();
    let attr = fs.setattr_all(ino, None, &chmod(0o644), None).await.unwrap();
    let counts = client.counters();
    assert_eq!((counts.head, counts.copy, counts.put, counts.get), (1, 1, 0, 0));
    assert_eq!(attr.perm, 0o644);
    assert_eq!(attr.mtime, at(OLD), "chmod does not move the mtime");
    assert!(attr.ctime > at(OLD), "it moves the ctime");
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata.user,
        user(&[("mode", "33188"), ("team", "ml"), ("mtime", "1600000000")])
    );
    assert_eq!(head.metadata.content_type.as_deref(), Some("text/csv"));
    // chown: owner and group.
    let owner = AttrChange {
        uid: Some(42),
        gid: Some(43),
        ..AttrChange::default()
    };
    let attr = fs.setattr_all(ino, None, &owner, None).await.unwrap();
    assert_eq!((attr.uid, attr.gid), (42, 43));
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.user.get("uid").map(String::as_str), Some("42"));
    assert_eq!(head.metadata.user.get("gid").map(String::as_str), Some("43"));
    // utimensat: nanoseconds kept as s3fs writes them.
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 500_000_000);
    let atime = at(1_500_000_100);
    let times = AttrChange {
        mtime: Some(mtime),
        atime: Some(atime),
        ..AttrChange::default()
    };
    let attr = fs.setattr_all(ino, None, &times, None).await.unwrap();
    assert_eq!((attr.mtime, attr.atime), (mtime, atime));
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata.user.get("mtime").map(String::as_str),
        Some("1500000000.500000000")
    );
    assert_eq!(
        head.metadata.user.get("atime").map(String::as_str),
        Some("1500000100")
    );
    assert_eq!(head.metadata.user.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(client.body("f").as_deref(), Some(&b"data"[..]));
    // getattr, here and on another mount.
    let here = fs.getattr(ino).await.unwrap();
    let there = lookup_path(&fresh(&client, config("")), "f").await.unwrap();
    assert!(here.ctime >= head.last_modified, "the change time");
    assert_eq!(there.ctime, head.last_modified, "ctime is Last-Modified");
    for attr in [here, there] {
        assert_eq!((attr.perm, attr.uid, attr.gid), (0o644, 42, 43));
        assert_eq!((attr.mtime, attr.atime), (mtime, atime));
        assert_eq!(attr.kind, Kind::File);
    }
}

#[tokio::test]
async fn chmod_of_a_directory_keeps_the_mode_on_its_marker() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("d/", "", None, meta(&[("mode", "16832")]));
    client.put_object("d/x", "x");
    client.put_object("bare/x", "x");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let d = lookup_path(&fs, "d").await.unwrap();
    assert_eq!((d.kind, d.perm), (Kind::Dir, 0o700), "the marker's mode");
    let attr = fs.setattr_all(d.ino, None, &chmod(0o755), None).await.unwrap();
    assert_eq!(attr.perm, 0o755);
    assert_eq!(
        stored(&client, "d/")
            .await
            .metadata
            .user
            .get("mode")
            .map(String::as_str),
        Some("16877")
    );
    // A directory without a marker gets one.
    let bare = ino_of(&fs, "bare").await;
    let owner = AttrChange {
        perm: Some(0o750),
        uid: Some(5),
        ..AttrChange::default()
    };
    let attr = fs.setattr_all(bare, None, &owner, None).await.unwrap();
    assert_eq!((attr.kind, attr.perm, attr.uid), (Kind::Dir, 0o750, 5));
    let head = stored(&client, "bare/").await;
    assert_eq!(head.size, 0);
    assert_eq!(
        head.metadata.user.get("mode").map(String::as_str),
        Some((libc::S_IFDIR | 0o750).to_string().as_str())
    );
    assert_eq!(head.metadata.user.get("uid").map(String::as_str), Some("5"));
    let other = fresh(&client, config(""));
    let seen = lookup_path(&other, "bare").await.unwrap();
    assert_eq!((seen.kind, seen.perm, seen.uid), (Kind::Dir, 0o750, 5));
    assert_eq!(lookup_path(&other, "d").await.unwrap().perm, 0o755);
}

#[tokio::test]
async fn with_posix_metadata_off_changes_are_accepted_and_not_kept() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "x", None, meta(&[("mode", "33152"), ("uid", "7")]));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.posix_metadata = PosixMetadata::Off;
    let fs = writable_with(&client, &dir, cfg);
    let attr = lookup_path(&fs, "f").await.unwrap();
    assert_eq!((attr.perm, attr.uid), (0o644, 1000), "stored attributes ignored");
    let before = stored(&client, "f").await;
    client.reset_counters();
    let change = AttrChange {
        perm: Some(0o600),
        uid: Some(9),
        gid: Some(9),
        atime: Some(at(OLD)),
        mtime: Some(at(OLD)),
    };
    let attr = fs.setattr_all(attr.ino, None, &change, None).await.unwrap();
    assert_eq!(client.counters(), RequestCounts::default(), "no request");
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o644, 1000, 1000));
    assert_eq!(stored(&client, "f").await, before, "nothing kept");
    // A new file records no owner nor mode.
    let creator = Creator {
        uid: 7,
        gid: 8,
        perm: 0o600,
    };
    let (_, opened) = fs
        .create_as(
            ROOT_INO,
            os("new"),
            libc::O_WRONLY | libc::O_CREAT,
            None,
            Some(creator),
        )
        .await
        .unwrap();
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    assert_eq!(stored(&client, "new").await.metadata.user, BTreeMap::new());
    // Extended attributes still work, and no mtime is pinned.
    let ino = ino_of(&fs, "f").await;
    set(&fs, ino, "user.team", b"ml").await.unwrap();
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata.user,
        user(&[("mode", "33152"), ("uid", "7"), ("team", "ml")])
    );
}

#[tokio::test]
async fn headers_other_tools_wrote_show_after_lookup() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with(
        "s3fs",
        "x",
        None,
        meta(&[
            ("mode", "33261"),
            ("uid", "1000"),
            ("gid", "0x3e8"),
            ("mtime", "1600000000.5"),
        ]),
    );
    client.put_object_with(
        "rclone",
        "x",
        None,
        meta(&[
            ("mode", "0100600"),
            ("mtime", "1600000000.123456789123"),
            ("atime", "1600000001"),
        ]),
    );
    client.put_object_with("sdir/", "", None, meta(&[("mode", "16832"), ("gid", "20")]));
    let mut cfg = config("");
    (cfg.uid, cfg.gid) = (0, 0);
    let fs = fresh(&client, cfg);
    let s3fs = lookup_path(&fs, "s3fs").await.unwrap();
    let half = UNIX_EPOCH + Duration::new(OLD, 500_000_000);
    assert_eq!(
        (s3fs.kind, s3fs.perm, s3fs.uid, s3fs.gid),
        (Kind::File, 0o755, 1000, 1000)
    );
    assert_eq!(
        (s3fs.mtime, s3fs.atime),
        (half, half),
        "atime defaults to the mtime"
    );
    assert_eq!(s3fs.ctime, stored(&client, "s3fs").await.last_modified);
    let rclone = lookup_path(&fs, "rclone").await.unwrap();
    assert_eq!(
        (rclone.perm, rclone.uid, rclone.gid),
        (0o600, 0, 0),
        "octal, as strtoul reads"
    );
    assert_eq!(rclone.mtime, UNIX_EPOCH + Duration::new(OLD, 123_456_789));
    assert_eq!(rclone.atime, at(OLD + 1));
    let sdir = lookup_path(&fs, "sdir").await.unwrap();
    assert_eq!((sdir.kind, sdir.perm, sdir.gid), (Kind::Dir, 0o700, 20));
}

#[tokio::test]
async fn bad_posix_values_fall_back_to_defaults() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with(
        "bad",
        "x",
        None,
        meta(&[
            ("mode", "rw-r--r--"),
            ("uid", "-1"),
            ("gid", ""),
            ("mtime", "yesterday"),
            ("atime", "1e9"),
        ]),
    );
    client.set_last_modified("bad", at(OLD));
    client.put_object_with("huge", "x", None, meta(&[("uid", "4294967296"), ("mode", "0x")]));
    let fs = fresh(&client, config(""));
    let bad = lookup_path(&fs, "bad").await.unwrap();
    assert_eq!(
        (bad.kind, bad.perm, bad.uid, bad.gid),
        (Kind::File, 0o644, 1000, 1000)
    );
    assert_eq!((bad.mtime, bad.atime, bad.ctime), (at(OLD), at(OLD), at(OLD)));
    let huge = lookup_path(&fs, "huge").await.unwrap();
    assert_eq!((huge.perm, huge.uid), (0o644, 1000));
}

#[tokio::test]
async fn lazy_shows_defaults_for_listed_entries_without_a_head() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("d/f", "x", None, meta(&[("mode", "33152"), ("uid", "7")]));
    let fs = fresh(&client, config(""));
    let d = ino_of(&fs, "d").await;
    assert_eq!(list_dir(&fs, d).await.len(), 1);
    client.reset_counters();
    let f = fs.lookup(d, os("f")).await.unwrap();
    assert_eq!((f.perm, f.uid), (0o644, 1000), "the listing's defaults");
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm, 0o644);
    assert_eq!(client.counters().head, 0, "no HEAD per listed entry");
    // Looked at closely: the stored attributes from then on.
    fs.listxattr(f.ino).await.unwrap();
    assert_eq!(client.counters().head, 1);
    let f = fs.lookup(d, os("f")).await.unwrap();
    assert_eq!((f.perm, f.uid), (0o600, 7));
}

#[tokio::test]
async fn exact_heads_a_listed_entry_on_lookup() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("d/f", "x", None, meta(&[("mode", "33152"), ("uid", "7")]));
    client.put_object_with("d/g", "", None, meta(&[("--symlink-target", "f")]));
    let mut cfg = config("");
    cfg.posix_metadata = PosixMetadata::Exact;
    let fs = fresh(&client, cfg);
    let d = ino_of(&fs, "d").await;
    client.reset_counters();
    assert_eq!(list_dir(&fs, d).await.len(), 2);
    // Whether the HEADs a listing starts ahead or the lookup's own come first, the lookup
    // shows the stored attributes.
    let f = fs.lookup(d, os("f")).await.unwrap();
    assert_eq!((f.perm, f.uid), (0o600, 7));
    let g = fs.lookup(d, os("g")).await.unwrap();
    assert_eq!(g.kind, Kind::Symlink, "a listed link is a link at once");
    // Cached afterwards.
    ahead_done(&fs).await;
    let heads = client.counters().head;
    assert_eq!(fs.lookup(d, os("f")).await.unwrap().perm, 0o600);
    assert_eq!(fs.getattr(f.ino).await.unwrap().uid, 7);
    assert_eq!(
        client.counters().head,
        heads,
        "no HEAD once the metadata is cached"
    );
    assert!(
        heads <= 4,
        "at most one HEAD ahead and one by the lookup per file: {heads}"
    );
}

/// Waits until the HEADs a listing started ahead have all been answered and remembered.
async fn ahead_done(fs: &S3Fs) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Each task takes a permit before its HEAD and holds it until its answer is cached; a
    // task not started yet shows as a permit missing too, once spawned... so wait for quiet.
    let mut quiet = 0;
    while quiet < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the HEADs ahead never finished"
        );
        let idle = fs.details_ahead.available_permits() == DETAILS_AHEAD;
        quiet = if idle { quiet + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn exact_fetches_a_listings_metadata_ahead_of_the_lookups() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..100 {
        client.put_object_with(&format!("d/f{n:03}"), "x", None, meta(&[("mode", "33152")]));
    }
    let mut cfg = config("");
    cfg.posix_metadata = PosixMetadata::Exact;
    let fs = fresh(&client, cfg);
    let d = ino_of(&fs, "d").await;
    client.reset_counters();
    assert_eq!(list_dir(&fs, d).await.len(), 100);
    ahead_done(&fs).await;
    // opendir sends nothing: the kernel opens only what it holds as a directory.
    assert_eq!(client.counters().head, 100, "one HEAD ahead per listed file");
    for n in 0..100 {
        let attr = fs.lookup(d, os(&format!("f{n:03}"))).await.unwrap();
        assert_eq!(attr.perm, 0o600, "f{n:03}");
    }
    assert_eq!(
        client.counters().head,
        100,
        "the lookups found every file's metadata cached"
    );
}

// ---------------------------------------------------------------------------------------------
// Creation metadata

#[tokio::test]
async fn create_as_another_owner_records_only_what_differs() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let cases: [(&str, Creator, Pairs); 4] = [
        (
            "same.txt",
            Creator {
                uid: 1000,
                gid: 1000,
                perm: 0o644,
            },
            &[],
        ),
        (
            "mode.bin",
            Creator {
                uid: 1000,
                gid: 1000,
                perm: 0o600,
            },
            &[("mode", "33152")],
        ),
        (
            "owner.bin",
            Creator {
                uid: 7,
                gid: 1000,
                perm: 0o644,
            },
            &[("uid", "7")],
        ),
        (
            "all.bin",
            Creator {
                uid: 7,
                gid: 8,
                perm: 0o4750,
            },
            &[("mode", "35304"), ("uid", "7"), ("gid", "8")],
        ),
    ];
    for (name, creator, expected) in cases {
        let (attr, opened) = fs
            .create_as(ROOT_INO, os(name), flags, None, Some(creator))
            .await
            .unwrap();
        assert_eq!(
            (attr.perm, attr.uid, attr.gid),
            (creator.perm as u16, creator.uid, creator.gid),
            "{name} before its upload"
        );
        fs.write(opened.handle, 0, b"x").await.unwrap();
        fs.flush(opened.handle).await.unwrap();
        fs.release(opened.handle).await;
        let head = stored(&client, name).await;
        assert_eq!(head.metadata.user, user(expected), "{name}");
        let seen = lookup_path(&fresh(&client, config("")), name).await.unwrap();
        assert_eq!(
            (seen.perm, seen.uid, seen.gid),
            (creator.perm as u16, creator.uid, creator.gid)
        );
    }
    assert_eq!(
        stored(&client, "same.txt").await.metadata.content_type.as_deref(),
        Some("text/plain")
    );
    // mknod: the object exists at once, with its headers.
    let creator = Creator {
        uid: 9,
        gid: 9,
        perm: 0o644,
    };
    fs.mknod_file(ROOT_INO, os("node"), Some(creator)).await.unwrap();
    assert_eq!(client.body("node").as_deref(), Some(&b""[..]));
    assert_eq!(
        stored(&client, "node").await.metadata.user,
        user(&[("uid", "9"), ("gid", "9")])
    );
}

#[tokio::test]
async fn mkdir_as_records_only_what_differs_on_the_marker() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let same = Creator {
        uid: 1000,
        gid: 1000,
        perm: 0o755,
    };
    let attr = fs.mkdir_as(ROOT_INO, os("same"), Some(same)).await.unwrap();
    assert_eq!((attr.kind, attr.perm), (Kind::Dir, 0o755));
    assert_eq!(stored(&client, "same/").await.metadata.user, BTreeMap::new());
    let other = Creator {
        uid: 1000,
        gid: 8,
        perm: 0o700,
    };
    let attr = fs.mkdir_as(ROOT_INO, os("private"), Some(other)).await.unwrap();
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o700, 1000, 8));
    assert_eq!(
        stored(&client, "private/").await.metadata.user,
        user(&[("mode", "16832"), ("gid", "8")])
    );
    assert_eq!(client.body("private/").as_deref(), Some(&b""[..]));
    let seen = lookup_path(&fresh(&client, config("")), "private").await.unwrap();
    assert_eq!((seen.kind, seen.perm, seen.gid), (Kind::Dir, 0o700, 8));
}

// ---------------------------------------------------------------------------------------------
// READDIRPLUS

/// One readdirplus call on `handle` from `offset` through a reply that takes `room` entries and
/// refuses the next (as a full kernel buffer does): what it took (each entry, its attributes,
/// whether the kernel may keep them) and whether it refused one.
async fn readdirplus_batch(
    fs: &S3Fs,
    ino: u64,
    handle: u64,
    offset: u64,
    room: usize,
) -> (Vec<(DirEntry, Attr, bool)>, bool) {
    let (mut batch, mut refused) = (Vec::new(), false);
    let mut add = |entry: &DirEntry, attr: &Attr, lasting: bool| {
        if batch.len() == room {
            refused = true;
            return true;
        }
        batch.push((entry.clone(), attr.clone(), lasting));
        false
    };
    fs.readdirplus(ino, handle, offset, &mut add).await.unwrap();
    (batch, refused)
}

/// Every entry of directory `ino` with the attributes readdirplus gives it, 7 a reply, and how
/// many entries the full replies refused.
async fn readdirplus_all(fs: &S3Fs, ino: u64) -> (Vec<(DirEntry, Attr)>, usize) {
    let handle = fs.opendir(ino).await.unwrap();
    let (mut entries, mut refused, mut offset) = (Vec::new(), 0, 0);
    loop {
        let (batch, full) = readdirplus_batch(fs, ino, handle, offset, 7).await;
        refused += usize::from(full);
        let Some((last, _, _)) = batch.last() else { break };
        offset = last.offset;
        for (entry, attr, lasting) in batch {
            assert!(lasting, "{}: nothing changed, the kernel may keep it", entry.name);
            entries.push((entry, attr));
        }
    }
    fs.releasedir(handle);
    (entries, refused)
}

/// The entries of `handle` after `offset` to the end of the directory, reply after reply (a
/// reply may end where the next page is not listed yet) until one comes back empty.
async fn readdirplus_rest(fs: &S3Fs, ino: u64, handle: u64, mut offset: u64) -> Vec<(DirEntry, Attr, bool)> {
    let mut entries = Vec::new();
    loop {
        let (batch, full) = readdirplus_batch(fs, ino, handle, offset, 100_000).await;
        assert!(!full);
        let Some((last, _, _)) = batch.last() else {
            return entries;
        };
        offset = last.offset;
        entries.extend(batch);
    }
}

/// `ls` asks with a 1 MiB buffer, room for thousands of entries: a reply goes out with the
/// entries listed so far instead of waiting for the next page, so that the kernel and `ls`
/// work on them while it is on its way.
#[tokio::test]
async fn a_reply_goes_out_with_what_is_listed_rather_than_wait_for_the_next_page() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..30 {
        client.put_object(&format!("d/f{n:02}"), "x");
    }
    let mut cfg = config("");
    cfg.list_page_size = Some(10);
    let fs = fresh(&client, cfg);
    let d = ino_of(&fs, "d").await;
    // Every page takes a while: the first is waited for (a reply needs at least one entry),
    // the second is not.
    client.set_answer_latency(Op::List, Duration::from_millis(200));
    let handle = fs.opendir(d).await.unwrap();
    let (first, full) = readdirplus_batch(&fs, d, handle, 0, 100_000).await;
    assert!(!full);
    let names: Vec<&str> = first.iter().map(|(entry, _, _)| entry.name.as_str()).collect();
    // The first page's last name is held until the next page shows it is no directory.
    let first_page: Vec<String> = (0..9).map(|n| format!("f{n:02}")).collect();
    assert_eq!(names[..2], [".", ".."]);
    assert_eq!(names[2..], first_page);
    let rest = readdirplus_rest(&fs, d, handle, first.last().unwrap().0.offset).await;
    fs.releasedir(handle);
    let rest: Vec<String> = rest.into_iter().map(|(entry, _, _)| entry.name).collect();
    let expected: Vec<String> = (9..30).map(|n| format!("f{n:02}")).collect();
    assert_eq!(rest, expected, "every later name once, in order");
}

#[tokio::test]
async fn a_name_unlinked_after_its_page_was_listed_is_not_kept_by_the_kernel() {
    let client = Arc::new(Bucket::memory("b"));
    for n in 0..20 {
        client.put_object(&format!("d/f{n:02}"), "x");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.list_page_size = Some(10);
    let fs = writable_with(&client, &dir, cfg);
    let d = ino_of(&fs, "d").await;
    let handle = fs.opendir(d).await.unwrap();
    // The dots and f00..f03: the rest of the first page waits in the stream, the second page is
    // listed ahead. Then, between two getdents calls, one name of each goes.
    let (first, _) = readdirplus_batch(&fs, d, handle, 0, 6).await;
    assert_eq!(first.last().unwrap().0.name, "f03");
    fs.unlink(d, os("f05")).await.unwrap();
    fs.unlink(d, os("f15")).await.unwrap();
    let rest = readdirplus_rest(&fs, d, handle, first.last().unwrap().0.offset).await;
    fs.releasedir(handle);
    let names: Vec<&str> = rest.iter().map(|(entry, _, _)| entry.name.as_str()).collect();
    assert_eq!(names.len(), 16, "the pages predate the unlinks: {names:?}");
    for (entry, _, lasting) in &rest {
        let gone = entry.name == "f05" || entry.name == "f15";
        assert_eq!(*lasting, !gone, "{}", entry.name);
    }
    assert_eq!(errno(fs.lookup(d, os("f05")).await), libc::ENOENT);
    assert_eq!(errno(fs.lookup(d, os("f15")).await), libc::ENOENT);
}

/// With exact POSIX metadata, readdirplus completes a listed entry with a HEAD. A close of the
/// file that overtakes that HEAD makes its answer one the kernel must not keep: it may describe
/// the file as it was before the close.
#[tokio::test]
async fn an_exact_readdirplus_entry_whose_head_a_close_overtook_is_not_kept() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("d/f", "old content");
    let dir = tempfile::tempdir().unwrap();
    let mut exact = config("");
    exact.posix_metadata = PosixMetadata::Exact;
    let fs = Arc::new(writable_with(&client, &dir, exact));
    let d = ino_of(&fs, "d").await;
    let _ahead = super::tests::hold_details_ahead(&fs).await;
    let handle = fs.opendir(d).await.unwrap();
    // Its LIST and then its HEAD, each answered late.
    let listing = {
        let fs = fs.clone();
        let listing = async move { readdirplus_batch(&fs, d, handle, 0, 10).await };
        super::tests::sent_now_answered_late(&client, Duration::from_millis(300), 2, listing).await
    };
    super::tests::answer_at_once(&client);
    super::tests::rewrite(&fs, d, "f", b"the new, longer content").await;
    let (entries, _) = listing.await.unwrap();
    fs.releasedir(handle);
    let (_, _, lasting) = entries
        .iter()
        .find(|(entry, _, _)| entry.name == "f")
        .expect("f is listed");
    assert!(
        !lasting,
        "an answer from before the close is not for the kernel to keep"
    );
    assert_eq!(fs.lookup(d, os("f")).await.unwrap().size, 23);
}

#[tokio::test]
async fn readdirplus_gives_each_entry_the_attributes_its_lookup_answers() {
    for mode in [PosixMetadata::Lazy, PosixMetadata::Off, PosixMetadata::Exact] {
        let client = Arc::new(Bucket::memory("b"));
        let stored_posix = meta(&[
            ("mode", "33152"),
            ("uid", "1001"),
            ("gid", "1002"),
            ("mtime", "1600000000"),
        ]);
        client.put_object("d/plain", "abc");
        client.put_object_with("d/stored", "xyz", None, stored_posix.clone());
        client.put_object_with("d/opened", "opened", None, stored_posix);
        client.put_object_with("d/link", "", None, meta(&[("--symlink-target", "plain")]));
        client.put_object("d/sub/x", "1");
        client.put_object_with("d/marked/", "", None, meta(&[("mode", "16832"), ("uid", "1003")]));
        for n in 0..12 {
            client.put_object(&format!("d/many{n:02}"), vec![b'm'; n]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config("");
        cfg.posix_metadata = mode;
        let fs = writable_with(&client, &dir, cfg);
        let d = ino_of(&fs, "d").await;
        // One file looked at closely (its metadata known), a symlink looked up, one file being
        // written here.
        assert_eq!(lookup_path(&fs, "d/link").await.unwrap().kind, Kind::Symlink);
        let opened = ino_of(&fs, "d/opened").await;
        let read = fs.open(opened, libc::O_RDONLY).await.unwrap();
        fs.release(read.handle).await;
        let (created, writing) = fs.create(d, os("writing"), libc::O_WRONLY).await.unwrap();
        fs.write(writing.handle, 0, b"staged bytes").await.unwrap();
        let live_before = fs.live_inodes();
        client.reset_counters();

        let (entries, refused) = readdirplus_all(&fs, d).await;
        let counts = client.counters();
        if mode != PosixMetadata::Exact {
            assert_eq!(
                counts.head, 0,
                "{mode:?}: no HEAD, the listing is enough: {counts:?}"
            );
        }
        let names: Vec<&str> = entries.iter().map(|(entry, _)| entry.name.as_str()).collect();
        assert_eq!(names.len(), 2 + 19, "{mode:?}: {names:?}");
        assert!(refused >= 2, "{mode:?}: the reply filled up, refused {refused}");
        let listed: Vec<_> = entries.iter().filter(|(entry, _)| entry.offset > 2).collect();
        // `opened`, `link` and `writing` were already known to the kernel; the others are new
        // references.
        let known = [opened, created.ino, ino_of(&fs, "d/link").await];
        let new = listed
            .iter()
            .filter(|(entry, _)| !known.contains(&entry.ino))
            .count();
        assert_eq!(
            fs.live_inodes(),
            live_before + new,
            "{mode:?}: one reference per entry taken, none for refused ones or the dots"
        );
        for (entry, attr) in &listed {
            let looked_up = fs.lookup(d, os(&entry.name)).await.unwrap();
            assert_eq!(*attr, looked_up, "{mode:?}: {}", entry.name);
            assert_eq!(
                (entry.ino, entry.kind),
                (attr.ino, attr.kind),
                "{mode:?}: {}",
                entry.name
            );
        }
        let attr_of = |name: &str| {
            listed
                .iter()
                .find(|(entry, _)| entry.name == name)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(attr_of("writing").size, 12, "{mode:?}: the staged size");
        assert_eq!(
            attr_of("link").kind,
            Kind::Symlink,
            "{mode:?}: a link looked at stays one"
        );
        assert_eq!(attr_of("sub").kind, Kind::Dir);
        if mode == PosixMetadata::Exact {
            assert_eq!(attr_of("opened").perm, 0o600, "a file looked at closely");
            assert_eq!((attr_of("stored").perm, attr_of("stored").uid), (0o600, 1001));
            assert_eq!(attr_of("link").kind, Kind::Symlink);
            assert_eq!(attr_of("marked").uid, 1003);
        } else {
            // Lazy: what the listing just showed has the defaults, as its lookup does.
            assert_eq!(
                attr_of("stored").perm,
                0o644,
                "{mode:?}: listed only: the defaults"
            );
            let expected = if mode == PosixMetadata::Lazy { 0o600 } else { 0o644 };
            assert_eq!(
                attr_of("opened").perm,
                expected,
                "{mode:?}: what the open's request told is kept"
            );
        }
        fs.release(writing.handle).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Files being written

#[tokio::test]
async fn a_dirty_staged_file_changes_only_its_staged_metadata() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "old", Some("text/csv"), meta(&[("team", "ml")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let opened = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(opened.handle, 0, b" new").await.unwrap();
    client.reset_counters();
    set(&fs, ino, "user.owner", b"me").await.unwrap();
    let attr = fs
        .setattr_all(ino, None, &chmod(0o600), Some(opened.handle))
        .await
        .unwrap();
    assert_eq!(attr.perm, 0o600);
    assert_eq!(get(&fs, ino, "user.owner").await.unwrap(), b"me");
    assert_eq!(get(&fs, ino, "user.team").await.unwrap(), b"ml");
    assert_eq!(
        client.counters(),
        RequestCounts::default(),
        "nothing sent before the close"
    );
    assert_eq!(client.body("f").as_deref(), Some(&b"old"[..]));
    fs.flush(opened.handle).await.unwrap();
    let counts = client.counters();
    assert_eq!(
        (counts.put, counts.copy),
        (1, 0),
        "one PUT carries data and metadata: {counts:?}"
    );
    fs.release(opened.handle).await;
    assert_eq!(client.counters().put, 1);
    assert_eq!(client.body("f").as_deref(), Some(&b"old new"[..]));
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata.user,
        user(&[("team", "ml"), ("owner", "me"), ("mode", "33152")])
    );
    assert_eq!(head.metadata.content_type.as_deref(), Some("text/csv"));

    // A new file, never uploaded, likewise.
    let (attr, opened) = fs
        .create(ROOT_INO, os("new.bin"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"data").await.unwrap();
    client.reset_counters();
    set(&fs, attr.ino, "user.a", b"1").await.unwrap();
    fs.setattr_all(attr.ino, None, &chmod(0o640), Some(opened.handle))
        .await
        .unwrap();
    assert_eq!(client.counters(), RequestCounts::default());
    assert!(!client.contains("new.bin"));
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    let counts = client.counters();
    assert_eq!((counts.put, counts.copy), (1, 0));
    assert_eq!(
        stored(&client, "new.bin").await.metadata.user,
        user(&[("a", "1"), ("mode", (libc::S_IFREG | 0o640).to_string().as_str())])
    );
}

#[tokio::test]
async fn times_set_after_the_last_write_survive_the_upload() {
    // `cp -p`: write, then futimens and fchmod on the open descriptor, then close.
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let (attr, opened) = fs
        .create(ROOT_INO, os("copy"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"content").await.unwrap();
    let times = AttrChange {
        perm: Some(0o600),
        mtime: Some(at(OLD)),
        atime: Some(at(OLD + 1)),
        ..AttrChange::default()
    };
    let set = fs
        .setattr_all(attr.ino, None, &times, Some(opened.handle))
        .await
        .unwrap();
    assert_eq!((set.mtime, set.atime, set.perm), (at(OLD), at(OLD + 1), 0o600));
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    assert_eq!(client.counters().put, 1);
    assert_eq!(
        stored(&client, "copy").await.metadata.user,
        user(&[
            ("mode", "33152"),
            ("mtime", "1600000000"),
            ("atime", "1600000001")
        ])
    );
    let seen = lookup_path(&fresh(&client, config("")), "copy").await.unwrap();
    assert_eq!((seen.mtime, seen.atime), (at(OLD), at(OLD + 1)));
    assert_eq!(fs.getattr(attr.ino).await.unwrap().mtime, at(OLD));
}

#[tokio::test]
async fn a_clean_staged_file_is_copied_and_not_uploaded_again() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("f", "body", Some("text/csv"), meta(&[("team", "ml")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let opened = fs.open(ino, libc::O_WRONLY).await.unwrap();
    client.reset_counters();
    set(&fs, ino, "user.owner", b"me").await.unwrap();
    let counts = client.counters();
    assert_eq!((counts.copy, counts.put, counts.get), (1, 0, 0), "{counts:?}");
    let head = stored(&client, "f").await;
    assert_eq!(head.metadata.user.get("owner").map(String::as_str), Some("me"));
    assert_eq!(head.metadata.user.get("team").map(String::as_str), Some("ml"));
    assert_eq!(head.metadata.content_type.as_deref(), Some("text/csv"));
    assert_eq!(get(&fs, ino, "user.owner").await.unwrap(), b"me");
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    let counts = client.counters();
    assert_eq!(
        (counts.copy, counts.put),
        (1, 0),
        "the close uploads nothing: {counts:?}"
    );
    assert_eq!(client.body("f").as_deref(), Some(&b"body"[..]));
    assert_eq!(stored(&client, "f").await.etag, head.etag);
    // A later write through the mount keeps the change.
    let opened = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(opened.handle, 0, b"!").await.unwrap();
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    assert_eq!(client.body("f").as_deref(), Some(&b"body!"[..]));
    assert_eq!(
        stored(&client, "f").await.metadata.user,
        user(&[("team", "ml"), ("owner", "me")])
    );
}

#[tokio::test]
async fn a_change_to_a_clean_staged_file_keeps_its_mtime() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "body");
    client.set_last_modified("f", at(OLD));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let opened = fs.open(ino, libc::O_WRONLY).await.unwrap();
    fs.setattr_all(ino, None, &chmod(0o600), Some(opened.handle))
        .await
        .unwrap();
    fs.release(opened.handle).await;
    // The copy moved Last-Modified; chmod must not have moved the mtime.
    let head = stored(&client, "f").await;
    assert!(head.last_modified > at(OLD));
    assert_eq!(head.metadata.user.get("mode").map(String::as_str), Some("33152"));
    assert_eq!(
        head.metadata.user.get("mtime").map(String::as_str),
        Some("1600000000"),
        "{:?}",
        head.metadata.user
    );
    let seen = lookup_path(&fresh(&client, config("")), "f").await.unwrap();
    assert_eq!(seen.mtime, at(OLD));
}

// ---------------------------------------------------------------------------------------------
// Symlinks

#[tokio::test]
async fn symlink_readlink_and_lookup() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("f", "file");
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let attr = fs
        .symlink(ROOT_INO, os("link"), b"dir/target", None)
        .await
        .unwrap();
    assert_eq!((attr.kind, attr.size, attr.perm), (Kind::Symlink, 10, 0o777));
    assert_eq!(client.body("link").as_deref(), Some(&b"dir/target"[..]));
    assert_eq!(
        stored(&client, "link").await.metadata.user,
        user(&[("mode", "41471")])
    );
    assert_eq!(fs.readlink(attr.ino).await.unwrap(), b"dir/target");
    assert_eq!(fs.lookup(ROOT_INO, os("link")).await.unwrap().kind, Kind::Symlink);
    let other = fresh(&client, config(""));
    let seen = lookup_path(&other, "link").await.unwrap();
    assert_eq!((seen.kind, seen.size, seen.perm), (Kind::Symlink, 10, 0o777));
    assert_eq!(other.readlink(seen.ino).await.unwrap(), b"dir/target");
    // An existing name, file or link, is not replaced.
    assert_eq!(
        errno(fs.symlink(ROOT_INO, os("link"), b"x", None).await),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.symlink(ROOT_INO, os("f"), b"x", None).await),
        libc::EEXIST
    );
    assert_eq!(client.body("f").as_deref(), Some(&b"file"[..]));
    assert_eq!(client.body("link").as_deref(), Some(&b"dir/target"[..]));
    // Another owner is recorded; a link's own mode stays 0777 (chmod follows links).
    let creator = Creator {
        uid: 7,
        gid: 1000,
        perm: 0o755,
    };
    let mine = fs
        .symlink(ROOT_INO, os("mine"), b"f", Some(creator))
        .await
        .unwrap();
    assert_eq!(mine.uid, 7);
    assert_eq!(
        stored(&client, "mine").await.metadata.user,
        user(&[("mode", "41471"), ("uid", "7")])
    );
    let change = AttrChange {
        perm: Some(0o600),
        gid: Some(5),
        ..AttrChange::default()
    };
    let changed = fs.setattr_all(mine.ino, None, &change, None).await.unwrap();
    assert_eq!(
        (changed.kind, changed.perm, changed.gid),
        (Kind::Symlink, 0o777, 5)
    );
    let head = stored(&client, "mine").await;
    assert_eq!(head.metadata.user.get("mode").map(String::as_str), Some("41471"));
    assert_eq!(head.metadata.user.get("gid").map(String::as_str), Some("5"));
    assert_eq!(fs.readlink(mine.ino).await.unwrap(), b"f");
}

#[tokio::test]
async fn geesefs_symlinks_are_readable_and_move() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object_with("g", "", None, meta(&[("--symlink-target", "../elsewhere")]));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let g = lookup_path(&fs, "g").await.unwrap();
    assert_eq!((g.kind, g.perm), (Kind::Symlink, 0o777));
    client.reset_counters();
    assert_eq!(fs.readlink(g.ino).await.unwrap(), b"../elsewhere");
    assert_eq!(client.counters().get, 0, "the header holds it");
    assert!(
        !names(&fs.listxattr(g.ino).await.unwrap())
            .iter()
            .any(|n| n.contains("symlink"))
    );
    fs.rename(ROOT_INO, os("g"), ROOT_INO, os("h"), 0).await.unwrap();
    assert!(!client.contains("g"));
    // A rename keeps the link's time (pinned in `mtime`, as the copy moves Last-Modified).
    let mut kept = stored(&client, "h").await.metadata.user;
    assert!(kept.remove("mtime").is_some(), "the time is pinned");
    assert_eq!(kept, user(&[("--symlink-target", "../elsewhere")]));
    let h = lookup_path(&fresh(&client, config("")), "h").await.unwrap();
    assert_eq!(h.kind, Kind::Symlink);
}

#[tokio::test]
async fn a_renamed_symlink_stays_a_symlink_and_unlinks() {
    let client = Arc::new(Bucket::memory("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let d = fs.mkdir(ROOT_INO, os("d")).await.unwrap();
    fs.symlink(ROOT_INO, os("link"), b"/abs/target", None)
        .await
        .unwrap();
    fs.rename(ROOT_INO, os("link"), d.ino, os("moved"), 0)
        .await
        .unwrap();
    assert!(!client.contains("link"));
    assert_eq!(client.body("d/moved").as_deref(), Some(&b"/abs/target"[..]));
    // A rename keeps the link's time (pinned in `mtime`, as the copy moves Last-Modified).
    let mut kept = stored(&client, "d/moved").await.metadata.user;
    assert!(kept.remove("mtime").is_some(), "the time is pinned");
    assert_eq!(kept, user(&[("mode", "41471")]));
    let moved = fs.lookup(d.ino, os("moved")).await.unwrap();
    assert_eq!(moved.kind, Kind::Symlink);
    assert_eq!(fs.readlink(moved.ino).await.unwrap(), b"/abs/target");
    let there = lookup_path(&fresh(&client, config("")), "d/moved").await.unwrap();
    assert_eq!(there.kind, Kind::Symlink);
    fs.unlink(d.ino, os("moved")).await.unwrap();
    assert!(!client.contains("d/moved"));
    assert_eq!(errno(fs.lookup(d.ino, os("moved")).await), libc::ENOENT);
}

#[tokio::test]
async fn readlink_of_a_file_or_directory_is_einval() {
    let client = Arc::new(Bucket::memory("b"));
    client.put_object("plain", "not/a/link");
    client.put_object_with("moded", "x", None, meta(&[("mode", "33188")]));
    client.put_object("d/x", "x");
    let fs = fresh(&client, config(""));
    for path in ["plain", "moded", "d"] {
        let ino = ino_of(&fs, path).await;
        assert_eq!(errno(fs.readlink(ino).await), libc::EINVAL, "{path}");
    }
    assert_eq!(errno(fs.readlink(ROOT_INO).await), libc::EINVAL);
}

// ---------------------------------------------------------------------------------------------
// Rewrites

#[tokio::test]
async fn a_rewrite_keeps_every_header_but_the_mtime() {
    let client = Arc::new(Bucket::memory("b"));
    let metadata = ObjectMetadata {
        content_type: Some("text/csv".into()),
        cache_control: Some("max-age=60".into()),
        content_encoding: Some("identity".into()),
        content_disposition: Some("inline".into()),
        content_language: Some("en".into()),
        storage_class: Some("STANDARD_IA".into()),
        sse: Some("AES256".into()),
        sse_kms_key_id: None,
        user: user(&[
            ("team", "ml"),
            ("note", "=?UTF-8?B?Y2Fmw6k=?="),
            ("mode", "33152"),
            ("uid", "7"),
            ("gid", "8"),
            ("atime", "1600000001"),
            ("mtime", "1600000000"),
        ]),
    };
    client.put_object_with_metadata("f", "abc", &metadata);
    client.set_last_modified("f", at(OLD));
    let dir = tempfile::tempdir().unwrap();
    let fs = writable(&client, &dir);
    let ino = ino_of(&fs, "f").await;
    let mut expected = metadata.clone();
    expected.user.remove("mtime");
    // Appended to.
    let opened = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(opened.handle, 0, b"def").await.unwrap();
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    assert_eq!(client.body("f").as_deref(), Some(&b"abcdef"[..]));
    let head = stored(&client, "f").await;
    assert_eq!(
        head.metadata, expected,
        "every header kept, the old mtime dropped"
    );
    let attr = fs.getattr(ino).await.unwrap();
    assert!(attr.mtime > at(OLD), "the write is the new mtime");
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o600, 7, 8));
    // Truncated and written again.
    let opened = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    fs.write(opened.handle, 0, b"new").await.unwrap();
    fs.flush(opened.handle).await.unwrap();
    fs.release(opened.handle).await;
    assert_eq!(client.body("f").as_deref(), Some(&b"new"[..]));
    assert_eq!(stored(&client, "f").await.metadata, expected);
    assert_eq!(get(&fs, ino, "user.note").await.unwrap(), "café".as_bytes());
}
