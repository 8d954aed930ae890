//! Operations tests: the real `s3mount` binary mounted on a real S3 server (Garage on loopback),
//! watched the way an operator's tools watch it. A Unix datagram socket standing in for systemd
//! receives the notify protocol (READY=1 only once the mount answers, with a STATUS= line;
//! STOPPING=1 and EXTEND_TIMEOUT_USEC= while a SIGTERM waits for an open file; exit 0 once it is
//! closed and uploaded). A plain HTTP/1.0 client scrapes `--metrics-addr` and checks the
//! counters against what was really done through the mount: bytes answered to readers, bytes
//! fetched from S3 and from the block cache, GetObject requests, cache hits and the cache gauge.
//! `s3mount warm` fills the cache so that reading the warmed files costs no GetObject, while an
//! unwarmed file still does (the control that proves the counter counts). `s3mount status`, in
//! text and JSON, names the bucket, prefix, mount point and daemon pid, and shows a write that is
//! still open as a pending upload until its close. Paths that are not on a mount are refused by
//! both commands with a clear message. Each test owns a unique key prefix; every wait is a
//! bounded poll, nothing sleeps to synchronise.

mod common;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::metrics::{MetricsEndpoint, Scrape};
use common::{
    Mount, TestPrefix, WAIT, assert_same_bytes, cached_block_count, close, is_mounted, pseudo_random,
    run_bounded, s3mount_command, settings,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The cache's block size, in which S3 is read.
const BLOCK_SIZE: usize = s3mount::cache::BLOCK_SIZE as usize;

/// How often a poll looks again.
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Helpers: files

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Reads `path` through the mount and checks it holds `expected`.
fn read_and_check(path: &Path, expected: &[u8]) {
    assert_same_bytes(
        &read_file(path),
        expected,
        &format!("{} through the mount", path.display()),
    );
}

/// Asks the kernel to drop its cached pages of `path`, so the next read reaches the daemon.
fn drop_page_cache(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: a valid open descriptor; the advice only drops clean pages of the kernel's cache.
    let advice = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(advice, 0, "posix_fadvise(DONTNEED) of {}", path.display());
}

/// Polls `condition` until it holds, or panics after [`WAIT`] naming `what`, with the daemon's
/// log.
fn wait_for(mount: &Mount, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}\nlog:\n{}",
            mount.log_text()
        );
        std::thread::sleep(POLL);
    }
}

/// `s3mount ARGS...` (a subcommand: status, warm), bounded in time.
fn run_subcommand(args: &[&str]) -> Output {
    let mut command = s3mount_command();
    command.args(args);
    run_bounded(command)
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `s3mount ARGS...` must succeed; its stdout.
fn subcommand_ok(mount: &Mount, args: &[&str]) -> String {
    let output = run_subcommand(args);
    assert!(
        output.status.success(),
        "s3mount {args:?}: {}\nstdout: {}\nstderr: {}\nlog:\n{}",
        output.status,
        stdout_of(&output),
        stderr_of(&output),
        mount.log_text()
    );
    stdout_of(&output)
}

/// `s3mount ARGS...` must fail with status 1 and one `s3mount: error: ` line containing `needle`.
fn assert_subcommand_fails(args: &[&str], needle: &str) {
    let output = run_subcommand(args);
    let stderr = stderr_of(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "s3mount {args:?}: exit status; stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("s3mount: error: ") && stderr.contains(needle),
        "s3mount {args:?}: stderr should be one error line containing {needle:?}: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "s3mount {args:?}: nothing on stdout: {}",
        stdout_of(&output)
    );
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

// ---------------------------------------------------------------------------------------------
// Helpers: the notify protocol

/// One datagram the daemon sent to `NOTIFY_SOCKET`, and what was true when it arrived.
#[derive(Clone, Debug)]
struct Notice {
    /// Its `KEY=VALUE` lines, in order.
    fields: Vec<(String, String)>,
    /// Whether the mount point was in mountinfo when it arrived.
    mounted: bool,
    /// For READY=1: the size a stat of the probe file through the mount gave at that moment.
    probe_size: Option<Result<u64, String>>,
}

impl Notice {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

fn parse_notice_fields(datagram: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (line.to_owned(), String::new()),
        })
        .collect()
}

/// systemd's side of the notify protocol: a thread receives every datagram on the socket and
/// records it with the state of the mount at that moment.
struct NotifyListener {
    received: mpsc::Receiver<Notice>,
    /// Every notice received so far, in order.
    seen: Vec<Notice>,
    /// Where [`NotifyListener::next_with`] looks from.
    cursor: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifyListener {
    /// Listens on `socket`; `probe` (relative to `mount_point`) is stat'ed when READY=1 comes.
    fn start(socket: UnixDatagram, mount_point: PathBuf, probe: &str) -> Self {
        let (sender, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = mount_point.join(probe);
        socket
            .set_read_timeout(Some(POLL))
            .expect("read timeout on the notify socket");
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 64 * KIB];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = socket.recv(&mut buffer) else {
                        continue;
                    };
                    let notice = record_notice(&buffer[..len], &mount_point, &probe);
                    if sender.send(notice).is_err() {
                        return;
                    }
                }
            })
        };
        Self {
            received,
            seen: Vec::new(),
            cursor: 0,
            stop,
            thread: Some(thread),
        }
    }

    /// The next notice (after the last one this returned) with `key`, waiting up to [`WAIT`].
    fn next_with(&mut self, key: &str, mount: &Mount) -> Notice {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(offset) = self.seen[self.cursor..].iter().position(|n| n.get(key).is_some()) {
                let index = self.cursor + offset;
                self.cursor = index + 1;
                return self.seen[index].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification with {key} within {WAIT:?}; received: {:#?}\nlog:\n{}",
                self.seen,
                mount.log_text()
            );
            if let Ok(notice) = self.received.recv_timeout(left.min(POLL)) {
                self.seen.push(notice);
            }
        }
    }

    /// Every notice received so far, after taking in those still queued.
    fn all(&mut self) -> &[Notice] {
        self.seen.extend(self.received.try_iter());
        &self.seen
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn record_notice(datagram: &[u8], mount_point: &Path, probe: &Path) -> Notice {
    let fields = parse_notice_fields(datagram);
    let mounted = is_mounted(mount_point);
    let ready = fields.iter().any(|(k, v)| k == "READY" && v == "1");
    let probe_size = ready.then(|| {
        std::fs::metadata(probe)
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    });
    Notice {
        fields,
        mounted,
        probe_size,
    }
}

/// Sends SIGTERM to the foreground daemon of `mount`.
fn sigterm(mount: &mut Mount) {
    let child = mount.child().expect("a foreground child");
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: signalling our own child, which has not been waited for yet.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill {pid}: {}", io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// Helpers: Prometheus metrics

const FUSE_READ_BYTES: &str = "s3mount_fuse_read_bytes_total";
const READ_BYTES: &str = "s3mount_read_bytes_total";
const S3_REQUESTS: &str = "s3mount_s3_requests_total";
const CACHE_HITS: &str = "s3mount_block_cache_hits_total";
const CACHE_BYTES: &str = "s3mount_block_cache_bytes";

const FROM_S3: &[(&str, &str)] = &[("source", "s3")];
const FROM_BLOCK_CACHE: &[(&str, &str)] = &[("source", "block_cache")];
const ANY_GET: &[(&str, &str)] = &[("operation", "GetObject")];
const GOOD_GET: &[(&str, &str)] = &[("operation", "GetObject"), ("outcome", "ok")];

/// How much `name{labels}` grew from `before` to `after`.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

/// Scrapes until the bytes answered to FUSE reads since `before` reach `bytes` (the reads just
/// made are all counted), then checks they are exactly `bytes`.
fn scrape_after_reading(endpoint: &MetricsEndpoint, mount: &Mount, before: &Scrape, bytes: usize) -> Scrape {
    let after = endpoint.scrape_until(mount, &format!("{bytes} bytes are counted as read"), |s| {
        delta(before, s, FUSE_READ_BYTES, &[]) >= bytes as f64
    });
    assert_eq!(
        delta(before, &after, FUSE_READ_BYTES, &[]),
        bytes as f64,
        "{FUSE_READ_BYTES} grows by exactly the bytes read through the mount\nbefore:\n{}\nafter:\n{}",
        before.show(FUSE_READ_BYTES),
        after.show(FUSE_READ_BYTES)
    );
    after
}

/// Reads `files` (relative path, contents) through `mount`, checking their bytes, and checks
/// that it sent no GetObject since `before`; the scrape after the reads.
fn read_without_a_get(
    endpoint: &MetricsEndpoint,
    mount: &Mount,
    before: &Scrape,
    files: &[(&str, Vec<u8>)],
    what: &str,
) -> Scrape {
    for (relative, data) in files {
        read_and_check(&mount.join(relative), data);
    }
    let total: usize = files.iter().map(|(_, data)| data.len()).sum();
    let after = scrape_after_reading(endpoint, mount, before, total);
    assert_eq!(
        delta(before, &after, S3_REQUESTS, ANY_GET),
        0.0,
        "reading {what} sends no GetObject:\n{}",
        after.show(S3_REQUESTS)
    );
    after
}

/// Mounts `prefix` with its metrics at `endpoint` and a block cache that may fill the disk.
fn mount_with_metrics(prefix: &TestPrefix, endpoint: &MetricsEndpoint) -> Mount {
    let addr = endpoint.arg();
    Mount::start(
        &[&prefix.source()],
        &["--metrics-addr", &addr, "--cache-min-free", "0"],
    )
}

/// [`mount_with_metrics`], with the block cache in `cache`.
fn mount_with_metrics_and_cache(prefix: &TestPrefix, endpoint: &MetricsEndpoint, cache: &Path) -> Mount {
    let addr = endpoint.arg();
    let options = [
        "--metrics-addr",
        &addr,
        "--cache",
        path_arg(cache),
        "--cache-min-free",
        "0",
    ];
    Mount::start(&[&prefix.source()], &options)
}

// ---------------------------------------------------------------------------------------------
// Helpers: s3mount status

/// `s3mount status --json PATH`: exactly one JSON object.
fn status_json(mount: &Mount, path: &Path) -> serde_json::Value {
    let stdout = subcommand_ok(mount, &["status", "--json", path_arg(path)]);
    let value: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is not one JSON value ({e}): {stdout}"));
    assert!(value.is_object(), "status --json prints an object: {stdout}");
    value
}

/// Asks `s3mount status --json` until `condition` holds for its answer (bounded), which it
/// returns.
fn status_json_until(
    mount: &Mount,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_json(mount, mount.path());
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}; last status: {status:#}\nlog:\n{}",
            mount.log_text()
        );
        std::thread::sleep(POLL);
    }
}

fn json_u64(status: &serde_json::Value, field: &str) -> u64 {
    status[field]
        .as_u64()
        .unwrap_or_else(|| panic!("status field {field:?} is not a number: {status:#}"))
}

fn json_str<'a>(status: &'a serde_json::Value, field: &str) -> &'a str {
    status[field]
        .as_str()
        .unwrap_or_else(|| panic!("status field {field:?} is not a string: {status:#}"))
}

fn json_bool(status: &serde_json::Value, field: &str) -> bool {
    status[field]
        .as_bool()
        .unwrap_or_else(|| panic!("status field {field:?} is not a boolean: {status:#}"))
}

/// The one daemon of a background mount.
fn daemon_pid(mount: &Mount) -> u64 {
    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    u64::try_from(pids[0]).expect("a positive pid")
}

// ---------------------------------------------------------------------------------------------
// systemd notify

#[test]
fn notify_says_ready_once_the_mount_answers_and_stopping_while_a_sigterm_drains() {
    let prefix = TestPrefix::new("ops-notify");
    let probe = pseudo_random(1, 12_345);
    prefix.put("probe.bin", probe.clone());
    settings();
    let socket_dir = TempDir::new().expect("a directory for the notify socket");
    let socket_path = socket_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");

    let mut listener = None;
    let mut mount = Mount::foreground_with(&[&prefix.source()], &[], |command, mount_point| {
        command.env("NOTIFY_SOCKET", &socket_path);
        listener = Some(NotifyListener::start(socket, mount_point.to_owned(), "probe.bin"));
    });
    let mut listener = listener.expect("the notify listener started");

    let ready = listener.next_with("READY", &mount);
    assert_eq!(ready.get("READY"), Some("1"), "{ready:?}");
    assert!(
        ready.mounted,
        "READY=1 only once the mount is in mountinfo: {ready:?}"
    );
    assert_eq!(
        ready.probe_size,
        Some(Ok(probe.len() as u64)),
        "at READY=1 a file of the bucket stats with its size through the mount"
    );
    let expected_status = format!("mounted on {}", mount.path().display());
    assert_eq!(
        ready.get("STATUS"),
        Some(expected_status.as_str()),
        "READY=1 comes with a STATUS= line: {ready:?}"
    );

    // A file open for writing holds the mount: the SIGTERM must wait for its close.
    let pending = pseudo_random(2, 256 * KIB + 3);
    let mut file = File::create(mount.join("pending.bin")).expect("creating pending.bin");
    file.write_all(&pending).expect("writing pending.bin");
    sigterm(&mut mount);

    let stopping = listener.next_with("STOPPING", &mount);
    assert_eq!(stopping.get("STOPPING"), Some("1"), "{stopping:?}");
    assert!(
        stopping.get("STATUS").is_some_and(|s| s.starts_with("stopping")),
        "STOPPING=1 comes with a STATUS= line saying so: {stopping:?}"
    );
    assert!(stopping.mounted, "still mounted at STOPPING=1: {stopping:?}");
    let extend = listener.next_with("EXTEND_TIMEOUT_USEC", &mount);
    let usec: u64 = extend
        .get("EXTEND_TIMEOUT_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("EXTEND_TIMEOUT_USEC is a number: {extend:?}"));
    assert!(usec > 0, "EXTEND_TIMEOUT_USEC asks for more time: {extend:?}");
    let child = mount.child().expect("a foreground child");
    assert!(
        child.try_wait().expect("checking on s3mount").is_none(),
        "the daemon waits for the open file"
    );
    assert!(is_mounted(mount.path()), "the open file keeps the mount up");

    close(file).expect("closing pending.bin after SIGTERM (its upload)");
    let child = mount.child().expect("a foreground child");
    let status = common::wait_for_exit(child, "s3mount --foreground after SIGTERM and the close");
    mount.assert_stopped_cleanly(status, "after SIGTERM and the close");
    let uploaded = prefix.get("pending.bin").expect("pending.bin is in the bucket");
    assert_same_bytes(&uploaded, &pending, "pending.bin in the bucket");
    let readies = listener.all().iter().filter(|n| n.get("READY").is_some()).count();
    assert_eq!(readies, 1, "READY=1 is sent once: {:#?}", listener.all());
}

// ---------------------------------------------------------------------------------------------
// Prometheus metrics

#[test]
fn metrics_count_reads_from_s3_and_then_from_the_block_cache() {
    let prefix = TestPrefix::new("ops-metrics");
    let size = 3 * MIB + 5;
    let blocks = size.div_ceil(BLOCK_SIZE);
    let data = pseudo_random(3, size);
    prefix.put("f.bin", data.clone());
    let cache_parent = TempDir::new().expect("a directory for the block cache");
    let cache = cache_parent.path().join("cache");
    let endpoint = MetricsEndpoint::on_free_port();
    let mount = mount_with_metrics_and_cache(&prefix, &endpoint, &cache);
    let path = mount.join("f.bin");

    let before = endpoint.wait_until_answering(&mount);
    read_and_check(&path, &data);
    scrape_after_reading(&endpoint, &mount, &before, size);
    let cold = endpoint.scrape_until(&mount, "the bytes fetched from S3 are counted", |s| {
        delta(&before, s, READ_BYTES, FROM_S3) >= size as f64
    });
    assert!(
        delta(&before, &cold, S3_REQUESTS, GOOD_GET) >= 1.0,
        "a cold read is at least one successful GetObject:\n{}",
        cold.show(S3_REQUESTS)
    );

    // Every block on disk (so every fetch of them is over and counted), and the gauge says so.
    wait_for(
        &mount,
        &format!("the {blocks} blocks of f.bin are in {}", cache.display()),
        || cached_block_count(&cache) == blocks,
    );
    let cached = endpoint.scrape_until(&mount, "the block cache gauge holds the file", |s| {
        s.sum(CACHE_BYTES, &[]) >= size as f64
    });
    drop_page_cache(&path);
    read_and_check(&path, &data);
    let warm = scrape_after_reading(&endpoint, &mount, &cached, size);
    assert_eq!(
        delta(&cached, &warm, S3_REQUESTS, ANY_GET),
        0.0,
        "a reread of a cached file sends no GetObject:\n{}",
        warm.show(S3_REQUESTS)
    );
    assert!(
        delta(&cached, &warm, CACHE_HITS, &[]) >= blocks as f64,
        "the reread finds each of the {blocks} blocks in the block cache:\nbefore:\n{}\nafter:\n{}",
        cached.show(CACHE_HITS),
        warm.show(CACHE_HITS)
    );
    assert!(
        delta(&cached, &warm, READ_BYTES, FROM_BLOCK_CACHE) >= size as f64,
        "the reread's bytes come from the block cache:\nbefore:\n{}\nafter:\n{}",
        cached.show(READ_BYTES),
        warm.show(READ_BYTES)
    );
    assert_eq!(
        delta(&cached, &warm, READ_BYTES, FROM_S3),
        0.0,
        "the reread fetches no bytes from S3:\n{}",
        warm.show(READ_BYTES)
    );
}

// ---------------------------------------------------------------------------------------------
// s3mount warm

#[test]
fn warm_fills_the_cache_so_reading_the_warmed_files_costs_no_get() {
    let prefix = TestPrefix::new("ops-warm");
    let warmed = [
        ("dir/a.bin", pseudo_random(4, 700 * KIB + 1)),
        ("dir/sub/b.bin", pseudo_random(5, 2 * MIB + 333)),
        ("dir/c.txt", "a line of text\n".repeat(20_000).into_bytes()),
    ];
    let other = pseudo_random(6, MIB + 7);
    for (relative, data) in &warmed {
        prefix.put(relative, data.clone());
    }
    prefix.put("other.bin", other.clone());
    let endpoint = MetricsEndpoint::on_free_port();
    let mount = mount_with_metrics(&prefix, &endpoint);
    endpoint.wait_until_answering(&mount);

    let dir = mount.join("dir");
    let summary = subcommand_ok(&mount, &["warm", path_arg(&dir)]);
    let expected = format!("warmed 3 files on {}: ", mount.path().display());
    assert!(
        summary.contains(&expected),
        "warm's summary should contain {expected:?}: {summary}"
    );
    let again = subcommand_ok(&mount, &["warm", path_arg(&dir)]);
    assert!(
        again.contains(&expected) && again.contains(": 0 B fetched"),
        "a second warm finds everything cached: {again}"
    );

    let before = endpoint.scrape(&mount);
    let after = read_without_a_get(&endpoint, &mount, &before, &warmed, "warmed files");

    // The control: a file that was not warmed is fetched, so the counter does count.
    read_and_check(&mount.join("other.bin"), &other);
    endpoint.scrape_until(&mount, "reading other.bin (not warmed) sends a GetObject", |s| {
        delta(&after, s, S3_REQUESTS, GOOD_GET) >= 1.0
    });
}

/// `warm s3://BUCKET/PREFIX --cache DIR` with no mount, then a mount on that cache: the
/// training node's boot-time fill before the job mounts.
#[test]
fn warm_of_an_s3_url_fills_a_cache_dir_that_a_later_mount_reads_without_a_get() {
    let prefix = TestPrefix::new("ops-warm-url");
    let files = [
        ("train/x.bin", pseudo_random(7, 3 * MIB + 11)),
        ("train/y.bin", pseudo_random(8, 200 * KIB)),
    ];
    for (relative, data) in &files {
        prefix.put(relative, data.clone());
    }
    let cache_home = TempDir::new().expect("a temporary directory");
    let cache = cache_home.path().join("cache");
    let url = format!("s3://{}/{}train/", prefix.bucket(), prefix.prefix());
    let mut warm = s3mount_command();
    // No free-space floor, as the mount below: this test checks what is cached, not the disk.
    warm.args(["warm", &url, "--cache", path_arg(&cache), "--cache-min-free", "0"])
        .args(common::endpoint_args());
    let output = run_bounded(warm);
    assert!(
        output.status.success(),
        "warm {url} --cache DIR: {}\n{}",
        output.status,
        stderr_of(&output)
    );
    assert!(
        stdout_of(&output).contains("warmed 2 files on "),
        "warm's summary names the 2 files: {}",
        stdout_of(&output)
    );

    let endpoint = MetricsEndpoint::on_free_port();
    let mount = mount_with_metrics_and_cache(&prefix, &endpoint, &cache);
    let before = endpoint.wait_until_answering(&mount);
    read_without_a_get(
        &endpoint,
        &mount,
        &before,
        &files,
        "what warm put in the cache directory",
    );
}

#[test]
fn warm_and_status_refuse_a_path_that_is_not_on_a_mount() {
    assert_subcommand_fails(&["warm", "/tmp"], "/tmp is not on an s3mount mount");
    assert_subcommand_fails(&["status", "/tmp"], "/tmp is not on an s3mount mount");
    assert_subcommand_fails(&["status", "--json", "/tmp"], "/tmp is not on an s3mount mount");
}

// ---------------------------------------------------------------------------------------------
// s3mount status

#[test]
fn status_names_the_mount_in_text() {
    let prefix = TestPrefix::new("ops-status-text");
    prefix.put("hello.txt", b"hello\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let pid = daemon_pid(&mount);

    let text = subcommand_ok(&mount, &["status", path_arg(mount.path())]);
    let heading = format!(
        "s3mount on {}: bucket {}, prefix {:?}",
        mount.path().display(),
        prefix.bucket(),
        prefix.prefix()
    );
    assert!(
        text.starts_with(&heading),
        "status should start with {heading:?}: {text}"
    );
    assert!(
        text.contains(&format!("(pid {pid},")),
        "status names pid {pid}: {text}"
    );
    assert!(
        text.contains("pending uploads: 0 files") && text.contains("recent errors:   none"),
        "status of an idle mount: {text}"
    );

    // Any path inside the mount finds its daemon too.
    let inside = subcommand_ok(&mount, &["status", path_arg(&mount.join("hello.txt"))]);
    assert!(
        inside.starts_with(&heading),
        "status of a file in the mount: {inside}"
    );
}

#[test]
fn status_json_reports_the_mount_and_a_pending_upload_until_its_close() {
    let prefix = TestPrefix::new("ops-status-json");
    let hello = b"hello, status\n".to_vec();
    prefix.put("hello.txt", hello.clone());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let pid = daemon_pid(&mount);
    read_and_check(&mount.join("hello.txt"), &hello);

    let idle = status_json(&mount, mount.path());
    assert_eq!(json_str(&idle, "mount_point"), path_arg(mount.path()), "{idle:#}");
    assert_eq!(json_str(&idle, "bucket"), settings().bucket, "{idle:#}");
    assert_eq!(json_str(&idle, "prefix"), prefix.prefix(), "{idle:#}");
    assert_eq!(json_u64(&idle, "pid"), pid, "{idle:#}");
    assert!(!json_bool(&idle, "read_only"), "{idle:#}");
    json_u64(&idle, "uptime_seconds");
    assert_eq!(json_u64(&idle, "pending_uploads"), 0, "{idle:#}");
    assert_eq!(json_u64(&idle, "pending_upload_bytes"), 0, "{idle:#}");
    assert!(
        json_u64(&idle, "cache_max_bytes") > 0,
        "a default block cache: {idle:#}"
    );
    assert!(json_u64(&idle, "s3_requests") >= 1, "the read asked S3: {idle:#}");
    assert!(
        json_u64(&idle, "bytes_to_readers") >= hello.len() as u64
            && json_u64(&idle, "bytes_from_s3") >= hello.len() as u64,
        "the read is counted: {idle:#}"
    );
    assert_eq!(json_u64(&idle, "s3_errors"), 0, "{idle:#}");
    assert_eq!(
        idle["recent_errors"].as_array().map(Vec::len),
        Some(0),
        "no recent errors: {idle:#}"
    );

    let data = pseudo_random(7, 300 * KIB + 11);
    let mut file = File::create(mount.join("new.bin")).expect("creating new.bin");
    file.write_all(&data).expect("writing new.bin");
    let writing = status_json(&mount, mount.path());
    assert_eq!(
        (
            json_u64(&writing, "pending_uploads"),
            json_u64(&writing, "pending_upload_bytes")
        ),
        (1, data.len() as u64),
        "a file written and still open is one pending upload of its size: {writing:#}"
    );
    assert!(json_u64(&writing, "staged_files") >= 1, "{writing:#}");

    close(file).expect("closing new.bin (its upload)");
    let uploaded = prefix
        .get("new.bin")
        .expect("new.bin is in the bucket after its close");
    assert_same_bytes(&uploaded, &data, "new.bin in the bucket");
    let done = status_json_until(&mount, "status shows no pending upload after the close", |s| {
        json_u64(s, "pending_uploads") == 0
    });
    assert_eq!(json_u64(&done, "pending_upload_bytes"), 0, "{done:#}");
    assert!(json_u64(&done, "uploads_started") >= 1, "{done:#}");
    assert_eq!(json_u64(&done, "uploads_failed"), 0, "{done:#}");
}
