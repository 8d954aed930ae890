//! What an object carries besides its bytes: the headers S3 stores with it and returns on HEAD
//! and GET (Content-Type, Cache-Control, the other representation headers, storage class,
//! server-side encryption) and the user-defined `x-amz-meta-*` entries.
//!
//! One [`ObjectMetadata`] travels from the HEAD of an object to every request that writes it
//! again (PutObject, CreateMultipartUpload, CopyObject with `MetadataDirective=REPLACE`), so a
//! rewrite, a rename or a metadata change through the mount keeps all of it. This module owns
//! the value and S3's limits on it; what the headers mean to a file system (modes, owners,
//! extended attributes) is `fs`'s.

use std::collections::BTreeMap;

/// S3's limit on user-defined metadata: the names (without `x-amz-meta-`) and values of every
/// entry together, in bytes of their UTF-8 form.
pub const MAX_USER_METADATA_BYTES: usize = 2048;

/// The `x-amz-meta-*` names (without the prefix) under which s3fs-fuse, geesefs and rclone keep
/// POSIX attributes, and so do we: a bucket written by one reads right through the others.
pub mod posix_headers {
    /// `st_mode` in decimal, type bits included (`33188` is a regular file `0644`).
    pub const MODE: &str = "mode";
    pub const UID: &str = "uid";
    pub const GID: &str = "gid";
    /// Seconds since the epoch, with `.nnnnnnnnn` when there are nanoseconds.
    pub const MTIME: &str = "mtime";
    pub const ATIME: &str = "atime";
    /// Every one of them: reserved, never listed as a user attribute.
    pub const ALL: [&str; 5] = [MODE, UID, GID, MTIME, ATIME];
}

/// Everything an object carries besides its bytes that a writer can set and S3 keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMetadata {
    /// `None`: the server's default (`binary/octet-stream` on S3 and Garage) when writing.
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    /// `None`: STANDARD (S3 omits the header for it).
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption`: `AES256`, `aws:kms`, `aws:kms:dsse`; `None`: the bucket's
    /// default.
    pub sse: Option<String>,
    /// The KMS key of `aws:kms` encryption.
    pub sse_kms_key_id: Option<String>,
    /// `x-amz-meta-*` entries, names without the prefix and lower-cased (as S3 stores them).
    pub user: BTreeMap<String, String>,
}

impl ObjectMetadata {
    /// Metadata of a new object: only a content type.
    pub fn with_content_type(content_type: Option<String>) -> Self {
        Self {
            content_type,
            ..Self::default()
        }
    }

    /// The bytes S3 counts against [`MAX_USER_METADATA_BYTES`].
    pub fn user_bytes(&self) -> usize {
        self.user
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum()
    }

    /// Whether S3 would accept this user metadata's size.
    pub fn user_fits(&self) -> bool {
        self.user_bytes() <= MAX_USER_METADATA_BYTES
    }

    /// The user metadata with every name lower-cased, as S3 stores it (a later duplicate under
    /// another case wins, as the last header sent would).
    pub fn normalized(mut self) -> Self {
        self.user = std::mem::take(&mut self.user)
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        self
    }

    /// The representation headers as (HTTP name, value) pairs, for logs, the journal and the
    /// system attributes.
    pub fn headers(&self) -> [(&'static str, Option<&str>); 8] {
        [
            ("content-type", self.content_type.as_deref()),
            ("cache-control", self.cache_control.as_deref()),
            ("content-encoding", self.content_encoding.as_deref()),
            ("content-disposition", self.content_disposition.as_deref()),
            ("content-language", self.content_language.as_deref()),
            ("storage-class", self.storage_class.as_deref()),
            ("sse", self.sse.as_deref()),
            ("sse-kms-key-id", self.sse_kms_key_id.as_deref()),
        ]
    }

    /// Sets the header named as in [`ObjectMetadata::headers`]; `false` for an unknown name.
    pub fn set_header(&mut self, name: &str, value: Option<String>) -> bool {
        let slot = match name {
            "content-type" => &mut self.content_type,
            "cache-control" => &mut self.cache_control,
            "content-encoding" => &mut self.content_encoding,
            "content-disposition" => &mut self.content_disposition,
            "content-language" => &mut self.content_language,
            "storage-class" => &mut self.storage_class,
            "sse" => &mut self.sse,
            "sse-kms-key-id" => &mut self.sse_kms_key_id,
            _ => return false,
        };
        *slot = value;
        true
    }
}

/// What the mount's own options add to every object it writes (PutObject, CreateMultipartUpload,
/// CopyObject): server-side encryption and storage class where the object's metadata names none
/// (a rewrite keeps the object's own), and a canned ACL always (S3 keeps none across a copy).
/// Validated by the command line; the server has the last word.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSettings {
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub storage_class: Option<String>,
    pub acl: Option<String>,
}

impl WriteSettings {
    /// `metadata` as sent: its own encryption and storage class, else the mount's.
    pub fn complete(&self, metadata: &ObjectMetadata) -> ObjectMetadata {
        let mut sent = metadata.clone();
        if sent.sse.is_none() {
            sent.sse = self.sse.clone();
            sent.sse_kms_key_id = self.sse_kms_key_id.clone();
        }
        if sent.storage_class.is_none() {
            sent.storage_class = self.storage_class.clone();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_bytes_count_names_and_values() {
        let mut metadata = ObjectMetadata::default();
        metadata.user.insert("ab".into(), "cde".into());
        metadata.user.insert("f".into(), String::new());
        assert_eq!(metadata.user_bytes(), 6);
        metadata
            .user
            .insert("big".into(), "x".repeat(MAX_USER_METADATA_BYTES - 9));
        assert_eq!(metadata.user_bytes(), MAX_USER_METADATA_BYTES);
        assert!(metadata.user_fits());
        metadata.user.insert("g".into(), String::new());
        assert!(!metadata.user_fits());
    }

    #[test]
    fn names_are_lower_cased_and_headers_round_trip() {
        let mut metadata = ObjectMetadata::default();
        metadata.user.insert("Mode".into(), "33188".into());
        let metadata = metadata.normalized();
        assert_eq!(metadata.user.get("mode").map(String::as_str), Some("33188"));
        let mut copy = ObjectMetadata::default();
        for (name, _) in metadata.headers() {
            assert!(copy.set_header(name, Some(format!("v-{name}"))));
        }
        for (name, value) in copy.headers() {
            assert_eq!(value, Some(format!("v-{name}").as_str()));
        }
        assert!(!copy.set_header("x-amz-meta-mode", None));
    }
}
