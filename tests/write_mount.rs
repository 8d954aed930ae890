//! Write-back tests: the real `s3mount` binary mounted on a real S3 server (Garage on loopback),
//! changed with `std::fs`, raw syscalls and plain shell tools (`cp`, `tar`, `rsync`), and checked
//! both through the mount and in the bucket itself with the harness's own S3 client, so a test
//! never trusts the daemon to report on its own uploads.
//!
//! What is checked: files are staged locally and uploaded when closed or fsynced (one PutObject
//! when small, multipart when large) with a Content-Type from the extension; POSIX writes
//! (random, holes, truncate, `O_TRUNC`, `O_APPEND`, `O_EXCL`); the namespace (unlink, mkdir
//! markers, rmdir, rename of files and directories, `RENAME_NOREPLACE`); `--read-only`; and
//! durability: SIGTERM drains uploads, a close cut short by SIGKILL or refused by S3 is uploaded by
//! the next mount of the same cache directory, and data of a file never closed is kept under
//! `<cache>/recovery/`. Every close is checked (dropping a `File` would throw its error away):
//! close is where the upload happens. Each test owns a unique key prefix; nothing sleeps to
//! synchronise.

mod common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::{
    Mount, TestPrefix, assert_same_bytes, close, names, process_alive, pseudo_random, settings, tree,
    wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Creates (or truncates) `path`, writes `data` and closes it, failing the test on any error.
fn write_file(path: &Path, data: &[u8]) {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(data)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    close(file).unwrap_or_else(|e| panic!("closing {} (the upload): {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Fails unless `result` is the error `errno`.
fn assert_errno<T: std::fmt::Debug>(what: &str, result: io::Result<T>, errno: i32) {
    match result {
        Ok(value) => panic!(
            "{what}: succeeded ({value:?}), expected {}",
            io::Error::from_raw_os_error(errno)
        ),
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(errno),
            "{what}: {error}, expected {}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// The bucket itself (not the mount) holds exactly `expected` at PREFIX/`relative`.
fn assert_object(prefix: &TestPrefix, relative: &str, expected: &[u8]) {
    match prefix.get(relative) {
        None => panic!("{relative} is not in the bucket"),
        Some(body) => assert_same_bytes(&body, expected, &format!("{relative} in the bucket")),
    }
}

fn assert_no_object(prefix: &TestPrefix, relative: &str) {
    if let Some(head) = prefix.head(relative) {
        panic!("{relative} should not be in the bucket, but is: {head:?}");
    }
}

/// The keys under the prefix, sorted.
fn keys(prefix: &TestPrefix) -> Vec<String> {
    let mut keys = prefix.list_all();
    keys.sort();
    keys
}

/// Unmounts (waiting for the daemon to exit, so whatever it had to upload is done) and mounts the
/// same prefix again with a fresh cache: what the new mount shows comes from the bucket.
fn remount(mut mount: Mount, prefix: &TestPrefix) -> Mount {
    mount.unmount_and_wait_for_exit();
    drop(mount);
    Mount::start(&[&prefix.source()], &[])
}

/// A cache directory that outlives a mount, for the tests that mount twice on the same one.
struct CacheDir {
    _dir: TempDir,
    path: PathBuf,
}

impl CacheDir {
    fn new() -> Self {
        settings(); // First, before this test starts anything (see `common::load_settings`).
        let dir = TempDir::new().expect("creating a cache directory");
        let path = dir.path().canonicalize().expect("canonical cache directory");
        Self { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 temporary path")
    }

    /// `--cache DIR`.
    fn options(&self) -> [&str; 2] {
        ["--cache", self.arg()]
    }
}

/// Regular files under `dir`, recursively, leaving out the block cache (`blocks/`): how the tests
/// look at staging and recovery. Files vanishing meanwhile are skipped.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && entry.file_name() != "blocks" => walk(&entry.path(), out),
                Ok(kind) if kind.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Whether a staged file's journal (`<cache>/staging/<id>.journal`, see `src/staging.rs`) says
/// its upload has begun: from then on a crash must not lose it.
fn closing_journal(cache: &Path) -> bool {
    files_under(&cache.join("staging")).iter().any(|path| {
        path.extension().is_some_and(|e| e == "journal")
            && std::fs::read_to_string(path).is_ok_and(|text| text.lines().any(|l| l == "state closing"))
    })
}

/// Sends `signal` to every daemon process of `mount` and waits until they have exited.
fn signal_daemon(mount: &Mount, signal: libc::c_int) {
    let pids = mount.daemon_pids();
    assert!(!pids.is_empty(), "no daemon serves {}", mount.path().display());
    for &pid in &pids {
        // SAFETY: signalling a daemon this test started.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill {pid}: {}", io::Error::last_os_error());
    }
    wait_until("the daemon has exited after the signal", || {
        pids.iter().all(|&pid| !process_alive(pid))
    });
}

/// How long writing a large file may take: the unoptimised daemon writes at some 20 MB/s on a
/// loaded 2-core machine, and the largest file here is 1 GiB.
const LARGE_WRITE_WAIT: Duration = Duration::from_secs(240);

/// [`wait_until`] for conditions that wait on a large write: up to [`LARGE_WRITE_WAIT`].
fn wait_long(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LARGE_WRITE_WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {LARGE_WRITE_WAIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `dd` writing a file in a child process, fed from a thread. Large files are written this way,
/// not by the test process: every close(2) is a FUSE flush, which uploads, and that includes the
/// close-on-exec in each child that another test thread spawns while this process holds the file
/// open (the child's exec would wait for an upload of the whole file).
struct DdWriter {
    child: Child,
    feeder: JoinHandle<io::Result<()>>,
}

impl DdWriter {
    /// Starts `dd of=PATH` and feeds it `chunks`, then end of file.
    fn start(path: &Path, chunks: impl Iterator<Item = Vec<u8>> + Send + 'static) -> Self {
        let mut of = std::ffi::OsString::from("of=");
        of.push(path);
        // fullblock: whole 1 MiB writes, not whatever the pipe hands over.
        let mut child = Command::new("dd")
            .arg(of)
            .args(["bs=1M", "iflag=fullblock", "status=none"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dd");
        let mut stdin = child.stdin.take().expect("dd's stdin");
        let feeder = std::thread::spawn(move || {
            for chunk in chunks {
                stdin.write_all(&chunk)?;
            }
            Ok(())
        });
        Self { child, feeder }
    }

    /// Waits until dd has written everything and is inside close(2) of its output (fd 1): the
    /// daemon is uploading.
    fn wait_until_closing(&mut self) {
        let pid = self.child.id();
        wait_long("dd is inside close(2) of the file it wrote", || {
            let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            let mut fields = syscall.split_whitespace();
            let number = fields.next().and_then(|n| n.parse::<i64>().ok());
            (number == Some(libc::SYS_close) && fields.next() == Some("0x1"))
                || self.child.try_wait().is_ok_and(|status| status.is_some())
        });
        assert!(
            self.child.try_wait().expect("checking on dd").is_none(),
            "dd exited before the test could act while its close was in flight"
        );
    }

    /// Waits for dd to exit; `Err` with its stderr unless it succeeded (a failed close included).
    fn finish(mut self) -> Result<(), String> {
        let child = &mut self.child;
        wait_long("dd has exited", || {
            child.try_wait().is_ok_and(|status| status.is_some())
        });
        let status = self.child.wait().expect("waiting for dd");
        let fed = self.feeder.join().expect("the feeder thread panicked");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        match (status.success(), fed) {
            (true, Ok(())) => Ok(()),
            (_, fed) => Err(format!(
                "dd: {status}, feeding: {fed:?}, stderr: {}",
                stderr.trim()
            )),
        }
    }
}

/// Renames with `RENAME_NOREPLACE`: fails with EEXIST rather than replace `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes()).expect("no NUL in path");
    let to = CString::new(to.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: two valid NUL-terminated absolute paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// truncate(2) on a path, with no open handle.
fn truncate_path(path: &Path, size: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let size = libc::off_t::try_from(size).expect("size fits off_t");
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::truncate(c_path.as_ptr(), size) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs a shell tool, failing with its output unless it exits 0.
fn run_tool(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A local tree for the tool tests: nested directories, an empty one, about 50 files of sizes
/// around page and block boundaries, an empty file and one of 20 MiB.
fn make_local_tree() -> TempDir {
    let dir = TempDir::new().expect("creating a local tree");
    let root = dir.path();
    for sub in ["a/b/c", "d", "empty-dir", "a/with space"] {
        std::fs::create_dir_all(root.join(sub)).expect("creating a local directory");
    }
    let sizes = [
        0,
        1,
        100,
        4095,
        4096,
        4097,
        64 * KIB,
        128 * KIB + 1,
        MIB - 1,
        MIB,
        MIB + 3,
    ];
    let folders = ["", "a", "a/b", "a/b/c", "d", "a/with space"];
    let mut n = 0;
    for (f, folder) in folders.iter().enumerate() {
        for (s, size) in sizes.iter().enumerate() {
            // About 50 files: every folder gets most sizes, not all.
            if (f + s) % 4 == 3 {
                continue;
            }
            let path = root.join(folder).join(format!("file-{n:02}.bin"));
            std::fs::write(&path, pseudo_random(n as u64, *size)).expect("writing a local file");
            n += 1;
        }
    }
    std::fs::write(root.join("d/large.bin"), pseudo_random(999, 20 * MIB)).expect("writing the large file");
    std::fs::write(root.join("a/notes.txt"), b"some notes\n").expect("writing notes.txt");
    dir
}

/// `copy` (in a mount) has the same tree as `original` (local), and the same bytes in every file.
fn assert_same_tree(copy: &Path, original: &Path) {
    let expected = tree(original);
    assert!(expected.len() > 50, "the local tree is as big as intended");
    assert_eq!(tree(copy), expected, "tree of {}", copy.display());
    for (relative, size) in &expected {
        if size.is_some() {
            assert_same_bytes(
                &read_file(&copy.join(relative)),
                &read_file(&original.join(relative)),
                relative,
            );
        }
    }
}

/// The bucket holds, under PREFIX/`under`/, exactly the files of the local tree `original` (each
/// with its bytes) and one `dir/` marker per directory (every one was made by mkdir).
fn assert_bucket_holds_tree(prefix: &TestPrefix, under: &str, original: &Path) {
    let expected_tree = tree(original);
    let mut expected: BTreeSet<String> = expected_tree
        .iter()
        .map(|(relative, size)| match size {
            Some(_) => format!("{under}/{relative}"),
            None => format!("{under}/{relative}/"),
        })
        .collect();
    expected.insert(format!("{under}/"));
    let got: BTreeSet<String> = prefix.list_all().into_iter().collect();
    assert_eq!(got, expected, "keys in the bucket");
    for (relative, size) in &expected_tree {
        if size.is_some() {
            assert_object(
                prefix,
                &format!("{under}/{relative}"),
                &read_file(&original.join(relative)),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Create, write, close

#[test]
fn close_uploads_a_small_file_in_one_put() {
    let prefix = TestPrefix::new("w-small");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let data = pseudo_random(1, 100 * KIB + 7);
    write_file(&mount.join("small.bin"), &data);

    // Once close has returned, the object is in the bucket, without waiting.
    assert_object(&prefix, "small.bin", &data);
    let etag = prefix.head("small.bin").expect("head small.bin").etag;
    assert!(
        !etag.contains('-'),
        "a small file is one PutObject, not a multipart upload: ETag {etag}"
    );
    assert_same_bytes(&read_file(&mount.join("small.bin")), &data, "small.bin read back");

    write_file(&mount.join("empty.txt"), b"");
    assert_object(&prefix, "empty.txt", b"");
    assert_eq!(keys(&prefix), ["empty.txt", "small.bin"]);
}

#[test]
fn close_uploads_a_large_file_in_parts() {
    let prefix = TestPrefix::new("w-large");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let data = pseudo_random(2, 20 * MIB + 123);
    write_file(&mount.join("large.bin"), &data);

    assert_object(&prefix, "large.bin", &data);
    // A multipart ETag is `<hex>-<parts>`: 20 MiB in the default 8 MiB parts is 3 parts.
    let etag = prefix.head("large.bin").expect("head large.bin").etag;
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "a 20 MiB file is a multipart upload of 3 parts: ETag {etag}"
    );
}

#[test]
fn fsync_uploads_before_close() {
    let prefix = TestPrefix::new("w-fsync");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let mut file = File::create(mount.join("f.txt")).expect("creating f.txt");
    file.write_all(b"first part\n").expect("writing");
    file.sync_all().expect("fsync");
    assert_object(&prefix, "f.txt", b"first part\n");

    file.write_all(b"second part\n").expect("writing more");
    close(file).expect("close");
    assert_object(&prefix, "f.txt", b"first part\nsecond part\n");
}

#[test]
fn content_type_comes_from_the_extension() {
    let prefix = TestPrefix::new("w-ctype");
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("core.css"), b"body { color: red }\n");
    write_file(&mount.join("x.json"), b"{\"a\": 1}\n");
    for (name, expected) in [("core.css", "text/css"), ("x.json", "application/json")] {
        let head = prefix
            .head(name)
            .unwrap_or_else(|| panic!("{name} is not in the bucket"));
        let content_type = head.metadata.content_type.unwrap_or_default();
        assert!(
            content_type == expected || content_type.starts_with(&format!("{expected};")),
            "Content-Type of {name} is {content_type:?}, expected {expected}"
        );
    }
}

#[test]
fn a_new_file_is_listed_and_sized_before_close() {
    let prefix = TestPrefix::new("w-visible");
    prefix.put("dir/other.txt", b"other\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let path = mount.join("dir/new.txt");
    let mut file = File::create(&path).expect("creating dir/new.txt");
    assert_eq!(
        names(&mount.join("dir")),
        ["new.txt", "other.txt"],
        "listed right after create"
    );
    file.write_all(&[b'x'; 1000]).expect("writing");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        1000,
        "stat shows the local size"
    );
    // Another listing (the daemon lists S3 afresh each time) still merges the local file.
    assert_eq!(names(&mount.join("dir")), ["new.txt", "other.txt"]);
    close(file).expect("close");
    assert_object(&prefix, "dir/new.txt", &[b'x'; 1000]);
}

#[test]
fn two_handles_on_one_path_see_each_others_writes() {
    let prefix = TestPrefix::new("w-two-fds");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let path = mount.join("shared.txt");
    let first = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("creating shared.txt");
    let second = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("opening shared.txt a second time");

    first
        .write_all_at(b"hello", 0)
        .expect("writing via the first handle");
    let mut buffer = [0; 5];
    second
        .read_exact_at(&mut buffer, 0)
        .expect("reading via the second handle");
    assert_eq!(&buffer, b"hello", "the second handle reads what the first wrote");

    second
        .write_all_at(b" world", 5)
        .expect("writing via the second handle");
    let mut buffer = [0; 11];
    first
        .read_exact_at(&mut buffer, 0)
        .expect("reading via the first handle");
    assert_eq!(
        &buffer, b"hello world",
        "the first handle reads what the second wrote"
    );
    let mut reader = File::open(&path).expect("opening a third, read-only handle");
    let mut content = Vec::new();
    reader.read_to_end(&mut content).expect("reading");
    assert_same_bytes(&content, b"hello world", "a third handle before any close");

    close(first).expect("closing the first handle");
    close(second).expect("closing the second handle");
    close(reader).expect("closing the reader");
    assert_object(&prefix, "shared.txt", b"hello world");
}

// ---------------------------------------------------------------------------------------------
// POSIX writes

#[test]
fn writing_into_an_existing_object_keeps_the_rest() {
    let prefix = TestPrefix::new("w-existing");
    prefix.put("f.txt", b"0123456789".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let file = OpenOptions::new()
        .write(true)
        .open(mount.join("f.txt"))
        .expect("opening without O_TRUNC");
    file.write_all_at(b"ab", 3).expect("writing at 3");
    close(file).expect("close");
    assert_object(&prefix, "f.txt", b"012ab56789");
    assert_same_bytes(&read_file(&mount.join("f.txt")), b"012ab56789", "read back");
}

#[test]
fn random_writes_match_a_model() {
    let prefix = TestPrefix::new("w-random");
    // Larger than one part, so the upload is multipart and writes cross part boundaries.
    let mut model = pseudo_random(3, 20 * MIB);
    prefix.put("f.bin", model.clone());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.join("f.bin"))
        .expect("opening f.bin read-write");

    // Offsets and lengths from a fixed pseudo-random stream; some writes extend the file.
    let stream = pseudo_random(4, 200 * 16);
    for (i, entry) in stream.chunks_exact(16).enumerate() {
        let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().expect("8 bytes"));
        let offset = (word(0) % (model.len() as u64 + 64 * KIB as u64)) as usize;
        let len = 1 + (word(8) % (300 * KIB as u64)) as usize;
        let data = pseudo_random(1000 + i as u64, len);
        file.write_all_at(&data, offset as u64).expect("pwrite");
        if model.len() < offset + len {
            model.resize(offset + len, 0);
        }
        model[offset..offset + len].copy_from_slice(&data);
    }
    let mut before_close = vec![0; model.len()];
    file.read_exact_at(&mut before_close, 0)
        .expect("reading back before close");
    assert_same_bytes(&before_close, &model, "f.bin read back through the same handle");
    close(file).expect("close");

    assert_object(&prefix, "f.bin", &model);
}

#[test]
fn a_write_past_the_end_leaves_a_hole_of_zeros() {
    let prefix = TestPrefix::new("w-hole");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let file = File::create(mount.join("sparse.bin")).expect("creating sparse.bin");
    file.write_all_at(b"head", 0).expect("writing the head");
    let tail_at = MIB as u64 + 5;
    file.write_all_at(b"tail", tail_at).expect("writing past the end");
    close(file).expect("close");

    let mut expected = vec![0; MIB + 5 + 4];
    expected[..4].copy_from_slice(b"head");
    expected[MIB + 5..].copy_from_slice(b"tail");
    assert_eq!(
        std::fs::metadata(mount.join("sparse.bin")).expect("stat").len(),
        expected.len() as u64
    );
    assert_same_bytes(
        &read_file(&mount.join("sparse.bin")),
        &expected,
        "sparse.bin read back",
    );
    assert_object(&prefix, "sparse.bin", &expected);
}

#[test]
fn ftruncate_and_truncate_shrink_and_grow() {
    let prefix = TestPrefix::new("w-truncate");
    let original = pseudo_random(5, 100 * KIB);
    prefix.put("f.bin", original.clone());
    prefix.put("g.bin", original.clone());
    let mount = Mount::start(&[&prefix.source()], &[]);

    // ftruncate on an open handle: shrink, then grow (the new bytes are zeros).
    let file = OpenOptions::new()
        .write(true)
        .open(mount.join("f.bin"))
        .expect("opening f.bin");
    file.set_len(1000).expect("ftruncate to 1000");
    file.set_len(5000).expect("ftruncate to 5000");
    close(file).expect("close");
    let mut expected = original[..1000].to_vec();
    expected.resize(5000, 0);
    assert_object(&prefix, "f.bin", &expected);

    // truncate(2) on a path nobody has open: no close follows, so check the bucket after a
    // clean unmount (which must finish whatever is pending) and through a fresh mount.
    truncate_path(&mount.join("g.bin"), 10).expect("truncate g.bin to 10");
    assert_eq!(std::fs::metadata(mount.join("g.bin")).expect("stat").len(), 10);
    truncate_path(&mount.join("g.bin"), 20).expect("truncate g.bin to 20");
    let mut expected_g = original[..10].to_vec();
    expected_g.resize(20, 0);
    assert_same_bytes(&read_file(&mount.join("g.bin")), &expected_g, "g.bin read back");

    let mount = remount(mount, &prefix);
    assert_object(&prefix, "g.bin", &expected_g);
    assert_same_bytes(
        &read_file(&mount.join("g.bin")),
        &expected_g,
        "g.bin after remount",
    );
    assert_same_bytes(&read_file(&mount.join("f.bin")), &expected, "f.bin after remount");
}

#[test]
fn o_trunc_empties_an_existing_object() {
    let prefix = TestPrefix::new("w-otrunc");
    prefix.put("f.txt", b"old content, longer than the new one\n".to_vec());
    prefix.put("g.txt", b"old\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("f.txt"), b"new\n");
    assert_object(&prefix, "f.txt", b"new\n");

    // O_TRUNC and nothing written: the object becomes empty.
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.join("g.txt"))
        .expect("opening g.txt with O_TRUNC");
    close(file).expect("close");
    assert_object(&prefix, "g.txt", b"");
}

#[test]
fn o_append_writes_go_to_the_end() {
    let prefix = TestPrefix::new("w-append");
    prefix.put("f.txt", b"first\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    let mut file = OpenOptions::new()
        .append(true)
        .open(mount.join("f.txt"))
        .expect("opening with O_APPEND");
    file.write_all(b"second\n").expect("appending");
    // A seek does not move where O_APPEND writes go.
    file.seek(SeekFrom::Start(0)).expect("seek to 0");
    file.write_all(b"third\n").expect("appending after a seek");
    close(file).expect("close");
    assert_object(&prefix, "f.txt", b"first\nsecond\nthird\n");
}

#[test]
fn appending_to_a_log_across_opens() {
    let prefix = TestPrefix::new("w-log");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let path = mount.join("app.log");
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("opening app.log for appending");
        for line in 0..100 {
            let text = format!("round {round} line {line}: something happened\n");
            file.write_all(text.as_bytes()).expect("appending a line");
            expected.extend_from_slice(text.as_bytes());
        }
        close(file).expect("close");
        assert_object(&prefix, "app.log", &expected);
    }
}

#[test]
fn o_excl_fails_on_an_existing_file() {
    let prefix = TestPrefix::new("w-excl");
    prefix.put("remote.txt", b"remote\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("local.txt"), b"local\n");
    for name in ["remote.txt", "local.txt"] {
        assert_errno(
            &format!("O_CREAT|O_EXCL of the existing {name}"),
            File::create_new(mount.join(name)).map(drop),
            libc::EEXIST,
        );
    }
    let file = File::create_new(mount.join("new.txt")).expect("O_EXCL of a new name");
    close(file).expect("close");
    assert_object(&prefix, "remote.txt", b"remote\n");
    assert_object(&prefix, "local.txt", b"local\n");
    assert_object(&prefix, "new.txt", b"");
}

// ---------------------------------------------------------------------------------------------
// The namespace

#[test]
fn unlink_deletes_the_object() {
    let prefix = TestPrefix::new("w-unlink");
    prefix.put("remote.txt", b"remote\n".to_vec());
    prefix.put("keep.txt", b"keep\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("local.txt"), b"local\n");
    std::fs::remove_file(mount.join("remote.txt")).expect("unlink remote.txt");
    std::fs::remove_file(mount.join("local.txt")).expect("unlink local.txt");
    assert_eq!(keys(&prefix), ["keep.txt"]);
    assert_eq!(names(mount.path()), ["keep.txt"]);
    assert_errno(
        "stat of an unlinked file",
        std::fs::metadata(mount.join("remote.txt")),
        libc::ENOENT,
    );
}

#[test]
fn mkdir_makes_a_marker_that_survives_remount() {
    let prefix = TestPrefix::new("w-mkdir");
    let mount = Mount::start(&[&prefix.source()], &[]);
    std::fs::create_dir(mount.join("empty")).expect("mkdir empty");
    std::fs::create_dir_all(mount.join("a/b")).expect("mkdir -p a/b");
    assert_eq!(keys(&prefix), ["a/", "a/b/", "empty/"]);
    assert_eq!(names(mount.path()), ["a", "empty"]);
    assert_errno(
        "mkdir of an existing directory",
        std::fs::create_dir(mount.join("empty")),
        libc::EEXIST,
    );

    let mount = remount(mount, &prefix);
    assert_eq!(names(mount.path()), ["a", "empty"], "empty directories persist");
    assert!(names(&mount.join("empty")).is_empty());
    assert_eq!(names(&mount.join("a")), ["b"]);
    assert!(std::fs::metadata(mount.join("a/b")).expect("stat a/b").is_dir());
}

#[test]
fn rmdir_removes_only_empty_directories() {
    let prefix = TestPrefix::new("w-rmdir");
    // An implicit directory: no marker, only a deeper key.
    prefix.put("implicit/x.txt", b"x\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    std::fs::create_dir(mount.join("d")).expect("mkdir d");
    write_file(&mount.join("d/f.txt"), b"f\n");

    for dir in ["d", "implicit"] {
        assert_errno(
            &format!("rmdir of the non-empty {dir}"),
            std::fs::remove_dir(mount.join(dir)),
            libc::ENOTEMPTY,
        );
    }
    assert_eq!(
        keys(&prefix),
        ["d/", "d/f.txt", "implicit/x.txt"],
        "nothing removed"
    );

    std::fs::remove_file(mount.join("d/f.txt")).expect("unlink d/f.txt");
    std::fs::remove_dir(mount.join("d")).expect("rmdir of the now empty d");
    assert_eq!(keys(&prefix), ["implicit/x.txt"], "the marker is gone");
    assert_eq!(names(mount.path()), ["implicit"]);
    assert_errno(
        "rmdir of a file",
        std::fs::remove_dir(mount.join("implicit/x.txt")),
        libc::ENOTDIR,
    );
}

#[test]
fn rename_moves_a_file() {
    let prefix = TestPrefix::new("w-rename");
    prefix.put("remote.txt", b"remote\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("local.txt"), b"local\n");
    std::fs::create_dir(mount.join("sub")).expect("mkdir sub");

    std::fs::rename(mount.join("remote.txt"), mount.join("sub/moved-remote.txt")).expect("rename remote.txt");
    std::fs::rename(mount.join("local.txt"), mount.join("moved-local.txt")).expect("rename local.txt");

    assert_eq!(keys(&prefix), ["moved-local.txt", "sub/", "sub/moved-remote.txt"]);
    assert_object(&prefix, "moved-local.txt", b"local\n");
    assert_object(&prefix, "sub/moved-remote.txt", b"remote\n");
    assert_eq!(names(mount.path()), ["moved-local.txt", "sub"]);
    assert_same_bytes(
        &read_file(&mount.join("sub/moved-remote.txt")),
        b"remote\n",
        "read back",
    );
}

#[test]
fn rename_replaces_an_existing_target() {
    let prefix = TestPrefix::new("w-rename-over");
    prefix.put("target.txt", b"old target\n".to_vec());
    prefix.put("source.txt", b"source\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    std::fs::rename(mount.join("source.txt"), mount.join("target.txt")).expect("rename over target.txt");
    assert_eq!(keys(&prefix), ["target.txt"]);
    assert_object(&prefix, "target.txt", b"source\n");
    assert_same_bytes(&read_file(&mount.join("target.txt")), b"source\n", "read back");
}

#[test]
fn rename_noreplace_refuses_an_existing_target() {
    let prefix = TestPrefix::new("w-noreplace");
    prefix.put("a.txt", b"a\n".to_vec());
    prefix.put("b.txt", b"b\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    assert_errno(
        "renameat2(RENAME_NOREPLACE) onto an existing name",
        rename_noreplace(&mount.join("a.txt"), &mount.join("b.txt")),
        libc::EEXIST,
    );
    assert_object(&prefix, "a.txt", b"a\n");
    assert_object(&prefix, "b.txt", b"b\n");
    rename_noreplace(&mount.join("a.txt"), &mount.join("c.txt")).expect("RENAME_NOREPLACE onto a new name");
    assert_eq!(keys(&prefix), ["b.txt", "c.txt"]);
    assert_object(&prefix, "c.txt", b"a\n");
}

#[test]
fn rename_of_a_directory_moves_every_key() {
    let prefix = TestPrefix::new("w-rename-dir");
    let big = pseudo_random(6, 12 * MIB + 5);
    prefix.put("d/one.txt", b"one\n".to_vec());
    prefix.put("d/big.bin", big.clone());
    prefix.put("d/sub/two.txt", b"two\n".to_vec());
    prefix.put("d/sub/empty/", Vec::new());
    prefix.put("other/keep.txt", b"keep\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    write_file(&mount.join("d/sub/local.txt"), b"local\n");

    std::fs::rename(mount.join("d"), mount.join("e")).expect("rename d to e");

    let moved: Vec<String> = keys(&prefix)
        .into_iter()
        .filter(|k| !k.starts_with("other/"))
        .collect();
    // The directory marker `e/` may or may not be there (`d` had none); nothing may stay under d/.
    let without_marker: Vec<&str> = moved.iter().map(String::as_str).filter(|k| *k != "e/").collect();
    assert_eq!(
        without_marker,
        [
            "e/big.bin",
            "e/one.txt",
            "e/sub/empty/",
            "e/sub/local.txt",
            "e/sub/two.txt"
        ]
    );
    assert_object(&prefix, "e/one.txt", b"one\n");
    assert_object(&prefix, "e/big.bin", &big);
    assert_object(&prefix, "e/sub/two.txt", b"two\n");
    assert_object(&prefix, "e/sub/local.txt", b"local\n");
    assert_object(&prefix, "other/keep.txt", b"keep\n");
    assert_eq!(names(mount.path()), ["e", "other"]);
    assert_eq!(names(&mount.join("e/sub")), ["empty", "local.txt", "two.txt"]);
    assert_errno(
        "stat of the old name",
        std::fs::metadata(mount.join("d")),
        libc::ENOENT,
    );
}

#[test]
fn read_only_mount_refuses_every_change_with_erofs() {
    let prefix = TestPrefix::new("w-ro");
    prefix.put("existing.txt", b"existing\n".to_vec());
    prefix.put("dir/inner.txt", b"inner\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &["--read-only"]);
    let erofs = |what: &str, result: io::Result<()>| assert_errno(what, result, libc::EROFS);
    erofs("create", File::create(mount.join("new.txt")).map(drop));
    erofs(
        "open for writing",
        OpenOptions::new()
            .write(true)
            .open(mount.join("existing.txt"))
            .map(drop),
    );
    erofs(
        "open with O_APPEND",
        OpenOptions::new()
            .append(true)
            .open(mount.join("existing.txt"))
            .map(drop),
    );
    erofs("truncate", truncate_path(&mount.join("existing.txt"), 0));
    erofs("mkdir", std::fs::create_dir(mount.join("newdir")));
    erofs("unlink", std::fs::remove_file(mount.join("existing.txt")));
    erofs("rmdir", std::fs::remove_dir(mount.join("dir")));
    erofs(
        "rename",
        std::fs::rename(mount.join("existing.txt"), mount.join("renamed.txt")),
    );
    erofs(
        "rename of a directory",
        std::fs::rename(mount.join("dir"), mount.join("dir2")),
    );
    assert_eq!(
        keys(&prefix),
        ["dir/inner.txt", "existing.txt"],
        "nothing changed"
    );
    assert_same_bytes(&read_file(&mount.join("existing.txt")), b"existing\n", "read");
}

// ---------------------------------------------------------------------------------------------
// Durability

/// What systemd's stop does to a node writing a checkpoint: SIGTERM while a 500 MiB file's
/// close is uploading. The close succeeds, the object is whole, and the daemon exits 0 with the
/// mount gone (the unit then stops cleanly instead of being SIGKILLed).
#[test]
fn sigterm_during_a_500_mib_close_finishes_it_and_exits_0() {
    const CHUNKS: u64 = 500;
    let prefix = TestPrefix::new("w-sigterm");
    let mut mount = Mount::foreground(&[&prefix.source()], &[]);
    let chunk = |i: u64| pseudo_random(7_000 + i, MIB);
    let mut dd = DdWriter::start(&mount.join("big.bin"), (0..CHUNKS).map(chunk));
    dd.wait_until_closing();

    let pid = i32::try_from(mount.child().expect("a foreground child").id()).expect("a pid");
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(dd.finish(), Ok(()), "the close in flight at SIGTERM succeeds");
    let child = mount.child().expect("a foreground child");
    let status = wait_long_for_exit(child, "s3mount --foreground after SIGTERM");
    mount.assert_stopped_cleanly(status, "after SIGTERM");

    let body = prefix
        .get("big.bin")
        .expect("big.bin is in the bucket after SIGTERM");
    assert_eq!(body.len() as u64, CHUNKS * MIB as u64, "size of big.bin");
    for (i, part) in body.chunks(MIB).enumerate() {
        assert_same_bytes(part, &chunk(i as u64), &format!("MiB {i} of big.bin"));
    }
}

/// [`common::wait_for_exit`] with the bound of large writes: a 500 MiB upload drains first.
fn wait_long_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    wait_long(what, || child.try_wait().is_ok_and(|status| status.is_some()));
    child.wait().expect("waiting for the daemon")
}

#[test]
fn a_close_cut_short_by_sigkill_is_uploaded_by_the_next_mount() {
    let prefix = TestPrefix::new("w-sigkill");
    let cache = CacheDir::new();
    let chunk = |i: u64| pseudo_random(8_000 + i, MIB);
    let mount = Mount::start(&[&prefix.source()], &cache.options());
    let mut dd = DdWriter::start(&mount.join("big.bin"), (0..300).map(chunk));

    // Kill once the daemon has started on the close: dd is inside close(2) and the staged
    // file's journal says its upload began.
    dd.wait_until_closing();
    wait_until("a journal in the staging area says the close has begun", || {
        closing_journal(&cache.path)
    });
    signal_daemon(&mount, libc::SIGKILL);
    let closed = dd.finish();
    assert!(
        closed.is_err(),
        "dd's close succeeded: the upload finished before the kill, so this test tested nothing"
    );
    // dd's open made an empty object (dd reopens its output onto fd 1, and that close is a
    // flush); the whole file must not be there yet.
    let full = 300 * MIB as u64;
    if let Some(head) = prefix.head("big.bin") {
        assert_ne!(head.size, full, "the upload completed before the kill: {head:?}");
    }
    drop(mount); // Lazily unmounts the dead mount.

    // "A file whose close had begun is uploaded unless the object changed remotely meanwhile":
    // by the time the next mount of the same cache is ready.
    let mount = Mount::start(&[&prefix.source()], &cache.options());
    let expected: Vec<u8> = (0..300).flat_map(chunk).collect();
    assert_object(&prefix, "big.bin", &expected);
    assert_same_bytes(
        &read_file(&mount.join("big.bin")),
        &expected,
        "big.bin through the new mount",
    );
}

#[test]
fn data_of_a_file_never_closed_goes_to_recovery() {
    let prefix = TestPrefix::new("w-recovery");
    let cache = CacheDir::new();
    let payload = b"data of a file that was never closed\n";
    let mount = Mount::start(&[&prefix.source()], &cache.options());
    let path = mount.join("open.txt");
    // A child holds the file open and writes to it without ever closing a descriptor of it
    // afterwards (every close is a flush, which uploads): stdout redirected once, then `printf`
    // and `sleep` inherit it. The test process must not hold it: every child another test
    // thread spawns would close it at exec, and upload it.
    let mut writer = Command::new("sh")
        .args([
            "-c",
            "exec >\"$1\" && printf '%s' \"$2\" && exec sleep 1000",
            "sh",
        ])
        .arg(&path)
        .arg(std::str::from_utf8(payload).expect("ASCII payload"))
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the writer");
    wait_until("the writer's data is staged", || {
        files_under(&cache.path.join("staging"))
            .iter()
            .any(|f| std::fs::read(f).is_ok_and(|c| c == payload))
    });

    // Kill the daemon first: were the writer to exit first, its close would upload the file.
    signal_daemon(&mount, libc::SIGKILL);
    writer.kill().expect("killing the writer");
    common::wait_for_exit(&mut writer, "the writer");
    drop(mount);

    let mount = Mount::start(&[&prefix.source()], &cache.options());
    let recovery = cache.path.join("recovery");
    let recovered: Vec<PathBuf> = files_under(&recovery)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|c| c == payload))
        .collect();
    assert_eq!(
        recovered.len(),
        1,
        "one file under {} holds the data; there are {:?}",
        recovery.display(),
        files_under(&recovery)
    );
    let name = recovered[0]
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let log = mount.log_text();
    assert!(log.contains(&name), "the log names {name}:\n{log}");
    // Never closed: never uploaded.
    assert_ne!(prefix.get("open.txt").as_deref(), Some(&payload[..]));
}

#[test]
fn an_upload_refused_by_s3_fails_close_and_is_retried_by_the_next_mount() {
    let prefix = TestPrefix::new("w-refused");
    let cache = CacheDir::new();
    let (readonly_id, readonly_secret) = settings().readonly_key();
    let mut mount = Mount::start_with(&[&prefix.source()], &cache.options(), |command| {
        command
            .env("AWS_ACCESS_KEY_ID", readonly_id)
            .env("AWS_SECRET_ACCESS_KEY", readonly_secret);
    });
    let closed_data = pseudo_random(9, 100 * KIB);
    let synced_data = pseudo_random(10, 10 * MIB + 1);
    let upload_error = |what: &str, result: io::Result<()>| match result {
        Ok(()) => panic!("{what} succeeded with a key that cannot write"),
        Err(error) => assert!(
            matches!(error.raw_os_error(), Some(libc::EIO) | Some(libc::EACCES)),
            "{what}: {error}, expected EIO or EACCES"
        ),
    };

    // One file only closed, one fsynced (then closed): both must report the failure.
    let mut file = File::create(mount.join("closed.bin")).expect("creating closed.bin");
    file.write_all(&closed_data).expect("writing closed.bin");
    upload_error("close of closed.bin", close(file));
    let mut file = File::create(mount.join("synced.bin")).expect("creating synced.bin");
    file.write_all(&synced_data).expect("writing synced.bin");
    upload_error("fsync of synced.bin", file.sync_all());
    upload_error("close of synced.bin after a failed fsync", close(file));
    assert_no_object(&prefix, "closed.bin");
    assert_no_object(&prefix, "synced.bin");
    mount.unmount_and_wait_for_exit();
    drop(mount);

    // Nothing lost: the next mount of the same cache, with a key that can write, uploads both.
    let mount = Mount::start(&[&prefix.source()], &cache.options());
    assert_object(&prefix, "closed.bin", &closed_data);
    assert_object(&prefix, "synced.bin", &synced_data);
    assert_same_bytes(&read_file(&mount.join("closed.bin")), &closed_data, "closed.bin");
}

// ---------------------------------------------------------------------------------------------
// Tools and usage patterns

#[test]
fn cp_r_of_a_tree_survives_remount() {
    let prefix = TestPrefix::new("w-cp");
    let local = make_local_tree();
    let mount = Mount::start(&[&prefix.source()], &[]);
    run_tool(
        Command::new("cp")
            .arg("-r")
            .arg(local.path())
            .arg(mount.join("dst")),
    );
    assert_same_tree(&mount.join("dst"), local.path());

    let mount = remount(mount, &prefix);
    assert_same_tree(&mount.join("dst"), local.path());
    assert_bucket_holds_tree(&prefix, "dst", local.path());
}

#[test]
fn tar_x_into_the_mount_survives_remount() {
    let prefix = TestPrefix::new("w-tar");
    let local = make_local_tree();
    let archive_dir = TempDir::new().expect("a directory for the archive");
    let archive = archive_dir.path().join("tree.tar");
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(local.path())
            .arg("."),
    );
    let mount = Mount::start(&[&prefix.source()], &[]);
    std::fs::create_dir(mount.join("dst")).expect("mkdir dst");
    run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(mount.join("dst")),
    );
    assert_same_tree(&mount.join("dst"), local.path());

    let mount = remount(mount, &prefix);
    assert_same_tree(&mount.join("dst"), local.path());
    assert_bucket_holds_tree(&prefix, "dst", local.path());
}

#[test]
fn rsync_a_into_the_mount_survives_remount() {
    // Fails loudly rather than skip: scripts/test installs the `rsync` package.
    let version = Command::new("rsync").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "rsync is missing: apt-get install rsync"
    );
    let prefix = TestPrefix::new("w-rsync");
    let local = make_local_tree();
    let mount = Mount::start(&[&prefix.source()], &[]);
    // rsync writes each file as a temporary `.name.XXXXXX` and renames it into place.
    let mut source = local.path().as_os_str().to_owned();
    source.push("/");
    run_tool(
        Command::new("rsync")
            .arg("-a")
            .arg(&source)
            .arg(mount.join("dst")),
    );
    assert_same_tree(&mount.join("dst"), local.path());

    let mount = remount(mount, &prefix);
    assert_same_tree(&mount.join("dst"), local.path());
    assert_bucket_holds_tree(&prefix, "dst", local.path());
}

#[test]
fn editor_save_by_rename_survives_remount() {
    let prefix = TestPrefix::new("w-editor");
    prefix.put("f.txt", b"version 1\n".to_vec());
    let mount = Mount::start(&[&prefix.source()], &[]);
    // What editors do: write a temporary file, fsync it, rename it over the original.
    let mut file = File::create(mount.join("f.txt.tmp")).expect("creating f.txt.tmp");
    file.write_all(b"version 2, saved by an editor\n")
        .expect("writing f.txt.tmp");
    file.sync_all().expect("fsync f.txt.tmp");
    close(file).expect("close f.txt.tmp");
    std::fs::rename(mount.join("f.txt.tmp"), mount.join("f.txt")).expect("rename over f.txt");
    assert_eq!(names(mount.path()), ["f.txt"]);

    let mount = remount(mount, &prefix);
    assert_eq!(names(mount.path()), ["f.txt"]);
    assert_same_bytes(
        &read_file(&mount.join("f.txt")),
        b"version 2, saved by an editor\n",
        "f.txt after remount",
    );
    assert_eq!(keys(&prefix), ["f.txt"]);
}

#[test]
fn one_gib_file_reads_back_intact_after_remount() {
    // Compared chunk by chunk against regenerated data rather than hashed: sha2 in the
    // unoptimised test build hashes at ~30 MB/s, which would dominate this test.
    const CHUNK: usize = 8 * MIB;
    const CHUNKS: usize = 128;
    let chunk = |i: usize| pseudo_random(10_000 + i as u64, CHUNK);
    let prefix = TestPrefix::new("w-1gib");
    let mount = Mount::start(&[&prefix.source()], &[]);
    let dd = DdWriter::start(&mount.join("big.bin"), (0..CHUNKS).map(chunk));
    dd.finish()
        .unwrap_or_else(|e| panic!("writing 1 GiB (close is the upload): {e}"));
    let head = prefix.head("big.bin").expect("big.bin is in the bucket");
    assert_eq!(head.size, (CHUNK * CHUNKS) as u64, "size in the bucket");

    let mount = remount(mount, &prefix);
    let mut file = File::open(mount.join("big.bin")).expect("opening big.bin after remount");
    let mut buffer = vec![0; CHUNK];
    for i in 0..CHUNKS {
        file.read_exact(&mut buffer)
            .unwrap_or_else(|e| panic!("reading chunk {i}: {e}"));
        assert_same_bytes(&buffer, &chunk(i), &format!("chunk {i} of big.bin"));
    }
    assert_eq!(
        file.read(&mut buffer).expect("reading at the end"),
        0,
        "nothing past 1 GiB"
    );
}
