//! Reference-model property tests: random sequences of changes made to the bucket by another
//! writer, interleaved with what a user does through the mount (list, look up, read), checked
//! after every step against a model of what the mount must show.
//!
//! The model is the documented rule set of docs/SEMANTICS.md, written independently of
//! `src/fs`: prefixes are directories, a directory shadows a same-named file, keys with a
//! component that cannot be a name are hidden. The file system runs on `MemoryClient` with a
//! metadata TTL of zero, so every answer must match the bucket as it is now. Failures that
//! proptest shrinks are kept below as named tests.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use s3mount::fs::inode::ROOT_INO;
use s3mount::fs::names::{RootPrefix, check_component};
use s3mount::fs::{DirEntry, FsConfig, Kind, PosixMetadata, S3Fs};
use s3mount::object::memory::MemoryClient;
use s3mount::prefetch::ReadAheadConfig;
use s3mount::upload::UploadConfig;

/// Components chosen to collide: `a` vs `a-b` vs `a.c` sort around `a/`; `.`, `..` and `` are
/// invalid; the long one is over NAME_MAX.
const COMPONENTS: &[&str] = &["a", "a-b", "a.c", "b", ".", "..", "", "x"];

fn long_component() -> String {
    "L".repeat(256)
}

#[derive(Clone, Debug)]
enum Step {
    Put { key: String, body: Vec<u8> },
    Delete { index: usize },
    List { path: String },
    Lookup { path: String },
    Read { path: String },
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => prop::sample::select(COMPONENTS).prop_map(str::to_owned),
        1 => Just(long_component()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    (prop::collection::vec(component(), 1..=3), any::<bool>()).prop_map(|(parts, trailing_slash)| {
        let mut key = parts.join("/");
        if trailing_slash {
            key.push('/');
        }
        key
    })
}

/// Paths a user might type: only valid components (the kernel never sends others).
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&["a", "a-b", "a.c", "b", "x"][..]), 0..=3)
        .prop_map(|p| p.join("/"))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..3)).prop_map(|(key, body)| Step::Put { key, body }),
        1 => any::<prop::sample::Index>().prop_map(|i| Step::Delete { index: i.index(usize::MAX) }),
        2 => path().prop_map(|path| Step::List { path }),
        2 => path().prop_map(|path| Step::Lookup { path }),
        1 => path().prop_map(|path| Step::Read { path }),
    ]
}

/// What the mount must show, derived from the bucket's keys alone.
struct Model<'a> {
    objects: &'a BTreeMap<String, Vec<u8>>,
}

impl Model<'_> {
    fn dir_prefix(path: &str) -> String {
        if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        }
    }

    /// The visible children of the directory at `path`, or `None` when it is no directory.
    fn children(&self, path: &str) -> Option<BTreeMap<String, Kind>> {
        if !self.is_dir(path) {
            return None;
        }
        let prefix = Self::dir_prefix(path);
        let mut files = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for key in self.objects.keys().filter(|k| k.starts_with(&prefix)) {
            let rest = &key[prefix.len()..];
            match rest.split_once('/') {
                Some((dir, _)) => dirs.insert(dir.to_owned()),
                None if rest.is_empty() => false,
                None => files.insert(rest.to_owned()),
            };
        }
        let valid = |name: &String| check_component(name.as_bytes()).is_ok();
        let mut children: BTreeMap<String, Kind> = files
            .into_iter()
            .filter(valid)
            .map(|name| (name, Kind::File))
            .collect();
        children.extend(dirs.into_iter().filter(valid).map(|name| (name, Kind::Dir)));
        Some(children)
    }

    fn is_dir(&self, path: &str) -> bool {
        let prefix = Self::dir_prefix(path);
        path.is_empty() || self.objects.keys().any(|k| k.starts_with(&prefix))
    }

    /// What a walk from the root to `path` finds.
    fn kind(&self, path: &str) -> Option<Kind> {
        if path.is_empty() {
            return Some(Kind::Dir);
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.children(parent)?.get(name).copied()
    }
}

struct Harness {
    client: Arc<MemoryClient>,
    fs: S3Fs,
    objects: BTreeMap<String, Vec<u8>>,
}

impl Harness {
    fn new() -> Self {
        let client = Arc::new(MemoryClient::new("model"));
        let config = FsConfig {
            root: RootPrefix::new("").unwrap(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            // Zero: every answer must reflect the bucket as it is now.
            metadata_ttl: Duration::ZERO,
            read_only: false,
            // Tiny pages, so the rules are checked across page boundaries too.
            list_page_size: Some(2),
            read_ahead: ReadAheadConfig { part_size: 1 << 20 },
            read_ahead_memory: 16 << 20,
            upload: UploadConfig {
                part_size: 5 << 20,
                concurrency: 2,
            },
            upload_memory: 16 << 20,
            max_rename_keys: 100,
            posix_metadata: PosixMetadata::Lazy,
            write: Default::default(),
        };
        // Read-only here: the bucket changes only underneath (other writers).
        let fs = S3Fs::new(client.clone(), config, None, None);
        Self {
            client,
            fs,
            objects: BTreeMap::new(),
        }
    }

    async fn walk(&self, path: &str) -> Option<(u64, Kind, u64)> {
        let mut ino = ROOT_INO;
        let mut found = (ROOT_INO, Kind::Dir, 0);
        if path.is_empty() {
            return Some(found);
        }
        for name in path.split('/') {
            match self.fs.lookup(ino, OsStr::new(name)).await {
                Ok(attr) => {
                    found = (attr.ino, attr.kind, attr.size);
                    ino = attr.ino;
                }
                Err(error) => {
                    assert_eq!(error.errno(), libc::ENOENT, "lookup of {name} in {path}: {error}");
                    return None;
                }
            }
        }
        Some(found)
    }

    async fn list(&self, ino: u64) -> BTreeMap<String, Kind> {
        let handle = self.fs.opendir(ino).await.expect("opendir");
        let mut listed: Vec<DirEntry> = Vec::new();
        // Reply after reply, as the kernel reads: a reply may end where the next page is not
        // listed yet; only an empty one ends the directory.
        loop {
            let offset = listed.last().map_or(0, |entry| entry.offset);
            let before = listed.len();
            let mut add = |entry: DirEntry| {
                listed.push(entry);
                false
            };
            self.fs
                .readdir(ino, handle, offset, &mut add)
                .await
                .expect("readdir");
            if listed.len() == before {
                break;
            }
        }
        self.fs.releasedir(handle);
        let names: Vec<_> = listed.iter().map(|e| e.name.clone()).collect();
        let unique: BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicate names in {names:?}");
        listed
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name, e.kind))
            .collect()
    }

    async fn apply(&mut self, step: &Step) {
        let model = Model {
            objects: &self.objects,
        };
        match step {
            Step::Put { key, body } => {
                self.client.put_object(key, body.clone());
                self.objects.insert(key.clone(), body.clone());
            }
            Step::Delete { index } => {
                if let Some(key) = self
                    .objects
                    .keys()
                    .nth(index % self.objects.len().max(1))
                    .cloned()
                {
                    self.client.delete_object(&key);
                    self.objects.remove(&key);
                }
            }
            Step::Lookup { path } => {
                let found = self.walk(path).await.map(|(_, kind, _)| kind);
                assert_eq!(found, model.kind(path), "lookup {path:?}");
            }
            Step::List { path } => {
                let expected = model.children(path);
                match self.walk(path).await {
                    Some((ino, Kind::Dir, _)) => {
                        assert_eq!(Some(self.list(ino).await), expected, "list {path:?}")
                    }
                    _ => assert_eq!(expected, None, "{path:?} should be a directory"),
                }
            }
            Step::Read { path } => {
                if let Some((ino, Kind::File, size)) = self.walk(path).await {
                    let body = &self.objects[path];
                    assert_eq!(size, body.len() as u64, "size of {path:?}");
                    let handle = self.fs.open(ino, libc::O_RDONLY).await.expect("open").handle;
                    let data = self.fs.read(handle, 0, 1 << 20).await.expect("read");
                    self.fs.release(handle).await;
                    assert_eq!(&data[..], &body[..], "contents of {path:?}");
                } else {
                    assert_ne!(model.kind(path), Some(Kind::File), "{path:?} should be a file");
                }
            }
        }
    }
}

fn run(steps: &[Step]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::new();
        for step in steps {
            harness.apply(step).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_mount_shows_what_the_model_says(steps in prop::collection::vec(step(), 1..40)) {
        run(&steps);
    }
}

fn put(key: &str) -> Step {
    Step::Put {
        key: key.to_owned(),
        body: vec![1],
    }
}

fn list(path: &str) -> Step {
    Step::List {
        path: path.to_owned(),
    }
}

#[test]
fn file_held_back_across_a_page_is_still_shown() {
    run(&[put("a"), put("a-b"), put("a.c"), put("b"), list("")]);
}

#[test]
fn shadowed_file_next_to_siblings_on_other_pages() {
    run(&[
        put("a"),
        put("a-b"),
        put("a/x"),
        put("b"),
        list(""),
        Step::Lookup { path: "a".into() },
    ]);
}

#[test]
fn invalid_directory_component_hides_only_that_prefix() {
    run(&[
        put("./x"),
        put("a//b"),
        put(&format!("{}/c", long_component())),
        put("b"),
        list(""),
        list("a"),
    ]);
}
