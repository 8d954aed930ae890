//! Faults, tried as a user meets them: the real `s3mount` binary mounted on the real Garage,
//! through the fault proxy of `common::fault_proxy` where S3 must misbehave (stall, refuse,
//! throttle, fail, reset mid-body), with a daemon killed by SIGKILL, a staging disk that fills
//! up (a small tmpfs), and a block cache whose directory disappears under a live mount.
//!
//! Each test asserts what the user sees (the errno, a generous ceiling on how long an operation
//! may take where the behaviour is a bound, the content after recovery) and what the bucket
//! holds (no half or empty object, nothing lost), checked with the harness's own S3 client.
//! Time ceilings are bounds the daemon promises (its retry options are set low here), never
//! speed measurements.

mod common;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::fault_proxy::FaultProxy;
use common::{
    Mount, TestPrefix, assert_same_bytes, cached_block_count, close, process_alive, pseudo_random, settings,
    wait_until,
};

const MIB: usize = 1 << 20;

/// Retry options that keep the bounds short: each attempt waits at most 2 s for an answer, and
/// no attempt starts 6 s after the first.
const SHORT_BOUNDS: [&str; 6] = [
    "--request-timeout",
    "2s",
    "--max-retry-time",
    "6s",
    "--max-attempts",
    "10",
];

/// The longest any single operation may take under [`SHORT_BOUNDS`]: 6 s of retries plus one
/// attempt of an 8 MiB part (2 s + 8 s), with a margin for a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

/// A proxy in front of the test server.
fn proxy() -> FaultProxy {
    let url = &settings().endpoint_url;
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the test server's endpoint {url} is not plain http"));
    let upstream: SocketAddr = authority
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("endpoint {url}: {e}"));
    FaultProxy::start(upstream).expect("starting the fault proxy")
}

/// Mounts `prefix` through `proxy` with the short bounds and `extra` options.
fn mount_through(proxy: &FaultProxy, prefix: &TestPrefix, extra: &[&str]) -> Mount {
    mount_through_with(proxy, prefix, &SHORT_BOUNDS, extra)
}

/// Mounts `prefix` through `proxy` with retry options `bounds` and `extra` options.
fn mount_through_with(proxy: &FaultProxy, prefix: &TestPrefix, bounds: &[&str], extra: &[&str]) -> Mount {
    let url = proxy.url();
    let mut args: Vec<&str> = vec!["--endpoint-url", &url];
    args.extend(bounds);
    args.extend(extra);
    Mount::start(&[&prefix.source()], &args)
}

fn write_and_close(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(data)?;
    close(file)
}

/// Runs `operation` on its own thread and returns its result and how long it took, failing the
/// test if it has not returned within `ceiling` (it would be a hung process on a real node).
fn bounded<T: Send + 'static>(
    what: &str,
    ceiling: Duration,
    operation: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (sender, receiver) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let result = operation();
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(ceiling) {
        Ok(result) => (result, started.elapsed()),
        Err(_) => panic!("{what} did not return within {ceiling:?}: a hung process"),
    }
}

/// Whether `error` is what a request that exhausted its retries gives: EIO or ETIMEDOUT.
fn is_retries_exhausted(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EIO) | Some(libc::ETIMEDOUT))
}

// ---------------------------------------------------------------------------------------------
// S3 at its worst, through the proxy

#[test]
fn a_stalled_endpoint_fails_reads_and_stats_within_the_bound_and_recovers() {
    let prefix = TestPrefix::new("faults-stall");
    let body = pseudo_random(1, 20 * MIB);
    prefix.put("big.bin", body.clone());
    prefix.put("other.txt", "other");
    let proxy = proxy();
    let mount = mount_through(&proxy, &prefix, &["--no-cache", "--metadata-ttl", "0"]);
    let big = mount.join("big.bin");
    let mut opened = File::open(&big).expect("open before the stall");

    proxy.stall(true);
    let (read, took) = bounded("a cold read of a stalled endpoint", BOUND, move || {
        let mut buffer = vec![0; MIB];
        let result = opened.read(&mut buffer);
        (result, opened)
    });
    let (result, mut opened) = read;
    let error = result.expect_err("a read with S3 stalled cannot succeed");
    assert!(is_retries_exhausted(&error), "read: {error}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up before the first attempt's bound: {took:?}"
    );
    let other = mount.join("other.txt");
    let (stat, stat_took) = bounded("a stat of a stalled endpoint", BOUND, move || {
        std::fs::metadata(other)
    });
    eprintln!("figure: stalled endpoint: read failed in {took:?}, stat in {stat_took:?}");
    let error = stat.expect_err("a stat with S3 stalled cannot succeed (metadata TTL 0)");
    assert!(is_retries_exhausted(&error), "stat: {error}");
    assert_ne!(
        error.raw_os_error(),
        Some(libc::ENOENT),
        "a timeout is never 'not found'"
    );

    proxy.stall(false);
    let mut read_back = Vec::new();
    opened
        .read_to_end(&mut read_back)
        .expect("the same handle reads once S3 is back");
    assert_same_bytes(&read_back, &body, "read after the stall");
    assert_eq!(std::fs::read(mount.join("other.txt")).unwrap(), b"other");
}

#[test]
fn throttling_storms_server_errors_and_resets_are_ridden_out() {
    let prefix = TestPrefix::new("faults-storm");
    let body = pseudo_random(2, 20 * MIB);
    prefix.put("data.bin", body.clone());
    prefix.put("reset.bin", body.clone());
    let proxy = proxy();
    // The default time bounds (60 s of retries): a storm is ridden out, not reported.
    let mount = mount_through_with(&proxy, &prefix, &[], &["--no-cache", "--log-level", "debug"]);

    // A SlowDown storm: six requests in a row are refused; every operation still succeeds.
    proxy.fail_next(6, 503, "SlowDown");
    let names = common::names(mount.path());
    assert_eq!(names, vec!["data.bin".to_owned(), "reset.bin".to_owned()]);
    assert_same_bytes(
        &std::fs::read(mount.join("data.bin")).unwrap(),
        &body,
        "read through a SlowDown storm",
    );
    write_and_close(&mount.join("new.txt"), b"written through a storm").expect("write and close");
    assert_eq!(proxy.failed_requests(), 6, "the storm was met");

    // Internal errors, then connections reset in the middle of the body.
    proxy.fail_next(3, 500, "InternalError");
    write_and_close(&mount.join("second.txt"), b"second").expect("write through 500s");
    assert_eq!(proxy.failed_requests(), 9);
    proxy.reset_after(3, 100_000);
    let other_copy = std::fs::read(mount.join("reset.bin")).expect("read through resets");
    assert_same_bytes(&other_copy, &body, "read through resets mid-body");
    let log = mount.log_text();
    assert!(
        log.contains("trying again"),
        "the resets were met and retried:\n{log}"
    );

    assert_eq!(
        prefix.get("new.txt").as_deref(),
        Some(&b"written through a storm"[..])
    );
    assert_eq!(prefix.get("second.txt").as_deref(), Some(&b"second"[..]));
    let log = mount.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert_eq!(
        prefix.open_multipart_uploads(),
        Vec::<String>::new(),
        "no orphaned parts"
    );
}

#[test]
fn a_close_while_the_server_is_down_fails_in_bound_and_uploads_when_it_is_back() {
    let prefix = TestPrefix::new("faults-down");
    prefix.put("existing.txt", "was here");
    let proxy = proxy();
    let mount = mount_through(&proxy, &prefix, &[]);
    let path = mount.join("made-while-down.bin");
    let body = pseudo_random(3, 12 * MIB);
    let mut file = File::create(&path).unwrap();
    file.write_all(&body).unwrap();

    proxy.refuse(true);
    let (closed, close_took) = bounded("a close with the server down", BOUND, move || close(file));
    let error = closed.expect_err("a close cannot upload while the server is down");
    assert!(is_retries_exhausted(&error), "close: {error}");
    // Reads in flight fail within the bound too.
    let existing = mount.join("existing.txt");
    let (read, read_took) = bounded("a read with the server down", BOUND, move || {
        std::fs::read(existing)
    });
    assert!(is_retries_exhausted(&read.expect_err("no server")));
    eprintln!("figure: server down: close failed in {close_took:?}, read in {read_took:?}");
    assert!(prefix.get("made-while-down.bin").is_none(), "never a half object");

    // Back: the background retry uploads the staged file, whole.
    proxy.refuse(false);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(90);
    while prefix.head("made-while-down.bin").is_none() {
        assert!(
            Instant::now() < deadline,
            "not uploaded 90 s after the server came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "figure: server back: uploaded by the background retry {:?} later",
        back.elapsed()
    );
    assert_same_bytes(
        &prefix.get("made-while-down.bin").unwrap(),
        &body,
        "uploaded by the background retry",
    );
    assert_same_bytes(&std::fs::read(&path).unwrap(), &body, "read back");
    assert_eq!(
        prefix.open_multipart_uploads(),
        Vec::<String>::new(),
        "no orphaned parts"
    );
}

#[test]
fn a_daemon_killed_during_a_large_close_is_uploaded_by_the_next_mount() {
    let prefix = TestPrefix::new("faults-kill-close");
    let cache = TempDir::new().unwrap();
    let cache_arg = cache.path().to_str().unwrap().to_owned();
    let source = TempDir::new().unwrap();
    let source_file = source.path().join("big.bin");
    let body = pseudo_random(4, 64 * MIB);
    std::fs::write(&source_file, &body).unwrap();
    let proxy = proxy();
    // 100 ms each way: the close's parts take seconds, a wide window for the kill.
    proxy.set_latency(Duration::from_millis(100));
    let mount = mount_through(
        &proxy,
        &prefix,
        &["--cache", &cache_arg, "--upload-concurrency", "2"],
    );
    let target = mount.join("big.bin");
    let cp = Command::new("cp")
        .arg(&source_file)
        .arg(&target)
        .spawn()
        .expect("starting cp");
    let staging = cache.path().join("staging");
    wait_until("the journal says the close began", || {
        std::fs::read_dir(&staging).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains("state closing"))
            })
        })
    });
    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1);
    // SAFETY: a signal to the daemon's pid, which the test owns.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    wait_until("the killed daemon is gone", || !process_alive(pids[0]));
    let mut cp = cp;
    let status = cp.wait().unwrap();
    assert!(
        !status.success(),
        "cp cannot have finished its close: the daemon was killed"
    );
    // The kill may come after the last request reached the server: then the object is whole.
    if let Some(landed) = prefix.get("big.bin") {
        assert_same_bytes(&landed, &body, "an object that landed before the kill");
    }
    drop(mount);

    // The next mount, straight to the server, with the same cache directory.
    let remounted = Instant::now();
    let remount = Mount::start(&[&prefix.source()], &["--cache", &cache_arg]);
    eprintln!(
        "figure: killed close: recovered and mounted in {:?}",
        remounted.elapsed()
    );
    let uploaded = prefix
        .get("big.bin")
        .expect("the next mount uploads a close that had begun");
    assert_same_bytes(&uploaded, &body, "recovered upload");
    assert_same_bytes(
        &std::fs::read(remount.join("big.bin")).unwrap(),
        &body,
        "read back",
    );
    assert_eq!(
        prefix.open_multipart_uploads(),
        Vec::<String>::new(),
        "the upload the kill cut short is aborted"
    );
    // Recovered by the next mount, or (when the kill came just after the last request) found
    // already complete in S3: either way said so, never set aside as a conflict.
    let log = remount.log_text();
    assert!(
        log.contains("uploaded a file whose close was interrupted")
            || log.contains("a file whose close was interrupted had been uploaded already"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Local disks

/// A tmpfs of `size` mounted on a new temporary directory; unmounted when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = TempDir::new().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount -t tmpfs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs (the tests run as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path()).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_staging_disk_gives_enospc_and_loses_nothing() {
    let prefix = TestPrefix::new("faults-enospc");
    let disk = SmallDisk::new("40m");
    let cache = disk.path().to_str().unwrap().to_owned();
    // Nothing is read, so the block cache beside the staging area stays empty.
    let mount = Mount::start(&[&prefix.source()], &["--cache", &cache]);
    // Staged and open when the disk fills up.
    let staged_body = pseudo_random(5, 10 * MIB);
    let mut staged = File::create(mount.join("staged-first.bin")).unwrap();
    staged.write_all(&staged_body).unwrap();

    // A writer fills the disk and gets ENOSPC.
    let mut filler = File::create(mount.join("filler.bin")).unwrap();
    let chunk = pseudo_random(6, MIB);
    let mut written = 0;
    let error = loop {
        match filler.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(error) => break error,
        }
        assert!(written < 100 * MIB, "a 40 MiB disk took {written} bytes");
    };
    assert_eq!(
        error.raw_os_error(),
        Some(libc::ENOSPC),
        "the writer is told the truth: {error}"
    );

    // The file already staged still uploads, whole, on a disk with no room left.
    close(staged).expect("the close of a file staged before the disk filled");
    assert_same_bytes(
        &prefix.get("staged-first.bin").unwrap(),
        &staged_body,
        "uploaded with the disk full",
    );

    // Removing the filler gives its space back at once, and writes work again.
    drop(filler);
    std::fs::remove_file(mount.join("filler.bin")).expect("rm of the filler");
    // The kernel sends the filler's RELEASE on its own time, maybe after the unlink: its last
    // handle lets go of the space then.
    wait_until("the filler's space is free again after rm", || {
        disk.free_bytes() > 20 * MIB as u64
    });
    write_and_close(&mount.join("after.txt"), b"room again").expect("a write after the rm");
    assert_eq!(prefix.get("after.txt").as_deref(), Some(&b"room again"[..]));
    assert!(!mount.daemon_pids().is_empty(), "the daemon lives");
    assert!(!mount.log_text().contains("panicked"));
    assert_eq!(
        prefix.open_multipart_uploads(),
        Vec::<String>::new(),
        "no orphaned parts"
    );
}

#[test]
fn reads_go_on_when_the_cache_directory_is_removed_under_a_live_mount() {
    let prefix = TestPrefix::new("faults-cache-gone");
    let first = pseudo_random(7, 6 * MIB);
    let second = pseudo_random(8, 6 * MIB);
    prefix.put("first.bin", first.clone());
    prefix.put("second.bin", second.clone());
    let cache = TempDir::new().unwrap();
    let cache_dir = cache.path().join("cache");
    let cache_arg = cache_dir.to_str().unwrap().to_owned();
    let mount = Mount::start(
        &[&prefix.source()],
        &["--cache", &cache_arg, "--cache-min-free", "0"],
    );
    assert_same_bytes(
        &std::fs::read(mount.join("first.bin")).unwrap(),
        &first,
        "first read",
    );
    // Every block on disk first: a block still being written would make its shard again under
    // the rm (ENOTEMPTY), a race of the test's own, not of the daemon.
    wait_until("the 6 blocks reach the cache", || {
        cached_block_count(&cache_dir) == 6
    });

    std::fs::remove_dir_all(&cache_dir).expect("rm -rf of the live cache directory");
    // Reopen (a new open re-reads, and the kernel's pages are dropped by the fadvise below).
    drop_page_cache(&mount.join("first.bin"));
    assert_same_bytes(
        &std::fs::read(mount.join("first.bin")).unwrap(),
        &first,
        "cached file re-read",
    );
    assert_same_bytes(
        &std::fs::read(mount.join("second.bin")).unwrap(),
        &second,
        "uncached file read",
    );
    assert!(!mount.daemon_pids().is_empty(), "the daemon lives");
    assert!(!mount.log_text().contains("panicked"));
}

/// Asks the kernel to drop its cached pages of `path`, so the next read reaches the daemon.
fn drop_page_cache(path: &Path) {
    let file = File::open(path).unwrap();
    nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Names and logs

#[test]
fn hostile_names_stay_inside_the_cache_and_logs_hold_no_secret() {
    let prefix = TestPrefix::new("faults-names");
    // Keys no path can name: hidden from the mount, never a way out of it.
    prefix.put("../../escape", "outside?");
    prefix.put("a/../b", "dot-dot");
    let cache = TempDir::new().unwrap();
    let cache_arg = cache.path().join("c").to_str().unwrap().to_owned();
    let mut mount = Mount::start(
        &[&prefix.source()],
        &["--cache", &cache_arg, "--log-level", "trace"],
    );
    let odd = "line\nbreak \u{1b}[31mred\u{7}";
    let body = b"odd but legal";
    write_and_close(&mount.join(odd), body).expect("a name with control bytes");
    assert_eq!(
        prefix.get(odd).as_deref(),
        Some(&body[..]),
        "uploaded under exactly that key"
    );
    let names = common::names(mount.path());
    assert!(names.contains(&odd.to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == ".." || n.contains("escape")),
        "{names:?}"
    );
    assert_eq!(std::fs::read(mount.join(odd)).unwrap(), body);
    mount.unmount_and_wait_for_exit();
    let log = mount.log_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is verbose:\n{log}"
    );
    let secret = &settings().secret_access_key;
    assert!(!log.contains(secret.as_str()), "the secret key is in the log");
    assert!(!log.contains("odd but legal"), "object data is in the log");
}
