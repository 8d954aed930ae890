//! The one place an object's metadata changes without its bytes: extended attributes, chmod,
//! chown and utimensat all come here.
//!
//! S3 cannot edit metadata in place. An object is copied onto itself with
//! `MetadataDirective=REPLACE` and the whole new set of headers (so nothing else is lost), on
//! the condition that it is still the version whose headers were read (`x-amz-copy-source-if-
//! match`); a concurrent writer's change makes the copy fail and the change start again from a
//! fresh HEAD. Above 5 GiB the copy goes in parts on the server; the bytes never leave S3. A
//! file being written on this mount has its metadata changed in its staged copy, and its upload
//! carries it. A directory keeps its metadata on its marker object (`dir/`), created when it has
//! none.
//!
//! A copy sets Last-Modified, which shows as the modification time of an object that does not
//! keep one: so a change records the old time in `x-amz-meta-mtime` first (chmod must not change
//! the mtime), and Last-Modified becomes the change time (`ctime`), as POSIX has it.

use std::sync::Arc;
use std::time::SystemTime;

use super::write::StagedEntry;
use super::{Details, Entry, FsError, Kind, S3Fs, posix};
use crate::object::metadata::posix_headers;
use crate::object::{ObjectError, ObjectHead, ObjectMetadata, PutOptions};
use crate::upload::copy_object;
use crate::writeback::WriteError;

/// How many times a change starts again when another writer replaced the object between its
/// HEAD and its copy.
const CHANGE_ATTEMPTS: usize = 3;

impl S3Fs {
    /// Changes the metadata of the object at `ino` by `edit` (given the metadata, what the path
    /// is, and the mtime it shows now; it may refuse, and then nothing changes), and returns the
    /// entry as it now is.
    pub(super) async fn change_headers(
        &self,
        ino: u64,
        edit: impl Fn(&mut ObjectMetadata, Kind, SystemTime) -> Result<(), FsError>,
    ) -> Result<Entry, FsError> {
        self.writes()?;
        // Not while a rename moves the file: the change could land on the key it deletes.
        let (path, _pass) = self.pass_to_change(|| self.path_of(ino)).await?;
        if let Some(staged) = self.staged.get(&path) {
            return self.change_staged_headers(&staged, &edit).await;
        }
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        let key = match entry.kind {
            // The bucket's root has no object to keep anything on.
            Kind::Dir if path.is_empty() && self.config.root.dir_prefix("").is_empty() => {
                return Err(FsError::NotPermitted);
            }
            Kind::Dir => self.config.root.dir_prefix(&path),
            Kind::File | Kind::Symlink => self.config.root.file_key(&path),
        };
        let changed = self.change_object_headers(&key, entry.kind, &edit).await?;
        if !path.is_empty() {
            self.metadata.changed_to(path.to_string(), Some(changed.clone()));
        }
        Ok(changed)
    }

    /// A file being written: the staged copy's metadata changes, and the object's too when the
    /// copy is clean (its content is in S3 already, and no upload would carry the change).
    async fn change_staged_headers(
        &self,
        staged: &Arc<StagedEntry>,
        edit: &impl Fn(&mut ObjectMetadata, Kind, SystemTime) -> Result<(), FsError>,
    ) -> Result<Entry, FsError> {
        let ctx = self.writes()?;
        let mut file = staged.file.lock().await;
        let mut metadata = file.metadata().clone();
        let shown = shown_mtime(&metadata, file.mtime());
        edit(&mut metadata, staged.seen().kind, shown)?;
        if file.is_dirty() || !file.exists_remotely() {
            check_fits(&metadata)?;
            file.set_metadata(metadata)?;
        } else {
            // Clean: the file's time is its object's Last-Modified, which the copy moves.
            self.keep_time(&mut metadata, file.mtime());
            check_fits(&metadata)?;
            let key = file.key().to_owned();
            let etag = file.etag().unwrap_or_default().to_owned();
            let copied = copy_object(
                ctx.client.clone(),
                &key,
                &key,
                file.size(),
                &etag,
                Some(&metadata),
                &ctx.upload,
            )
            .await
            .map_err(WriteError::from)?;
            file.set_metadata(metadata)?;
            file.moved_to(key, copied)?;
        }
        staged.update_seen(&file);
        Ok(staged.seen())
    }

    /// An object in S3 (or a directory's marker, created if missing): HEAD, edit, copy onto
    /// itself, again from the HEAD if another writer got in between.
    async fn change_object_headers(
        &self,
        key: &str,
        kind: Kind,
        edit: &impl Fn(&mut ObjectMetadata, Kind, SystemTime) -> Result<(), FsError>,
    ) -> Result<Entry, FsError> {
        let ctx = self.writes()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let head = match self.client.head(key).await {
                Ok(head) => head,
                Err(ObjectError::NoSuchKey(_)) if kind == Kind::Dir => {
                    return self.create_marker(key, edit).await;
                }
                Err(error) => return Err(error.into()),
            };
            // What the object is, by its own metadata: a link listed (so looked up) as a file is
            // still a link.
            let kind = match kind {
                Kind::Dir => Kind::Dir,
                Kind::File | Kind::Symlink => super::file_entry_from_head(&head).kind,
            };
            let mut metadata = head.metadata.clone();
            edit(
                &mut metadata,
                kind,
                shown_mtime(&head.metadata, head.last_modified),
            )?;
            if metadata == head.metadata {
                return Ok(Entry {
                    kind,
                    ..super::file_entry_from_head(&head)
                });
            }
            self.keep_time(&mut metadata, head.last_modified);
            check_fits(&metadata)?;
            let copied = copy_object(
                ctx.client.clone(),
                key,
                key,
                head.size,
                &head.etag,
                Some(&metadata),
                &ctx.upload,
            )
            .await
            .map_err(WriteError::from);
            match copied {
                Ok(etag) => return Ok(changed_entry(kind, &head, etag, metadata)),
                Err(error) if attempt < CHANGE_ATTEMPTS && is_replaced_meanwhile(&error) => {
                    tracing::debug!(%key, "object replaced during a metadata change; starting again");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A directory without a marker gets one, carrying the change.
    async fn create_marker(
        &self,
        key: &str,
        edit: &impl Fn(&mut ObjectMetadata, Kind, SystemTime) -> Result<(), FsError>,
    ) -> Result<Entry, FsError> {
        let mut metadata = ObjectMetadata::default();
        edit(&mut metadata, Kind::Dir, SystemTime::now())?;
        check_fits(&metadata)?;
        let options = PutOptions {
            metadata,
            ..PutOptions::default()
        };
        let etag = self.client.put_with(key, bytes::Bytes::new(), &options).await?;
        Ok(Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: SystemTime::now(),
            etag: Some(etag),
            details: Some(Arc::new(Details {
                metadata: options.metadata,
                ..Details::default()
            })),
        })
    }

    /// Pins an object's modification time (its Last-Modified, `modified`) before a copy moves
    /// its Last-Modified: a metadata change or a rename does not change the mtime.
    pub(super) fn keep_time(&self, metadata: &mut ObjectMetadata, modified: SystemTime) {
        if self.config.posix_metadata.is_kept() && !metadata.user.contains_key(posix_headers::MTIME) {
            posix::set_time(&mut metadata.user, posix_headers::MTIME, modified);
        }
    }
}

/// The entry after a change: the same bytes, the new ETag and metadata, and the change time now.
fn changed_entry(kind: Kind, head: &ObjectHead, etag: String, metadata: ObjectMetadata) -> Entry {
    Entry {
        kind,
        size: head.size,
        mtime: SystemTime::now(),
        etag: Some(etag),
        details: Some(Arc::new(Details {
            metadata,
            // A copy is a new version on a versioned bucket; its id is not known here.
            version_id: None,
            checksum_crc32c: head.checksum_crc32c.clone(),
        })),
    }
}

/// The modification time an object shows: its kept `mtime`, else `modified` (its Last-Modified,
/// or a staged file's last write).
fn shown_mtime(metadata: &ObjectMetadata, modified: SystemTime) -> SystemTime {
    posix::Posix::from_user(&metadata.user).mtime.unwrap_or(modified)
}

/// S3's limit, counted on what is sent (the pinned time included): E2BIG rather than a 400.
fn check_fits(metadata: &ObjectMetadata) -> Result<(), FsError> {
    if metadata.user_fits() {
        Ok(())
    } else {
        Err(FsError::TooBig)
    }
}

/// Whether a copy failed because the object is no longer the version read.
fn is_replaced_meanwhile(error: &WriteError) -> bool {
    matches!(
        error,
        WriteError::Object(ObjectError::PreconditionFailed(_))
            | WriteError::Upload(crate::upload::UploadError::Object(
                ObjectError::PreconditionFailed(_)
            ))
    )
}
