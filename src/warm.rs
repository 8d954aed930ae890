//! `s3mount warm`: fill the block cache ahead of a training run, so its first epoch reads
//! from local disk.
//!
//! Two ways in. Paths on a live mount go to that mount's daemon over its control socket
//! (`control.rs`): the daemon holds the cache directory's lock, so only it may write there,
//! and it fetches straight into the cache without the FUSE copies and page-cache churn of
//! reading the files through the mount. `s3://BUCKET/PREFIX` with `--cache DIR` fills a cache
//! directory no mount holds, for a mount that comes later. Either way the objects are listed
//! first, their total checked against the cache's bound (warming more than fits would evict
//! the first files to make room for the last), then fetched, several files at once, each block
//! written to disk before it counts.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::cache::{BlockReader, Filled, ObjectVersion};
use crate::control::{self, Answer, Request};
use crate::fs::S3Fs;
use crate::object::{ListRequest, ObjectClient, ObjectError};

/// How often progress is reported to the client, and printed when not on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a client asks a daemon to warm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRequest {
    /// Paths relative to the mount point (`""`: all of it).
    pub paths: Vec<String>,
    pub concurrency: u16,
    /// Warm even what does not fit the cache.
    pub force: bool,
}

/// How far a warm-up is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WarmProgress {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    /// Bytes fetched from S3 into the cache.
    pub bytes_fetched: u64,
    /// Bytes that were in the cache already.
    pub bytes_cached: u64,
    pub elapsed_ms: u64,
    pub failed_files: u64,
    pub last_error: Option<String>,
}

impl WarmProgress {
    pub fn bytes_done(&self) -> u64 {
        self.bytes_fetched + self.bytes_cached
    }
}

/// Counters a running warm-up updates, shared with whoever reports its progress.
#[derive(Default)]
struct Tally {
    files_done: AtomicU64,
    bytes_fetched: AtomicU64,
    bytes_cached: AtomicU64,
    failed_files: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// A planned warm-up: the objects, their total, and the tally.
pub struct Warm {
    reader: Arc<BlockReader>,
    objects: Vec<ObjectVersion>,
    bytes_total: u64,
    tally: Tally,
    started: Instant,
}

impl Warm {
    /// Lists `targets` (object keys, or prefixes ending in `/`; a key that is no object is
    /// taken as a directory) and checks the total fits the cache `reader` fills.
    pub async fn plan(
        client: &dyn ObjectClient,
        reader: Arc<BlockReader>,
        targets: &[String],
        force: bool,
    ) -> anyhow::Result<Self> {
        let Some(disk) = reader.disk() else {
            anyhow::bail!("this mount has no block cache (--no-cache): there is nothing to warm");
        };
        let max_bytes = disk.max_bytes();
        let mut objects = Vec::new();
        for target in targets {
            let found = objects_at(client, target).await?;
            if found.is_empty() {
                anyhow::bail!("nothing to warm at {target:?}: no such file or directory in the bucket");
            }
            objects.extend(found);
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup_by(|a, b| a.key == b.key);
        let bytes_total = objects.iter().map(|o| o.size).sum();
        if bytes_total > max_bytes && !force {
            anyhow::bail!(
                "{} to warm is more than the cache holds ({}, --cache-size): the last files warmed would push out the first; warm less, raise --cache-size, or pass --force",
                show_bytes(bytes_total),
                show_bytes(max_bytes)
            );
        }
        Ok(Self {
            reader,
            objects,
            bytes_total,
            tally: Tally::default(),
            started: Instant::now(),
        })
    }

    pub fn progress(&self) -> WarmProgress {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WarmProgress {
            files_total: self.objects.len() as u64,
            bytes_total: self.bytes_total,
            files_done: get(&self.tally.files_done),
            bytes_fetched: get(&self.tally.bytes_fetched),
            bytes_cached: get(&self.tally.bytes_cached),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            failed_files: get(&self.tally.failed_files),
            last_error: self
                .tally
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Fetches every object, `concurrency` at a time. A file that fails is counted and the
    /// others go on; the failures are in the progress.
    pub async fn run(&self, concurrency: usize) {
        futures_util::stream::iter(&self.objects)
            .for_each_concurrent(concurrency.max(1), |object| async move {
                let count = |filled: Filled| {
                    self.tally
                        .bytes_fetched
                        .fetch_add(filled.fetched_bytes, Ordering::Relaxed);
                    self.tally
                        .bytes_cached
                        .fetch_add(filled.cached_bytes, Ordering::Relaxed);
                };
                match self.reader.fill(object, &count).await {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(key = %object.key, %error, "cannot warm");
                        self.tally.failed_files.fetch_add(1, Ordering::Relaxed);
                        *crate::lock(&self.tally.last_error) = Some(format!("{}: {error}", object.key));
                    }
                }
                self.tally.files_done.fetch_add(1, Ordering::Relaxed);
            })
            .await;
    }
}

/// The objects at `target`: the object itself, or everything under it as a prefix.
async fn objects_at(client: &dyn ObjectClient, target: &str) -> Result<Vec<ObjectVersion>, ObjectError> {
    if !target.is_empty() && !target.ends_with('/') {
        match client.head(target).await {
            Ok(head) => {
                return Ok(vec![ObjectVersion {
                    key: target.to_owned(),
                    etag: head.etag,
                    size: head.size,
                    version_id: head.version_id,
                }]);
            }
            Err(ObjectError::NoSuchKey(_)) => return list_all(client, &format!("{target}/")).await,
            Err(error) => return Err(error),
        }
    }
    list_all(client, target).await
}

/// Every object under `prefix`, at any depth; directory markers and empty objects left out.
async fn list_all(client: &dyn ObjectClient, prefix: &str) -> Result<Vec<ObjectVersion>, ObjectError> {
    let mut objects = Vec::new();
    let mut request = ListRequest {
        prefix: prefix.to_owned(),
        delimiter: None,
        continuation_token: None,
        max_keys: None,
    };
    loop {
        let page = client.list(&request).await?;
        objects.extend(
            page.objects
                .into_iter()
                .filter(|o| o.size > 0 && !o.key.ends_with('/'))
                .map(|o| ObjectVersion {
                    key: o.key,
                    etag: o.etag,
                    size: o.size,
                    version_id: None,
                }),
        );
        match page.next_continuation_token {
            Some(token) => request.continuation_token = Some(token),
            None => return Ok(objects),
        }
    }
}

/// The daemon's side of a warm request: plans it over the mount's client and cache, streams
/// progress, and stops as soon as the client is gone (Ctrl-C).
pub async fn serve_warm(
    fs: &Arc<S3Fs>,
    request: WarmRequest,
    write: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let (client, reader) = fs.warm_source();
    let targets: Vec<String> = request
        .paths
        .iter()
        .map(|p| fs.config().root.file_key(p))
        .collect();
    let warm = match Warm::plan(&*client, reader, &targets, request.force).await {
        Ok(warm) => warm,
        Err(error) => return control::send(write, &Answer::Error(format!("{error:#}"))).await,
    };
    tracing::info!(
        files = warm.objects.len(),
        bytes = warm.bytes_total,
        "warming the block cache"
    );
    let run = warm.run(usize::from(request.concurrency));
    tokio::pin!(run);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            () = &mut run => break,
            _ = ticks.tick() => {
                // A client that went away stops the warm-up: dropping `run` cancels its fetches.
                control::send(write, &Answer::Progress(warm.progress())).await?;
            }
        }
    }
    let done = warm.progress();
    tracing::info!(
        fetched = done.bytes_fetched,
        cached = done.bytes_cached,
        failed = done.failed_files,
        "warm-up done"
    );
    control::send(write, &Answer::Done(done)).await
}

/// `s3mount warm PATH... [--concurrency N] [--force]`, or `s3://BUCKET/PREFIX --cache DIR`.
pub fn warm_command(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use clap::Parser;
    let args = crate::cli::WarmArgs::parse_from(args);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (remote, local): (Vec<&String>, Vec<&String>) =
        args.paths.iter().partition(|p| p.starts_with("s3://"));
    if !remote.is_empty() && !local.is_empty() {
        anyhow::bail!("warm either paths on a mount or s3:// prefixes, not both at once");
    }
    let mut display = Display::new();
    let result = runtime.block_on(async {
        if remote.is_empty() {
            warm_through_daemons(&args, &local, &mut display).await
        } else {
            warm_offline(&args, &remote, &mut display).await
        }
    });
    display.finish();
    result
}

/// Sends each mount's paths to its daemon and shows the progress it streams back.
async fn warm_through_daemons(
    args: &crate::cli::WarmArgs,
    paths: &[&String],
    display: &mut Display,
) -> anyhow::Result<()> {
    let mut by_mount: Vec<(control::FoundMount, Vec<String>)> = Vec::new();
    for path in paths {
        let found = control::find_mount(std::path::Path::new(path.as_str()))?;
        match by_mount
            .iter_mut()
            .find(|(m, _)| m.mount_point == found.mount_point)
        {
            Some((_, list)) => list.push(found.relative.clone()),
            None => {
                let relative = found.relative.clone();
                by_mount.push((found, vec![relative]));
            }
        }
    }
    for (found, relative) in by_mount {
        let request = Request::Warm(WarmRequest {
            paths: relative,
            concurrency: args.concurrency,
            force: args.force,
        });
        let mut reader = control::connect(&found, &request).await?;
        loop {
            let answer = tokio::select! {
                answer = control::next_answer(&mut reader) => answer?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; what was warmed so far stays cached"),
            };
            match answer {
                Some(Answer::Progress(progress)) => display.update(&progress),
                Some(Answer::Done(progress)) => {
                    display.done(&found.mount_point, &progress)?;
                    break;
                }
                Some(Answer::Error(error)) => anyhow::bail!("{}: {error}", found.mount_point.display()),
                Some(Answer::Status(_)) | None => {
                    anyhow::bail!("the daemon of {} ended the warm-up", found.mount_point.display())
                }
            }
        }
    }
    Ok(())
}

/// Fills `--cache DIR` from S3 directly, for a mount to come.
async fn warm_offline(
    args: &crate::cli::WarmArgs,
    urls: &[&String],
    display: &mut Display,
) -> anyhow::Result<()> {
    let dir = args
        .cache
        .as_ref()
        .context("s3:// paths need --cache DIR: the cache directory the later mount will use")?;
    let mut by_bucket: Vec<(String, Vec<String>)> = Vec::new();
    for url in urls {
        let rest = url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        match by_bucket.iter_mut().find(|(b, _)| b == bucket) {
            Some((_, list)) => list.push(prefix.to_owned()),
            None => by_bucket.push((bucket.to_owned(), vec![prefix.to_owned()])),
        }
    }
    if by_bucket.len() > 1 {
        anyhow::bail!("one cache directory serves one bucket: warm one bucket at a time");
    }
    let (bucket, prefixes) = by_bucket.remove(0);
    let settings = args.s3.settings(&bucket, Duration::from_secs(10));
    let client = crate::object::s3::S3Client::new(settings).await?;
    let client: Arc<dyn ObjectClient> = Arc::new(crate::object::retry::RetryClient::new(
        Arc::new(client) as Arc<dyn ObjectClient>,
        crate::object::retry::RetryPolicy::default(),
    ));
    let dir = std::path::absolute(dir)?;
    let limits = crate::run::cache_limits(&crate::run::CacheSettings {
        dir: dir.clone(),
        max_bytes: args.cache_size,
        min_free_bytes: args.cache_min_free,
    });
    let disk = crate::cache::disk::DiskCache::open(&dir, limits)?;
    let reader = Arc::new(BlockReader::new(client.clone(), Some(Arc::new(disk))));
    let warm = Warm::plan(&*client, reader, &prefixes, args.force).await?;
    let run = warm.run(usize::from(args.concurrency));
    tokio::pin!(run);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            () = &mut run => break,
            _ = ticks.tick() => display.update(&warm.progress()),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; what was warmed so far stays cached"),
        }
    }
    display.done(&PathBuf::from(format!("s3://{bucket}")), &warm.progress())
}

/// Progress on a terminal (a bar), or plain lines every few seconds otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<Instant>,
}

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self { bar, last_line: None }
    }

    fn update(&mut self, progress: &WarmProgress) {
        if let Some(bar) = &self.bar {
            bar.set_length(progress.bytes_total);
            bar.set_position(progress.bytes_done());
            bar.set_message(format!("{}/{} files", progress.files_done, progress.files_total));
            return;
        }
        if self
            .last_line
            .is_none_or(|at| at.elapsed() >= PLAIN_PROGRESS_EVERY)
        {
            self.last_line = Some(Instant::now());
            eprintln!(
                "warm: {} of {} ({} of {} files)",
                show_bytes(progress.bytes_done()),
                show_bytes(progress.bytes_total),
                progress.files_done,
                progress.files_total
            );
        }
    }

    /// The summary line; an error if any file failed.
    fn done(&mut self, place: &std::path::Path, progress: &WarmProgress) -> anyhow::Result<()> {
        self.finish();
        let seconds = progress.elapsed_ms as f64 / 1000.0;
        let rate = progress.bytes_fetched as f64 / seconds.max(0.001);
        println!(
            "warmed {} files on {}: {} fetched, {} already cached, in {:.1} s ({}/s)",
            progress.files_done - progress.failed_files,
            place.display(),
            show_bytes(progress.bytes_fetched),
            show_bytes(progress.bytes_cached),
            seconds,
            show_bytes(rate as u64)
        );
        if progress.failed_files > 0 {
            anyhow::bail!(
                "{} files could not be warmed; the last: {}",
                progress.failed_files,
                progress.last_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn show_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::{DiskCache, DiskCacheLimits};
    use crate::object::memory::MemoryClient;

    fn cache(dir: &std::path::Path, max_bytes: u64) -> Arc<DiskCache> {
        Arc::new(
            DiskCache::open(
                dir,
                DiskCacheLimits {
                    max_bytes,
                    min_free_bytes: 0,
                },
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn warming_fills_the_cache_once_and_reading_then_costs_no_get() {
        let client = Arc::new(MemoryClient::new("b"));
        client.put_object("d/a", vec![1; 3 << 20]);
        client.put_object("d/sub/b", vec![2; 100]);
        client.put_object("d/", Vec::new());
        client.put_object("other", vec![3; 10]);
        let dir = tempfile::tempdir().unwrap();
        let disk = cache(dir.path(), 1 << 30);
        let reader = Arc::new(BlockReader::new(client.clone(), Some(disk.clone())));
        let warm = Warm::plan(&*client, reader.clone(), &["d".to_owned()], false)
            .await
            .unwrap();
        assert_eq!(warm.objects.len(), 2);
        warm.run(4).await;
        let progress = warm.progress();
        assert_eq!((progress.files_done, progress.failed_files), (2, 0));
        assert_eq!(progress.bytes_fetched, (3 << 20) + 100);
        assert!(disk.size() >= (3 << 20) + 100);
        // A second warm-up fetches nothing.
        let again = Warm::plan(&*client, reader.clone(), &["d/".to_owned()], false)
            .await
            .unwrap();
        again.run(4).await;
        assert_eq!(again.progress().bytes_fetched, 0);
        assert_eq!(again.progress().bytes_cached, (3 << 20) + 100);
        // A reader of the warmed object finds every block on disk.
        let gets = client.counters().get;
        let object = warm.objects.iter().find(|o| o.key == "d/a").unwrap().clone();
        let data = reader.read_blocks(&object, 0..3).await.unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert_eq!(client.counters().get, gets);
    }

    #[tokio::test]
    async fn more_than_the_cache_holds_is_refused_unless_forced() {
        let client = Arc::new(MemoryClient::new("b"));
        client.put_object("big", vec![0; 5 << 20]);
        let dir = tempfile::tempdir().unwrap();
        let reader = Arc::new(BlockReader::new(client.clone(), Some(cache(dir.path(), 4 << 20))));
        let error = Warm::plan(&*client, reader.clone(), &["big".to_owned()], false)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("--cache-size"), "{error}");
        assert!(
            Warm::plan(&*client, reader.clone(), &["big".to_owned()], true)
                .await
                .is_ok()
        );
        let error = Warm::plan(&*client, reader, &["missing".to_owned()], false)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("no such file"), "{error}");
        let uncached = Arc::new(BlockReader::new(client.clone(), None));
        assert!(
            Warm::plan(&*client, uncached, &["big".to_owned()], false)
                .await
                .is_err()
        );
    }
}
