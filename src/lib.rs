//! s3mount: mount an S3 bucket (or a prefix of one) as a POSIX-style file system over FUSE.
//!
//! Data flows one way: `fuse` (thin adapter over fuser) -> `fs` (namespace, inodes, handles,
//! attributes; free of fuser types) -> `object` (the `ObjectClient` trait: the AWS SDK client in
//! production, the in-memory client in tests). Reads go `fs` -> `prefetch` (read-ahead per open
//! file) -> `cache` (disk blocks, single flight) -> `object`. `cli` and `run` turn arguments into a live mount;
//! `logging` says where the daemon's logs go.

pub mod cache;
pub mod cli;
pub mod fs;
pub mod fuse;
pub mod logging;
pub mod object;
pub mod prefetch;
pub mod run;
pub mod upload;
