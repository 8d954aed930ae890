//! Changes to the namespace, sent to S3 at once: unlink (DeleteObject), mkdir (a `dir/` marker
//! object, so an empty directory persists), rmdir (only when empty), and rename.
//!
//! S3 has no rename: a file is copied on the server (in parts above 5 GiB) and the source
//! deleted; a directory is every key under it, moved one by one, which is not atomic and is
//! refused with EXDEV past `max_rename_keys` (so `mv` copies file by file instead). A rename
//! holds its names (`gates`) so that no open for writing or metadata change of them runs under
//! it. Owns these rules and keeps the staged files, the inode table and the metadata cache in
//! step with them.

use std::ffi::OsStr;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::gates::{ChangePass, MovePass};
use super::names::{check_os_name, join};
use super::write::StagedEntry;
use super::write::content_type_of;
use super::{Attr, Creator, Details, Entry, FsError, Kind, S3Fs, lock};
use crate::object::{ListRequest, ObjectMetadata, ObjectSummary, PutOptions};
use crate::upload::copy_object;
use crate::writeback::{StagedFile, object_replaced_at};

/// The content type of a file never uploaded, renamed: taken from the new name if it was taken
/// from the old one, else (an object truncated at open keeps its own) unchanged.
fn renamed_content_type(metadata: &ObjectMetadata, from: &str, to: &str) -> Option<String> {
    if metadata.content_type == content_type_of(from) {
        content_type_of(to)
    } else {
        metadata.content_type.clone()
    }
}

/// Copies and deletes of a directory rename in flight at once.
const RENAME_CONCURRENCY: usize = 16;
/// How many times a file rename follows a staged file that was let go and staged again while
/// the rename waited for it, before it moves the object as it is.
const STAGED_RENAME_ATTEMPTS: usize = 3;

/// `renameat2` flags.
pub const RENAME_NOREPLACE: u32 = 1;

impl S3Fs {
    /// Deletes a file: the object, and the staged copy if it is being written (open handles
    /// keep reading and writing it, but it is never uploaded again).
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.writes()?;
        let (path, _pass) = self.pass_for_child(parent, name).await?;
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        if entry.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        // Open handles keep the whole content: it is fetched before the object goes.
        if let Some(staged) = self.staged.remove(&path) {
            self.drop_staged(&staged).await?;
        }
        self.client.delete(&self.config.root.file_key(&path)).await?;
        self.metadata.changed_to(path, None);
        Ok(())
    }

    /// Creates a directory: an empty `name/` marker object, with the mount's defaults.
    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        self.mkdir_as(parent, name, None).await
    }

    /// mkdir(2) for `creator`: its mode and owner are kept in the marker's metadata where they
    /// differ from the mount's defaults.
    pub async fn mkdir_as(
        &self,
        parent: u64,
        name: &OsStr,
        creator: Option<Creator>,
    ) -> Result<Attr, FsError> {
        self.writes()?;
        let (path, _pass) = self.pass_for_child(parent, name).await?;
        // Nothing is at the path, nor under it, as of the answer resolve gets: S3's now, or a
        // negative answer cached for up to a second, which the new directory's first lookup
        // then refreshes (see `MetadataCache::remember_new_dir`).
        let asked_now = self.metadata.get(&path).is_none().then(std::time::Instant::now);
        if self.resolve(&path).await?.is_some() {
            return Err(FsError::Exists);
        }
        let marker = self.config.root.dir_prefix(&path);
        let options = PutOptions {
            metadata: self.creation_metadata(creator, Kind::Dir, None),
            ..PutOptions::default()
        };
        let etag = self
            .client
            .put_with(&marker, bytes::Bytes::new(), &options)
            .await?;
        self.metadata.remember_new_dir(&path, asked_now);
        let entry = Entry {
            etag: Some(etag),
            details: Some(Arc::new(Details {
                metadata: options.metadata,
                ..Details::default()
            })),
            ..Entry::dir(std::time::SystemTime::now())
        };
        self.metadata.changed_to(path.clone(), Some(entry.clone()));
        let mut inodes = lock(&self.inodes);
        let ino = inodes.remember(&path);
        super::set_attrs_view(&mut inodes, ino, &entry);
        Ok(self.attr(ino, &entry))
    }

    /// symlink(2): an object whose body is the target and whose mode says symlink, as s3fs
    /// stores them (so each shows the other's links).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &[u8],
        creator: Option<Creator>,
    ) -> Result<Attr, FsError> {
        self.writes()?;
        let (path, _pass) = self.pass_for_child(parent, name).await?;
        if target.len() > libc::PATH_MAX as usize {
            return Err(FsError::InvalidName(super::names::NameError::TooLong));
        }
        if self.resolve(&path).await?.is_some() {
            return Err(FsError::Exists);
        }
        let options = PutOptions {
            metadata: self.creation_metadata(creator, Kind::Symlink, None),
            ..PutOptions::default()
        };
        let key = self.config.root.file_key(&path);
        let etag = self
            .client
            .put_with(&key, bytes::Bytes::copy_from_slice(target), &options)
            .await?;
        let entry = Entry {
            kind: Kind::Symlink,
            size: target.len() as u64,
            mtime: std::time::SystemTime::now(),
            etag: Some(etag),
            details: Some(Arc::new(Details {
                metadata: options.metadata,
                ..Details::default()
            })),
        };
        self.metadata.changed_to(path.clone(), Some(entry.clone()));
        let mut inodes = lock(&self.inodes);
        let ino = inodes.remember(&path);
        super::set_attrs_view(&mut inodes, ino, &entry);
        Ok(self.attr(ino, &entry))
    }

    /// readlink(2): the target, from geesefs's header or else the object's body (read as the
    /// version looked up: a link replaced meanwhile is ESTALE, never a mix).
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (key, entry) = self.detailed_entry(ino).await?;
        if entry.kind != Kind::Symlink {
            return Err(FsError::InvalidArgument);
        }
        let header = entry
            .details
            .as_deref()
            .and_then(|details| details.metadata.user.get(super::posix::GEESEFS_SYMLINK_TARGET));
        if let Some(target) = header {
            return Ok(target.as_bytes().to_vec());
        }
        if entry.size > libc::PATH_MAX as u64 {
            tracing::warn!(%key, size = entry.size, "a symlink's target is longer than PATH_MAX");
            return Err(FsError::InvalidName(super::names::NameError::TooLong));
        }
        let body = self
            .client
            .get_range(&key, 0..entry.size, entry.etag.as_deref())
            .await?;
        Ok(body.to_vec())
    }

    /// Removes an empty directory (its marker, if it has one).
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.writes()?;
        let (path, _pass) = self.pass_for_child(parent, name).await?;
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        if entry.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        if !self.dir_is_empty(&path).await? {
            return Err(FsError::NotEmpty);
        }
        self.client.delete(&self.config.root.dir_prefix(&path)).await?;
        self.metadata.changed_to(path, None);
        Ok(())
    }

    /// rename(2) and renameat2 with RENAME_NOREPLACE. A file replaces a file, a directory an
    /// empty directory, as POSIX says.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        self.writes()?;
        if flags & !RENAME_NOREPLACE != 0 {
            // RENAME_EXCHANGE cannot be done on S3 without a window where one name is missing.
            return Err(FsError::InvalidArgument);
        }
        let (from, to, _pass) = self.pass_to_move(parent, name, new_parent, new_name).await?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::InvalidArgument);
        }
        let source = self.resolve(&from).await?.ok_or(FsError::NotFound)?;
        let target = self.resolve(&to).await?;
        if flags & RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(FsError::Exists);
        }
        match (source.kind, target.map(|t| t.kind)) {
            (Kind::File | Kind::Symlink, Some(Kind::Dir)) => return Err(FsError::IsADirectory),
            (Kind::Dir, Some(Kind::File | Kind::Symlink)) => return Err(FsError::NotADirectory),
            (Kind::Dir, Some(Kind::Dir)) if !self.dir_is_empty(&to).await? => return Err(FsError::NotEmpty),
            _ => {}
        }
        match source.kind {
            Kind::File | Kind::Symlink => self.rename_file(&from, &to).await?,
            Kind::Dir => self.rename_dir(&from, &to).await?,
        }
        lock(&self.inodes).rename(&from, &to);
        Ok(())
    }

    /// A rename's source and target paths, and its pass to move them (see `gates`), taken at the
    /// paths they are once no other rename moves them (a rename of a directory above may have).
    async fn pass_to_move(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(String, String, MovePass), FsError> {
        let paths = || -> Result<(String, String), FsError> {
            Ok((
                self.child_path(parent, name)?,
                self.child_path(new_parent, new_name)?,
            ))
        };
        let (mut from, mut to) = paths()?;
        loop {
            let pass = self
                .gates
                .moving(vec![Arc::from(from.as_str()), Arc::from(to.as_str())])
                .await;
            let (from_now, to_now) = paths()?;
            if from_now == from && to_now == to {
                return Ok((from, to, pass));
            }
            (from, to) = (from_now, to_now);
        }
    }

    /// Moves one file. A file never uploaded just changes the key it will be uploaded to;
    /// otherwise its content is put in S3 (if changed), copied, and the source deleted.
    async fn rename_file(&self, from: &str, to: &str) -> Result<(), FsError> {
        // A file open at the target keeps its content for its handles: fetched before the copy
        // replaces the object.
        if let Some(replaced) = self.staged.remove(to) {
            self.drop_staged(&replaced).await?;
        }
        // A staged file let go while the rename waited for it may have been staged again by an
        // open for writing: that one is the file to move. A few times, then the object.
        let mut moved = false;
        for _ in 0..STAGED_RENAME_ATTEMPTS {
            let Some(staged) = self.staged.get(from) else {
                break;
            };
            if self.rename_staged(from, Arc::from(to), &staged).await? {
                moved = true;
                break;
            }
        }
        if !moved {
            let (from_key, to_key) = (self.config.root.file_key(from), self.config.root.file_key(to));
            self.rename_object(&from_key, &to_key).await?;
        }
        self.metadata.changed_to(from.to_owned(), None);
        self.metadata.changed_unknown(to);
        Ok(())
    }

    /// [`S3Fs::rename_file`] of a staged file: its content goes to S3 first if it changed, and
    /// the staged file follows its object to the new name. `false` when there was nothing to
    /// do: the last handle's settle let the file go while this waited for its lock (a rename
    /// right after a close), and it is staged no more.
    async fn rename_staged(
        &self,
        from: &str,
        to: Arc<str>,
        staged: &Arc<StagedEntry>,
    ) -> Result<bool, FsError> {
        let (from_key, to_key) = (self.config.root.file_key(from), self.config.root.file_key(&to));
        let ctx = self.writes()?;
        let mut file = staged.file.lock().await;
        if !self.staged.holds(from, staged) {
            return Ok(false);
        }
        if file.exists_remotely() {
            if file.is_dirty() {
                file.upload(ctx).await?;
            }
            let etag = file.etag().unwrap_or_default().to_owned();
            let mut metadata = file.metadata().clone();
            self.keep_time(&mut metadata, file.mtime());
            let copied = self
                .copy_key(&from_key, &to_key, file.size(), &etag, Some(&metadata))
                .await?;
            self.client.delete(&from_key).await?;
            file.set_metadata(metadata)?;
            file.moved_to(to_key, copied)?;
        } else {
            // Never uploaded; an object at the old name (a file truncated at open) goes now.
            let replaced = object_replaced_at(ctx, &to_key).await?;
            self.client.delete(&from_key).await?;
            let content_type = renamed_content_type(file.metadata(), from, &to);
            file.rekey(to_key, content_type, replaced)?;
        }
        staged.update_seen(&file);
        // Under the file's lock, which a settle takes too: the settle finds the entry at its new
        // name, never a moment where it is at neither. An entry unlinked meanwhile stays out.
        let (_, displaced) = self.staged.move_entry(from, to.clone(), staged);
        drop(file);
        self.drop_displaced(&to, displaced).await;
        Ok(true)
    }

    /// A file staged at a rename's target during the rename (which the gates keep from
    /// happening through this mount's own opens) loses that name, as a file there at the start
    /// did. The rename itself is done whatever that costs it.
    async fn drop_displaced(&self, to: &str, displaced: Option<Arc<StagedEntry>>) {
        if let Some(displaced) = displaced
            && let Err(error) = self.drop_staged(&displaced).await
        {
            tracing::warn!(path = %to, %error, "a file staged at a rename's target during the rename lost its name; its handles may fail");
        }
    }

    /// [`S3Fs::rename_file`] of a file not staged: copied with every header the object has,
    /// storage class and encryption included (which a plain CopyObject leaves to the bucket's
    /// defaults), then the source deleted.
    async fn rename_object(&self, from_key: &str, to_key: &str) -> Result<(), FsError> {
        let head = self.client.head(from_key).await?;
        let mut metadata = head.metadata.clone();
        self.keep_time(&mut metadata, head.last_modified);
        self.copy_key(from_key, to_key, head.size, &head.etag, Some(&metadata))
            .await?;
        self.client.delete(from_key).await?;
        Ok(())
    }

    /// Moves every key under a directory: files being written are uploaded first, then each key
    /// is moved on its own (copied, then its source deleted), 16 at a time. Not atomic, but a
    /// failure midway (the server went away) leaves every key at its old name or at its new one:
    /// no new move starts after the first failure, and only a key whose copy landed but whose
    /// delete failed is at both, with the same content. Staged files follow their objects.
    async fn rename_dir(&self, from: &str, to: &str) -> Result<(), FsError> {
        // Files being written under it are uploaded, and their locks held until they have
        // followed their objects: a close in between would upload to a key being copied and
        // deleted, and its data would be lost after its close succeeded. Their writers wait.
        let staged = self.staged.under(from);
        let mut held = Vec::with_capacity(staged.len());
        for (path, entry) in &staged {
            let mut file = entry.file.lock().await;
            // A settle (under the file's lock) may have let it go since it was listed.
            if !self.staged.holds(path, entry) {
                continue;
            }
            let ino = lock(&self.inodes).peek(path);
            self.upload_held(entry, &mut file, ino).await?;
            held.push(HeldStaged {
                path: path.clone(),
                entry,
                file,
            });
        }
        let from_prefix = self.config.root.dir_prefix(from);
        let to_prefix = self.config.root.dir_prefix(to);
        let objects = self.list_all_under(&from_prefix).await?;
        let failed = std::sync::atomic::AtomicBool::new(false);
        let moves: Vec<BoxedFuture<'_, Option<MoveOutcome>>> = objects
            .into_iter()
            .filter_map(|object| {
                // A listing of the prefix holds only keys under it; a server that says otherwise
                // is not followed into a slice out of bounds.
                let Some(relative) = object.key.strip_prefix(&from_prefix) else {
                    tracing::warn!(key = %object.key, prefix = %from_prefix, "listed key outside the prefix listed; not renamed");
                    return None;
                };
                let dest = format!("{to_prefix}{relative}");
                let failed = &failed;
                let moving: BoxedFuture<'_, Option<MoveOutcome>> = Box::pin(async move {
                    if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return None;
                    }
                    let moved = self.move_key(&object, &dest).await;
                    if moved.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Some(moved)
                });
                Some(moving)
            })
            .collect();
        let outcomes = join_bounded(moves, RENAME_CONCURRENCY).await;
        let mut copied = Vec::new();
        let mut first_error = None;
        for outcome in outcomes.into_iter().flatten() {
            match outcome {
                Ok(done) => copied.push(done),
                Err((landed, error)) => {
                    copied.extend(landed);
                    first_error.get_or_insert(error);
                }
            }
        }
        // Staged files follow whatever copy of their object landed, even when the rename
        // failed: a later close must not bring a moved object back under its old name.
        self.move_staged_under(from, to, &copied, held).await;
        self.metadata.changed_everything();
        match first_error {
            None => Ok(()),
            Some(error) => {
                tracing::warn!(%from, %to, moved = copied.len(), %error,
                    "directory rename failed midway: the keys moved so far are under the new name, the others under the old");
                Err(error)
            }
        }
    }

    /// Moves one key: a server-side copy, then a delete of the source. On failure, says whether
    /// the copy had landed (the destination and its ETag), so its staged file can follow it.
    async fn move_key(&self, object: &ObjectSummary, dest: &str) -> MoveOutcome {
        // A listing carries no metadata: CopyObject copies it (user metadata and content
        // headers; storage class and encryption become the bucket's defaults).
        let etag = self
            .copy_key(&object.key, dest, object.size, &object.etag, None)
            .await
            .map_err(|error| (None, error))?;
        let landed = (dest.to_owned(), etag);
        match self.client.delete(&object.key).await {
            Ok(()) => Ok(landed),
            Err(error) => Err((Some(landed), error.into())),
        }
    }

    /// Staged files under a renamed directory (`held`, locked since their upload) follow it, as
    /// the copies of their objects. After a rename that failed midway, only those whose object
    /// was copied (or that were never uploaded, so have no object to copy) move; the others stay
    /// with their object. A file that cannot follow (its journal cannot be written) keeps its
    /// old name and key, logged: the directory's rename is done by then either way.
    async fn move_staged_under(
        &self,
        from: &str,
        to: &str,
        copied: &[(String, String)],
        held: Vec<HeldStaged<'_>>,
    ) {
        for HeldStaged {
            path,
            entry,
            mut file,
        } in held
        {
            let new_path: Arc<str> = Arc::from(format!("{to}{}", &path[from.len()..]));
            let new_key = self.config.root.file_key(&new_path);
            let followed = if let Some((_, etag)) = copied.iter().find(|(key, _)| *key == new_key) {
                file.moved_to(new_key, etag.clone())
            } else if !file.exists_remotely()
                && let Ok(ctx) = self.writes()
            {
                let content_type = renamed_content_type(file.metadata(), &path, &new_path);
                match object_replaced_at(ctx, &new_key).await {
                    Ok(replaced) => file.rekey(new_key, content_type, replaced),
                    Err(error) => Err(error),
                }
            } else {
                continue;
            };
            if let Err(error) = followed {
                tracing::warn!(%path, to = %new_path, %error, "a file being written could not follow its directory's rename");
                continue;
            }
            entry.update_seen(&file);
            let (_, displaced) = self.staged.move_entry(&path, new_path.clone(), entry);
            drop(file);
            self.drop_displaced(&new_path, displaced).await;
        }
    }

    /// Every object under `prefix` (no delimiter), refusing past `max_rename_keys`.
    async fn list_all_under(&self, prefix: &str) -> Result<Vec<ObjectSummary>, FsError> {
        let mut objects = Vec::new();
        let mut continuation_token = None;
        loop {
            let request = ListRequest {
                prefix: prefix.to_owned(),
                delimiter: None,
                continuation_token,
                max_keys: None,
            };
            let page = self.client.list(&request).await?;
            objects.extend(page.objects);
            if objects.len() > self.config.max_rename_keys {
                tracing::warn!(%prefix, limit = self.config.max_rename_keys,
                    "directory rename refused (EXDEV): more keys than --max-rename-keys allows; mv copies file by file instead");
                return Err(FsError::CrossDevice);
            }
            continuation_token = page.next_continuation_token;
            if continuation_token.is_none() {
                return Ok(objects);
            }
        }
    }

    /// Server-side copy of any size, with `metadata` (`None`: the source's, as CopyObject copies).
    async fn copy_key(
        &self,
        from: &str,
        to: &str,
        size: u64,
        etag: &str,
        metadata: Option<&ObjectMetadata>,
    ) -> Result<String, FsError> {
        let ctx = self.writes()?;
        let copied = copy_object(self.client.clone(), from, to, size, etag, metadata, &ctx.upload).await;
        copied.map_err(|error| FsError::from(crate::writeback::WriteError::from(error)))
    }

    /// Whether a directory holds nothing but its own marker (on this mount or in S3).
    async fn dir_is_empty(&self, path: &str) -> Result<bool, FsError> {
        if !self.staged.under(path).is_empty() {
            return Ok(false);
        }
        let prefix = self.config.root.dir_prefix(path);
        let request = ListRequest {
            prefix: prefix.clone(),
            delimiter: Some("/".to_owned()),
            continuation_token: None,
            max_keys: Some(2),
        };
        let page = self.client.list(&request).await?;
        Ok(page.common_prefixes.is_empty() && page.objects.iter().all(|o| o.key == prefix))
    }

    /// A staged file that lost its name: never uploaded again; dropped now if nothing has it open.
    async fn drop_staged(&self, staged: &Arc<StagedEntry>) -> Result<(), FsError> {
        let ctx = self.writes()?;
        staged.mark_unlinked();
        let mut file = staged.file.lock().await;
        if staged.drop_unless_held() {
            file.discard(ctx);
        } else {
            file.mark_deleted(ctx).await?;
        }
        Ok(())
    }

    /// The path of `name` in `parent`, and a pass to change what is there (see `gates`): the
    /// kernel does not hold back a change inside a directory while that directory is renamed.
    pub(super) async fn pass_for_child(
        &self,
        parent: u64,
        name: &OsStr,
    ) -> Result<(String, ChangePass), FsError> {
        let (path, pass) = self
            .pass_to_change(|| self.child_path(parent, name).map(Arc::from))
            .await?;
        Ok((path.to_string(), pass))
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> Result<String, FsError> {
        let parent_path = self.path_of(parent)?;
        let path = join(&parent_path, check_os_name(name)?);
        super::names::check_key_len(&self.config.root, &path)?;
        Ok(path)
    }
}

/// A staged file under a directory being renamed, its lock held from its upload until it
/// follows the directory.
struct HeldStaged<'a> {
    path: Arc<str>,
    entry: &'a Arc<StagedEntry>,
    file: tokio::sync::MutexGuard<'a, StagedFile>,
}

/// Runs `futures` at most `limit` at once; the results come in completion order.
async fn join_bounded<T>(futures: Vec<BoxedFuture<'_, T>>, limit: usize) -> Vec<T> {
    stream::iter(futures).buffer_unordered(limit).collect().await
}

/// A key moved (its new key and ETag), or why not, with the copy if it had landed.
type MoveOutcome = Result<(String, String), (Option<(String, String)>, FsError)>;

type BoxedFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
