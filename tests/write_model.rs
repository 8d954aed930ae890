//! Reference-model property tests of the write path: random sequences of what a user does through
//! the mount (create, open with `O_TRUNC`/`O_APPEND`, write, read, truncate, flush, fsync, close,
//! unlink, mkdir, rmdir, rename of files and directories with and without `RENAME_NOREPLACE`,
//! setfattr/getfattr, chmod, chown, utimensat, ln -s and readlink, and remounting the same staging
//! directory), run on `S3Fs` over `MemoryClient` and checked after every step against a model
//! written from POSIX, the write-back rules and docs/SEMANTICS.md, not from `src/fs`.
//!
//! The model keeps what each file holds (a file keeps its identity while open handles survive an
//! unlink or a replacing rename), the directories, the symlinks, and the bucket. After every step
//! the whole tree the mount shows (names, kinds, sizes) must equal the model, and so must every
//! object in the bucket: content reaches S3 at flush, fsync and the last close, whole, never in
//! part; a name that is gone on the mount is gone from the bucket; and whenever no handle is open,
//! the bucket is exactly the tree. A file renamed while being written is uploaded first if it was
//! in S3 during this staging, else at its close under the new name (docs/SEMANTICS.md, "Rename");
//! a directory's are all uploaded first. Contents are read back through open handles, in `CheckContents` steps and after every remount. Parts are 5 MiB, S3's minimum;
//! half the cases start from a bucket holding a file larger than a part, and some writes land past
//! 5 MiB, so multipart uploads and server-side copies of the untouched parts of a reopened large
//! file are exercised too. Flushes also fail (S3 unreachable) and the mount ends three ways: every
//! handle released, `drain_uploads` with handles open (SIGTERM), and a crash, after which only
//! files whose close had begun may reach S3, and those that do come back with their metadata. Half
//! the cases use a long metadata TTL, so the mount must keep its own cache right through its own
//! changes.
//!
//! Metadata: the model keeps each file's and link's expected user metadata (the `user.*` entries
//! set, and `x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`, `-atime`), and every object's headers in
//! the bucket are checked after every step: user entries in their documented stored form (plain
//! printable ASCII, else an RFC 2047 encoded word), mode, owner and atime exactly, mtime present or
//! absent as the rules say (a content change drops it; a metadata change or a file rename pins
//! the old time when none is kept; a directory rename's CopyObject keeps the headers as they are)
//! and exact once known (set by utimensat, or a pin already seen: nothing but a write or utimensat
//! changes it again). A file being written takes a metadata change into its staged copy, sent by
//! its upload; one with nothing to upload (opened for writing, unwritten or uploaded since) is
//! copied onto itself at once. utimensat of the mtime alone (`UTIME_OMIT` for atime) leaves
//! `st_atime` as `stat` showed it, which keeps it in `x-amz-meta-atime` when it was not. What the mount shows is checked too, after every step, of every
//! file and link: listxattr and getxattr of every name in the pool, readlink, and `stat` (mode,
//! owner, times) after such a close look (with `--posix-metadata lazy`, an entry a listing just
//! showed has the defaults until then, and a link shows as a regular file). A metadata change
//! leaves `st_mtime` as it was. The kernel's part is played by the harness: it never follows a
//! link (a path through one is ENOTDIR here, as if every target were a file), does not open,
//! truncate or chmod a link it knows as one (those follow the link), and refuses `user.*` on one.
//! Directories' own metadata (kept on their markers) is not modelled; their markers must carry
//! none.
//!
//! Then: focused failure-injection tests (a failed part, a failed close retried in the
//! background, a failed close uploaded by the next mount), and product bugs the model found,
//! each shrunk to a named test (a regression test once the bug is fixed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use s3mount::fs::inode::ROOT_INO;
use s3mount::fs::names::RootPrefix;
use s3mount::fs::{Attr, AttrChange, Creator, DirEntry, FsConfig, FsError, Kind, PosixMetadata, S3Fs};
use s3mount::object::Op;
use s3mount::object::fault::FaultClient;
use s3mount::object::memory::MemoryClient;
use s3mount::object::{ObjectClient, ObjectError};

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
/// Extended attribute names as a user types them: `user.Team` is `user.team` (S3 lower-cases
/// metadata names), so the pool has three attributes under four names.
const XATTR_NAMES: &[&str] = &["user.team", "user.Team", "user.note", "user.x-y_z.1"];
/// Values stored as they are (printable ASCII) and values stored as an encoded word: empty,
/// blanks at an end, UTF-8, binary, and one that only looks encoded.
const XATTR_VALUES: &[&[u8]] = &[
    b"ml",
    b"a longer value, with: punctuation!",
    b"",
    b" padded ",
    "caf\u{e9} \u{1f600}".as_bytes(),
    b"\x00\x01\xff",
    b"=?UTF-8?B?aGk=?=",
];
/// The reserved POSIX names are not extended attributes: absent to read.
const RESERVED_XATTR: &str = "user.mode";
/// chmod's permission bits (setuid included: chmod keeps all of 0o7777).
const PERMS: &[u32] = &[0o600, 0o644, 0o755, 0o4750];
/// Owners; 0 is the mount's default (`FsConfig` below).
const OWNERS: &[u32] = &[0, 1000, 4242];
/// Symlink targets: the link's body.
const TARGETS: &[&[u8]] = &[b"a", b"../b/c", b"/etc/hostname", "d\u{e9}j\u{e0} vu".as_bytes()];
/// `st_mode` type bits, as `x-amz-meta-mode` keeps them (with the permission bits, in decimal).
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// The mount's defaults (see `config`).
const FILE_MODE: u32 = 0o644;
const DEFAULT_OWNER: u32 = 0;

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
        /// Who creates it (`create_as`), or `None` (the mount's own user, default mode).
        creator: Option<Creator>,
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
    /// setxattr(2) of `XATTR_NAMES[name]` to `XATTR_VALUES[value]`, with `XATTR_CREATE` or
    /// `XATTR_REPLACE` or neither.
    SetXattr {
        path: Target,
        name: usize,
        value: usize,
        flags: i32,
    },
    RemoveXattr {
        path: Target,
        name: usize,
    },
    Chmod {
        path: Target,
        perm: u32,
    },
    /// chown(2) (lchown(2) of a link).
    Chown {
        path: Target,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// utimensat(2) (with `AT_SYMLINK_NOFOLLOW` on a link); `None`: `UTIME_OMIT`.
    Utimens {
        path: Target,
        mtime: Option<SystemTime>,
        atime: Option<SystemTime>,
    },
    /// symlink(2) to `TARGETS[target]`, by `owner` (uid, gid) or the mount's own user.
    Symlink {
        path: String,
        target: usize,
        owner: Option<(u32, u32)>,
    },
    Readlink {
        path: Target,
    },
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

fn owner() -> impl Strategy<Value = u32> {
    prop::sample::select(OWNERS)
}

/// Mostly defaults, as most files are made.
fn creator() -> impl Strategy<Value = Option<Creator>> {
    prop_oneof![
        3 => Just(None),
        1 => (owner(), owner(), prop::sample::select(PERMS)).prop_map(|(uid, gid, perm)| Some(Creator { uid, gid, perm })),
    ]
}

/// A time with or without nanoseconds, before any Last-Modified the bucket gives (so a pinned
/// time never equals one set).
fn time() -> impl Strategy<Value = SystemTime> {
    (
        1_000_000_000u64..1_600_000_000,
        prop_oneof![Just(0u32), 1u32..1_000_000_000],
    )
        .prop_map(|(secs, nanos)| UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Metadata steps: about a sixth of all, so the older steps keep their share.
fn metadata_step() -> impl Strategy<Value = Step> {
    let flags = prop_oneof![6 => Just(0), 1 => Just(libc::XATTR_CREATE), 1 => Just(libc::XATTR_REPLACE)];
    let times = prop_oneof![
        3 => time().prop_map(|mtime| (Some(mtime), None)),
        1 => (time(), time()).prop_map(|(mtime, atime)| (Some(mtime), Some(atime))),
        1 => time().prop_map(|atime| (None, Some(atime))),
    ];
    let owners = prop_oneof![
        (owner(), owner()).prop_map(|(uid, gid)| (Some(uid), Some(gid))),
        owner().prop_map(|uid| (Some(uid), None)),
        owner().prop_map(|gid| (None, Some(gid))),
    ];
    prop_oneof![
        3 => (target(), 0..XATTR_NAMES.len(), 0..XATTR_VALUES.len(), flags)
            .prop_map(|(path, name, value, flags)| Step::SetXattr { path, name, value, flags }),
        1 => (target(), 0..XATTR_NAMES.len()).prop_map(|(path, name)| Step::RemoveXattr { path, name }),
        1 => (target(), prop::sample::select(PERMS)).prop_map(|(path, perm)| Step::Chmod { path, perm }),
        1 => (target(), owners).prop_map(|(path, (uid, gid))| Step::Chown { path, uid, gid }),
        1 => (target(), times).prop_map(|(path, (mtime, atime))| Step::Utimens { path, mtime, atime }),
        1 => (path(), 0..TARGETS.len(), prop::option::weighted(0.3, (owner(), owner())))
            .prop_map(|(path, target, owner)| Step::Symlink { path, target, owner }),
        1 => target().prop_map(|path| Step::Readlink { path }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let writer = prop_oneof![Just(Access::Write), Just(Access::ReadWrite)];
    prop_oneof![
        5 => (target(), writer, prop::bool::weighted(0.25), prop::bool::weighted(0.2), prop::bool::weighted(0.2), creator()).prop_map(
            |(path, access, exclusive, truncate, append, creator)| Step::Create { path, access, exclusive, truncate, append, creator }
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
        9 => metadata_step(),
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

/// What the model knows of `x-amz-meta-mtime`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mtime {
    Absent,
    /// Pinned by a metadata change or a rename (the old modification time): present, its value
    /// learnt when the bucket is next looked at.
    Pinned,
    /// Known exactly, as S3 stores it: set by utimensat, or a pin seen in the bucket.
    Exact(String),
}

/// A file's or link's user metadata, as the mount shows it or an object carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    /// `user.NAME` (lower-cased, as S3 keeps names) -> the value given.
    xattrs: BTreeMap<String, Vec<u8>>,
    /// `st_mode`, type bits included.
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Mtime,
    /// As stored.
    atime: Option<String>,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            xattrs: BTreeMap::new(),
            mode: None,
            uid: None,
            gid: None,
            mtime: Mtime::Absent,
            atime: None,
        }
    }
}

impl Meta {
    /// A new file's or link's: the creator's mode and owner where they differ from the mount's
    /// defaults; a link always says it is one.
    fn created(kind: Kind, uid: u32, gid: u32, perm: u32) -> Self {
        let mode = match kind {
            Kind::Symlink => Some(S_IFLNK | 0o777),
            _ => (perm & 0o7777 != FILE_MODE).then_some(S_IFREG | (perm & 0o7777)),
        };
        Self {
            mode,
            uid: (uid != DEFAULT_OWNER).then_some(uid),
            gid: (gid != DEFAULT_OWNER).then_some(gid),
            ..Self::default()
        }
    }

    fn is_link(&self) -> bool {
        self.mode == Some(S_IFLNK | 0o777)
    }

    /// A metadata change or a rename keeps the old modification time when none is kept.
    fn pin(&mut self) {
        if self.mtime == Mtime::Absent {
            self.mtime = Mtime::Pinned;
        }
    }

    /// A change of content: the upload's time is the modification time.
    fn content_changed(&mut self) {
        self.mtime = Mtime::Absent;
    }

    /// The user metadata an object must carry, given the one it has (for a pinned time's value).
    fn expected_user(&self, got: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut user: BTreeMap<String, String> = self
            .xattrs
            .iter()
            .map(|(name, value)| (name.clone(), stored_value(value)))
            .collect();
        let numbers = [("mode", self.mode), ("uid", self.uid), ("gid", self.gid)];
        for (name, value) in numbers {
            if let Some(value) = value {
                user.insert(name.to_owned(), value.to_string());
            }
        }
        match &self.mtime {
            Mtime::Absent => {}
            Mtime::Exact(time) => {
                user.insert("mtime".to_owned(), time.clone());
            }
            Mtime::Pinned => {
                let pinned = got.get("mtime").cloned();
                user.insert(
                    "mtime".to_owned(),
                    pinned.unwrap_or_else(|| "(a pinned time)".to_owned()),
                );
            }
        }
        if let Some(atime) = &self.atime {
            user.insert("atime".to_owned(), atime.clone());
        }
        user
    }

    fn matches(&self, got: &BTreeMap<String, String>) -> bool {
        self.expected_user(got) == *got
    }

    /// A pinned time seen in the bucket is known from then on.
    fn learn(&mut self, got: &BTreeMap<String, String>) {
        if self.mtime == Mtime::Pinned
            && let Some(time) = got.get("mtime")
        {
            self.mtime = Mtime::Exact(time.clone());
        }
    }

    /// Whether `self` (a file's) and `other` (its object's) say the same, a pin being either.
    fn agrees(&self, other: &Meta) -> bool {
        let times = match (&self.mtime, &other.mtime) {
            (Mtime::Pinned, Mtime::Pinned | Mtime::Exact(_)) | (Mtime::Exact(_), Mtime::Pinned) => true,
            (mine, theirs) => mine == theirs,
        };
        times
            && Meta {
                mtime: Mtime::Absent,
                ..self.clone()
            } == Meta {
                mtime: Mtime::Absent,
                ..other.clone()
            }
    }
}

/// The stored form of an attribute value (docs/SEMANTICS.md, "Extended attributes"): as it is
/// when printable ASCII without blanks at its ends and not starting `=?`, else an RFC 2047
/// encoded word.
fn stored_value(value: &[u8]) -> String {
    let plain = !value.is_empty()
        && value.iter().all(|b| (0x20..0x7f).contains(b))
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
        && !value.starts_with(b"=?");
    match std::str::from_utf8(value) {
        Ok(text) if plain => text.to_owned(),
        _ => format!("=?UTF-8?B?{}?=", base64(value)),
    }
}

/// Standard base64 with padding, written here so the model does not borrow the product's.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let at = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let bits = (at(0) << 16) | (at(1) << 8) | at(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A time as s3fs writes it: seconds, `.nnnnnnnnn` when there are nanoseconds.
fn header_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap();
    match since.subsec_nanos() {
        0 => since.as_secs().to_string(),
        nanos => format!("{}.{nanos:09}", since.as_secs()),
    }
}

/// The time a stored `sec[.fraction]` means.
fn parse_header_time(stored: &str) -> SystemTime {
    let (secs, fraction) = stored.split_once('.').unwrap_or((stored, ""));
    let nanos = format!("{fraction:0<9}");
    let secs: u64 = secs.parse().unwrap_or_else(|_| panic!("stored time {stored:?}"));
    let nanos: u32 = nanos[..9]
        .parse()
        .unwrap_or_else(|_| panic!("stored time {stored:?}"));
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A file's content and metadata. It keeps its identity across renames, and outlives its name
/// while handles on it are open (an unlinked file is still read and written through them).
struct Node {
    content: Vec<u8>,
    /// Handles on the staged copy (all but read-only opens of a file nobody is writing).
    staged: usize,
    /// A flush failed since the last upload: the next mount uploads it even after a crash.
    closing: bool,
    /// Staged and changed since it was last in S3: its close uploads it.
    dirty: bool,
    /// Staged, and its content was in S3 during this staging (opened from an object without
    /// `O_TRUNC`, or uploaded since): a rename uploads it first and copies it, where one never
    /// uploaded only changes the key its close uploads to.
    remote: bool,
    meta: Meta,
}

/// An object as the model expects it: its bytes and its user metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Object {
    body: Bytes,
    meta: Meta,
}

impl Object {
    fn new(body: impl Into<Bytes>, meta: Meta) -> Self {
        Self {
            body: body.into(),
            meta,
        }
    }

    fn marker() -> Self {
        Self::new(Bytes::new(), Meta::default())
    }
}

/// An object as the bucket holds it.
struct Seen {
    body: Bytes,
    user: BTreeMap<String, String>,
    etag: String,
}

/// A symlink: its target, and its own metadata.
#[derive(Clone, Debug)]
struct Link {
    target: Bytes,
    meta: Meta,
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

/// What a step leaves at some keys (`None`: absent). Keys not listed must be unchanged.
#[derive(Default)]
struct Expect(BTreeMap<String, Option<Object>>);

impl Expect {
    fn set(&mut self, key: &str, value: Option<Object>) {
        self.0.insert(key.to_owned(), value);
    }
}

#[derive(Default)]
struct Model {
    files: BTreeMap<String, NodeId>,
    dirs: BTreeSet<String>,
    links: BTreeMap<String, Link>,
    nodes: HashMap<NodeId, Node>,
    next_node: NodeId,
    /// The bucket, as last observed (every observation checked against expectations first).
    s3: BTreeMap<String, Object>,
    /// The ETags last observed, to tell when a read-only handle's version was replaced.
    etags: BTreeMap<String, String>,
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
        } else if self.links.contains_key(path) {
            Some(Kind::Symlink)
        } else {
            None
        }
    }

    /// What a walk from the root finds at `path`, as the kernel would report it (a link on the
    /// way is not followed: see the module documentation).
    fn walk(&self, path: &str) -> Result<Kind, i32> {
        if path.is_empty() {
            return Ok(Kind::Dir);
        }
        let mut at = String::new();
        for name in path.split('/') {
            if matches!(self.kind(&at), Some(Kind::File | Kind::Symlink)) {
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
        let links = self.links.keys().map(|path| (path, Kind::Symlink));
        files
            .chain(dirs)
            .chain(links)
            .filter(|(path, _)| split(path).0 == dir)
            .map(|(path, kind)| (split(path).1.to_owned(), kind))
            .collect()
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        !self
            .files
            .keys()
            .chain(self.dirs.iter())
            .chain(self.links.keys())
            .any(|path| is_under(path, dir))
    }

    fn content(&self, node: NodeId) -> &Vec<u8> {
        &self.nodes[&node].content
    }

    fn node_mut(&mut self, node: NodeId) -> &mut Node {
        self.nodes.get_mut(&node).unwrap()
    }

    /// The object `node` makes when uploaded.
    fn object_of(&self, node: NodeId) -> Object {
        let n = &self.nodes[&node];
        Object::new(n.content.clone(), n.meta.clone())
    }

    /// The metadata of the file or link at `path`.
    fn meta(&self, path: &str) -> &Meta {
        match self.files.get(path) {
            Some(node) => &self.nodes[node].meta,
            None => &self.links[path].meta,
        }
    }

    fn path_of(&self, node: NodeId) -> Option<&str> {
        self.files
            .iter()
            .find(|(_, n)| **n == node)
            .map(|(path, _)| path.as_str())
    }

    fn new_node(&mut self, content: Vec<u8>, meta: Meta) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(
            id,
            Node {
                content,
                staged: 0,
                closing: false,
                dirty: false,
                remote: false,
                meta,
            },
        );
        id
    }

    /// `node` was uploaded (or had nothing to upload): S3 holds its content and metadata at its
    /// key, if it still has a name.
    fn flushed_node(&mut self, node: NodeId, expect: &mut Expect) {
        if let Some(path) = self.path_of(node) {
            expect.set(path, Some(self.object_of(node)));
            let n = self.node_mut(node);
            n.closing = false;
            n.dirty = false;
            n.remote = true;
        }
    }

    /// After a crash: the files and links are what S3 holds.
    fn rebuild_from_s3(&mut self) {
        self.files.clear();
        self.dirs.clear();
        self.links.clear();
        self.nodes.clear();
        for (key, object) in self.s3.clone() {
            match key.strip_suffix('/') {
                Some(dir) => {
                    self.dirs.insert(dir.to_owned());
                }
                None if object.meta.is_link() => {
                    let link = Link {
                        target: object.body,
                        meta: object.meta,
                    };
                    self.links.insert(key, link);
                }
                None => {
                    let node = self.new_node(object.body.to_vec(), object.meta);
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
        uid: DEFAULT_OWNER,
        gid: DEFAULT_OWNER,
        file_mode: FILE_MODE as u16,
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

fn describe_body(body: &Bytes) -> String {
    if body.len() <= 16 {
        format!("{body:?}")
    } else {
        format!("{} bytes starting {:?}", body.len(), &body[..16])
    }
}

fn describe(value: Option<&Object>) -> String {
    match value {
        None => "absent".to_owned(),
        Some(object) => format!("{} with {:?}", describe_body(&object.body), object.meta),
    }
}

fn describe_seen(value: Option<&Seen>) -> String {
    match value {
        None => "absent".to_owned(),
        Some(seen) => format!("{} with {:?}", describe_body(&seen.body), seen.user),
    }
}

/// Whether the bucket's `got` is what `expected` allows.
fn holds(expected: Option<&Object>, got: Option<&Seen>) -> bool {
    match (expected, got) {
        (None, None) => true,
        (Some(object), Some(seen)) => object.body == seen.body && object.meta.matches(&seen.user),
        _ => false,
    }
}

/// The `user.*` names of a listxattr answer, less the system ones (`user.s3.*`).
fn user_names(listed: &[u8]) -> BTreeSet<String> {
    listed
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8(name.to_vec()).expect("attribute names are UTF-8"))
        .filter(|name| name.starts_with("user.") && !name.starts_with("user.s3."))
        .collect()
}

/// The attribute `name` names, as S3 keeps it.
fn xattr_key(name: &str) -> String {
    name.strip_prefix("user.").unwrap().to_ascii_lowercase()
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
                let etag = client.put_object(key, body.clone());
                model
                    .s3
                    .insert(key.to_owned(), Object::new(body.clone(), Meta::default()));
                model.etags.insert(key.to_owned(), etag);
                match key.strip_suffix('/') {
                    Some(dir) => {
                        model.dirs.insert(dir.to_owned());
                    }
                    None => {
                        let node = model.new_node(body, Meta::default());
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

    /// Whether an entry may come from a listing, cached (the long TTL): with lazy POSIX metadata,
    /// it shows the defaults (a link: a regular file) until looked at closely.
    fn listings_cached(&self) -> bool {
        !self.config.metadata_ttl.is_zero()
    }

    /// Whether `got`, a kind the mount reports at `path`, is the model's `expected`.
    fn kind_agrees(&self, expected: Result<Kind, i32>, got: Result<Kind, i32>) -> bool {
        got == expected || (expected == Ok(Kind::Symlink) && got == Ok(Kind::File) && self.listings_cached())
    }

    /// Looks `path` up from the root as the kernel does (no lookup under a file or link),
    /// checking what it finds against the model. Returns the attributes found.
    async fn walk(&self, path: &str) -> Result<Attr, i32> {
        let mut attr = self.fs().getattr(ROOT_INO).await.expect("getattr of the root");
        if !path.is_empty() {
            for name in path.split('/') {
                if attr.kind != Kind::Dir {
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
        let expected = self.model.walk(path);
        assert!(
            self.kind_agrees(expected, got),
            "walk to {path:?}: got {got:?}, expected {expected:?}"
        );
        if let Ok(attr) = &found {
            let expected = match self.model.kind(path) {
                Some(Kind::File) => Some(self.model.content(self.model.files[path]).len()),
                Some(Kind::Symlink) => Some(self.model.links[path].target.len()),
                _ => None,
            };
            if let Some(size) = expected {
                assert_eq!(attr.size, size as u64, "size of {path:?}");
            }
        }
        found
    }

    /// The parent directory's inode, or `None` when the kernel would fail the call before
    /// sending it (the parent is missing or not a directory): the walk has checked that against
    /// the model.
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
                let all: BTreeSet<&String> = self
                    .model
                    .files
                    .keys()
                    .chain(&self.model.dirs)
                    .chain(self.model.links.keys())
                    .collect();
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
                creator,
            } => {
                let path = self.resolve(path);
                self.create(&path, *access, *exclusive, *truncate, *append, *creator)
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
                    let h = &self.model.handles[i];
                    // Only an upload needs S3: a file with nothing to send flushes at once.
                    let uploads = matches!(h.view, View::Staged)
                        && self.model.nodes[&h.node].dirty
                        && self.model.path_of(h.node).is_some();
                    let expected = if uploads { Err(libc::EIO) } else { Ok(()) };
                    assert_eq!(flushed, expected, "flush with S3 unreachable");
                    if flushed.is_err() {
                        let node = h.node;
                        self.model.node_mut(node).closing = true;
                    }
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
            Step::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let (name, value) = (XATTR_NAMES[*name], XATTR_VALUES[*value]);
                self.set_xattr(&self.resolve(path), name, value, *flags, &mut expect)
                    .await
            }
            Step::RemoveXattr { path, name } => {
                self.remove_xattr(&self.resolve(path), XATTR_NAMES[*name], &mut expect)
                    .await
            }
            Step::Chmod { path, perm } => self.chmod(&self.resolve(path), *perm, &mut expect).await,
            Step::Chown { path, uid, gid } => {
                let change = AttrChange {
                    uid: *uid,
                    gid: *gid,
                    ..AttrChange::default()
                };
                self.change_attrs(&self.resolve(path), change, &mut expect).await
            }
            Step::Utimens { path, mtime, atime } => {
                let change = AttrChange {
                    mtime: *mtime,
                    atime: *atime,
                    ..AttrChange::default()
                };
                self.change_attrs(&self.resolve(path), change, &mut expect).await
            }
            Step::Symlink { path, target, owner } => {
                self.symlink(path, TARGETS[*target], *owner, &mut expect).await
            }
            Step::Readlink { path } => self.readlink(&self.resolve(path)).await,
        }
        self.check_s3(expect).await;
        self.check_metadata().await;
        self.check_tree().await;
    }

    async fn create(
        &mut self,
        path: &str,
        access: Access,
        exclusive: bool,
        truncate: bool,
        append: bool,
        creator: Option<Creator>,
    ) {
        if self.model.handles.len() >= MAX_HANDLES {
            return;
        }
        let Some(parent) = self.parent(path).await else {
            return;
        };
        if self.model.kind(path) == Some(Kind::Symlink) {
            return; // open(2) follows the link: the target's business.
        }
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
        let name = OsStr::new(split(path).1);
        let created = errno(self.fs().create_as(parent, name, flags, None, creator).await);
        let (node, new) = match self.model.kind(path) {
            Some(_) if exclusive => return assert_eq!(created.err(), Some(libc::EEXIST), "create {path:?}"),
            Some(Kind::Dir) => return assert_eq!(created.err(), Some(libc::EISDIR), "create {path:?}"),
            Some(Kind::File | Kind::Symlink) => (self.model.files[path], false),
            None => {
                let meta = match creator {
                    Some(c) => Meta::created(Kind::File, c.uid, c.gid, c.perm),
                    None => Meta::default(),
                };
                let node = self.model.new_node(Vec::new(), meta);
                self.model.files.insert(path.to_owned(), node);
                (node, true)
            }
        };
        let (attr, opened) = created.unwrap_or_else(|code| panic!("create {path:?}: errno {code}"));
        self.opened(node, attr.ino, opened.handle, access, truncate, append);
        if new {
            // Exists on the mount at once, in S3 from its first upload.
            let n = self.model.node_mut(node);
            n.dirty = true;
            n.remote = false;
            let meta = n.meta.clone();
            self.check_attr(&format!("create {path:?}"), &attr, Kind::File, &meta);
        }
        let size = self.model.content(node).len() as u64;
        assert_eq!(
            (attr.kind, attr.size),
            (Kind::File, size),
            "attributes from create {path:?}"
        );
    }

    async fn open(&mut self, path: &str, access: Access, truncate: bool, append: bool) {
        if self.model.handles.len() >= MAX_HANDLES || self.model.kind(path) == Some(Kind::Symlink) {
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
        let n = self.model.node_mut(node);
        let view = if access.writable() || n.staged > 0 {
            if n.staged == 0 {
                // Staged now: over its object, or empty (and to be uploaded) with O_TRUNC.
                n.dirty = truncate;
                n.remote = !truncate;
                if truncate {
                    n.content.clear();
                    n.meta.content_changed();
                }
            } else if truncate && !n.content.is_empty() {
                n.content.clear();
                n.dirty = true;
                n.meta.content_changed();
            }
            n.staged += 1;
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
        let n = self.model.node_mut(node);
        n.dirty = true;
        n.meta.content_changed();
        let content = &mut n.content;
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

    /// A size change of a staged file: a change of content only when the size differs.
    fn resized(&mut self, node: NodeId, size: u64) {
        let n = self.model.node_mut(node);
        if n.content.len() as u64 != size {
            n.content.resize(size as usize, 0);
            n.dirty = true;
            n.meta.content_changed();
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
        self.resized(node, size);
        assert_eq!(attr.map(|a| a.size), Ok(size), "ftruncate to {size}");
    }

    async fn truncate(&mut self, path: &str, size: Pos, expect: &mut Expect) {
        if self.model.kind(path) == Some(Kind::Symlink) {
            return; // truncate(2) follows the link.
        }
        let attr = match self.walk(path).await {
            Ok(attr) if attr.kind == Kind::File => attr,
            _ => return,
        };
        let node = self.model.files[path];
        let size = size.resolve(self.model.content(node).len());
        let truncated = errno(self.fs().setattr(attr.ino, Some(size), None).await);
        assert_eq!(truncated.map(|a| a.size), Ok(size), "truncate {path:?} to {size}");
        // It opens the file for writing, as a writer would: with O_TRUNC for a size of 0.
        self.model.mark_node_stale(node);
        let n = self.model.node_mut(node);
        if size == 0 && (n.staged == 0 || !n.content.is_empty()) {
            if n.staged == 0 {
                n.remote = false;
            }
            n.content.clear();
            n.dirty = true;
            n.meta.content_changed();
        }
        self.resized(node, size);
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
            let n = self.model.node_mut(h.node);
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
                self.model.links.remove(path);
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
        expect.set(&marker(path), Some(Object::marker()));
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
                (Kind::File | Kind::Symlink, Some(Kind::Dir)) => Some(libc::EISDIR),
                (Kind::Dir, Some(Kind::File | Kind::Symlink)) => Some(libc::ENOTDIR),
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
            Kind::File => self.rename_file(from, to, expect),
            Kind::Symlink => self.rename_link(from, to, expect),
            Kind::Dir => self.rename_dir(from, to, expect),
        }
        self.model.collect_garbage();
    }

    fn rename_file(&mut self, from: &str, to: &str, expect: &mut Expect) {
        let model = &mut self.model;
        let node = model.files.remove(from).unwrap();
        // A replaced target file keeps living for its open handles, nameless.
        model.links.remove(to);
        model.files.insert(to.to_owned(), node);
        expect.set(from, None);
        let n = model.node_mut(node);
        if n.staged == 0 || n.remote {
            // Uploaded first if changed, then copied with every header, the old modification
            // time pinned.
            n.meta.pin();
            n.dirty = false;
            n.closing = false;
            expect.set(to, Some(model.object_of(node)));
        }
        // Else never uploaded: it goes up under its new name at its close, and the target's
        // object stays until then (docs/SEMANTICS.md, "Rename").
        model.mark_stale(|key| key == from || key == to);
    }

    fn rename_link(&mut self, from: &str, to: &str, expect: &mut Expect) {
        let model = &mut self.model;
        let mut link = model.links.remove(from).unwrap();
        model.files.remove(to);
        link.meta.pin();
        expect.set(from, None);
        expect.set(to, Some(Object::new(link.target.clone(), link.meta.clone())));
        model.links.insert(to.to_owned(), link);
        model.mark_stale(|key| key == from || key == to);
    }

    fn rename_dir(&mut self, from: &str, to: &str, expect: &mut Expect) {
        let model = &mut self.model;
        let moved = |path: &str| format!("{to}{}", &path[from.len()..]);
        let prefix = marker(from);
        // Each key is copied as it is (CopyObject keeps every header: nothing is pinned).
        for (key, object) in model.s3.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            expect.set(key, None);
            expect.set(&moved(key), Some(object.clone()));
        }
        let files: Vec<(String, NodeId)> = model
            .files
            .iter()
            .filter(|(path, _)| is_under(path, from))
            .map(|(path, &node)| (path.clone(), node))
            .collect();
        for (path, node) in files {
            if model.nodes[&node].staged > 0 {
                // Being written: uploaded before the move.
                expect.set(&path, None);
                expect.set(&moved(&path), Some(model.object_of(node)));
                let n = model.node_mut(node);
                n.dirty = false;
                n.remote = true;
                n.closing = false;
            }
            model.files.remove(&path);
            model.files.insert(moved(&path), node);
        }
        let links: Vec<String> = model
            .links
            .keys()
            .filter(|path| is_under(path, from))
            .cloned()
            .collect();
        for path in links {
            let link = model.links.remove(&path).unwrap();
            model.links.insert(moved(&path), link);
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

    /// The attributes of the file or link at `path` for a metadata step, and what the model
    /// holds there; `None` when the kernel answers itself (the walk has checked its answer:
    /// ENOENT, ENOTDIR), or for a directory (not modelled).
    async fn meta_target(&self, path: &str) -> Option<(Attr, Kind)> {
        let attr = self.walk(path).await.ok()?;
        let kind = self.model.kind(path)?;
        (kind != Kind::Dir).then_some((attr, kind))
    }

    /// `stat` after a close look (an xattr read reads the metadata): what the model knows.
    async fn stat_closely(&self, what: &str, ino: u64) -> Attr {
        errno(self.fs().listxattr(ino).await)
            .unwrap_or_else(|code| panic!("listxattr of {what}: errno {code}"));
        errno(self.fs().getattr(ino).await).unwrap_or_else(|code| panic!("getattr of {what}: errno {code}"))
    }

    /// The product made a metadata change to the file or link at `path`: `meta` is what it
    /// now has. Where it is staged with something to upload, the upload takes the change; else
    /// the object is copied onto itself now, the modification time pinned if none is kept (a
    /// change to nothing new copies nothing, unless the file is staged).
    fn meta_changed(&mut self, path: &str, mut meta: Meta, expect: &mut Expect) {
        let model = &mut self.model;
        if let Some(&node) = model.files.get(path) {
            let n = model.node_mut(node);
            if n.staged > 0 && (n.dirty || !n.remote) {
                n.meta = meta;
                return;
            }
            if n.staged == 0 && meta == n.meta {
                return;
            }
            meta.pin();
            n.meta = meta;
            expect.set(path, Some(model.object_of(node)));
        } else {
            let link = model.links.get_mut(path).unwrap();
            if meta == link.meta {
                return;
            }
            meta.pin();
            link.meta = meta;
            expect.set(path, Some(Object::new(link.target.clone(), link.meta.clone())));
        }
        model.mark_stale(|key| key == path);
    }

    /// A metadata change other than of the mtime leaves `st_mtime` as it was.
    async fn check_mtime_kept(&self, what: &str, ino: u64, before: &Attr) {
        let after =
            errno(self.fs().getattr(ino).await).unwrap_or_else(|code| panic!("getattr after {what}: {code}"));
        assert_eq!(after.mtime, before.mtime, "st_mtime after {what}");
    }

    async fn set_xattr(&mut self, path: &str, name: &str, value: &[u8], flags: i32, expect: &mut Expect) {
        let Some((attr, kind)) = self.meta_target(path).await else {
            return;
        };
        if kind == Kind::Symlink {
            return; // The kernel refuses user.* attributes on a link (EPERM).
        }
        let what = format!(
            "setxattr {name}={:?} (flags {flags}) of {path:?}",
            String::from_utf8_lossy(value)
        );
        let before = self.stat_closely(&what, attr.ino).await;
        let set = errno(self.fs().setxattr(attr.ino, OsStr::new(name), value, flags).await);
        let mut meta = self.model.meta(path).clone();
        let key = xattr_key(name);
        let exists = meta.xattrs.contains_key(&key);
        let expected = if flags & libc::XATTR_CREATE != 0 && exists {
            Err(libc::EEXIST)
        } else if flags & libc::XATTR_REPLACE != 0 && !exists {
            Err(libc::ENODATA)
        } else {
            Ok(())
        };
        assert_eq!(set, expected, "{what}");
        if set.is_ok() {
            meta.xattrs.insert(key, value.to_vec());
            self.meta_changed(path, meta, expect);
        }
        self.check_mtime_kept(&what, attr.ino, &before).await;
    }

    async fn remove_xattr(&mut self, path: &str, name: &str, expect: &mut Expect) {
        let Some((attr, kind)) = self.meta_target(path).await else {
            return;
        };
        if kind == Kind::Symlink {
            return;
        }
        let what = format!("removexattr {name} of {path:?}");
        let before = self.stat_closely(&what, attr.ino).await;
        let removed = errno(self.fs().removexattr(attr.ino, OsStr::new(name)).await);
        let mut meta = self.model.meta(path).clone();
        match meta.xattrs.remove(&xattr_key(name)) {
            None => assert_eq!(removed, Err(libc::ENODATA), "{what}"),
            Some(_) => {
                assert_eq!(removed, Ok(()), "{what}");
                self.meta_changed(path, meta, expect);
            }
        }
        self.check_mtime_kept(&what, attr.ino, &before).await;
    }

    async fn chmod(&mut self, path: &str, perm: u32, expect: &mut Expect) {
        let Some((attr, kind)) = self.meta_target(path).await else {
            return;
        };
        let change = AttrChange {
            perm: Some(perm),
            ..AttrChange::default()
        };
        let what = format!("chmod {perm:o} {path:?}");
        if kind == Kind::Symlink {
            if attr.kind == Kind::Symlink {
                return; // chmod(2) follows the link.
            }
            // A listing showed the link as a regular file (lazy metadata) and the lookup took
            // that, so the kernel sends the chmod to the link itself. A link's own mode is always
            // 0777: the link must stay a link, its headers as they were (whatever the answer).
            let _ = self.fs().setattr_all(attr.ino, None, &change, None).await;
            return;
        }
        let before = self.stat_closely(&what, attr.ino).await;
        let changed = errno(self.fs().setattr_all(attr.ino, None, &change, None).await)
            .unwrap_or_else(|code| panic!("{what}: errno {code}"));
        let mut meta = self.model.meta(path).clone();
        meta.mode = Some(S_IFREG | perm);
        self.meta_changed(path, meta, expect);
        let meta = self.model.meta(path).clone();
        self.check_attr(&what, &changed, Kind::File, &meta);
        self.check_mtime_kept(&what, attr.ino, &before).await;
    }

    /// chown (lchown of a link) or utimensat (without following a link).
    async fn change_attrs(&mut self, path: &str, change: AttrChange, expect: &mut Expect) {
        let Some((attr, kind)) = self.meta_target(path).await else {
            return;
        };
        let what = format!("{change:?} of {path:?}");
        let before = self.stat_closely(&what, attr.ino).await;
        let changed = errno(self.fs().setattr_all(attr.ino, None, &change, None).await)
            .unwrap_or_else(|code| panic!("{what}: errno {code}"));
        let mut meta = self.model.meta(path).clone();
        meta.uid = change.uid.or(meta.uid);
        meta.gid = change.gid.or(meta.gid);
        if change.mtime.is_some() && change.atime.is_none() && meta.atime.is_none() {
            // UTIME_OMIT leaves st_atime as it was, and it was st_mtime: so it is kept now.
            let kept = match &meta.mtime {
                Mtime::Exact(time) => time.clone(),
                Mtime::Absent | Mtime::Pinned => header_time(before.atime),
            };
            meta.atime = Some(kept);
        }
        if let Some(mtime) = change.mtime {
            meta.mtime = Mtime::Exact(header_time(mtime));
        }
        if let Some(atime) = change.atime {
            meta.atime = Some(header_time(atime));
        }
        self.meta_changed(path, meta, expect);
        let meta = self.model.meta(path).clone();
        self.check_attr(&what, &changed, kind, &meta);
        if change.mtime.is_none() {
            self.check_mtime_kept(&what, attr.ino, &before).await;
        }
    }

    async fn symlink(&mut self, path: &str, target: &[u8], owner: Option<(u32, u32)>, expect: &mut Expect) {
        let Some(parent) = self.parent(path).await else {
            return;
        };
        let creator = owner.map(|(uid, gid)| Creator {
            uid,
            gid,
            perm: 0o777,
        });
        let name = OsStr::new(split(path).1);
        let made = errno(self.fs().symlink(parent, name, target, creator).await);
        let what = format!("symlink {path:?} -> {:?}", String::from_utf8_lossy(target));
        if self.model.kind(path).is_some() {
            assert_eq!(made.err(), Some(libc::EEXIST), "{what}");
            return;
        }
        let attr = made.unwrap_or_else(|code| panic!("{what}: errno {code}"));
        let (uid, gid) = owner.unwrap_or((DEFAULT_OWNER, DEFAULT_OWNER));
        let link = Link {
            target: Bytes::copy_from_slice(target),
            meta: Meta::created(Kind::Symlink, uid, gid, 0o777),
        };
        self.check_attr(&what, &attr, Kind::Symlink, &link.meta);
        assert_eq!(attr.size, target.len() as u64, "size of the link made by {what}");
        expect.set(path, Some(Object::new(link.target.clone(), link.meta.clone())));
        self.model.links.insert(path.to_owned(), link);
        let read = errno(self.fs().readlink(attr.ino).await);
        assert_eq!(read.as_deref(), Ok(target), "readlink after {what}");
    }

    async fn readlink(&mut self, path: &str) {
        let Ok(attr) = self.walk(path).await else {
            return;
        };
        let read = errno(self.fs().readlink(attr.ino).await);
        let expected = match self.model.links.get(path) {
            Some(link) => Ok(link.target.to_vec()),
            None => Err(libc::EINVAL),
        };
        assert_eq!(read, expected, "readlink {path:?}");
    }

    /// `attr` shows what `meta` says (the mount's defaults where it says nothing).
    fn check_attr(&self, what: &str, attr: &Attr, kind: Kind, meta: &Meta) {
        let perm = match kind {
            Kind::Symlink => 0o777,
            _ => meta.mode.map_or(FILE_MODE, |mode| mode & 0o7777),
        };
        let expected = (
            kind,
            perm as u16,
            meta.uid.unwrap_or(DEFAULT_OWNER),
            meta.gid.unwrap_or(DEFAULT_OWNER),
        );
        assert_eq!(
            (attr.kind, attr.perm, attr.uid, attr.gid),
            expected,
            "kind, mode and owner: {what} ({meta:?})"
        );
        if let Mtime::Exact(time) = &meta.mtime {
            assert_eq!(attr.mtime, parse_header_time(time), "st_mtime: {what} ({meta:?})");
        }
        let atime = meta.atime.as_deref().map_or(attr.mtime, parse_header_time);
        assert_eq!(attr.atime, atime, "st_atime: {what} ({meta:?})");
    }

    /// The mount's view of every file's and link's metadata: extended attributes, readlink, and
    /// `stat` after the close look those are.
    async fn check_metadata(&self) {
        for (path, &node) in &self.model.files {
            let attr = self.walk(path).await.unwrap();
            let meta = &self.model.nodes[&node].meta;
            let listed = errno(self.fs().listxattr(attr.ino).await)
                .unwrap_or_else(|code| panic!("listxattr of {path:?}: errno {code}"));
            let expected: BTreeSet<String> = meta.xattrs.keys().map(|name| format!("user.{name}")).collect();
            assert_eq!(user_names(&listed), expected, "listxattr of {path:?}");
            for name in XATTR_NAMES.iter().chain([&RESERVED_XATTR]) {
                let got = errno(self.fs().getxattr(attr.ino, OsStr::new(name)).await);
                let expected = meta.xattrs.get(&xattr_key(name)).cloned().ok_or(libc::ENODATA);
                assert_eq!(got, expected, "getxattr {name} of {path:?}");
            }
            let attr = errno(self.fs().getattr(attr.ino).await)
                .unwrap_or_else(|code| panic!("getattr of {path:?}: errno {code}"));
            self.check_attr(&format!("stat of {path:?}"), &attr, Kind::File, meta);
        }
        for (path, link) in &self.model.links {
            let attr = self.walk(path).await.unwrap();
            let read = errno(self.fs().readlink(attr.ino).await);
            assert_eq!(read.as_deref(), Ok(&link.target[..]), "readlink {path:?}");
            let attr = errno(self.fs().getattr(attr.ino).await)
                .unwrap_or_else(|code| panic!("getattr of {path:?}: errno {code}"));
            self.check_attr(&format!("lstat of {path:?}"), &attr, Kind::Symlink, &link.meta);
            assert_eq!(attr.size, link.target.len() as u64, "size of {path:?}");
        }
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
            self.check_s3_no_rest(expect).await;
        } else {
            self.check_s3(expect).await;
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
            // A file whose close had begun (a flush failed since its last upload) goes up now, or
            // had gone up already, as the mount showed it, metadata included: nothing else
            // changed its object. Any other change was never promised to S3 and is set aside in
            // the recovery folder.
            for path in closing {
                assert!(
                    report.uploaded.iter().any(|key| key == path),
                    "the close of {path:?} had begun, yet it was not uploaded: {report:?}"
                );
                expect.set(path, Some(self.model.object_of(self.model.files[path])));
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
        self.check_s3_no_rest(expect).await;
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
        self.check_metadata().await;
        self.check_tree().await;
        self.check_contents().await;
    }

    /// The bucket must hold what `expect` allows at the keys it lists, and be unchanged elsewhere;
    /// and files at rest must be in it.
    async fn check_s3(&mut self, expect: Expect) {
        self.check_s3_no_rest(expect).await;
        self.check_at_rest();
    }

    /// The bucket must hold what `expect` allows at the keys it lists (bytes and user metadata),
    /// and be unchanged elsewhere.
    async fn check_s3_no_rest(&mut self, expect: Expect) {
        let mut actual: BTreeMap<String, Seen> = BTreeMap::new();
        for key in self.client.keys() {
            let body = self.client.body(&key).unwrap();
            // The bucket itself, not through the fault wrapper.
            let head = self
                .client
                .inner()
                .head(&key)
                .await
                .expect("HEAD of a listed key");
            let seen = Seen {
                body,
                user: head.metadata.user,
                etag: head.etag,
            };
            actual.insert(key, seen);
        }
        let keys: BTreeSet<String> = actual
            .keys()
            .chain(self.model.s3.keys())
            .chain(expect.0.keys())
            .cloned()
            .collect();
        let mut s3 = BTreeMap::new();
        let mut changed = Vec::new();
        for key in keys {
            let got = actual.get(&key);
            let (found, what) = match expect.0.get(&key) {
                Some(expected) => (expected.as_ref(), "got"),
                None => (self.model.s3.get(&key), "changed unexpectedly: got"),
            };
            assert!(
                holds(found, got),
                "S3 at {key:?} {what} {}, expected {}",
                describe_seen(got),
                describe(found)
            );
            if let (Some(object), Some(seen)) = (found, got) {
                let mut object = object.clone();
                object.meta.learn(&seen.user);
                s3.insert(key.clone(), object);
            }
            let etag = got.map(|seen| &seen.etag);
            if etag != self.model.etags.get(&key)
                || got.map(|seen| &seen.body) != self.model.s3.get(&key).map(|o| &o.body)
            {
                changed.push(key.clone());
            }
        }
        assert_eq!(
            self.client.open_multipart_uploads(),
            0,
            "multipart uploads left open"
        );
        self.model.etags = actual.into_iter().map(|(key, seen)| (key, seen.etag)).collect();
        // A pin seen in the bucket is the file's too, where the file is what S3 holds.
        for (key, object) in &s3 {
            let Mtime::Exact(time) = &object.meta.mtime else {
                continue;
            };
            let meta = match self.model.files.get(key) {
                Some(node) => {
                    let n = self.model.nodes.get_mut(node).unwrap();
                    if n.staged > 0 && n.dirty {
                        continue;
                    }
                    &mut n.meta
                }
                None => match self.model.links.get_mut(key) {
                    Some(link) => &mut link.meta,
                    None => continue,
                },
            };
            if meta.mtime == Mtime::Pinned {
                meta.mtime = Mtime::Exact(time.clone());
            }
        }
        self.model.s3 = s3;
        self.model.mark_stale(|key| changed.iter().any(|c| c == key));
    }

    /// Files and links nobody is writing are in S3 as the mount shows them, metadata included;
    /// every directory has its marker; with nothing open, the bucket is exactly the tree.
    fn check_at_rest(&self) {
        let model = &self.model;
        for (path, node) in &model.files {
            let n = &model.nodes[node];
            let object = model.s3.get(path);
            if n.staged == 0 {
                let object = object.unwrap_or_else(|| panic!("{path:?} closed but not in S3"));
                assert_same(&format!("S3 object of closed {path:?}"), &object.body, &n.content);
            }
            if n.staged == 0 || !n.dirty {
                // Also a staged file with nothing to upload: a metadata change copied it at once.
                let object = object.unwrap_or_else(|| panic!("{path:?} not in S3"));
                assert!(
                    n.meta.agrees(&object.meta),
                    "metadata of {path:?}: the file has {:?}, its object {:?}",
                    n.meta,
                    object.meta
                );
            }
        }
        for (path, link) in &model.links {
            let object = model
                .s3
                .get(path)
                .unwrap_or_else(|| panic!("link {path:?} not in S3"));
            assert_eq!(object.body, link.target, "S3 object of link {path:?}");
            assert!(
                link.meta.agrees(&object.meta),
                "metadata of link {path:?}: {:?}, its object {:?}",
                link.meta,
                object.meta
            );
        }
        for dir in &model.dirs {
            assert!(model.s3.contains_key(&marker(dir)), "marker of {dir:?} missing");
        }
        if model.handles.iter().all(|h| !matches!(h.view, View::Staged)) {
            let expected: BTreeSet<String> = model
                .files
                .keys()
                .chain(model.links.keys())
                .cloned()
                .chain(model.dirs.iter().map(|d| marker(d)))
                .collect();
            let actual: BTreeSet<String> = model.s3.keys().cloned().collect();
            assert_eq!(actual, expected, "keys in S3 with no file being written");
        }
    }

    /// Every directory lists what the model holds; every file and link has the model's size.
    async fn check_tree(&self) {
        let mut dirs = vec![(String::new(), ROOT_INO)];
        while let Some((dir, ino)) = dirs.pop() {
            let listed = list(self.fs(), ino).await;
            // A listing carries no metadata: a link is listed as a regular file.
            let expected: BTreeMap<String, Kind> = self
                .model
                .children(&dir)
                .into_iter()
                .map(|(name, kind)| (name, if kind == Kind::Symlink { Kind::File } else { kind }))
                .collect();
            assert_eq!(listed, expected, "listing of {dir:?}");
            for name in listed.into_keys() {
                let path = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let attr = errno(self.fs().lookup(ino, OsStr::new(&name)).await)
                    .unwrap_or_else(|code| panic!("lookup of listed {path:?}: errno {code}"));
                let kind = self.model.kind(&path).unwrap();
                assert!(
                    self.kind_agrees(Ok(kind), Ok(attr.kind)),
                    "kind of {path:?}: {:?}, expected {kind:?}",
                    attr.kind
                );
                let size = match kind {
                    Kind::Dir => {
                        dirs.push((path, attr.ino));
                        continue;
                    }
                    Kind::Symlink => self.model.links[&path].target.len() as u64,
                    Kind::File => self.model.content(self.model.files[&path]).len() as u64,
                };
                assert_eq!(attr.size, size, "size of {path:?}");
                assert_eq!(self.fs().getattr(attr.ino).await.map(|a| a.size).ok(), Some(size));
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
        steps in prop::collection::vec(step(), 1..60),
    ) {
        run(if long_ttl { Duration::from_secs(60) } else { Duration::ZERO }, preset, &steps);
    }
}

// ---------------------------------------------------------------------------------------------
// Failure injection

/// A mounted file system over `client` with its staging area in `cache_dir`.
fn mount(client: &Arc<Bucket>, cache_dir: &TempDir) -> S3Fs {
    mount_with_ttl(client, cache_dir, Duration::ZERO)
}

fn mount_with_ttl(client: &Arc<Bucket>, cache_dir: &TempDir, metadata_ttl: Duration) -> S3Fs {
    let staging = Staging::open(cache_dir.path()).unwrap();
    S3Fs::new(client.clone(), config(metadata_ttl), None, Some(staging))
}

/// The user metadata stored at `key`, read from the bucket itself.
async fn user_metadata(client: &Bucket, key: &str) -> BTreeMap<String, String> {
    client.inner().head(key).await.unwrap().metadata.user
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

/// chmod of a link that a listing showed as a regular file leaves it a link. With lazy POSIX
/// metadata a lookup after `ls` takes the listed entry (the defaults: a regular file), so the
/// kernel does not follow the link and sends the chmod to the link itself. A link's own mode is
/// always 0777 (`S_IFLNK|0777` in `x-amz-meta-mode`, docs/SEMANTICS.md "Symlinks"); the lazy mode
/// may show the link as a file for that while, never make it one. (Found by the model: the change
/// took its kind from the listed entry and wrote `S_IFREG|0600` over the object's
/// `S_IFLNK|0777`, so the link became a regular file holding its target's path, and its mtime
/// was pinned.)
#[tokio::test]
async fn chmod_of_a_link_listed_as_a_file_keeps_it_a_link() {
    let client = Arc::new(Bucket::memory("bugs"));
    let cache_dir = TempDir::new().unwrap();
    // The link is another writer's (this mount's cache does not know it), so the listing, which
    // carries no metadata, is all this mount has seen of it.
    let link_metadata = HashMap::from([("mode".to_owned(), "41471".to_owned())]);
    client.put_object_with("l", &b"target"[..], None, link_metadata);
    let fs = mount_with_ttl(&client, &cache_dir, Duration::from_secs(60));
    list(&fs, ROOT_INO).await;
    let attr = fs.lookup(ROOT_INO, OsStr::new("l")).await.unwrap();
    assert_eq!(attr.kind, Kind::File, "the listed link shows as a regular file");
    let change = AttrChange {
        perm: Some(0o600),
        ..AttrChange::default()
    };
    let _ = fs.setattr_all(attr.ino, None, &change, None).await;
    let user = user_metadata(&client, "l").await;
    assert_eq!(
        user.get("mode").map(String::as_str),
        Some("41471"),
        "the link's mode (S_IFLNK|0777) was replaced: {user:?}"
    );
    assert_eq!(errno(fs.readlink(attr.ino).await), Ok(b"target".to_vec()));
}

/// chown after a listing of a file this mount wrote leaves `st_mtime` as it was. (Found by the
/// model: the entry this mount made at the upload carries the last write's time to the
/// nanosecond; the listing kept it (it knows more than the page of the same object), and the
/// chown pinned the time a HEAD tells, Last-Modified to the second, so `st_mtime` moved.)
#[tokio::test]
async fn chown_after_a_listing_of_a_file_this_mount_wrote_keeps_its_mtime() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("a", &b"old contents"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount_with_ttl(&client, &cache_dir, Duration::from_secs(60));
    let attr = fs.lookup(ROOT_INO, OsStr::new("a")).await.unwrap();
    fs.setattr(attr.ino, Some(0), None).await.unwrap();
    list(&fs, ROOT_INO).await;
    let before = fs.getattr(attr.ino).await.unwrap();
    let change = AttrChange {
        uid: Some(0),
        gid: Some(0),
        ..AttrChange::default()
    };
    let changed = fs.setattr_all(attr.ino, None, &change, None).await.unwrap();
    assert_eq!(changed.mtime, before.mtime, "st_mtime in chown's answer");
    assert_eq!(
        fs.getattr(attr.ino).await.unwrap().mtime,
        before.mtime,
        "st_mtime after chown"
    );
}

/// A file opened with O_TRUNC whose close failed (S3 unreachable) is uploaded by the next mount
/// after a crash: its close had begun and nothing changed its object (docs/SEMANTICS.md,
/// "Writing", "Durability", and "What each fault does": "a close that had begun is uploaded by
/// the next mount"). (Found by the model: a file truncated at open keeps no base, so recovery
/// took the object it had replaced for one that "appeared when the file was new", and set the
/// data aside in the recovery folder; S3 kept the old content.)
#[tokio::test]
async fn failed_close_of_a_file_truncated_at_open_is_uploaded_by_the_next_mount() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("f", &b"old contents"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (_, fh) = open_existing(&fs, "f", libc::O_WRONLY | libc::O_TRUNC).await;
    fs.write(fh, 0, b"new").await.unwrap();
    client.set_unreachable(true);
    assert_eq!(errno(fs.flush(fh).await), Err(libc::EIO));
    // The daemon dies before the close is retried.
    drop(fs);
    client.set_unreachable(false);

    let fs = mount(&client, &cache_dir);
    let report = fs.recover().await.unwrap();
    assert_eq!(report.uploaded, vec!["f".to_owned()], "{report:?}");
    assert_eq!(client.body("f").as_deref(), Some(&b"new"[..]));
}

/// An interrupted close comes back with the metadata the file had on the mount, also when its
/// bytes are the object's. (Found by the model: recovery counted a file truncated at open and
/// written back to the same bytes as "uploaded already" (same size, same bytes), reported it
/// uploaded, and dropped the extended attribute set while it was staged; docs/SEMANTICS.md says
/// the journal records the metadata "so a recovered file is uploaded with them too".)
#[tokio::test]
async fn interrupted_close_keeps_a_metadata_change_when_the_bytes_are_the_same() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("f", &b"same"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let (ino, fh) = open_existing(&fs, "f", libc::O_WRONLY | libc::O_TRUNC).await;
    fs.write(fh, 0, b"same").await.unwrap();
    fs.setxattr(ino, OsStr::new("user.team"), b"ml", 0).await.unwrap();
    client.set_unreachable(true);
    assert_eq!(errno(fs.flush(fh).await), Err(libc::EIO));
    drop(fs);
    client.set_unreachable(false);

    let fs = mount(&client, &cache_dir);
    let report = fs.recover().await.unwrap();
    assert_eq!(report.uploaded, vec!["f".to_owned()], "{report:?}");
    let user = user_metadata(&client, "f").await;
    assert_eq!(
        user.get("team").map(String::as_str),
        Some("ml"),
        "{report:?}: {user:?}"
    );
}

/// utimensat of the mtime alone (`UTIME_OMIT` for the atime, as `touch -m -d` sends) leaves
/// `st_atime` as it was, also when the object keeps no `x-amz-meta-mtime` (its `st_atime` was
/// then its Last-Modified). (Found by the model: the old time was kept in `x-amz-meta-atime`
/// only when an `x-amz-meta-mtime` held it, so here `st_atime` followed the new mtime; the same
/// for a file being written, and for a link.)
#[tokio::test]
async fn setting_the_mtime_alone_leaves_the_atime() {
    let client = Arc::new(Bucket::memory("bugs"));
    client.put_object("f", &b"x"[..]);
    let cache_dir = TempDir::new().unwrap();
    let fs = mount(&client, &cache_dir);
    let attr = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let before = fs.getattr(attr.ino).await.unwrap();
    let change = AttrChange {
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_000_000_000)),
        ..AttrChange::default()
    };
    let changed = fs.setattr_all(attr.ino, None, &change, None).await.unwrap();
    assert_eq!(changed.mtime, UNIX_EPOCH + Duration::from_secs(1_000_000_000));
    assert_eq!(changed.atime, before.atime, "the answer to utimensat");
    let after = fs.getattr(attr.ino).await.unwrap();
    assert_eq!(after.atime, before.atime, "stat after utimensat");
}

/// Found by the model (CI of 0e2f224): a file whose flush failed, renamed over a new file that
/// was truncated, then a crash: its close had begun, so the next mount must upload it at its new
/// name, not set it aside.
#[test]
fn a_failed_flush_then_a_rename_over_a_truncated_new_file_then_a_crash_uploads_it() {
    let write = |path| Step::Create {
        path,
        access: Access::Write,
        exclusive: false,
        truncate: false,
        append: false,
        creator: None,
    };
    let mut new_file = write(Target::Path("b".to_owned()));
    if let Step::Create { creator, .. } = &mut new_file {
        *creator = Some(Creator {
            uid: 0,
            gid: 0,
            perm: 0o755,
        });
    }
    run(
        Duration::ZERO,
        false,
        &[
            write(Target::Existing(0)),
            new_file,
            Step::Truncate {
                path: Target::Existing(1),
                size: Pos::At(0),
            },
            Step::FailedFlush { handle: 0 },
            Step::Rename {
                from: Target::Existing(0),
                to: Target::Existing(1),
                noreplace: false,
            },
            Step::Remount { how: Unmount::Crash },
        ],
    );
}
