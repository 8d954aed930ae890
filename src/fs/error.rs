//! Every error the file system can return, and the one place each becomes an errno.
//!
//! The match in [`FsError::errno`] is exhaustive on purpose, with no catch-all arm: a new error
//! variant (here or in `ObjectError`) does not compile until someone decides its errno.

use crate::object::ObjectError;
use crate::upload::UploadError;
use crate::writeback::WriteError;

use super::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    /// A mutating operation on a read-only mount (or one this version does not support yet).
    #[error("read-only file system")]
    ReadOnly,
    /// The kernel named an inode or handle we do not know (forgotten, or never handed out).
    #[error("unknown inode or file handle")]
    BadHandle,
    /// The file an inode named was replaced (a rename over it) while the request waited for
    /// that rename: ESTALE, on which the kernel looks the name up again and retries an open.
    #[error("the file was replaced meanwhile")]
    Stale,
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    #[error("operation not supported")]
    NotSupported,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    /// A directory rename too large to do key by key: `mv` falls back to copying.
    #[error("too many keys to rename")]
    CrossDevice,
    #[error("invalid argument")]
    InvalidArgument,
    /// An extended attribute the file does not have.
    #[error("no such attribute")]
    NoAttribute,
    /// An attribute or metadata past S3's limits (2 KiB of user metadata).
    #[error("argument list too long")]
    TooBig,
    /// What S3 cannot hold (hard links, device nodes), or a read-only attribute.
    #[error("operation not permitted")]
    NotPermitted,
    /// The caller may not do this (a permission check the file system makes itself).
    #[error("permission denied")]
    AccessDenied,
    /// A reply buffer smaller than the value.
    #[error("result too large for the buffer")]
    OutOfRange,
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl FsError {
    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Stale => libc::ESTALE,
            FsError::InvalidName(NameError::TooLong | NameError::KeyTooLong) => libc::ENAMETOOLONG,
            // Such a name can never exist in the bucket as we show it.
            FsError::InvalidName(
                NameError::Empty | NameError::Dot | NameError::ForbiddenByte | NameError::NotUtf8,
            ) => libc::ENOENT,
            FsError::NotSupported => libc::ENOTSUP,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::CrossDevice => libc::EXDEV,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::NoAttribute => libc::ENODATA,
            FsError::TooBig => libc::E2BIG,
            FsError::NotPermitted => libc::EPERM,
            FsError::AccessDenied => libc::EACCES,
            FsError::OutOfRange => libc::ERANGE,
            FsError::Object(error) => object_errno(error),
            FsError::Write(error) => write_errno(error),
        }
    }
}

fn write_errno(error: &WriteError) -> i32 {
    match error {
        // The disk's own errno: ENOSPC above all, which tells the writer the truth.
        WriteError::Staging(io) | WriteError::Upload(UploadError::Staging(io)) => {
            io.raw_os_error().unwrap_or(libc::EIO)
        }
        WriteError::Object(error) | WriteError::Upload(UploadError::Object(error)) => object_errno(error),
        WriteError::TooLarge(_) | WriteError::Upload(UploadError::TooLarge { .. }) => libc::EFBIG,
    }
}

fn object_errno(error: &ObjectError) -> i32 {
    match error {
        ObjectError::NoSuchKey(_) => libc::ENOENT,
        // The bucket vanished under a live mount: nothing the caller can fix by retrying a path.
        ObjectError::NoSuchBucket(_) => libc::EIO,
        ObjectError::AccessDenied(_) => libc::EACCES,
        // The object was replaced while open: never mix two versions, like NFS after a replace.
        ObjectError::PreconditionFailed(_) => libc::ESTALE,
        ObjectError::InvalidRange(_) => libc::EIO,
        // What was still failing once the retries gave up (see object::retry).
        ObjectError::Unreachable(_) => libc::EIO,
        ObjectError::Transient { .. } => libc::EIO,
        // Says what happened: `cat: f: Connection timed out`, not a vague I/O error.
        ObjectError::TimedOut(_) => libc::ETIMEDOUT,
        ObjectError::Service { .. } => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos() {
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(FsError::Stale.errno(), libc::ESTALE);
        assert_eq!(FsError::from(NameError::TooLong).errno(), libc::ENAMETOOLONG);
        assert_eq!(
            FsError::from(ObjectError::PreconditionFailed("k".into())).errno(),
            libc::ESTALE
        );
        assert_eq!(
            FsError::from(ObjectError::AccessDenied("k".into())).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::from(ObjectError::Unreachable("x".into())).errno(),
            libc::EIO
        );
        assert_eq!(
            FsError::from(ObjectError::TimedOut("x".into())).errno(),
            libc::ETIMEDOUT
        );
        let throttled = ObjectError::Transient {
            code: "SlowDown".into(),
            message: "m".into(),
        };
        assert_eq!(FsError::from(throttled).errno(), libc::EIO);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from(WriteError::Staging(full)).errno(), libc::ENOSPC);
        assert_eq!(FsError::from(WriteError::TooLarge(1)).errno(), libc::EFBIG);
    }
}
