//! The FUSE adapter: `impl fuser::Filesystem` over [`S3Fs`], one short function per operation.
//!
//! Every request that may touch the network is handed to the tokio runtime and answered from
//! its task, so a slow GET never blocks a `stat` or another read; a read whose bytes the
//! read-ahead already holds is answered at once on the session's thread, without that
//! hand-over (two thread switches per request on a cold sequential read). This module only
//! converts between fuser types and the file system's; it holds no state and makes no decision
//! of its own beyond which operations S3 cannot do at all (hard links, device nodes) and which
//! attribute namespaces do not exist here (answered at once, without a request).

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, Notifier,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::xattr::Name;
use crate::fs::{Attr, AttrChange, Creator, FsError, KernelCache, Kind, Opened, S3Fs};
use crate::metrics;

pub struct FuseAdapter {
    fs: Arc<S3Fs>,
    runtime: Handle,
    /// Kernel entry and attribute TTL: the same as the file system's metadata TTL.
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(fs: Arc<S3Fs>, runtime: Handle) -> Self {
        let ttl = fs.config().metadata_ttl;
        Self { fs, runtime, ttl }
    }

    /// Runs `work` on the runtime and answers with its result; counts and times the request
    /// `op` on inode `ino`, and logs its failure once (see [`log_failure`]).
    fn serve<T, R, F>(&self, reply: R, op: &'static str, ino: u64, work: impl FnOnce(Arc<S3Fs>) -> F)
    where
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: Respond<T> + Send + 'static,
        T: Send + 'static,
    {
        let fs = self.fs.clone();
        let future = work(self.fs.clone());
        let ttl = self.ttl;
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            match future.await {
                Ok(value) => {
                    metrics::fuse_request(op, 0, started.elapsed());
                    reply.respond(value, ttl);
                }
                Err(error) => reply.fail(failed(&fs, op, ino, started, &error)),
            }
        });
    }
}

/// Counts, times and logs a request that failed; the errno to answer with.
fn failed(fs: &S3Fs, op: &'static str, ino: u64, started: std::time::Instant, error: &FsError) -> Errno {
    let errno = error.errno();
    metrics::fuse_request(op, errno, started.elapsed());
    log_failure(fs, op, ino, errno, error);
    Errno::from_i32(errno)
}

/// Logs a failed request once, at the level its errno deserves, with the path it was about
/// (never data; error texts carry keys and S3 request ids, never credentials), and keeps the
/// failures worth attention for `s3mount status`.
fn log_failure(fs: &S3Fs, op: &'static str, ino: u64, errno: i32, error: &FsError) {
    let path = fs.path_for_log(ino);
    let errno_name = metrics::errno_name(errno);
    // A file a rename replaced while the request waited: the kernel looks it up again and
    // retries, so nothing failed that anyone sees.
    let severity = match error {
        FsError::Stale => tracing::Level::DEBUG,
        _ => metrics::errno_severity(errno),
    };
    match severity {
        tracing::Level::DEBUG => {
            tracing::debug!(op, path = %path, errno = errno_name, %error, "request failed")
        }
        tracing::Level::INFO => {
            tracing::info!(op, path = %path, errno = errno_name, %error, "request refused")
        }
        _ => {
            tracing::warn!(op, path = %path, errno = errno_name, %error, "request failed");
            metrics::remember_error(op, &path, &format!("{errno_name}: {error}"));
        }
    }
}

/// A fuser reply that can carry a `T`.
trait Respond<T> {
    fn respond(self, value: T, ttl: Duration);
    fn fail(self, errno: Errno);
}

impl Respond<Attr> for ReplyEntry {
    fn respond(self, attr: Attr, ttl: Duration) {
        self.entry(&ttl, &file_attr(&attr), Generation(0));
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<Attr> for ReplyAttr {
    fn respond(self, attr: Attr, ttl: Duration) {
        self.attr(&ttl, &file_attr(&attr));
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<u64> for ReplyOpen {
    fn respond(self, handle: u64, _: Duration) {
        self.opened(FileHandle(handle), FopenFlags::empty());
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<Opened> for ReplyOpen {
    fn respond(self, opened: Opened, _: Duration) {
        self.opened(FileHandle(opened.handle), open_flags(&opened));
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<(Attr, Opened)> for ReplyCreate {
    fn respond(self, (attr, opened): (Attr, Opened), ttl: Duration) {
        self.created(
            &ttl,
            &file_attr(&attr),
            Generation(0),
            FileHandle(opened.handle),
            open_flags(&opened),
        );
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<u32> for ReplyWrite {
    fn respond(self, written: u32, _: Duration) {
        self.written(written);
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<Bytes> for ReplyData {
    fn respond(self, data: Bytes, _: Duration) {
        self.data(&data);
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

impl Respond<()> for ReplyEmpty {
    fn respond(self, _: (), _: Duration) {
        self.ok();
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

/// An attribute value or name list, for a buffer of `size` bytes (0: the caller asks the size).
struct XattrReply {
    reply: fuser::ReplyXattr,
    size: u32,
}

impl Respond<Vec<u8>> for XattrReply {
    fn respond(self, value: Vec<u8>, _: Duration) {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        if self.size == 0 {
            self.reply.size(len);
        } else if len > self.size {
            self.reply.error(Errno::ERANGE);
        } else {
            self.reply.data(&value);
        }
    }
    fn fail(self, errno: Errno) {
        self.reply.error(errno);
    }
}

impl Respond<()> for ReplyDirectory {
    fn respond(self, _: (), _: Duration) {
        self.ok();
    }
    fn fail(self, errno: Errno) {
        self.error(errno);
    }
}

fn open_flags(opened: &Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: attr.blksize,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// The creator of a new node: the caller, and the mode it asked for with its umask applied.
fn creator(req: &Request, mode: u32, umask: u32) -> Option<Creator> {
    Some(Creator {
        uid: req.uid(),
        gid: req.gid(),
        perm: mode & !umask & 0o7777,
    })
}

fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// The largest read and write the kernel sends in one request, and its read-ahead: 1 MiB, one
/// cache block, so a sequential reader costs a request per block rather than per 128 KiB.
const MAX_IO: u32 = 1 << 20;

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Each setter answers the nearest value the kernel allows when ours is too large.
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        // O_TRUNC arrives with the open instead of as a separate truncate to 0 after it, which
        // would upload an empty object at once (and leave it so if the writer then dies).
        if config
            .add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::warn!(
                "the kernel cannot pass O_TRUNC with open: a truncating open empties the object at once"
            );
        }
        // READDIRPLUS: a directory's entries come with their attributes, so `ls -l` needs no
        // LOOKUP per name. AUTO lets the kernel use it for a directory's first reply and then
        // only where lookups follow (all of `ls -l`, not the rest of a `find`), which spares a
        // bare listing most of the inodes it would create.
        if self.fs.wants_readdirplus()
            && config
                .add_capabilities(
                    fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
                )
                .is_err()
        {
            tracing::debug!("the kernel has no READDIRPLUS: each listed name is looked up on its own");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.serve(reply, "lookup", parent.0, |fs| async move {
            fs.lookup(parent.0, &name).await
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(reply, "getattr", ino.0, |fs| async move {
            match fh {
                Some(fh) => fs.getattr_handle(ino.0, fh.0).await,
                None => fs.getattr(ino.0).await,
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opener = process_of(req.pid());
        self.serve(reply, "open", ino.0, |fs| async move {
            fs.open_as(ino.0, flags.0, opener).await
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Bytes the read-ahead has already brought are answered here, on the session's thread.
        let started = std::time::Instant::now();
        let ready = {
            let _runtime = self.runtime.enter();
            // A panic here would end the session's thread, and the mount with it: the read goes
            // the usual way instead, where a panic fails only itself.
            let attempt = std::panic::AssertUnwindSafe(|| self.fs.try_read_now(fh.0, offset, size));
            std::panic::catch_unwind(attempt).unwrap_or_else(|_| {
                tracing::error!(
                    ino = ino.0,
                    offset,
                    "a read answered on the session's thread panicked"
                );
                None
            })
        };
        if let Some(data) = ready {
            metrics::bytes_to_reader(data.len() as u64);
            metrics::fuse_request("read", 0, started.elapsed());
            reply.data(&data);
            return;
        }
        self.serve(reply, "read", ino.0, |fs| async move {
            let data = fs.read(fh.0, offset, size).await?;
            metrics::bytes_to_reader(data.len() as u64);
            Ok(data)
        });
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        let caller = process_of(req.pid());
        self.serve(reply, "flush", ino.0, |fs| async move {
            fs.flush_from(fh.0, caller).await
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(reply, "release", ino.0, |fs| async move {
            fs.release(fh.0).await;
            Ok(())
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.serve(reply, "fsync", ino.0, |fs| async move { fs.fsync(fh.0).await });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(
            reply,
            "opendir",
            ino.0,
            |fs| async move { fs.opendir(ino.0).await },
        );
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        let fs = self.fs.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let mut reply = reply;
            let mut add =
                |e: crate::fs::DirEntry| reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), &e.name);
            match fs.readdir(ino.0, fh.0, offset, &mut add).await {
                Ok(()) => {
                    metrics::fuse_request("readdir", 0, started.elapsed());
                    reply.ok();
                }
                Err(error) => reply.error(failed(&fs, "readdir", ino.0, started, &error)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        let ttl = self.ttl;
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let mut reply = reply;
            let mut add = |e: &crate::fs::DirEntry, attr: &Attr, lasting: bool| {
                // An entry the kernel may not keep is checked again at its next use.
                let ttl = if lasting { ttl } else { Duration::ZERO };
                reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    &e.name,
                    &ttl,
                    &file_attr(attr),
                    Generation(0),
                )
            };
            match fs.readdirplus(ino.0, fh.0, offset, &mut add).await {
                Ok(()) => {
                    metrics::fuse_request("readdirplus", 0, started.elapsed());
                    reply.ok();
                }
                Err(error) => reply.error(failed(&fs, "readdirplus", ino.0, started, &error)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }

    // Extended attributes: only `user.` exists. The kernel asks for `security.capability` on
    // writes and `ls` for ACLs and SELinux labels: answered here, with no request to S3 (see
    // `Name::foreign_read_error`).

    fn getxattr(&self, _: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        if Name::is_foreign(name.as_bytes()) {
            reply.error(Errno::from_i32(Name::foreign_read_error(name.as_bytes()).errno()));
            return;
        }
        let name = name.to_owned();
        let reply = XattrReply { reply, size };
        self.serve(reply, "getxattr", ino.0, |fs| async move {
            fs.getxattr(ino.0, &name).await
        });
    }

    fn listxattr(&self, _: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let reply = XattrReply { reply, size };
        self.serve(reply, "listxattr", ino.0, |fs| async move {
            fs.listxattr(ino.0).await
        });
    }

    fn setxattr(
        &self,
        _: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        use std::os::unix::ffi::OsStrExt;
        if Name::is_foreign(name.as_bytes()) {
            reply.error(Errno::ENOTSUP);
            return;
        }
        let (name, value) = (name.to_owned(), value.to_vec());
        self.serve(reply, "setxattr", ino.0, |fs| async move {
            fs.setxattr(ino.0, &name, &value, flags).await
        });
    }

    fn removexattr(&self, _: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        use std::os::unix::ffi::OsStrExt;
        if Name::is_foreign(name.as_bytes()) {
            reply.error(Errno::ENODATA);
            return;
        }
        let name = name.to_owned();
        self.serve(reply, "removexattr", ino.0, |fs| async move {
            fs.removexattr(ino.0, &name).await
        });
    }

    // Changes. Mode, owner and times are kept in the object's metadata (see fs::headers).

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fh = fh.map(|fh| fh.0);
        let change = AttrChange {
            perm: mode.map(|mode| mode & 0o7777),
            uid,
            gid,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
        };
        self.serve(reply, "setattr", ino.0, |fs| async move {
            fs.setattr_all(ino.0, size, &change, fh).await
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let opener = process_of(req.pid());
        let creator = creator(req, mode, umask);
        self.serve(reply, "create", parent.0, |fs| async move {
            fs.create_as(parent.0, &name, flags, opener, creator).await
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, FIFOs and sockets have no S3 form.
            reply.error(Errno::EPERM);
            return;
        }
        let name = name.to_owned();
        let creator = creator(req, mode, umask);
        self.serve(reply, "mknod", parent.0, |fs| async move {
            fs.mknod_file(parent.0, &name, creator).await
        });
    }

    fn write(
        &self,
        _: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.serve(reply, "write", ino.0, |fs| async move {
            fs.write_owned(fh.0, offset, data).await
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = name.to_owned();
        let creator = creator(req, mode, umask);
        self.serve(reply, "mkdir", parent.0, |fs| async move {
            fs.mkdir_as(parent.0, &name, creator).await
        });
    }

    fn unlink(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.serve(reply, "unlink", parent.0, |fs| async move {
            fs.unlink(parent.0, &name).await
        });
    }

    fn rmdir(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.serve(reply, "rmdir", parent.0, |fs| async move {
            fs.rmdir(parent.0, &name).await
        });
    }

    fn rename(
        &self,
        _: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name.to_owned(), new_name.to_owned());
        self.serve(reply, "rename", parent.0, |fs| async move {
            fs.rename(parent.0, &name, new_parent.0, &new_name, flags.bits())
                .await
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path, reply: ReplyEntry) {
        use std::os::unix::ffi::OsStrExt;
        let (name, target) = (name.to_owned(), target.as_os_str().as_bytes().to_vec());
        let creator = creator(req, 0o777, 0);
        self.serve(reply, "symlink", parent.0, |fs| async move {
            fs.symlink(parent.0, &name, &target, creator).await
        });
    }

    fn readlink(&self, _: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(reply, "readlink", ino.0, |fs| async move {
            fs.readlink(ino.0).await.map(Bytes::from)
        });
    }

    // S3 has no hard links: EPERM is what Linux answers for a file system without them.

    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
}

/// The process (thread group id) of the thread FUSE names in a request, from `/proc`; `None` if
/// it is gone already or `/proc` is not ours to read.
fn process_of(thread: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{thread}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
}

/// Lets the file system drop the kernel's cached attributes and pages of an inode.
pub struct KernelNotifier(pub Notifier);

impl KernelCache for KernelNotifier {
    fn invalidate(&self, ino: u64) {
        // Offset 0, length -1: the whole file. ENOENT means the kernel no longer has the inode,
        // which is what we wanted anyway.
        if let Err(error) = self.0.inval_inode(INodeNo(ino), 0, -1)
            && error.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(ino, %error, "could not invalidate the kernel's cache of an inode");
        }
    }
}
