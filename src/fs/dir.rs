//! Directory streams: a paged ListObjectsV2 turned into readdir entries, a page in memory at a
//! time (and a few listed ahead, see `readdir`), so a directory of 100,000 keys never needs
//! the whole listing (or bucket) in memory.
//!
//! Owns the merge of a page's objects and common prefixes into one name order, the hiding of
//! keys that cannot be names, and the rule for a name that is both a file and a prefix: the
//! directory wins and the file is hidden (as Mountpoint does), so a name has one meaning. This
//! module does not cache anything itself; it reports what it saw through [`Listed`] so the
//! caller can fill its metadata cache.

use std::collections::{BTreeSet, VecDeque};

use crate::object::{ListPage, ListRequest, ObjectClient, ObjectError, ObjectSummary};

use super::names::{NameError, check_component, join};

/// What one listed name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListedKind {
    File(ObjectSummary),
    Dir,
    /// A file being written on this mount that S3 does not have yet.
    Local,
}

/// One name the listing produced, with its readdir offset (the offset of the *next* entry, as
/// FUSE wants: entry number `n`, counting from 1, carries offset `n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub offset: u64,
    pub name: String,
    pub kind: ListedKind,
}

/// A key (or common prefix) under the listed directory that cannot be shown, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hidden {
    pub key: String,
    pub reason: HiddenReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HiddenReason {
    BadName(NameError),
    /// A non-empty object whose key ends in `/`: its body cannot be a directory's.
    DirectoryMarkerWithData,
    /// A file whose name is also a prefix: the directory is shown instead.
    ShadowedByDirectory,
    /// The server returned a key outside the prefix we listed (a misbehaving server).
    NotUnderListedPrefix,
}

/// A readdir stream over one directory prefix. `.` and `..` are the caller's; offsets here
/// start after them at `first_offset`.
#[derive(Debug)]
pub struct DirStream {
    prefix: String,
    first_offset: u64,
    next_offset: u64,
    continuation: Option<String>,
    exhausted: bool,
    ready: VecDeque<Listed>,
    /// Files held back until the listing has passed the place where `name/` would sort, so a
    /// same-named directory can still shadow them. Sorted, and short in practice: only names
    /// that are a prefix of their successors stay here.
    held: Vec<ObjectSummary>,
    /// How many entries each ListObjectsV2 page may hold (`None`: the server's default, 1000).
    page_size: Option<u32>,
    /// Names of files staged in this directory on this mount; those the listing does not show
    /// (not uploaded yet) come after it, so a new file is listed before its first upload.
    local_files: BTreeSet<String>,
    /// Those not listed yet in this pass.
    local_pending: BTreeSet<String>,
}

impl DirStream {
    pub fn new(prefix: String, first_offset: u64, page_size: Option<u32>) -> Self {
        Self {
            prefix,
            first_offset,
            next_offset: first_offset,
            continuation: None,
            exhausted: false,
            ready: VecDeque::new(),
            held: Vec::new(),
            page_size,
            local_files: BTreeSet::new(),
            local_pending: BTreeSet::new(),
        }
    }

    /// Adds the names of files staged in this directory (see `local_files`).
    pub fn with_local_files(mut self, names: BTreeSet<String>) -> Self {
        self.local_pending = names.clone();
        self.local_files = names;
        self
    }

    /// Starts again from the first entry (rewinddir, or a seek before what is kept).
    pub fn restart(&mut self) {
        let local_files = std::mem::take(&mut self.local_files);
        *self = Self::new(
            std::mem::take(&mut self.prefix),
            self.first_offset,
            self.page_size,
        )
        .with_local_files(local_files);
    }

    /// Whether nothing has been listed yet: every offset can be served from here.
    pub fn at_start(&self) -> bool {
        self.next_offset == self.first_offset && self.continuation.is_none() && !self.exhausted
    }

    /// The smallest offset this stream can still serve without restarting.
    pub fn earliest_offset(&self) -> u64 {
        self.ready.front().map_or(self.next_offset, |e| e.offset) - 1
    }

    /// Drops every entry at or before `offset` (the kernel has it already).
    pub fn skip_through(&mut self, offset: u64) {
        while self.ready.front().is_some_and(|e| e.offset <= offset) {
            self.ready.pop_front();
        }
    }

    pub fn front(&self) -> Option<&Listed> {
        self.ready.front()
    }

    pub fn pop_front(&mut self) -> Option<Listed> {
        self.ready.pop_front()
    }

    /// How many listed entries are held in memory (ready or held back), for tests of the bound.
    pub fn buffered(&self) -> usize {
        self.ready.len() + self.held.len()
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted && self.ready.is_empty()
    }

    /// Fetches the next page and turns it into ready entries. Returns what it had to hide, and the
    /// entries it added (so the caller can cache their metadata).
    pub async fn fetch_page(&mut self, client: &dyn ObjectClient) -> Result<PageOutcome, ObjectError> {
        let Some(request) = self.next_request() else {
            return Ok(PageOutcome::default());
        };
        let page = client.list(&request).await?;
        Ok(self.accept_page(page))
    }

    /// The request of the next page (`None` once the listing has ended), for a caller that sends
    /// it itself (ahead of need) and hands the answer to [`DirStream::accept_page`].
    pub fn next_request(&self) -> Option<ListRequest> {
        (!self.exhausted).then(|| ListRequest {
            prefix: self.prefix.clone(),
            delimiter: Some("/".to_owned()),
            continuation_token: self.continuation.clone(),
            max_keys: self.page_size,
        })
    }

    /// Turns the answer to [`DirStream::next_request`] into ready entries (see `fetch_page`).
    pub fn accept_page(&mut self, page: ListPage) -> PageOutcome {
        if self.exhausted {
            return PageOutcome::default();
        }
        self.continuation = page.next_continuation_token;
        let mut outcome = PageOutcome::default();
        let before = self.ready.len();
        for item in merge_in_key_order(page.objects, page.common_prefixes) {
            self.accept(item, &mut outcome.hidden);
        }
        if self.continuation.is_none() {
            self.exhausted = true;
            for file in std::mem::take(&mut self.held) {
                self.emit_file(file, &mut outcome.hidden);
            }
            for name in std::mem::take(&mut self.local_pending) {
                self.push(name, ListedKind::Local);
            }
        }
        outcome.added = self.ready.iter().skip(before).cloned().collect();
        outcome
    }

    fn accept(&mut self, item: PageItem, hidden: &mut Vec<Hidden>) {
        let sort_key = match &item {
            PageItem::Object(o) => o.key.clone(),
            PageItem::Prefix(p) => p.clone(),
        };
        self.release_held_before(&sort_key, hidden);
        match item {
            PageItem::Object(object) if object.key == self.prefix => {
                // The directory's own marker: an empty one is the directory; data in it cannot be.
                if object.size > 0 {
                    hidden.push(Hidden {
                        key: object.key,
                        reason: HiddenReason::DirectoryMarkerWithData,
                    });
                }
            }
            PageItem::Object(object) => self.held.push(object),
            PageItem::Prefix(prefix) => match name_under(&self.prefix, &prefix, true) {
                Ok(name) => self.push(name, ListedKind::Dir),
                Err(reason) => hidden.push(Hidden { key: prefix, reason }),
            },
        }
    }

    /// Emits held files that sort before `sort_key` as directories would (`name/`); a held file
    /// whose `name/` *is* `sort_key` is shadowed by that directory.
    fn release_held_before(&mut self, sort_key: &str, hidden: &mut Vec<Hidden>) {
        let held = std::mem::take(&mut self.held);
        for file in held {
            let as_dir = format!("{}/", file.key);
            if as_dir.as_str() < sort_key {
                self.emit_file(file, hidden);
            } else if as_dir == sort_key {
                hidden.push(Hidden {
                    key: file.key,
                    reason: HiddenReason::ShadowedByDirectory,
                });
            } else {
                self.held.push(file);
            }
        }
    }

    fn emit_file(&mut self, file: ObjectSummary, hidden: &mut Vec<Hidden>) {
        match name_under(&self.prefix, &file.key, false) {
            Ok(name) => self.push(name, ListedKind::File(file)),
            Err(reason) => hidden.push(Hidden {
                key: file.key,
                reason,
            }),
        }
    }

    fn push(&mut self, name: String, kind: ListedKind) {
        self.local_pending.remove(&name);
        self.next_offset += 1;
        self.ready.push_back(Listed {
            offset: self.next_offset,
            name,
            kind,
        });
    }
}

/// What one page produced beyond the ready queue.
#[derive(Debug, Default)]
pub struct PageOutcome {
    pub added: Vec<Listed>,
    pub hidden: Vec<Hidden>,
}

enum PageItem {
    Object(ObjectSummary),
    Prefix(String),
}

/// The name `key` gives under the listed `prefix` (without the trailing `/` of a common prefix),
/// or why it cannot be one.
fn name_under(prefix: &str, key: &str, common_prefix: bool) -> Result<String, HiddenReason> {
    let rest = key
        .strip_prefix(prefix)
        .ok_or(HiddenReason::NotUnderListedPrefix)?;
    let name = if common_prefix {
        rest.strip_suffix('/').ok_or(HiddenReason::NotUnderListedPrefix)?
    } else {
        rest
    };
    check_component(name.as_bytes())
        .map(str::to_owned)
        .map_err(HiddenReason::BadName)
}

/// One page's objects and prefixes in the single key order S3 produced them in.
fn merge_in_key_order(objects: Vec<ObjectSummary>, prefixes: Vec<String>) -> Vec<PageItem> {
    let mut items: Vec<PageItem> = objects
        .into_iter()
        .map(PageItem::Object)
        .chain(prefixes.into_iter().map(PageItem::Prefix))
        .collect();
    items.sort_by(|a, b| item_key(a).cmp(item_key(b)));
    items
}

fn item_key(item: &PageItem) -> &str {
    match item {
        PageItem::Object(o) => &o.key,
        PageItem::Prefix(p) => p,
    }
}

/// The path of a listed entry, for the caller's metadata cache.
pub fn listed_path(dir_path: &str, listed: &Listed) -> String {
    join(dir_path, &listed.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::memory::MemoryClient;

    async fn list_all(client: &MemoryClient, prefix: &str, page: u32) -> (Vec<(String, bool)>, Vec<Hidden>) {
        let mut stream = DirStream::new(prefix.to_owned(), 2, Some(page));
        let mut names = Vec::new();
        let mut hidden = Vec::new();
        loop {
            while let Some(entry) = stream.pop_front() {
                names.push((entry.name, matches!(entry.kind, ListedKind::Dir)));
            }
            if stream.is_exhausted() {
                return (names, hidden);
            }
            hidden.extend(stream.fetch_page(client).await.unwrap().hidden);
        }
    }

    #[tokio::test]
    async fn directory_shadows_file_across_pages() {
        let client = MemoryClient::new("b");
        for key in ["d/a", "d/a-b", "d/a.c", "d/a/x", "d/b", "d/c/"] {
            client.put_object(key, "x");
        }
        for page in [1, 2, 3, 1000] {
            let (names, hidden) = list_all(&client, "d/", page).await;
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                vec![
                    ("a".to_owned(), true),
                    ("a-b".to_owned(), false),
                    ("a.c".to_owned(), false),
                    ("b".to_owned(), false),
                    ("c".to_owned(), true),
                ],
                "page size {page}"
            );
            assert!(
                hidden
                    .iter()
                    .any(|h| h.key == "d/a" && h.reason == HiddenReason::ShadowedByDirectory),
                "page size {page}: {hidden:?}"
            );
        }
    }

    #[tokio::test]
    async fn bad_keys_are_hidden_not_fatal() {
        let client = MemoryClient::new("b");
        let long = "x".repeat(256);
        for key in ["ok", "a//b", "./x", "../y", &long, "dir/", "z"] {
            client.put_object(key, "");
        }
        client.put_object("full/", "data in a marker");
        let (names, hidden) = list_all(&client, "", 2).await;
        let names: Vec<_> = names.into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["a", "dir", "full", "ok", "z"]);
        let reasons: Vec<_> = hidden.iter().map(|h| h.reason.clone()).collect();
        assert!(reasons.contains(&HiddenReason::BadName(NameError::Dot)));
        assert!(reasons.contains(&HiddenReason::BadName(NameError::TooLong)));
        // Inside `a/`, the `a//` prefix is an empty component.
        let (names, hidden) = list_all(&client, "a/", 1000).await;
        assert!(names.is_empty());
        assert_eq!(hidden[0].reason, HiddenReason::BadName(NameError::Empty));
        // The non-empty marker is hidden when its own directory is listed.
        let (_, hidden) = list_all(&client, "full/", 1000).await;
        assert_eq!(hidden[0].reason, HiddenReason::DirectoryMarkerWithData);
    }

    #[tokio::test]
    async fn offsets_are_consecutive_and_restart_repeats_them() {
        let client = MemoryClient::new("b");
        for i in 0..25 {
            client.put_object(&format!("k{i:02}"), "1");
        }
        let mut stream = DirStream::new(String::new(), 2, Some(10));
        let mut offsets = Vec::new();
        while !stream.is_exhausted() {
            stream.fetch_page(&client).await.unwrap();
            while let Some(e) = stream.pop_front() {
                offsets.push(e.offset);
            }
        }
        assert_eq!(offsets, (3..28).collect::<Vec<u64>>());
        stream.restart();
        stream.fetch_page(&client).await.unwrap();
        assert_eq!(stream.front().map(|e| e.offset), Some(3));
        assert_eq!(stream.earliest_offset(), 2);
    }
}
