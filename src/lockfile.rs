//! An exclusive lock on a directory: its `lock` file, held with flock for the life of the
//! process and holding our pid, so two s3mount processes never share one block cache or one
//! staging area, and the refusal can say who holds it. Callers decide what the lock protects.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; `holder` is " (pid N)" when its pid could be read, else empty.
    Held {
        holder: String,
    },
    Io(io::Error),
}

/// Takes `dir/lock` exclusively without waiting, and writes our pid in it.
pub fn lock_dir(dir: &Path) -> Result<Flock<File>, LockError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(LockError::Io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(LockError::Io)?;
            writeln!(lock, "{}", std::process::id()).map_err(LockError::Io)?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(&path)
                .ok()
                .filter(|pid| !pid.trim().is_empty())
                .map(|pid| format!(" (pid {})", pid.trim()))
                .unwrap_or_default();
            Err(LockError::Held { holder })
        }
        Err((_, errno)) => Err(LockError::Io(io::Error::from(errno))),
    }
}
