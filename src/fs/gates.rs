//! Gates between a rename and the changes that would race it at the names it moves.
//!
//! S3 has no rename: s3mount copies the object to the new key and deletes the old one, which at
//! real S3 latency takes from tens of milliseconds to minutes. Meanwhile the kernel lets an open
//! for writing of either name through, and anything inside a renamed directory (it locks the
//! parent directories and the renamed inodes, not those). Left alone, such a writer's upload
//! could land before the copy and be overwritten by it (its close reported success, its data
//! gone), its file could be staged from the source key the rename is about to delete, or a new
//! entry could stay behind under the old name. So a rename holds a [`MovePass`] on both names,
//! and every open for writing, create, metadata change, mkdir, symlink, unlink and rmdir holds a
//! [`ChangePass`] on its path while it stages or changes it (s3mount's own API, which tests and
//! tools call directly, has no kernel locks at all): a change waits for a rename of its path
//! (or of a directory above it) to finish, then goes on at whatever name the file has by then;
//! a rename waits for the changes already under way. A waiting rename stops new changes from
//! starting, so a stream of writers cannot starve it. A pass lasts only while a file is staged
//! or changed, not for the life of a handle: writes through handles already open go on during a
//! file's rename, as POSIX has them (a directory's rename holds the locks of the files being
//! written inside it instead, see `namespace`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{FsError, S3Fs, lock};

/// The passes given out on this mount.
#[derive(Clone, Default)]
pub(super) struct PathGates {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever a pass ends, for the waiters to look again.
    ended: Notify,
}

#[derive(Default)]
struct State {
    /// Paths being staged or changed, and by how many at once.
    changing: HashMap<Arc<str>, usize>,
    /// Paths (files or directories) renames hold, or wait to hold once the changes under way end.
    moving: Vec<Arc<str>>,
}

/// Whether `outer` is `inner` or a directory above it (paths are relative, `""` the root).
fn covers(outer: &str, inner: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

impl State {
    fn is_moving(&self, path: &str) -> bool {
        self.moving.iter().any(|moving| covers(moving, path))
    }

    fn overlaps_a_move(&self, paths: &[Arc<str>]) -> bool {
        self.moving.iter().any(|moving| {
            paths
                .iter()
                .any(|path| covers(moving, path) || covers(path, moving))
        })
    }

    fn is_changing_under(&self, paths: &[Arc<str>]) -> bool {
        self.changing
            .keys()
            .any(|changing| paths.iter().any(|path| covers(path, changing)))
    }
}

impl PathGates {
    /// A pass to stage or change the file at `path`, once no rename moves it.
    pub(super) async fn changing(&self, path: Arc<str>) -> ChangePass {
        self.wait_until(|state| {
            if state.is_moving(&path) {
                return false;
            }
            *state.changing.entry(path.clone()).or_default() += 1;
            true
        })
        .await;
        ChangePass {
            gates: self.clone(),
            path,
        }
    }

    /// A pass to move `paths` (a rename's source and target), once no other rename moves any of
    /// them and the changes under way at them have ended.
    pub(super) async fn moving(&self, paths: Vec<Arc<str>>) -> MovePass {
        self.wait_until(|state| {
            if state.overlaps_a_move(&paths) {
                return false;
            }
            state.moving.extend(paths.iter().cloned());
            true
        })
        .await;
        // Claimed: from here new changes of these paths wait, and dropping the pass (a rename
        // given up while it waits) gives the claim back.
        let pass = MovePass {
            gates: self.clone(),
            paths,
        };
        self.wait_until(|state| !state.is_changing_under(&pass.paths))
            .await;
        pass
    }

    /// Waits until `ready` (called under the state's lock, where it may take what it found
    /// free) says yes.
    async fn wait_until(&self, mut ready: impl FnMut(&mut State) -> bool) {
        loop {
            // Registered before looking, so that a pass ending in between still wakes us.
            let ended = self.inner.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if ready(&mut lock(&self.inner.state)) {
                return;
            }
            ended.await;
        }
    }

    fn end(&self, edit: impl FnOnce(&mut State)) {
        edit(&mut lock(&self.inner.state));
        self.inner.ended.notify_waiters();
    }
}

/// Held while the file at a path is staged or changed; renames of it wait.
pub(super) struct ChangePass {
    gates: PathGates,
    path: Arc<str>,
}

impl Drop for ChangePass {
    fn drop(&mut self) {
        self.gates.end(|state| {
            if let Some(count) = state.changing.get_mut(&self.path) {
                *count -= 1;
                if *count == 0 {
                    state.changing.remove(&self.path);
                }
            }
        });
    }
}

/// Held by a rename; changes of its paths, and of the paths below them, wait.
pub(super) struct MovePass {
    gates: PathGates,
    paths: Vec<Arc<str>>,
}

impl Drop for MovePass {
    fn drop(&mut self) {
        self.gates.end(|state| {
            for path in &self.paths {
                if let Some(at) = state.moving.iter().position(|moving| moving == path) {
                    state.moving.swap_remove(at);
                }
            }
        });
    }
}

impl S3Fs {
    /// A pass to stage or change the file at the path `path_now` gives, taken at the path it
    /// gives once no rename moves it (a rename of the file, or of a directory above it, may
    /// change it while this waits). A rename that replaced the file (or a directory above it)
    /// meanwhile leaves no path: [`FsError::Stale`], which the kernel answers with a new lookup.
    pub(super) async fn pass_to_change(
        &self,
        path_now: impl Fn() -> Result<Arc<str>, FsError>,
    ) -> Result<(Arc<str>, ChangePass), FsError> {
        let mut path = path_now()?;
        loop {
            let pass = self.gates.changing(path.clone()).await;
            let after = path_now().map_err(|error| match error {
                FsError::BadHandle => FsError::Stale,
                other => other,
            })?;
            if after == path {
                return Ok((path, pass));
            }
            path = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn paths(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|name| Arc::from(*name)).collect()
    }

    /// Polls `future` once: its output if it is ready now.
    fn now<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    #[test]
    fn covers_a_path_itself_and_what_is_below_it_only() {
        assert!(covers("a", "a"));
        assert!(covers("a", "a/b"));
        assert!(covers("a/b", "a/b/c"));
        assert!(covers("", "a"));
        assert!(!covers("a", "ab"));
        assert!(!covers("a/b", "a/bc"));
        assert!(!covers("a/b", "a"));
    }

    #[tokio::test]
    async fn a_change_of_a_moving_path_waits_for_the_rename_to_end() {
        let gates = PathGates::default();
        let rename = gates.moving(paths(&["tmp", "final"])).await;
        for path in ["final", "tmp"] {
            let mut change = pin!(gates.changing(Arc::from(path)));
            assert!(now(change.as_mut()).is_none(), "{path} waits");
        }
        let mut change = pin!(gates.changing(Arc::from("final")));
        assert!(now(change.as_mut()).is_none());
        drop(rename);
        assert!(now(change.as_mut()).is_some(), "free once the rename ended");
        let other = pin!(gates.changing(Arc::from("finale")));
        assert!(now(other).is_some(), "another name never waited");
    }

    #[tokio::test]
    async fn a_directory_rename_holds_the_paths_below_it() {
        let gates = PathGates::default();
        let rename = gates.moving(paths(&["d", "e"])).await;
        let mut below = pin!(gates.changing(Arc::from("d/sub/f")));
        assert!(now(below.as_mut()).is_none());
        let beside = pin!(gates.changing(Arc::from("dd/f")));
        assert!(now(beside).is_some());
        drop(rename);
        assert!(now(below.as_mut()).is_some());
    }

    #[tokio::test]
    async fn a_rename_waits_for_the_changes_under_way_and_holds_off_new_ones() {
        let gates = PathGates::default();
        let writer = gates.changing(Arc::from("d/final")).await;
        let mut rename = pin!(gates.moving(paths(&["tmp", "d"])));
        assert!(
            now(rename.as_mut()).is_none(),
            "a change under way at a path below"
        );
        let mut late = pin!(gates.changing(Arc::from("d/final")));
        assert!(
            now(late.as_mut()).is_none(),
            "a change that comes after the rename waits behind it"
        );
        drop(writer);
        let pass = now(rename.as_mut()).expect("the rename goes once the change ended");
        assert!(now(late.as_mut()).is_none());
        drop(pass);
        assert!(now(late.as_mut()).is_some());
    }

    #[tokio::test]
    async fn renames_of_overlapping_paths_go_one_at_a_time() {
        let gates = PathGates::default();
        let first = gates.moving(paths(&["a", "b"])).await;
        let mut onto_the_target = pin!(gates.moving(paths(&["b", "c"])));
        assert!(now(onto_the_target.as_mut()).is_none());
        let mut below_the_source = pin!(gates.moving(paths(&["a/x", "z"])));
        assert!(now(below_the_source.as_mut()).is_none());
        let apart = pin!(gates.moving(paths(&["p", "q"])));
        assert!(now(apart).is_some(), "renames of other names do not wait");
        drop(first);
        assert!(now(onto_the_target.as_mut()).is_some());
        assert!(now(below_the_source.as_mut()).is_some());
    }

    #[tokio::test]
    async fn a_rename_given_up_while_it_waits_gives_its_claim_back() {
        let gates = PathGates::default();
        let writer = gates.changing(Arc::from("f")).await;
        {
            let mut rename = pin!(gates.moving(paths(&["f", "g"])));
            assert!(now(rename.as_mut()).is_none());
        }
        let change = pin!(gates.changing(Arc::from("f")));
        assert!(now(change).is_some(), "nothing holds f but the first writer");
        drop(writer);
        let state = lock(&gates.inner.state);
        assert!(state.changing.is_empty() && state.moving.is_empty());
    }
}
