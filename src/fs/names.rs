//! Key <-> path rules: which S3 keys can be file-system names, and how paths map back to keys.
//!
//! A path here is relative to the mount root, components joined by `/`, the root being `""`.
//! The mount root itself is a key prefix (`""` for a whole bucket, `datasets/imagenet/` for a
//! prefix). This module owns those rules and nothing else: no I/O, no caching, no inodes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Linux NAME_MAX: the longest component `open(2)` accepts, so a longer one could never be used.
pub const NAME_MAX: usize = 255;

/// S3's longest key, in bytes of its UTF-8 form: a path whose key (or a directory's marker key,
/// one byte longer) would be longer can never exist, and is ENAMETOOLONG at once rather than a
/// request the server refuses.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key component cannot be a file-system name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty component (a '//' in the key)")]
    Empty,
    #[error("'.' or '..' component")]
    Dot,
    #[error("component longer than {NAME_MAX} bytes")]
    TooLong,
    #[error("component contains a NUL byte or a '/'")]
    ForbiddenByte,
    #[error("the key would be longer than S3's {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("component is not valid UTF-8")]
    NotUtf8,
}

/// Checks that `name` can be one path component; returns it as `&str`.
pub fn check_component(name: &[u8]) -> Result<&str, NameError> {
    match name {
        [] => return Err(NameError::Empty),
        b"." | b".." => return Err(NameError::Dot),
        _ => {}
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|&b| b == 0 || b == b'/') {
        return Err(NameError::ForbiddenByte);
    }
    std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)
}

/// A name the kernel handed us (lookup), checked.
pub fn check_os_name(name: &OsStr) -> Result<&str, NameError> {
    check_component(name.as_bytes())
}

/// `parent/name`, or `name` under the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Checks that the keys of `path` (its object and its directory marker) fit in S3.
pub fn check_key_len(root: &RootPrefix, path: &str) -> Result<(), NameError> {
    if root.dir_prefix(path).len() > MAX_KEY_BYTES {
        return Err(NameError::KeyTooLong);
    }
    Ok(())
}

/// The key prefix every object of the mount lives under, normalised: empty, or ending in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPrefix(String);

impl RootPrefix {
    /// Validates a user-given prefix (`datasets/imagenet`, `datasets/imagenet/`, `/x/`): every
    /// component must be a valid name, so the root itself is reachable.
    pub fn new(prefix: &str) -> Result<Self, NameError> {
        let trimmed = prefix.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Self(String::new()));
        }
        for component in trimmed.split('/') {
            check_component(component.as_bytes())?;
        }
        Ok(Self(format!("{trimmed}/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the file at `path`.
    pub fn file_key(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    /// The listing prefix of the directory at `path` (`""` lists the root).
    pub fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.0.clone()
        } else {
            format!("{}{path}/", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_past_s3s_limit_are_too_long_counting_the_prefix_and_the_marker() {
        let root = RootPrefix::new("data/set").unwrap();
        let room = MAX_KEY_BYTES - "data/set/".len() - 1;
        let fits = "a/".repeat(room / 2) + &"b".repeat(room % 2);
        assert_eq!(check_key_len(&root, &fits), Ok(()));
        assert_eq!(
            check_key_len(&root, &format!("{fits}c")),
            Err(NameError::KeyTooLong)
        );
        let whole = RootPrefix::new("").unwrap();
        assert_eq!(check_key_len(&whole, &"x".repeat(MAX_KEY_BYTES - 1)), Ok(()));
        assert_eq!(
            check_key_len(&whole, &"x".repeat(MAX_KEY_BYTES)),
            Err(NameError::KeyTooLong)
        );
    }

    #[test]
    fn components() {
        assert_eq!(check_component(b"john.txt"), Ok("john.txt"));
        assert_eq!(check_component(b"..."), Ok("..."));
        assert_eq!(check_component(b""), Err(NameError::Empty));
        assert_eq!(check_component(b"."), Err(NameError::Dot));
        assert_eq!(check_component(b".."), Err(NameError::Dot));
        assert_eq!(check_component(&[b'x'; 255]).map(str::len), Ok(255));
        assert_eq!(check_component(&[b'x'; 256]), Err(NameError::TooLong));
        assert_eq!(check_component(b"a\0b"), Err(NameError::ForbiddenByte));
        assert_eq!(check_component(b"a/b"), Err(NameError::ForbiddenByte));
        assert_eq!(check_component(&[0xff, 0xfe]), Err(NameError::NotUtf8));
    }

    #[test]
    fn prefixes() {
        assert_eq!(RootPrefix::new("").unwrap().as_str(), "");
        assert_eq!(RootPrefix::new("/").unwrap().as_str(), "");
        assert_eq!(
            RootPrefix::new("datasets/imagenet").unwrap().as_str(),
            "datasets/imagenet/"
        );
        assert_eq!(
            RootPrefix::new("/datasets/imagenet/").unwrap().as_str(),
            "datasets/imagenet/"
        );
        assert_eq!(RootPrefix::new("a//b"), Err(NameError::Empty));
        assert_eq!(RootPrefix::new("a/../b"), Err(NameError::Dot));
        let root = RootPrefix::new("p").unwrap();
        assert_eq!(root.file_key("a/b"), "p/a/b");
        assert_eq!(root.dir_prefix(""), "p/");
        assert_eq!(root.dir_prefix("a"), "p/a/");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
    }
}
