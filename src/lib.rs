//! s3mount: mount an S3 bucket (or a prefix of one) as a POSIX-style file system over FUSE.
//!
//! Data flows one way: `fuse` (thin adapter over fuser) -> `fs` (namespace, inodes, handles,
//! attributes; free of fuser types) -> `object` (the `ObjectClient` trait: the AWS SDK client in
//! production, the in-memory client in tests). Reads go `fs` -> `prefetch` (read-ahead per open
//! file) -> `cache` (disk blocks, single flight) -> `object`. Writes go `fs` -> `writeback` (a
//! staged file per file written, in `staging` on local disk) -> `upload` -> `object`. `cli` and
//! `run` turn arguments into a live mount; `logging` says where the daemon's logs go.

pub mod cache;
pub mod checksum;
pub mod cli;
pub mod control;
pub mod env_file;
pub mod fs;
pub mod fstab;
pub mod fuse;
pub mod lockfile;
pub mod logging;
pub mod metrics;
pub mod object;
pub mod prefetch;
pub mod run;
pub mod staging;
pub mod upload;
pub mod warm;
pub mod writeback;

/// Locks a std mutex, recovering from poisoning: the data behind the crate's std mutexes stays
/// consistent at every step (each critical section is short and await-free), and a panic in
/// one request or test must not take every later one down with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
mod test_support {
    /// Deterministic, position-dependent bytes: a misplaced or repeated block shows.
    pub fn pattern(len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }
}
