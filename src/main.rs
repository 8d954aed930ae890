//! The `s3mount` command: parse arguments, check them, and mount (in the background unless
//! `--foreground`). Errors end here as one line on stderr and exit status 1.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use s3mount::cli::{Args, parse_source};
use s3mount::fs::{FsConfig, PosixMetadata};
use s3mount::logging::{self, LogTarget};
use s3mount::object::WriteSettings;
use s3mount::object::retry::RetryPolicy;
use s3mount::object::s3::S3Settings;
use s3mount::prefetch::ReadAheadConfig;
use s3mount::run::{self, CacheSettings, MountConfig};
use s3mount::upload::{self, UploadConfig};

/// S3's smallest multipart part: a smaller --part-size still reads in that size, but uploads
/// in parts of at least this.
const MIN_UPLOAD_PART: u64 = 5 << 20;

fn main() -> ExitCode {
    release_large_buffers_to_the_system();
    let args = Args::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("s3mount: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    args.check_write_options().map_err(anyhow::Error::msg)?;
    let source = parse_source(&args.source, args.prefix.as_deref())?;
    let filter = logging::filter(&args.log_level)?;
    let mount_point = run::check_mount_point(&args.mount_point)?;
    let log_file = match &args.log_file {
        Some(path) => Some(std::path::absolute(path).context("--log-file")?),
        None => None,
    };
    let cache_dir = match &args.cache {
        Some(dir) => std::path::absolute(dir).context("--cache")?,
        None => run::default_cache_dir(&source, args.endpoint_url.as_deref()),
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
        s3: S3Settings {
            bucket: source.bucket.clone(),
            region: args.region,
            endpoint_url: args.endpoint_url,
            force_path_style: args.force_path_style,
            profile: args.profile,
            no_sign_request: args.no_sign_request,
            request_timeout: Some(args.request_timeout),
        },
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
