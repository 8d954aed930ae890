//! The `s3mount` command: parse arguments, check them, and mount (in the background unless
//! `--foreground`); or, as `mount.s3mount`, the same for mount(8) and fstab; or `s3mount
//! status` / `s3mount warm` against a live mount. Errors end here as one line on stderr and
//! exit status 1.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use s3mount::cli::{Args, parse_source};
use s3mount::fs::{FsConfig, PosixMetadata};
use s3mount::fstab::{self, Invocation};
use s3mount::logging::{self, LogTarget};
use s3mount::object::WriteSettings;
use s3mount::object::retry::RetryPolicy;
use s3mount::prefetch::ReadAheadConfig;
use s3mount::run::{self, CacheSettings, MountConfig};
use s3mount::upload::{self, UploadConfig};

/// S3's smallest multipart part: a smaller --part-size still reads in that size, but uploads
/// in parts of at least this.
const MIN_UPLOAD_PART: u64 = 5 << 20;

fn main() -> ExitCode {
    release_large_buffers_to_the_system();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let result = match argv.get(1).and_then(|a| a.to_str()) {
        Some("status") => s3mount::control::status_command(&argv[1..]),
        Some("warm") => s3mount::warm::warm_command(&argv[1..]),
        _ => mount_command(&argv),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("s3mount: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `s3mount SOURCE MOUNTPOINT [OPTIONS]` or `mount.s3mount SOURCE DIR [-sfnv] [-o OPTIONS]`.
fn mount_command(argv: &[OsString]) -> anyhow::Result<()> {
    let invocation = Invocation::of(argv.first().map(OsString::as_os_str));
    let expanded = fstab::expand(argv, invocation, &Args::command()).map_err(anyhow::Error::msg)?;
    let from_mount_options = invocation == Invocation::Helper || expanded.args[1..] != argv[1..];
    let matches = match Args::command().try_get_matches_from(&expanded.args) {
        Ok(matches) => matches,
        // --help, --version, and the command line's own usage errors: clap's full text.
        Err(error) if !from_mount_options || !error.use_stderr() => error.exit(),
        Err(error) => anyhow::bail!("{}", fstab::one_line(&error)),
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{}", fstab::one_line(&e)))?;
    if let Some(path) = &args.env_file {
        load_env_file(path)?;
    }
    let config = mount_config(&args)?;
    if expanded.fake {
        return Ok(());
    }
    serve(config, &args)
}

/// Sets the variables of `--env-file`. Called while the process has one thread, before the
/// SDK (which reads the environment) exists.
fn load_env_file(path: &std::path::Path) -> anyhow::Result<()> {
    for (key, value) in s3mount::env_file::load(path)? {
        // SAFETY: main has started no thread yet (daemonizing forks later and needs that too),
        // so nothing reads the environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    Ok(())
}

fn mount_config(args: &Args) -> anyhow::Result<MountConfig> {
    args.check_write_options().map_err(anyhow::Error::msg)?;
    let source = parse_source(&args.source, args.prefix.as_deref())?;
    logging::filter(&args.log_level)?;
    let mount_point = run::check_mount_point(&args.mount_point)?;
    let cache_dir = match &args.cache {
        Some(dir) => std::path::absolute(dir).context("--cache")?,
        None => run::default_cache_dir(&source, args.s3.endpoint_url.as_deref())?,
    };
    let cache = (!args.no_cache).then(|| cache_dir.clone());
    let memory = args.max_memory.unwrap_or_else(run::default_read_ahead_memory);
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let write = WriteSettings {
        sse: args.sse.clone(),
        sse_kms_key_id: args.sse_kms_key_id.clone(),
        storage_class: args.storage_class.clone(),
        acl: args.acl.clone(),
    };
    let config = MountConfig {
        s3: args.s3.settings(&source.bucket, args.request_timeout),
        write: write.clone(),
        version_at: args.version_at,
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            request_timeout: args.request_timeout,
            max_retry_time: args.max_retry_time,
        },
        fs: FsConfig {
            root: source.prefix.clone(),
            uid: args.uid.unwrap_or(uid),
            gid: args.gid.unwrap_or(gid),
            file_mode: args.file_mode,
            dir_mode: args.dir_mode,
            metadata_ttl: args.metadata_ttl,
            read_only: args.read_only || args.version_at.is_some(),
            list_page_size: None,
            read_ahead: ReadAheadConfig {
                part_size: args.part_size,
            },
            read_ahead_memory: memory,
            upload: UploadConfig {
                part_size: args.part_size.max(MIN_UPLOAD_PART),
                concurrency: usize::from(args.upload_concurrency),
            },
            upload_memory: upload::part_budget_within(memory),
            max_rename_keys: args.max_rename_keys,
            write: write.clone(),
            posix_metadata: args.posix_metadata.unwrap_or(if args.allow_other {
                PosixMetadata::Exact
            } else {
                PosixMetadata::Lazy
            }),
        },
        staging_dir: cache_dir,
        cache: cache.map(|dir| CacheSettings {
            dir,
            max_bytes: args.cache_size,
            min_free_bytes: args.cache_min_free,
        }),
        source,
        mount_point,
        allow_other: args.allow_other,
        no_exec: args.no_exec,
        metrics_addr: args.metrics_addr,
    };
    Ok(config)
}

/// Mounts and serves: in the foreground, or in a background process that the command waits
/// for until the mount answers.
fn serve(config: MountConfig, args: &Args) -> anyhow::Result<()> {
    let filter = logging::filter(&args.log_level)?;
    let log_file = match &args.log_file {
        Some(path) => Some(std::path::absolute(path).context("--log-file")?),
        None => None,
    };
    if args.foreground {
        logging::init(filter, &log_file.map_or(LogTarget::Stderr, LogTarget::File))?;
        run::mount(config, || {})?;
    } else {
        let target = log_file.map_or(LogTarget::Syslog, LogTarget::File);
        run::daemonize(move |ready| {
            if let Err(error) = logging::init(filter, &target) {
                return Err(run::RunError::Daemon(error.to_string()));
            }
            run::mount(config, ready)
        })?;
    }
    Ok(())
}

/// Large buffers (parts of several MiB) are allocated and freed by the hundred per second on many
/// threads. glibc's default raises its mmap threshold after the first such free, so later ones
/// come from per-thread heaps that keep the memory after it is freed: with four 1 GiB files
/// written at once the daemon's RSS reached 3x its 128 MiB budget. A fixed 2 MiB threshold maps
/// every larger buffer on its own and gives it back when freed (peak 1.15x the budget), while
/// the 1 MiB buffers of FUSE writes stay on the heap, which reuses them without page faults.
const MMAP_THRESHOLD: i32 = 2 << 20;

fn release_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
