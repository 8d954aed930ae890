//! Harness for the mount tests: the S3 test server's settings, a client to upload test objects
//! (the crate's own [`S3Client`]), a unique key prefix per test, and a [`Mount`] guard that runs the
//! real `s3mount` binary and always unmounts, even when the test fails.
//!
//! The server is the Garage that `scripts/s3-server start` runs on loopback. Its settings come
//! from the environment (`scripts/test` sources `target/s3-server/env`) or, failing that, from
//! that file directly. Without either the tests fail loudly: they never skip.

#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod fault_proxy;
pub mod metrics;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use s3mount::object::ObjectClient;
use s3mount::object::s3::{S3Client, S3Settings};
use tempfile::TempDir;

/// How long any awaited condition (a mount appearing or going away, a process exiting) may take.
/// Generous: the CI machine has 2 cores and may be compiling at the same time.
pub const WAIT: Duration = Duration::from_secs(20);

/// The region Garage is configured with in `scripts/s3-server`.
const DEFAULT_REGION: &str = "garage";

/// Variables of the test environment that must not leak into the binary under test: a CA bundle
/// or a profile of the machine running the tests would change how the SDK behaves.
const SCRUBBED_VARIABLES: &[&str] = &[
    "AWS_CA_BUNDLE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
];

/// How to reach the S3 test server.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint_url: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// A key that exists but has no permission on any bucket.
    pub denied_access_key_id: String,
    pub denied_secret_access_key: String,
    /// A key that may read the test bucket but not write to it (uploads fail with AccessDenied).
    /// `None` when the environment predates it: see [`Settings::readonly_key`].
    pub readonly_access_key_id: Option<String>,
    pub readonly_secret_access_key: Option<String>,
}

/// The server's settings, read once.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(load_settings)
}

fn load_settings() -> Settings {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (values, from_file): (BTreeMap<String, String>, bool) =
        if from_env("AWS_ENDPOINT_URL").is_some() && from_env("S3MOUNT_TEST_BUCKET").is_some() {
            (std::env::vars().collect(), false)
        } else {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-server/env");
            match std::fs::read_to_string(&path) {
                Ok(text) => (parse_env_file(&text), true),
                Err(error) => panic!(
                    "S3 test server not running: run scripts/s3-server start (or scripts/test) \
                     [no AWS_ENDPOINT_URL/S3MOUNT_TEST_BUCKET in the environment, and {}: {error}]",
                    path.display()
                ),
            }
        };
    let get = |name: &str| -> String {
        match values.get(name).filter(|v| !v.is_empty()) {
            Some(value) => value.clone(),
            None => panic!(
                "S3 test server not running: run scripts/s3-server start (or scripts/test) [{name} is not set]"
            ),
        }
    };
    let settings = Settings {
        endpoint_url: get("AWS_ENDPOINT_URL"),
        region: values
            .get("AWS_REGION")
            .cloned()
            .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        bucket: get("S3MOUNT_TEST_BUCKET"),
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        denied_access_key_id: get("S3MOUNT_TEST_DENIED_ACCESS_KEY_ID"),
        denied_secret_access_key: get("S3MOUNT_TEST_DENIED_SECRET_ACCESS_KEY"),
        readonly_access_key_id: values.get("S3MOUNT_TEST_READONLY_ACCESS_KEY_ID").cloned(),
        readonly_secret_access_key: values.get("S3MOUNT_TEST_READONLY_SECRET_ACCESS_KEY").cloned(),
    };
    if from_file {
        // The SDK inside this test process takes its credentials from the provider chain, whose
        // first link is these two variables.
        //
        // SAFETY: this runs once, inside `OnceLock::get_or_init`, and every test calls
        // `settings()` before it starts any thread, runtime or child process (TestPrefix::new,
        // Mount::dirs and s3mount_command all do), so no thread of ours reads the environment
        // meanwhile: a concurrent caller blocks in `get_or_init` until this returns. The other
        // readers in this process (libtest, tempfile) use `std::env`, which takes the same lock
        // as `set_var`.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", &settings.access_key_id);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", &settings.secret_access_key);
        }
    }
    settings
}

/// `export NAME=value` lines (values optionally quoted); comments and blank lines ignored.
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

/// One runtime for every upload of the test process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the test runtime")
    })
}

/// The crate's S3 client, bound to the test bucket.
/// The crate's client settings for the test server's bucket.
pub fn s3_settings() -> S3Settings {
    let s = settings();
    S3Settings {
        bucket: s.bucket.clone(),
        region: Some(s.region.clone()),
        endpoint_url: Some(s.endpoint_url.clone()),
        force_path_style: true,
        profile: None,
        no_sign_request: false,
        request_timeout: None,
        sdk_gets: false,
    }
}

pub fn client() -> &'static S3Client {
    static CLIENT: OnceLock<S3Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        runtime()
            .block_on(S3Client::new(s3_settings()))
            .expect("building the S3 client")
    })
}

/// A raw SDK client of the test bucket, for what the crate's client does not offer
/// (ListMultipartUploads).
fn raw_client() -> &'static aws_sdk_s3::Client {
    static RAW: OnceLock<aws_sdk_s3::Client> = OnceLock::new();
    RAW.get_or_init(|| {
        let s = settings();
        let config = runtime().block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new(s.region.clone()))
                .endpoint_url(&s.endpoint_url)
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    &s.access_key_id,
                    &s.secret_access_key,
                    None,
                    None,
                    "s3mount-test",
                ))
                .load(),
        );
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        )
    })
}

/// A key prefix of the test bucket that belongs to one test only, so tests run in parallel and
/// never see each other's objects (nor those of earlier runs).
pub struct TestPrefix {
    /// Ends with `/`.
    prefix: String,
}

impl TestPrefix {
    pub fn new(test_name: &str) -> Self {
        settings(); // First, before this test starts anything (see `load_settings`).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let prefix = format!("t-{test_name}-{}-{nanos}/", std::process::id());
        Self { prefix }
    }

    pub fn bucket(&self) -> &'static str {
        &settings().bucket
    }

    /// The prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix without its trailing `/`.
    pub fn prefix_trimmed(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// `s3://BUCKET/PREFIX/`, the usual SOURCE argument.
    pub fn source(&self) -> String {
        format!("s3://{}/{}", self.bucket(), self.prefix)
    }

    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// Uploads `body` at PREFIX/`relative`; returns the ETag.
    pub fn put(&self, relative: &str, body: impl Into<Bytes>) -> String {
        let key = self.key(relative);
        self.try_put(relative, body)
            .unwrap_or_else(|error| panic!("uploading {key:?}: {error}"))
    }

    pub fn try_put(
        &self,
        relative: &str,
        body: impl Into<Bytes>,
    ) -> Result<String, s3mount::object::ObjectError> {
        let key = self.key(relative);
        runtime().block_on(client().put(&key, body.into()))
    }

    /// The keys (relative to the prefix) of multipart uploads still open under it: after a
    /// failure, there must be none (orphaned parts are stored, and billed, for ever).
    pub fn open_multipart_uploads(&self) -> Vec<String> {
        let output = runtime()
            .block_on(
                raw_client()
                    .list_multipart_uploads()
                    .bucket(&settings().bucket)
                    .prefix(&self.prefix)
                    .send(),
            )
            .expect("ListMultipartUploads");
        output
            .uploads()
            .iter()
            .filter_map(|upload| Some(upload.key()?[self.prefix.len()..].to_owned()))
            .collect()
    }

    /// Every key stored under the prefix, relative to it (no delimiter, all pages).
    pub fn list_all(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let request = s3mount::object::ListRequest {
                prefix: self.prefix.clone(),
                delimiter: None,
                continuation_token: token,
                max_keys: None,
            };
            let page = runtime()
                .block_on(client().list(&request))
                .expect("listing the test prefix");
            keys.extend(
                page.objects
                    .into_iter()
                    .map(|o| o.key[self.prefix.len()..].to_owned()),
            );
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return keys,
            }
        }
    }
}

/// The binary under test with a clean environment: the test server's endpoint and credentials,
/// nothing from the machine's AWS configuration.
pub fn s3mount_command() -> Command {
    let s = settings();
    let mut command = Command::new(env!("CARGO_BIN_EXE_s3mount"));
    for name in SCRUBBED_VARIABLES {
        command.env_remove(name);
    }
    // The daemon's default block cache goes under XDG_CACHE_HOME: never the real ~/.cache.
    // Mounts point it into their own temporary directory; this is the fallback for the rest.
    command.env(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
    );
    command
        .env("AWS_ACCESS_KEY_ID", &s.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret_access_key)
        .env("AWS_REGION", &s.region)
        .env("AWS_ENDPOINT_URL", &s.endpoint_url)
        .stdin(Stdio::null());
    command
}

/// The options that point the binary at the test server.
pub fn endpoint_args() -> Vec<String> {
    let s = settings();
    vec![
        "--endpoint-url".into(),
        s.endpoint_url.clone(),
        "--force-path-style".into(),
        "--region".into(),
        s.region.clone(),
    ]
}

/// [`endpoint_args`], unless `extra` names its own `--endpoint-url` (a fault proxy in front of
/// the server): then only the addressing style and region.
fn endpoint_args_unless_given(extra: &[&str]) -> Vec<String> {
    let mut args = endpoint_args();
    if extra.contains(&"--endpoint-url") {
        args.drain(..2);
    }
    args
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`/`rw`, `nosuid`, ...).
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

/// The mounts of this process's namespace.
pub fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let after: Vec<&str> = after.split(' ').collect();
            Some(MountInfo {
                mount_point: PathBuf::from(s3mount::control::unescape_mountinfo(fields.get(4)?)),
                options: (*fields.get(5)?).to_owned(),
                fs_type: (*after.first()?).to_owned(),
                source: s3mount::control::unescape_mountinfo(after.get(1)?)
                    .into_string()
                    .ok()?,
            })
        })
        .collect()
}

/// The mount on `path`, if there is one.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

/// Polls `condition` until it holds, or panics after [`WAIT`] naming `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Mount {
    /// What a stop must end in: `status` (the foreground daemon's exit) is 0, and the mount is
    /// gone with it.
    pub fn assert_stopped_cleanly(&self, status: ExitStatus, what: &str) {
        assert!(
            status.success(),
            "exit status of s3mount {what}: {status}\nlog:\n{}",
            self.log_text()
        );
        assert!(
            !is_mounted(self.path()),
            "s3mount exited {what} and left its mount behind"
        );
    }
}

/// Waits for a child to exit, killing it (and failing) after [`WAIT`].
pub fn wait_for_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {WAIT:?} waiting for {what} to exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that has exited (or is a zombie nobody reaps) no longer counts as alive.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Processes of the binary under test whose arguments include `mount_point` exactly.
pub fn daemon_pids(mount_point: &Path) -> Vec<i32> {
    let binary = Path::new(env!("CARGO_BIN_EXE_s3mount"));
    let wanted = mount_point.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let is_ours = args
            .next()
            .is_some_and(|arg0| Path::new(OsStr::from_bytes(arg0)).file_name() == binary.file_name());
        if is_ours && args.any(|arg| arg == wanted) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A live mount of the binary under test on a fresh temporary directory. Dropping it unmounts
/// (lazily, so a failing test with open files cannot leave the mount behind) and, when the test
/// is failing, prints the daemon's log.
pub struct Mount {
    path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Dropped after `drop` has unmounted: the mount point, then the log.
    _mount_dir: TempDir,
    _log_dir: TempDir,
}

impl Mount {
    /// Mounts `source` in the default (background) mode. The command must exit 0 only once the
    /// mount is live, so the mount must already be in mountinfo when it returns.
    pub fn start(source: &[&str], extra: &[&str]) -> Mount {
        Self::start_with(source, extra, |_| {})
    }

    /// Like [`Mount::start`], with `configure` applied to the command last: to give the daemon
    /// its own environment (say `HOME`, `XDG_CACHE_HOME`). The default block cache lives in the
    /// mount's own temporary directory unless `configure` says otherwise.
    pub fn start_with(source: &[&str], extra: &[&str], configure: impl FnOnce(&mut Command)) -> Mount {
        let (mount_dir, path, log_dir, log) = Self::dirs();
        let mut command = s3mount_command();
        command
            .args(source)
            .arg(&path)
            .args(endpoint_args_unless_given(extra))
            .args([OsStr::new("--log-file"), log.as_os_str()])
            .args(extra)
            .env("XDG_CACHE_HOME", log_dir.path().join("xdg-cache"));
        configure(&mut command);
        let output = run_bounded(command);
        let mount = Mount {
            path,
            log,
            child: None,
            _mount_dir: mount_dir,
            _log_dir: log_dir,
        };
        assert!(
            output.status.success(),
            "s3mount {source:?} {extra:?} failed: {}\nstderr: {}\nlog:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            mount.log_text()
        );
        let info = mount_at(&mount.path).unwrap_or_else(|| {
            panic!(
                "s3mount exited 0 but {} is not in /proc/self/mountinfo\nlog:\n{}",
                mount.path.display(),
                mount.log_text()
            )
        });
        // The type is `fuse.s3mount` when fusermount3 mounts, plain `fuse` when root mounts directly.
        assert!(
            info.fs_type.starts_with("fuse") && info.source.starts_with("s3mount:"),
            "unexpected mount {info:?}"
        );
        mount
    }

    /// Unmounts as a user would and waits until the daemon has exited, so everything it logs at
    /// exit (the stats line) is in the log, and whatever it held (the cache lock) is released.
    pub fn unmount_and_wait_for_exit(&mut self) {
        let pids = self.daemon_pids();
        assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
        self.unmount();
        wait_until("the daemon has exited after the unmount", || {
            !process_alive(pids[0])
        });
    }

    /// Mounts `source` with `--foreground` as a child process and waits for the mount to appear.
    pub fn foreground(source: &[&str], extra: &[&str]) -> Mount {
        Self::foreground_with(source, extra, |_, _| {})
    }

    /// Like [`Mount::foreground`], with `configure` given the command and the mount point before
    /// the daemon starts: to give it an environment (`NOTIFY_SOCKET`) or to watch the path.
    pub fn foreground_with(
        source: &[&str],
        extra: &[&str],
        configure: impl FnOnce(&mut Command, &Path),
    ) -> Mount {
        let (mount_dir, path, log_dir, log) = Self::dirs();
        let mut command = s3mount_command();
        command
            .args(source)
            .arg(&path)
            .args(endpoint_args_unless_given(extra))
            .args([
                OsStr::new("--foreground"),
                OsStr::new("--log-file"),
                log.as_os_str(),
            ])
            .args(extra)
            .env("XDG_CACHE_HOME", log_dir.path().join("xdg-cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut command, &path);
        let child = command.spawn().expect("starting s3mount --foreground");
        let mut mount = Mount {
            path,
            log,
            child: Some(child),
            _mount_dir: mount_dir,
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + WAIT;
        while !is_mounted(&mount.path) {
            let child = mount.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("checking on s3mount") {
                panic!(
                    "s3mount --foreground exited with {status} before mounting\nlog:\n{}",
                    mount.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the mount\nlog:\n{}",
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    fn dirs() -> (TempDir, PathBuf, TempDir, PathBuf) {
        settings(); // First, before this test starts anything (see `load_settings`).
        let mount_dir = TempDir::new().expect("creating the mount point");
        // The daemon resolves the mount point to an absolute, canonical path; mountinfo shows that.
        let path = mount_dir.path().canonicalize().expect("canonical mount point");
        let log_dir = TempDir::new().expect("creating the log directory");
        let log = log_dir.path().join("s3mount.log");
        (mount_dir, path, log_dir, log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the mount.
    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }

    /// The foreground child, when mounted with [`Mount::foreground`].
    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The pids of the daemon serving this mount.
    pub fn daemon_pids(&self) -> Vec<i32> {
        daemon_pids(&self.path)
    }

    /// Unmounts as a user would (`fusermount3 -u`, not lazy) and waits until the mount is gone.
    pub fn unmount(&mut self) {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status()
            .expect("fusermount3");
        assert!(
            status.success(),
            "fusermount3 -u {} failed: {status}",
            self.path.display()
        );
        wait_until("the mount is gone", || !is_mounted(&self.path));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- s3mount log ({}) ----\n{}\n---- end of log ----",
                self.log.display(),
                self.log_text()
            );
        }
        if is_mounted(&self.path) {
            let lazy = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.path)
                .output();
            if !lazy.is_ok_and(|o| o.status.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.path).output();
            }
        }
        if let Some(child) = &mut self.child {
            let deadline = Instant::now() + WAIT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs the binary (default, background mode) with `args` and returns its output.
pub fn run_s3mount(args: &[&OsStr]) -> Output {
    let mut command = s3mount_command();
    command.args(args);
    run_bounded(command)
}

/// Like [`Command::output`], but fails after [`WAIT`] instead of hanging: the command may not
/// exit, or a background daemon may keep the command's stdout or stderr open (then a shell's
/// `$(s3mount ...)` would hang as well).
pub fn run_bounded(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", describe(&command)));
    let drain = |mut pipe: Box<dyn io::Read + Send>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send(bytes);
        });
        receiver
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_for_exit(&mut child, &describe(&command));
    let deadline = Instant::now() + WAIT;
    let collect = |receiver: std::sync::mpsc::Receiver<Vec<u8>>, name: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        receiver.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "{} exited ({status}) but its {name} stayed open for {WAIT:?}: a daemon kept it",
                describe(&command)
            )
        })
    };
    let stdout = collect(stdout, "stdout");
    let stderr = collect(stderr, "stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Closes `file` and returns what close(2) said. Dropping a `File` throws that away, and close is
/// where the daemon uploads.
pub fn close(file: std::fs::File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: the File has just given up `fd`, so it is open and nothing else will close it.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Compares bytes, saying where they first differ rather than printing megabytes.
pub fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    if got == expected {
        return;
    }
    if got.len() <= 200 && expected.len() <= 200 {
        panic!(
            "{what}: got {:?}, expected {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(expected)
        );
    }
    let first = got.iter().zip(expected).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes, expected {}; first differing byte at {first:?}",
        got.len(),
        expected.len()
    );
}

/// Deterministic, incompressible bytes (xorshift64*), so large objects are not all zeros.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x2545_F491_4F6C_DD1D;
    if state == 0 {
        state = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a directory tree holds: relative path -> `None` for a directory, `Some(size)` for a file.
pub fn tree(root: &Path) -> BTreeMap<String, Option<u64>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<u64>>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                out.insert(relative, None);
                walk(root, &path, out)?;
            } else {
                out.insert(relative, Some(entry.metadata()?.len()));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out).unwrap_or_else(|e| panic!("walking {}: {e}", root.display()));
    out
}

/// The names in one directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .collect();
    names.sort();
    names
}

/// Runs the binary (default, background mode) and checks it fails with status 1, one line on
/// stderr that starts `s3mount: error: ` and contains every one of `needles`, and that nothing
/// got mounted on `mount_point`.
pub fn assert_fails_before_mount(command: Command, mount_point: &Path, needles: &[&str]) {
    let output = run_bounded(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "exit status; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got: {stderr}");
    assert!(lines[0].starts_with("s3mount: error: "), "stderr: {stderr}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "stderr should contain {needle:?}: {stderr}"
        );
    }
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!is_mounted(mount_point), "{} got mounted", mount_point.display());
    wait_until("no s3mount process is left for the mount point", || {
        daemon_pids(mount_point).is_empty()
    });
}

impl Settings {
    /// The read-only key (id, secret). Panics, saying how to get it, when the environment was
    /// written by an older `scripts/s3-server` that did not create it.
    pub fn readonly_key(&self) -> (&str, &str) {
        match (&self.readonly_access_key_id, &self.readonly_secret_access_key) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => (id, secret),
            _ => panic!(
                "S3MOUNT_TEST_READONLY_ACCESS_KEY_ID / S3MOUNT_TEST_READONLY_SECRET_ACCESS_KEY are not set: \
                 run scripts/s3-server start (it adds the read-only key) and source target/s3-server/env again"
            ),
        }
    }
}

/// Largest ranged GET [`TestPrefix::get`] asks for at once, so a large object is not one request.
const GET_CHUNK: u64 = 64 << 20;

impl TestPrefix {
    /// HeadObject of PREFIX/`relative`, read with the harness's own client (not through a
    /// mount); `None` when there is no such key.
    pub fn head(&self, relative: &str) -> Option<s3mount::object::ObjectHead> {
        let key = self.key(relative);
        match runtime().block_on(client().head(&key)) {
            Ok(head) => Some(head),
            Err(s3mount::object::ObjectError::NoSuchKey(_)) => None,
            Err(error) => panic!("HeadObject {key:?}: {error}"),
        }
    }

    /// Uploads `body` at PREFIX/`relative` with `metadata` (its headers and `x-amz-meta-*`
    /// entries, sent as given: S3 lower-cases the names); returns the ETag.
    pub fn put_with_metadata(
        &self,
        relative: &str,
        body: impl Into<Bytes>,
        metadata: &s3mount::object::ObjectMetadata,
    ) -> String {
        let key = self.key(relative);
        let options = s3mount::object::PutOptions {
            metadata: metadata.clone(),
            ..s3mount::object::PutOptions::default()
        };
        runtime()
            .block_on(client().put_with(&key, body.into(), &options))
            .unwrap_or_else(|error| panic!("uploading {key:?} with metadata: {error}"))
    }

    /// The whole body of PREFIX/`relative`, read with the harness's own client (not through a
    /// mount); `None` when there is no such key. Every range is pinned to the ETag the HEAD saw,
    /// so a body is never a mix of two versions.
    pub fn get(&self, relative: &str) -> Option<Vec<u8>> {
        let key = self.key(relative);
        let head = self.head(relative)?;
        let mut body = Vec::with_capacity(usize::try_from(head.size).expect("object fits in memory"));
        while (body.len() as u64) < head.size {
            let start = body.len() as u64;
            let range = start..(start + GET_CHUNK).min(head.size);
            let chunk = runtime()
                .block_on(client().get_range(&key, range, Some(&head.etag)))
                .unwrap_or_else(|error| panic!("GetObject {key:?} from byte {start}: {error}"));
            assert!(
                !chunk.is_empty(),
                "GetObject {key:?} from byte {start} returned nothing"
            );
            body.extend_from_slice(&chunk);
        }
        Some(body)
    }
}

/// A command as a failure message shows it: program and arguments, never its environment
/// (which holds the test server's secret key).
fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// How many blocks the cache directory `dir` holds: slots of `DIR/blocks/slots` whose trailer
/// is written (the block's data goes first, its trailer last).
pub fn cached_block_count(dir: &Path) -> usize {
    s3mount::cache::disk::stored_blocks(dir).map_or(0, |blocks| blocks.len())
}
