//! [`SnapshotClient`]: the bucket as it was at one moment, for `--version-at`, over a client of a
//! versioned bucket. Read-only.
//!
//! Every key shows its newest version written at or before the moment; a key whose newest such
//! entry is a delete marker, or that had no version yet, does not exist. Listings come from
//! ListObjectVersions (keys in order, each key's versions newest first), a HEAD or GET names the
//! version chosen, so the file system above reads the past with the code that reads the present.
//! Directories are the listing's common prefixes as S3 gives them: a prefix whose keys were all
//! written after the moment, or deleted before it, shows as an empty directory (telling would
//! cost a listing of everything under it).
//!
//! Which version a key resolves to never changes (the past is fixed), so it is cached for the
//! mount's life, up to [`RESOLVED_KEYS`] keys.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;

use super::{
    CompletedPart, ListPage, ListRequest, ObjectClient, ObjectError, ObjectHead, ObjectMetadata,
    ObjectSummary, PutOptions, RangeBody, VersionListRequest, VersionPage, VersionSummary,
};

/// Keys whose chosen version is remembered.
const RESOLVED_KEYS: u64 = 100_000;

/// The bucket behind `inner` as it was at `at`.
pub struct SnapshotClient<C> {
    inner: C,
    at: SystemTime,
    /// key -> the version it had at `at` (`None`: it did not exist).
    resolved: Cache<String, Option<String>>,
}

impl<C: ObjectClient> SnapshotClient<C> {
    pub fn new(inner: C, at: SystemTime) -> Self {
        Self {
            inner,
            at,
            resolved: Cache::new(RESOLVED_KEYS),
        }
    }

    /// The version `key` had at the moment, from its versions (listed with the key as prefix,
    /// which lists longer keys after it too: those are skipped).
    async fn version_of(&self, key: &str) -> Result<Option<String>, ObjectError> {
        if let Some(known) = self.resolved.get(key) {
            return Ok(known);
        }
        let mut request = VersionListRequest {
            prefix: key.to_owned(),
            ..VersionListRequest::default()
        };
        let chosen = loop {
            let page = self.inner.list_versions(&request).await?;
            let versions: Vec<&VersionSummary> = page.versions.iter().filter(|v| v.key == key).collect();
            if let Some(chosen) = choose(&versions, self.at) {
                break (!chosen.is_delete_marker).then(|| chosen.version_id.clone());
            }
            // Versions come in key order: once past the key, there are no more of it.
            let past = page.versions.iter().any(|v| v.key.as_str() > key);
            match (page.next_key_marker, past) {
                (Some(marker), false) => {
                    request.key_marker = Some(marker);
                    request.version_id_marker = page.next_version_id_marker;
                }
                _ => break None,
            }
        };
        self.resolved.insert(key.to_owned(), chosen.clone());
        Ok(chosen)
    }

    async fn version_or_missing(&self, key: &str) -> Result<String, ObjectError> {
        self.version_of(key)
            .await?
            .ok_or_else(|| ObjectError::NoSuchKey(key.to_owned()))
    }
}

/// Among one key's versions (newest first), the one current at `at` (a version or a delete
/// marker); `None` when all of them are later.
fn choose<'v>(versions: &[&'v VersionSummary], at: SystemTime) -> Option<&'v VersionSummary> {
    versions
        .iter()
        .copied()
        .find(|version| version.last_modified <= at)
}

/// What a listing page of versions shows at `at`: each key's chosen version, when it is not a
/// delete marker. `complete_through` is the last key all of whose versions are in the page (the
/// page's last key may continue on the next page).
fn visible_at(page: &VersionPage, at: SystemTime) -> (Vec<ObjectSummary>, Option<String>) {
    let mut objects = Vec::new();
    let truncated = page.next_key_marker.is_some();
    let last_key = page.versions.last().map(|v| v.key.clone());
    let mut complete_through = None;
    let mut index = 0;
    while index < page.versions.len() {
        let key = &page.versions[index].key;
        let end = page.versions[index..]
            .iter()
            .position(|v| &v.key != key)
            .map_or(page.versions.len(), |n| index + n);
        if truncated && Some(key) == last_key.as_ref() {
            break;
        }
        let versions: Vec<&VersionSummary> = page.versions[index..end].iter().collect();
        if let Some(version) = choose(&versions, at)
            && !version.is_delete_marker
        {
            objects.push(ObjectSummary {
                key: version.key.clone(),
                size: version.size,
                last_modified: version.last_modified,
                etag: version.etag.clone(),
            });
        }
        complete_through = Some(key.clone());
        index = end;
    }
    (objects, complete_through)
}

fn read_only(key: &str) -> ObjectError {
    ObjectError::AccessDenied(format!("{key}: a --version-at mount is read-only"))
}

#[async_trait]
impl<C: ObjectClient> ObjectClient for SnapshotClient<C> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    /// Listed from the versions; the continuation token is the last key fully listed.
    async fn list(&self, request: &ListRequest) -> Result<ListPage, ObjectError> {
        let mut versions = VersionListRequest {
            prefix: request.prefix.clone(),
            delimiter: request.delimiter.clone(),
            key_marker: request.continuation_token.clone(),
            version_id_marker: None,
            max_keys: request.max_keys,
        };
        let mut common_prefixes = Vec::new();
        // The versions of a key that filled a whole page, carried into the next.
        let mut carried = Vec::new();
        loop {
            let mut page = self.inner.list_versions(&versions).await?;
            page.versions.splice(0..0, std::mem::take(&mut carried));
            let (objects, complete_through) = visible_at(&page, self.at);
            common_prefixes.extend(page.common_prefixes);
            let next = match (complete_through, &page.next_key_marker) {
                (_, None) => None,
                // Nothing of this page existed then: read on, so that a page is empty only at
                // the end (a one-key listing asks "is anything under this prefix?").
                (Some(key), Some(_)) if objects.is_empty() && common_prefixes.is_empty() => {
                    versions.key_marker = Some(key);
                    versions.version_id_marker = None;
                    continue;
                }
                (Some(key), Some(_)) => Some(key),
                (None, Some(marker)) => {
                    // One key's versions fill the whole page: read on through them.
                    versions.key_marker = Some(marker.clone());
                    versions.version_id_marker = page.next_version_id_marker.clone();
                    carried = page.versions;
                    continue;
                }
            };
            return Ok(ListPage {
                objects,
                common_prefixes,
                next_continuation_token: next,
            });
        }
    }

    async fn head_version(&self, key: &str, version_id: Option<&str>) -> Result<ObjectHead, ObjectError> {
        let version = match version_id {
            Some(version) => version.to_owned(),
            None => self.version_or_missing(key).await?,
        };
        self.inner.head_version(key, Some(&version)).await
    }

    async fn get_range_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Range<u64>,
        if_match: Option<&str>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, ObjectError> {
        let version = match version_id {
            Some(version) => version.to_owned(),
            None => self.version_or_missing(key).await?,
        };
        self.inner
            .get_range_body(key, Some(&version), range, if_match, sum_pieces)
            .await
    }

    async fn list_versions(&self, request: &VersionListRequest) -> Result<VersionPage, ObjectError> {
        self.inner.list_versions(request).await
    }

    async fn put_with(&self, key: &str, _: Bytes, _: &PutOptions) -> Result<String, ObjectError> {
        Err(read_only(key))
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        Err(read_only(key))
    }

    async fn copy(
        &self,
        _: &str,
        dest: &str,
        _: Option<&str>,
        _: Option<&ObjectMetadata>,
    ) -> Result<String, ObjectError> {
        Err(read_only(dest))
    }

    async fn create_multipart(&self, key: &str, _: &PutOptions) -> Result<String, ObjectError> {
        Err(read_only(key))
    }

    async fn upload_part(&self, key: &str, _: &str, _: u32, _: Bytes) -> Result<String, ObjectError> {
        Err(read_only(key))
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        _: &str,
        _: u32,
        _: &str,
        _: Range<u64>,
        _: Option<&str>,
    ) -> Result<String, ObjectError> {
        Err(read_only(key))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        _: &str,
        _: &[CompletedPart],
        _: Option<&str>,
        _: bool,
    ) -> Result<String, ObjectError> {
        Err(read_only(key))
    }

    async fn abort_multipart(&self, key: &str, _: &str) -> Result<(), ObjectError> {
        Err(read_only(key))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn version(key: &str, id: &str, seconds: u64, deleted: bool) -> VersionSummary {
        VersionSummary {
            key: key.to_owned(),
            version_id: id.to_owned(),
            last_modified: at(seconds),
            is_delete_marker: deleted,
            is_latest: false,
            size: seconds,
            etag: format!("\"{id}\""),
        }
    }

    fn page(versions: Vec<VersionSummary>, truncated: bool) -> VersionPage {
        VersionPage {
            next_key_marker: truncated.then(|| versions.last().unwrap().key.clone()),
            next_version_id_marker: truncated.then(|| versions.last().unwrap().version_id.clone()),
            versions,
            common_prefixes: Vec::new(),
        }
    }

    #[test]
    fn each_key_shows_its_newest_version_at_the_moment_and_deleted_keys_are_gone() {
        let listed = page(
            vec![
                // Written at 10, replaced at 30: at 20 the first version.
                version("a", "a2", 30, false),
                version("a", "a1", 10, false),
                // Deleted at 15: gone at 20.
                version("b", "b-del", 15, true),
                version("b", "b1", 5, false),
                // Only written at 25: not there yet.
                version("c", "c1", 25, false),
                // Deleted at 25 (after the moment): still there at 20.
                version("d", "d-del", 25, true),
                version("d", "d1", 1, false),
            ],
            false,
        );
        let (objects, through) = visible_at(&listed, at(20));
        let shown: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| (o.key.as_str(), o.etag.as_str()))
            .collect();
        assert_eq!(shown, [("a", "\"a1\""), ("d", "\"d1\"")]);
        assert_eq!(through.as_deref(), Some("d"));
        assert_eq!(objects[0].size, 10);
    }

    #[test]
    fn a_key_cut_by_the_page_end_waits_for_the_next_page() {
        let listed = page(
            vec![version("a", "a1", 1, false), version("b", "b2", 9, false)],
            true,
        );
        let (objects, through) = visible_at(&listed, at(5));
        assert_eq!(objects.len(), 1, "b's older versions may be on the next page");
        assert_eq!(through.as_deref(), Some("a"));
    }

    /// A client of canned version pages, one page per request, in order.
    struct Pages(std::sync::Mutex<Vec<VersionPage>>);

    #[async_trait]
    impl ObjectClient for Pages {
        fn bucket(&self) -> &str {
            "b"
        }
        async fn list(&self, _: &ListRequest) -> Result<ListPage, ObjectError> {
            unreachable!("a snapshot lists versions")
        }
        async fn head_version(&self, key: &str, _: Option<&str>) -> Result<ObjectHead, ObjectError> {
            Err(ObjectError::NoSuchKey(key.into()))
        }
        async fn get_range_body(
            &self,
            key: &str,
            _: Option<&str>,
            _: Range<u64>,
            _: Option<&str>,
            _: Option<usize>,
        ) -> Result<RangeBody, ObjectError> {
            Err(ObjectError::NoSuchKey(key.into()))
        }
        async fn list_versions(&self, _: &VersionListRequest) -> Result<VersionPage, ObjectError> {
            Ok(self.0.lock().unwrap().remove(0))
        }
        async fn put_with(&self, key: &str, _: Bytes, _: &PutOptions) -> Result<String, ObjectError> {
            Err(read_only(key))
        }
        async fn delete(&self, key: &str) -> Result<(), ObjectError> {
            Err(read_only(key))
        }
        async fn copy(
            &self,
            _: &str,
            d: &str,
            _: Option<&str>,
            _: Option<&ObjectMetadata>,
        ) -> Result<String, ObjectError> {
            Err(read_only(d))
        }
        async fn create_multipart(&self, key: &str, _: &PutOptions) -> Result<String, ObjectError> {
            Err(read_only(key))
        }
        async fn upload_part(&self, key: &str, _: &str, _: u32, _: Bytes) -> Result<String, ObjectError> {
            Err(read_only(key))
        }
        async fn upload_part_copy(
            &self,
            key: &str,
            _: &str,
            _: u32,
            _: &str,
            _: Range<u64>,
            _: Option<&str>,
        ) -> Result<String, ObjectError> {
            Err(read_only(key))
        }
        async fn complete_multipart(
            &self,
            key: &str,
            _: &str,
            _: &[CompletedPart],
            _: Option<&str>,
            _: bool,
        ) -> Result<String, ObjectError> {
            Err(read_only(key))
        }
        async fn abort_multipart(&self, key: &str, _: &str) -> Result<(), ObjectError> {
            Err(read_only(key))
        }
    }

    #[tokio::test]
    async fn a_listing_reads_past_pages_of_keys_deleted_then_and_of_one_keys_many_versions() {
        let pages = vec![
            // "a" was deleted before the moment and "aa" written after it: nothing visible.
            page(
                vec![
                    version("d/a", "a-del", 5, true),
                    version("d/a", "a1", 1, false),
                    version("d/aa", "aa1", 50, false),
                ],
                true,
            ),
            // Read on from after "a": "aa" again, then "b"'s versions fill the page...
            page(
                vec![version("d/aa", "aa1", 50, false), version("d/b", "b3", 30, false)],
                true,
            ),
            // ... and go on into the next, from after "aa".
            page(
                vec![
                    version("d/b", "b3", 30, false),
                    version("d/b", "b2", 9, false),
                    version("d/b", "b1", 2, false),
                ],
                false,
            ),
        ];
        let snapshot = SnapshotClient::new(Pages(std::sync::Mutex::new(pages)), at(10));
        let listed = snapshot
            .list(&ListRequest {
                prefix: "d/".into(),
                max_keys: Some(1),
                ..ListRequest::default()
            })
            .await
            .unwrap();
        let shown: Vec<&str> = listed.objects.iter().map(|o| o.etag.as_str()).collect();
        assert_eq!(
            shown,
            ["\"b2\""],
            "the version of b current at 10, found across pages"
        );
        assert_eq!(listed.next_continuation_token, None);
    }

    #[tokio::test]
    async fn an_unversioned_bucket_reads_as_its_present_and_refuses_writes() {
        let memory = super::super::memory::MemoryClient::new("b");
        memory.put_object("k", "now");
        let snapshot = SnapshotClient::new(memory, SystemTime::now() + Duration::from_secs(60));
        assert_eq!(snapshot.get_range("k", 0..3, None).await.unwrap(), "now");
        assert_eq!(snapshot.head("k").await.unwrap().size, 3);
        assert!(matches!(
            snapshot.head("missing").await,
            Err(ObjectError::NoSuchKey(_))
        ));
        let listed = snapshot.list(&ListRequest::default()).await.unwrap();
        assert_eq!(listed.objects.len(), 1);
        assert!(matches!(
            snapshot.put("k", Bytes::new()).await,
            Err(ObjectError::AccessDenied(_))
        ));
        let memory = super::super::memory::MemoryClient::new("b");
        memory.put_object("k", "now");
        let before = SnapshotClient::new(memory, SystemTime::UNIX_EPOCH);
        assert!(matches!(before.head("k").await, Err(ObjectError::NoSuchKey(_))));
        assert!(
            before
                .list(&ListRequest::default())
                .await
                .unwrap()
                .objects
                .is_empty()
        );
    }
}
