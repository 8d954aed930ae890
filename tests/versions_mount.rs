//! Mount tests on a versioned bucket, against moto in server mode (scripts/moto-server: Garage
//! keeps no versions, nor storage classes or encryption headers): `--version-at`, handles pinned
//! to the version they opened, and the write options (`--sse`, `--storage-class`).
//!
//! moto must be running (scripts/test starts it); without it every test here fails, loudly.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::{Mount, assert_fails_before_mount, s3mount_command};

/// Where moto is, from the env file scripts/moto-server writes.
struct Moto {
    endpoint: String,
    versioned: String,
    plain: String,
    access_key_id: String,
    secret: String,
}

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-server/env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "moto is not running: run scripts/moto-server start (or scripts/test) [{}: {error}]",
                path.display()
            )
        });
        let values = common::parse_env_file(&text);
        let get = |name: &str| {
            values
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing from {}", path.display()))
        };
        Moto {
            endpoint: get("S3MOUNT_MOTO_ENDPOINT"),
            versioned: get("S3MOUNT_MOTO_VERSIONED_BUCKET"),
            plain: get("S3MOUNT_MOTO_PLAIN_BUCKET"),
            access_key_id: get("S3MOUNT_MOTO_ACCESS_KEY_ID"),
            secret: get("S3MOUNT_MOTO_SECRET"),
        }
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

/// An SDK client of moto, independent of the mount: sets up and checks objects.
fn sdk() -> &'static aws_sdk_s3::Client {
    static SDK: OnceLock<aws_sdk_s3::Client> = OnceLock::new();
    SDK.get_or_init(|| {
        let m = moto();
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&m.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &m.access_key_id,
                &m.secret,
                None,
                None,
                "moto",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    })
}

/// A prefix of its own for each test.
fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{nanos}/")
}

/// Puts `body` at `key`; returns the new version id.
fn put(bucket: &str, key: &str, body: &[u8]) -> String {
    let output = runtime()
        .block_on(
            sdk()
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    output
        .version_id()
        .expect("a versioned bucket gives a version id")
        .to_owned()
}

fn delete(bucket: &str, key: &str) {
    runtime()
        .block_on(sdk().delete_object().bucket(bucket).key(key).send())
        .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
}

fn head(bucket: &str, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    runtime()
        .block_on(sdk().head_object().bucket(bucket).key(key).send())
        .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
}

/// Mounts `bucket:/prefix` of moto with `extra` options.
fn mount(bucket: &str, prefix: &str, extra: &[&str]) -> Mount {
    let m = moto();
    let source = format!("{bucket}:/{prefix}");
    let mut args = vec!["--endpoint-url", &m.endpoint];
    args.extend_from_slice(extra);
    Mount::start_with(&[&source], &args, |command| {
        command
            .env("AWS_ACCESS_KEY_ID", &m.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &m.secret);
    })
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let output = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .expect("running getfattr (package attr)");
    output.status.success().then_some(output.stdout)
}

/// The names and contents of a directory's files.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = String::from_utf8_lossy(path.file_name().unwrap().as_bytes()).into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Far enough from every Last-Modified on either side that second-granular times cannot blur it.
const APART: Duration = Duration::from_millis(1500);

#[test]
fn version_at_shows_the_bucket_as_it_was_then() {
    let bucket = &moto().versioned;
    let prefix = prefix("version-at");
    let first = put(bucket, &format!("{prefix}f"), b"first");
    put(bucket, &format!("{prefix}gone-later"), b"was here");
    put(bucket, &format!("{prefix}d/inner"), b"inner");
    put(bucket, &format!("{prefix}deleted-before"), b"x");
    delete(bucket, &format!("{prefix}deleted-before"));
    std::thread::sleep(APART);
    let moment = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    std::thread::sleep(APART);
    put(bucket, &format!("{prefix}f"), b"second, longer");
    delete(bucket, &format!("{prefix}gone-later"));
    put(bucket, &format!("{prefix}new-later"), b"new");

    let then = mount(bucket, &prefix, &["--version-at", &moment]);
    assert_eq!(
        files(then.path()),
        BTreeMap::from([
            ("f".to_owned(), b"first".to_vec()),
            ("gone-later".to_owned(), b"was here".to_vec()),
        ]),
        "the files as they were at {moment}"
    );
    assert_eq!(std::fs::read(then.join("d/inner")).unwrap(), b"inner");
    assert!(!then.join("new-later").exists());
    assert!(!then.join("deleted-before").exists());
    assert_eq!(
        getxattr(&then.join("f"), "user.s3.version_id"),
        Some(first.into_bytes()),
        "the version read is the one current then"
    );
    let refused = std::fs::write(then.join("f"), b"changed").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    assert_eq!(
        std::fs::read(then.join("f")).unwrap(),
        b"first",
        "nothing changed in the past"
    );

    // The present, side by side.
    let now = mount(bucket, &prefix, &[]);
    assert_eq!(std::fs::read(now.join("f")).unwrap(), b"second, longer");
    assert!(!now.join("gone-later").exists());
    assert!(now.join("new-later").exists());
}

#[test]
fn a_handle_reads_the_version_it_opened_whatever_another_writer_puts() {
    let bucket = &moto().versioned;
    let prefix = prefix("pinned");
    let key = format!("{prefix}data.bin");
    // Three cache blocks, so the later ones are fetched after the replacement.
    let old: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let old_version = put(bucket, &key, &old);
    let mounted = mount(bucket, &prefix, &[]);
    let mut file = std::fs::File::open(mounted.join("data.bin")).unwrap();
    let mut start = vec![0; 4096];
    file.read_exact(&mut start).unwrap();
    assert_eq!(start, old[..4096]);
    assert_eq!(
        getxattr(&mounted.join("data.bin"), "user.s3.version_id"),
        Some(old_version.into_bytes())
    );

    let new = vec![7u8; old.len()];
    put(bucket, &key, &new);
    file.seek(SeekFrom::Start(2 << 20)).unwrap();
    let mut later = vec![0; 1 << 20];
    file.read_exact(&mut later).unwrap();
    assert!(
        later == old[2 << 20..],
        "the open handle reads its own version, not the new one nor an error"
    );
    drop(file);
    // A new open sees the new version (close-to-open).
    assert!(std::fs::read(mounted.join("data.bin")).unwrap() == new);
}

#[test]
fn version_at_needs_a_versioned_bucket_and_no_write_options() {
    let m = moto();
    let dir = tempfile::tempdir().unwrap();
    let command = |bucket: &str, extra: &[&str]| {
        let mut command = s3mount_command();
        command
            .arg(bucket)
            .arg(dir.path())
            .args(["--endpoint-url", &m.endpoint, "--force-path-style"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", &m.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &m.secret);
        command
    };
    let at = ["--version-at", "2026-01-01T00:00:00Z"];
    assert_fails_before_mount(
        command(&m.plain, &at),
        dir.path(),
        &["keeps no versions", "--version-at"],
    );
    assert_fails_before_mount(
        command(&m.versioned, &[at[0], at[1], "--storage-class", "STANDARD_IA"]),
        dir.path(),
        &["--storage-class", "--version-at"],
    );
    // A value clap refuses: its usage error (exit status 2), naming the option and the form.
    let output = common::run_bounded(command(&m.versioned, &["--version-at", "last tuesday"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--version-at") && stderr.contains("RFC 3339"),
        "{stderr}"
    );
    assert!(!common::is_mounted(dir.path()));
}

#[test]
fn encryption_and_storage_class_options_reach_every_object_written() {
    let bucket = &moto().plain;
    let prefix = prefix("write-options");
    let mounted = mount(
        bucket,
        &prefix,
        &["--sse", "AES256", "--storage-class", "STANDARD_IA"],
    );
    std::fs::write(mounted.join("new.txt"), b"hello").unwrap();
    let check = |key: &str, what: &str| {
        let head = head(bucket, &format!("{prefix}{key}"));
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("AES256"),
            "{what}"
        );
        assert_eq!(
            head.storage_class().map(|s| s.as_str()),
            Some("STANDARD_IA"),
            "{what}"
        );
    };
    check("new.txt", "a new object");
    assert_eq!(
        getxattr(&mounted.join("new.txt"), "user.s3.storage_class"),
        Some(b"STANDARD_IA".to_vec())
    );
    let status = Command::new("setfattr")
        .args(["-n", "user.team", "-v", "ml"])
        .arg(mounted.join("new.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    check("new.txt", "after a metadata change (a copy onto itself)");
    std::fs::rename(mounted.join("new.txt"), mounted.join("moved.txt")).unwrap();
    check("moved.txt", "after a rename (a copy)");
    assert_eq!(
        head(bucket, &format!("{prefix}moved.txt"))
            .metadata()
            .and_then(|m| m.get("team"))
            .map(String::as_str),
        Some("ml")
    );

    // An object of its own class keeps it when rewritten through a mount without the options.
    drop(mounted);
    let plain = mount(bucket, &prefix, &[]);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(plain.join("moved.txt"))
        .unwrap();
    std::io::Write::write_all(&mut file, b" again").unwrap();
    common::close(file).unwrap();
    check("moved.txt", "after an append through a mount without the options");
}
