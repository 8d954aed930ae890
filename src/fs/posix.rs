//! POSIX attributes kept in an object's user metadata, as s3fs-fuse, geesefs and rclone keep
//! them: `x-amz-meta-mode` (decimal `st_mode`, type bits included), `-uid`, `-gid`, `-mtime` and
//! `-atime` (seconds, `.nnnnnnnnn` when there are nanoseconds), and symlinks as s3fs stores them
//! (the body is the target, the mode `S_IFLNK|0777`) or as geesefs does (the target in
//! `x-amz-meta---symlink-target`).
//!
//! Reading is lenient, because other tools wrote these buckets: integers in any base C's
//! `strtoul(s, 0)` reads (`0x1a4`, `0644` octal, `420`), times with any number of fractional
//! digits; a value that does not parse is ignored (the mount's default shows), never an error.
//! Writing is what s3fs writes. Pure functions: no I/O, no locks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::object::metadata::posix_headers;

/// geesefs keeps a symlink's target in this header (the body is empty).
pub const GEESEFS_SYMLINK_TARGET: &str = "--symlink-target";
/// s3fs writes the change time too; we read nothing from it, and keep it out of `user.*`.
const S3FS_CTIME: &str = "ctime";

/// `S_IFMT` and the file types.
const S_IFMT: u32 = libc::S_IFMT;
pub const S_IFREG: u32 = libc::S_IFREG;
pub const S_IFDIR: u32 = libc::S_IFDIR;
pub const S_IFLNK: u32 = libc::S_IFLNK;

/// What an object's metadata says of its POSIX attributes; `None` where it says nothing (or
/// nothing readable), and the mount's default applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Posix {
    /// The whole `st_mode`, type bits included when the writer gave them.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

impl Posix {
    /// Reads the attributes from user metadata (names lower-case, as S3 returns them).
    pub fn from_user(user: &BTreeMap<String, String>) -> Self {
        let int = |name: &str| user.get(name).and_then(|value| parse_int(value));
        let time = |name: &str| user.get(name).and_then(|value| parse_time(value));
        Self {
            mode: int(posix_headers::MODE).and_then(|mode| u32::try_from(mode).ok()),
            uid: int(posix_headers::UID).and_then(|uid| u32::try_from(uid).ok()),
            gid: int(posix_headers::GID).and_then(|gid| u32::try_from(gid).ok()),
            mtime: time(posix_headers::MTIME),
            atime: time(posix_headers::ATIME),
        }
    }

    /// The permission bits (with setuid, setgid, sticky), if the mode was given.
    pub fn perm(&self) -> Option<u16> {
        self.mode.map(|mode| (mode & 0o7777) as u16)
    }

    /// Whether the mode says symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|mode| mode & S_IFMT == S_IFLNK)
    }
}

/// Whether user metadata names a symlink: s3fs's mode, or geesefs's target header.
pub fn is_symlink(user: &BTreeMap<String, String>) -> bool {
    user.contains_key(GEESEFS_SYMLINK_TARGET) || Posix::from_user(user).is_symlink()
}

/// Whether a user metadata name holds a POSIX attribute (or another tool's bookkeeping of one),
/// so it is not shown as a user extended attribute.
pub fn is_reserved(name: &str) -> bool {
    posix_headers::ALL.contains(&name) || name == GEESEFS_SYMLINK_TARGET || name == S3FS_CTIME
}

/// Sets `mode` (type bits included) in user metadata.
pub fn set_mode(user: &mut BTreeMap<String, String>, mode: u32) {
    user.insert(posix_headers::MODE.to_owned(), mode.to_string());
}

pub fn set_owner(user: &mut BTreeMap<String, String>, uid: Option<u32>, gid: Option<u32>) {
    if let Some(uid) = uid {
        user.insert(posix_headers::UID.to_owned(), uid.to_string());
    }
    if let Some(gid) = gid {
        user.insert(posix_headers::GID.to_owned(), gid.to_string());
    }
}

pub fn set_time(user: &mut BTreeMap<String, String>, name: &'static str, time: SystemTime) {
    user.insert(name.to_owned(), format_time(time));
}

/// An integer as `strtoul(value, NULL, 0)` reads it: `0x`/`0X` hexadecimal, a leading `0`
/// octal, else decimal; surrounding blanks allowed, nothing else.
pub fn parse_int(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, radix) = if let Some(hex) = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        (hex, 16)
    } else if value.len() > 1 && value.starts_with('0') {
        (&value[1..], 8)
    } else {
        (value, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Seconds since the epoch, with an optional fraction of any length (rclone writes floats, s3fs
/// nine digits). Negative or unreadable times are `None`.
pub fn parse_time(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (seconds, fraction) = value.split_once('.').unwrap_or((value, ""));
    if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: u64 = seconds.parse().ok()?;
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |nanos, digit| nanos * 10 + u32::from(digit - b'0'));
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// `seconds`, or `seconds.nnnnnnnnn` when there are nanoseconds; a time before the epoch is
/// written as the epoch (no tool reads negative times).
pub fn format_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    match since.subsec_nanos() {
        0 => since.as_secs().to_string(),
        nanos => format!("{}.{nanos:09}", since.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn integers_read_in_any_base_c_reads() {
        assert_eq!(parse_int("33188"), Some(33188));
        assert_eq!(parse_int("0100644"), Some(0o100644), "rclone's octal");
        assert_eq!(parse_int("0x81a4"), Some(0x81a4));
        assert_eq!(parse_int(" 420 "), Some(420));
        assert_eq!(parse_int("0"), Some(0));
        for bad in [
            "",
            "0x",
            "08",
            "12a",
            "-1",
            "1e3",
            "+5",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_read_with_any_fraction_and_write_as_s3fs_does() {
        let at = |secs, nanos| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(parse_time("1600000000"), Some(at(1_600_000_000, 0)));
        assert_eq!(parse_time("1600000000.5"), Some(at(1_600_000_000, 500_000_000)));
        assert_eq!(
            parse_time("1600000000.123456789123"),
            Some(at(1_600_000_000, 123_456_789))
        );
        assert_eq!(parse_time("1600000000."), Some(at(1_600_000_000, 0)));
        for bad in ["", "-5", "abc", "1.2.3", "1e9", ".5"] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
        assert_eq!(format_time(at(1_600_000_000, 0)), "1600000000");
        assert_eq!(format_time(at(1_600_000_000, 42)), "1600000000.000000042");
        let odd = at(1_234_567_890, 987_654_321);
        assert_eq!(parse_time(&format_time(odd)), Some(odd));
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(5)), "0");
    }

    #[test]
    fn attributes_come_from_s3fs_headers_and_bad_ones_are_ignored() {
        let posix = Posix::from_user(&user(&[
            ("mode", "33261"),
            ("uid", "1000"),
            ("gid", "0x3e8"),
            ("mtime", "1600000000.25"),
            ("atime", "garbage"),
        ]));
        assert_eq!(posix.mode, Some(S_IFREG | 0o755));
        assert_eq!(posix.perm(), Some(0o755));
        assert_eq!((posix.uid, posix.gid), (Some(1000), Some(1000)));
        assert_eq!(
            posix.mtime,
            Some(UNIX_EPOCH + Duration::new(1_600_000_000, 250_000_000))
        );
        assert_eq!(posix.atime, None);
        let huge = Posix::from_user(&user(&[("uid", "4294967296"), ("mode", "")]));
        assert_eq!((huge.uid, huge.mode), (None, None));
    }

    #[test]
    fn symlinks_of_s3fs_and_geesefs_are_recognised() {
        assert!(is_symlink(&user(&[("mode", "41471")])), "s3fs: S_IFLNK|0777");
        assert!(is_symlink(&user(&[("--symlink-target", "a/b")])), "geesefs");
        assert!(!is_symlink(&user(&[("mode", "33188")])));
        assert!(!is_symlink(&user(&[])));
    }

    #[test]
    fn reserved_names_are_the_posix_ones() {
        for name in [
            "mode",
            "uid",
            "gid",
            "mtime",
            "atime",
            "ctime",
            "--symlink-target",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        assert!(!is_reserved("team"));
        let mut user = BTreeMap::new();
        set_mode(&mut user, S_IFREG | 0o600);
        set_owner(&mut user, Some(7), None);
        set_time(&mut user, posix_headers::MTIME, UNIX_EPOCH + Duration::new(3, 4));
        assert_eq!(user.get("mode").map(String::as_str), Some("33152"));
        assert_eq!(user.get("uid").map(String::as_str), Some("7"));
        assert!(!user.contains_key("gid"));
        assert_eq!(user.get("mtime").map(String::as_str), Some("3.000000004"));
    }
}
