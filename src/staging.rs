//! The staging area on local disk: one data file per file being written, and beside it a small
//! journal saying which key it is for, which object version it started from, and how far its
//! upload got, so a daemon that dies (kill -9, power loss) loses nothing on the next mount.
//!
//! Owns the directory layout (`<cache dir>/staging/<id>.data` + `<id>.journal`, and
//! `<cache dir>/recovery/` for what cannot be uploaded safely), the journal format, its atomic
//! rewrite (temp file, fsync, rename), and the lock that keeps two mounts out of one staging
//! area. It is synchronous (but for `PageCacheEvictor`, which works on tokio's blocking pool) and
//! knows nothing of S3: the write-back (`writeback`) decides what to do with a leftover.

use crate::lock;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lockfile::{LockError, lock_dir};
use crate::object::ObjectMetadata;
use nix::fcntl::Flock;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// First line of every journal; a different format gets a different line. Format 2 added the
/// boot a journal was written in and whether the data had reached the disk; format 3 the
/// object's metadata (`header` and `meta` lines), so a recovered file is uploaded with it.
const JOURNAL_MAGIC: &str = "s3mount-staged 3";
/// Format 2, still read: as format 3 without metadata.
const JOURNAL_MAGIC_V2: &str = "s3mount-staged 2";
/// Format 1, still read: its journals said `closing` durably for a multipart upload and only
/// to the page cache for a single PutObject, and recovery uploaded every `closing` file. Such a
/// journal counts as synced, so a recovery after an upgrade does what the release that wrote it
/// did (which, for a small file after a power loss, may upload torn data, as it always did).
const JOURNAL_MAGIC_V1: &str = "s3mount-staged 1";
/// Where Linux says which boot this is: a random UUID, new at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Bytes escaped in journal values: controls (newlines above all), space and `%`.
const JOURNAL_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("cannot use the staging directory {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "staging directory {path} is in use by another s3mount{holder}; give this mount its own with --cache DIR"
    )]
    InUse { path: PathBuf, holder: String },
}

/// How far a staged file got, as written in its journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalState {
    /// The same content as the base object (nothing to upload): after a crash, delete it.
    Clean,
    /// Written to, not closed: after a crash nobody promised this content to S3.
    Dirty,
    /// A close or fsync began uploading this content: after a crash, upload it.
    Closing,
    /// Unlinked (or replaced) while open: never to be uploaded; after a crash, delete it.
    Deleted,
}

/// What a journal says of one staged file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// The full S3 key the file is for.
    pub key: String,
    /// The object the file started from (`None`: a new file, or one truncated to 0 at open).
    pub base: Option<BaseRecord>,
    /// Blocks (of `BLOCK_SIZE`) of the base that the data file holds; the others are the base's
    /// bytes, not yet fetched (a sparse hole in the data file).
    pub local_blocks: Vec<Range<u64>>,
    pub state: JournalState,
    /// A multipart upload of this file in progress: a crash leaves it open, the recovery aborts it.
    pub upload_id: Option<String>,
    /// The boot this journal was written in ([`current_boot_id`]; `None` if unknown).
    pub boot_id: Option<String>,
    /// The data file was on disk (fsynced) when this was written, and has not changed since.
    pub synced: bool,
    /// The metadata the upload sends; `None` in journals of formats 1 and 2, which did not
    /// record it (the recovery takes the base object's, when that is unchanged).
    pub metadata: Option<ObjectMetadata>,
}

impl JournalRecord {
    /// Whether a file left `closing` by a dead daemon may be uploaded as it is. Its data is whole
    /// if it reached the disk, or if the machine has not restarted since (a killed daemon leaves
    /// the page cache, and so the data, intact). After a power loss, data that was only in the
    /// page cache may be torn: such a file goes to the recovery folder instead.
    pub fn close_can_be_trusted(&self) -> bool {
        self.state == JournalState::Closing
            && (self.synced || (self.boot_id.is_some() && self.boot_id.as_deref() == current_boot_id()))
    }
}

/// This boot's id, read once; `None` where the kernel does not say (then only data that reached
/// the disk is trusted after a crash).
pub fn current_boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string(BOOT_ID_PATH)
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
        })
        .as_deref()
}

/// The object version a staged file started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRecord {
    pub etag: String,
    /// The object's size.
    pub object_size: u64,
    /// How many of its first bytes are still the file's (less after a truncate).
    pub len: u64,
}

/// A staged data file and its journal.
#[derive(Clone, Debug)]
pub struct StagedFiles {
    pub data: Arc<File>,
    data_path: PathBuf,
    journal_path: PathBuf,
    /// Set by [`StagedFiles::remove`]; journal rewrites take it too, so none lands after.
    removed: Arc<Mutex<bool>>,
}

/// A staged file left by an earlier run.
#[derive(Debug)]
pub struct Leftover {
    pub data_path: PathBuf,
    pub journal_path: PathBuf,
    /// `None` when the journal is missing or unreadable (a crash while it was first written).
    pub record: Option<JournalRecord>,
}

/// The staging area of one mount.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    recovery_dir: PathBuf,
    /// Unique within this run (the lock keeps other runs out); the start time keeps names of
    /// different runs apart.
    run_id: u64,
    next_id: AtomicU64,
    /// Taken when the area exists: at open if an earlier run made it, else at the first write,
    /// so a mount that only reads leaves nothing on disk.
    lock: Mutex<Option<Flock<File>>>,
}

impl Staging {
    /// The staging area in `<cache_dir>/staging` (and `recovery`). If an earlier run made it, its
    /// lock is taken now (another live mount using it is refused); otherwise nothing is created
    /// until the first file is staged.
    pub fn open(cache_dir: &Path) -> Result<Self, StagingError> {
        let dir = cache_dir.join("staging");
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let staging = Self {
            recovery_dir: cache_dir.join("recovery"),
            run_id,
            next_id: AtomicU64::new(0),
            lock: Mutex::new(None),
            dir,
        };
        if staging.dir.is_dir() {
            staging.ready()?;
        }
        Ok(staging)
    }

    /// Creates the directories (0700) and takes the lock, once.
    fn ready(&self) -> Result<(), StagingError> {
        let mut held = lock(&self.lock);
        if held.is_some() {
            return Ok(());
        }
        for path in [&self.dir, &self.recovery_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|error| StagingError::Io {
                    path: path.clone(),
                    error,
                })?;
        }
        *held = Some(take_lock(&self.dir)?);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn recovery_dir(&self) -> &Path {
        &self.recovery_dir
    }

    /// A new, empty data file and its journal saying `record`.
    pub fn create(&self, record: &JournalRecord) -> io::Result<StagedFiles> {
        if let Err(error) = self.ready() {
            tracing::error!(%error, "cannot stage a file for writing");
            return Err(match error {
                StagingError::Io { error, .. } => error,
                in_use => io::Error::other(in_use.to_string()),
            });
        }
        let id = format!(
            "{:x}-{:x}",
            self.run_id,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let data_path = self.dir.join(format!("{id}.data"));
        let journal_path = self.dir.join(format!("{id}.journal"));
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&data_path)?;
        let files = StagedFiles {
            data: Arc::new(data),
            data_path,
            journal_path,
            removed: Arc::default(),
        };
        if let Err(error) = files.record(record, false) {
            files.remove();
            return Err(error);
        }
        Ok(files)
    }

    /// Staged files of earlier runs, oldest first. Call before this run creates any.
    pub fn leftovers(&self) -> io::Result<Vec<Leftover>> {
        let mut leftovers = Vec::new();
        if !self.dir.is_dir() {
            return Ok(leftovers);
        }
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(stem) = path
                .extension()
                .filter(|ext| *ext == "data")
                .and(path.file_stem())
            else {
                continue;
            };
            let journal_path = self.dir.join(format!("{}.journal", stem.to_string_lossy()));
            let record = fs::read_to_string(&journal_path)
                .ok()
                .and_then(|text| parse_journal(&text));
            leftovers.push(Leftover {
                data_path: path,
                journal_path,
                record,
            });
        }
        // Journal temp files of a crash mid-rewrite, and journals without data, are debris.
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_tmp = path.extension().is_some_and(|ext| ext == "tmp");
            let orphan_journal =
                path.extension().is_some_and(|ext| ext == "journal") && !path.with_extension("data").exists();
            if is_tmp || orphan_journal {
                let _ = fs::remove_file(&path);
            }
        }
        leftovers.sort_by(|a, b| a.data_path.cmp(&b.data_path));
        Ok(leftovers)
    }

    /// Deletes a leftover whose content is in S3.
    pub fn discard(&self, leftover: &Leftover) {
        remove_pair(&leftover.journal_path, &leftover.data_path);
    }

    /// Moves a leftover's data into the recovery folder, named after its key's last component,
    /// and returns where it went. Its journal goes beside it (`.journal`), saying the full key.
    pub fn move_to_recovery(&self, leftover: &Leftover) -> io::Result<PathBuf> {
        let stem = leftover
            .data_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = leftover
            .record
            .as_ref()
            .map_or_else(|| "unnamed".to_owned(), |r| recovery_name(&r.key));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.recovery_dir)?;
        let target = self.recovery_dir.join(format!("{stem}-{name}"));
        fs::rename(&leftover.data_path, &target)?;
        let mut journal = target.clone().into_os_string();
        journal.push(".journal");
        if fs::rename(&leftover.journal_path, &journal).is_err() {
            let _ = fs::remove_file(&leftover.journal_path);
        }
        Ok(target)
    }
}

impl StagedFiles {
    /// Rewrites the journal atomically. `durable`: the data file and the journal reach the disk
    /// before this returns (a promise that survives power loss), else only the page cache.
    /// Once the pair is removed, this does nothing: a rewrite still running on a blocking thread
    /// (its upload was cancelled) must not bring a journal back.
    pub fn record(&self, record: &JournalRecord, durable: bool) -> io::Result<()> {
        let removed = self
            .removed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *removed {
            return Ok(());
        }
        if durable {
            self.data.sync_data()?;
        }
        let tmp = self.journal_path.with_extension("tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(format_journal(record).as_bytes())?;
        if durable {
            file.sync_data()?;
        }
        fs::rename(&tmp, &self.journal_path)?;
        if durable && let Some(dir) = self.journal_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes the data file and the journal (the content is in S3, or was never wanted). The
    /// data is cut to nothing first, so its space is free at once, even while a task that still
    /// holds the file open (a part upload being cancelled) has not let go of it yet.
    ///
    /// The journal goes first: a crash midway must never leave a journal (saying `closing`,
    /// say) beside a data file already emptied, which a recovery would upload.
    pub fn remove(&self) {
        let mut removed = self
            .removed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *removed = true;
        remove_quietly(&self.journal_path);
        if let Err(error) = self.data.set_len(0) {
            tracing::debug!(path = %self.data_path.display(), %error, "cannot empty a staged file before removing it");
        }
        remove_quietly(&self.data_path);
    }
}

/// Writes `range` of a data file to disk and drops it from the page cache, for a part already in
/// S3 (an early part). A file streamed into the mount then holds a few parts of page cache rather
/// than its whole size: it does not push the reader's data (training sets, the block cache) out
/// of memory, and its writes reuse the pages just freed instead of taking fresh ones, which on a
/// VM cost more than the copy itself. The bytes stay in the file; a later read or resend reads
/// them from disk. The kernel drops whole folios only, so a range whose ends fall inside a large
/// folio (ext4 uses up to 2 MiB) keeps those edges cached.
pub fn evict_from_page_cache(file: &File, range: Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (offset, len) = (
        range.start as libc::off64_t,
        (range.end - range.start) as libc::off64_t,
    );
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on an open descriptor that `file` keeps alive; no memory is passed.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Dirty pages are not dropped, so a write racing this keeps its bytes in memory.
    nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(io::Error::from)
}

/// Evicts ranges of one data file from the page cache in the background (see
/// [`evict_from_page_cache`]), one blocking thread at a time per file, whatever the number of
/// ranges queued: on a disk slower than the upload, threads blocked on its writes do not pile up
/// and starve the pool that every staging read and write runs on. Best effort: a range that cannot
/// be evicted stays cached until the file is deleted.
#[derive(Debug)]
pub struct PageCacheEvictor {
    file: Arc<File>,
    /// Ranges to evict, and whether a thread is draining them.
    queue: Mutex<(Vec<Range<u64>>, bool)>,
}

impl PageCacheEvictor {
    pub fn new(file: Arc<File>) -> Self {
        Self {
            file,
            queue: Mutex::new((Vec::new(), false)),
        }
    }

    /// Queues `range`; starts a thread to drain the queue unless one runs. Needs a tokio runtime.
    pub fn evict(self: &Arc<Self>, range: Range<u64>) {
        let mut queue = lock(&self.queue);
        queue.0.push(range);
        if !queue.1 {
            queue.1 = true;
            let evictor = self.clone();
            tokio::task::spawn_blocking(move || evictor.drain());
        }
    }

    fn drain(&self) {
        loop {
            let ranges = {
                let mut queue = lock(&self.queue);
                if queue.0.is_empty() {
                    queue.1 = false;
                    return;
                }
                std::mem::take(&mut queue.0)
            };
            for range in ranges {
                if let Err(error) = evict_from_page_cache(&self.file, range) {
                    tracing::debug!(%error, "could not drop a sent part from the page cache");
                }
            }
        }
    }
}

/// The longest key-derived part of a recovery file's name: with the id before it, the name stays
/// under NAME_MAX (255 bytes), whatever the key.
const RECOVERY_NAME_MAX: usize = 200;

/// A recovery file's name for `key`: its last non-empty component, as an admin would look for
/// it, made safe to be one file name in the recovery folder whatever the key holds. Control
/// bytes become `_` (a name with a newline or an escape sequence is a trap in a terminal), and
/// the name is cut at a character boundary to [`RECOVERY_NAME_MAX`]. It has no `/` (it is one
/// component), and `.` or `..` only ever follow the id (`<id>-..`), so it cannot leave the
/// folder. The full key is in the journal beside it.
fn recovery_name(key: &str) -> String {
    let last = key.rsplit('/').find(|part| !part.is_empty()).unwrap_or("unnamed");
    let mut name = String::new();
    for c in last.chars() {
        let c = if c.is_control() { '_' } else { c };
        if name.len() + c.len_utf8() > RECOVERY_NAME_MAX {
            break;
        }
        name.push(c);
    }
    name
}

/// Deletes a journal and then its data file (never a journal left naming a missing file).
fn remove_pair(journal: &Path, data: &Path) {
    remove_quietly(journal);
    remove_quietly(data);
}

/// Deletes a file of the staging area; one already gone is fine, any other failure is logged.
fn remove_quietly(path: &Path) {
    if let Err(error) = fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove a staged file");
    }
}

impl Leftover {
    /// Takes the leftover over as a staged file of this run (its journal rewritten in place).
    pub fn adopt(&self) -> io::Result<StagedFiles> {
        let data = OpenOptions::new().read(true).write(true).open(&self.data_path)?;
        Ok(StagedFiles {
            data: Arc::new(data),
            data_path: self.data_path.clone(),
            journal_path: self.journal_path.clone(),
            removed: Arc::default(),
        })
    }
}

fn format_journal(record: &JournalRecord) -> String {
    let state = match record.state {
        JournalState::Clean => "clean",
        JournalState::Dirty => "dirty",
        JournalState::Closing => "closing",
        JournalState::Deleted => "deleted",
    };
    let base = record.base.as_ref().map_or("-".to_owned(), |base| {
        format!("{} {} {}", base.object_size, base.len, escape(&base.etag))
    });
    let local: Vec<String> = record
        .local_blocks
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    let upload = record.upload_id.as_deref().map_or("-".to_owned(), escape);
    let boot = record.boot_id.as_deref().map_or("-".to_owned(), escape);
    let synced = if record.synced { "yes" } else { "no" };
    let mut text = format!(
        "{JOURNAL_MAGIC}\nkey {}\nbase {base}\nlocal {}\nupload {upload}\nstate {state}\nboot {boot}\nsynced {synced}\n",
        escape(&record.key),
        local.join(",")
    );
    let metadata = record.metadata.clone().unwrap_or_default();
    for (name, value) in metadata.headers() {
        if let Some(value) = value {
            text.push_str(&format!("header {name} {}\n", escape(value)));
        }
    }
    for (name, value) in &metadata.user {
        text.push_str(&format!("meta {} {}\n", escape(name), escape(value)));
    }
    text
}

/// Reads a `header` or `meta` line's value, `NAME VALUE`, into `metadata`.
fn parse_metadata_line(kind: &str, value: &str, metadata: &mut ObjectMetadata) -> Option<()> {
    let (name, value) = value.split_once(' ')?;
    let (name, value) = (unescape(name)?, unescape(value)?);
    match kind {
        "header" => metadata.set_header(&name, Some(value)).then_some(()),
        _ => {
            metadata.user.insert(name, value);
            Some(())
        }
    }
}

fn parse_journal(text: &str) -> Option<JournalRecord> {
    let mut lines = text.lines();
    let (mut boot, mut synced, mut metadata) = match lines.next()? {
        JOURNAL_MAGIC => (None, None, Some(ObjectMetadata::default())),
        JOURNAL_MAGIC_V2 => (None, None, None),
        JOURNAL_MAGIC_V1 => (Some(None), Some(true), None),
        _ => return None,
    };
    let (mut key, mut base, mut local, mut state, mut upload) = (None, None, None, None, None);
    for line in lines {
        let (name, value) = line.split_once(' ')?;
        match name {
            "key" => key = Some(unescape(value)?),
            "base" if value == "-" => base = Some(None),
            "base" => base = Some(Some(parse_base(value)?)),
            "local" => local = Some(parse_ranges(value)?),
            "upload" if value == "-" => upload = Some(None),
            "upload" => upload = Some(Some(unescape(value)?)),
            "boot" if value == "-" => boot = Some(None),
            "boot" => boot = Some(Some(unescape(value)?)),
            "header" | "meta" => parse_metadata_line(name, value, metadata.as_mut()?)?,
            "synced" => {
                synced = Some(match value {
                    "yes" => true,
                    "no" => false,
                    _ => return None,
                })
            }
            "state" => {
                state = Some(match value {
                    "clean" => JournalState::Clean,
                    "dirty" => JournalState::Dirty,
                    "closing" => JournalState::Closing,
                    "deleted" => JournalState::Deleted,
                    _ => return None,
                })
            }
            _ => return None,
        }
    }
    Some(JournalRecord {
        key: key?,
        base: base?,
        local_blocks: local?,
        upload_id: upload?,
        state: state?,
        boot_id: boot?,
        synced: synced?,
        metadata,
    })
}

fn parse_base(value: &str) -> Option<BaseRecord> {
    let mut fields = value.splitn(3, ' ');
    let object_size = fields.next()?.parse().ok()?;
    let len = fields.next()?.parse().ok()?;
    let etag = unescape(fields.next()?)?;
    Some(BaseRecord {
        etag,
        object_size,
        len,
    })
}

fn parse_ranges(value: &str) -> Option<Vec<Range<u64>>> {
    value
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (start, end) = r.split_once('-')?;
            Some(start.parse().ok()?..end.parse().ok()?)
        })
        .collect()
}

fn escape(value: &str) -> String {
    utf8_percent_encode(value, JOURNAL_ESCAPES).to_string()
}

fn unescape(value: &str) -> Option<String> {
    percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Takes the staging directory's lock, or says who holds it.
fn take_lock(dir: &Path) -> Result<Flock<File>, StagingError> {
    lock_dir(dir).map_err(|error| match error {
        LockError::Held { holder } => StagingError::InUse {
            path: dir.to_owned(),
            holder,
        },
        LockError::Io(error) => StagingError::Io {
            path: dir.join("lock"),
            error,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A part as the upload sends it (8 MiB, aligned): the page cache drops whole folios only, and
    /// ext4 may hold a file in folios of up to 2 MiB.
    const PART: u64 = 8 << 20;
    const PAGES: usize = (PART / 4096) as usize;

    /// A temporary directory on a disk file system: /tmp may be a tmpfs, whose pages are memory
    /// and never leave the page cache.
    fn disk_tempdir() -> tempfile::TempDir {
        let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&parent).unwrap();
        tempfile::tempdir_in(parent).unwrap()
    }

    /// Pages of `file` in `range` that are in the page cache (mincore over a mapping of it).
    fn resident_pages(file: &File, range: Range<u64>) -> usize {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let len = (range.end - range.start) as usize;
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, unmapped below; only
        // mincore looks at it, never a load through the pointer.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                range.start as libc::off_t,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            let mut vec = vec![0u8; len.div_ceil(page)];
            let result = libc::mincore(map, len, vec.as_mut_ptr());
            libc::munmap(map, len);
            assert_eq!(result, 0, "mincore: {}", io::Error::last_os_error());
            vec.iter().filter(|&&v| v & 1 == 1).count()
        }
    }

    #[test]
    fn evicting_a_sent_part_drops_only_its_pages_and_keeps_its_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = disk_tempdir();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let content: Vec<u8> = (0..(2 * PART as u32)).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&content, 0).unwrap();
        assert_eq!(
            resident_pages(&file, 0..PART),
            PAGES,
            "just written: in the page cache"
        );

        evict_from_page_cache(&file, 0..PART).unwrap();

        assert_eq!(
            resident_pages(&file, 0..PART),
            0,
            "the evicted part left the page cache"
        );
        assert_eq!(resident_pages(&file, PART..2 * PART), PAGES, "the rest stayed");
        let mut read = vec![0; content.len()];
        file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == content, "the bytes are still the file's");
    }

    #[tokio::test]
    async fn the_evictor_drains_every_range_queued() {
        use std::os::unix::fs::FileExt;
        let dir = disk_tempdir();
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("data"))
                .unwrap(),
        );
        file.write_all_at(&vec![7u8; 4 * PART as usize], 0).unwrap();
        let evictor = Arc::new(PageCacheEvictor::new(file.clone()));
        // Queued while the first may still run: all three must go.
        for part in [0, 1, 3] {
            evictor.evict(part * PART..(part + 1) * PART);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while [0, 1, 3]
            .iter()
            .any(|&part| resident_pages(&file, part * PART..(part + 1) * PART) > 0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "queued ranges still cached after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            resident_pages(&file, 2 * PART..3 * PART),
            PAGES,
            "a range never queued stays"
        );
    }

    fn record(key: &str, state: JournalState) -> JournalRecord {
        JournalRecord {
            key: key.to_owned(),
            base: Some(BaseRecord {
                etag: "\"abc\" 1".to_owned(),
                object_size: 10 << 20,
                len: 9 << 20,
            }),
            local_blocks: vec![0..2, 5..6],
            state,
            upload_id: Some("up load/1".to_owned()),
            boot_id: current_boot_id().map(str::to_owned),
            synced: false,
            metadata: Some(ObjectMetadata {
                content_type: Some("text/css; charset=utf-8".to_owned()),
                cache_control: Some("max-age=0".to_owned()),
                storage_class: Some("STANDARD_IA".to_owned()),
                user: [("mode", "33188"), ("odd name", "new\nline %41 ü"), ("empty", "")]
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect(),
                ..ObjectMetadata::default()
            }),
        }
    }

    #[test]
    fn journals_round_trip_odd_keys() {
        for key in ["a/b.txt", "sp ace/new\nline/%41/ü", ""] {
            let r = record(key, JournalState::Closing);
            assert_eq!(parse_journal(&format_journal(&r)), Some(r));
        }
        let new = JournalRecord {
            base: None,
            local_blocks: Vec::new(),
            upload_id: None,
            ..record("k", JournalState::Dirty)
        };
        assert_eq!(parse_journal(&format_journal(&new)), Some(new));
        let bare = JournalRecord {
            metadata: Some(ObjectMetadata::default()),
            ..record("k", JournalState::Dirty)
        };
        assert_eq!(parse_journal(&format_journal(&bare)), Some(bare));
        assert_eq!(parse_journal("s3mount-staged 3\nkey k\n"), None, "torn journal");
        assert_eq!(
            parse_journal(
                "s3mount-staged 3\nkey k\nbase -\nlocal \nupload -\nstate dirty\nboot -\nsynced no\nheader color red\n"
            ),
            None,
            "an unknown header"
        );
        assert_eq!(parse_journal("other\n"), None);
    }

    #[test]
    fn format_1_journals_still_recover_as_synced() {
        let text = "s3mount-staged 1\nkey a%20b\nbase 10 9 %22e%22\nlocal 0-2\nupload -\nstate closing\n";
        let record = parse_journal(text).expect("a format 1 journal parses");
        assert_eq!(record.key, "a b");
        assert_eq!(record.state, JournalState::Closing);
        assert_eq!((record.boot_id, record.synced), (None, true));
        assert!(
            parse_journal("s3mount-staged 2\nkey k\nbase -\nlocal \nupload -\nstate dirty\n").is_none(),
            "format 2 must say its boot and whether it was synced"
        );
    }

    #[test]
    fn format_2_journals_recover_without_metadata() {
        let text = "s3mount-staged 2\nkey k\nbase -\nlocal \nupload -\nstate closing\nboot -\nsynced yes\n";
        let record = parse_journal(text).expect("a format 2 journal parses");
        assert_eq!((record.state, record.synced), (JournalState::Closing, true));
        assert_eq!(record.metadata, None);
        assert!(
            parse_journal(&format!("{text}meta a b\n")).is_none(),
            "format 2 had no metadata lines"
        );
    }

    #[test]
    fn a_close_is_trusted_when_synced_or_in_the_same_boot() {
        assert!(current_boot_id().is_some(), "Linux says which boot this is");
        let closing = record("k", JournalState::Closing);
        assert!(
            closing.close_can_be_trusted(),
            "same boot: the page cache survived a killed daemon"
        );
        let other_boot = JournalRecord {
            boot_id: Some("another-boot".to_owned()),
            ..closing.clone()
        };
        assert!(
            !other_boot.close_can_be_trusted(),
            "after a power loss, unsynced data may be torn"
        );
        let synced = JournalRecord {
            synced: true,
            ..other_boot.clone()
        };
        assert!(
            synced.close_can_be_trusted(),
            "data on disk survives a power loss"
        );
        let dirty = JournalRecord {
            synced: true,
            ..record("k", JournalState::Dirty)
        };
        assert!(!dirty.close_can_be_trusted(), "no close began");
        let unknown_boot = JournalRecord {
            boot_id: None,
            ..closing
        };
        assert!(!unknown_boot.close_can_be_trusted());
    }

    #[test]
    fn a_second_run_finds_what_the_first_left() {
        let dir = tempfile::tempdir().unwrap();
        let first = Staging::open(dir.path()).unwrap();
        let files = first.create(&record("d/x.bin", JournalState::Dirty)).unwrap();
        (&*files.data).write_all(b"payload").unwrap();
        files
            .record(&record("d/x.bin", JournalState::Closing), true)
            .unwrap();
        let gone = first.create(&record("gone", JournalState::Dirty)).unwrap();
        gone.remove();
        assert!(matches!(
            Staging::open(dir.path()),
            Err(StagingError::InUse { .. })
        ));
        drop(first);

        let second = Staging::open(dir.path()).unwrap();
        let leftovers = second.leftovers().unwrap();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(
            leftovers[0].record,
            Some(record("d/x.bin", JournalState::Closing))
        );
        let moved = second.move_to_recovery(&leftovers[0]).unwrap();
        assert!(moved.starts_with(second.recovery_dir()));
        assert!(moved.to_string_lossy().ends_with("-x.bin"));
        assert_eq!(fs::read(&moved).unwrap(), b"payload");
        assert!(second.leftovers().unwrap().is_empty());
    }

    #[test]
    fn a_mount_that_only_reads_leaves_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        assert!(staging.leftovers().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let unusable = dir.path().join("a-file");
        fs::write(&unusable, b"x").unwrap();
        let staging = Staging::open(&unusable).unwrap();
        let record = record("k", JournalState::Dirty);
        assert!(
            staging.create(&record).is_err(),
            "the error comes with the first write"
        );
    }

    #[test]
    fn hostile_keys_never_take_a_recovery_file_out_of_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let long = "é".repeat(200);
        let keys = [
            "../../x".to_owned(),
            "a/..".to_owned(),
            "..".to_owned(),
            "/".to_owned(),
            "dir/line\nbreak\u{1b}[31m\u{7}".to_owned(),
            format!("deep/{long}"),
            "a/b/".to_owned(),
        ];
        for key in &keys {
            let files = staging.create(&record(key, JournalState::Dirty)).unwrap();
            (&*files.data).write_all(key.as_bytes()).unwrap();
        }
        let recovery = fs::canonicalize(staging.recovery_dir()).unwrap();
        let mut seen = Vec::new();
        for leftover in staging.leftovers().unwrap() {
            let moved = staging.move_to_recovery(&leftover).unwrap();
            let name = moved.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                fs::canonicalize(&moved).unwrap().parent(),
                Some(recovery.as_path()),
                "{moved:?} is in the recovery folder"
            );
            assert!(name.len() <= 255, "a valid file name: {} bytes", name.len());
            assert!(!name.chars().any(char::is_control), "no control bytes: {name:?}");
            let journal = fs::read_to_string(format!("{}.journal", moved.display())).unwrap();
            let key = parse_journal(&journal).unwrap().key;
            assert_eq!(
                fs::read(&moved).unwrap(),
                key.as_bytes(),
                "the data beside its journal"
            );
            seen.push(key);
        }
        seen.sort();
        let mut expected = keys.to_vec();
        expected.sort();
        assert_eq!(seen, expected, "every file recovered, each named by its key");
        let outside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside.len(),
            2,
            "nothing beside staging/ and recovery/: {outside:?}"
        );
    }

    #[test]
    fn a_data_file_without_journal_is_a_leftover_without_record() {
        let dir = tempfile::tempdir().unwrap();
        // What a run that died while creating a file leaves.
        fs::create_dir(dir.path().join("staging")).unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        fs::write(staging.dir().join("1-0.data"), b"x").unwrap();
        fs::write(staging.dir().join("1-1.tmp"), b"x").unwrap();
        let leftovers = staging.leftovers().unwrap();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(leftovers[0].record, None);
        assert!(!staging.dir().join("1-1.tmp").exists());
        let moved = staging.move_to_recovery(&leftovers[0]).unwrap();
        assert!(moved.to_string_lossy().ends_with("-unnamed"));
    }
}
