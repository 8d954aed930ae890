//! The raw-SDK side of `scripts/bench`: puts the benchmark's data set into a bucket, and measures
//! what aws-sdk-s3 alone pulls from and pushes to the server, the baselines that s3mount's read
//! and write paths are compared with.
//!
//! It talks to aws-sdk-s3 directly, not through the crate's `S3Client`, so the baseline owes
//! nothing to s3mount's code; it configures the SDK the way `src/object/s3.rs` does (path-style
//! addressing, checksums only where the API requires them) so both do the same work per byte.
//!
//! ```text
//! bench_sdk upload      BUCKET KEY SIZE_BYTES
//! bench_sdk upload-many BUCKET PREFIX COUNT SIZE_BYTES [--posix-every N]
//! bench_sdk list        BUCKET PREFIX [--page-size N]
//! bench_sdk list-tree   BUCKET PREFIX [--page-size N]
//! bench_sdk download    BUCKET KEY [--part-size BYTES] [--concurrency N] [--store]
//! bench_sdk download-parallel BUCKET KEY... [--part-size BYTES] [--concurrency N]
//! bench_sdk random-read BUCKET KEY [--block-size BYTES] [--seconds S]
//! bench_sdk download-many BUCKET PREFIX [--concurrency N]
//! bench_sdk put-file    BUCKET KEY FILE [--part-size BYTES] [--concurrency N]
//! bench_sdk put-many    BUCKET PREFIX DIR
//! bench_sdk delete-prefix BUCKET PREFIX
//! bench_sdk wait-for    BUCKET KEY_PREFIX COUNT TOTAL_BYTES [--seconds S]
//! bench_sdk make-file   PATH SIZE_BYTES [--seed N]
//! bench_sdk refresh-file PATH [--seed N]
//! bench_sdk make-files  DIR COUNT SIZE_BYTES [--seed N]
//! ```
//!
//! `download` is the sequential baseline (a sliding window of ranged GETs; it counts what it
//! reads and drops it, and with `--store` copies each part's bytes into a buffer of the part's
//! size, the buffers reused from part to part, as a reader that uses what it reads must: a
//! mount lands every byte once in memory, for FUSE and its cache), `download-parallel`
//! that of many readers at once (one such window per key given, a key given twice read twice), `random-read` the
//! baseline of `fio --rw=randread --ioengine=psync` (one reader, one aligned block at a time),
//! `download-many` the baseline of reading many small files (list, then GET them all), `list` the
//! baseline of listing a directory through the mount (`ls -l`, `find`, `stat` of its files): the
//! prefix with delimiter `/`, page after page; `list-tree` the baseline of `find` over a tree of
//! directories (each directory listed so in turn, depth first, as `find` walks). `upload-many --posix-every N` gives every Nth
//! object the headers s3fs keeps a file's mode, owner and mtime in (`x-amz-meta-mode` and
//! others), so a mount has attributes to read from those.
//!
//! `put-file` is the baseline of writing a big file through the mount and closing it (a multipart
//! upload of a local file, parts read from it as they go, a sliding window of them in flight),
//! `put-many` the baseline of `cp -r` of a directory of small files (one PutObject after the
//! other). `wait-for` tells whether what a mount was given is in the bucket once the writer has
//! closed its files (and waits for it when it is not); `delete-prefix` clears what the writes left
//! between runs; `make-file` and `make-files`
//! write the local source files, incompressible bytes of a chosen seed, and `refresh-file`
//! rewrites a few bytes in every 64 KiB of one: a new seed for every measurement means Garage,
//! which stores each distinct block once, never finds one it already has.
//!
//! Endpoint, region and credentials come from the usual `AWS_*` variables
//! (`. target/s3-server/env`). Uploads are idempotent: what is already there with the right size
//! is kept, so the data set is written once and reused across bench runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, EncodingType, ObjectIdentifier};
use tokio::task::JoinSet;

/// Part size of the big uploads: S3 allows 10,000 parts, so 16 MiB parts cover objects up to
/// 160 GiB, and a part is small enough to generate and hold four at a time.
const UPLOAD_PART_BYTES: u64 = 16 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;
/// Small objects PUT at once by `upload-many`.
const SMALL_PUT_CONCURRENCY: usize = 16;
/// Defaults of `download`: Mountpoint's part size, and enough parallel GETs to fill a link.
const DEFAULT_PART_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_CONCURRENCY: usize = 8;
/// Defaults of `random-read`: fio's usual random-read block, and long enough for a stable rate.
const DEFAULT_BLOCK_BYTES: u64 = 4096;
const DEFAULT_SECONDS: f64 = 10.0;
/// Default of `list`: the page size S3 (and Garage) give when none is asked for, as s3mount's
/// default listing gets.
const DEFAULT_PAGE_KEYS: i32 = 1000;
/// What `upload-many --posix-every` writes, as s3fs does (decimal `st_mode` with its type bits,
/// decimal ids, seconds): mode 0100600 and owner 1001:1001, none of them a mount's default
/// (0644, the mounting user), so a `stat` tells the stored attributes from the defaults; an
/// mtime of 2020-09-13.
const POSIX_HEADERS: [(&str, &str); 4] = [
    ("mode", "33152"),
    ("uid", "1001"),
    ("gid", "1001"),
    ("mtime", "1600000000"),
];

const USAGE: &str = "usage:
  bench_sdk upload      BUCKET KEY SIZE_BYTES
  bench_sdk upload-many BUCKET PREFIX COUNT SIZE_BYTES [--posix-every N]
  bench_sdk list        BUCKET PREFIX [--page-size N]
  bench_sdk list-tree   BUCKET PREFIX [--page-size N]
  bench_sdk download    BUCKET KEY [--part-size BYTES] [--concurrency N] [--store]
  bench_sdk download-parallel BUCKET KEY... [--part-size BYTES] [--concurrency N]
  bench_sdk random-read BUCKET KEY [--block-size BYTES] [--seconds S]
  bench_sdk download-many BUCKET PREFIX [--concurrency N]
  bench_sdk put-file    BUCKET KEY FILE [--part-size BYTES] [--concurrency N]
  bench_sdk put-many    BUCKET PREFIX DIR
  bench_sdk delete-prefix BUCKET PREFIX
  bench_sdk wait-for    BUCKET KEY_PREFIX COUNT TOTAL_BYTES [--seconds S]
  bench_sdk make-file   PATH SIZE_BYTES [--seed N]
  bench_sdk refresh-file PATH [--seed N]
  bench_sdk make-files  DIR COUNT SIZE_BYTES [--seed N]
(endpoint, region and credentials from the AWS_* variables)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        bail!("{USAGE}");
    };
    let rest = &args[1..];
    match command.as_str() {
        "upload" => {
            let [bucket, key, size] = rest else {
                bail!("{USAGE}")
            };
            upload(&client().await, bucket, key, parse_u64("SIZE_BYTES", size)?).await
        }
        "upload-many" => {
            let options = Options::parse(rest)?;
            let [bucket, prefix, count, size] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            let shape = ManyShape {
                count: parse_u64("COUNT", count)? as usize,
                size: parse_u64("SIZE_BYTES", size)?,
                posix_every: options.posix_every,
            };
            upload_many(&client().await, bucket, prefix, shape).await
        }
        "list" => {
            let options = Options::parse(rest)?;
            let [bucket, prefix] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            list(&client().await, bucket, prefix, options.page_keys).await
        }
        "list-tree" => {
            let options = Options::parse(rest)?;
            let [bucket, prefix] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            list_tree(&client().await, bucket, prefix, options.page_keys).await
        }
        "download" => {
            let options = Options::parse(rest)?;
            let [bucket, key] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            download(
                &client().await,
                bucket,
                key,
                options.part_bytes,
                options.concurrency,
                options.store,
            )
            .await
        }
        "download-parallel" => {
            let options = Options::parse(rest)?;
            let [bucket, keys @ ..] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            ensure!(!keys.is_empty(), "{USAGE}");
            download_parallel(
                &client().await,
                bucket,
                keys,
                options.part_bytes,
                options.concurrency,
            )
            .await
        }
        "random-read" => {
            let options = Options::parse(rest)?;
            let [bucket, key] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            let client = client().await;
            random_read(&client, bucket, key, options.block_bytes, options.seconds).await
        }
        "download-many" => {
            let options = Options::parse(rest)?;
            let [bucket, prefix] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            download_many(&client().await, bucket, prefix, options.concurrency).await
        }
        "put-file" => {
            let options = Options::parse(rest)?;
            let [bucket, key, path] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            let client = client().await;
            put_file(
                &client,
                bucket,
                key,
                path.as_ref(),
                options.part_bytes,
                options.concurrency,
            )
            .await
        }
        "put-many" => {
            let [bucket, prefix, dir] = rest else {
                bail!("{USAGE}")
            };
            put_many(&client().await, bucket, prefix, dir.as_ref()).await
        }
        "delete-prefix" => {
            let [bucket, prefix] = rest else { bail!("{USAGE}") };
            delete_prefix(&client().await, bucket, prefix).await
        }
        "wait-for" => {
            let options = Options::parse(rest)?;
            let [bucket, prefix, count, bytes] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            let expected = (
                parse_u64("COUNT", count)? as usize,
                parse_u64("TOTAL_BYTES", bytes)?,
            );
            let timeout = std::time::Duration::from_secs_f64(options.seconds);
            wait_for(&client().await, bucket, prefix, expected, timeout).await
        }
        "make-file" => {
            let options = Options::parse(rest)?;
            let [path, size] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            make_file(path.as_ref(), parse_u64("SIZE_BYTES", size)?, options.seed)
        }
        "refresh-file" => {
            let options = Options::parse(rest)?;
            let [path] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            refresh_file(path.as_ref(), options.seed)
        }
        "make-files" => {
            let options = Options::parse(rest)?;
            let [dir, count, size] = options.positional.as_slice() else {
                bail!("{USAGE}")
            };
            let count = parse_u64("COUNT", count)? as usize;
            make_files(dir.as_ref(), count, parse_u64("SIZE_BYTES", size)?, options.seed)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn parse_u64(what: &str, text: &str) -> anyhow::Result<u64> {
    text.parse()
        .with_context(|| format!("{what} must be a whole number, not {text:?}"))
}

/// Positional arguments and `--name value` options of the measuring commands.
struct Options {
    positional: Vec<String>,
    part_bytes: u64,
    concurrency: usize,
    block_bytes: u64,
    seconds: f64,
    seed: u64,
    /// `upload-many`: every how many objects one gets POSIX headers (0: none).
    posix_every: u64,
    /// `list`: keys per ListObjectsV2 page.
    page_keys: i32,
    /// `download`: keep each part's bytes in a buffer, not only count them.
    store: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Options {
            positional: Vec::new(),
            part_bytes: DEFAULT_PART_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            block_bytes: DEFAULT_BLOCK_BYTES,
            seconds: DEFAULT_SECONDS,
            seed: 0,
            posix_every: 0,
            page_keys: DEFAULT_PAGE_KEYS,
            store: false,
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let mut value = |name: &str| iter.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--part-size" => options.part_bytes = parse_u64("--part-size", value("--part-size")?)?,
                "--concurrency" => {
                    options.concurrency = parse_u64("--concurrency", value("--concurrency")?)? as usize
                }
                "--block-size" => options.block_bytes = parse_u64("--block-size", value("--block-size")?)?,
                "--seconds" => {
                    let text = value("--seconds")?;
                    options.seconds = text
                        .parse()
                        .with_context(|| format!("--seconds must be a number, not {text:?}"))?;
                }
                "--seed" => options.seed = parse_u64("--seed", value("--seed")?)?,
                "--posix-every" => options.posix_every = parse_u64("--posix-every", value("--posix-every")?)?,
                "--page-size" => {
                    let keys = parse_u64("--page-size", value("--page-size")?)?;
                    // S3 returns at most 1000 keys a page whatever is asked.
                    ensure!((1..=1000).contains(&keys), "--page-size must be 1 to 1000");
                    options.page_keys = keys as i32;
                }
                "--store" => options.store = true,
                _ if arg.starts_with("--") => bail!("unknown option {arg}\n{USAGE}"),
                _ => options.positional.push(arg.clone()),
            }
        }
        ensure!(options.part_bytes > 0, "--part-size must be positive");
        ensure!(options.concurrency > 0, "--concurrency must be positive");
        ensure!(options.block_bytes > 0, "--block-size must be positive");
        ensure!(options.seconds > 0.0, "--seconds must be positive");
        Ok(options)
    }
}

/// An SDK client configured as s3mount's own (`src/object/s3.rs`): path-style addressing for
/// loopback servers, checksums only where the API requires them.
async fn client() -> Client {
    let sdk_config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let config = aws_sdk_s3::config::Builder::from(&sdk_config)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// Size of `key`, or None when there is no such object.
async fn object_size(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Option<u64>> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "HEAD s3://{bucket}/{key}: {}",
            DisplayErrorContext(&e)
        )),
    }
}

/// One big object of `size` pseudo-random bytes, by multipart upload.
async fn upload(client: &Client, bucket: &str, key: &str, size: u64) -> anyhow::Result<()> {
    if object_size(client, bucket, key).await? == Some(size) {
        println!("exists: s3://{bucket}/{key} ({size} bytes)");
        return Ok(());
    }
    let started = Instant::now();
    if size <= UPLOAD_PART_BYTES {
        let body = pseudo_random(seed_of(key), 0, size as usize);
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PUT s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))?;
    } else {
        let seed = seed_of(key);
        let generate: PartSource = Arc::new(move |start, len| Ok(pseudo_random(seed, start, len)));
        multipart_upload(
            client,
            bucket,
            key,
            size,
            UPLOAD_PART_BYTES,
            UPLOAD_CONCURRENCY,
            generate,
        )
        .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "uploaded: s3://{bucket}/{key} ({size} bytes in {seconds:.1}s, {:.0} MiB/s)",
        size as f64 / MIB / seconds
    );
    Ok(())
}

/// Where the bytes of a part come from, given its offset and length: generated or read from a
/// local file. Called on a blocking thread.
type PartSource = Arc<dyn Fn(u64, usize) -> std::io::Result<Vec<u8>> + Send + Sync>;

/// A multipart upload of `size` bytes in parts of `part_bytes`, `concurrency` of them in flight.
async fn multipart_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    size: u64,
    part_bytes: u64,
    concurrency: usize,
    source: PartSource,
) -> anyhow::Result<()> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("CreateMultipartUpload {key}: {}", DisplayErrorContext(&e)))?;
    let upload_id: Arc<str> = created.upload_id().context("no upload id in the answer")?.into();
    let shape = PartShape {
        size,
        part_bytes,
        concurrency,
    };
    match upload_parts(client, bucket, key, shape, &upload_id, source).await {
        Ok(parts) => {
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&*upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("CompleteMultipartUpload {key}: {}", DisplayErrorContext(&e)))?;
            Ok(())
        }
        Err(error) => {
            // Best effort: leave no half-uploaded parts behind on the server.
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&*upload_id)
                .send()
                .await;
            Err(error)
        }
    }
}

/// The parts of a multipart upload: the object's size, their size, how many at once.
#[derive(Clone, Copy)]
struct PartShape {
    size: u64,
    part_bytes: u64,
    concurrency: usize,
}

/// Uploads every part, always `concurrency` of them in flight (a part's bytes are fetched from
/// `source` when its turn comes, so at most `concurrency` parts are in memory), and returns them
/// in part-number order.
async fn upload_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    shape: PartShape,
    upload_id: &Arc<str>,
    source: PartSource,
) -> anyhow::Result<Vec<CompletedPart>> {
    let PartShape {
        size,
        part_bytes,
        concurrency,
    } = shape;
    let part_count = size.div_ceil(part_bytes);
    let mut in_flight = JoinSet::new();
    let mut parts = Vec::with_capacity(part_count as usize);
    let mut next = 0u64;
    while next < part_count || !in_flight.is_empty() {
        while next < part_count && in_flight.len() < concurrency {
            let start = next * part_bytes;
            let len = part_bytes.min(size - start) as usize;
            let part_number = (next + 1) as i32;
            let request = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&**upload_id)
                .part_number(part_number);
            let source = Arc::clone(&source);
            in_flight.spawn(async move {
                let body = tokio::task::spawn_blocking(move || source(start, len))
                    .await?
                    .with_context(|| format!("reading part {part_number}"))?;
                let output =
                    request.body(ByteStream::from(body)).send().await.map_err(|e| {
                        anyhow::anyhow!("UploadPart {part_number}: {}", DisplayErrorContext(&e))
                    })?;
                let etag = output.e_tag().context("no ETag for an uploaded part")?.to_owned();
                anyhow::Ok(
                    CompletedPart::builder()
                        .part_number(part_number)
                        .e_tag(etag)
                        .build(),
                )
            });
            next += 1;
        }
        if let Some(done) = in_flight.join_next().await {
            parts.push(done??);
        }
    }
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}

/// What `upload-many` puts: how many objects, their size, every how many of them has POSIX headers.
#[derive(Clone, Copy)]
struct ManyShape {
    count: usize,
    size: u64,
    posix_every: u64,
}

/// `count` objects `PREFIX/f00000`, `PREFIX/f00001`, ... of `size` bytes each; with
/// `posix_every` N > 0, objects 0, N, 2N, ... carry `POSIX_HEADERS`. What is there with the right
/// size is kept (its headers are not checked).
async fn upload_many(client: &Client, bucket: &str, prefix: &str, shape: ManyShape) -> anyhow::Result<()> {
    let ManyShape {
        count,
        size,
        posix_every,
    } = shape;
    let prefix = prefix.trim_end_matches('/');
    let keys = (0..count).map(|i| {
        let posix = posix_every > 0 && (i as u64).is_multiple_of(posix_every);
        (format!("{prefix}/f{i:05}"), posix)
    });
    let existing = list_sizes(client, bucket, &format!("{prefix}/")).await?;
    let missing: Vec<(String, bool)> = keys.filter(|(key, _)| existing.get(key) != Some(&size)).collect();
    if missing.is_empty() {
        println!("exists: {count} objects of {size} bytes under s3://{bucket}/{prefix}/");
        return Ok(());
    }
    let started = Instant::now();
    let uploaded = missing.len();
    let mut in_flight = JoinSet::new();
    let mut todo = missing.into_iter();
    loop {
        while in_flight.len() < SMALL_PUT_CONCURRENCY {
            let Some((key, posix)) = todo.next() else { break };
            let mut request = client.put_object().bucket(bucket).key(&key);
            if posix {
                for (name, value) in POSIX_HEADERS {
                    request = request.metadata(name, value);
                }
            }
            in_flight.spawn(async move {
                let body = pseudo_random(seed_of(&key), 0, size as usize);
                request
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("PUT {key}: {}", DisplayErrorContext(&e)))?;
                anyhow::Ok(())
            });
        }
        match in_flight.join_next().await {
            Some(done) => done??,
            None => break,
        }
    }
    println!(
        "uploaded: {uploaded} objects of {size} bytes under s3://{bucket}/{prefix}/ in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Lists `prefix` (a `/` added) with delimiter `/`, `page_keys` keys a page, one page after the
/// other as a directory listing must (each asks with the previous one's continuation token), URL
/// encoding asked as s3mount asks it: the baseline of a mount listing that directory.
async fn list(client: &Client, bucket: &str, prefix: &str, page_keys: i32) -> anyhow::Result<()> {
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let started = Instant::now();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .delimiter("/")
        .max_keys(page_keys)
        .encoding_type(EncodingType::Url)
        .into_paginator()
        .send();
    let (mut count, mut objects, mut prefixes) = (0u64, 0u64, 0u64);
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow::anyhow!("listing {prefix}: {}", DisplayErrorContext(&e)))?;
        count += 1;
        objects += page.contents().len() as u64;
        prefixes += page.common_prefixes().len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "pages={count} objects={objects} prefixes={prefixes} seconds={seconds:.3} keys_per_s={:.0}",
        (objects + prefixes) as f64 / seconds
    );
    Ok(())
}

/// Lists the directory `prefix` and every directory under it as [`list`] lists one, one after
/// the other, depth first: the baseline of `find` over that tree, which lists each directory in
/// turn and asks nothing per file.
async fn list_tree(client: &Client, bucket: &str, prefix: &str, page_keys: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut to_list = vec![format!("{}/", prefix.trim_end_matches('/'))];
    let (mut dirs, mut pages, mut objects) = (0u64, 0u64, 0u64);
    while let Some(dir) = to_list.pop() {
        dirs += 1;
        let mut listing = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&dir)
            .delimiter("/")
            .max_keys(page_keys)
            .encoding_type(EncodingType::Url)
            .into_paginator()
            .send();
        let mut subdirs = Vec::new();
        while let Some(page) = listing.next().await {
            let page = page.map_err(|e| anyhow::anyhow!("listing {dir}: {}", DisplayErrorContext(&e)))?;
            pages += 1;
            objects += page.contents().len() as u64;
            // URL-encoded as asked (`/` is `%2F`).
            subdirs.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(url_decoded)),
            );
        }
        // Popped last first: reversed, the walk goes in name order as `find` does.
        to_list.extend(subdirs.into_iter().rev());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "dirs={dirs} pages={pages} objects={objects} seconds={seconds:.3} keys_per_s={:.0}",
        objects as f64 / seconds
    );
    Ok(())
}

/// `text` with its `%XX` escapes decoded (what `encoding-type=url` did to a key).
fn url_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Key -> size of every object under `prefix`.
async fn list_sizes(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut sizes = std::collections::HashMap::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow::anyhow!("listing {prefix}: {}", DisplayErrorContext(&e)))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                sizes.insert(key.to_owned(), object.size().unwrap_or(0).max(0) as u64);
            }
        }
    }
    Ok(sizes)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Reads the whole object with ranged GETs of `part_bytes`, always `concurrency` of them in
/// flight (a sliding window, not waves), counting and discarding the bytes as they stream in.
async fn download(
    client: &Client,
    bucket: &str,
    key: &str,
    part_bytes: u64,
    concurrency: usize,
    store: bool,
) -> anyhow::Result<()> {
    let size = object_size(client, bucket, key)
        .await?
        .with_context(|| format!("no object s3://{bucket}/{key}"))?;
    let started = Instant::now();
    let total = read_whole(client, bucket, key, size, part_bytes, concurrency, store).await?;
    report_read(total, started);
    Ok(())
}

/// `keys` read whole at once, each by its own reader as [`download`] reads one (its own window
/// of `concurrency` ranged GETs): the baseline of that many processes each reading a file
/// through a mount. A key given twice is read twice, as two readers of one file would.
async fn download_parallel(
    client: &Client,
    bucket: &str,
    keys: &[String],
    part_bytes: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut sizes = Vec::with_capacity(keys.len());
    for key in keys {
        let size = object_size(client, bucket, key)
            .await?
            .with_context(|| format!("no object s3://{bucket}/{key}"))?;
        sizes.push(size);
    }
    let started = Instant::now();
    let mut readers = JoinSet::new();
    for (key, size) in keys.iter().zip(sizes) {
        let (client, bucket, key) = (client.clone(), bucket.to_owned(), key.clone());
        readers.spawn(async move {
            read_whole(&client, &bucket, &key, size, part_bytes, concurrency, false).await
        });
    }
    let mut total = 0u64;
    while let Some(done) = readers.join_next().await {
        total += done??;
    }
    report_read(total, started);
    Ok(())
}

/// The bytes of `key` (of `size` bytes), with ranged GETs of `part_bytes`, `concurrency` of
/// them in flight; returns how many came, checked against `size`. With `store`, each part's
/// bytes are copied into a buffer of its own as they come.
async fn read_whole(
    client: &Client,
    bucket: &str,
    key: &str,
    size: u64,
    part_bytes: u64,
    concurrency: usize,
    store: bool,
) -> anyhow::Result<u64> {
    let mut in_flight = JoinSet::new();
    // With `store`, the parts' buffers are reused as a pool, as a reader's would be: fresh
    // memory for every part would cost page faults that no careful reader pays.
    let buffers: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut next_start = 0u64;
    let mut total = 0u64;
    while next_start < size || !in_flight.is_empty() {
        while next_start < size && in_flight.len() < concurrency {
            let end = (next_start + part_bytes).min(size);
            let request = client.get_object().bucket(bucket).key(key).range(format!(
                "bytes={}-{}",
                next_start,
                end - 1
            ));
            let buffers = buffers.clone();
            in_flight.spawn(async move {
                let output = request.send().await.map_err(|e| {
                    anyhow::anyhow!("GET bytes {next_start}..{end}: {}", DisplayErrorContext(&e))
                })?;
                let mut body = output.body;
                let mut received = 0u64;
                let mut stored = store.then(|| {
                    let mut buffer = buffers.lock().unwrap().pop().unwrap_or_default();
                    buffer.clear();
                    buffer.reserve((end - next_start) as usize);
                    buffer
                });
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.context("reading a GET body")?;
                    received += chunk.len() as u64;
                    if let Some(stored) = &mut stored {
                        stored.extend_from_slice(&chunk);
                    }
                }
                if let Some(stored) = std::hint::black_box(stored) {
                    buffers.lock().unwrap().push(stored);
                }
                ensure!(
                    received == end - next_start,
                    "GET bytes {next_start}..{end} returned {received} bytes"
                );
                anyhow::Ok(received)
            });
            next_start = end;
        }
        if let Some(done) = in_flight.join_next().await {
            total += done??;
        }
    }
    ensure!(
        total == size,
        "read {total} bytes of the {size}-byte s3://{bucket}/{key}"
    );
    Ok(total)
}

/// The line `scripts/bench` reads: bytes, seconds since `started`, the rate, and this process's
/// CPU time (user and system).
fn report_read(total: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bytes={total} seconds={seconds:.3} mib_per_s={:.1} cpu_s={:.3}",
        total as f64 / MIB / seconds,
        cpu_seconds()
    );
}

/// One reader doing ranged GETs of `block_bytes` at random block-aligned offsets, one after the
/// other, for `seconds`: what `fio --rw=randread --ioengine=psync --numjobs=1` asks of a mount.
async fn random_read(
    client: &Client,
    bucket: &str,
    key: &str,
    block_bytes: u64,
    seconds: f64,
) -> anyhow::Result<()> {
    let size = object_size(client, bucket, key)
        .await?
        .with_context(|| format!("no object s3://{bucket}/{key}"))?;
    let blocks = size / block_bytes;
    ensure!(blocks > 0, "s3://{bucket}/{key} is smaller than one block");
    // xorshift64 seeded from the clock: a different sequence each run, as fio's default.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let started = Instant::now();
    let (mut reads, mut total) = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let start = (state % blocks) * block_bytes;
        let output = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", start, start + block_bytes - 1))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET bytes {start}: {}", DisplayErrorContext(&e)))?;
        let mut body = output.body;
        while let Some(chunk) = body.next().await {
            total += chunk.context("reading a GET body")?.len() as u64;
        }
        reads += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "reads={reads} bytes={total} seconds={seconds:.3} iops={:.1} mib_per_s={:.2}",
        reads as f64 / seconds,
        total as f64 / MIB / seconds
    );
    Ok(())
}

/// Lists `prefix` and GETs every object under it, `concurrency` at a time: the baseline of
/// `find | xargs -P N cat` on a mount (which lists too). The listing is inside the timing.
async fn download_many(
    client: &Client,
    bucket: &str,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let mut keys: Vec<String> = list_sizes(client, bucket, &prefix).await?.into_keys().collect();
    keys.sort();
    ensure!(!keys.is_empty(), "no objects under s3://{bucket}/{prefix}");
    let objects = keys.len();
    let mut in_flight = JoinSet::new();
    let mut todo = keys.into_iter();
    let mut total = 0u64;
    loop {
        while in_flight.len() < concurrency {
            let Some(key) = todo.next() else { break };
            let request = client.get_object().bucket(bucket).key(&key);
            in_flight.spawn(async move {
                let output = request
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("GET {key}: {}", DisplayErrorContext(&e)))?;
                let mut body = output.body;
                let mut received = 0u64;
                while let Some(chunk) = body.next().await {
                    received += chunk.context("reading a GET body")?.len() as u64;
                }
                anyhow::Ok(received)
            });
        }
        match in_flight.join_next().await {
            Some(done) => total += done??,
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "objects={objects} bytes={total} seconds={seconds:.3} objects_per_s={:.1} mib_per_s={:.1}",
        objects as f64 / seconds,
        total as f64 / MIB / seconds
    );
    Ok(())
}

/// Uploads the local file at `path` as `key` the way a mount uploads a closed file: one PutObject
/// when it fits in one part, else a multipart upload in parts of `part_bytes`, `concurrency` in
/// flight, each part read from the file when its turn comes. Opening the file and reading it are
/// inside the timing, as the mount's copy from the local file is.
async fn put_file(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    part_bytes: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let file = Arc::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let size = file.metadata()?.len();
    let read: PartSource = Arc::new(move |start, len| {
        let mut buffer = vec![0; len];
        file.read_exact_at(&mut buffer, start)?;
        Ok(buffer)
    });
    if size <= part_bytes {
        let body = tokio::task::spawn_blocking(move || read(0, size as usize)).await??;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PUT s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))?;
    } else {
        multipart_upload(client, bucket, key, size, part_bytes, concurrency, read).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bytes={size} seconds={seconds:.3} mib_per_s={:.1} cpu_s={:.3}",
        size as f64 / MIB / seconds,
        cpu_seconds()
    );
    Ok(())
}

/// PUTs every regular file of `dir` (in name order) as `PREFIX/NAME`, one after the other: what
/// `cp -r DIR MOUNT/PREFIX` asks of a mount that uploads each file when it is closed. Listing the
/// directory and reading the files are inside the timing, as they are for `cp`.
async fn put_many(client: &Client, bucket: &str, prefix: &str, dir: &Path) -> anyhow::Result<()> {
    let prefix = prefix.trim_end_matches('/');
    let started = Instant::now();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(
                entry
                    .file_name()
                    .into_string()
                    .map_err(|name| anyhow::anyhow!("{name:?} in {} is not UTF-8", dir.display()))?,
            );
        }
    }
    names.sort();
    ensure!(!names.is_empty(), "no files in {}", dir.display());
    let mut total = 0u64;
    for name in &names {
        let body = std::fs::read(dir.join(name))?;
        total += body.len() as u64;
        let key = format!("{prefix}/{name}");
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PUT {key}: {}", DisplayErrorContext(&e)))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "objects={} bytes={total} seconds={seconds:.3} objects_per_s={:.1}",
        names.len(),
        names.len() as f64 / seconds
    );
    Ok(())
}

/// Deletes every object under `prefix` and aborts every multipart upload under it (one that a
/// failed run left behind), so each run writes into an empty prefix.
async fn delete_prefix(client: &Client, bucket: &str, prefix: &str) -> anyhow::Result<()> {
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let mut keys: Vec<String> = list_sizes(client, bucket, &prefix).await?.into_keys().collect();
    keys.sort();
    let deleted = keys.len();
    for batch in keys.chunks(1000) {
        let objects = batch
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()?;
        let output = client
            .delete_objects()
            .bucket(bucket)
            .delete(Delete::builder().set_objects(Some(objects)).quiet(true).build()?)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DeleteObjects under {prefix}: {}", DisplayErrorContext(&e)))?;
        if let Some(error) = output.errors().first() {
            bail!(
                "DeleteObjects under {prefix}: {} of {} failed, e.g. {:?}: {:?}",
                output.errors().len(),
                batch.len(),
                error.key(),
                error.message()
            );
        }
    }
    let mut aborted = 0;
    let uploads = client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(&prefix)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("ListMultipartUploads {prefix}: {}", DisplayErrorContext(&e)))?;
    for upload in uploads.uploads() {
        if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
            client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("AbortMultipartUpload {key}: {}", DisplayErrorContext(&e)))?;
            aborted += 1;
        }
    }
    println!("deleted={deleted} aborted_uploads={aborted}");
    Ok(())
}

/// Lists `prefix` (a key prefix as is, no `/` added) until it holds `count` objects adding up to
/// `bytes` (keys ending in `/`, directory markers, left out), or fails after `timeout`. Prints how
/// many listings that took: 1 means everything was there when the writer's close returned.
async fn wait_for(
    client: &Client,
    bucket: &str,
    prefix: &str,
    (count, bytes): (usize, u64),
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut checks = 0;
    loop {
        let sizes = list_sizes(client, bucket, prefix).await?;
        checks += 1;
        let files = sizes.iter().filter(|(key, _)| !key.ends_with('/'));
        let (found, total) = files.fold((0, 0), |(n, sum), (_, size)| (n + 1, sum + size));
        if (found, total) == (count, bytes) {
            println!(
                "checks={checks} waited_s={:.3} objects={found} bytes={total}",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        ensure!(
            started.elapsed() < timeout,
            "after {:.0}s, s3://{bucket}/{prefix}* holds {found} objects of {total} bytes in all, \
             not {count} of {bytes}",
            timeout.as_secs_f64()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes `size` incompressible bytes of stream `seed` to `path` (replacing it), generated on
/// every core. A GiB takes ~3 s on the 2-core bench machine, nearly all of it the kernel filling
/// the page cache (/dev/urandom takes ~5 s).
fn make_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 8 * 1024 * 1024;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunks = size.div_ceil(CHUNK);
    // Through FNV, so that seeds differing in one bit (which pseudo_random's `| 1` can erase) give
    // unrelated streams.
    let stream = seed_of(&format!("make-file {seed}"));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let file = &file;
                scope.spawn(move || -> std::io::Result<()> {
                    for chunk in (thread..chunks).step_by(threads as usize) {
                        let start = chunk * CHUNK;
                        let len = CHUNK.min(size - start) as usize;
                        file.write_all_at(&pseudo_random(stream, start, len), start)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("a generating thread panicked"))
    })
    .with_context(|| format!("writing {}", path.display()))?;
    println!("made: {} ({size} bytes, seed {seed})", path.display());
    Ok(())
}

/// Overwrites the first 8 bytes of every 64 KiB of the file at `path` with words of stream `seed`,
/// so that none of its blocks is one Garage already holds (its blocks are 1 MiB by default; any
/// size of 64 KiB or more, at any 64 KiB boundary, has a new word), in milliseconds where
/// `make-file` takes seconds per GiB. The bytes stay incompressible.
fn refresh_file(path: &Path, seed: u64) -> anyhow::Result<()> {
    const STEP: u64 = 64 * 1024;
    let file = File::options()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let stream = seed_of(&format!("refresh-file {seed}"));
    let mut words = 0;
    for offset in (0..size.saturating_sub(7)).step_by(STEP as usize) {
        file.write_all_at(&pseudo_random(stream, offset, 8), offset)
            .with_context(|| format!("writing {}", path.display()))?;
        words += 1;
    }
    println!("refreshed: {} ({words} words, seed {seed})", path.display());
    Ok(())
}

/// Writes `count` files `DIR/f00000`, `DIR/f00001`, ... of `size` incompressible bytes each,
/// every file its own stream derived from `seed`.
fn make_files(dir: &Path, count: usize, size: u64, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..count {
        let name = format!("f{i:05}");
        let bytes = pseudo_random(seed_of(&format!("make-files {seed} {name}")), 0, size as usize);
        std::fs::write(dir.join(&name), bytes)?;
    }
    println!(
        "made: {count} files of {size} bytes in {} (seed {seed})",
        dir.display()
    );
    Ok(())
}

/// User plus system CPU time of this process so far, to tell a CPU-bound client from a slow server.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Seed of an object's bytes, from its key (FNV-1a), so each object has its own contents.
fn seed_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Bytes `offset..offset + len` of the deterministic incompressible stream of `seed`: each 8-byte
/// word is xorshift64* of a state derived from (seed, word index), so any part of an object can be
/// generated on its own, in parallel, and every run writes the same bytes.
fn pseudo_random(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    debug_assert_eq!(offset % 8, 0, "parts start on a word boundary");
    let first_word = offset / 8;
    let mut out = Vec::with_capacity(len + 8);
    let mut word = first_word;
    while out.len() < len {
        // The state must be non-zero for xorshift; mixing the index with an odd constant and
        // or-ing in 1 keeps it so.
        let mut x = (seed ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        word += 1;
    }
    out.truncate(len);
    out
}
