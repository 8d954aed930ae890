//! Reference-model property tests of the write path: random sequences of what a user does through
//! the mount (create, open with `O_TRUNC`/`O_APPEND`, write, read, truncate, flush, fsync, close,
//! unlink, mkdir, rmdir, rename of files and directories with and without `RENAME_NOREPLACE`, and
//! remounting the same staging directory), run on `S3Fs` over `MemoryClient` and checked after
//! every step against a model written from POSIX and the write-back rules, not from `src/fs`.
//!
//! The model keeps what each file holds (a file keeps its identity while open handles survive an
//! unlink or a replacing rename), the directories, and the bucket. After every step the whole tree
//! the mount shows (names, kinds, sizes) must equal the model, and so must every object in the
//! bucket: content reaches S3 at flush, fsync and the last close, whole, never in part; a name
//! that is gone on the mount is gone from the bucket; and whenever no handle is open, the bucket is
//! exactly the tree. Where the product may legitimately do either of two things (a renamed file
//! being written may be uploaded before the rename or after), the step lists what it may leave
//! and the model adopts what it finds. Contents are read back through open handles, in
//! `CheckContents` steps and after every remount. Parts are 5 MiB, S3's minimum; half the cases
//! start from a bucket holding a file larger than a part, and some writes land past 5 MiB, so
//! multipart uploads and server-side copies of the untouched parts of a reopened large file are
//! exercised too. Flushes also fail (S3 unreachable) and the mount ends three ways: every handle
//! released, `drain_uploads` with handles open (SIGTERM), and a crash, after which only files
//! whose close had begun may reach S3. Half the cases use a long metadata TTL, so the mount must
//! keep its own cache right through its own changes.
//!
//! Then: focused failure-injection tests (a failed part, a failed close retried in the
//! background, a failed close uploaded by the next mount), and product bugs the model found,
//! each shrunk to a named test (a regression test once the bug is fixed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use s3mount::fs::inode::ROOT_INO;
use s3mount::fs::names::RootPrefix;
use s3mount::fs::{Attr, DirEntry, FsConfig, FsError, Kind, PosixMetadata, S3Fs};
use s3mount::object::ObjectError;
use s3mount::object::Op;
use s3mount::object::fault::FaultClient;
use s3mount::object::memory::MemoryClient;

/// The in-memory bucket behind a fault wrapper: the tests inject faults.
type Bucket = FaultClient<MemoryClient>;
use s3mount::prefetch::ReadAheadConfig;
use s3mount::staging::Staging;
use s3mount::upload::UploadConfig;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// S3's smallest part, and the mount's part size here: a file past it goes up in parts.
const PART: u64 = 5 * MIB;
/// Few names, so steps collide (create over an existing name, rename onto one, rmdir a parent).
const NAMES: &[&str] = &["a", "b", "c"];
/// Handles open at once; opens beyond are skipped.
const MAX_HANDLES: usize = 3;
const RENAME_NOREPLACE: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Steps

/// A position or size, relative to the start or to the current end of the file, so writes and
/// truncates land around block (1 MiB) and part (5 MiB) boundaries and around the end.
#[derive(Clone, Copy, Debug)]
enum Pos {
    At(u64),
    FromEnd(i64),
}

impl Pos {
    fn resolve(self, len: usize) -> u64 {
        match self {
            Pos::At(at) => at,
            Pos::FromEnd(delta) => (len as i64 + delta).max(0) as u64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn flags(self) -> i32 {
        match self {
            Access::Read => libc::O_RDONLY,
            Access::Write => libc::O_WRONLY,
            Access::ReadWrite => libc::O_RDWR,
        }
    }

    fn readable(self) -> bool {
        self != Access::Write
    }

    fn writable(self) -> bool {
        self != Access::Read
    }
}

/// How a mount ends before the next one starts on the same staging directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unmount {
    /// The kernel releases every handle (each last close uploads), as at umount.
    Release,
    /// `drain_uploads` with handles still open, as on SIGTERM.
    Drain,
    /// The daemon dies (kill -9): no release, no drain.
    Crash,
}

#[derive(Clone, Debug)]
enum Step {
    /// open(2) with O_CREAT (and O_EXCL): `S3Fs::create`.
    Create {
        path: Target,
        access: Access,
        exclusive: bool,
        truncate: bool,
        append: bool,
    },
    /// open(2) of an existing file.
    Open {
        path: Target,
        access: Access,
        truncate: bool,
        append: bool,
    },
    Write {
        handle: usize,
        at: Pos,
        len: usize,
        seed: u8,
    },
    Read {
        handle: usize,
        at: Pos,
        len: u32,
    },
    /// ftruncate(2) through a handle.
    Ftruncate {
        handle: usize,
        size: Pos,
    },
    /// truncate(2) by path.
    Truncate {
        path: Target,
        size: Pos,
    },
    Flush {
        handle: usize,
    },
    Fsync {
        handle: usize,
    },
    /// A flush while S3 cannot be reached: it fails (EIO) or has nothing to send, changes nothing
    /// in S3, and leaves the data staged for a later close.
    FailedFlush {
        handle: usize,
    },
    /// close(2) (flush, then release), or a release alone (the last reference going away
    /// without a flush, as after a dup'd descriptor was already flushed).
    Close {
        handle: usize,
        flush: bool,
    },
    Unlink {
        path: Target,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: Target,
    },
    Rename {
        from: Target,
        to: Target,
        noreplace: bool,
    },
    /// The mount ends (see [`Unmount`]) and a new one starts on the same staging directory and
    /// runs `recover`.
    Remount {
        how: Unmount,
    },
    /// Reads every file whole through a fresh handle.
    CheckContents,
}

/// A path named outright, or the n-th (modulo their count) file or directory the model holds, so
/// steps often find something to act on.
#[derive(Clone, Debug)]
enum Target {
    Path(String),
    Existing(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        path().prop_map(Target::Path),
        (0usize..8).prop_map(Target::Existing)
    ]
}

/// Mostly top-level names: a deeper one needs its parent made first.
fn path() -> impl Strategy<Value = String> {
    let name = || prop::sample::select(NAMES);
    prop_oneof![
        3 => name().prop_map(str::to_owned),
        2 => (name(), name()).prop_map(|(dir, name)| format!("{dir}/{name}")),
    ]
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        6 => (0u64..300).prop_map(Pos::At),
        4 => (-100i64..100).prop_map(Pos::FromEnd),
        1 => (MIB - 64..MIB + 64).prop_map(Pos::At),
        2 => (PART - 64..PART + 64).prop_map(Pos::At),
    ]
}

fn size() -> impl Strategy<Value = Pos> {
    prop_oneof![1 => Just(Pos::At(0)), 5 => pos()]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Read), Just(Access::Write), Just(Access::ReadWrite)]
}

fn step() -> impl Strategy<Value = Step> {
    let writer = prop_oneof![Just(Access::Write), Just(Access::ReadWrite)];
    prop_oneof![
        5 => (target(), writer, prop::bool::weighted(0.25), prop::bool::weighted(0.2), prop::bool::weighted(0.2)).prop_map(
            |(path, access, exclusive, truncate, append)| Step::Create { path, access, exclusive, truncate, append }
        ),
        4 => (target(), access(), prop::bool::weighted(0.15), prop::bool::weighted(0.3)).prop_map(
            |(path, access, truncate, append)| Step::Open { path, access, truncate, append }
        ),
        12 => (0usize..6, pos(), prop_oneof![8 => 0usize..200, 1 => 1000usize..3000], any::<u8>())
            .prop_map(|(handle, at, len, seed)| Step::Write { handle, at, len, seed }),
        3 => (0usize..6, pos(), 0u32..400).prop_map(|(handle, at, len)| Step::Read { handle, at, len }),
        1 => (0usize..6, size()).prop_map(|(handle, size)| Step::Ftruncate { handle, size }),
        1 => (target(), size()).prop_map(|(path, size)| Step::Truncate { path, size }),
        1 => (0usize..6).prop_map(|handle| Step::Flush { handle }),
        1 => (0usize..6).prop_map(|handle| Step::Fsync { handle }),
        1 => (0usize..6).prop_map(|handle| Step::FailedFlush { handle }),
        3 => (0usize..6, prop::bool::weighted(0.8)).prop_map(|(handle, flush)| Step::Close { handle, flush }),
        2 => target().prop_map(|path| Step::Unlink { path }),
        2 => path().prop_map(|path| Step::Mkdir { path }),
        1 => target().prop_map(|path| Step::Rmdir { path }),
        3 => (target(), target(), any::<bool>()).prop_map(|(from, to, noreplace)| Step::Rename { from, to, noreplace }),
        1 => prop_oneof![Just(Unmount::Release), Just(Unmount::Drain), Just(Unmount::Crash)]
            .prop_map(|how| Step::Remount { how }),
        1 => Just(Step::CheckContents),
    ]
}

/// Bytes of a write: never zero, so a hole (zeros) never passes for written data.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((usize::from(seed) * 131 + i * 7) % 251) as u8 + 1)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The model

type NodeId = usize;

/// A file's content. It keeps its identity across renames, and outlives its name while handles
/// on it are open (an unlinked file is still read and written through them).
struct Node {
    content: Vec<u8>,
    /// Handles on the staged copy (all but read-only opens of a file nobody is writing).
    staged: usize,
    /// A flush failed since the last upload: the next mount uploads it even after a crash.
    closing: bool,
}

#[derive(Clone, Debug)]
enum View {
    /// Sees the staged file: every write on this mount at once.
    Staged,
    /// A read-only open of a file nobody was writing: the object as it was at open
    /// (close-to-open). Once S3 may have changed at its key, or the file was opened for writing,
    /// a read may instead fail (ESTALE, or ENOENT once the key is gone), as NFS does after a
    /// replace.
    Snapshot {
        key: String,
        content: Bytes,
        stale: bool,
    },
}

struct OpenHandle {
    fh: u64,
    ino: u64,
    node: NodeId,
    access: Access,
    append: bool,
    view: View,
}

/// Outcomes a step may leave at some keys: each key listed may hold any of its values afterwards
/// (`None`: absent). Keys not listed must be unchanged.
#[derive(Default)]
struct Expect(BTreeMap<String, Vec<Option<Bytes>>>);

impl Expect {
    fn set(&mut self, key: &str, value: Option<Bytes>) {
        self.0.insert(key.to_owned(), vec![value]);
    }

    fn any_of(&mut self, key: &str, values: Vec<Option<Bytes>>) {
        self.0.insert(key.to_owned(), values);
    }
}

#[derive(Default)]
struct Model {
    files: BTreeMap<String, NodeId>,
    dirs: BTreeSet<String>,
    nodes: HashMap<NodeId, Node>,
    next_node: NodeId,
    /// The bucket, as last observed (every observation checked against expectations first).
    s3: BTreeMap<String, Bytes>,
    handles: Vec<OpenHandle>,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn marker(dir: &str) -> String {
    format!("{dir}/")
}

fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

impl Model {
    fn kind(&self, path: &str) -> Option<Kind> {
        if path.is_empty() || self.dirs.contains(path) {
            Some(Kind::Dir)
        } else if self.files.contains_key(path) {
            Some(Kind::File)
        } else {
            None
        }
    }

    /// What a walk from the root finds at `path`, as the kernel would report it.
    fn walk(&self, path: &str) -> Result<Kind, i32> {
        if path.is_empty() {
            return Ok(Kind::Dir);
        }
        let mut at = String::new();
        for name in path.split('/') {
            if self.kind(&at) == Some(Kind::File) {
                return Err(libc::ENOTDIR);
            }
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
            if self.kind(&at).is_none() {
                return Err(libc::ENOENT);
            }
        }
        Ok(self.kind(path).unwrap())
    }

    fn children(&self, dir: &str) -> BTreeMap<String, Kind> {
        let files = self.files.keys().map(|path| (path, Kind::File));
        let dirs = self.dirs.iter().map(|path| (path, Kind::Dir));
        files
            .chain(dirs)
            .filter(|(path, _)| split(path).0 == dir)
            .map(|(path, kind)| (split(path).1.to_owned(), kind))
            .collect()
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        !self
            .files
            .keys()
            .chain(self.dirs.iter())
            .any(|path| is_under(path, dir))
    }

    fn content(&self, node: NodeId) -> &Vec<u8> {
        &self.nodes[&node].content
    }

    fn content_mut(&mut self, node: NodeId) -> &mut Vec<u8> {
        &mut self.nodes.get_mut(&node).unwrap().content
    }

    fn path_of(&self, node: NodeId) -> Option<&str> {
        self.files
            .iter()
            .find(|(_, n)| **n == node)
            .map(|(path, _)| path.as_str())
    }

    fn new_node(&mut self, content: Vec<u8>) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(
            id,
            Node {
                content,
                staged: 0,
                closing: false,
            },
        );
        id
    }

    /// `node` was uploaded (or had nothing to upload): S3 holds its content at its key, if it
    /// still has a name.
    fn flushed_node(&mut self, node: NodeId, expect: &mut Expect) {
        if let Some(path) = self.path_of(node) {
            expect.set(path, Some(Bytes::from(self.content(node).clone())));
            self.nodes.get_mut(&node).unwrap().closing = false;
        }
    }

    /// After a crash: the files are what S3 holds.
    fn rebuild_from_s3(&mut self) {
        self.files.clear();
        self.dirs.clear();
        self.nodes.clear();
        for (key, body) in self.s3.clone() {
            match key.strip_suffix('/') {
                Some(dir) => {
                    self.dirs.insert(dir.to_owned());
                }
                None => {
                    let node = self.new_node(body.to_vec());
                    self.files.insert(key, node);
                }
            }
        }
    }

    /// Reads through a snapshot of `key` may now fail: S3 may have changed there.
    fn mark_stale(&mut self, changed: impl Fn(&str) -> bool) {
        for handle in &mut self.handles {
            if let View::Snapshot { key, stale, .. } = &mut handle.view
                && changed(key)
            {
                *stale = true;
            }
        }
    }

    /// Opening `node` for writing makes its older read-only handles stale: the kernel's pages of
    /// the inode follow the staged file from then on, and those handles must not mix theirs in.
    fn mark_node_stale(&mut self, node: NodeId) {
        for handle in &mut self.handles {
            if let View::Snapshot { stale, .. } = &mut handle.view
                && handle.node == node
            {
                *stale = true;
            }
        }
    }

    /// Drops nodes nothing refers to any more.
    fn collect_garbage(&mut self) {
        let live: BTreeSet<NodeId> = self
            .files
            .values()
            .copied()
            .chain(self.handles.iter().map(|h| h.node))
            .collect();
        self.nodes.retain(|id, _| live.contains(id));
    }
}

// ---------------------------------------------------------------------------------------------
// The harness

fn config(metadata_ttl: Duration) -> FsConfig {
    FsConfig {
        root: RootPrefix::new("").unwrap(),
        uid: 0,
        gid: 0,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl,
        read_only: false,
        // Tiny pages, so listings that merge staged files with S3's pages cross page boundaries.
        list_page_size: Some(2),
        read_ahead: ReadAheadConfig { part_size: MIB },
        read_ahead_memory: 16 * MIB,
        upload: UploadConfig {
            part_size: PART,
            concurrency: 2,
        },
        upload_memory: 32 * MIB,
        max_rename_keys: 100,
        posix_metadata: PosixMetadata::Lazy,
        write: Default::default(),
    }
}

fn errno<T>(result: Result<T, FsError>) -> Result<T, i32> {
    result.map_err(|error| error.errno())
}

/// Compares contents without dumping megabytes into the failure message.
fn assert_same(what: &str, got: &[u8], expected: &[u8]) {
    if got != expected {
        let first_diff = got.iter().zip(expected).position(|(g, e)| g != e);
        panic!(
            "{what}: got {} bytes, expected {} (first difference at {first_diff:?})",
            got.len(),
            expected.len()
        );
    }
}

fn describe(value: Option<&Bytes>) -> String {
    match value {
        None => "absent".to_owned(),
        Some(body) if body.len() <= 16 => format!("{body:?}"),
        Some(body) => format!("{} bytes starting {:?}", body.len(), &body[..16]),
    }
}

async fn list(fs: &S3Fs, ino: u64) -> BTreeMap<String, Kind> {
    let handle = fs.opendir(ino).await.expect("opendir");
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        // A small reply buffer, as the kernel's, so readdir resumes from offsets.
        let mut batch = Vec::new();
        let mut add = |entry: DirEntry| {
            if batch.len() == 3 {
                return true;
            }
            batch.push(entry);
            false
        };
        fs.readdir(ino, handle, offset, &mut add).await.expect("readdir");
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        names.extend(batch.into_iter().map(|entry| (entry.name, entry.kind)));
    }
    fs.releasedir(handle);
    let unique: BTreeSet<_> = names.iter().map(|(name, _)| name).collect();
    assert_eq!(unique.len(), names.len(), "duplicate names in {names:?}");
    names
        .into_iter()
        .filter(|(name, _)| name != "." && name != "..")
        .collect()
}

struct Harness {
    client: Arc<Bucket>,
    cache_dir: TempDir,
    config: FsConfig,
    /// `None` only while remounting: the staging lock must be free before the next mount.
    fs: Option<S3Fs>,
    model: Model,
}

impl Harness {
    /// A mount on a bucket that is empty, or (`preset`) already holds a file larger than a part
    /// and a directory with a small file, as a bucket in use would.
    fn new(metadata_ttl: Duration, preset: bool) -> Self {
        let client = Arc::new(Bucket::memory("write-model"));
        let mut model = Model::default();
        if preset {
            let objects = [
                ("a", pattern(1, (PART + 1000) as usize)),
                ("b/", Vec::new()),
                ("b/c", b"hello".to_vec()),
            ];
            for (key, body) in objects {
                client.put_object(key, body.clone());
                model.s3.insert(key.to_owned(), Bytes::from(body.clone()));
                match key.strip_suffix('/') {
                    Some(dir) => {
                        model.dirs.insert(dir.to_owned());
                    }
                    None => {
                        let node = model.new_node(body);
                        model.files.insert(key.to_owned(), node);
                    }
                }
            }
        }
        let cache_dir = TempDir::new().unwrap();
        let config = config(metadata_ttl);
        let staging = Staging::open(cache_dir.path()).unwrap();
        let fs = S3Fs::new(client.clone(), config.clone(), None, Some(staging));
        Self {
            client,
            cache_dir,
            config,
            fs: Some(fs),
            model,
        }
    }

    fn fs(&self) -> &S3Fs {
        self.fs.as_ref().unwrap()
    }

    /// Looks `path` up from the root as the kernel does (no lookup under a file), checking
    /// what it finds against the model. Returns the attributes found.
    async fn walk(&self, path: &str) -> Result<Attr, i32> {
        let mut attr = self.fs().getattr(ROOT_INO).await.expect("getattr of the root");
        if !path.is_empty() {
            for name in path.split('/') {
                if attr.kind == Kind::File {
                    return self.checked_walk(path, Err(libc::ENOTDIR));
                }
                match errno(self.fs().lookup(attr.ino, OsStr::new(name)).await) {
                    Ok(found) => attr = found,
                    Err(code) => return self.checked_walk(path, Err(code)),
                }
            }
        }
        self.checked_walk(path, Ok(attr))
    }

    fn checked_walk(&self, path: &str, found: Result<Attr, i32>) -> Result<Attr, i32> {
        let got = found.as_ref().map(|attr| attr.kind).map_err(|&code| code);
        assert_eq!(got, self.model.walk(path), "walk to {path:?}");
        if let Ok(attr) = &found
            && attr.kind == Kind::File
        {
            let expected = self.model.content(self.model.files[path]).len();
            assert_eq!(attr.size, expected as u64, "size of {path:?}");
        }
        found
    }

    /// The parent directory's inode, or `None` when the kernel would fail the call before
    /// sending it (the parent is missing or a file): the walk has checked that against the model.
    async fn parent(&self, path: &str) -> Option<u64> {
        match self.walk(split(path).0).await {
            Ok(attr) if attr.kind == Kind::Dir => Some(attr.ino),
            _ => None,
        }
    }

    fn resolve(&self, target: &Target) -> String {
        match target {
            Target::Path(path) => path.clone(),
            Target::Existing(n) => {
                let all: BTreeSet<&String> = self.model.files.keys().chain(&self.model.dirs).collect();
                let count = all.len().max(1);
                all.into_iter()
                    .nth(n % count)
                    .map_or_else(|| NAMES[0].to_owned(), String::clone)
            }
        }
    }

    fn handle(&self, index: &usize) -> Option<usize> {
        (!self.model.handles.is_empty()).then(|| index % self.model.handles.len())
    }

    async fn apply(&mut self, step: &Step) {
        let mut expect = Expect::default();
        match step {
            Step::Create {
                path,
                access,
                exclusive,
                truncate,
                append,
            } => {
                self.create(&self.resolve(path), *access, *exclusive, *truncate, *append)
                    .await
            }
            Step::Open {
                path,
                access,
                truncate,
                append,
            } => self.open(&self.resolve(path), *access, *truncate, *append).await,
            Step::Write {
                handle,
                at,
                len,
                seed,
            } => self.write(handle, *at, *len, *seed).await,
            Step::Read { handle, at, len } => self.read(handle, *at, *len).await,
            Step::Ftruncate { handle, size } => self.ftruncate(handle, *size).await,
            Step::Truncate { path, size } => self.truncate(&self.resolve(path), *size, &mut expect).await,
            Step::Flush { handle } | Step::Fsync { handle } => {
                if let Some(i) = self.handle(handle) {
                    let fh = self.model.handles[i].fh;
                    let flushed = match step {
                        Step::Fsync { .. } => self.fs().fsync(fh).await,
                        _ => self.fs().flush(fh).await,
                    };
                    assert_eq!(errno(flushed), Ok(()), "{step:?}");
                    self.flushed(i, &mut expect);
                }
            }
            Step::FailedFlush { handle } => {
                if let Some(i) = self.handle(handle) {
                    self.client.set_unreachable(true);
                    let flushed = errno(self.fs().flush(self.model.handles[i].fh).await);
                    self.client.set_unreachable(false);
                    if flushed.is_err() {
                        let node = self.model.handles[i].node;
                        self.model.nodes.get_mut(&node).unwrap().closing = true;
                    }
                    assert!(
                        matches!(flushed, Ok(()) | Err(libc::EIO)),
                        "flush with S3 unreachable: {flushed:?}"
                    );
                }
            }
            Step::Close { handle, flush } => self.close(handle, *flush, &mut expect).await,
            Step::Unlink { path } => self.unlink(&self.resolve(path), &mut expect).await,
            Step::Mkdir { path } => self.mkdir(path, &mut expect).await,
            Step::Rmdir { path } => self.rmdir(&self.resolve(path), &mut expect).await,
            Step::Rename { from, to, noreplace } => {
                let (from, to) = (self.resolve(from), self.resolve(to));
                self.rename(&from, &to, *noreplace, &mut expect).await
            }
            Step::Remount { how } => {
                self.remount(*how).await;
                return;
            }
            Step::CheckContents => self.check_contents().await,
        }
        self.check_s3(expect);
        self.check_tree().await;
    }

    async fn create(&mut self, path: &str, access: Access, exclusive: bool, truncate: bool, append: bool) {
        if self.model.handles.len() >= MAX_HANDLES {
            return;
        }
        let Some(parent) = self.parent(path).await else {
            return;
        };
        let mut flags = access.flags() | libc::O_CREAT;
        for (wanted, flag) in [
            (exclusive, libc::O_EXCL),
            (truncate, libc::O_TRUNC),
            (append, libc::O_APPEND),
        ] {
            if wanted {
                flags |= flag;
            }
        }
        let created = errno(self.fs().create(parent, OsStr::new(split(path).1), flags).await);
        let node = match self.model.kind(path) {
            Some(_) if exclusive => return assert_eq!(created.err(), Some(libc::EEXIST), "create {path:?}"),
            Some(Kind::Dir) => return assert_eq!(created.err(), Some(libc::EISDIR), "create {path:?}"),
            Some(Kind::File | Kind::Symlink) => self.model.files[path],
            None => {
                let node = self.model.new_node(Vec::new());
                self.model.files.insert(path.to_owned(), node);
                node
            }
        };
        let (attr, opened) = created.unwrap_or_else(|code| panic!("create {path:?}: errno {code}"));
        self.opened(node, attr.ino, opened.handle, access, truncate, append);
        let size = self.model.content(node).len() as u64;
        assert_eq!(
            (attr.kind, attr.size),
            (Kind::File, size),
            "attributes from create {path:?}"
        );
    }

    async fn open(&mut self, path: &str, access: Access, truncate: bool, append: bool) {
        if self.model.handles.len() >= MAX_HANDLES {
            return;
        }
        let attr = match self.walk(path).await {
            Ok(attr) if attr.kind == Kind::File => attr,
            // The kernel answers these itself (ENOENT, ENOTDIR; EISDIR or opendir).
            _ => return,
        };
        // O_TRUNC with O_RDONLY is undefined; only writers ask for it here.
        let truncate = truncate && access.writable();
        let mut flags = access.flags();
        if truncate {
            flags |= libc::O_TRUNC;
        }
        if append {
            flags |= libc::O_APPEND;
        }
        let opened = errno(self.fs().open(attr.ino, flags).await)
            .unwrap_or_else(|code| panic!("open {path:?}: {code}"));
        let node = self.model.files[path];
        self.opened(node, attr.ino, opened.handle, access, truncate, append);
    }

    /// Records a handle the product opened on `node`.
    fn opened(&mut self, node: NodeId, ino: u64, fh: u64, access: Access, truncate: bool, append: bool) {
        let n = self.model.nodes.get_mut(&node).unwrap();
        let view = if access.writable() || n.staged > 0 {
            n.staged += 1;
            if truncate {
                n.content.clear();
            }
            self.model.mark_node_stale(node);
            View::Staged
        } else {
            let key = self.model.path_of(node).unwrap().to_owned();
            let content = Bytes::from(self.model.content(node).clone());
            View::Snapshot {
                key,
                content,
                stale: false,
            }
        };
        self.model.handles.push(OpenHandle {
            fh,
            ino,
            node,
            access,
            append,
            view,
        });
    }

    async fn write(&mut self, index: &usize, at: Pos, len: usize, seed: u8) {
        let Some(i) = self.handle(index) else { return };
        let h = &self.model.handles[i];
        let (fh, node, append, writable) = (h.fh, h.node, h.append, h.access.writable());
        let offset = at.resolve(self.model.content(node).len());
        let data = pattern(seed, len);
        let written = errno(self.fs().write(fh, offset, &data).await);
        if !writable {
            // The kernel never sends these; the handle refuses them all the same.
            assert_eq!(written, Err(libc::EBADF), "write through a read-only handle");
            return;
        }
        assert_eq!(written, Ok(len as u32), "write of {len} at {offset}");
        if len == 0 {
            return; // A write of nothing does not extend the file.
        }
        let content = self.model.content_mut(node);
        let offset = if append { content.len() } else { offset as usize };
        if content.len() < offset + len {
            content.resize(offset + len, 0);
        }
        content[offset..offset + len].copy_from_slice(&data);
    }

    async fn read(&mut self, index: &usize, at: Pos, len: u32) {
        let Some(i) = self.handle(index) else { return };
        let h = &self.model.handles[i];
        if !h.access.readable() {
            return; // The kernel refuses reads on a write-only descriptor.
        }
        let (fh, view) = (h.fh, h.view.clone());
        let (content, stale) = match &view {
            View::Staged => (self.model.content(h.node).as_slice(), false),
            View::Snapshot { content, stale, .. } => (&content[..], *stale),
        };
        let offset = at.resolve(content.len());
        let start = (offset as usize).min(content.len());
        let end = (start + len as usize).min(content.len());
        match errno(self.fs().read(fh, offset, len).await) {
            Ok(data) => assert_same(
                &format!("read of {len} at {offset} ({view:?})"),
                &data,
                &content[start..end],
            ),
            Err(code) if stale && (code == libc::ESTALE || code == libc::ENOENT) => {}
            Err(code) => panic!("read of {len} at {offset}: errno {code}"),
        }
    }

    async fn ftruncate(&mut self, index: &usize, size: Pos) {
        let Some(i) = self.handle(index) else { return };
        let h = &self.model.handles[i];
        if !h.access.writable() {
            return; // The kernel refuses ftruncate on a descriptor not open for writing.
        }
        let (fh, ino, node) = (h.fh, h.ino, h.node);
        let size = size.resolve(self.model.content(node).len());
        let attr = errno(self.fs().setattr(ino, Some(size), Some(fh)).await);
        self.model.content_mut(node).resize(size as usize, 0);
        assert_eq!(attr.map(|a| a.size), Ok(size), "ftruncate to {size}");
    }

    async fn truncate(&mut self, path: &str, size: Pos, expect: &mut Expect) {
        let attr = match self.walk(path).await {
            Ok(attr) if attr.kind == Kind::File => attr,
            _ => return,
        };
        let node = self.model.files[path];
        let size = size.resolve(self.model.content(node).len());
        let truncated = errno(self.fs().setattr(attr.ino, Some(size), None).await);
        assert_eq!(truncated.map(|a| a.size), Ok(size), "truncate {path:?} to {size}");
        // It opens the file for writing, as a writer would.
        self.model.mark_node_stale(node);
        self.model.content_mut(node).resize(size as usize, 0);
        // By path there is no descriptor to close later: the change is uploaded at once.
        self.model.flushed_node(node, expect);
    }

    /// A successful flush or fsync of handle `i`: S3 holds the file's content, whole.
    fn flushed(&mut self, i: usize, expect: &mut Expect) {
        let h = &self.model.handles[i];
        if let View::Staged = h.view {
            self.model.flushed_node(h.node, expect);
        }
    }

    async fn close(&mut self, index: &usize, flush: bool, expect: &mut Expect) {
        let Some(i) = self.handle(index) else { return };
        let fh = self.model.handles[i].fh;
        if flush {
            assert_eq!(errno(self.fs().flush(fh).await), Ok(()), "flush at close");
            self.flushed(i, expect);
        }
        self.fs().release(fh).await;
        let h = self.model.handles.remove(i);
        if let View::Staged = h.view {
            let n = self.model.nodes.get_mut(&h.node).unwrap();
            n.staged -= 1;
            if n.staged == 0 {
                // The last close uploads whatever is not in S3 yet.
                self.model.flushed_node(h.node, expect);
            }
        }
        self.model.collect_garbage();
    }

    async fn unlink(&mut self, path: &str, expect: &mut Expect) {
        let Some(parent) = self.parent(path).await else {
            return;
        };
        let unlinked = errno(self.fs().unlink(parent, OsStr::new(split(path).1)).await);
        match self.model.kind(path) {
            None => assert_eq!(unlinked, Err(libc::ENOENT), "unlink {path:?}"),
            Some(Kind::Dir) => assert_eq!(unlinked, Err(libc::EISDIR), "unlink {path:?}"),
            Some(Kind::File | Kind::Symlink) => {
                assert_eq!(unlinked, Ok(()), "unlink {path:?}");
                self.model.files.remove(path);
                expect.set(path, None);
                self.model.collect_garbage();
            }
        }
    }

    async fn mkdir(&mut self, path: &str, expect: &mut Expect) {
        let Some(parent) = self.parent(path).await else {
            return;
        };
        let made = errno(self.fs().mkdir(parent, OsStr::new(split(path).1)).await);
        if self.model.kind(path).is_some() {
            assert_eq!(made.err(), Some(libc::EEXIST), "mkdir {path:?}");
            return;
        }
        assert_eq!(made.map(|attr| attr.kind), Ok(Kind::Dir), "mkdir {path:?}");
        self.model.dirs.insert(path.to_owned());
        expect.set(&marker(path), Some(Bytes::new()));
    }

    async fn rmdir(&mut self, path: &str, expect: &mut Expect) {
        let Some(parent) = self.parent(path).await else {
            return;
        };
        let removed = errno(self.fs().rmdir(parent, OsStr::new(split(path).1)).await);
        match self.model.kind(path) {
            None => assert_eq!(removed, Err(libc::ENOENT), "rmdir {path:?}"),
            Some(Kind::File | Kind::Symlink) => assert_eq!(removed, Err(libc::ENOTDIR), "rmdir {path:?}"),
            Some(Kind::Dir) if !self.model.is_empty_dir(path) => {
                assert_eq!(removed, Err(libc::ENOTEMPTY), "rmdir {path:?}")
            }
            Some(Kind::Dir) => {
                assert_eq!(removed, Ok(()), "rmdir {path:?}");
                self.model.dirs.remove(path);
                expect.set(&marker(path), None);
            }
        }
    }

    async fn rename(&mut self, from: &str, to: &str, noreplace: bool, expect: &mut Expect) {
        // The kernel looks up both parents and the source before sending a rename.
        let (Some(from_parent), Some(to_parent)) = (self.parent(from).await, self.parent(to).await) else {
            return;
        };
        if self.walk(from).await.is_err() {
            return;
        }
        let flags = if noreplace { RENAME_NOREPLACE } else { 0 };
        let renamed = self
            .fs()
            .rename(
                from_parent,
                OsStr::new(split(from).1),
                to_parent,
                OsStr::new(split(to).1),
                flags,
            )
            .await;
        let renamed = errno(renamed);
        let what = format!("rename {from:?} -> {to:?} (flags {flags})");
        let source = self.model.kind(from).unwrap();
        let target = self.model.kind(to);
        let refused = if from == to {
            None
        } else if source == Kind::Dir && is_under(to, from) {
            Some(libc::EINVAL)
        } else if noreplace && target.is_some() {
            Some(libc::EEXIST)
        } else {
            match (source, target) {
                (Kind::File, Some(Kind::Dir)) => Some(libc::EISDIR),
                (Kind::Dir, Some(Kind::File)) => Some(libc::ENOTDIR),
                (Kind::Dir, Some(Kind::Dir)) if !self.model.is_empty_dir(to) => Some(libc::ENOTEMPTY),
                _ => None,
            }
        };
        if let Some(code) = refused {
            assert_eq!(renamed, Err(code), "{what}");
            return;
        }
        assert_eq!(renamed, Ok(()), "{what}");
        if from == to {
            return;
        }
        match source {
            Kind::File | Kind::Symlink => self.rename_file(from, to, expect),
            Kind::Dir => self.rename_dir(from, to, expect),
        }
        self.model.collect_garbage();
    }

    fn rename_file(&mut self, from: &str, to: &str, expect: &mut Expect) {
        let model = &mut self.model;
        let node = model.files.remove(from).unwrap();
        // A replaced target keeps living for its open handles, nameless.
        model.files.insert(to.to_owned(), node);
        expect.set(from, None);
        if model.nodes[&node].staged == 0 {
            expect.set(to, model.s3.get(from).cloned());
        } else {
            // Being written: it may go up now (and be copied), or at its close, leaving the target
            // key as it was until then. Either way the source key is gone.
            let content = Some(Bytes::from(model.content(node).clone()));
            expect.any_of(to, vec![content, model.s3.get(to).cloned()]);
        }
        model.mark_stale(|key| key == from || key == to);
    }

    fn rename_dir(&mut self, from: &str, to: &str, expect: &mut Expect) {
        let model = &mut self.model;
        let moved = |path: &str| format!("{to}{}", &path[from.len()..]);
        let prefix = marker(from);
        for (key, body) in model.s3.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            expect.set(key, None);
            expect.set(&moved(key), Some(body.clone()));
        }
        let files: Vec<(String, NodeId)> = model
            .files
            .iter()
            .filter(|(path, _)| is_under(path, from))
            .map(|(path, &node)| (path.clone(), node))
            .collect();
        for (path, node) in files {
            if model.nodes[&node].staged > 0 {
                // Being written: uploaded before the move, or left to its close.
                let content = Some(Bytes::from(model.content(node).clone()));
                expect.set(&path, None);
                expect.any_of(&moved(&path), vec![content, model.s3.get(&path).cloned()]);
            }
            model.files.remove(&path);
            model.files.insert(moved(&path), node);
        }
        let dirs: Vec<String> = model
            .dirs
            .iter()
            .filter(|dir| *dir == from || is_under(dir, from))
            .cloned()
            .collect();
        for dir in dirs {
            model.dirs.remove(&dir);
            model.dirs.insert(moved(&dir));
        }
        model.mark_stale(|key| key.starts_with(&prefix) || key == to || key.starts_with(&marker(to)));
    }

    /// Unmounts and mounts again on the same staging directory and bucket.
    async fn remount(&mut self, how: Unmount) {
        let handles = std::mem::take(&mut self.model.handles);
        let fs = self.fs.take().unwrap();
        let staged: BTreeSet<NodeId> = handles
            .iter()
            .filter(|h| matches!(h.view, View::Staged))
            .map(|h| h.node)
            .collect();
        match how {
            Unmount::Release => {
                for h in &handles {
                    fs.release(h.fh).await;
                }
            }
            Unmount::Drain => assert_eq!(fs.drain_uploads().await, 0, "uploads that failed at drain"),
            Unmount::Crash => {}
        }
        let mut expect = Expect::default();
        if how != Unmount::Crash {
            // Every file with a name is in S3 as the mount showed it.
            for &node in &staged {
                self.model.flushed_node(node, &mut expect);
            }
        }
        drop(fs);
        if how == Unmount::Crash {
            self.check_s3_no_rest(expect);
        } else {
            self.check_s3(expect);
        }

        let staging = Staging::open(self.cache_dir.path()).expect("the staging directory is free again");
        let fs = S3Fs::new(self.client.clone(), self.config.clone(), None, Some(staging));
        let report = fs.recover().await.expect("recover");
        self.fs = Some(fs);
        assert!(
            report.kept.is_empty(),
            "uploads that failed at recovery: {report:?}"
        );
        let mut expect = Expect::default();
        if how == Unmount::Crash {
            let closing: BTreeSet<&str> = staged
                .iter()
                .filter(|node| self.model.nodes[node].closing)
                .filter_map(|&node| self.model.path_of(node))
                .collect();
            for key in &report.uploaded {
                assert!(
                    closing.contains(key.as_str()),
                    "uploaded {key:?}, whose close never began: {report:?}"
                );
            }
            // A file whose close had begun (a flush failed since its last upload) goes up now; any
            // other change was never promised to S3 and is set aside in the recovery folder.
            for &node in &staged {
                let n = &self.model.nodes[&node];
                if let Some(path) = self.model.path_of(node)
                    && n.closing
                {
                    let content = Some(Bytes::from(n.content.clone()));
                    expect.any_of(path, vec![content, self.model.s3.get(path).cloned()]);
                }
            }
        } else {
            assert!(
                report.uploaded.is_empty(),
                "nothing was left half-closed: {report:?}"
            );
            // Only staged files of unlinked files still open when the mount ended are left; they
            // go to the recovery folder, never to S3.
            let orphans = staged
                .iter()
                .filter(|&&n| self.model.path_of(n).is_none())
                .count();
            assert!(
                report.moved.len() <= orphans,
                "staged data moved aside: {report:?}"
            );
        }
        self.check_s3_no_rest(expect);
        if how == Unmount::Crash {
            // What the mount shows now is what S3 holds: the model starts again from there.
            self.model.rebuild_from_s3();
        } else {
            for node in self.model.nodes.values_mut() {
                node.staged = 0;
            }
            self.model.collect_garbage();
        }
        self.check_at_rest();
        self.check_tree().await;
        self.check_contents().await;
    }

    /// The bucket must hold what `expect` allows at the keys it lists, and be unchanged elsewhere;
    /// and files at rest must be in it.
    fn check_s3(&mut self, expect: Expect) {
        self.check_s3_no_rest(expect);
        self.check_at_rest();
    }

    /// The bucket must hold what `expect` allows at the keys it lists, and be unchanged elsewhere.
    fn check_s3_no_rest(&mut self, expect: Expect) {
        let actual: BTreeMap<String, Bytes> = self
            .client
            .keys()
            .into_iter()
            .map(|key| {
                let body = self.client.body(&key).unwrap();
                (key, body)
            })
            .collect();
        let keys: BTreeSet<&String> = actual
            .keys()
            .chain(self.model.s3.keys())
            .chain(expect.0.keys())
            .collect();
        let mut changed = Vec::new();
        for key in keys {
            let got = actual.get(key);
            match expect.0.get(key) {
                Some(allowed) => assert!(
                    allowed.iter().any(|value| value.as_ref() == got),
                    "S3 at {key:?}: got {}, expected one of {:?}",
                    describe(got),
                    allowed.iter().map(|v| describe(v.as_ref())).collect::<Vec<_>>()
                ),
                None => assert!(
                    got == self.model.s3.get(key),
                    "S3 at {key:?} changed unexpectedly: got {}, was {}",
                    describe(got),
                    describe(self.model.s3.get(key))
                ),
            }
            if got != self.model.s3.get(key) {
                changed.push(key.clone());
            }
        }
        assert_eq!(
            self.client.open_multipart_uploads(),
            0,
            "multipart uploads left open"
        );
        self.model.s3 = actual;
        self.model.mark_stale(|key| changed.iter().any(|c| c == key));
    }

    /// Files nobody is writing are in S3 as the mount shows them; every directory has its
    /// marker; with nothing open, the bucket is exactly the tree.
    fn check_at_rest(&self) {
        let model = &self.model;
        for (path, node) in &model.files {
            if model.nodes[node].staged == 0 {
                let body = model
                    .s3
                    .get(path)
                    .unwrap_or_else(|| panic!("{path:?} closed but not in S3"));
                assert_same(
                    &format!("S3 object of closed {path:?}"),
                    body,
                    model.content(*node),
                );
            }
        }
        for dir in &model.dirs {
            assert!(model.s3.contains_key(&marker(dir)), "marker of {dir:?} missing");
        }
        if model.handles.iter().all(|h| !matches!(h.view, View::Staged)) {
            let expected: BTreeSet<String> = model
                .files
                .keys()
                .cloned()
                .chain(model.dirs.iter().map(|d| marker(d)))
                .collect();
            let actual: BTreeSet<String> = model.s3.keys().cloned().collect();
            assert_eq!(actual, expected, "keys in S3 with no file being written");
        }
    }

    /// Every directory lists what the model holds; every file has the model's size.
    async fn check_tree(&self) {
        let mut dirs = vec![(String::new(), ROOT_INO)];
        while let Some((dir, ino)) = dirs.pop() {
            let listed = list(self.fs(), ino).await;
            assert_eq!(listed, self.model.children(&dir), "listing of {dir:?}");
            for (name, kind) in listed {
                let path = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let attr = errno(self.fs().lookup(ino, OsStr::new(&name)).await)
                    .unwrap_or_else(|code| panic!("lookup of listed {path:?}: errno {code}"));
                assert_eq!(attr.kind, kind, "kind of {path:?}");
                match kind {
                    Kind::Dir => dirs.push((path, attr.ino)),
                    Kind::Symlink => panic!("the model makes no symlink, yet {path:?} is one"),
                    Kind::File => {
                        let size = self.model.content(self.model.files[&path]).len() as u64;
                        assert_eq!(attr.size, size, "size of {path:?}");
                        assert_eq!(self.fs().getattr(attr.ino).await.map(|a| a.size).ok(), Some(size));
                    }
                }
            }
        }
    }

    /// Reads every file whole through a new read-only handle.
    async fn check_contents(&self) {
        for (path, &node) in &self.model.files {
            let attr = self.walk(path).await.unwrap();
            let fh = self
                .fs()
                .open(attr.ino, libc::O_RDONLY)
                .await
                .expect("open")
                .handle;
            let expected = self.model.content(node);
            let size = expected.len() as u32 + 1;
            let data = errno(self.fs().read(fh, 0, size).await);
            self.fs().release(fh).await;
            let data = data.unwrap_or_else(|code| panic!("read of {path:?}: errno {code}"));
            assert_same(&format!("content of {path:?}"), &data, expected);
        }
    }
}

fn run(metadata_ttl: Duration, preset: bool, steps: &[Step]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::new(metadata_ttl, preset);
        for step in steps {
            harness.apply(step).await;
        }
        // Whatever the steps left open, an unmount puts it all in S3.
        harness.remount(Unmount::Release).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        // About 20 s in a debug build; PROPTEST_CASES=5000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(128),
        // Failures are kept as named tests below, not in a file beside this one.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A TTL of zero makes every answer come from S3; a long one checks that the mount keeps its
    /// own metadata cache right through its own changes.
    #[test]
    fn writes_through_the_mount_match_the_model(
        long_ttl in any::<bool>(),
        preset in any::<bool>(),
        steps in prop::collection::vec(step(), 1..50),
    ) {
        run(if long_ttl { Duration::from_secs(60) } else { Duration::ZERO }, preset, &steps);
    }
}

// ---------------------------------------------------------------------------------------------
// Failure injection

/// A mounted file system over `client` with its staging area in `cache_dir`.
fn mount(client: &Arc<Bucket>, cache_dir: &TempDir) -> S3Fs {
    let staging = Staging::open(cache_dir.path()).unwrap();
    S3Fs::new(client.clone(), config(Duration::ZERO), None, Some(staging))
}

/// Looks `name` up in the root and opens it with `flags`: its inode and handle.
async fn open_existing(fs: &S3Fs, name: &str, flags: i32) -> (u64, u64) {
    let attr = fs.lookup(ROOT_INO, OsStr::new(name)).await.unwrap();
    let fh = fs.open(attr.ino, flags).await.unwrap().handle;
    (attr.ino, fh)
}

async fn write_all(fs: &S3Fs, fh: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        let written = fs.write(fh, i as u64 * MIB, chunk).await.unwrap();
        assert_eq!(written as usize, chunk.len());
    }
}

#[tokio::test]
async fn failed_part_aborts_the_upload_and_a_second_flush_succeeds() {
    let client = Arc::new(Bucket::memory("faults"));
    client.put_object("big", &b"old contents"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (ino, fh) = open_existing(&fs, "big", libc::O_WRONLY | libc::O_TRUNC).await;
    let data = pattern(7, (PART + 3 * MIB / 2) as usize);
    write_all(&fs, fh, &data).await;

    client.fail_next(Op::UploadPart, 1, ObjectError::Unreachable("reset".into()));
    let flushed = fs.flush(fh).await;
    assert_eq!(
        errno(flushed),
        Err(libc::EIO),
        "close(2) reports the failed upload"
    );
    assert_eq!(
        client.open_multipart_uploads(),
        0,
        "the failed upload was aborted"
    );
    assert_eq!(
        client.body("big").as_deref(),
        Some(&b"old contents"[..]),
        "never a partial object"
    );
    assert_eq!(
        fs.getattr(ino).await.unwrap().size,
        data.len() as u64,
        "the data stays staged"
    );

    fs.flush(fh).await.expect("the second flush uploads");
    assert_same("S3 after the retry", &client.body("big").unwrap(), &data);
    assert_eq!(client.open_multipart_uploads(), 0);
    fs.release(fh).await;
    assert_same("S3 after release", &client.body("big").unwrap(), &data);
}

#[tokio::test]
async fn failed_close_is_retried_in_the_background_after_release() {
    let client = Arc::new(Bucket::memory("faults"));
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (attr, opened) = fs
        .create(ROOT_INO, OsStr::new("f.txt"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"hello").await.unwrap();
    // One failure for the flush of close(2), one for the upload the release tries itself.
    client.fail_next(Op::Put, 2, ObjectError::Unreachable("reset".into()));
    assert_eq!(errno(fs.flush(opened.handle).await), Err(libc::EIO));
    fs.release(opened.handle).await;
    assert_eq!(client.body("f.txt"), None, "both attempts failed");
    // Still on the mount while the retry waits.
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 5);

    let deadline = Instant::now() + Duration::from_secs(10);
    while client.body("f.txt").is_none() {
        assert!(Instant::now() < deadline, "no background retry within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.body("f.txt").as_deref(), Some(&b"hello"[..]));
    let fh = fs.open(attr.ino, libc::O_RDONLY).await.unwrap().handle;
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"hello");
    fs.release(fh).await;
}

#[tokio::test]
async fn failed_close_is_uploaded_by_the_next_mount() {
    let client = Arc::new(Bucket::memory("faults"));
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, opened) = fs
        .create(ROOT_INO, OsStr::new("f"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"kept across a crash").await.unwrap();
    client.set_unreachable(true);
    assert_eq!(errno(fs.flush(opened.handle).await), Err(libc::EIO));
    // The daemon dies: no release, no drain.
    drop(fs);
    client.set_unreachable(false);
    assert_eq!(client.body("f"), None);

    let fs = mount(&client, &cache_dir);
    let report = fs.recover().await.unwrap();
    assert_eq!(report.uploaded, vec!["f".to_owned()], "{report:?}");
    assert_eq!(client.body("f").as_deref(), Some(&b"kept across a crash"[..]));
    let attr = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    assert_eq!(attr.size, 19);
}

/// Appending to a large object sends only the new bytes: untouched parts are copied on the
/// server.
#[tokio::test]
async fn appending_to_a_large_file_copies_untouched_parts() {
    let client = Arc::new(Bucket::memory("copy"));
    let mut data = pattern(3, (PART + MIB) as usize);
    client.put_object("log", data.clone());
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "log", libc::O_WRONLY | libc::O_APPEND).await;
    let tail = pattern(9, 1000);
    fs.write(fh, 0, &tail).await.unwrap();
    data.extend_from_slice(&tail);
    client.reset_counters();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_same("S3 after append", &client.body("log").unwrap(), &data);
    let counts = client.counters();
    assert_eq!(counts.upload_part_copy, 1, "{counts:?}");
    assert!(
        counts.put_bytes < 2 * MIB + 1000,
        "sent only the last part: {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Product bugs the model found, shrunk to the fewest steps: regression tests once fixed.

async fn lookup_errno(fs: &S3Fs, name: &str) -> Result<u64, i32> {
    errno(fs.lookup(ROOT_INO, OsStr::new(name)).await).map(|attr| attr.size)
}

/// `open(a, O_TRUNC)`, then `rename(a, b)`: `a` is gone, on the mount and in the bucket. (Was: a
/// file truncated at open had never been uploaded under its key, so the rename only re-keyed the
/// staged copy and left the old object `a` in the bucket, where the mount showed it again.)
#[tokio::test]
async fn rename_of_a_file_truncated_at_open_removes_the_old_object() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("a", &b"old"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "a", libc::O_WRONLY | libc::O_TRUNC).await;
    fs.write(fh, 0, b"new").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), 0)
        .await
        .unwrap();
    assert_eq!(
        lookup_errno(&fs, "a").await,
        Err(libc::ENOENT),
        "renamed away, yet shown"
    );
    assert_eq!(client.body("a"), None, "the old object outlives the rename");
    fs.flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(client.keys(), vec!["b".to_owned()]);
}

/// `mv new a; mv a b` while `new` is being written: `a`'s old content does not come back. (Was:
/// the first rename leaves the replaced object in S3 until the close, the second only re-keyed
/// the staged file, so the replaced `a` reappeared on the mount and stayed in the bucket.)
#[tokio::test]
async fn renaming_a_new_file_over_another_and_away_does_not_resurrect_the_replaced_one() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("a", &b"replaced"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, new) = fs
        .create(ROOT_INO, OsStr::new("new"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(new.handle, 0, b"fresh").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("new"), ROOT_INO, OsStr::new("a"), 0)
        .await
        .unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), 0)
        .await
        .unwrap();
    assert_eq!(
        lookup_errno(&fs, "a").await,
        Err(libc::ENOENT),
        "the replaced file is back"
    );
    fs.flush(new.handle).await.unwrap();
    fs.release(new.handle).await;
    assert_eq!(
        client.keys(),
        vec!["b".to_owned()],
        "only the renamed file remains"
    );
}

/// An unlinked file stays readable and writable through the handles open on it (POSIX, and
/// `S3Fs::unlink`'s own promise). (Was: a file opened for writing without O_TRUNC is staged
/// without its data, fetched from the object when needed; unlink deleted that object first, so
/// the read and the partial-block write failed with ENOENT.)
#[tokio::test]
async fn open_file_stays_readable_and_writable_after_unlink() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("b", &b"hello"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "b", libc::O_RDWR).await;
    fs.unlink(ROOT_INO, OsStr::new("b")).await.unwrap();
    assert_eq!(errno(fs.write(fh, 1, b"E").await), Ok(1), "write after unlink");
    let read = errno(fs.read(fh, 0, 100).await).map(|data| data.to_vec());
    assert_eq!(read, Ok(b"hEllo".to_vec()), "read after unlink");
    fs.release(fh).await;
    assert_eq!(client.keys(), Vec::<String>::new());
}

/// The same when the open file is replaced by a rename. (Was: its data was fetched with If-Match
/// on the replaced object, so reads and writes through the open handle failed with ESTALE.)
#[tokio::test]
async fn open_file_stays_readable_and_writable_after_being_replaced_by_rename() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("b", &b"hello"[..]);
    client.put_object("c", &b"other"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "b", libc::O_RDWR).await;
    fs.rename(ROOT_INO, OsStr::new("c"), ROOT_INO, OsStr::new("b"), 0)
        .await
        .unwrap();
    assert_eq!(errno(fs.write(fh, 1, b"E").await), Ok(1), "write after replace");
    let read = errno(fs.read(fh, 0, 100).await).map(|data| data.to_vec());
    assert_eq!(read, Ok(b"hEllo".to_vec()), "read after replace");
    fs.release(fh).await;
    assert_eq!(client.body("b").as_deref(), Some(&b"other"[..]));
}

/// ftruncate(2) of an open, unlinked file succeeds with that file's attributes. (Was: it
/// truncated, then answered ENOENT, since `setattr` ended with `getattr(ino)` on the inode's old
/// path; once a new file had that name, the new file's attributes; after a replacing rename,
/// EBADF.)
#[tokio::test]
async fn ftruncate_of_an_open_unlinked_file_succeeds() {
    let client = Arc::new(Bucket::memory("bugs"));
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (attr, opened) = fs
        .create(ROOT_INO, OsStr::new("b"), libc::O_RDWR | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"0123456789").await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("b")).await.unwrap();
    let truncated = errno(fs.setattr(attr.ino, Some(4), Some(opened.handle)).await);
    assert_eq!(truncated.map(|attr| attr.size), Ok(4));
    assert_eq!(&fs.read(opened.handle, 0, 100).await.unwrap()[..], b"0123");
    fs.release(opened.handle).await;
}

/// A file unlinked after a failed close stays deleted. (Was: its staged copy's journal still
/// said "closing" and unlink marked it unlinked only in memory, so when the mount ended with the
/// file still open, at a drain on SIGTERM or a crash, the next mount's recovery uploaded it.)
#[tokio::test]
async fn unlinked_file_is_not_uploaded_by_the_next_mount() {
    let client = Arc::new(Bucket::memory("bugs"));
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, opened) = fs
        .create(ROOT_INO, OsStr::new("a"), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    fs.write(opened.handle, 0, b"deleted").await.unwrap();
    client.set_unreachable(true);
    assert_eq!(errno(fs.flush(opened.handle).await), Err(libc::EIO));
    client.set_unreachable(false);
    fs.unlink(ROOT_INO, OsStr::new("a")).await.unwrap();
    // SIGTERM with the file still open.
    assert_eq!(fs.drain_uploads().await, 0);
    drop(fs);

    let fs = mount(&client, &cache_dir);
    let report = fs.recover().await.unwrap();
    assert_eq!(
        client.keys(),
        Vec::<String>::new(),
        "recovery uploaded an unlinked file: {report:?}"
    );
    assert_eq!(lookup_errno(&fs, "a").await, Err(libc::ENOENT));
}

/// A write after a failed close survives a crash. (Was: a write into a block of the old object
/// not fetched yet, once the file was already dirty, was lost by a crash. `write` fetched the
/// block first, which marked it local, so the write itself saw no newly local block and did not
/// rewrite the journal; after the crash, recovery believed the block was still the old object's,
/// fetched it over the written bytes, and uploaded the file (its close had begun) without that
/// write. A file never closed lost the write the same way in the copy recovery sets aside.)
#[tokio::test]
async fn write_after_a_failed_close_survives_a_crash() {
    let client = Arc::new(Bucket::memory("bugs"));
    let old = pattern(1, (2 * MIB + 100) as usize);
    client.put_object("a", old.clone());
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "a", libc::O_WRONLY).await;
    fs.write(fh, 0, &[0xAA]).await.unwrap();
    client.set_unreachable(true);
    assert_eq!(errno(fs.flush(fh).await), Err(libc::EIO));
    client.set_unreachable(false);
    fs.write(fh, MIB + 10, &[0xBB]).await.unwrap();
    // The daemon dies before the close is retried.
    drop(fs);

    let fs = mount(&client, &cache_dir);
    let report = fs.recover().await.unwrap();
    assert_eq!(report.uploaded, vec!["a".to_owned()], "{report:?}");
    let mut expected = old;
    expected[0] = 0xAA;
    expected[(MIB + 10) as usize] = 0xBB;
    assert_same("S3 after recovery", &client.body("a").unwrap(), &expected);
}
