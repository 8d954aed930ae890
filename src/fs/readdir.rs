//! Reading directories: `opendir`, `readdir` and `readdirplus` over a [`DirStream`], and what a
//! listing page teaches the rest of the file system (the metadata cache, the HEADs fetched ahead
//! with exact POSIX metadata, the keys that cannot be names).
//!
//! READDIRPLUS hands the kernel each entry with the attributes a lookup of it would answer, so
//! `ls -l` of *n* names is the listing and not also *n* LOOKUP round trips through FUSE. An
//! entry's attributes come from where `lookup` would take them without a request: the staged
//! file, else the metadata cache the page just filled, else the page itself. Each entry handed
//! over is a kernel reference (a lookup) on its inode, as libfuse documents: counted here, and
//! released by the kernel's FORGET like any other. `.` and `..` take none (the kernel skips them).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::dir::{self, DirStream, Hidden, Listed, ListedKind};
use super::metadata::Stamp;
use super::{
    Attr, DirEntry, Entry, FsError, Kind, PosixMetadata, S3Fs, file_entry_from_head, lock, set_attrs_view,
};
use crate::object::{ListPage, ListRequest, ObjectError};

/// Offsets 1 and 2 are `.` and `..`; listed names start after them.
const DOT_ENTRIES: u64 = 2;

/// An open directory: a listing stream, behind an async mutex because filling a reply may
/// wait for the next page.
pub(super) struct OpenDir {
    path: Arc<str>,
    pub(super) listing: tokio::sync::Mutex<Listing>,
}

/// A directory's stream and its pages listed ahead.
pub(super) struct Listing {
    pub(super) stream: DirStream,
    ahead: Option<ListedAhead>,
    /// When the oldest page whose entries the stream still holds was asked for.
    entries_since: Option<Stamp>,
}

/// How many listed pages may wait for the reader, besides the one it is taking entries from and
/// the one on its way.
const PAGES_AHEAD: usize = 2;

/// How old a page listed ahead may be when the reader comes for it (at most the metadata TTL):
/// one older (a reader that paused) is listed again, so the cache and the kernel never get
/// answers older than that, and this mount's own changes are still remembered against it.
const PAGE_AHEAD_MAX_AGE: Duration = Duration::from_secs(60);

/// How old the first page of a directory listed ahead of a tree walk may be when the walker
/// opens it (at most the metadata TTL): as long as a negative lookup is trusted, so another
/// writer's new key shows as soon as after a lookup; a walker slower than that gets no pages
/// ahead (see `walk`).
pub(super) const WALK_PAGE_MAX_AGE: Duration = Duration::from_secs(1);

/// A task listing a directory page after page ahead of its reader, from the page the reader
/// needed first: the chain of requests (each needs the token the previous answer gave) never
/// waits for the reader to come back for more (the kernel hands a full reply to `ls` and waits
/// for its next getdents), so listing a large directory costs its requests' time and little
/// more. At most [`PAGES_AHEAD`] pages wait; cancelled when dropped (directory closed or
/// rewound). For a directory a tree walk will open next, only its first page.
pub(super) struct ListedAhead {
    /// The request the next page received answers.
    next: ListRequest,
    /// Lists one page and stops: a directory not opened yet (see `walk`).
    first_only: bool,
    /// Each answer in order, with when its request was sent (what it tells is as old as that).
    pages: tokio::sync::mpsc::Receiver<(Result<ListPage, ObjectError>, Stamp, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ListedAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a readdir reply is filled through: returns `true` when the reply is full and the entry
/// was not taken.
pub type AddEntry<'a> = dyn FnMut(DirEntry) -> bool + Send + 'a;

/// What a readdirplus reply is filled through, each entry with its attributes and whether the
/// kernel may keep them for the metadata TTL (`false`: for no time at all, so its next use of
/// the name asks again); `true` as for [`AddEntry`].
pub type AddEntryPlus<'a> = dyn FnMut(&DirEntry, &Attr, bool) -> bool + Send + 'a;

impl S3Fs {
    /// The kernel sends it only for an inode it holds as a directory, so no request is made to
    /// check that: what this mount knows of the path decides (a file there now: ENOTDIR, gone:
    /// ENOENT), and with nothing known (its entry expired, or evicted by the entries of the
    /// directories listed before it, as a `find` over 100,000 keys does) the listing tells what
    /// is there; a directory removed meanwhile lists empty. A `find` pays no HEAD and LIST per
    /// directory for it.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let path = self.path_of(ino)?;
        match self.metadata.get(&path) {
            Some(Some(entry)) if entry.kind != Kind::Dir => return Err(FsError::NotADirectory),
            Some(None) => return Err(FsError::NotFound),
            _ => {}
        }
        let stream = self
            .dir_stream(&path)
            .with_local_files(self.staged.children(&path));
        let ahead = self.walk_on(&path);
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let dir = OpenDir {
            path,
            listing: tokio::sync::Mutex::new(Listing {
                stream,
                ahead,
                entries_since: None,
            }),
        };
        lock(&self.dirs).insert(handle, Arc::new(dir));
        Ok(handle)
    }

    /// A new listing stream of the directory at `path`.
    fn dir_stream(&self, path: &str) -> DirStream {
        DirStream::new(
            self.config.root.dir_prefix(path),
            DOT_ENTRIES,
            self.config.list_page_size,
        )
    }

    /// The directory at `path` is being opened: its first page, when a tree walk had it listed
    /// ahead, and the next siblings' first pages asked for when the walk goes on (see `walk`).
    fn walk_on(&self, path: &str) -> Option<ListedAhead> {
        if self.config.metadata_ttl.is_zero() {
            return None; // No answer may be kept: none is asked for ahead either.
        }
        let now = tokio::time::Instant::now();
        let mut walks = lock(&self.walks);
        let (page, siblings) = walks.opened(path, now);
        for sibling in siblings {
            if let Some(first) = self.dir_stream(&sibling).next_request() {
                let ahead = self.list_ahead(first, true);
                walks.wait_for_open(sibling, ahead, now);
            }
        }
        page
    }

    pub fn releasedir(&self, handle: u64) {
        lock(&self.dirs).remove(&handle);
    }

    /// Whether the kernel should be offered READDIRPLUS. Not with exact POSIX metadata, where a
    /// listed entry's attributes need a HEAD (a `find` would pay one per name for attributes it
    /// never looks at; `ls -l`'s lookups find them fetched ahead), nor with a metadata TTL of 0,
    /// where the kernel may keep no attribute it is given.
    pub fn wants_readdirplus(&self) -> bool {
        self.config.posix_metadata != PosixMetadata::Exact && !self.config.metadata_ttl.is_zero()
    }

    /// Hands entries after `offset` to `add` until it returns `true` (reply buffer full) or the
    /// directory ends. Lists one page at a time.
    pub async fn readdir(
        &self,
        ino: u64,
        handle: u64,
        offset: u64,
        add: &mut AddEntry<'_>,
    ) -> Result<(), FsError> {
        let dir = self.open_dir(handle)?;
        for dot in self.dots(ino, &dir.path, offset) {
            if add(dot) {
                return Ok(());
            }
        }
        let mut listing = dir.listing.lock().await;
        listing.position(offset);
        let mut added = 0usize;
        while let Some(listed) = self
            .next_listed(&dir.path, &mut listing, offset, added == 0)
            .await?
        {
            let entry = self.dir_entry(&dir.path, listed);
            if add(entry) {
                return Ok(());
            }
            added += 1;
            listing.stream.pop_front();
        }
        Ok(())
    }

    /// [`S3Fs::readdir`] with each entry's attributes, equal to what a lookup of it would answer
    /// now; every listed entry `add` takes is a kernel reference on its inode.
    pub async fn readdirplus(
        &self,
        ino: u64,
        handle: u64,
        offset: u64,
        add: &mut AddEntryPlus<'_>,
    ) -> Result<(), FsError> {
        let dir = self.open_dir(handle)?;
        for dot in self.dots(ino, &dir.path, offset) {
            // The kernel takes no reference on `.` and `..` and ignores their attributes but
            // for the inode number.
            let attr = self.attr(dot.ino, &Entry::dir(self.mount_time));
            if add(&dot, &attr, true) {
                return Ok(());
            }
        }
        let mut listing = dir.listing.lock().await;
        listing.position(offset);
        let mut taken = 0usize;
        let filled = async {
            while let Some(listed) = self
                .next_listed(&dir.path, &mut listing, offset, taken == 0)
                .await?
            {
                let listed = listed.clone();
                let path = dir::listed_path(&dir.path, &listed);
                let listed_at = listing.entries_since;
                let (entry, lasting) = self.entry_for_plus(&path, &listed, listed_at).await?;
                if self.add_with_attr(&path, &listed, &entry, lasting, add) {
                    return Ok(());
                }
                taken += 1;
                listing.stream.pop_front();
            }
            Ok(())
        }
        .await;
        match filled {
            // The entries taken are lookup references the kernel only learns of from this
            // reply: it goes out short, and the kernel's next request from there meets the error.
            Err(_) if taken > 0 => Ok(()),
            filled => filled,
        }
    }

    fn open_dir(&self, handle: u64) -> Result<Arc<OpenDir>, FsError> {
        lock(&self.dirs).get(&handle).cloned().ok_or(FsError::BadHandle)
    }

    /// `.` and `..`, those of them after `offset`.
    fn dots(&self, ino: u64, path: &str, offset: u64) -> Vec<DirEntry> {
        let parent_ino = self.parent_ino(path);
        [(1, ".", ino), (2, "..", parent_ino)]
            .into_iter()
            .filter(|&(entry_offset, _, _)| offset < entry_offset)
            .map(|(entry_offset, name, entry_ino)| DirEntry {
                ino: entry_ino,
                offset: entry_offset,
                kind: Kind::Dir,
                name: name.into(),
            })
            .collect()
    }

    fn parent_ino(&self, path: &str) -> u64 {
        match path.rsplit_once('/') {
            Some((parent, _)) => lock(&self.inodes).peek(parent),
            None => super::ROOT_INO,
        }
    }

    /// The next listed entry after `offset`, listing the next page when the stream has none
    /// ready; `None` at the end of the directory, and also, unless `wait`, where the next entry
    /// would have to wait for a page not listed yet.
    ///
    /// A reply that already holds entries goes out rather than wait for the next page: the
    /// reader (`ls` asks with a 1 MiB buffer, some 6,500 entries) then works on what was listed
    /// while the next page is on its way, instead of all at once after the last page.
    async fn next_listed<'s>(
        &self,
        dir_path: &str,
        listing: &'s mut Listing,
        offset: u64,
        wait: bool,
    ) -> Result<Option<&'s Listed>, FsError> {
        loop {
            let stream = &mut listing.stream;
            // Entries at or before `offset` come again after a restart: the kernel has them.
            while stream.front().is_some_and(|listed| listed.offset <= offset) {
                stream.pop_front();
            }
            if stream.front().is_some() {
                return Ok(listing.stream.front());
            }
            if stream.is_exhausted() {
                return Ok(None);
            }
            if !self.next_page(dir_path, listing, wait).await? {
                return Ok(None);
            }
        }
    }

    /// Brings the stream its next page from the pages listed ahead (starting the listing ahead
    /// there when it lists from elsewhere, or not at all). Without `wait`, only a page already
    /// listed: `false` when none is (the listing ahead is started all the same).
    async fn next_page(&self, dir_path: &str, listing: &mut Listing, wait: bool) -> Result<bool, FsError> {
        let Some(request) = listing.stream.next_request() else {
            return Ok(true);
        };
        let ahead = match &mut listing.ahead {
            Some(ahead) if ahead.next == request => ahead,
            ahead => ahead.insert(self.list_ahead(request.clone(), false)),
        };
        let answer = match wait {
            true => ahead.pages.recv().await,
            false => match ahead.pages.try_recv() {
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(false),
                Ok(answer) => Some(answer),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            },
        };
        let max_age = self.config.metadata_ttl.min(PAGE_AHEAD_MAX_AGE);
        let (page, sent) = match answer {
            Some((Ok(page), sent, at)) if at.elapsed() <= max_age => (page, sent),
            Some((Err(error), _, _)) => {
                listing.ahead = None;
                return Err(error.into());
            }
            // Too old, or the task is gone (it cannot panic, but a runtime shutting down ends
            // it): asked again here; the next page starts a new listing ahead.
            _ => {
                listing.ahead = None;
                let sent = self.metadata.stamp();
                (self.client.list(&request).await?, sent)
            }
        };
        if listing.stream.buffered() == 0 {
            listing.entries_since = Some(sent);
        }
        let outcome = listing.stream.accept_page(page);
        match (listing.stream.next_request(), &mut listing.ahead) {
            (Some(next), Some(ahead)) if !ahead.first_only => ahead.next = next,
            // A walk's first page: the rest is listed ahead from here, as for any reader.
            (Some(next), Some(_)) => listing.ahead = Some(self.list_ahead(next, false)),
            _ => listing.ahead = None,
        }
        let subdirs = outcome
            .added
            .iter()
            .filter(|listed| listed.kind == ListedKind::Dir);
        let subdirs = subdirs.map(|listed| dir::listed_path(dir_path, listed));
        lock(&self.walks).listed(dir_path, request.continuation_token.is_none(), subdirs);
        self.remember_listing(dir_path, &outcome.added, sent);
        self.fetch_details_ahead(dir_path, &outcome.added);
        self.warn_hidden(&outcome.hidden);
        Ok(true)
    }

    /// Starts listing from `first` on, page after page, ahead of the reader; only that page
    /// when `first_only`.
    fn list_ahead(&self, first: ListRequest, first_only: bool) -> ListedAhead {
        let (sender, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let (client, metadata) = (self.client.clone(), self.metadata.clone());
        let mut request = first.clone();
        let task = tokio::spawn(async move {
            loop {
                let (sent, at) = (metadata.stamp(), Instant::now());
                let answer = client.list(&request).await;
                let token = answer
                    .as_ref()
                    .ok()
                    .and_then(|page| page.next_continuation_token.clone());
                if sender.send((answer, sent, at)).await.is_err() || first_only {
                    return;
                }
                match token {
                    Some(token) => request.continuation_token = Some(token),
                    None => return,
                }
            }
        });
        ListedAhead {
            next: first,
            first_only,
            pages,
            task,
        }
    }

    fn dir_entry(&self, dir_path: &str, listed: &Listed) -> DirEntry {
        let ino = lock(&self.inodes).peek(&dir::listed_path(dir_path, listed));
        let kind = match listed.kind {
            // A symlink another tool wrote shows as a file until it is looked up (a listing
            // carries no metadata); see docs/SEMANTICS.md.
            ListedKind::File(_) | ListedKind::Local => Kind::File,
            ListedKind::Dir => Kind::Dir,
        };
        DirEntry {
            ino,
            offset: listed.offset,
            kind,
            name: listed.name.clone(),
        }
    }

    /// What a lookup of the listed `path` would answer, taken where it would take it: the staged
    /// file, else the metadata cache (with exact POSIX metadata, completed by a HEAD as a lookup
    /// would). Else what the page itself said, as fresh as anything could be (a cache full of a
    /// larger directory may have let it go), and for a file staged here that is gone from both,
    /// a lookup. With it, whether the kernel may keep it: not when this mount removed or changed
    /// the name after the page was asked for (`listed_at`; an unlink between two getdents calls
    /// of a reader, or while a page was listed ahead). Such a name is still listed, as a plain
    /// readdir would list it, but a lasting entry would make the kernel believe in a file that is
    /// gone (`stat` finds it, `open(O_CREAT)` fails with ENOENT) until the TTL ran out.
    async fn entry_for_plus(
        &self,
        path: &str,
        listed: &Listed,
        listed_at: Option<Stamp>,
    ) -> Result<(Entry, bool), FsError> {
        if let Some(staged) = self.staged.get(path) {
            return Ok((staged.seen(), true));
        }
        match self.metadata.get(path) {
            Some(Some(entry))
                if entry.details.is_none() && self.config.posix_metadata == PosixMetadata::Exact =>
            {
                // An answer a change by this mount overtook is listed, but not kept.
                match self.with_details(path, entry.clone()).await {
                    Err(FsError::NotFound) => Ok((entry, false)),
                    detailed => detailed.map(|(entry, overtaken)| (entry, !overtaken)),
                }
            }
            Some(Some(entry)) => Ok((entry, true)),
            known => match self.listed_entry(listed) {
                Some(entry) => {
                    let changed = listed_at.is_none_or(|at| self.metadata.changed_since(path, at));
                    Ok((entry, known.is_none() && !changed))
                }
                None => Ok(match self.resolve(path).await? {
                    Some(entry) => (entry, true),
                    None => (gone_meanwhile(), false),
                }),
            },
        }
    }

    /// Offers `add` the entry at `path` with its attributes; once taken, it is a kernel
    /// reference on its inode. `true` when the reply is full.
    fn add_with_attr(
        &self,
        path: &str,
        listed: &Listed,
        entry: &Entry,
        lasting: bool,
        add: &mut AddEntryPlus<'_>,
    ) -> bool {
        // One hold of the table from choosing the number to counting the reference, so no
        // other path can take the number in between.
        let mut inodes = lock(&self.inodes);
        let ino = inodes.peek(path);
        let dir_entry = DirEntry {
            ino,
            offset: listed.offset,
            kind: entry.kind,
            name: listed.name.clone(),
        };
        if add(&dir_entry, &self.attr(ino, entry), lasting) {
            return true;
        }
        inodes.remember(path);
        set_attrs_view(&mut inodes, ino, entry);
        false
    }

    /// What a listing tells of a listed name (`None` for a file staged here and not in S3).
    fn listed_entry(&self, listed: &Listed) -> Option<Entry> {
        match &listed.kind {
            ListedKind::File(object) => Some(Entry {
                kind: Kind::File,
                size: object.size,
                mtime: object.last_modified,
                etag: Some(object.etag.clone()),
                details: None,
            }),
            ListedKind::Dir => Some(Entry::dir(self.mount_time)),
            ListedKind::Local => None,
        }
    }

    /// Caches what a listing page (requested at `sent`) told about each entry, so `ls -l` costs
    /// no request per entry.
    ///
    /// An entry the cache holds of the very object listed (same ETag and size, or a directory
    /// still a directory) knows more than the page: what a HEAD told (a symlink, stored
    /// POSIX attributes, a marker's metadata) is kept rather than replaced by the defaults, which
    /// would also show the kernel a symlink it knows turning into a regular file. The page's
    /// Last-Modified is taken all the same (see [`with_listed_time`]).
    fn remember_listing(&self, dir_path: &str, added: &[Listed], sent: Stamp) {
        let answers = added.iter().filter_map(|listed| {
            // Staged here, not in S3 (`None`): `resolve` asks the staged file.
            let entry = self.listed_entry(listed)?;
            let path = dir::listed_path(dir_path, listed);
            let entry = match self.metadata.peek(&path) {
                Some(known) if knows_more_of_the_same(&known, &entry) => with_listed_time(known, &entry),
                _ => entry,
            };
            Some((path, Some(entry)))
        });
        self.metadata.remember_answers(answers, sent);
    }

    /// With exact POSIX metadata, HEADs the files a listing page showed, [`super::DETAILS_AHEAD`] at a
    /// time in the background, so that the lookups `ls -l` makes next (one at a time, each of
    /// which would HEAD) find their metadata cached. A file whose metadata arrived meanwhile (its
    /// lookup came first), or that changed on this mount, is skipped or its answer dropped.
    fn fetch_details_ahead(&self, dir_path: &str, added: &[Listed]) {
        if self.config.posix_metadata != PosixMetadata::Exact {
            return;
        }
        for listed in added {
            let ListedKind::File(object) = &listed.kind else {
                continue;
            };
            let path = dir::listed_path(dir_path, listed);
            let key = object.key.clone();
            let (client, metadata) = (self.client.clone(), self.metadata.clone());
            let permits = self.details_ahead.clone();
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let wanted = matches!(metadata.get(&path), Some(Some(entry)) if entry.details.is_none());
                if !wanted {
                    return;
                }
                let sent = metadata.stamp();
                // Best effort: a failure leaves the lookup to HEAD it.
                if let Ok(head) = client.head(&key).await {
                    metadata.remember_answer(path, Some(file_entry_from_head(&head)), sent);
                }
            });
        }
    }

    fn warn_hidden(&self, hidden: &[Hidden]) {
        for item in hidden {
            if !self.warned_keys.contains_key(&item.key) {
                self.warned_keys.insert(item.key.clone(), ());
                tracing::warn!(key = %item.key, reason = ?item.reason, "hiding key that cannot be a path");
            }
        }
    }
}

impl Listing {
    /// Makes the stream able to serve the entries after `offset`: from the start again when the
    /// kernel asks for entries before what it still holds (rewinddir, a seek back), which also
    /// drops the pages listed ahead.
    fn position(&mut self, offset: u64) {
        if offset < self.stream.earliest_offset() && !self.stream.at_start() {
            self.stream.restart();
            self.ahead = None;
            self.entries_since = None;
        }
        self.stream.skip_through(offset);
    }
}

/// Whether `known` (cached) describes the same object as `listed` (from a page) and more of it.
fn knows_more_of_the_same(known: &Entry, listed: &Entry) -> bool {
    match listed.kind {
        Kind::Dir => known.kind == Kind::Dir,
        Kind::File | Kind::Symlink => {
            known.kind != Kind::Dir
                && known.details.is_some()
                && known.etag == listed.etag
                && known.size == listed.size
        }
    }
}

/// `known` with the Last-Modified a page listed for the same file. The object's time is S3's,
/// and a HEAD would answer it too: an entry this mount made when it uploaded the file carries the
/// time of the last write (to the nanosecond, a moment before the upload), which no other
/// answer repeats, so a metadata change (which pins the time a HEAD tells) would otherwise move
/// `st_mtime`. A kept `x-amz-meta-mtime` in the details still decides what `stat` shows.
fn with_listed_time(known: Entry, listed: &Entry) -> Entry {
    match known.kind {
        Kind::Dir => known,
        Kind::File | Kind::Symlink => Entry {
            mtime: listed.mtime,
            ..known
        },
    }
}

/// A file listed as staged here and gone by the time its entry is made (unlinked meanwhile,
/// when its directory was not locked against it): an empty file, since the name must be given
/// some attributes now that the listing showed it.
fn gone_meanwhile() -> Entry {
    Entry {
        kind: Kind::File,
        size: 0,
        mtime: SystemTime::now(),
        etag: None,
        details: None,
    }
}
