//! `fuse_floor MOUNTPOINT SIZE_BYTES`: the least CPU a FUSE daemon can spend serving a read, the
//! floor under `scripts/bench`'s cold-read CPU figure. It mounts a read-only file system of one
//! file, `data`, SIZE_BYTES long, and answers every read from one buffer in memory, on the
//! session's own thread: no S3, no cache, no hand-off. What it spends per GiB `dd` reads is what
//! any FUSE mount pays (reading each request from /dev/fuse, the kernel's copy of the reply into
//! the page cache, the switches between the two), with the kernel settings s3mount makes: 1 MiB
//! reads and read-ahead. It runs until unmounted (`fusermount3 -u MOUNTPOINT`).
//!
//! `fuse_floor MOUNTPOINT SIZE_BYTES CACHE_FILE`: the floor of a FUSE daemon with a disk block
//! cache, which the mission asks for: each read's bytes are also written once to CACHE_FILE at
//! their offset, with O_DIRECT from an aligned buffer (the cheapest way to put bytes on disk: one
//! file, no checksum, no index, no hand-off to another thread).

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
    /// anywhere in the first MiB is one slice of it; from `block_start`, a 4 KiB-aligned address.
    block: Vec<u8>,
    block_start: usize,
    /// Where each read's bytes are written too, if anywhere: opened with O_DIRECT, and without
    /// (for a read that is not whole sectors).
    cache: Option<(std::fs::File, std::fs::File)>,
}

const SECTOR: usize = 4096;

impl Floor {
    /// Writes what a read answered to the cache file, as a disk block cache must.
    fn write_to_cache(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let Some((direct, buffered)) = &self.cache else {
            return;
        };
        let whole_sectors = data.as_ptr().align_offset(SECTOR) == 0 && data.len().is_multiple_of(SECTOR);
        let file = if whole_sectors && offset.is_multiple_of(SECTOR as u64) {
            direct
        } else {
            buffered
        };
        if let Err(error) = file.write_all_at(data, offset) {
            eprintln!("fuse_floor: writing the cache file: {error}");
        }
    }
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
        let start = self.block_start + (offset % u64::from(MAX_IO)) as usize;
        let data = &self.block[start..start + len];
        reply.data(data);
        self.write_to_cache(offset, data);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mount_point, size, cache_file) = match args.as_slice() {
        [mount_point, size] => (mount_point, size, None),
        [mount_point, size, cache_file] => (mount_point, size, Some(cache_file)),
        _ => {
            eprintln!("usage: fuse_floor MOUNTPOINT SIZE_BYTES [CACHE_FILE]");
            std::process::exit(2);
        }
    };
    let Ok(size) = size.parse::<u64>() else {
        eprintln!("fuse_floor: SIZE_BYTES must be a whole number, not {size:?}");
        std::process::exit(2);
    };
    let cache = cache_file.map(|path| {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(flags)
                .open(path)
                .unwrap_or_else(|error| {
                    eprintln!("fuse_floor: cannot open {path}: {error}");
                    std::process::exit(1);
                })
        };
        (open(libc::O_DIRECT), open(0))
    });
    let mut block: Vec<u8> = Vec::with_capacity(2 * MAX_IO as usize + SECTOR);
    let block_start = block.as_ptr().align_offset(SECTOR).min(SECTOR);
    block.resize(block_start, 0);
    block.extend((0..2 * MAX_IO as usize).map(|i| (i % 251) as u8));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("fuse_floor".to_owned()),
        MountOption::NoAtime,
    ];
    let mount_point = PathBuf::from(mount_point);
    let session = match Session::new(
        Floor {
            size,
            block,
            block_start,
            cache,
        },
        &mount_point,
        &config,
    ) {
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
