//! The inode table: which inode number stands for which path, and how many kernel references
//! (lookups) each has.
//!
//! Inode numbers are derived from a hash of the path, so a path keeps its number for the life of
//! the mount even after the kernel forgets it and looks it up again, while the table itself only
//! holds the paths the kernel currently remembers (FORGET removes them). On the rare hash
//! collision with a live path the number is probed upward; only then can a path's number differ
//! between two lookups. This module knows nothing of S3 or attributes.

use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// FUSE's fixed inode number of the mount root.
pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct Record {
    path: Arc<str>,
    lookups: u64,
    kernel: KernelView,
}

/// What the kernel may hold of an inode, as fingerprints of the versions it came from (`None`:
/// nothing, or it was told to drop it), so the caller can tell when the kernel's copy is stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    /// The version whose attributes the kernel was last given (lookup, getattr).
    pub attrs: Option<u64>,
    /// The version the kernel's page cache was filled from (the last open).
    pub pages: Option<u64>,
    /// A read of an older version may have put its pages in the kernel's cache after the cache
    /// was last emptied (its handle was open when the file was staged): the next open must
    /// empty it again, whatever version it finds.
    pub pages_mixed: bool,
    /// The version the staged file the pages followed was uploaded as, while they still hold
    /// it: a write through the staged file after that (a writer going on after an fsync) makes
    /// them follow it again, where they would otherwise count as mixed.
    pub pages_uploaded_from_staged: Option<u64>,
}

impl KernelView {
    /// The page version while a file is staged: no object version has this value.
    const STAGED: u64 = u64::MAX;

    /// An open of a staged file (which empties the kernel's pages): they follow the staged file
    /// from now. `reading_older`: a handle reading an older version is open, and one of its reads
    /// may be answered just as the cache is emptied and land after it.
    pub fn follow_staged_file(&mut self, reading_older: bool) {
        self.pages = Some(Self::STAGED);
        self.pages_mixed |= reading_older;
        self.pages_uploaded_from_staged = None;
    }

    /// A write through a staged handle: the kernel copied its bytes into its pages before it
    /// sent it. If the pages follow something else now (an open of an older version since the
    /// staged open took them over), they are mixed.
    pub fn written_through(&mut self) {
        if self.pages.is_some() && self.pages == self.pages_uploaded_from_staged {
            self.pages = Some(Self::STAGED);
            self.pages_uploaded_from_staged = None;
        } else if self.pages != Some(Self::STAGED) {
            self.pages_mixed = true;
        }
    }

    /// The staged file was uploaded as `version`. Its pages are that version's only if they still
    /// follow the staged file; an open of an older version meanwhile emptied them and let that
    /// version's reads in, so the next open must empty them again (without this, an open of
    /// `version` would keep another version's pages as its own).
    pub fn uploaded_as(&mut self, version: u64) {
        if self.pages == Some(Self::STAGED) {
            self.pages = Some(version);
            self.pages_uploaded_from_staged = Some(version);
        } else {
            self.pages_mixed = true;
        }
    }

    /// An open of `version` for reading: the pages follow it from now. True when they already
    /// did and nothing else may have slipped in (the kernel may keep its page cache).
    pub fn opened_for_read(&mut self, version: u64) -> bool {
        self.pages_uploaded_from_staged = None;
        let mixed = std::mem::take(&mut self.pages_mixed);
        self.pages.replace(version) == Some(version) && !mixed
    }
}

/// The table's maps: foldhash, as every listed name passes through them (see Cargo.toml).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Path <-> inode number, with lookup counts. Not synchronised: the caller holds it in a mutex.
#[derive(Debug)]
pub struct InodeTable {
    by_ino: HashMap<u64, Record>,
    by_path: HashMap<Arc<str>, u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        let root: Arc<str> = Arc::from("");
        let mut table = Self {
            by_ino: HashMap::default(),
            by_path: HashMap::default(),
        };
        // The root is never forgotten: its count starts at 1 and FORGET never reaches it.
        table.by_ino.insert(
            ROOT_INO,
            Record {
                path: root.clone(),
                lookups: 1,
                kernel: KernelView::default(),
            },
        );
        table.by_path.insert(root, ROOT_INO);
        table
    }

    /// The path of a live inode.
    pub fn path(&self, ino: u64) -> Option<Arc<str>> {
        self.by_ino.get(&ino).map(|r| r.path.clone())
    }

    /// The number `path` has, or would get, without taking a reference (for readdir entries).
    pub fn peek(&self, path: &str) -> u64 {
        match self.by_path.get(path) {
            Some(&ino) => ino,
            None => self.free_number_for(path),
        }
    }

    /// Takes one kernel reference on `path` (a successful lookup) and returns its number.
    pub fn remember(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(record) = self.by_ino.get_mut(&ino) {
                record.lookups += 1;
            }
            return ino;
        }
        let ino = self.free_number_for(path);
        let path: Arc<str> = Arc::from(path);
        self.by_ino.insert(
            ino,
            Record {
                path: path.clone(),
                lookups: 1,
                kernel: KernelView::default(),
            },
        );
        self.by_path.insert(path, ino);
        ino
    }

    /// What the kernel may hold of `ino`, to read or update (`None` for an inode not in the
    /// table, whose updates are moot).
    pub fn kernel_view(&mut self, ino: u64) -> Option<&mut KernelView> {
        self.by_ino.get_mut(&ino).map(|record| &mut record.kernel)
    }

    /// Drops `count` kernel references; the inode leaves the table when none remain.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Entry::Occupied(mut slot) = self.by_ino.entry(ino) {
            let record = slot.get_mut();
            record.lookups = record.lookups.saturating_sub(count);
            if record.lookups == 0 {
                let record = slot.remove();
                self.by_path.remove(&record.path);
            }
        }
    }

    /// `from` (and everything under it) is now at `to`: the inodes keep their numbers, as a
    /// renamed file keeps its inode. Whatever lived at `to` is detached (the kernel forgets it).
    pub fn rename(&mut self, from: &str, to: &str) {
        let under =
            |path: &str, dir: &str| path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
        let replaced: Vec<u64> = self
            .by_ino
            .iter()
            .filter(|(_, record)| under(&record.path, to))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in replaced {
            if let Some(record) = self.by_ino.remove(&ino) {
                self.by_path.remove(&record.path);
            }
        }
        let moved: Vec<u64> = self
            .by_ino
            .iter()
            .filter(|(_, record)| under(&record.path, from))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in moved {
            if let Some(record) = self.by_ino.get_mut(&ino) {
                self.by_path.remove(&record.path);
                let new_path: Arc<str> = Arc::from(format!("{to}{}", &record.path[from.len()..]));
                record.path = new_path.clone();
                self.by_path.insert(new_path, ino);
            }
        }
    }

    /// How many inodes are live (the root included).
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    /// The hash of `path`, moved past reserved numbers and numbers live for another path.
    fn free_number_for(&self, path: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        path.hash(&mut hasher);
        let mut ino = hasher.finish();
        while ino <= ROOT_INO || self.by_ino.get(&ino).is_some_and(|r| &*r.path != path) {
            ino = ino.wrapping_add(1);
        }
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_after_an_upload_follow_the_staged_file_unless_another_version_came_in_between() {
        let mut view = KernelView::default();
        view.follow_staged_file(false);
        view.written_through();
        view.uploaded_as(7);
        assert_eq!(view.pages, Some(7));
        // A writer going on after its fsync: the pages follow the staged file again.
        view.written_through();
        assert_eq!(view.pages, Some(KernelView::STAGED));
        assert!(!view.pages_mixed);
        view.uploaded_as(8);
        assert!(view.opened_for_read(8), "the pages are version 8's: kept");
        // Another version opened since the upload: a write through the staged file mixes them.
        let mut view = KernelView::default();
        view.follow_staged_file(false);
        view.uploaded_as(7);
        view.opened_for_read(5);
        view.written_through();
        assert!(view.pages_mixed);
        assert!(!view.opened_for_read(5), "mixed: emptied whatever the version");
    }

    #[test]
    fn numbers_are_stable_across_forget() {
        let mut table = InodeTable::new();
        let first = table.remember("a/b");
        assert_eq!(table.peek("a/b"), first);
        table.forget(first, 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.remember("a/b"), first);
    }

    #[test]
    fn lookups_are_counted() {
        let mut table = InodeTable::new();
        let ino = table.remember("x");
        table.remember("x");
        table.forget(ino, 1);
        assert_eq!(table.path(ino).as_deref(), Some("x"));
        table.forget(ino, 1);
        assert_eq!(table.path(ino), None);
    }

    #[test]
    fn root_is_never_forgotten() {
        let mut table = InodeTable::new();
        table.forget(ROOT_INO, 100);
        assert_eq!(table.path(ROOT_INO).as_deref(), Some(""));
    }

    #[test]
    fn memory_is_bounded_by_what_the_kernel_remembers() {
        let mut table = InodeTable::new();
        let inos: Vec<u64> = (0..10_000)
            .map(|i| table.remember(&format!("dir/file-{i}")))
            .collect();
        assert_eq!(table.len(), 10_001);
        let distinct: std::collections::HashSet<_> = inos.iter().collect();
        assert_eq!(distinct.len(), inos.len());
        for ino in inos {
            table.forget(ino, 1);
        }
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_rename_keeps_numbers_and_moves_descendants() {
        let mut table = InodeTable::new();
        let dir = table.remember("a");
        let child = table.remember("a/b/c");
        let other = table.remember("ab");
        let target = table.remember("z");
        table.rename("a", "z");
        assert_eq!(table.path(dir).as_deref(), Some("z"));
        assert_eq!(table.path(child).as_deref(), Some("z/b/c"));
        assert_eq!(
            table.path(other).as_deref(),
            Some("ab"),
            "a sibling sharing the prefix stays"
        );
        assert_eq!(table.path(target), None, "the replaced target is detached");
        assert_eq!(table.peek("z/b/c"), child);
    }

    #[test]
    fn collisions_probe_to_a_free_number() {
        let mut table = InodeTable::new();
        let ino = table.remember("a");
        // Plant a different path on the number "b" would hash to.
        let b_hash = table.peek("b");
        table.by_ino.insert(
            b_hash,
            Record {
                path: Arc::from("squatter"),
                lookups: 1,
                kernel: KernelView::default(),
            },
        );
        let b = table.remember("b");
        assert_ne!(b, b_hash);
        assert_ne!(b, ino);
        assert_eq!(table.path(b).as_deref(), Some("b"));
    }
}
