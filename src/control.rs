//! The control socket of a live daemon, and `s3mount status`.
//!
//! Each daemon listens on a Unix socket named after its mount point, in a directory only its
//! user can enter (`/run/s3mount` for root, `/run/user/UID/s3mount` or `/tmp/s3mount-UID`
//! otherwise). A client finds the daemon of a path through `/proc/self/mountinfo` (the mount
//! point, and the `user_id=` of the FUSE mount, which names the directory), so a path that is
//! not on an s3mount mount is told so before anything is sent. Messages are JSON lines: one
//! request, then one or more answers. `status` answers once; `warm` (see `warm.rs`) streams
//! progress until done, and stops when the client goes away.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::fs::S3Fs;
use crate::metrics::{self, Gauges, RecentError};

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Warm(crate::warm::WarmRequest),
}

/// What `s3mount status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub mount_point: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub read_only: bool,
    #[serde(flatten)]
    pub gauges: Gauges,
    pub s3_requests: u64,
    pub s3_errors: u64,
    pub s3_retries: u64,
    pub bytes_from_s3: u64,
    pub bytes_from_block_cache: u64,
    pub bytes_to_readers: u64,
    pub uploads_started: u64,
    pub uploads_failed: u64,
    pub fuse_requests: u64,
    pub fuse_errors: u64,
    pub recent_errors: Vec<RecentError>,
}

/// The directory of the control sockets of `uid`'s daemons.
pub fn socket_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/s3mount");
    }
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    if runtime.is_dir() {
        return runtime.join("s3mount");
    }
    PathBuf::from(format!("/tmp/s3mount-{uid}"))
}

/// The control socket of the daemon of `mount_point` (absolute, canonical), run by `uid`.
pub fn socket_path(uid: u32, mount_point: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(mount_point.as_os_str().as_bytes());
    let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    socket_dir(uid).join(format!("{name}.sock"))
}

/// Where the daemon of a mount is, read off `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMount {
    pub mount_point: PathBuf,
    /// The user the daemon runs as (the FUSE mount's `user_id=`).
    pub uid: u32,
    /// The path asked about, relative to the mount point (`""` for the mount point).
    pub relative: String,
}

/// The s3mount mount holding `path` (which must exist), or a clear error.
pub fn find_mount(path: &Path) -> anyhow::Result<FoundMount> {
    let canonical = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    find_in_mountinfo(&mountinfo, &canonical)
        .ok_or_else(|| anyhow::anyhow!("{} is not on an s3mount mount", path.display()))
}

/// The innermost mount of `mountinfo` holding `path`, if it is an s3mount one.
pub fn find_in_mountinfo(mountinfo: &str, path: &Path) -> Option<FoundMount> {
    let mut best: Option<(PathBuf, bool, &str)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(source), Some(options)) = (
            fields.get(4),
            fields.get(separator + 1),
            fields.get(separator + 2),
            fields.get(separator + 3),
        ) else {
            continue;
        };
        // The kernel shows `fuse.s3mount` when the subtype took, plain `fuse` for a mount made
        // by root without fusermount3; the source is always ours.
        let ours = (*fstype == "fuse.s3mount" || *fstype == "fuse") && source.starts_with("s3mount:");
        let point = PathBuf::from(unescape_mountinfo(point));
        let longer = best
            .as_ref()
            .is_none_or(|(b, _, _)| point.as_os_str().len() >= b.as_os_str().len());
        if path.starts_with(&point) && longer {
            best = Some((point, ours, options));
        }
    }
    let (point, ours, options) = best?;
    if !ours {
        return None;
    }
    let uid = options
        .split(',')
        .find_map(|o| o.strip_prefix("user_id="))
        .and_then(|v| v.parse().ok())?;
    let relative = path.strip_prefix(&point).ok()?.to_string_lossy().into_owned();
    Some(FoundMount {
        mount_point: point,
        uid,
        relative,
    })
}

/// A field of /proc/self/mountinfo as it is: the kernel writes space, tab, newline and
/// backslash as `\ooo` octal escapes. Byte for byte, so a non-UTF-8 mount point survives.
pub fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |code, d| code.wrapping_mul(8).wrapping_add(d - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// What the server needs to know about its mount.
#[derive(Debug, Clone)]
pub struct MountIdentity {
    pub mount_point: PathBuf,
    pub bucket: String,
    pub prefix: String,
}

/// Listens on the control socket of `identity.mount_point` until the runtime stops; the
/// socket file is removed when the returned guard drops. Best effort: a mount without its
/// socket works, `s3mount status` then says it cannot reach the daemon.
pub fn serve(fs: Arc<S3Fs>, identity: MountIdentity) -> io::Result<SocketGuard> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let path = socket_path(uid, &identity.mount_point);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A socket left by a daemon that died; a live one would hold the mount point, which the
    // mount-point check has already found empty.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let started = Instant::now();
    let identity = Arc::new(identity);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (fs, identity) = (fs.clone(), identity.clone());
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &fs, &identity, started).await {
                    tracing::debug!(%error, "control connection ended");
                }
            });
        }
    });
    Ok(SocketGuard(path))
}

/// Removes the control socket when dropped (at unmount).
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads one request and answers it.
async fn answer(
    stream: UnixStream,
    fs: &Arc<S3Fs>,
    identity: &MountIdentity,
    started: Instant,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One line of at most 1 MiB: a request lists paths; more is not a client of ours.
    BufReader::new(read.take(1 << 20)).read_line(&mut line).await?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(error) => return send(&mut write, &Answer::Error(format!("bad request: {error}"))).await,
    };
    match request {
        Request::Status => {
            send(
                &mut write,
                &Answer::Status(Box::new(status_report(fs, identity, started))),
            )
            .await
        }
        Request::Warm(warm) => crate::warm::serve_warm(fs, warm, &mut write).await,
    }
}

/// One answer line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(Box<StatusReport>),
    Progress(crate::warm::WarmProgress),
    Done(crate::warm::WarmProgress),
    Error(String),
}

pub async fn send(write: &mut (impl AsyncWriteExt + Unpin), answer: &Answer) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

fn status_report(fs: &S3Fs, identity: &MountIdentity, started: Instant) -> StatusReport {
    use std::sync::atomic::Ordering::Relaxed;
    let totals = &metrics::TOTALS;
    StatusReport {
        mount_point: identity.mount_point.clone(),
        bucket: identity.bucket.clone(),
        prefix: identity.prefix.clone(),
        pid: std::process::id(),
        uptime_seconds: started.elapsed().as_secs(),
        read_only: fs.config().read_only,
        gauges: fs.gauges(),
        s3_requests: totals.s3_requests.load(Relaxed),
        s3_errors: totals.s3_errors.load(Relaxed),
        s3_retries: totals.s3_retries.load(Relaxed),
        bytes_from_s3: totals.bytes_from_s3.load(Relaxed),
        bytes_from_block_cache: totals.bytes_from_block_cache.load(Relaxed),
        bytes_to_readers: totals.bytes_to_readers.load(Relaxed),
        uploads_started: totals.uploads_started.load(Relaxed),
        uploads_failed: totals.uploads_failed.load(Relaxed),
        fuse_requests: totals.fuse_requests.load(Relaxed),
        fuse_errors: totals.fuse_errors.load(Relaxed),
        recent_errors: metrics::recent_errors(),
    }
}

/// Connects to the daemon of `found` and sends `request`.
pub async fn connect(found: &FoundMount, request: &Request) -> anyhow::Result<BufReader<UnixStream>> {
    let path = socket_path(found.uid, &found.mount_point);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the daemon of {} at {} (is it an older s3mount, or another user's mount?)",
            found.mount_point.display(),
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(BufReader::new(stream))
}

/// The next answer from the daemon; `None` when it closed the connection.
pub async fn next_answer(reader: &mut BufReader<UnixStream>) -> anyhow::Result<Option<Answer>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_str(&line).context("unreadable answer from the daemon")?,
    ))
}

/// `s3mount status MOUNTPOINT [--json]`.
pub fn status_command(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use clap::Parser;
    let args = crate::cli::StatusArgs::parse_from(args);
    let found = find_mount(&args.mount_point)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut reader = connect(&found, &Request::Status).await?;
        match tokio::time::timeout(Duration::from_secs(10), next_answer(&mut reader)).await {
            Ok(Ok(Some(Answer::Status(report)))) => Ok(*report),
            Ok(Ok(Some(Answer::Error(error)))) => anyhow::bail!("the daemon says: {error}"),
            Ok(Ok(_)) => anyhow::bail!("the daemon sent no status"),
            Ok(Err(error)) => Err(error),
            Err(_) => anyhow::bail!("the daemon did not answer within 10 s"),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_status(&report));
    }
    Ok(())
}

/// The status for a person.
pub fn human_status(report: &StatusReport) -> String {
    let size = |bytes: u64| bytesize::ByteSize::b(bytes).display().iec().to_string();
    let gauges = &report.gauges;
    let mut text = format!(
        "s3mount on {}: bucket {}, prefix {:?}{} (pid {}, up {})\n",
        report.mount_point.display(),
        report.bucket,
        report.prefix,
        if report.read_only { ", read-only" } else { "" },
        report.pid,
        humantime::format_duration(Duration::from_secs(report.uptime_seconds)),
    );
    text += &format!(
        "pending uploads: {} files, {} ({} files staged)\n",
        gauges.pending_uploads,
        size(gauges.pending_upload_bytes),
        gauges.staged_files
    );
    text += &format!(
        "uploads:         {} started, {} failed\n",
        report.uploads_started, report.uploads_failed
    );
    if gauges.cache_max_bytes > 0 {
        text += &format!(
            "block cache:     {} of {}\n",
            size(gauges.cache_bytes),
            size(gauges.cache_max_bytes)
        );
    } else {
        text += "block cache:     off\n";
    }
    text += &format!(
        "read-ahead:      {} of {} in flight\n",
        size(gauges.read_ahead_bytes),
        size(gauges.read_ahead_budget_bytes)
    );
    text += &format!(
        "S3 requests:     {} ({} failed, {} retried)\n",
        report.s3_requests, report.s3_errors, report.s3_retries
    );
    text += &format!(
        "bytes read:      {} from S3, {} from the block cache, {} to readers\n",
        size(report.bytes_from_s3),
        size(report.bytes_from_block_cache),
        size(report.bytes_to_readers)
    );
    text += &format!(
        "FUSE requests:   {} ({} failed)\n",
        report.fuse_requests, report.fuse_errors
    );
    if report.recent_errors.is_empty() {
        text += "recent errors:   none\n";
    } else {
        text += "recent errors:\n";
        for error in &report.recent_errors {
            let at =
                humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(error.at));
            text += &format!("  {at} {} {}: {}\n", error.operation, error.path, error.error);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /mnt/data rw,nosuid,nodev,noatime - fuse.s3mount s3mount:b/ rw,user_id=1000,group_id=1000,default_permissions
41 22 0:46 / /mnt/my\\040dir rw - fuse s3mount:c/ rw,user_id=0,group_id=0
43 22 0:48 / /mnt/sshfs rw - fuse.sshfs host: rw,user_id=0,group_id=0
42 40 0:47 / /mnt/data/inner rw - tmpfs tmpfs rw
";

    #[test]
    fn a_path_is_found_on_its_innermost_mount() {
        let found = find_in_mountinfo(MOUNTINFO, Path::new("/mnt/data/train/a.bin")).unwrap();
        assert_eq!(found.mount_point, PathBuf::from("/mnt/data"));
        assert_eq!(found.uid, 1000);
        assert_eq!(found.relative, "train/a.bin");
        let top = find_in_mountinfo(MOUNTINFO, Path::new("/mnt/data")).unwrap();
        assert_eq!(top.relative, "");
        let spaced = find_in_mountinfo(MOUNTINFO, Path::new("/mnt/my dir/x")).unwrap();
        assert_eq!(
            (spaced.mount_point, spaced.uid),
            (PathBuf::from("/mnt/my dir"), 0)
        );
        assert_eq!(find_in_mountinfo(MOUNTINFO, Path::new("/mnt/data/inner/x")), None);
        assert_eq!(find_in_mountinfo(MOUNTINFO, Path::new("/home")), None);
        assert_eq!(find_in_mountinfo(MOUNTINFO, Path::new("/mnt/sshfs/x")), None);
        assert_eq!(find_in_mountinfo(MOUNTINFO, Path::new("/mnt/database")), None);
    }

    #[test]
    fn sockets_are_per_user_and_mount_point() {
        assert!(socket_path(0, Path::new("/mnt/a")).starts_with("/run/s3mount"));
        assert_ne!(
            socket_path(0, Path::new("/mnt/a")),
            socket_path(0, Path::new("/mnt/b"))
        );
        assert_ne!(
            socket_path(0, Path::new("/mnt/a")),
            socket_path(4242, Path::new("/mnt/a"))
        );
    }

    #[test]
    fn the_human_status_names_what_matters() {
        let report = StatusReport {
            mount_point: "/mnt/data".into(),
            bucket: "b".into(),
            prefix: "d/".into(),
            pid: 7,
            uptime_seconds: 3725,
            read_only: false,
            gauges: Gauges {
                pending_uploads: 2,
                pending_upload_bytes: 3 << 20,
                staged_files: 3,
                cache_bytes: 1 << 30,
                cache_max_bytes: 20 << 30,
                ..Gauges::default()
            },
            s3_requests: 10,
            s3_errors: 1,
            s3_retries: 2,
            bytes_from_s3: 0,
            bytes_from_block_cache: 0,
            bytes_to_readers: 0,
            uploads_started: 4,
            uploads_failed: 0,
            fuse_requests: 100,
            fuse_errors: 0,
            recent_errors: vec![RecentError {
                at: 0,
                operation: "write".into(),
                path: "a/b".into(),
                error: "EIO: boom".into(),
            }],
        };
        let text = human_status(&report);
        assert!(
            text.contains("pending uploads: 2 files, 3.0 MiB (3 files staged)"),
            "{text}"
        );
        assert!(text.contains("1.0 GiB of 20.0 GiB"), "{text}");
        assert!(text.contains("1h 2m 5s"), "{text}");
        assert!(text.contains("write a/b: EIO: boom"), "{text}");
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), report);
    }
}
