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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// When an answer's request was sent, relative to this mount's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The metadata cache of one mount. Cheap to clone: every clone is the same cache.
#[derive(Clone)]
pub struct MetadataCache {
    /// path -> what is there (`None`: nothing).
    entries: Cache<String, Option<Entry>>,
    /// path -> the stamp of this mount's last change of it.
    changed: Cache<String, u64>,
    /// The stamp of the last change of every path at once (a directory rename).
    all_changed: Arc<AtomicU64>,
    clock: Arc<AtomicU64>,
    /// Held across the check and the insert of an answer, and across a change, so that a change
    /// cannot slip between them.
    order: Arc<Mutex<()>>,
}

impl MetadataCache {
    /// Positive entries live for `ttl`, negative ones for at most a second.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(ENTRIES)
                .expire_after(Expiry { positive: ttl })
                .build(),
            changed: Cache::builder()
                .max_capacity(ENTRIES)
                .time_to_live(CHANGE_MEMORY)
                .build(),
            all_changed: Arc::default(),
            clock: Arc::default(),
            order: Arc::default(),
        }
    }

    pub fn get(&self, path: &str) -> Option<Option<Entry>> {
        self.entries.get(path)
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
            if self.changed.get(&path).is_none_or(|changed| changed <= sent.0) {
                self.entries.insert(path, entry);
            }
        }
    }

    /// A change this mount made: what is at `path` now.
    pub fn changed_to(&self, path: String, entry: Option<Entry>) {
        let _order = lock(&self.order);
        self.changed.insert(path.clone(), self.tick());
        self.entries.insert(path, entry);
    }

    /// A change this mount made whose outcome is better asked of S3 (or of the staged file).
    pub fn changed_unknown(&self, path: &str) {
        let _order = lock(&self.order);
        self.changed.insert(path.to_owned(), self.tick());
        self.entries.invalidate(path);
    }

    /// A change of any number of paths (a directory rename): everything is asked again.
    pub fn changed_everything(&self) {
        let _order = lock(&self.order);
        self.all_changed.store(self.tick(), Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Drops what is known of `path`, as S3 said it is gone (always safe: S3 is asked again).
    pub fn forget(&self, path: &str) {
        self.entries.invalidate(path);
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }
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
}
