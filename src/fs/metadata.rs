//! The metadata cache: what is at each path (a file's size, ETag and time, a directory, or
//! nothing), for `--metadata-ttl`, filled by S3's answers (HEAD, LIST) and by the changes this
//! mount makes (unlink, mkdir, rename, an upload).
//!
//! Both kinds of writer meet here, and an answer can be older than a change: a listing page
//! requested before an `unlink` arrives after it and still names the file. Cached, it would bring
//! the file back (a lookup finds it, an open then fails with ENOENT). So every answer carries the
//! stamp taken before its request was sent, every change made on this mount stamps its path, and
//! an answer older than the last change of its path is dropped. Owns only that rule and the
//! cache's bounds; what an entry means is the file system's.
//!
//! It also keeps, for a few directories, every name in them as of an instant ("complete
//! directories": one this mount just made, or listed whole): a lookup of any other name there is
//! answered "nothing there" without a request for as long as a negative answer is trusted (a
//! second at most), so `cp -r` into a new directory costs its PUTs and not a HEAD and a LIST per
//! file as well. Past that second the knowledge is refreshed by one listing page, never trusted
//! longer: another writer's new key shows within the same second as after a negative lookup.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::{Entry, lock};

/// How many paths the cache holds at most; about 200 bytes each, so ~13 MiB at the cap.
const ENTRIES: u64 = 65_536;
/// Longest time a "does not exist" answer is trusted, whatever the metadata TTL: a file another
/// writer creates should appear within a second, as NFS's default negative caching allows.
const NEGATIVE_TTL_CAP: Duration = Duration::from_secs(1);
/// How long the stamp of a change is kept: longer than any request may take with the default
/// time bounds (about a minute of retries and one attempt), so no answer to a request sent
/// before the change can arrive after its stamp is gone.
const CHANGE_MEMORY: Duration = Duration::from_secs(300);

/// Most directories whose every name is kept; the oldest goes first. Each holds its names.
const COMPLETE_DIRS: usize = 256;
/// A directory of more names than one listing page holds is not kept whole: its refresh would
/// take more than one request.
pub const COMPLETE_DIR_NAMES: usize = 1000;

/// Every name in one directory, as of `as_of` (`None`: as of a time too long ago to trust).
struct CompleteDir {
    names: HashSet<String>,
    as_of: Option<Instant>,
}

/// What the complete-directory knowledge says of a path nothing is cached for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirKnowledge {
    /// Its directory's names are known and fresh, and it is not among them.
    Absent,
    /// Its directory's names were known, and are too old now: list `dir` again.
    Stale { dir: String },
    /// Nothing to say: ask S3.
    Unknown,
}

/// The caches' hasher: foldhash, as every listed name passes through them (see Cargo.toml).
type PathHasher = foldhash::fast::RandomState;

/// When an answer's request was sent, relative to this mount's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The metadata cache of one mount. Cheap to clone: every clone is the same cache.
#[derive(Clone)]
pub struct MetadataCache {
    /// path -> what is there (`None`: nothing).
    entries: Cache<String, Option<Entry>, PathHasher>,
    /// path -> the stamp of this mount's last change of it.
    changed: Cache<String, u64, PathHasher>,
    /// The stamp of the last change of every path at once (a directory rename).
    all_changed: Arc<AtomicU64>,
    clock: Arc<AtomicU64>,
    /// Held across the check and the insert of an answer, and across a change, so that a change
    /// cannot slip between them.
    order: Arc<Mutex<()>>,
    /// Directory path -> every name in it (see the module's text).
    complete: Arc<Mutex<HashMap<String, CompleteDir>>>,
    /// How long complete-directory knowledge answers lookups: the negative TTL.
    complete_for: Duration,
}

impl MetadataCache {
    /// Positive entries live for `ttl`, negative ones for at most a second.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(ENTRIES)
                .expire_after(Expiry { positive: ttl })
                .build_with_hasher(PathHasher::default()),
            changed: Cache::builder()
                .max_capacity(ENTRIES)
                .time_to_live(CHANGE_MEMORY)
                .build_with_hasher(PathHasher::default()),
            all_changed: Arc::default(),
            clock: Arc::default(),
            order: Arc::default(),
            complete: Arc::default(),
            complete_for: ttl.min(NEGATIVE_TTL_CAP),
        }
    }

    pub fn get(&self, path: &str) -> Option<Option<Entry>> {
        self.entries.get(path)
    }

    /// What the cache holds of `path` (a file or directory), where a name it does not hold
    /// costs no more than a look: what a listing page checks for each name, most of which the
    /// cache does not hold (a read, even a miss, costs the cache's bookkeeping; a hit still
    /// counts as a use).
    pub fn peek(&self, path: &str) -> Option<Entry> {
        if !self.entries.contains_key(path) {
            return None;
        }
        self.entries.get(path).flatten()
    }

    /// The stamp to take before sending a request whose answer goes in the cache.
    pub fn stamp(&self) -> Stamp {
        Stamp(self.clock.load(Ordering::SeqCst))
    }

    /// What S3 said of `path` to a request sent at `sent`; dropped if this mount changed the path
    /// since (the change is newer).
    pub fn remember_answer(&self, path: String, entry: Option<Entry>, sent: Stamp) {
        self.remember_answers([(path, entry)], sent);
    }

    /// [`MetadataCache::remember_answer`] for every entry of one answer (a listing page).
    pub fn remember_answers(&self, answers: impl IntoIterator<Item = (String, Option<Entry>)>, sent: Stamp) {
        let _order = lock(&self.order);
        if self.all_changed.load(Ordering::SeqCst) > sent.0 {
            return;
        }
        for (path, entry) in answers {
            if !self.changed_since(&path, sent) {
                if entry.is_some() {
                    self.note_name(&path, true);
                }
                self.entries.insert(path, entry);
            }
        }
    }

    /// Whether this mount changed `path` (or every path) after an answer sent at `sent` was
    /// asked for: what that answer says of it may be older than what this mount did. Most
    /// answers (every page of a listing no change of this mount overlapped) need no look at
    /// what changed.
    pub fn changed_since(&self, path: &str, sent: Stamp) -> bool {
        if self.nothing_changed_since(sent) {
            return false;
        }
        self.all_changed.load(Ordering::SeqCst) > sent.0
            || self.changed.get(path).is_some_and(|changed| changed > sent.0)
    }

    /// Whether this mount changed nothing at all after `sent`: every change ticks the clock.
    fn nothing_changed_since(&self, sent: Stamp) -> bool {
        self.clock.load(Ordering::SeqCst) <= sent.0
    }

    /// A change this mount made: what is at `path` now.
    pub fn changed_to(&self, path: String, entry: Option<Entry>) {
        let _order = lock(&self.order);
        self.changed.insert(path.clone(), self.tick());
        self.note_name(&path, entry.is_some());
        if entry.is_none() {
            lock(&self.complete).remove(&path);
        }
        self.entries.insert(path, entry);
    }

    /// A change this mount made whose outcome is better asked of S3 (or of the staged file).
    pub fn changed_unknown(&self, path: &str) {
        let _order = lock(&self.order);
        self.changed.insert(path.to_owned(), self.tick());
        self.entries.invalidate(path);
        // Something may be there now: its directory's names count it (a name there is asked of
        // S3, never taken as absent), and what it held is not known any more.
        self.note_name(path, true);
        lock(&self.complete).remove(path);
    }

    /// A change of any number of paths (a directory rename): everything is asked again.
    pub fn changed_everything(&self) {
        let _order = lock(&self.order);
        self.all_changed.store(self.tick(), Ordering::SeqCst);
        self.entries.invalidate_all();
        lock(&self.complete).clear();
    }

    /// `dir` was just made by this mount, empty, as of `at` (`None`: as of a negative answer up
    /// to a second old, so that its first lookup refreshes it). Nothing of this mount can have
    /// changed in it yet: the kernel looks nothing up in a directory before its mkdir returns.
    pub fn remember_new_dir(&self, dir: &str, at: Option<Instant>) {
        if self.complete_for.is_zero() {
            return; // --metadata-ttl 0: every lookup asks S3.
        }
        let _order = lock(&self.order);
        let mut complete = lock(&self.complete);
        if complete.len() >= COMPLETE_DIRS && !complete.contains_key(dir) {
            let oldest = complete
                .iter()
                .min_by_key(|(_, known)| known.as_of)
                .map(|(d, _)| d.clone());
            if let Some(oldest) = oldest {
                complete.remove(&oldest);
            }
        }
        let names = HashSet::new();
        complete.insert(dir.to_owned(), CompleteDir { names, as_of: at });
    }

    /// A listing of the kept directory `dir`, sent at the instant `at`, found `listed`: its
    /// names are known as of `at` again. What this mount changed there meanwhile is already in
    /// the names kept (every change updates them), so the two are joined: a name too many only
    /// means that name is asked of S3. Dropped when the directory is no longer kept (removed,
    /// or a rename moved everything meanwhile), or has grown past one listing page.
    pub fn refresh_complete_dir(&self, dir: &str, listed: HashSet<String>, at: Instant) {
        let _order = lock(&self.order);
        let mut complete = lock(&self.complete);
        let Some(known) = complete.get_mut(dir) else {
            return;
        };
        known.names.extend(listed);
        known.as_of = Some(at);
        if known.names.len() > COMPLETE_DIR_NAMES {
            complete.remove(dir);
        }
    }

    /// No longer keeps every name of `dir` (its listing is too long, or failed).
    pub fn forget_complete_dir(&self, dir: &str) {
        lock(&self.complete).remove(dir);
    }

    /// What the complete-directory knowledge says of `path` (for which nothing is cached).
    pub fn dir_knowledge(&self, path: &str) -> DirKnowledge {
        let dir = parent_of(path);
        let complete = lock(&self.complete);
        let Some(known) = complete.get(dir) else {
            return DirKnowledge::Unknown;
        };
        if known.names.contains(name_of(path)) {
            return DirKnowledge::Unknown;
        }
        if known.as_of.is_some_and(|at| at.elapsed() < self.complete_for) {
            DirKnowledge::Absent
        } else {
            DirKnowledge::Stale { dir: dir.to_owned() }
        }
    }

    /// Keeps a complete directory's names in step with what is now known at `path`.
    fn note_name(&self, path: &str, exists: bool) {
        let mut complete = lock(&self.complete);
        if let Some(known) = complete.get_mut(parent_of(path)) {
            if exists {
                known.names.insert(name_of(path).to_owned());
            } else {
                known.names.remove(name_of(path));
            }
        }
    }

    /// Drops what is known of `path`, as S3 said it is gone (always safe: S3 is asked again).
    pub fn forget(&self, path: &str) {
        self.entries.invalidate(path);
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// The directory holding `path` (`""` for the root's children).
pub(super) fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The last component of `path`.
fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// Positive entries live for the metadata TTL, negative ones for at most [`NEGATIVE_TTL_CAP`];
/// every insert restarts the clock.
struct Expiry {
    positive: Duration,
}

impl Expiry {
    fn ttl(&self, entry: &Option<Entry>) -> Duration {
        match entry {
            Some(_) => self.positive,
            None => self.positive.min(NEGATIVE_TTL_CAP),
        }
    }
}

impl moka::Expiry<String, Option<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Option<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.ttl(entry))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Option<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(entry))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::fs::Kind;

    fn file(size: u64) -> Option<Entry> {
        Some(Entry {
            kind: Kind::File,
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: Some(format!("\"{size}\"")),
            details: None,
        })
    }

    #[test]
    fn an_answer_older_than_a_change_of_its_path_is_dropped() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        let before = cache.stamp();
        cache.changed_to("gone".into(), None);
        cache.changed_to("grown".into(), file(2));
        // A listing sent before those changes arrives now, naming the old versions.
        cache.remember_answers(
            [
                ("gone".into(), file(1)),
                ("grown".into(), file(1)),
                ("other".into(), file(7)),
            ],
            before,
        );
        assert_eq!(cache.get("gone"), Some(None), "not brought back");
        assert_eq!(cache.get("grown"), Some(file(2)), "the newer size stays");
        assert_eq!(cache.get("other"), Some(file(7)), "paths not changed are taken");
        // An answer to a request sent after the change is newer than it.
        let after = cache.stamp();
        cache.remember_answer("grown".into(), file(3), after);
        assert_eq!(cache.get("grown"), Some(file(3)));
    }

    #[test]
    fn a_change_of_everything_drops_every_older_answer() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        let before = cache.stamp();
        cache.changed_everything();
        cache.remember_answer("a".into(), file(1), before);
        assert_eq!(cache.get("a"), None);
        cache.remember_answer("a".into(), file(1), cache.stamp());
        assert_eq!(cache.get("a"), Some(file(1)));
        cache.changed_unknown("a");
        assert_eq!(
            cache.get("a"),
            None,
            "asked again after a change whose outcome is not known"
        );
    }

    #[test]
    fn a_new_directory_answers_absent_for_names_it_was_not_given_and_not_for_others() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        cache.remember_new_dir("d", Some(Instant::now()));
        assert_eq!(cache.dir_knowledge("d/x"), DirKnowledge::Absent);
        cache.changed_to("d/made".to_owned(), file(1));
        cache.changed_unknown("d/staged");
        assert_eq!(cache.dir_knowledge("d/made"), DirKnowledge::Unknown);
        assert_eq!(cache.dir_knowledge("d/staged"), DirKnowledge::Unknown);
        cache.changed_to("d/made".to_owned(), None);
        assert_eq!(cache.dir_knowledge("d/made"), DirKnowledge::Absent);
        assert_eq!(cache.dir_knowledge("other/x"), DirKnowledge::Unknown);
        assert_eq!(cache.dir_knowledge("x"), DirKnowledge::Unknown);
    }

    #[test]
    fn knowledge_older_than_the_negative_ttl_must_be_refreshed_and_a_refresh_joins_what_changed() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        cache.remember_new_dir("d", None);
        assert_eq!(
            cache.dir_knowledge("d/x"),
            DirKnowledge::Stale { dir: "d".to_owned() }
        );
        // Made by this mount while the listing was on its way: the listing lacks it.
        cache.changed_to("d/new".to_owned(), file(1));
        let listed: HashSet<String> = ["theirs".to_owned()].into();
        cache.refresh_complete_dir("d", listed, Instant::now());
        assert_eq!(cache.dir_knowledge("d/x"), DirKnowledge::Absent);
        assert_eq!(cache.dir_knowledge("d/new"), DirKnowledge::Unknown);
        assert_eq!(cache.dir_knowledge("d/theirs"), DirKnowledge::Unknown);
    }

    #[test]
    fn a_rename_of_everything_or_a_removed_directory_drops_the_knowledge_and_a_late_refresh() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        cache.remember_new_dir("d", Some(Instant::now()));
        cache.changed_everything();
        assert_eq!(cache.dir_knowledge("d/x"), DirKnowledge::Unknown);
        cache.refresh_complete_dir("d", HashSet::new(), Instant::now());
        assert_eq!(
            cache.dir_knowledge("d/x"),
            DirKnowledge::Unknown,
            "no refresh of a dropped directory"
        );
        cache.remember_new_dir("e", Some(Instant::now()));
        cache.changed_to("e".to_owned(), None);
        assert_eq!(cache.dir_knowledge("e/x"), DirKnowledge::Unknown);
    }

    #[test]
    fn with_metadata_ttl_0_nothing_is_known_absent() {
        let cache = MetadataCache::new(Duration::ZERO);
        cache.remember_new_dir("d", Some(Instant::now()));
        assert_eq!(cache.dir_knowledge("d/x"), DirKnowledge::Unknown);
    }
}
