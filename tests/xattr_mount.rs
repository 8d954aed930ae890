//! Metadata as POSIX sees it: the real `s3mount` binary mounted on a real S3 server (Garage on
//! loopback), changed with `setfattr`/`getfattr` (the `attr` package), raw `setxattr(2)`,
//! `chmod`, `chown`, `touch -d`, `ln -s`, `ln`, `mkfifo`, and checked both through the mount
//! (`stat`, `readlink`, reads as other users) and in the bucket itself with the harness's own S3
//! client (HeadObject), so a test never trusts the daemon to report on its own changes.
//!
//! What is checked: `user.NAME` is `x-amz-meta-NAME` (lower-cased) on files and on directories
//! (whose marker is created when missing), set, listed and removed, with a UTF-8 value that
//! round-trips; the content headers under `user.s3.*` are settable and survive an append, the
//! other system attributes are read-only (EPERM); chmod, chown and utimensat are kept in s3fs's
//! headers (`mode`, `uid`, `gid`, `mtime`, `atime`) by a copy of the object onto itself, which
//! keeps its bytes and ETag, and shows after a remount; objects written by s3fs show their mode,
//! owner, mtime and symlinks; `--allow-other` permission checks use the kept mode and owner, also
//! after `ls -l` (the default `exact` mode); `--posix-metadata off` accepts chmod and keeps
//! nothing; hard links and FIFOs are EPERM; and the chmod of a big object (40 MiB put, and
//! 6 GiB built on the server) sends a few KiB to S3, never its data, as counted on the wire
//! behind the fault proxy. Each test owns a unique key prefix; nothing sleeps to synchronise.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use s3mount::object::{CompletedPart, ObjectClient, ObjectMetadata, PutOptions};

use common::fault_proxy::FaultProxy;
use common::metrics::{MetricsEndpoint, Scrape};
use common::{
    Mount, TestPrefix, assert_same_bytes, client, close, pseudo_random, run_bounded, runtime, settings,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// `S_IFREG | 0600`, as s3fs writes it in `x-amz-meta-mode`.
const REGULAR_0600: &str = "33152";
/// `S_IFLNK | 0777`: s3fs's symlinks.
const SYMLINK_MODE: &str = "41471";

// ---------------------------------------------------------------------------------------------
// Helpers

fn append(path: &Path, data: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} to append: {e}", path.display()));
    file.write_all(data)
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
    close(file).unwrap_or_else(|e| panic!("closing {} (the upload): {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn stat(path: &Path) -> std::fs::Metadata {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

/// Fails unless `result` is the error `errno`.
fn assert_errno<T: std::fmt::Debug>(what: &str, result: io::Result<T>, errno: i32) {
    match result {
        Ok(value) => panic!(
            "{what}: succeeded ({value:?}), expected {}",
            io::Error::from_raw_os_error(errno)
        ),
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(errno),
            "{what}: {error}, expected {}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// The bucket itself (not the mount) holds exactly `expected` at PREFIX/`relative`.
fn assert_object(prefix: &TestPrefix, relative: &str, expected: &[u8]) {
    match prefix.get(relative) {
        None => panic!("{relative} is not in the bucket"),
        Some(body) => assert_same_bytes(&body, expected, &format!("{relative} in the bucket")),
    }
}

fn head(prefix: &TestPrefix, relative: &str) -> s3mount::object::ObjectHead {
    prefix
        .head(relative)
        .unwrap_or_else(|| panic!("{relative} is not in the bucket"))
}

/// The object's `x-amz-meta-*` entries, as S3 returns them.
fn user_metadata(prefix: &TestPrefix, relative: &str) -> BTreeMap<String, String> {
    head(prefix, relative).metadata.user
}

fn user(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Unmounts (waiting for the daemon to exit) and mounts the same prefix again with `extra`, on a
/// fresh cache: what the new mount shows comes from the bucket.
fn remount(mut mount: Mount, prefix: &TestPrefix, extra: &[&str]) -> Mount {
    mount.unmount_and_wait_for_exit();
    drop(mount);
    Mount::start(&[&prefix.source()], extra)
}

/// `program args...`, bounded in time; its output whatever the exit status.
fn run(program: &str, args: &[&OsStr]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    run_bounded(command)
}

/// `program args...`, which must exit 0; its stdout.
fn run_ok(program: &str, args: &[&OsStr]) -> Vec<u8> {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `program args...`, which must fail saying `message` on stderr.
fn run_fails(program: &str, args: &[&OsStr], message: &str) {
    let output = run(program, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{program} {args:?} should fail, but exited 0 (stdout {:?})",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(message),
        "{program} {args:?}: stderr should say {message:?}: {stderr}"
    );
}

/// `setfattr -n NAME -v VALUE PATH`, which must succeed.
fn setfattr(path: &Path, name: &str, value: &str) {
    run_ok(
        "setfattr",
        &[
            "-n".as_ref(),
            name.as_ref(),
            "-v".as_ref(),
            value.as_ref(),
            path.as_os_str(),
        ],
    );
}

/// `setfattr -x NAME PATH`, which must succeed.
fn removefattr(path: &Path, name: &str) {
    run_ok("setfattr", &["-x".as_ref(), name.as_ref(), path.as_os_str()]);
}

/// `getfattr --only-values -n NAME PATH`: the value's bytes exactly.
fn getfattr_value(path: &Path, name: &str) -> Vec<u8> {
    run_ok(
        "getfattr",
        &[
            "--absolute-names".as_ref(),
            "--only-values".as_ref(),
            "-n".as_ref(),
            name.as_ref(),
            path.as_os_str(),
        ],
    )
}

/// The attribute names `getfattr -d [ARGS] PATH` dumps, sorted.
fn getfattr_dump_names(path: &Path, args: &[&str]) -> Vec<String> {
    let mut all: Vec<&OsStr> = vec!["--absolute-names".as_ref(), "-d".as_ref()];
    all.extend(args.iter().map(OsStr::new));
    all.push(path.as_os_str());
    let stdout = String::from_utf8(run_ok("getfattr", &all)).expect("getfattr prints text");
    let mut names: Vec<String> = stdout
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split_once('=').map_or(line, |(name, _)| name).to_owned())
        .collect();
    names.sort();
    names
}

fn c_string(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("no NUL inside")
}

/// setxattr(2) with no flags.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (path, name) = (c_string(path.as_os_str().as_bytes()), c_string(name.as_bytes()));
    // SAFETY: both strings are NUL-terminated and outlive the call; the value pointer and length
    // describe `value`.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// getxattr(2): the whole value.
fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (path, name) = (c_string(path.as_os_str().as_bytes()), c_string(name.as_bytes()));
    let mut buf = vec![0u8; 64 * KIB];
    // SAFETY: both strings are NUL-terminated and outlive the call; the buffer pointer and
    // length describe `buf`.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The value of an RFC 2047 base64 encoded word (`=?UTF-8?B?...?=`), the form the daemon
/// stores a non-ASCII attribute value in (S3's own form of non-ASCII metadata).
fn decode_encoded_word(stored: &str) -> Vec<u8> {
    let inner = stored
        .strip_prefix("=?UTF-8?B?")
        .and_then(|rest| rest.strip_suffix("?="))
        .unwrap_or_else(|| panic!("{stored:?} is not a base64 encoded word"));
    aws_smithy_types::base64::decode(inner).unwrap_or_else(|e| panic!("{stored:?}: {e}"))
}

/// Runs `program args...` as `uid` (and gid `uid`, no supplementary groups), as a user other
/// than root would.
fn run_as(uid: u32, program: &str, args: &[&OsStr]) -> Output {
    let id = uid.to_string();
    let mut all: Vec<&OsStr> = vec![
        "--reuid".as_ref(),
        id.as_ref(),
        "--regid".as_ref(),
        id.as_ref(),
        "--clear-groups".as_ref(),
        program.as_ref(),
    ];
    all.extend_from_slice(args);
    run("setpriv", &all)
}

/// `cat PATH` as `uid` is refused with EACCES.
fn assert_refused_to(uid: u32, path: &Path, when: &str) {
    let output = run_as(uid, "cat", &[path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{when}: uid {uid} could read {} ({:?})",
        path.display(),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains("Permission denied"),
        "{when}: cat as uid {uid} should fail with EACCES: {stderr}"
    );
}

/// `cat PATH` as `uid` prints `expected`.
fn assert_readable_by(uid: u32, path: &Path, expected: &[u8], when: &str) {
    let output = run_as(uid, "cat", &[path.as_os_str()]);
    assert!(
        output.status.success(),
        "{when}: cat {} as uid {uid}: {}\nstderr: {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_same_bytes(&output.stdout, expected, &format!("{when}: cat as uid {uid}"));
}

/// `ls -ln DIR` (`ls -l` with numeric owners): the line of `name`.
fn ls_line(dir: &Path, name: &str) -> String {
    let stdout = String::from_utf8(run_ok("ls", &["-ln".as_ref(), dir.as_os_str()])).expect("text");
    stdout
        .lines()
        .find(|line| line.ends_with(&format!(" {name}")))
        .unwrap_or_else(|| panic!("{name} is not in `ls -ln {}`:\n{stdout}", dir.display()))
        .to_owned()
}

/// Seconds and nanoseconds of a time header (`S[.F]`).
fn parse_time(value: &str) -> (i64, i64) {
    let (seconds, fraction) = value.split_once('.').unwrap_or((value, ""));
    assert!(
        fraction.len() <= 9 && fraction.bytes().all(|b| b.is_ascii_digit()),
        "time header {value:?}"
    );
    let nanos = format!("{fraction:0<9}");
    (
        seconds
            .parse()
            .unwrap_or_else(|_| panic!("time header {value:?}")),
        nanos.parse().expect("nine digits"),
    )
}

// ---------------------------------------------------------------------------------------------
// A byte counter on the wire

/// One request as it went to S3.
#[derive(Clone, Debug)]
struct Request {
    /// `PUT /bucket/key?partNumber=1&uploadId=... HTTP/1.1`.
    line: String,
    /// Whether it carried `x-amz-copy-source` (a CopyObject or UploadPartCopy: no data in it).
    copy_source: bool,
}

/// A TCP relay in front of the S3 server that counts the bytes each way and notes each
/// request's first line. It sits behind the fault proxy, which sends every request on a
/// connection of its own (`Connection: close`), so each connection here is one request.
/// Counters are updated as bytes flow, so they are exact once the client has its answer.
struct WireCounter {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<Request>>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl WireCounter {
    fn start(upstream: SocketAddr) -> WireCounter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the wire counter");
        let addr = listener.local_addr().expect("wire counter address");
        let sent: Arc<AtomicU64> = Arc::default();
        let received: Arc<AtomicU64> = Arc::default();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stopping: Arc<AtomicBool> = Arc::default();
        let acceptor = {
            let (sent, received, requests, stopping) =
                (sent.clone(), received.clone(), requests.clone(), stopping.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (sent, received, requests) = (sent.clone(), received.clone(), requests.clone());
                    // Detached: it ends when both ends of its connection close.
                    thread::spawn(move || {
                        let _ = relay(client, upstream, &sent, &received, &requests);
                    });
                }
            })
        };
        WireCounter {
            addr,
            sent,
            received,
            requests,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    /// Bytes sent to S3 and received from it so far, and the requests so far.
    fn snapshot(&self) -> (u64, u64, usize) {
        (
            self.sent.load(Ordering::SeqCst),
            self.received.load(Ordering::SeqCst),
            self.requests().len(),
        )
    }

    fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for WireCounter {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // Wakes the acceptor.
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies one connection both ways, counting.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    sent: &AtomicU64,
    received: &AtomicU64,
    requests: &Mutex<Vec<Request>>,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    let (mut from_server, mut to_client) = (server, client);
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut head = Vec::new();
            let mut noted = false;
            let mut buf = vec![0u8; 64 * KIB];
            loop {
                let n = match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                sent.fetch_add(n as u64, Ordering::SeqCst);
                if !noted {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                        let line = String::from_utf8_lossy(&head[..end])
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let copy_source = text.contains("\r\nx-amz-copy-source:");
                        requests
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Request { line, copy_source });
                        noted = true;
                    }
                }
                if to_server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown(std::net::Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 * KIB];
        loop {
            let n = match from_server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            received.fetch_add(n as u64, Ordering::SeqCst);
            if to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(std::net::Shutdown::Write);
    });
    Ok(())
}

/// The S3 server's address.
fn server_addr() -> SocketAddr {
    let url = &settings().endpoint_url;
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the test server's endpoint {url} is not plain http"));
    authority
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("endpoint {url}: {e}"))
}

/// Mounts `prefix` behind the fault proxy, itself in front of a wire counter in front of the
/// server: mount -> proxy -> counter -> S3.
fn mount_counted(prefix: &TestPrefix) -> (WireCounter, FaultProxy, Mount) {
    let counter = WireCounter::start(server_addr());
    let proxy = FaultProxy::start(counter.addr).expect("starting the fault proxy");
    let url = proxy.url();
    let mount = Mount::start(&[&prefix.source()], &["--endpoint-url", &url]);
    (counter, proxy, mount)
}

/// chmod 0600 of `relative` through a counted mount; asserts that what went to S3 was a few
/// requests of headers only (a copy on the server), never the object's data, and returns
/// (bytes sent, bytes received, requests).
fn counted_chmod(prefix: &TestPrefix, relative: &str, size: u64) -> (u64, u64, Vec<Request>) {
    let (counter, proxy, mount) = mount_counted(prefix);
    let path = mount.join(relative);
    let (sent_before, received_before, seen_before) = counter.snapshot();
    let proxied_before = proxy.requests();
    let started = Instant::now();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 0600 {}: {e}", path.display()));
    let took = started.elapsed();
    let (sent_after, received_after, _) = counter.snapshot();
    let requests: Vec<Request> = counter.requests()[seen_before..].to_vec();
    let (sent, received) = (sent_after - sent_before, received_after - received_before);
    eprintln!(
        "chmod of a {size}-byte object: {took:?}, {sent} bytes sent to S3, {received} received, \
         requests: {requests:#?}"
    );
    assert_eq!(
        proxy.requests() - proxied_before,
        requests.len() as u64,
        "the counter saw every request the fault proxy forwarded"
    );
    assert!(
        requests.iter().any(|r| r.copy_source),
        "the change is a copy on the server: {requests:#?}"
    );
    for request in &requests {
        assert!(
            !request.line.starts_with("PUT ") || request.copy_source,
            "a PUT that carries data (PutObject or UploadPart): {request:?}"
        );
        assert!(
            !request.line.starts_with("GET ") || request.line.contains("list-type="),
            "a GET that is not a listing: the object's data was read: {request:?}"
        );
    }
    // Headers and a CompleteMultipartUpload body are a few KiB; the data is megabytes.
    let ceiling = 64 * KIB as u64 + 2 * KIB as u64 * requests.len() as u64;
    assert!(
        sent < ceiling && sent * 100 < size,
        "{sent} bytes went to S3 for the chmod of a {size}-byte object (ceiling {ceiling})"
    );
    assert!(
        received < ceiling,
        "{received} bytes came back from S3 for a chmod"
    );
    drop(mount);
    (sent, received, requests)
}

// ---------------------------------------------------------------------------------------------
// User attributes

#[test]
fn user_attributes_are_set_listed_and_removed_on_files_and_directories() {
    let prefix = TestPrefix::new("x-user");
    let body = b"attributes do not touch the bytes\n";
    let etag = prefix.put("doc.txt", &body[..]);
    prefix.put("implied/inside.txt", "no marker for implied/");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let doc = mount.join("doc.txt");
    std::fs::create_dir(mount.join("made")).expect("mkdir made");
    assert!(prefix.head("made/").is_some(), "mkdir made the marker");

    setfattr(&doc, "user.Team", "ml-infra");
    let unicode = "caf\u{e9} \u{2615} \u{1f600}";
    setfattr(&doc, "user.note", unicode);
    let stored = user_metadata(&prefix, "doc.txt");
    assert_eq!(
        stored.get("team").map(String::as_str),
        Some("ml-infra"),
        "user.Team is x-amz-meta-team: {stored:?}"
    );
    let note = stored.get("note").expect("x-amz-meta-note");
    assert_eq!(
        decode_encoded_word(note),
        unicode.as_bytes(),
        "a UTF-8 value is stored as an encoded word"
    );
    assert_eq!(getfattr_value(&doc, "user.team"), b"ml-infra");
    assert_eq!(getfattr_value(&doc, "user.note"), unicode.as_bytes());
    assert_eq!(
        get_xattr(&doc, "user.note").expect("getxattr"),
        unicode.as_bytes()
    );

    let dumped = getfattr_dump_names(&doc, &[]);
    for name in ["user.note", "user.team"] {
        assert!(
            dumped.iter().any(|n| n == name),
            "getfattr -d shows {name}: {dumped:?}"
        );
    }
    let all = getfattr_dump_names(&doc, &["-m", "-"]);
    for name in [
        "user.note",
        "user.team",
        "user.s3.etag",
        "user.s3.key",
        "user.s3.size",
        "user.s3.last_modified",
    ] {
        assert!(
            all.iter().any(|n| n == name),
            "getfattr -d -m - shows {name}: {all:?}"
        );
    }
    assert_eq!(getfattr_value(&doc, "user.s3.etag"), etag.as_bytes());
    assert_eq!(
        getfattr_value(&doc, "user.s3.size"),
        body.len().to_string().as_bytes()
    );
    assert_eq!(
        getfattr_value(&doc, "user.s3.key"),
        prefix.key("doc.txt").as_bytes()
    );

    // Directories: on the marker mkdir made, and on one created for a directory that had none.
    setfattr(&mount.join("made"), "user.owner-team", "vision");
    setfattr(&mount.join("implied"), "user.owner-team", "speech");
    assert_eq!(
        user_metadata(&prefix, "made/")
            .get("owner-team")
            .map(String::as_str),
        Some("vision"),
        "on the marker mkdir made"
    );
    assert_eq!(
        user_metadata(&prefix, "implied/"),
        user(&[("owner-team", "speech")]),
        "a directory without a marker gets one carrying the attribute, and nothing else"
    );
    assert_eq!(
        getfattr_value(&mount.join("implied"), "user.owner-team"),
        b"speech"
    );
    assert!(
        getfattr_dump_names(&mount.join("made"), &[])
            .iter()
            .any(|n| n == "user.owner-team")
    );

    removefattr(&doc, "user.team");
    let stored = user_metadata(&prefix, "doc.txt");
    assert!(
        !stored.contains_key("team"),
        "x-amz-meta-team is gone: {stored:?}"
    );
    assert!(
        stored.contains_key("note"),
        "the other attribute stays: {stored:?}"
    );
    run_fails(
        "getfattr",
        &["-n".as_ref(), "user.team".as_ref(), doc.as_os_str()],
        "No such attribute",
    );
    assert_errno(
        "getxattr of a removed attribute",
        get_xattr(&doc, "user.team"),
        libc::ENODATA,
    );
    removefattr(&mount.join("made"), "user.owner-team");
    assert!(
        !user_metadata(&prefix, "made/").contains_key("owner-team"),
        "the marker's header is gone"
    );
    assert_object(&prefix, "doc.txt", body);
    assert_eq!(
        head(&prefix, "doc.txt").etag,
        etag,
        "a copy onto itself keeps the ETag"
    );

    // A fresh daemon knows only what the bucket holds.
    let mount = remount(mount, &prefix, &[]);
    let doc = mount.join("doc.txt");
    assert_eq!(getfattr_value(&doc, "user.note"), unicode.as_bytes());
    assert_errno(
        "user.team after the remount",
        get_xattr(&doc, "user.team"),
        libc::ENODATA,
    );
    assert_eq!(
        getfattr_value(&mount.join("implied"), "user.owner-team"),
        b"speech"
    );
    assert_errno(
        "made's removed attribute after the remount",
        get_xattr(&mount.join("made"), "user.owner-team"),
        libc::ENODATA,
    );
    assert_eq!(read_file(&doc), body);
}

#[test]
fn content_headers_are_settable_and_survive_an_append_and_the_etag_is_read_only() {
    let prefix = TestPrefix::new("x-content");
    prefix.put("page.html", "<p>one</p>\n");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let page = mount.join("page.html");

    setfattr(&page, "user.s3.content_type", "text/x-test; charset=utf-8");
    setfattr(&page, "user.s3.cache_control", "max-age=60, public");
    let metadata = head(&prefix, "page.html").metadata;
    assert_eq!(
        metadata.content_type.as_deref(),
        Some("text/x-test; charset=utf-8")
    );
    assert_eq!(metadata.cache_control.as_deref(), Some("max-age=60, public"));
    assert_eq!(
        getfattr_value(&page, "user.s3.content_type"),
        b"text/x-test; charset=utf-8"
    );

    append(&page, b"<p>two</p>\n");
    assert_object(&prefix, "page.html", b"<p>one</p>\n<p>two</p>\n");
    let after = head(&prefix, "page.html").metadata;
    assert_eq!(
        (after.content_type.as_deref(), after.cache_control.as_deref()),
        (Some("text/x-test; charset=utf-8"), Some("max-age=60, public")),
        "an append keeps the headers set as attributes"
    );

    let etag = head(&prefix, "page.html").etag;
    assert_errno(
        "setxattr user.s3.etag",
        set_xattr(&page, "user.s3.etag", b"\"0123\""),
        libc::EPERM,
    );
    run_fails(
        "setfattr",
        &[
            "-n".as_ref(),
            "user.s3.size".as_ref(),
            "-v".as_ref(),
            "1".as_ref(),
            page.as_os_str(),
        ],
        "Operation not permitted",
    );
    assert_errno(
        "removexattr user.s3.etag",
        run_removexattr(&page, "user.s3.etag"),
        libc::EPERM,
    );
    assert_eq!(head(&prefix, "page.html").etag, etag, "nothing changed");
    assert_eq!(getfattr_value(&page, "user.s3.etag"), etag.as_bytes());

    let mount = remount(mount, &prefix, &[]);
    let page = mount.join("page.html");
    assert_eq!(
        getfattr_value(&page, "user.s3.cache_control"),
        b"max-age=60, public"
    );
    removefattr(&page, "user.s3.cache_control");
    assert_eq!(head(&prefix, "page.html").metadata.cache_control, None);
}

/// removexattr(2).
fn run_removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (path, name) = (c_string(path.as_os_str().as_bytes()), c_string(name.as_bytes()));
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// chmod, chown, touch

#[test]
fn chmod_chown_and_touch_are_kept_in_headers_by_a_copy_and_show_after_a_remount() {
    let prefix = TestPrefix::new("x-posix");
    let body = pseudo_random(11, 3000);
    let etag = prefix.put("data.bin", body.clone());
    let uploaded = head(&prefix, "data.bin").last_modified;
    let uploaded_secs = uploaded.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    prefix.put("dir/inside.txt", "x");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let path = mount.join("data.bin");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    let stored = user_metadata(&prefix, "data.bin");
    assert_eq!(
        stored.get("mode").map(String::as_str),
        Some(REGULAR_0600),
        "{stored:?}"
    );
    assert_eq!(
        stored.get("mtime").map(|t| parse_time(t)),
        Some((uploaded_secs as i64, 0)),
        "chmod keeps the modification time (the copy moved Last-Modified): {stored:?}"
    );
    assert_eq!(
        stat(&path).mtime(),
        uploaded_secs as i64,
        "chmod does not change the mtime"
    );

    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).expect("chown 1234:5678");
    let output = {
        let mut touch = Command::new("touch");
        touch
            .env("TZ", "UTC")
            .args(["-d", "2020-01-02 03:04:05.5"])
            .arg(&path);
        run_bounded(touch)
    };
    assert!(
        output.status.success(),
        "touch -d: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 2020-01-02T03:04:05.5Z: 18263 days after the epoch, plus 3 h 4 min 5.5 s.
    let expected_mtime = (18_263 * 86_400 + 3 * 3600 + 4 * 60 + 5, 500_000_000);
    assert_eq!(expected_mtime.0, 1_577_934_245);

    let stored = user_metadata(&prefix, "data.bin");
    eprintln!("headers after chmod, chown, touch: {stored:?}");
    assert_eq!(stored.get("mode").map(String::as_str), Some(REGULAR_0600));
    assert_eq!(stored.get("uid").map(String::as_str), Some("1234"));
    assert_eq!(stored.get("gid").map(String::as_str), Some("5678"));
    for name in ["mtime", "atime"] {
        assert_eq!(
            stored.get(name).map(|t| parse_time(t)),
            Some(expected_mtime),
            "x-amz-meta-{name}: {stored:?}"
        );
    }
    let after = head(&prefix, "data.bin");
    assert_eq!(
        after.etag, etag,
        "a copy onto itself: the data was not sent again"
    );
    assert_eq!(after.size, body.len() as u64);
    assert_object(&prefix, "data.bin", &body);

    let check = |path: &Path, when: &str| {
        let meta = stat(path);
        assert_eq!(meta.mode(), 0o100600, "{when}: mode {:o}", meta.mode());
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{when}: owner");
        assert_eq!((meta.mtime(), meta.mtime_nsec()), expected_mtime, "{when}: mtime");
        assert_eq!((meta.atime(), meta.atime_nsec()), expected_mtime, "{when}: atime");
        assert_eq!(meta.len(), body.len() as u64, "{when}: size");
    };
    check(&path, "on the mount that changed them");

    std::fs::set_permissions(mount.join("dir"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 0700 dir");
    assert_eq!(
        user_metadata(&prefix, "dir/").get("mode").map(String::as_str),
        Some("16832"),
        "a directory's mode is kept on its marker (S_IFDIR | 0700)"
    );

    let mount = remount(mount, &prefix, &[]);
    check(&mount.join("data.bin"), "after a remount");
    assert_eq!(
        stat(&mount.join("dir")).mode(),
        0o40700,
        "the directory after a remount"
    );
    assert_eq!(read_file(&mount.join("data.bin")), body);
    assert_eq!(head(&prefix, "data.bin").etag, etag);
    // POSIX attributes are stat's, not extended attributes.
    let dumped = getfattr_dump_names(&mount.join("data.bin"), &["-m", "-"]);
    for hidden in ["user.mode", "user.uid", "user.gid", "user.mtime", "user.atime"] {
        assert!(!dumped.iter().any(|n| n == hidden), "{hidden} listed: {dumped:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Objects written by s3fs, and symlinks

#[test]
fn s3fs_modes_owners_times_and_symlinks_show_and_ln_s_writes_them_the_same_way() {
    let prefix = TestPrefix::new("x-s3fs");
    let s3fs = |entries: &[(&str, &str)]| ObjectMetadata {
        user: user(entries),
        ..ObjectMetadata::default()
    };
    prefix.put_with_metadata(
        "tool.sh",
        "#!/bin/sh\n",
        &s3fs(&[
            ("mode", "33261"),
            ("uid", "1000"),
            ("gid", "1000"),
            ("mtime", "1600000000"),
        ]),
    );
    prefix.put("target/file", "pointed at\n");
    prefix.put_with_metadata("link", "target/file", &s3fs(&[("mode", SYMLINK_MODE)]));
    prefix.put_with_metadata("dirlink", "target", &s3fs(&[("mode", SYMLINK_MODE)]));
    let mount = Mount::start(&[&prefix.source()], &[]);

    let meta = stat(&mount.join("tool.sh"));
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o7777, 0o755, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_600_000_000, 0));

    let link = mount.join("link");
    let meta = std::fs::symlink_metadata(&link).expect("lstat link");
    assert!(meta.file_type().is_symlink(), "mode {:o}", meta.mode());
    assert_eq!(
        std::fs::read_link(&link).expect("readlink"),
        Path::new("target/file")
    );
    assert_eq!(read_file(&link), b"pointed at\n", "open follows the link");
    assert_eq!(
        read_file(&mount.join("dirlink/file")),
        b"pointed at\n",
        "a symlink to a directory in the middle of a path"
    );

    std::os::unix::fs::symlink("target/file", mount.join("made-link")).expect("ln -s");
    std::os::unix::fs::symlink("target", mount.join("made-dirlink")).expect("ln -s to a directory");
    let made = head(&prefix, "made-link");
    assert_eq!(
        made.metadata.user.get("mode").map(String::as_str),
        Some(SYMLINK_MODE),
        "ln -s writes s3fs's symlink: {:?}",
        made.metadata.user
    );
    assert_object(&prefix, "made-link", b"target/file");
    assert_object(&prefix, "made-dirlink", b"target");
    assert_eq!(read_file(&mount.join("made-dirlink/file")), b"pointed at\n");

    let mount = remount(mount, &prefix, &[]);
    assert_eq!(
        std::fs::read_link(mount.join("made-link")).expect("readlink after remount"),
        Path::new("target/file")
    );
    assert_eq!(read_file(&mount.join("made-link")), b"pointed at\n");
    assert_eq!(read_file(&mount.join("made-dirlink/file")), b"pointed at\n");
    // With `exact`, what a listing showed first is right too (`lazy`, the default without
    // --allow-other, shows a listed symlink as a file until it is looked at closely, as
    // src/fs.rs documents).
    let mount = remount(mount, &prefix, &["--posix-metadata", "exact"]);
    let line = ls_line(mount.path(), "tool.sh");
    assert!(
        line.starts_with("-rwxr-xr-x ") && line.contains(" 1000 1000 "),
        "ls -l shows s3fs's mode and owner: {line}"
    );
    let line = ls_line(mount.path(), "link -> target/file");
    assert!(line.starts_with("lrwxrwxrwx "), "ls -l shows the symlink: {line}");
    for name in ["link", "made-link"] {
        assert!(
            std::fs::symlink_metadata(mount.join(name))
                .expect("lstat")
                .file_type()
                .is_symlink(),
            "{name} after a listing"
        );
    }
    assert_eq!(read_file(&mount.join("made-dirlink/file")), b"pointed at\n");
}

// ---------------------------------------------------------------------------------------------
// Listing with attributes (READDIRPLUS)

/// Everything `stat` shows of a path (not following a link).
#[derive(Clone, Debug, PartialEq, Eq)]
struct StatFields {
    ino: u64,
    mode: u32,
    owner: (u32, u32),
    nlink: u64,
    size: u64,
    blocks: (u64, u64),
    /// (mtime, ctime, atime), each as seconds and nanoseconds.
    times: [(i64, i64); 3],
}

fn stat_fields(path: &Path) -> StatFields {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    StatFields {
        ino: m.ino(),
        mode: m.mode(),
        owner: (m.uid(), m.gid()),
        nlink: m.nlink(),
        size: m.size(),
        blocks: (m.blksize(), m.blocks()),
        times: [
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
            (m.atime(), m.atime_nsec()),
        ],
    }
}

/// Lists `dir` and stats each entry as `ls -l` does, by name.
fn ls_l(dir: &Path) -> Vec<(String, StatFields)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let fields = stat_fields(&dir.join(&name));
            (name, fields)
        })
        .collect()
}

#[test]
fn ls_l_is_answered_by_the_listing_with_the_attributes_a_lookup_gives() {
    let prefix = TestPrefix::new("x-rdplus");
    let s3fs = |entries: &[(&str, &str)]| ObjectMetadata {
        user: user(entries),
        ..ObjectMetadata::default()
    };
    let stored = [
        ("mode", REGULAR_0600),
        ("uid", "1001"),
        ("gid", "1002"),
        ("mtime", "1600000000"),
    ];
    for n in 0..30 {
        prefix.put(&format!("d/plain{n:02}"), vec![b'p'; n * 100]);
    }
    prefix.put_with_metadata("d/stored", "kept attributes\n", &s3fs(&stored));
    prefix.put_with_metadata("d/opened", "opened first\n", &s3fs(&stored));
    prefix.put("d/sub/inner", "x");
    prefix.put_with_metadata("d/marked/", "", &s3fs(&[("mode", "16832"), ("uid", "1003")]));
    let endpoint = MetricsEndpoint::on_free_port();
    let addr = endpoint.arg();
    let mount = Mount::start(&[&prefix.source()], &["--metrics-addr", &addr]);
    let dir = mount.join("d");
    // One file looked at closely before the listing, one being written during it.
    assert_eq!(read_file(&dir.join("opened")), b"opened first\n");
    let mut writing = std::fs::File::create(dir.join("writing")).expect("creating a file");
    writing.write_all(b"staged, not uploaded").expect("writing");
    let before = endpoint.wait_until_answering(&mount);

    let listed = ls_l(&dir);
    let after_listing = endpoint.scrape(&mount);
    let fuse = |scrape: &Scrape, op: &str| scrape.sum("s3mount_fuse_requests_total", &[("operation", op)]);
    let s3 = |scrape: &Scrape, op: &str| scrape.sum("s3mount_s3_requests_total", &[("operation", op)]);
    assert_eq!(listed.len(), 30 + 5, "{listed:?}");
    assert!(
        fuse(&after_listing, "readdirplus") - fuse(&before, "readdirplus") >= 1.0,
        "the kernel listed with READDIRPLUS: {}",
        after_listing.show("s3mount_fuse_requests_total")
    );
    assert_eq!(
        fuse(&after_listing, "lookup") - fuse(&before, "lookup"),
        0.0,
        "no entry needed a lookup of its own: {}",
        after_listing.show("s3mount_fuse_requests_total")
    );
    assert_eq!(s3(&after_listing, "HeadObject") - s3(&before, "HeadObject"), 0.0);

    // The kernel forgets every entry; stat asks the daemon again, entry by entry.
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("dropping the kernel's dentries (root)");
    let looked_up: Vec<_> = listed
        .iter()
        .map(|(name, _)| (name.clone(), stat_fields(&dir.join(name))))
        .collect();
    let after_lookups = endpoint.scrape(&mount);
    // All but the file held open (whose dentry is in use), and `d` again.
    assert!(
        fuse(&after_lookups, "lookup") - fuse(&after_listing, "lookup") >= listed.len() as f64 - 1.0,
        "each stat was a lookup: {}",
        after_lookups.show("s3mount_fuse_requests_total")
    );
    for ((name, from_listing), (_, from_lookup)) in listed.iter().zip(&looked_up) {
        assert_eq!(
            from_listing, from_lookup,
            "{name}: the listing's attributes and a lookup's"
        );
    }
    let of = |name: &str| &listed.iter().find(|(n, _)| n == name).expect(name).1;
    assert_eq!(of("writing").size, 20, "the staged size");
    assert_eq!(of("plain07").size, 700);
    assert_eq!(of("sub").mode & 0o170000, 0o040000, "a prefix is a directory");
    close(writing).expect("closing (the upload)");
}

// ---------------------------------------------------------------------------------------------
// Permission checks

#[test]
fn allow_other_checks_permissions_with_the_kept_mode_and_owner_also_after_ls_l() {
    let prefix = TestPrefix::new("x-perm");
    let secret = b"for uid 1000 only\n";
    prefix.put("private/secret.txt", &secret[..]);
    prefix.put("private/open.txt", "anyone\n");
    let mount = Mount::start(&[&prefix.source()], &["--allow-other"]);
    let path = mount.join("private/secret.txt");
    assert_readable_by(
        1001,
        &mount.join("private/open.txt"),
        b"anyone\n",
        "a default 0644 file",
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    std::os::unix::fs::chown(&path, Some(1000), Some(1000)).expect("chown 1000:1000");
    assert_refused_to(1001, &path, "after chmod and chown");
    assert_readable_by(1000, &path, secret, "after chmod and chown");
    let stored = user_metadata(&prefix, "private/secret.txt");
    assert_eq!(
        (stored.get("mode"), stored.get("uid"), stored.get("gid")),
        (
            Some(&REGULAR_0600.to_owned()),
            Some(&"1000".to_owned()),
            Some(&"1000".to_owned())
        )
    );

    // A fresh mount: the listing comes first and must not stand in for the kept attributes.
    let mount = remount(mount, &prefix, &["--allow-other"]);
    let path = mount.join("private/secret.txt");
    run_ok("ls", &["-l".as_ref(), mount.join("private").as_os_str()]);
    assert_refused_to(1001, &path, "after ls -l on a fresh mount");
    assert_readable_by(1000, &path, secret, "after ls -l on a fresh mount");
    let line = ls_line(&mount.join("private"), "secret.txt");
    assert!(
        line.starts_with("-rw------- ") && line.contains(" 1000 1000 "),
        "ls -l shows the kept mode and owner: {line}"
    );
    assert_readable_by(
        1001,
        &mount.join("private/open.txt"),
        b"anyone\n",
        "the other file",
    );

    // And on a mount where nobody listed it first.
    let mount = remount(mount, &prefix, &["--allow-other"]);
    assert_refused_to(1001, &mount.join("private/secret.txt"), "on a fresh mount");
}

#[test]
fn posix_metadata_off_accepts_chmod_and_keeps_nothing() {
    let prefix = TestPrefix::new("x-off");
    let etag = prefix.put("f.txt", "unchanged\n");
    let mount = Mount::start(&[&prefix.source()], &["--posix-metadata", "off"]);
    let path = mount.join("f.txt");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod is accepted with --posix-metadata off");
    std::os::unix::fs::chown(&path, Some(1234), Some(5678))
        .expect("chown is accepted with --posix-metadata off");
    let after = head(&prefix, "f.txt");
    assert!(
        after.metadata.user.is_empty(),
        "nothing kept: {:?}",
        after.metadata.user
    );
    assert_eq!(after.etag, etag);

    let mount = remount(mount, &prefix, &["--posix-metadata", "off"]);
    assert_eq!(stat(&mount.join("f.txt")).mode(), 0o100644, "the default mode");
    assert!(user_metadata(&prefix, "f.txt").is_empty());
}

#[test]
fn hard_links_and_fifos_are_refused_with_eperm() {
    let prefix = TestPrefix::new("x-eperm");
    prefix.put("f.txt", "one name only\n");
    let mount = Mount::start(&[&prefix.source()], &[]);
    assert_errno(
        "ln",
        std::fs::hard_link(mount.join("f.txt"), mount.join("g.txt")),
        libc::EPERM,
    );
    let fifo = c_string(mount.join("fifo").as_os_str().as_bytes());
    // SAFETY: the path is NUL-terminated and outlives the call.
    let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    let result = if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    assert_errno("mkfifo", result, libc::EPERM);
    run_fails(
        "ln",
        &[mount.join("f.txt").as_os_str(), mount.join("h.txt").as_os_str()],
        "Operation not permitted",
    );
    let mut keys = prefix.list_all();
    keys.sort();
    assert_eq!(keys, ["f.txt"], "nothing was created");
}

// ---------------------------------------------------------------------------------------------
// Big objects: a metadata change is a copy on the server

#[test]
fn chmod_of_a_40_mib_object_sends_headers_only() {
    let prefix = TestPrefix::new("x-big");
    let body = pseudo_random(40, 40 * MIB);
    let etag = prefix.put("big.bin", body.clone());
    let size = body.len() as u64;
    counted_chmod(&prefix, "big.bin", size);
    let after = head(&prefix, "big.bin");
    assert_eq!(
        after.metadata.user.get("mode").map(String::as_str),
        Some(REGULAR_0600)
    );
    assert_eq!((after.size, &after.etag), (size, &etag), "the same bytes");
    assert_object(&prefix, "big.bin", &body);
}

/// Builds at PREFIX/`relative` an object of `copies` times `seed` with UploadPartCopy, so the
/// bytes never leave the server (and Garage stores each distinct block once).
fn build_on_server(prefix: &TestPrefix, relative: &str, seed_relative: &str, seed_len: u64, copies: u32) {
    let key = prefix.key(relative);
    let seed = prefix.key(seed_relative);
    let client = client(); // Built outside the runtime: building it blocks on one.
    runtime().block_on(async {
        let upload_id = client
            .create_multipart(&key, &PutOptions::default())
            .await
            .expect("CreateMultipartUpload");
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // Parts in flight at once: enough to keep the server busy, few enough for 2 cores.
        let parts: Vec<CompletedPart> = stream::iter(1..=copies)
            .map(|part_number| {
                let (key, seed, upload_id) = (&key, &seed, &upload_id);
                async move {
                    client
                        .upload_part_copy(key, upload_id, part_number, seed, 0..seed_len, None)
                        .await
                        .map(|etag| CompletedPart { part_number, etag })
                }
            })
            .buffered(4)
            .try_collect()
            .await
            .expect("UploadPartCopy");
        client
            .complete_multipart(&key, &upload_id, &parts, None, false)
            .await
            .expect("CompleteMultipartUpload");
    });
}

#[test]
fn chmod_of_a_6_gib_object_copies_on_the_server_and_sends_headers_only() {
    let prefix = TestPrefix::new("x-huge");
    let seed_len = 8 * MIB;
    let seed = pseudo_random(6, seed_len);
    prefix.put("seed.bin", seed.clone());
    let copies = 768; // 768 x 8 MiB = 6 GiB: above S3's 5 GiB limit of a single CopyObject.
    let started = Instant::now();
    build_on_server(&prefix, "huge.bin", "seed.bin", seed_len as u64, copies);
    let size = seed_len as u64 * u64::from(copies);
    eprintln!(
        "built a {size}-byte object on the server in {:?}",
        started.elapsed()
    );
    assert_eq!(head(&prefix, "huge.bin").size, size);

    let started = Instant::now();
    let (_, _, requests) = counted_chmod(&prefix, "huge.bin", size);
    eprintln!("chmod of {size} bytes took {:?} in all", started.elapsed());
    assert!(
        requests.iter().any(|r| r.line.contains("partNumber=")),
        "above 5 GiB the copy goes in parts (UploadPartCopy): {requests:#?}"
    );
    let after = head(&prefix, "huge.bin");
    assert_eq!(
        after.metadata.user.get("mode").map(String::as_str),
        Some(REGULAR_0600)
    );
    assert_eq!(after.size, size);
    // The bytes: a few ranges, across part boundaries of both the build and the copy.
    let key = prefix.key("huge.bin");
    for start in [
        0,
        5 * MIB as u64 - 100,
        (1 << 30) - 4096,
        size / 2 + 12_345,
        size - MIB as u64,
    ] {
        let range = start..(start + MIB as u64).min(size);
        let got: Bytes = runtime()
            .block_on(client().get_range(&key, range.clone(), Some(&after.etag)))
            .unwrap_or_else(|e| panic!("GetObject {range:?}: {e}"));
        let expected: Vec<u8> = range
            .clone()
            .map(|offset| seed[(offset % seed_len as u64) as usize])
            .collect();
        assert_same_bytes(&got, &expected, &format!("bytes {range:?} after the chmod"));
    }
    for relative in ["huge.bin", "seed.bin"] {
        runtime()
            .block_on(client().delete(&prefix.key(relative)))
            .unwrap_or_else(|e| panic!("deleting {relative}: {e}"));
    }
}
