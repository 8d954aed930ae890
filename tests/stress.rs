//! A stress test of one mount under load: several workers at once, on overlapping paths, checked
//! against a model. Seeded (the seed is printed and can be set with `S3MOUNT_STRESS_SEED`) and
//! bounded in operations and time, so a failure can be replayed and a hang is a failure.
//!
//! Every worker owns a few file names, which move between three shared directories. It writes
//! (whole files, small or multipart), appends, renames, unlinks, stats and reads its own files,
//! and checks each answer against its model: what it wrote is what it reads, its files are
//! listed in the directory the model says and nowhere else. It also reads and stats the other
//! workers' files while they change them, where the only acceptable failures are `ENOENT` (just
//! renamed or unlinked) and `ESTALE` (replaced while open). At the end the bucket must hold
//! exactly the union of the models, the daemon must not have panicked, and its peak memory
//! (VmHWM) must stay within what `--max-memory` promises: the read-ahead budget and as much
//! again for upload parts.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Mount, TestPrefix, close, pseudo_random};

const WORKERS: usize = 6;
const NAMES_PER_WORKER: usize = 4;
const OPS_PER_WORKER: usize = 80;
const DIRS: [&str; 3] = ["a", "b", "c"];
/// The whole run must finish within this: a deadlock or a hung request fails the test.
const DEADLINE: Duration = Duration::from_secs(240);
const MAX_MEMORY_MIB: u64 = 128;
const MIB: usize = 1 << 20;

/// xorshift64*: small, seedable, enough for choosing operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one worker's files are: name -> (directory, content).
type Model = BTreeMap<String, (&'static str, Vec<u8>)>;

/// The content of a write: mostly small files, now and then one large enough for a multipart
/// upload, every one different.
fn content(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 9 * MIB + rng.below(3 * MIB),
        1 => 0,
        _ => rng.below(300 << 10),
    };
    pseudo_random(rng.next(), len)
}

struct Worker {
    id: usize,
    rng: Rng,
    model: Model,
    root: std::path::PathBuf,
    log: Vec<String>,
    /// Every earlier content of each name, oldest first.
    versions: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Worker {
    fn path(&self, dir: &str, name: &str) -> std::path::PathBuf {
        self.root.join(dir).join(name)
    }

    fn run(mut self) -> Result<Model, String> {
        for op in 0..OPS_PER_WORKER {
            let step = self.step();
            if let Err(error) = step {
                let history = self.log.join("\n  ");
                return Err(format!(
                    "worker {} op {op}: {error}\n  history:\n  {history}",
                    self.id
                ));
            }
        }
        Ok(self.model)
    }

    /// Keeps the content `name` had before it is replaced, for [`Worker::describe_mismatch`].
    fn remember_version(&mut self, name: &str) {
        if let Some((_, body)) = self.model.get(name) {
            let body = body.clone();
            self.versions.entry(name.to_owned()).or_default().push(body);
        }
    }

    fn own_name(&mut self) -> String {
        format!("w{}-{}", self.id, self.rng.below(NAMES_PER_WORKER))
    }

    fn step(&mut self) -> Result<(), String> {
        let name = self.own_name();
        let current = self.model.get(&name).cloned();
        match (self.rng.below(8), current) {
            (0 | 1, current) => {
                let dir = current.as_ref().map_or(DIRS[self.rng.below(3)], |(dir, _)| *dir);
                let body = content(&mut self.rng);
                self.log
                    .push(format!("write {dir}/{name} ({} bytes)", body.len()));
                let path = self.path(dir, &name);
                let mut file = File::create(&path).map_err(|e| format!("create {path:?}: {e}"))?;
                file.write_all(&body)
                    .map_err(|e| format!("write {path:?}: {e}"))?;
                close(file).map_err(|e| format!("close {path:?}: {e}"))?;
                self.remember_version(&name);
                self.model.insert(name, (dir, body));
            }
            (2, Some((dir, mut body))) => {
                let more = pseudo_random(self.rng.next(), self.rng.below(64 << 10) + 1);
                self.log
                    .push(format!("append {dir}/{name} (+{} bytes)", more.len()));
                let path = self.path(dir, &name);
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("open {path:?} for append: {e}"))?;
                file.write_all(&more)
                    .map_err(|e| format!("append {path:?}: {e}"))?;
                close(file).map_err(|e| format!("close {path:?}: {e}"))?;
                self.remember_version(&name);
                body.extend_from_slice(&more);
                self.model.insert(name, (dir, body));
            }
            (3, Some((dir, body))) => {
                let to = DIRS[self.rng.below(3)];
                self.log.push(format!("rename {dir}/{name} -> {to}/{name}"));
                std::fs::rename(self.path(dir, &name), self.path(to, &name))
                    .map_err(|e| format!("rename {dir}/{name} to {to}: {e}"))?;
                self.model.insert(name, (to, body));
            }
            (4, Some((dir, _))) => {
                self.log.push(format!("unlink {dir}/{name}"));
                std::fs::remove_file(self.path(dir, &name))
                    .map_err(|e| format!("unlink {dir}/{name}: {e}"))?;
                self.model.remove(&name);
            }
            (5, Some((dir, body))) => {
                self.log.push(format!("read and stat {dir}/{name}"));
                let path = self.path(dir, &name);
                let read = std::fs::read(&path).map_err(|e| format!("read {path:?}: {e}"))?;
                if read != body {
                    return Err(format!(
                        "{path:?}: {}",
                        self.describe_mismatch(&name, &read, &body)
                    ));
                }
                let size = std::fs::metadata(&path)
                    .map_err(|e| format!("stat {path:?}: {e}"))?
                    .len();
                if size != body.len() as u64 {
                    return Err(format!("{path:?}: stat says {size} bytes, wrote {}", body.len()));
                }
            }
            (6, _) => self.list_and_check()?,
            _ => self.read_a_neighbour()?,
        }
        Ok(())
    }

    /// What a read got wrong: its length, where the bytes first differ and over what span, and
    /// whether they are an earlier version's (which points at stale pages, not a bad upload).
    fn describe_mismatch(&self, name: &str, read: &[u8], body: &[u8]) -> String {
        let first = read.iter().zip(body).position(|(a, b)| a != b);
        let last = read.iter().zip(body).rposition(|(a, b)| a != b);
        let differing = read.iter().zip(body).filter(|(a, b)| a != b).count();
        let no_versions = Vec::new();
        let earlier = self
            .versions
            .get(name)
            .unwrap_or(&no_versions)
            .iter()
            .rposition(|old| match (first, last) {
                (Some(first), Some(last)) => old.get(first..=last) == read.get(first..=last),
                _ => false,
            });
        format!(
            "read {} bytes, wrote {}; first difference at {first:?}, last at {last:?}, {differing} bytes \
             differ; those bytes are {}",
            read.len(),
            body.len(),
            match earlier {
                Some(index) => format!("earlier version {index} of {}'s", self.versions[name].len()),
                None => "no earlier version's".to_owned(),
            }
        )
    }

    /// Lists one shared directory: this worker's files are where its model says, and only there.
    fn list_and_check(&mut self) -> Result<(), String> {
        let dir = DIRS[self.rng.below(3)];
        self.log.push(format!("list {dir}"));
        let listed: Vec<String> = std::fs::read_dir(self.root.join(dir))
            .map_err(|e| format!("readdir {dir}: {e}"))?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("readdir {dir}: {e}"))?;
        let prefix = format!("w{}-", self.id);
        let mut mine: Vec<&String> = listed.iter().filter(|n| n.starts_with(&prefix)).collect();
        mine.sort();
        let expected: Vec<&String> = self
            .model
            .iter()
            .filter(|(_, (d, _))| *d == dir)
            .map(|(name, _)| name)
            .collect();
        if mine != expected {
            return Err(format!("readdir {dir}: mine listed {mine:?}, model {expected:?}"));
        }
        Ok(())
    }

    /// Reads another worker's file, found by listing: it may be renamed, unlinked or replaced
    /// meanwhile, and nothing else may go wrong.
    fn read_a_neighbour(&mut self) -> Result<(), String> {
        let dir = DIRS[self.rng.below(3)];
        let entries = match std::fs::read_dir(self.root.join(dir)) {
            Ok(entries) => entries,
            Err(error) => return Err(format!("readdir {dir}: {error}")),
        };
        let names: Vec<String> = entries
            .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        let Some(name) = names.get(self.rng.below(names.len().max(1))).cloned() else {
            return Ok(());
        };
        self.log.push(format!("read neighbour {dir}/{name}"));
        let path = self.root.join(dir).join(&name);
        let read = File::open(&path).and_then(|mut file| {
            let mut buffer = Vec::new();
            file.read_to_end(&mut buffer).map(|_| buffer)
        });
        match read {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE)) => Ok(()),
            Err(error) => Err(format!("reading {path:?} of another worker: {error}")),
        }
    }
}

/// The daemon's peak resident memory, in MiB, from /proc.
fn peak_rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

#[test]
fn concurrent_workers_on_one_mount_end_as_the_model_says() {
    let seed = std::env::var("S3MOUNT_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("stress seed {seed} (S3MOUNT_STRESS_SEED={seed} replays it)");
    let prefix = TestPrefix::new("stress");
    let max_memory = format!("{MAX_MEMORY_MIB}MiB");
    let mut mount = Mount::start(
        &[&prefix.source()],
        &["--max-memory", &max_memory, "--cache-min-free", "0"],
    );
    for dir in DIRS {
        std::fs::create_dir(mount.join(dir)).unwrap();
    }
    let root = Arc::new(mount.path().to_owned());
    let started = Instant::now();
    let (sender, receiver) = std::sync::mpsc::channel();
    for id in 0..WORKERS {
        let worker = Worker {
            id,
            rng: Rng(seed.wrapping_mul(id as u64 * 2 + 1) | 1),
            model: Model::new(),
            root: root.as_ref().clone(),
            log: Vec::new(),
            versions: BTreeMap::new(),
        };
        let sender = sender.clone();
        std::thread::spawn(move || {
            let _ = sender.send(worker.run());
        });
    }
    drop(sender);
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for _ in 0..WORKERS {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let outcome = receiver
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("workers still busy after {DEADLINE:?} (seed {seed}): a hang"));
        let model = outcome.unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        for (name, (dir, body)) in model {
            expected.insert(format!("{dir}/{name}"), body);
        }
    }
    eprintln!(
        "{} operations by {WORKERS} workers in {:?}",
        WORKERS * OPS_PER_WORKER,
        started.elapsed()
    );
    let pids = mount.daemon_pids();
    assert_eq!(pids.len(), 1);
    let peak = peak_rss_mib(pids[0]);
    eprintln!("daemon peak RSS {peak} MiB with --max-memory {max_memory}");
    mount.unmount_and_wait_for_exit();

    // The bucket: the directory markers, and exactly the files of the models.
    let mut keys = prefix.list_all();
    keys.sort();
    let mut wanted: Vec<String> = DIRS.iter().map(|d| format!("{d}/")).collect();
    wanted.extend(expected.keys().cloned());
    wanted.sort();
    assert_eq!(keys, wanted, "the bucket holds what the models say (seed {seed})");
    for (key, body) in &expected {
        let stored = prefix.get(key).unwrap_or_else(|| panic!("{key} missing"));
        assert!(
            stored == *body,
            "{key}: {} bytes stored, {} written (seed {seed})",
            stored.len(),
            body.len()
        );
    }
    let log = mount.log_text();
    assert!(
        !log.contains("panicked"),
        "the daemon panicked (seed {seed}):\n{log}"
    );
    // Read-ahead gets --max-memory, upload parts as much again (less 32 MiB for the daemon).
    assert!(
        peak <= 2 * MAX_MEMORY_MIB,
        "peak RSS {peak} MiB, more than twice --max-memory {MAX_MEMORY_MIB} MiB"
    );
    assert!(Path::new(root.as_ref()).exists());
}
