//! Mount tests of the read path: read-ahead and the persistent block cache, through the real
//! binary on the Garage test server.
//!
//! What the daemon did is read from the stats line it logs at unmount (`get_requests`,
//! `get_bytes`, `cache_hit_blocks`, `cache_miss_blocks`), so every test unmounts and waits for the
//! daemon to exit before it looks. Every mount here passes `--cache` with a temporary directory
//! or `--no-cache`: nothing may touch the user's real cache directory.

mod common;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use s3mount::cache::disk::{StoredBlock, slots_file, stored_blocks};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use common::metrics::{MetricsEndpoint, Scrape};
use common::{Mount, TestPrefix, assert_fails_before_mount, pseudo_random, settings};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The daemon's counters, from its stats line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stats {
    get_requests: u64,
    get_bytes: u64,
    cache_hit_blocks: u64,
    cache_miss_blocks: u64,
}

/// The one `stats: name=value ...` line of a mount's log.
fn parse_stats(log: &str) -> Stats {
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once("stats: ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one stats line in the log:\n{log}");
    let field = |name: &str| -> u64 {
        lines[0]
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name}=N in the stats line {:?}", lines[0]))
    };
    Stats {
        get_requests: field("get_requests"),
        get_bytes: field("get_bytes"),
        cache_hit_blocks: field("cache_hit_blocks"),
        cache_miss_blocks: field("cache_miss_blocks"),
    }
}

/// Unmounts, waits for the daemon to exit, and returns what it counted. What the daemon warned
/// of goes to the test's output, shown if the test fails: a cache that stored nothing says why.
fn unmount_for_stats(mut mount: Mount) -> Stats {
    mount.unmount_and_wait_for_exit();
    let log = mount.log_text();
    for line in log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
    {
        eprintln!("daemon: {line}");
    }
    parse_stats(&log)
}

/// A temporary directory and, inside it, a cache directory that does not exist yet (the daemon
/// creates it).
fn cache_dir() -> (TempDir, PathBuf) {
    settings(); // First, before this test starts anything (see `common::load_settings`).
    let parent = TempDir::new().expect("temporary directory");
    let dir = parent.path().join("cache");
    (parent, dir)
}

fn cache_arg(dir: &Path) -> &str {
    dir.to_str().expect("UTF-8 temporary path")
}

/// `--cache DIR` with no free-space floor. These tests check what is cached, and a CI runner's
/// disk may have less free than the default floor (10% of the disk); the floor has its own test.
fn cache_options(dir: &Path) -> [&str; 4] {
    ["--cache", cache_arg(dir), "--cache-min-free", "0"]
}

/// Every block the cache directory `dir` holds, read from its slots file.
fn block_files(dir: &Path) -> Vec<StoredBlock> {
    stored_blocks(dir).unwrap_or_else(|e| panic!("reading the block cache in {}: {e}", dir.display()))
}

/// Reads a whole file through the mount; returns its SHA-256 and length.
fn read_hash(path: &Path) -> ([u8; 32], u64) {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let copied =
        io::copy(&mut file, &mut hasher).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (hasher.finalize().into(), copied)
}

/// Mounts `prefix` with `extra`, reads `name` whole, checks it against `expected`, unmounts and
/// returns the stats.
fn mount_read_unmount(prefix: &TestPrefix, extra: &[&str], name: &str, expected: &[u8]) -> Stats {
    let mount = Mount::start(&[&prefix.source()], extra);
    let (hash, len) = read_hash(&mount.join(name));
    assert_eq!(len, expected.len() as u64, "bytes read of {name}");
    assert!(
        hash == sha256(expected),
        "content of {name} through the mount ({extra:?}) differs from the object"
    );
    unmount_for_stats(mount)
}

/// Like `mount_read_unmount`, but returns the daemon's whole log, for the tests that look at what
/// it warned.
fn mount_read_unmount_log(prefix: &TestPrefix, extra: &[&str], name: &str, expected: &[u8]) -> String {
    let mut mount = Mount::start(&[&prefix.source()], extra);
    let (hash, len) = read_hash(&mount.join(name));
    assert!(
        len == expected.len() as u64 && hash == sha256(expected),
        "content of {name} through the mount ({extra:?}) differs from the object"
    );
    mount.unmount_and_wait_for_exit();
    mount.log_text()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

// ---------------------------------------------------------------------------------------------
// The cache across remounts

#[test]
fn cold_read_fetches_each_block_once_and_a_remount_reads_from_the_cache() {
    let prefix = TestPrefix::new("cold-warm");
    let size = 24 * MIB;
    let data = pseudo_random(24, size);
    prefix.put("big.bin", data.clone());
    let (_parent, cache) = cache_dir();
    let extra = cache_options(&cache);

    let cold = mount_read_unmount(&prefix, &extra, "big.bin", &data);
    eprintln!("cold read: {cold:?}");
    assert_eq!(
        cold.get_bytes, size as u64,
        "a cold read fetches every byte exactly once: {cold:?}"
    );
    assert_eq!(cold.cache_miss_blocks, 24, "{cold:?}");
    assert_eq!(cold.cache_hit_blocks, 0, "{cold:?}");
    assert_eq!(
        block_files(&cache).len(),
        24,
        "every block is on disk once the daemon has exited"
    );

    let warm = mount_read_unmount(&prefix, &extra, "big.bin", &data);
    eprintln!("warm read: {warm:?}");
    assert_eq!(
        warm,
        Stats {
            get_requests: 0,
            get_bytes: 0,
            cache_hit_blocks: 24,
            cache_miss_blocks: 0
        },
        "a remount on the same cache reads every block from disk"
    );
}

#[test]
fn no_cache_fetches_again_and_writes_nothing() {
    let prefix = TestPrefix::new("no-cache");
    let size = 8 * MIB + 1234;
    let data = pseudo_random(8, size);
    prefix.put("f.bin", data.clone());
    settings();
    let env_dir = TempDir::new().expect("temporary directory");
    let home = env_dir.path().join("home");
    let xdg = env_dir.path().join("xdg-cache");
    for dir in [&home, &xdg] {
        std::fs::create_dir(dir).expect("creating an empty directory");
    }
    let private_env = |command: &mut Command| {
        command.env("HOME", &home).env("XDG_CACHE_HOME", &xdg);
    };

    for round in ["first", "second"] {
        let mount = Mount::start_with(&[&prefix.source()], &["--no-cache"], private_env);
        let (hash, len) = read_hash(&mount.join("f.bin"));
        assert!(
            len == size as u64 && hash == sha256(&data),
            "{round} --no-cache read"
        );
        let stats = unmount_for_stats(mount);
        eprintln!("--no-cache, {round} mount: {stats:?}");
        assert_eq!(
            stats.get_bytes, size as u64,
            "{round} mount: every byte comes from S3: {stats:?}"
        );
        assert_eq!(stats.cache_hit_blocks, 0, "{round} mount: {stats:?}");
        assert!(
            common::tree(env_dir.path()).keys().eq(["home", "xdg-cache"]),
            "{round} --no-cache mount created files: {:?}",
            common::tree(env_dir.path())
        );
    }

    // The control: without --no-cache the same environment does lead to a cache under
    // XDG_CACHE_HOME (a temporary one here), so the emptiness above means something.
    let mount = Mount::start_with(&[&prefix.source()], &["--cache-min-free", "0"], private_env);
    let (hash, _) = read_hash(&mount.join("f.bin"));
    assert!(hash == sha256(&data), "read with the default cache");
    unmount_for_stats(mount);
    let default_root = xdg.join("s3mount");
    let created = common::tree(&default_root);
    assert!(
        created.keys().any(|path| path.contains("/blocks/")),
        "the default cache lives under XDG_CACHE_HOME/s3mount: {created:?}"
    );
    assert!(
        common::names(&home).is_empty(),
        "HOME is not used when XDG_CACHE_HOME is set"
    );
}

#[test]
fn a_corrupted_block_on_disk_is_detected_and_fetched_again() {
    let prefix = TestPrefix::new("corrupt-block");
    let size = 8 * MIB;
    let data = pseudo_random(81, size);
    prefix.put("f.bin", data.clone());
    let (_parent, cache) = cache_dir();
    let extra = cache_options(&cache);

    let cold = mount_read_unmount(&prefix, &extra, "f.bin", &data);
    assert_eq!(cold.get_bytes, size as u64, "{cold:?}");
    let files = block_files(&cache);
    assert_eq!(files.len(), 8, "blocks cached: {files:?}");

    // One flipped byte in the middle of one block's data.
    let victim = &files[files.len() / 2];
    assert_eq!(victim.data_len, MIB as u64, "a whole block: {victim:?}");
    let slots = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(slots_file(&cache))
        .expect("opening the slots file");
    let middle = victim.data_offset + victim.data_len / 2;
    let mut byte = [0u8];
    slots.read_exact_at(&mut byte, middle).expect("reading a block");
    slots
        .write_all_at(&[byte[0] ^ 0x5a], middle)
        .expect("writing the damaged block");

    let log = mount_read_unmount_log(&prefix, &extra, "f.bin", &data);
    let stats = parse_stats(&log);
    eprintln!("after damaging one block: {stats:?}");
    assert_eq!(
        stats,
        Stats {
            get_requests: 1,
            get_bytes: MIB as u64,
            cache_hit_blocks: 7,
            cache_miss_blocks: 1
        },
        "only the damaged block is fetched again"
    );
    assert!(
        log.contains("damaged cache block"),
        "the daemon says it dropped a damaged block:\n{log}"
    );

    // The block fetched again replaced the damaged one.
    let again = mount_read_unmount(&prefix, &extra, "f.bin", &data);
    assert_eq!(
        (again.get_requests, again.cache_hit_blocks),
        (0, 8),
        "the re-fetched block is cached again: {again:?}"
    );
}

#[test]
fn a_replaced_object_is_read_new_from_a_shared_cache() {
    let prefix = TestPrefix::new("replaced-cache");
    // Same size: only the ETag tells the versions apart.
    let size = 5 * MIB + 777;
    let old = pseudo_random(91, size);
    let new = pseudo_random(92, size);
    let old_etag = prefix.put("f.bin", old.clone());
    let (_parent, cache) = cache_dir();
    let extra = cache_options(&cache);

    let first = mount_read_unmount(&prefix, &extra, "f.bin", &old);
    assert_eq!(first.cache_miss_blocks, 6, "{first:?}");
    assert_eq!(block_files(&cache).len(), 6, "the old version is cached");

    let new_etag = prefix.put("f.bin", new.clone());
    assert_ne!(old_etag, new_etag, "the server gave the new version a new ETag");

    let second = mount_read_unmount(&prefix, &extra, "f.bin", &new);
    eprintln!("after the replace: {second:?}");
    assert_eq!(
        (
            second.cache_hit_blocks,
            second.cache_miss_blocks,
            second.get_bytes
        ),
        (0, 6, size as u64),
        "no block of the old version may serve the new one: {second:?}"
    );

    let third = mount_read_unmount(&prefix, &extra, "f.bin", &new);
    assert_eq!(
        (third.get_requests, third.cache_hit_blocks),
        (0, 6),
        "the new version is served from the cache once cached: {third:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sharing, failures and bounds of the cache directory

#[test]
fn a_second_mount_on_the_same_cache_directory_is_refused() {
    let prefix = TestPrefix::new("cache-in-use");
    prefix.put("f.txt", b"first\n".to_vec());
    prefix.put("other/g.txt", b"second\n".to_vec());
    let (_parent, cache) = cache_dir();
    let first = Mount::start(&[&prefix.source()], &cache_options(&cache));
    let holder = first.daemon_pids();
    assert_eq!(holder.len(), 1, "{holder:?}");

    // Another prefix and another mount point: what is shared is only the directory.
    let second_dir = TempDir::new().expect("temporary directory");
    let second_point = second_dir.path().canonicalize().expect("canonical path");
    let mut command = common::s3mount_command();
    command
        .arg(format!("{}other/", prefix.source()))
        .arg(&second_point)
        .args(common::endpoint_args())
        .args(cache_options(&cache));
    assert_fails_before_mount(
        command,
        &second_point,
        &[
            "in use by another s3mount",
            cache_arg(&cache),
            &format!("pid {}", holder[0]),
        ],
    );

    // The first mount is unharmed and keeps its cache.
    assert_eq!(
        std::fs::read(first.join("f.txt")).expect("reading through the first mount"),
        b"first\n"
    );
    let stats = unmount_for_stats(first);
    assert_eq!(stats.cache_miss_blocks, 1, "{stats:?}");
}

#[test]
fn an_unusable_cache_directory_leaves_the_mount_uncached() {
    let prefix = TestPrefix::new("cache-unusable");
    let size = 3 * MIB + 5;
    let data = pseudo_random(5, size);
    prefix.put("f.bin", data.clone());
    settings();
    let parent = TempDir::new().expect("temporary directory");
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a directory\n").expect("creating a file");
    let impossible = file.join("sub");

    let log = mount_read_unmount_log(&prefix, &cache_options(&impossible), "f.bin", &data);
    let stats = parse_stats(&log);
    assert_eq!(stats.get_bytes, size as u64, "{stats:?}");
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("without a block cache")),
        "the daemon warns that it runs uncached:\n{log}"
    );
    assert_eq!(
        std::fs::read(&file).expect("reading the file"),
        b"not a directory\n",
        "the file in the way is untouched"
    );
}

#[test]
fn a_cache_smaller_than_a_block_caches_nothing_and_reads_still_work() {
    let prefix = TestPrefix::new("cache-tiny");
    let size = 3 * MIB + 5;
    let data = pseudo_random(6, size);
    prefix.put("f.bin", data.clone());
    let (_parent, cache) = cache_dir();
    // A block file is 1 MiB of data plus its footer: it never fits in 1 MiB.
    let extra = [
        "--cache",
        cache_arg(&cache),
        "--cache-size",
        "1MiB",
        "--cache-min-free",
        "0",
    ];

    let log = mount_read_unmount_log(&prefix, &extra, "f.bin", &data);
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("cannot write to the block cache")),
        "the daemon warns that blocks are not cached:\n{log}"
    );
    // The last block (5 bytes) fits; the 1 MiB ones cannot.
    let files = block_files(&cache);
    assert!(
        files.len() <= 1,
        "only the short last block may be cached: {files:?}"
    );
    for block in &files {
        assert!(block.data_len < MIB as u64, "{block:?}");
    }

    let second = mount_read_unmount(&prefix, &extra, "f.bin", &data);
    assert!(
        second.get_bytes >= 3 * MIB as u64,
        "the whole blocks come from S3 again: {second:?}"
    );
}

#[test]
fn a_free_space_floor_above_the_disk_caches_nothing_and_says_why() {
    let prefix = TestPrefix::new("cache-floor");
    let size = 2 * MIB + 9;
    let data = pseudo_random(10, size);
    prefix.put("f.bin", data.clone());
    let (_parent, cache) = cache_dir();
    // No disk here has an exabyte free: the floor refuses every block.
    let extra = ["--cache", cache_arg(&cache), "--cache-min-free", "1EiB"];

    let log = mount_read_unmount_log(&prefix, &extra, "f.bin", &data);
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("--cache-min-free")),
        "the daemon says the floor is why nothing is cached:\n{log}"
    );
    let files = block_files(&cache);
    assert!(
        files.is_empty(),
        "nothing may be cached under the floor: {files:?}"
    );
    assert_eq!(parse_stats(&log).get_bytes, size as u64, "every byte from S3");
}

#[test]
fn cache_directories_and_files_are_private() {
    let prefix = TestPrefix::new("cache-private");
    let size = 2 * MIB + 3;
    let data = pseudo_random(7, size);
    prefix.put("f.bin", data.clone());

    // A cache directory the daemon creates itself, and one the user made beforehand with the
    // default umask: either way what is inside is the user's alone.
    let (_parent, created) = cache_dir();
    let (_parent2, existing) = cache_dir();
    std::fs::create_dir(&existing).expect("creating the cache directory");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");

    for cache in [&created, &existing] {
        mount_read_unmount(&prefix, &cache_options(cache), "f.bin", &data);
        let files = block_files(cache);
        assert_eq!(files.len(), 3, "blocks cached in {}", cache.display());
        let blocks = cache.join("blocks");
        assert_eq!(mode(&blocks), 0o700, "mode of {}", blocks.display());
        // The index saved at unmount too.
        for file in [
            &slots_file(cache),
            &cache.join("blocks").join("index"),
            &cache.join("lock"),
        ] {
            assert_eq!(mode(file), 0o600, "mode of {}", file.display());
        }
    }
    assert_eq!(
        mode(&created),
        0o700,
        "a cache directory the daemon creates is private"
    );
    assert_eq!(
        mode(&existing),
        0o755,
        "an existing directory keeps the mode its owner gave it"
    );
}

// ---------------------------------------------------------------------------------------------
// Access patterns

#[test]
fn a_random_4k_read_costs_one_block() {
    let prefix = TestPrefix::new("random-4k");
    let size = 64 * MIB;
    let data = pseudo_random(64, size);
    prefix.put("big.bin", data.clone());
    let (_parent, cache) = cache_dir();
    let mount = Mount::start(&[&prefix.source()], &cache_options(&cache));

    // Inside block 40, far from its edges: the kernel's page-aligned read cannot cross into
    // another block.
    let offset = 40 * MIB + 12345;
    let file = File::open(mount.join("big.bin")).expect("opening big.bin");
    // SAFETY: a valid open descriptor; the advice only changes the kernel's read-ahead.
    let advice = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(advice, 0, "posix_fadvise");
    let mut buffer = vec![0; 4 * KIB];
    file.read_exact_at(&mut buffer, offset as u64).expect("pread");
    assert!(
        buffer == data[offset..offset + 4 * KIB],
        "the 4 KiB read returns the object's bytes"
    );
    drop(file);

    let stats = unmount_for_stats(mount);
    eprintln!("random 4 KiB read: {stats:?}");
    assert!(
        stats.get_bytes < 2 * MIB as u64,
        "a random 4 KiB read must cost one 1 MiB block, not read-ahead: {stats:?}"
    );
    assert_eq!(stats.get_requests, 1, "one GET: {stats:?}");
}

/// `find | xargs cat` over small files: each open is the one GET that brings the whole file
/// (its head comes with it), and close-to-open still holds: a file replaced after the listing
/// reads as its new self, and reading it again after its replacement does too.
#[test]
fn small_files_cost_one_get_each_and_a_replacement_after_the_listing_is_seen() {
    let prefix = TestPrefix::new("small-one-get");
    let files: Vec<(String, Vec<u8>)> = (0..20u64)
        .map(|i| {
            (
                format!("d/f{i:02}"),
                pseudo_random(100 + i, 10 * KIB + i as usize),
            )
        })
        .collect();
    for (name, data) in &files {
        prefix.put(name, data.clone());
    }
    let (_parent, cache) = cache_dir();
    let endpoint = MetricsEndpoint::on_free_port();
    let addr = endpoint.arg();
    let mut options = vec!["--metrics-addr", &addr];
    options.extend(cache_options(&cache));
    let mount = Mount::start(&[&prefix.source()], &options);
    let listed = std::fs::read_dir(mount.join("d")).expect("listing d").count();
    assert_eq!(listed, files.len());
    let before = endpoint.wait_until_answering(&mount);

    let replaced = pseudo_random(999, 30 * KIB);
    prefix.put(&files[0].0, replaced.clone());
    for (i, (name, data)) in files.iter().enumerate() {
        let read = std::fs::read(mount.join(name)).expect("reading a small file");
        let expected = if i == 0 { &replaced } else { data };
        assert!(
            read == *expected,
            "{name} reads as the object is now ({} bytes)",
            read.len()
        );
    }
    let heads = |scrape: &Scrape| scrape.sum("s3mount_s3_requests_total", &[("operation", "HeadObject")]);
    let after = endpoint.scrape(&mount);
    assert_eq!(heads(&after) - heads(&before), 0.0, "the opens send no HEAD");
    let stats = unmount_for_stats(mount);
    eprintln!("20 small files: {stats:?}");
    assert_eq!(
        stats.get_requests,
        files.len() as u64,
        "one GET per file: {stats:?}"
    );
}

/// A file's SHA-256 and length.
type HashAndLength = ([u8; 32], u64);

/// Reads a whole file with O_DIRECT, so every read reaches the daemon (the kernel's page cache,
/// shared by all handles of an inode, would otherwise merge the readers' requests before the
/// daemon sees them).
fn read_hash_direct(path: &Path) -> io::Result<HashAndLength> {
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut storage = vec![0u8; MIB + ALIGN];
    let skip = storage.as_ptr().align_offset(ALIGN);
    let buffer = &mut storage[skip..skip + MIB];
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    loop {
        let n = file.read_at(buffer, offset)?;
        if n == 0 {
            return Ok((hasher.finalize().into(), offset));
        }
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
}

#[test]
fn concurrent_readers_of_one_file_share_the_fetches() {
    concurrent_readers_share_the_fetches("concurrent-readers", 4, "page-cache", |path| Ok(read_hash(path)));
}

#[test]
fn concurrent_direct_readers_of_one_file_share_the_fetches() {
    concurrent_readers_share_the_fetches("concurrent-direct", 44, "O_DIRECT", read_hash_direct);
}

/// Four threads read one 24 MiB file at once through `read`: every one gets it intact, and
/// between them they fetch it about once (single flight and the cache), never twice.
fn concurrent_readers_share_the_fetches(
    name: &str,
    seed: u64,
    how: &str,
    read: fn(&Path) -> io::Result<HashAndLength>,
) {
    let prefix = TestPrefix::new(name);
    let size = 24 * MIB;
    let data = pseudo_random(seed, size);
    let expected = sha256(&data);
    prefix.put("big.bin", data);
    let (_parent, cache) = cache_dir();
    let mount = Mount::start(&[&prefix.source()], &cache_options(&cache));

    const READERS: usize = 4;
    let start = Arc::new(Barrier::new(READERS));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let path = mount.join("big.bin");
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                read(&path)
            })
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let (hash, len) = reader
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("reader {i}: {how} read of big.bin: {e}"));
        assert!(
            len == size as u64 && hash == expected,
            "reader {i} read big.bin intact"
        );
    }

    let stats = unmount_for_stats(mount);
    eprintln!(
        "{READERS} concurrent {how} readers of 24 MiB: {stats:?} ({:.2} x the object)",
        stats.get_bytes as f64 / size as f64
    );
    assert!(
        stats.get_bytes >= size as u64 && stats.get_bytes < 2 * size as u64,
        "concurrent readers must share fetches (single flight, cache): {stats:?}"
    );
}
