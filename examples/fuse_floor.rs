//! `fuse_floor MOUNTPOINT SIZE_BYTES`: the least CPU a FUSE daemon can spend serving a read, the
//! floor under `scripts/bench`'s cold-read CPU figure. It mounts a read-only file system of one
//! file, `data`, SIZE_BYTES long, and answers every read from one buffer in memory, on the
//! session's own thread: no S3, no cache, no hand-off. What it spends per GiB `dd` reads is what
//! any FUSE mount pays (reading each request from /dev/fuse, the kernel's copy of the reply into
//! the page cache, the switches between the two), with the kernel settings s3mount makes: 1 MiB
//! reads and read-ahead. It runs until unmounted (`fusermount3 -u MOUNTPOINT`).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request, Session,
};

/// The largest read the kernel sends, and its read-ahead: s3mount's (src/fuse.rs).
const MAX_IO: u32 = 1 << 20;
const DATA_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(3600);

struct Floor {
    size: u64,
    /// What every read answers with: two reads' worth, so that a read of up to 1 MiB starting
    /// anywhere in the first MiB is one slice of it.
    block: Vec<u8>,
}

impl Floor {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, size, perm, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0, 0o755, 2),
            _ => (FileType::RegularFile, self.size, 0o444, 1),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: MAX_IO,
            flags: 0,
        }
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (parent, name.to_str()) {
            (INodeNo::ROOT, Some("data")) => reply.entry(&TTL, &self.attr(DATA_INO), Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT | DATA_INO => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = (size as u64).min(self.size.saturating_sub(offset)) as usize;
        let start = (offset % u64::from(MAX_IO)) as usize;
        reply.data(&self.block[start..start + len]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mount_point, size] = args.as_slice() else {
        eprintln!("usage: fuse_floor MOUNTPOINT SIZE_BYTES");
        std::process::exit(2);
    };
    let Ok(size) = size.parse::<u64>() else {
        eprintln!("fuse_floor: SIZE_BYTES must be a whole number, not {size:?}");
        std::process::exit(2);
    };
    let block: Vec<u8> = (0..2 * MAX_IO as usize).map(|i| (i % 251) as u8).collect();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("fuse_floor".to_owned()),
        MountOption::NoAtime,
    ];
    let mount_point = PathBuf::from(mount_point);
    let session = match Session::new(Floor { size, block }, &mount_point, &config) {
        Ok(session) => session,
        Err(error) => {
            eprintln!("fuse_floor: cannot mount on {}: {error}", mount_point.display());
            std::process::exit(1);
        }
    };
    s3mount::run::widen_kernel_read_ahead(&mount_point);
    if let Err(error) = session.run() {
        eprintln!("fuse_floor: {error}");
        std::process::exit(1);
    }
}
