//! Extended attributes: an object's metadata as `getfattr`/`setfattr` see it.
//!
//! - `user.NAME` is `x-amz-meta-NAME`, for every user-defined entry but the POSIX ones (mode,
//!   owner, times, symlink target: those are `stat`'s) and those under `s3.` (the namespace
//!   below). Names are lower-cased, as S3 stores them; a name S3 cannot carry in a header is
//!   EINVAL; more than S3's 2 KiB of user metadata is E2BIG.
//! - `user.s3.*` are the system-defined metadata, read-only (EPERM) but for the content
//!   headers (`content_type`, `cache_control`, `content_encoding`, `content_disposition`,
//!   `content_language`), which a writer sets on S3 too. `user.s3.refresh`, written, drops what
//!   the mount has cached of the path, so another machine's change shows at once.
//! - Other namespaces (`security.`, `system.`, `trusted.`) do not exist here: ENODATA to read
//!   (answered without a request), ENOTSUP to write.
//!
//! Values: S3 carries metadata in HTTP headers, which hold printable ASCII only. A value that is
//! printable ASCII, without blanks at its ends and not starting with `=?`, is stored as it is;
//! any other (UTF-8 text, binary, empty) is stored as an RFC 2047 encoded word,
//! `=?UTF-8?B?<base64>?=`, the form S3 itself returns non-ASCII metadata in, and returned
//! decoded, so every value round-trips byte for byte.
//!
//! Reading costs one HeadObject when only a listing has been seen of the path, and nothing while
//! the HEAD's answer is cached (`--metadata-ttl`). Writing goes through the one place that
//! changes an object's metadata (`headers`).

use super::{Entry, FsError, S3Fs, lock, posix};
use crate::object::ObjectMetadata;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The namespace of every attribute this file system has.
const USER: &str = "user.";
/// Under `user.`: the system-defined metadata.
const SYSTEM: &str = "s3.";
/// Prefix and suffix of an RFC 2047 encoded word in base64.
const ENCODED_PREFIX: &str = "=?UTF-8?B?";
const ENCODED_SUFFIX: &str = "?=";

/// `setxattr` flags.
const XATTR_CREATE: i32 = libc::XATTR_CREATE;
const XATTR_REPLACE: i32 = libc::XATTR_REPLACE;

/// A system-defined attribute, `user.s3.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Key,
    Etag,
    Size,
    LastModified,
    VersionId,
    ChecksumCrc32c,
    StorageClass,
    Sse,
    SseKmsKeyId,
    /// A content header: settable. The name is the header's as [`ObjectMetadata::headers`]
    /// spells it.
    Header(&'static str),
    /// Written: drops the cached metadata of the path. Never listed; reads as ENODATA.
    Refresh,
}

const SYSTEM_NAMES: [(&str, System); 15] = [
    ("key", System::Key),
    ("etag", System::Etag),
    ("size", System::Size),
    ("last_modified", System::LastModified),
    ("version_id", System::VersionId),
    ("checksum_crc32c", System::ChecksumCrc32c),
    ("storage_class", System::StorageClass),
    ("sse", System::Sse),
    ("sse_kms_key_id", System::SseKmsKeyId),
    ("content_type", System::Header("content-type")),
    ("cache_control", System::Header("cache-control")),
    ("content_encoding", System::Header("content-encoding")),
    ("content_disposition", System::Header("content-disposition")),
    ("content_language", System::Header("content-language")),
    ("refresh", System::Refresh),
];

/// What an attribute name means here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// `x-amz-meta-<this>`, lower-cased.
    User(String),
    System(System),
    /// Under `user.s3.` but not one of ours: reserved.
    UnknownSystem,
    /// Not under `user.`.
    Foreign,
}

impl Name {
    /// Classifies an attribute name; EINVAL for a `user.` name S3 cannot carry.
    pub fn parse(name: &[u8]) -> Result<Name, FsError> {
        let Some(rest) = name.strip_prefix(USER.as_bytes()) else {
            return Ok(Name::Foreign);
        };
        let rest = std::str::from_utf8(rest).map_err(|_| FsError::InvalidArgument)?;
        let lower = rest.to_ascii_lowercase();
        if let Some(system) = lower.strip_prefix(SYSTEM) {
            return Ok(SYSTEM_NAMES
                .iter()
                .find(|(known, _)| *known == system)
                .map_or(Name::UnknownSystem, |(_, system)| Name::System(*system)));
        }
        if lower.is_empty() || !lower.bytes().all(is_header_name_byte) || posix::is_reserved(&lower) {
            return Err(FsError::InvalidArgument);
        }
        Ok(Name::User(lower))
    }

    /// Whether `name` (bytes from the kernel) is outside `user.`: answered without a request.
    pub fn is_foreign(name: &[u8]) -> bool {
        !name.starts_with(USER.as_bytes())
    }

    /// What reading the foreign `name` answers: `ENOTSUP` for a feature this file system does
    /// not have at all (POSIX ACLs, SELinux labels), `ENODATA` for any other. `ls -l` asks for
    /// an ACL and a label of every file it lists until a file system says once that it has no
    /// such thing (coreutils then remembers it for that file system): 2 FUSE round trips per
    /// file saved, most of what `ls -l` of a large directory cost after READDIRPLUS. What a
    /// local file system mounted without ACLs answers too.
    pub fn foreign_read_error(name: &[u8]) -> FsError {
        const ABSENT_FEATURES: [&[u8]; 3] = [
            b"system.posix_acl_access",
            b"system.posix_acl_default",
            b"security.selinux",
        ];
        if ABSENT_FEATURES.contains(&name) {
            FsError::NotSupported
        } else {
            FsError::NoAttribute
        }
    }
}

/// A byte HTTP allows in a header name (RFC 9110 `tchar`), lower-case letters only.
fn is_header_name_byte(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The stored form of an attribute value (see the module documentation).
pub fn encode_value(value: &[u8]) -> String {
    let plain = !value.is_empty()
        && value.iter().all(|&b| (0x20..0x7f).contains(&b))
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
        && !value.starts_with(b"=?");
    match std::str::from_utf8(value) {
        Ok(text) if plain => text.to_owned(),
        _ => format!(
            "{ENCODED_PREFIX}{}{ENCODED_SUFFIX}",
            aws_smithy_types::base64::encode(value)
        ),
    }
}

/// An attribute value from its stored form: an encoded word decoded (whatever wrote it), any
/// other text as it is.
pub fn decode_value(stored: &str) -> Vec<u8> {
    let encoded = stored
        .get(..ENCODED_PREFIX.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(ENCODED_PREFIX))
        .and_then(|_| stored[ENCODED_PREFIX.len()..].strip_suffix(ENCODED_SUFFIX));
    match encoded.map(aws_smithy_types::base64::decode) {
        Some(Ok(bytes)) => bytes,
        _ => stored.as_bytes().to_vec(),
    }
}

/// Whether a content header value is one S3 can carry: printable ASCII.
fn is_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
}

/// The names `listxattr` shows for an entry, each NUL-terminated.
pub fn list_names(entry: &Entry, key: &str) -> Vec<u8> {
    let mut names = Vec::new();
    let mut add = |name: &str| {
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    };
    let details = entry.details.as_deref();
    if let Some(details) = details {
        for name in details.metadata.user.keys() {
            if !posix::is_reserved(name) && !name.starts_with(SYSTEM) {
                add(&format!("{USER}{name}"));
            }
        }
    }
    for (name, system) in SYSTEM_NAMES {
        if system_value(entry, key, system).is_some() {
            add(&format!("{USER}{SYSTEM}{name}"));
        }
    }
    names
}

/// The value of a system attribute, `None` when the object has none.
fn system_value(entry: &Entry, key: &str, system: System) -> Option<String> {
    let details = entry.details.as_deref();
    let metadata = details.map(|details| &details.metadata);
    let object = entry.etag.is_some();
    match system {
        System::Key => Some(key.to_owned()),
        System::Etag => entry.etag.clone(),
        System::Size => object.then(|| entry.size.to_string()),
        System::LastModified => object.then(|| rfc3339(entry.mtime)),
        System::VersionId => details?.version_id.clone(),
        System::ChecksumCrc32c => details?.checksum_crc32c.clone(),
        System::StorageClass => object.then(|| {
            metadata
                .and_then(|m| m.storage_class.clone())
                .unwrap_or_else(|| "STANDARD".to_owned())
        }),
        System::Sse => metadata?.sse.clone(),
        System::SseKmsKeyId => metadata?.sse_kms_key_id.clone(),
        System::Header(name) => metadata?
            .headers()
            .into_iter()
            .find(|(header, _)| *header == name)
            .and_then(|(_, value)| value.map(str::to_owned)),
        System::Refresh => None,
    }
}

/// A time as RFC 3339 in UTC, to the second (what S3's Last-Modified holds).
fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A change an attribute write makes to an object's metadata.
enum Change {
    SetUser(String, String),
    RemoveUser(String),
    SetHeader(&'static str, Option<String>),
}

impl Change {
    /// Applies the change, honouring XATTR_CREATE / XATTR_REPLACE.
    fn apply(&self, metadata: &mut ObjectMetadata, flags: i32) -> Result<(), FsError> {
        let exists = match self {
            Change::SetUser(name, _) | Change::RemoveUser(name) => metadata.user.contains_key(name),
            Change::SetHeader(name, _) => metadata
                .headers()
                .iter()
                .any(|(header, value)| header == name && value.is_some()),
        };
        let removing = matches!(self, Change::RemoveUser(_) | Change::SetHeader(_, None));
        if (removing || flags & XATTR_REPLACE != 0) && !exists {
            return Err(FsError::NoAttribute);
        }
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        match self {
            Change::SetUser(name, value) => {
                metadata.user.insert(name.clone(), value.clone());
            }
            Change::RemoveUser(name) => {
                metadata.user.remove(name);
            }
            Change::SetHeader(name, value) => {
                metadata.set_header(name, value.clone());
            }
        }
        if !metadata.user_fits() {
            return Err(FsError::TooBig);
        }
        Ok(())
    }
}

impl S3Fs {
    /// getxattr(2): the value of `name`.
    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        // A name that cannot be set (a POSIX one, bad bytes) is simply not there.
        let parsed = Name::parse(name.as_bytes()).unwrap_or(Name::UnknownSystem);
        if parsed == Name::Foreign {
            return Err(Name::foreign_read_error(name.as_bytes()));
        }
        let (key, entry) = self.detailed_entry(ino).await?;
        let value = match parsed {
            Name::User(name) => entry
                .details
                .as_deref()
                .and_then(|details| details.metadata.user.get(&name))
                .map(|stored| decode_value(stored)),
            Name::System(system) => system_value(&entry, &key, system).map(String::into_bytes),
            Name::UnknownSystem | Name::Foreign => None,
        };
        value.ok_or(FsError::NoAttribute)
    }

    /// listxattr(2): every name, each NUL-terminated.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (key, entry) = self.detailed_entry(ino).await?;
        Ok(list_names(&entry, &key))
    }

    /// setxattr(2), kept in S3 (see `headers`).
    pub async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<(), FsError> {
        let change = match Name::parse(name.as_bytes())? {
            Name::User(name) => Change::SetUser(name, encode_value(value)),
            Name::System(System::Refresh) => return self.refresh(ino),
            Name::System(System::Header(header)) => {
                if !is_header_value(value) {
                    return Err(FsError::InvalidArgument);
                }
                let text = String::from_utf8_lossy(value).trim().to_owned();
                Change::SetHeader(header, Some(text))
            }
            Name::System(_) | Name::UnknownSystem => return Err(FsError::NotPermitted),
            Name::Foreign => return Err(FsError::NotSupported),
        };
        self.change_headers(ino, |metadata, _, _| change.apply(metadata, flags))
            .await
            .map(drop)
    }

    /// removexattr(2).
    pub async fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let change = match Name::parse(name.as_bytes())? {
            Name::User(name) => Change::RemoveUser(name),
            Name::System(System::Header(header)) => Change::SetHeader(header, None),
            Name::System(_) | Name::UnknownSystem => return Err(FsError::NotPermitted),
            Name::Foreign => return Err(FsError::NotSupported),
        };
        self.change_headers(ino, |metadata, _, _| change.apply(metadata, 0))
            .await
            .map(drop)
    }

    /// Forgets what is cached of the path (and makes the kernel forget it too): the next look
    /// asks S3.
    fn refresh(&self, ino: u64) -> Result<(), FsError> {
        let path = self.path_of(ino)?;
        self.metadata.forget(&path);
        if let Some(view) = lock(&self.inodes).kernel_view(ino) {
            view.attrs = None;
        }
        if let Some(kernel_cache) = self.kernel_cache.get() {
            kernel_cache.invalidate(ino);
        }
        Ok(())
    }

    /// The key and the entry at `ino` with its metadata: a HEAD when only a listing was seen.
    pub(super) async fn detailed_entry(&self, ino: u64) -> Result<(String, Entry), FsError> {
        let path = self.path_of(ino)?;
        let entry = self.resolve(&path).await?.ok_or(FsError::NotFound)?;
        // An answer a close overtook may be the old version's metadata; the caller gets it once
        // (the kernel keeps no extended attribute), as it would had it asked a moment earlier.
        let (entry, _overtaken) = self.with_details(&path, entry).await?;
        Ok((self.key_of(&path, entry.kind), entry))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fs::Kind;

    #[test]
    fn names_map_to_user_metadata_system_attributes_or_nothing() {
        assert_eq!(Name::parse(b"user.Team").unwrap(), Name::User("team".into()));
        assert_eq!(Name::parse(b"user.s3.etag").unwrap(), Name::System(System::Etag));
        assert_eq!(
            Name::parse(b"user.S3.Content_Type").unwrap(),
            Name::System(System::Header("content-type"))
        );
        assert_eq!(Name::parse(b"user.s3.nope").unwrap(), Name::UnknownSystem);
        assert_eq!(Name::parse(b"security.capability").unwrap(), Name::Foreign);
        assert!(Name::is_foreign(b"system.posix_acl_access"));
        for bad in [
            &b"user."[..],
            b"user.a b",
            b"user.caf\xc3\xa9",
            b"user.x\xff",
            b"user.a:b",
            b"user.mode",
            b"user.mtime",
        ] {
            assert!(
                matches!(Name::parse(bad), Err(FsError::InvalidArgument)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn values_round_trip_byte_for_byte() {
        assert_eq!(encode_value(b"plain value"), "plain value");
        for value in [
            &b""[..],
            b" leading",
            b"trailing ",
            b"=?looks encoded",
            "caf\u{e9} \u{1f600}".as_bytes(),
            b"\x00\x01binary\xff",
            b"new\nline",
        ] {
            let stored = encode_value(value);
            assert!(stored.starts_with(ENCODED_PREFIX), "{stored}");
            assert!(stored.bytes().all(|b| (0x21..0x7f).contains(&b)), "{stored}");
            assert_eq!(decode_value(&stored), value);
        }
        assert_eq!(
            decode_value("=?utf-8?b?aGk=?="),
            b"hi",
            "any case, as RFC 2047 allows"
        );
        assert_eq!(decode_value("=?UTF-8?B?not base64?="), b"=?UTF-8?B?not base64?=");
    }

    #[test]
    fn create_and_replace_flags_and_the_size_limit() {
        let mut metadata = ObjectMetadata::default();
        let set = |value: &str| Change::SetUser("a".into(), value.into());
        assert!(matches!(
            set("1").apply(&mut metadata, XATTR_REPLACE),
            Err(FsError::NoAttribute)
        ));
        set("1").apply(&mut metadata, XATTR_CREATE).unwrap();
        assert!(matches!(
            set("2").apply(&mut metadata, XATTR_CREATE),
            Err(FsError::Exists)
        ));
        set("2").apply(&mut metadata, XATTR_REPLACE).unwrap();
        assert_eq!(metadata.user.get("a").map(String::as_str), Some("2"));
        Change::RemoveUser("a".into()).apply(&mut metadata, 0).unwrap();
        assert!(matches!(
            Change::RemoveUser("a".into()).apply(&mut metadata, 0),
            Err(FsError::NoAttribute)
        ));
        let limit = crate::object::MAX_USER_METADATA_BYTES;
        set(&"x".repeat(limit - 1)).apply(&mut metadata, 0).unwrap();
        assert!(matches!(
            set(&"x".repeat(limit)).apply(&mut metadata, 0),
            Err(FsError::TooBig)
        ));
    }

    #[test]
    fn listing_hides_posix_and_system_named_entries() {
        let mut metadata = ObjectMetadata::with_content_type(Some("text/css".into()));
        for name in ["team", "mode", "uid", "s3.fake"] {
            metadata.user.insert(name.into(), "v".into());
        }
        let entry = Entry {
            kind: Kind::File,
            size: 3,
            mtime: std::time::UNIX_EPOCH,
            etag: Some("\"e\"".into()),
            details: Some(Arc::new(super::super::Details {
                metadata,
                version_id: Some("v1".into()),
                checksum_crc32c: None,
            })),
        };
        let listed = list_names(&entry, "dir/k");
        let names: Vec<&str> = listed
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| std::str::from_utf8(n).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "user.team",
                "user.s3.key",
                "user.s3.etag",
                "user.s3.size",
                "user.s3.last_modified",
                "user.s3.version_id",
                "user.s3.storage_class",
                "user.s3.content_type",
            ]
        );
        assert_eq!(
            system_value(&entry, "dir/k", System::LastModified).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
    }
}
