//! Command-line arguments (clap) and their conversion into a validated [`MountConfig`].
//!
//! Owns every rule about what the user may type: source forms, modes, durations. Nothing here
//! touches the network or the mount point's contents; `run.rs` does that with the config.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::fs::PosixMetadata;
use crate::fs::names::RootPrefix;

/// Default metadata TTL. Long enough that `ls -l` on a directory of 100,000 names is served from
/// what its own listing cached; contents stay close-to-open because every open asks S3 anyway.
pub const DEFAULT_METADATA_TTL: &str = "60s";

/// How to reach the bucket: shared by the mount and by `s3mount warm s3://...`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct S3Args {
    /// AWS region of the bucket (default: from the environment or profile, else us-east-1)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// S3 endpoint URL, for S3-compatible servers (default: AWS; also AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Address the bucket as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT (most S3-compatible servers)
    #[arg(long)]
    pub force_path_style: bool,

    /// Take credentials and settings from this profile of ~/.aws/config and ~/.aws/credentials
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// Send unsigned requests, for public buckets (no credentials needed)
    #[arg(long)]
    pub no_sign_request: bool,

    /// Send ranged GETs through the AWS SDK's HTTP client instead of s3mount's own connections
    /// (which read bodies straight into the block cache's buffers, for less CPU per byte); for
    /// diagnosis
    #[arg(long)]
    pub sdk_gets: bool,
}

impl S3Args {
    /// The SDK client's settings for `bucket`.
    pub fn settings(&self, bucket: &str, request_timeout: Duration) -> crate::object::s3::S3Settings {
        crate::object::s3::S3Settings {
            bucket: bucket.to_owned(),
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            profile: self.profile.clone(),
            no_sign_request: self.no_sign_request,
            request_timeout: Some(request_timeout),
            sdk_gets: self.sdk_gets,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "s3mount",
    version,
    about = "Mount an S3 bucket, or a prefix of one, as a file system.",
    long_about = "Mount an S3 bucket, or a prefix of one, as a file system.\n\n\
        Key prefixes are directories, objects are files. Credentials come from the standard AWS \
        provider chain (environment, shared config/credentials profile, web identity, instance \
        metadata); they are never taken from the command line.\n\n\
        By default s3mount runs in the background and returns once the mount is live; \
        unmount with `umount MOUNTPOINT` (or `fusermount3 -u MOUNTPOINT`).",
    after_help = "Examples:\n  s3mount my-bucket /mnt/data\n  \
        s3mount s3://my-bucket/datasets/imagenet/ /mnt/in\n  \
        s3mount my-bucket:/datasets /mnt/data --read-only\n  \
        s3mount my-bucket /mnt/data --prefix datasets/ --endpoint-url http://127.0.0.1:3900 --force-path-style\n  \
        s3mount my-bucket:/datasets /mnt/data -o ro,allow_other,metadata_ttl=5m\n  \
        mount -t s3mount my-bucket:/datasets /mnt/data -o allow_other,uid=1000\n\n\
        Every --long-option is also a -o option (metadata_ttl=60s, allow_other): fstab lines use them.\n\n\
        Commands on a live mount:\n  \
        s3mount status MOUNTPOINT [--json]   what the daemon is doing: pending uploads, cache, errors\n  \
        s3mount warm PATH...                 fill the block cache ahead of a training run"
)]
pub struct Args {
    /// What to mount: BUCKET, BUCKET:/PREFIX or s3://BUCKET/PREFIX/
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// An existing, empty directory to mount on
    #[arg(value_name = "MOUNTPOINT")]
    pub mount_point: PathBuf,

    /// Mount only the keys under this prefix (the prefix becomes the root directory)
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    #[command(flatten)]
    pub s3: S3Args,

    /// Read KEY=VALUE lines (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...) into the
    /// environment before anything else: how a unit or an fstab line gets credentials without
    /// writing them on a command line. The file must be owned by root or the user mounting, and
    /// readable by no one else (chmod 600)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Mount read-only: every change is refused with EROFS
    #[arg(long)]
    pub read_only: bool,

    /// Mount the bucket as it was at TIME (RFC 3339, e.g. 2026-11-30T12:00:00Z, or a Unix
    /// time), read-only, from its versions: for reproducible training inputs. The bucket must
    /// keep versions
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub version_at: Option<std::time::SystemTime>,

    /// Owner of every file and directory (default: the user who mounts)
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Group of every file and directory (default: the group of the user who mounts)
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,

    /// Permission bits of files, in octal
    #[arg(long, value_name = "MODE", default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,

    /// Permission bits of directories, in octal
    #[arg(long, value_name = "MODE", default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,

    /// Modes, owners and times kept in x-amz-meta-mode/uid/gid/mtime (as s3fs keeps them):
    /// `lazy` reads them when a file is looked at closely, so `ls -l` costs only the listing
    /// and shows the defaults above for what it listed; `exact` HEADs every entry a lookup
    /// meets, so `stat` and permission checks always see them; `off` ignores them and accepts
    /// chmod, chown and touch without keeping them. Default: exact with --allow-other (other
    /// users' access depends on them), else lazy
    #[arg(long, value_name = "MODE", value_parser = parse_posix_metadata)]
    pub posix_metadata: Option<PosixMetadata>,

    /// Server-side encryption of the objects this mount writes: AES256, aws:kms or aws:kms:dsse
    /// (default: the bucket's). A rewritten object keeps its own
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub sse: Option<String>,

    /// The KMS key of --sse aws:kms (default: the bucket's or the account's)
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// Storage class of the objects this mount writes, e.g. STANDARD_IA or INTELLIGENT_TIERING
    /// (default: STANDARD). A rewritten object keeps its own
    #[arg(long, value_name = "CLASS", value_parser = [
        "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
        "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "EXPRESS_ONEZONE", "OUTPOSTS", "SNOW",
    ])]
    pub storage_class: Option<String>,

    /// Canned ACL of every object this mount writes or copies (default: none sent)
    #[arg(long, value_name = "ACL", value_parser = [
        "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
        "bucket-owner-read", "bucket-owner-full-control",
    ])]
    pub acl: Option<String>,

    /// Let users other than the one who mounts use the mount (needs user_allow_other in
    /// /etc/fuse.conf unless root)
    #[arg(long)]
    pub allow_other: bool,

    /// Forbid running programs stored in the bucket (mount(8)'s noexec)
    #[arg(long)]
    pub no_exec: bool,

    /// Serve Prometheus metrics over HTTP at this address, e.g. 127.0.0.1:9464 (default: off).
    /// `s3mount status` works without it
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Stay in the foreground and log to stderr instead of running in the background
    #[arg(short, long)]
    pub foreground: bool,

    /// How long file and directory metadata is trusted before S3 is asked again, e.g. 1s, 60s,
    /// 5m (0 to ask every time). Contents are close-to-open whatever this is: every open asks S3
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_METADATA_TTL, value_parser = parse_duration)]
    pub metadata_ttl: Duration,

    /// Log verbosity: error, warn, info, debug or trace (RUST_LOG-style filters work too)
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Append logs to this file (default: stderr in the foreground, syslog in the background)
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Keep a block cache of what is read in DIR, kept across remounts (default: a directory per
    /// bucket and prefix under $XDG_CACHE_HOME/s3mount or ~/.cache/s3mount). One mount per DIR
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache: Option<PathBuf>,

    /// Do not cache blocks on local disk
    #[arg(long)]
    pub no_cache: bool,

    /// Largest size of the block cache, e.g. 50GiB (default: 20% of the disk holding it, at most
    /// 20 GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,

    /// Free space the block cache always leaves on the disk holding it, whatever else fills that
    /// disk, e.g. 2GiB; 0 for none (default: 10% of the disk, at most 10 GiB). Below it, blocks
    /// are evicted and new ones not cached. Written files are staged there regardless
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_min_free: Option<u64>,

    /// Memory for read-ahead buffers of all open files together, e.g. 512MiB, and as much again
    /// for writing: upload part buffers get this less 32 MiB for the rest of the daemon, so a
    /// mount being written stays within it (default: 1/16 of the machine's memory, between 64 MiB
    /// and 192 MiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Size of one ranged GET when reading ahead, and of one part of a multipart upload (at
    /// least 5MiB there; larger files get larger parts to fit S3's 10,000): a multiple of 1MiB,
    /// at most 1GiB. Files up to this size are uploaded in one PutObject
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_part_size)]
    pub part_size: u64,

    /// Parts of one file uploaded at once
    #[arg(long, value_name = "N", default_value = "8", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,

    /// Attempts of one S3 request before it fails (throttling, 5xx, timeouts and broken
    /// connections are tried again, with exponential backoff and jitter; other errors are final)
    #[arg(long, value_name = "N", default_value = "10", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Longest wait for one attempt of an S3 request to answer, and longest silence inside a
    /// body being sent or received, e.g. 10s. Attempts with a body get one more second per MiB
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// No new attempt of an S3 request starts this long after its first, e.g. 60s: with
    /// --request-timeout, the longest a process waits on a request to an endpoint that is down
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub max_retry_time: Duration,

    /// Most keys a directory rename moves (one copy and one delete each, not atomic); a larger
    /// directory's rename fails with EXDEV, and `mv` then copies it file by file
    #[arg(long, value_name = "N", default_value = "10000")]
    pub max_rename_keys: usize,

    /// Options as mount(8) writes them, comma separated: every long option above without its
    /// dashes (`allow_other,uid=1000,metadata_ttl=60s`), and the generic ones (ro, rw, noexec,
    /// _netdev, nofail, x-*, ...). Commas inside a value are escaped (\\,) or quoted
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// `s3mount status MOUNTPOINT`: what a live daemon is doing.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "status",
    about = "Show what the daemon of a live mount is doing: pending uploads, cache use, requests, recent errors"
)]
pub struct StatusArgs {
    /// The mount point (or any path inside it)
    #[arg(value_name = "MOUNTPOINT")]
    pub mount_point: PathBuf,

    /// Print one JSON object, for scripts
    #[arg(long)]
    pub json: bool,
}

/// `s3mount warm PATH...`: fill the block cache ahead of a run.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "warm",
    about = "Fill the block cache ahead of a training run: files or directories on a live mount \
        (through its daemon), or s3://BUCKET/PREFIX with --cache DIR (no mount)",
    after_help = "Examples:\n  s3mount warm /mnt/data/train\n  \
        s3mount warm s3://my-bucket/datasets/ --cache /var/cache/s3mount/data --cache-size 100GiB"
)]
pub struct WarmArgs {
    /// Files or directories on an s3mount mount, or s3://BUCKET/PREFIX
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,

    /// Files fetched at once
    #[arg(long, value_name = "N", default_value = "16", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Warm even what does not fit the cache (the first files warmed are then evicted again)
    #[arg(long)]
    pub force: bool,

    /// The cache directory to fill, for s3:// paths (what the later mount's --cache names)
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Bound of that cache, for s3:// paths, as the later mount's --cache-size
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,

    /// Free space that cache leaves on its disk, for s3:// paths, as the later mount's
    /// --cache-min-free (default: 10% of the disk, at most 10 GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_min_free: Option<u64>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// The whole command, subcommands included: what the man page and the shell completions
/// describe. (The binary dispatches `status` and `warm` itself, before clap sees the mount's
/// arguments, so a mount never has to spell its SOURCE after a subcommand.)
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Args::command()
        .subcommand(StatusArgs::command())
        .subcommand(WarmArgs::command())
        .args_conflicts_with_subcommands(true)
}

/// Where the bucket is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    pub prefix: RootPrefix,
}

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("invalid source {0:?}: expected BUCKET, BUCKET:/PREFIX or s3://BUCKET/PREFIX/")]
    BadSource(String),
    #[error("invalid bucket name {0:?}")]
    BadBucket(String),
    #[error("invalid prefix {prefix:?}: {reason}")]
    BadPrefix {
        prefix: String,
        reason: crate::fs::names::NameError,
    },
    #[error("the prefix is given twice: in the source ({0:?}) and with --prefix ({1:?})")]
    PrefixTwice(String, String),
}

/// Splits SOURCE (and `--prefix`) into a bucket and a root prefix.
pub fn parse_source(source: &str, prefix_option: Option<&str>) -> Result<Source, CliError> {
    let (bucket, prefix) = if let Some(rest) = source.strip_prefix("s3://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else if let Some((bucket, prefix)) = source.split_once(":/") {
        (bucket, prefix)
    } else if source.contains('/') || source.contains(':') {
        return Err(CliError::BadSource(source.to_owned()));
    } else {
        (source, "")
    };
    check_bucket_name(bucket)?;
    let prefix = match (prefix.trim_matches('/'), prefix_option) {
        ("", None) => "",
        ("", Some(option)) => option,
        (inline, None) => inline,
        (inline, Some(option)) => return Err(CliError::PrefixTwice(inline.to_owned(), option.to_owned())),
    };
    let root = RootPrefix::new(prefix).map_err(|reason| CliError::BadPrefix {
        prefix: prefix.to_owned(),
        reason,
    })?;
    Ok(Source {
        bucket: bucket.to_owned(),
        prefix: root,
    })
}

/// S3's rules are stricter (3-63 lower-case letters, digits, dots, hyphens) but S3-compatible
/// servers and legacy buckets allow more; refuse only what can never be a bucket in a URL.
fn check_bucket_name(bucket: &str) -> Result<(), CliError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if bucket.is_empty() || bucket.len() > 255 || !bucket.chars().all(allowed) {
        return Err(CliError::BadBucket(bucket.to_owned()));
    }
    Ok(())
}

/// Octal permission bits: `644`, `0644` or `0o644`, at most `7777`.
pub fn parse_mode(text: &str) -> Result<u16, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode =
        u16::from_str_radix(digits, 8).map_err(|_| format!("{text:?} is not an octal mode like 0644"))?;
    if mode > 0o7777 {
        return Err(format!("{text:?} has bits beyond 07777"));
    }
    Ok(mode)
}

impl Args {
    /// The options for what the mount writes must have something to apply to, and agree.
    pub fn check_write_options(&self) -> Result<(), String> {
        let write_options = [
            ("--sse", self.sse.is_some()),
            ("--storage-class", self.storage_class.is_some()),
            ("--acl", self.acl.is_some()),
        ];
        if let Some((name, _)) = write_options.iter().find(|(_, given)| *given) {
            if self.read_only {
                return Err(format!(
                    "{name} sets how objects are written, and --read-only writes none"
                ));
            }
            if self.version_at.is_some() {
                return Err(format!(
                    "{name} sets how objects are written, and a --version-at mount writes none"
                ));
            }
        }
        if self.sse_kms_key_id.is_some() && !self.sse.as_deref().is_some_and(|sse| sse.starts_with("aws:kms"))
        {
            return Err("--sse-kms-key-id needs --sse aws:kms or aws:kms:dsse".to_owned());
        }
        Ok(())
    }
}

/// `--version-at`: RFC 3339 (`2026-11-30T12:00:00Z`, fractions and offsets allowed) or Unix
/// seconds.
pub fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(std::time::UNIX_EPOCH + Duration::from_secs(seconds));
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time like 2026-11-30T12:00:00Z or a Unix time: {e}")
    })
}

/// `--posix-metadata`: lazy, exact or off.
pub fn parse_posix_metadata(text: &str) -> Result<PosixMetadata, String> {
    match text {
        "lazy" => Ok(PosixMetadata::Lazy),
        "exact" => Ok(PosixMetadata::Exact),
        "off" => Ok(PosixMetadata::Off),
        _ => Err(format!("{text:?} is not one of lazy, exact, off")),
    }
}

/// A size like `512MiB`, `10GiB`, `8MB` or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{text:?} is not a size like 512MiB or 10GiB"))
}

/// A part size: whole cache blocks (1 MiB), up to 1 GiB (S3 serves any range, but a part is one
/// buffer in memory).
pub fn parse_part_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let block = crate::cache::BLOCK_SIZE;
    if size == 0 || size % block != 0 || size > 1024 * block {
        return Err(format!("{text:?} must be a multiple of 1MiB, from 1MiB to 1GiB"));
    }
    Ok(size)
}

/// A duration above zero (a timeout of 0 would fail every request).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?} must be longer than 0")),
        duration => Ok(duration),
    }
}

/// A duration like `1s`, `500ms`, `5m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 1s or 5m: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(s: &str, p: Option<&str>) -> Result<(String, String), CliError> {
        parse_source(s, p).map(|s| (s.bucket, s.prefix.as_str().to_owned()))
    }

    #[test]
    fn source_forms() {
        assert_eq!(source("b", None), Ok(("b".into(), "".into())));
        assert_eq!(source("b:/p/q", None), Ok(("b".into(), "p/q/".into())));
        assert_eq!(source("b:/", None), Ok(("b".into(), "".into())));
        assert_eq!(source("s3://b", None), Ok(("b".into(), "".into())));
        assert_eq!(source("s3://b/", None), Ok(("b".into(), "".into())));
        assert_eq!(
            source("s3://b/datasets/imagenet/", None),
            Ok(("b".into(), "datasets/imagenet/".into()))
        );
        assert_eq!(source("b", Some("x/y")), Ok(("b".into(), "x/y/".into())));
        assert_eq!(
            source("s3://b/x", Some("y")),
            Err(CliError::PrefixTwice("x".into(), "y".into()))
        );
        assert_eq!(source("b/x", None), Err(CliError::BadSource("b/x".into())));
        assert_eq!(source("", None), Err(CliError::BadBucket("".into())));
        assert_eq!(source("s3:///x", None), Err(CliError::BadBucket("".into())));
        assert_eq!(source("b c", None), Err(CliError::BadBucket("b c".into())));
        assert!(matches!(
            source("b:/a/../c", None),
            Err(CliError::BadPrefix { .. })
        ));
    }

    #[test]
    fn modes_and_durations() {
        assert_eq!(
            parse_time("1700000000"),
            Ok(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), parse_time("1700000000"));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_posix_metadata("exact"), Ok(PosixMetadata::Exact));
        assert!(parse_posix_metadata("Exact").is_err());
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_part_size("8MiB"), Ok(8 << 20));
        assert!(parse_part_size("1500KiB").is_err());
        assert!(parse_part_size("0").is_err());
        assert!(parse_part_size("2GiB").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        StatusArgs::command().debug_assert();
        WarmArgs::command().debug_assert();
        command().debug_assert();
    }
}
