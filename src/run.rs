//! From a validated configuration to a live mount: mount-point checks, the S3 client and a
//! probe of the bucket (so bad input fails before anything is mounted), the recovery of what an
//! earlier run left staged, the FUSE session, daemonizing, and a clean unmount on SIGTERM/SIGINT
//! that uploads every pending write before the process exits.
//!
//! Owns the process; knows nothing of file-system semantics.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache::disk::{DiskCache, DiskCacheError, DiskCacheLimits};
use crate::cli::Source;
use crate::fs::{FsConfig, S3Fs};
use crate::fuse::{FuseAdapter, KernelNotifier};
use crate::object::WriteSettings;
use crate::object::retry::{RetryClient, RetryPolicy};
use crate::object::s3::{S3Client, S3Settings};
use crate::object::snapshot::SnapshotClient;
use crate::object::{ListRequest, ObjectClient, ObjectError};
use crate::staging::{Staging, StagingError};

/// Threads for blocking work (cache file I/O).
const BLOCKING_THREADS: usize = 32;

/// Everything needed to mount, already validated.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub source: Source,
    pub mount_point: PathBuf,
    pub s3: S3Settings,
    /// What every write adds (encryption, storage class, ACL).
    pub write: WriteSettings,
    /// Mount the bucket as it was then (read-only, from its versions).
    pub version_at: Option<std::time::SystemTime>,
    /// How every S3 request is retried and bounded.
    pub retry: RetryPolicy,
    pub fs: FsConfig,
    pub allow_other: bool,
    /// Forbid executing what the mount holds (mount(8)'s noexec).
    pub no_exec: bool,
    /// Where to serve Prometheus metrics (`None`: nowhere).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where blocks are cached (`None`: not at all), and at most how much (`None`: the default).
    pub cache: Option<CacheSettings>,
    /// The cache directory, where writes are staged (`staging/`, `recovery/`) even without a
    /// block cache.
    pub staging_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub dir: PathBuf,
    pub max_bytes: Option<u64>,
    /// Free space the cache leaves on its disk (`None`: the default).
    pub min_free_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bucket {0:?} keeps no versions (versioning was never enabled): --version-at needs them")]
    NoVersioning(String),
    #[error(
        "no HOME or XDG_CACHE_HOME to keep the cache and staged writes under (as in a mount unit); give one with --cache DIR (cache=DIR in fstab)"
    )]
    NoCacheHome,
    #[error("mount point {0} does not exist")]
    MountPointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    MountPointNotDirectory(PathBuf),
    #[error("mount point {0} is not empty")]
    MountPointNotEmpty(PathBuf),
    #[error("cannot use mount point {0}: {1}")]
    MountPointUnusable(PathBuf, io::Error),
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("access denied to bucket {bucket:?}: {detail}")]
    AccessDenied { bucket: String, detail: String },
    #[error("cannot reach the object store at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("cannot list bucket {bucket:?}: {error}")]
    Probe { bucket: String, error: ObjectError },
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot mount on {0}: {1}")]
    Mount(PathBuf, io::Error),
    #[error("cannot run in the background: {0}")]
    Daemon(String),
    #[error("{0}")]
    CacheInUse(DiskCacheError),
    #[error("{0}")]
    Staging(#[from] StagingError),
}

/// Checks the mount point before anything else happens, and returns it absolute (the daemon
/// changes its working directory to `/`).
pub fn check_mount_point(path: &Path) -> Result<PathBuf, RunError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RunError::MountPointMissing(path.to_owned()));
        }
        Err(e) => return Err(RunError::MountPointUnusable(path.to_owned(), e)),
    };
    if !metadata.is_dir() {
        return Err(RunError::MountPointNotDirectory(path.to_owned()));
    }
    let mut entries =
        std::fs::read_dir(path).map_err(|e| RunError::MountPointUnusable(path.to_owned(), e))?;
    if entries.next().is_some() {
        return Err(RunError::MountPointNotEmpty(path.to_owned()));
    }
    std::fs::canonicalize(path).map_err(|e| RunError::MountPointUnusable(path.to_owned(), e))
}

/// The probe at mount tries a little, not for a minute: a typo in `--endpoint-url` must fail
/// the mount at once, and a server that is down now is better reported than waited for.
const PROBE_ATTEMPTS: u32 = 3;
const PROBE_RETRY_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The object client of a mount, below the retry policy (which `mount_with` adds): the SDK
/// client.
pub async fn object_client(config: MountConfig) -> Result<Arc<dyn ObjectClient>, RunError> {
    let s3 = S3Settings {
        request_timeout: Some(config.retry.request_timeout),
        ..config.s3.clone()
    };
    let client = S3Client::new(s3)
        .await
        .map_err(|error| probe_error(&config, error))?
        .with_write_settings(config.write.clone());
    let Some(at) = config.version_at else {
        return Ok(Arc::new(client));
    };
    match client.keeps_versions().await {
        Ok(true) => Ok(Arc::new(SnapshotClient::new(client, at))),
        Ok(false) => Err(RunError::NoVersioning(config.s3.bucket.clone())),
        Err(error) => Err(probe_error(&config, error)),
    }
}

/// Mounts and serves until unmounted. `ready` is called once the mount is live.
pub fn mount(config: MountConfig, ready: impl FnOnce() + Send + 'static) -> Result<(), RunError> {
    mount_with(config, object_client, ready)
}

/// [`mount`] over the client `make_client` builds (on the mount's runtime): the SDK client, or
/// test layers (a fault wrapper, an in-memory bucket) for a test binary. The retry policy goes on
/// top here, once: the probe and the file system each get their own over the same client.
pub fn mount_with<F, Fut>(
    config: MountConfig,
    make_client: F,
    ready: impl FnOnce() + Send + 'static,
) -> Result<(), RunError>
where
    F: FnOnce(MountConfig) -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn ObjectClient>, RunError>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads do the cache's disk I/O. Tokio's default of 512 would let bursts of
        // block writes each hold a malloc arena; a few dozen keep the disk as busy.
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("s3mount-worker")
        .build()
        .map_err(RunError::Runtime)?;
    let client = runtime.block_on(async {
        let client = make_client(config.clone()).await?;
        probe_bucket(client.clone(), &config).await?;
        Ok::<_, RunError>(Arc::new(RetryClient::new(client, config.retry.clone())))
    })?;
    let disk = open_disk_cache(config.cache.as_ref())?;
    let staging = match config.fs.read_only {
        true => None,
        false => Some(Staging::open(&config.staging_dir)?),
    };
    let fs = Arc::new(S3Fs::new(client, config.fs.clone(), disk, staging));
    runtime.block_on(recover(&fs, &config.staging_dir));
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let session = Session::new(adapter, &config.mount_point, &session_config(&config))
        .map_err(|e| RunError::Mount(config.mount_point.clone(), e))?;
    fs.set_kernel_cache(Arc::new(KernelNotifier(session.notifier())));
    widen_kernel_read_ahead(&config.mount_point);
    if let Some(addr) = config.metrics_addr {
        let _entered = runtime.enter();
        crate::metrics::install(addr).map_err(RunError::Daemon)?;
    }
    let _control = {
        let _entered = runtime.enter();
        let identity = crate::control::MountIdentity {
            mount_point: config.mount_point.clone(),
            bucket: config.source.bucket.clone(),
            prefix: config.source.prefix.as_str().to_owned(),
        };
        crate::control::serve(fs.clone(), identity)
            .inspect_err(|error| tracing::warn!(%error, "no control socket: s3mount status and warm cannot reach this mount"))
            .ok()
    };
    runtime.spawn(report_gauges(fs.clone()));
    let mount_point = config.mount_point.clone();
    runtime.spawn(async move {
        wait_for_termination().await;
        tracing::info!("unmounting on signal");
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status(
                "stopping: waiting for open files to close, then uploading what is pending",
            ),
        ]);
        let extend = tokio::spawn(extend_stop_timeout());
        unmount_when_idle(|| unmount(&mount_point)).await;
        extend.abort();
    });
    tracing::info!(bucket = %config.source.bucket, prefix = %config.source.prefix.as_str(),
        mount_point = %config.mount_point.display(), "mounted");
    announce_when_answering(config.mount_point.clone(), ready);
    let served = session.run();
    tracing::info!("unmounted");
    let extend = runtime.spawn(extend_stop_timeout());
    let failed = runtime.block_on(fs.drain_uploads());
    extend.abort();
    if failed > 0 {
        tracing::error!(failed, staging = %config.staging_dir.display(),
            "some files could not be uploaded; they stay staged and the next mount with this cache directory uploads them");
    }
    tracing::info!("stats: {}", fs.read_counters().summary());
    fs.close_block_cache();
    served.map_err(|e| RunError::Mount(config.mount_point.clone(), e))
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) how we are; a no-op otherwise.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify the service manager");
    }
}

/// Calls `ready` and sends READY=1 once the mount answers: a thread stats the mount point,
/// which blocks until the session loop (started right after this) has served the kernel's
/// INIT and the lookup. Recovery is already done by then.
fn announce_when_answering(mount_point: PathBuf, ready: impl FnOnce() + Send + 'static) {
    let announce = move || {
        if let Err(error) = std::fs::metadata(&mount_point) {
            tracing::warn!(%error, "the mount does not answer");
            return;
        }
        ready();
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("mounted on {}", mount_point.display())),
        ]);
    };
    if let Err(error) = std::thread::Builder::new()
        .name("s3mount-ready".into())
        .spawn(announce)
    {
        tracing::error!(%error, "cannot start the readiness check");
    }
}

/// How often gauges are sampled (and STATUS= sent to systemd).
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
const STATUS_EVERY: u32 = 10;

/// Samples the gauges every second; every ten, tells systemd a STATUS= line.
async fn report_gauges(fs: Arc<S3Fs>) {
    let mut ticks = tokio::time::interval(GAUGE_INTERVAL);
    for round in 0u32.. {
        ticks.tick().await;
        let gauges = fs.gauges();
        crate::metrics::record_gauges(&gauges);
        if round % STATUS_EVERY == 0 {
            let status = format!(
                "mounted; {} pending uploads ({} bytes); cache {} of {} bytes",
                gauges.pending_uploads,
                gauges.pending_upload_bytes,
                gauges.cache_bytes,
                gauges.cache_max_bytes
            );
            notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}

/// While stopping (files still open, then pending uploads), asks systemd for 30 more seconds
/// every 10, so its stop timeout never cuts a drain short; SIGKILL after TimeoutStopSec still
/// loses nothing staged (the next mount uploads it).
async fn extend_stop_timeout() {
    const EXTEND_USEC: u32 = 30_000_000;
    loop {
        notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(EXTEND_USEC)]);
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// Uploads or sets aside what an earlier run left staged (it died before uploading).
async fn recover(fs: &S3Fs, staging_dir: &Path) {
    match fs.recover().await {
        Ok(report) if report.is_empty() => {}
        Ok(report) => tracing::warn!(uploaded = report.uploaded.len(), moved = report.moved.len(),
            kept = report.kept.len(), staging = %staging_dir.display(), "recovered files staged by an earlier run"),
        Err(error) => tracing::error!(%error, staging = %staging_dir.display(),
            "cannot recover files staged by an earlier run; they stay where they are"),
    }
}

/// Opens the block cache. A cache another mount holds refuses the mount; any other problem
/// (unwritable, missing disk) leaves the mount uncached, with a warning.
fn open_disk_cache(settings: Option<&CacheSettings>) -> Result<Option<Arc<DiskCache>>, RunError> {
    let Some(settings) = settings else { return Ok(None) };
    let limits = cache_limits(settings);
    match DiskCache::open(&settings.dir, limits.clone()) {
        Ok(cache) => {
            tracing::info!(dir = %settings.dir.display(), max_bytes = limits.max_bytes,
                min_free_bytes = limits.min_free_bytes, cached_bytes = cache.size(), "block cache ready");
            Ok(Some(Arc::new(cache)))
        }
        Err(error @ DiskCacheError::InUse { .. }) => Err(RunError::CacheInUse(error)),
        Err(error) => {
            tracing::warn!(%error, "running without a block cache");
            Ok(None)
        }
    }
}

/// The cache's default home for one source: one directory per endpoint, bucket and prefix, so
/// two different mounts never contend for one, under the user's cache directory; for root
/// without one (mount units, fstab at boot run with no HOME), under /var/cache.
pub fn default_cache_dir(source: &Source, endpoint: Option<&str>) -> Result<PathBuf, RunError> {
    use sha2::{Digest, Sha256};
    let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let base = match (non_empty("XDG_CACHE_HOME"), non_empty("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) if root => PathBuf::from("/var/cache"),
        (None, None) => return Err(RunError::NoCacheHome),
    };
    let identity = format!(
        "{}\0{}\0{}",
        endpoint.unwrap_or(""),
        source.bucket,
        source.prefix.as_str()
    );
    let digest = Sha256::digest(identity.as_bytes());
    let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(base.join("s3mount").join(format!("{}-{short}", source.bucket)))
}

/// The cache's bounds: as given, or by default it may use 20% of its disk (at most 20 GiB) and
/// always leaves 10% of the disk (at most 10 GiB) free, whatever else fills it.
pub fn cache_limits(settings: &CacheSettings) -> DiskCacheLimits {
    const GIB: u64 = 1 << 30;
    let disk_size = disk_size_of(&settings.dir).unwrap_or(100 * GIB);
    DiskCacheLimits {
        max_bytes: settings.max_bytes.unwrap_or((disk_size / 5).min(20 * GIB)),
        min_free_bytes: settings.min_free_bytes.unwrap_or((disk_size / 10).min(10 * GIB)),
    }
}

/// Size of the file system holding `path` (or its nearest existing ancestor).
fn disk_size_of(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks() as u64 * stat.fragment_size() as u64)
}

/// Default read-ahead memory: 1/16 of the machine's memory, between 64 MiB and 192 MiB. With
/// 256 MiB, four concurrent 1 GiB readers peaked at 439-513 MiB of RSS (scripts/bench): the
/// budget is not all the daemon holds (demand reads, blocks on their way to disk, the runtime).
pub fn default_read_ahead_memory() -> u64 {
    const MIB: u64 = 1 << 20;
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64);
    (total / 16).clamp(64 * MIB, 192 * MIB)
}

/// Kernel read-ahead for this mount, in KiB: one cache block. FUSE mounts start at 128 KiB, which
/// makes a sequential reader cost eight FUSE requests per block.
const KERNEL_READ_AHEAD_KIB: u32 = 1024;

/// Raises the kernel's read-ahead of the new mount (its backing-device setting in sysfs) so large
/// sequential reads arrive as 1 MiB requests. Best effort: it needs root, and a mount works
/// without it, only with more, smaller requests. Reads only /proc and /sys, never the mount
/// itself, which is not served yet.
pub fn widen_kernel_read_ahead(mount_point: &Path) {
    let device = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|mountinfo| {
            let wanted = mount_point.to_string_lossy().replace(' ', "\\040");
            mountinfo.lines().rev().find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(4) == Some(&wanted.as_str()))
                    .then(|| fields.get(2).map(|d| d.to_string()))
                    .flatten()
            })
        });
    let Some(device) = device else {
        tracing::debug!("mount not found in /proc/self/mountinfo; kernel read-ahead left as is");
        return;
    };
    let setting = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&setting, KERNEL_READ_AHEAD_KIB.to_string()) {
        Ok(()) => tracing::debug!(%setting, kib = KERNEL_READ_AHEAD_KIB, "kernel read-ahead widened"),
        Err(error) => tracing::debug!(%setting, %error, "kernel read-ahead left at its default"),
    }
}

/// One listing of the root prefix: proves the endpoint answers, the bucket exists and we may
/// read it, before the mount is made. Retried briefly, whatever the mount's policy.
async fn probe_bucket(client: Arc<dyn ObjectClient>, config: &MountConfig) -> Result<(), RunError> {
    let request = ListRequest {
        prefix: config.source.prefix.as_str().to_owned(),
        delimiter: Some("/".to_owned()),
        continuation_token: None,
        max_keys: Some(1),
    };
    let policy = RetryPolicy {
        max_attempts: PROBE_ATTEMPTS,
        max_retry_time: PROBE_RETRY_TIME,
        ..config.retry.clone()
    };
    RetryClient::new(client, policy)
        .list(&request)
        .await
        .map(drop)
        .map_err(|error| probe_error(config, error))
}

fn probe_error(config: &MountConfig, error: ObjectError) -> RunError {
    let bucket = config.source.bucket.clone();
    match error {
        ObjectError::NoSuchBucket(_) => RunError::NoSuchBucket(bucket),
        ObjectError::AccessDenied(detail) => RunError::AccessDenied { bucket, detail },
        ObjectError::Unreachable(detail) | ObjectError::TimedOut(detail) => RunError::Unreachable {
            endpoint: config
                .s3
                .endpoint_url
                .clone()
                .unwrap_or_else(|| "the default S3 endpoint".to_owned()),
            detail,
        },
        error => RunError::Probe { bucket, error },
    }
}

fn session_config(config: &MountConfig) -> Config {
    let fsname = format!(
        "s3mount:{}/{}",
        config.source.bucket,
        config.source.prefix.as_str()
    );
    let mut options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("s3mount".to_owned()),
        // The kernel checks modes against uid/gid, so --file-mode and --uid mean what they say.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if config.fs.read_only {
        options.push(MountOption::RO);
    }
    if config.no_exec {
        options.push(MountOption::NoExec);
    }
    let mut session = Config::default();
    session.mount_options = options;
    session.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    session
}

/// Unmounts `mount_point`: umount2 when we may (root), else `fusermount3 -u`. Unlike fuser's
/// unmounter, which gives up its mount after one try, this can be tried again after EBUSY.
fn unmount(mount_point: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mount_point.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    let output = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mount_point)
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&output.stderr);
    if message.contains("busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(message.trim().to_owned()))
}

/// How often an unmount refused because files are open is tried again.
const UNMOUNT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Unmounts; while the kernel refuses because files are still open (EBUSY), keeps serving them
/// and tries again, so a signal never cuts a close (and its upload) short. A process that never
/// closes its file keeps the mount up: a SIGKILL then leaves the staged data to the next mount.
async fn unmount_when_idle(mut unmount: impl FnMut() -> io::Result<()>) {
    let mut told = false;
    loop {
        match unmount() {
            Ok(()) => return,
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                if !std::mem::replace(&mut told, true) {
                    tracing::warn!("files are still open on the mount; unmounting once they are closed");
                }
                tokio::time::sleep(UNMOUNT_RETRY).await;
            }
            Err(error) => {
                tracing::error!(%error, "unmount failed");
                return;
            }
        }
    }
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; unmount with umount instead");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// What the background child tells the waiting parent: the mount is live, or why not.
const READY: &[u8] = b"ok";

/// Forks: the parent waits until the child reports the mount live (exit 0) or fails (prints the
/// child's error, exit 1); the child detaches and runs `serve`, which gets a `ready` callback.
/// Must be called before any thread exists.
pub fn daemonize(
    serve: impl FnOnce(Box<dyn FnOnce() + Send>) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| RunError::Daemon(e.to_string()))?;
    // SAFETY: called from main before any thread is started, so the child is a full copy.
    match unsafe { nix::unistd::fork() }.map_err(|e| RunError::Daemon(e.to_string()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            std::process::exit(wait_for_child(read_end))
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid().map_err(|e| RunError::Daemon(e.to_string()))?;
            std::env::set_current_dir("/").map_err(|e| RunError::Daemon(e.to_string()))?;
            let pipe = Arc::new(std::sync::Mutex::new(Some(std::fs::File::from(write_end))));
            let ready_pipe = pipe.clone();
            let ready = Box::new(move || {
                if let Some(mut file) = ready_pipe.lock().ok().and_then(|mut p| p.take()) {
                    let _ = file.write_all(READY);
                }
                detach_stdio();
            });
            let result = serve(ready);
            if let Err(error) = &result
                && let Some(mut file) = pipe.lock().ok().and_then(|mut p| p.take())
            {
                let _ = file.write_all(error.to_string().as_bytes());
                std::process::exit(1);
            }
            result
        }
    }
}

/// The parent's side: the exit status for the `s3mount` command.
fn wait_for_child(read_end: OwnedFd) -> i32 {
    let mut message = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut message);
    if message == READY {
        return 0;
    }
    let text = String::from_utf8_lossy(&message);
    if text.is_empty() {
        eprintln!("s3mount: error: the background process exited before the mount was ready (see the log)");
    } else {
        eprintln!("s3mount: error: {text}");
    }
    1
}

/// Points stdin, stdout and stderr at /dev/null once the parent has gone.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of our own process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
