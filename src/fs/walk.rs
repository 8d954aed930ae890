//! Directory read-ahead for tree walks: `find`, `du`, `rsync`, Python's `os.walk`, a data loader
//! indexing one folder per class. Each opens the subdirectories of a directory one after the
//! other, in the order the listing gave them, and lists each whole before the next; every
//! directory then costs a ListObjectsV2 round trip during which the walker waits. Once two
//! siblings have been opened in listing order, quickly enough, the first page of the next few is
//! asked for ahead, so a walk's requests overlap each other and the walker's own work.
//!
//! This module owns only the rule (which siblings, when) and the pages waiting for their
//! directory's open; it holds them as an opaque `T` (the listing task of `readdir`) and knows
//! nothing of S3. A page asked for ahead is used only while it is fresh ([`Walks::new`]'s
//! `max_age`), and a walker too slow to use pages that young gets none.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

// Tokio's clock, which a test can pause: a walk's pace is read off it.
use tokio::time::Instant;

use super::metadata::parent_of;

/// Siblings whose first page is asked for ahead of the walker: enough to keep requests in
/// flight while it works through a directory of 1,000 names, few enough that a walk stopped
/// halfway wastes little.
pub const WALK_AHEAD: usize = 4;
/// Directories whose subdirectories are remembered (the most recently listed).
const PARENTS: usize = 64;
/// Subdirectories remembered of one directory: later ones are not read ahead.
const SIBLINGS: usize = 10_000;
/// Pages waiting for their directory's open, across every walk.
const WAITING: usize = 4 * WALK_AHEAD;

/// What is known of one directory's subdirectories, for the walk rule.
struct Siblings {
    /// Their paths, in listing order.
    order: Vec<String>,
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    /// The one opened last, and when.
    last_opened: Option<(usize, Instant)>,
    /// Those before this one are opened or asked for already.
    ahead_to: usize,
}

/// The walks under way on one mount.
pub struct Walks<T> {
    parents: lru::LruCache<String, Siblings>,
    /// Directory path -> its first page asked for ahead (and when it was asked for).
    waiting: HashMap<String, (T, Instant)>,
    max_age: Duration,
}

impl<T> Walks<T> {
    /// Pages older than `max_age` when their directory is opened are not used (listed again).
    pub fn new(max_age: Duration) -> Self {
        Self {
            parents: lru::LruCache::new(NonZeroUsize::new(PARENTS).expect("PARENTS > 0")),
            waiting: HashMap::new(),
            max_age,
        }
    }

    /// A page of `parent`'s listing showed these subdirectories (paths), in order; the first
    /// page starts the record again.
    pub fn listed(&mut self, parent: &str, first_page: bool, subdirs: impl IntoIterator<Item = String>) {
        let mut subdirs = subdirs.into_iter().peekable();
        if first_page {
            self.parents.pop(parent);
        }
        if subdirs.peek().is_none() {
            return;
        }
        let siblings = self.parents.get_or_insert_mut(parent.to_owned(), || Siblings {
            order: Vec::new(),
            index: HashMap::default(),
            last_opened: None,
            ahead_to: 0,
        });
        for path in subdirs.take(SIBLINGS.saturating_sub(siblings.order.len())) {
            siblings.index.insert(path.clone(), siblings.order.len());
            siblings.order.push(path);
        }
    }

    /// `dir` is being opened at `now`: its page asked for ahead, if one waits and is fresh, and
    /// the siblings to ask for ahead now (none unless a walk goes on: the sibling before `dir`
    /// was the one opened last, and recently enough that pages asked for now will be fresh
    /// when their turn comes).
    pub fn opened(&mut self, dir: &str, now: Instant) -> (Option<T>, Vec<String>) {
        let page = self
            .waiting
            .remove(dir)
            .filter(|(_, asked)| now.saturating_duration_since(*asked) <= self.max_age)
            .map(|(page, _)| page);
        let pace = self.max_age / WALK_AHEAD as u32;
        let Some(siblings) = self.parents.get_mut(parent_of(dir)) else {
            return (page, Vec::new());
        };
        let Some(&at) = siblings.index.get(dir) else {
            return (page, Vec::new());
        };
        let walking = matches!(siblings.last_opened,
            Some((last, when)) if last + 1 == at && now.saturating_duration_since(when) <= pace);
        siblings.last_opened = Some((at, now));
        if !walking {
            return (page, Vec::new());
        }
        let from = siblings.ahead_to.max(at + 1);
        let to = (at + 1 + WALK_AHEAD).min(siblings.order.len());
        siblings.ahead_to = siblings.ahead_to.max(to);
        let ahead = siblings.order.get(from..to).unwrap_or_default().to_vec();
        (page, ahead)
    }

    /// Keeps `dir`'s first page, asked for at `asked`, for its open; the oldest waiting page goes
    /// when too many wait.
    pub fn wait_for_open(&mut self, dir: String, page: T, asked: Instant) {
        self.waiting
            .retain(|_, (_, at)| asked.saturating_duration_since(*at) <= self.max_age);
        if self.waiting.len() >= WAITING
            && let Some(oldest) = self
                .waiting
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(d, _)| d.clone())
        {
            self.waiting.remove(&oldest);
        }
        self.waiting.insert(dir, (page, asked));
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(1);

    fn tree(walks: &mut Walks<u32>, parent: &str, count: usize) -> Vec<String> {
        let dirs: Vec<String> = (0..count).map(|n| format!("{parent}/d{n:02}")).collect();
        walks.listed(parent, true, dirs.clone());
        dirs
    }

    #[test]
    fn two_siblings_opened_in_order_start_a_walk() {
        let mut walks = Walks::new(AGE);
        let dirs = tree(&mut walks, "t", 10);
        let now = Instant::now();
        assert_eq!(walks.opened(&dirs[0], now), (None, vec![]), "one open is no walk");
        let (_, ahead) = walks.opened(&dirs[1], now);
        assert_eq!(ahead, dirs[2..2 + WALK_AHEAD]);
        for dir in &ahead {
            walks.wait_for_open(dir.clone(), 7, now);
        }
        // The next one takes its page and asks for one more sibling, not again for those asked.
        let (page, ahead) = walks.opened(&dirs[2], now);
        assert_eq!(page, Some(7));
        assert_eq!(ahead, [dirs[2 + WALK_AHEAD].clone()]);
        // On to the end: every later sibling asked for once, none past the last.
        let mut asked: Vec<String> = dirs[2..3 + WALK_AHEAD].to_vec();
        for dir in &dirs[3..] {
            asked.extend(walks.opened(dir, now).1);
        }
        assert_eq!(asked, dirs[2..]);
    }

    #[test]
    fn opens_out_of_listing_order_or_slow_ones_are_no_walk() {
        let mut walks = Walks::<u32>::new(AGE);
        let dirs = tree(&mut walks, "t", 10);
        let now = Instant::now();
        walks.opened(&dirs[5], now);
        assert_eq!(walks.opened(&dirs[3], now).1, Vec::<String>::new(), "backwards");
        assert_eq!(walks.opened(&dirs[7], now).1, Vec::<String>::new(), "a jump");
        let later = now + AGE;
        assert_eq!(walks.opened(&dirs[8], later).1, Vec::<String>::new(), "too slow");
        assert_eq!(
            walks.opened(&dirs[9], later).1,
            Vec::<String>::new(),
            "the last has none after it"
        );
        assert_eq!(
            walks.opened("elsewhere/x", now),
            (None, vec![]),
            "a parent never listed"
        );
    }

    #[test]
    fn a_stale_page_is_not_used_and_waiting_pages_are_bounded() {
        let mut walks = Walks::new(AGE);
        let now = Instant::now();
        walks.wait_for_open("t/old".to_owned(), 1, now);
        assert_eq!(
            walks.opened("t/old", now + AGE + Duration::from_millis(1)).0,
            None
        );
        for n in 0..WAITING + 5 {
            walks.wait_for_open(
                format!("t/d{n:02}"),
                n as u32,
                now + Duration::from_millis(n as u64),
            );
        }
        assert_eq!(walks.waiting(), WAITING);
        assert_eq!(walks.opened("t/d00", now).0, None, "the oldest went first");
        assert!(walks.opened(&format!("t/d{:02}", WAITING + 4), now).0.is_some());
    }

    #[test]
    fn a_new_first_page_starts_the_record_again_and_pages_add_to_it() {
        let mut walks = Walks::<u32>::new(AGE);
        walks.listed("t", true, ["t/a".to_owned(), "t/b".to_owned()]);
        walks.listed("t", false, ["t/c".to_owned(), "t/d".to_owned()]);
        let now = Instant::now();
        walks.opened("t/b", now);
        assert_eq!(walks.opened("t/c", now).1, ["t/d"]);
        walks.listed("t", true, ["t/x".to_owned()]);
        assert_eq!(
            walks.opened("t/d", now),
            (None, vec![]),
            "forgotten with the old listing"
        );
    }
}
