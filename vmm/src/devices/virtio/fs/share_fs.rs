//! One share as the Vfs sees it: the library's `PassthroughFs`, behind a
//! layer that enforces what the share promises.
//!
//! Every decision here is taken on the arguments the FUSE server has
//! already parsed out of the request (a copy in helper memory), never on
//! bytes still in guest memory: a vCPU can rewrite the request while the
//! device thread serves it, so a check on guest memory followed by a second
//! parse is no check at all.
//!
//! - Read-only: every operation that could change the host file system
//!   answers EROFS (the list is the whole `FileSystem` trait, gone through
//!   one by one; anything not plainly read-only is refused).
//! - Owner mapping: the share reports one uid/gid as the owner of every
//!   file (the session's user in the guest, so the guest kernel's
//!   `default_permissions` checks pass for it), and the library serves
//!   every request as the helper itself (context uid/gid 0 means "do not
//!   switch credentials" to `PassthroughFs`, which an unprivileged helper
//!   could not do anyway).
//! - Opening anything but a regular file or a directory is refused
//!   (ENXIO): a FIFO's open(2) blocks until a writer comes, which would
//!   stall the device, and a device node would hand the guest a host
//!   device.
//! - Protected objects ([`Protected`]): in a read-write share, the files
//!   and folders the caller named by identity answer EROFS to everything
//!   that would change them or the entries of a protected folder, and the
//!   folders on the way to them cannot be renamed or removed. The object
//!   an operation touches is the inode the library holds for the node id
//!   (its descriptor's stat), or for a name, what the library's own
//!   no-follow lookup in the parent finds; no path is resolved again. A
//!   name cannot come to mean a protected object between that check and
//!   the operation: moving one (or a folder above it) is what is refused.
//! - Descriptors: every inode the guest knows and every handle it has open
//!   holds a descriptor in the library; the layer counts them against the
//!   VM's [`FdBudget`] and refuses new ones (ENFILE) once it is spent, so a
//!   guest cannot drive the helper to EMFILE.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::FsCacheReqHandler;
use libc::{stat64, statvfs64};

use super::budget::FdBudget;
use super::protected::{FileId, Protected, GIT_DIR_RESERVED};

/// The share's root inode: the library holds it from mount to the end and
/// never forgets it, so the guest cannot add to it.
const ROOT_ID: u64 = 1;

/// What a share promises the host, whatever the guest sends.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Nothing in the share may change.
    pub read_only: bool,
    /// `Some((uid, gid))`: every file shows this owner, and requests are
    /// served as the helper.
    pub owner: Option<(u32, u32)>,
}

pub struct ShareFs {
    inner: PassthroughFs<()>,
    policy: Policy,
    protected: Protected,
    budget: Arc<FdBudget>,
    held: Mutex<Held>,
}

/// What the library holds a descriptor for on the guest's behalf,
/// mirroring its own counts: an inode stays until the guest has forgotten
/// as many lookups as it was given, a handle until it is released.
#[derive(Default)]
struct Held {
    /// Inode -> lookups the guest holds (every entry reply is one).
    inodes: HashMap<u64, u64>,
    handles: HashSet<u64>,
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl ShareFs {
    pub fn new(
        inner: PassthroughFs<()>,
        policy: Policy,
        protected: Protected,
        budget: Arc<FdBudget>,
    ) -> ShareFs {
        ShareFs {
            inner,
            policy,
            protected,
            budget,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one lookup of the inode an entry reply hands the guest. A
    /// new inode costs a descriptor: with the budget spent, the library's
    /// lookup is undone and the guest gets ENFILE; a known one is free
    /// (revalidating what the guest already has never fails here).
    fn hold_entry(&self, ctx: &Context, e: &Entry) -> io::Result<()> {
        if e.inode == 0 || e.inode == ROOT_ID {
            return Ok(());
        }
        let mut held = self.held();
        if let Some(n) = held.inodes.get_mut(&e.inode) {
            *n = n.saturating_add(1);
            return Ok(());
        }
        if let Err(full) = self.budget.take() {
            drop(held);
            self.inner.forget(ctx, e.inode, 1);
            return Err(full);
        }
        held.inodes.insert(e.inode, 1);
        Ok(())
    }

    /// An entry-making call (mkdir, create, ...): the descriptor its new
    /// inode needs is taken before the host is changed, so a spent budget
    /// refuses it rather than creating a file the guest is told failed.
    fn make_entry(&self, make: impl FnOnce() -> io::Result<Entry>) -> io::Result<Entry> {
        self.budget.take()?;
        match make() {
            Ok(e) => {
                let mut held = self.held();
                match held.inodes.get_mut(&e.inode) {
                    Some(n) => {
                        *n = n.saturating_add(1);
                        self.budget.give_back(1);
                    }
                    None if e.inode != 0 && e.inode != ROOT_ID => {
                        held.inodes.insert(e.inode, 1);
                    }
                    None => self.budget.give_back(1),
                }
                Ok(e)
            }
            Err(e) => {
                self.budget.give_back(1);
                Err(e)
            }
        }
    }

    /// The guest forgot `count` lookups of `inode`.
    fn forgotten(&self, inode: u64, count: u64) {
        let mut held = self.held();
        let Some(n) = held.inodes.get_mut(&inode) else {
            return;
        };
        *n = n.saturating_sub(count);
        if *n == 0 {
            held.inodes.remove(&inode);
            self.budget.give_back(1);
        }
    }

    /// Counts a handle an open returned (its descriptor was taken before
    /// the open; given back when there is no new handle after all).
    fn hold_handle(&self, handle: Option<u64>) {
        let fresh = handle.is_some_and(|h| self.held().handles.insert(h));
        if !fresh {
            self.budget.give_back(1);
        }
    }

    fn released(&self, handle: u64) {
        if self.held().handles.remove(&handle) {
            self.budget.give_back(1);
        }
    }

    /// EROFS on a read-only share.
    fn writable(&self) -> io::Result<()> {
        if self.policy.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// EROFS if `inode` is a protected object (or inside a protected
    /// folder: those are listed too). For a folder, that also refuses
    /// making entries in it (mkdir, mknod, symlink, link: a name already
    /// there fails on the host with EEXIST, as `mkdir -p` expects).
    fn unprotected(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        if self.protected.objects.is_empty() {
            return Ok(());
        }
        if self.protected.objects.contains(&self.id_of(ctx, inode)?) {
            return Err(err(libc::EROFS));
        }
        Ok(())
    }

    /// EROFS for making `name` in `parent` when `parent` is a repository's
    /// git folder and git would obey that name there
    /// ([`GIT_DIR_RESERVED`]: a `commondir` made in an existing `.git`
    /// would point the user's own git at hooks the guest wrote).
    fn nameable(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if self.protected.git_dirs.is_empty() || !GIT_DIR_RESERVED.contains(&name.to_bytes()) {
            return Ok(());
        }
        if !self.protected.git_dirs.contains(&self.id_of(ctx, parent)?) {
            return Ok(());
        }
        // One already there that is a protected object is left to the
        // host's own EEXIST (`mkdir -p .git/hooks`); anything else there
        // (a symlink `hooks -> ../githooks`, never protected itself) may
        // not be replaced either.
        match self.entry_id(ctx, parent, name)? {
            Some(id) if self.protected.objects.contains(&id) => Ok(()),
            _ => Err(err(libc::EROFS)),
        }
    }

    /// The identity of the host object `inode` stands for.
    fn id_of(&self, ctx: &Context, inode: u64) -> io::Result<FileId> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        Ok(FileId::of(&st))
    }

    /// The identity of what `name` in `parent` is now, if anything. Any
    /// error but ENOENT (out of descriptors, ...) is not known to mean
    /// "nothing there", so it is returned for the caller to refuse with.
    fn entry_id(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Option<FileId>> {
        match self.inner.lookup(ctx, parent, name) {
            Ok(e) if e.inode == 0 => Ok(None),
            Ok(e) => {
                // This lookup was the layer's own, not the guest's: the
                // library's count goes back at once.
                self.inner.forget(ctx, e.inode, 1);
                Ok(Some(FileId::of(&e.attr)))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// EROFS for adding, removing or replacing `name` in `parent` (an
    /// entry-making call, unlink, rmdir, either end of a rename, a create
    /// that would open what is there): `parent` is a protected folder,
    /// or the entry now there is a protected object or a folder on the
    /// way to one.
    fn replaceable(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if self.protected.is_empty() {
            return Ok(());
        }
        self.unprotected(ctx, parent)?;
        let Some(id) = self.entry_id(ctx, parent, name)? else {
            return Ok(());
        };
        if self.protected.objects.contains(&id) || self.protected.ancestors.contains(&id) {
            return Err(err(libc::EROFS));
        }
        Ok(())
    }

    /// The identity the library serves the request as.
    fn ctx(&self, ctx: &Context) -> Context {
        match self.policy.owner {
            // uid/gid 0: `PassthroughFs` keeps the thread's own
            // credentials (it only switches for non-zero ids).
            Some(_) => Context {
                uid: 0,
                gid: 0,
                pid: ctx.pid,
            },
            None => *ctx,
        }
    }

    /// Shows the mapped owner in attributes.
    fn show(&self, mut st: stat64) -> stat64 {
        if let Some((uid, gid)) = self.policy.owner {
            st.st_uid = uid;
            st.st_gid = gid;
        }
        st
    }

    fn show_entry(&self, mut e: Entry) -> Entry {
        e.attr = self.show(e.attr);
        e
    }

    /// Refuses opening what could block or reach a host device. An
    /// inode's type never changes, so asking for it first is no race.
    fn openable(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR => Ok(()),
            _ => Err(err(libc::ENXIO)),
        }
    }
}

impl ShareFs {
    fn give_back_all(&self) {
        let mut held = self.held();
        let n = held.inodes.len() + held.handles.len();
        *held = Held::default();
        self.budget.give_back(n);
    }
}

/// A share taken out of the Vfs closes what it held.
impl Drop for ShareFs {
    fn drop(&mut self) {
        self.give_back_all();
    }
}

/// Whether open(2) flags ask for anything but reading.
fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl BackendFileSystem for ShareFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let (e, max) = self.inner.mount()?;
        Ok((self.show_entry(e), max))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

// The trait's own signatures.
#[allow(clippy::too_many_arguments)]
impl FileSystem for ShareFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        // The library drops every inode but the root and every handle,
        // then imports the share again, which sets the whole process's
        // umask to 0: a guest's DESTROY would leave the helper creating
        // its own files world-writable. Its umask goes back at once.
        // SAFETY: umask(2) only swaps the process's mask.
        let umask = unsafe { libc::umask(0o077) };
        self.inner.destroy();
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        self.give_back_all();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let ctx = self.ctx(ctx);
        let e = self.inner.lookup(&ctx, parent, name)?;
        self.hold_entry(&ctx, &e)?;
        Ok(self.show_entry(e))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(&self.ctx(ctx), inode, count);
        self.forgotten(inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for &(inode, count) in &requests {
            self.forgotten(inode, count);
        }
        self.inner.batch_forget(&self.ctx(ctx), requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner
            .getattr(&self.ctx(ctx), inode, handle)
            .map(|(st, t)| (self.show(st), t))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        mut valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        if let Some((uid, gid)) = self.policy.owner {
            // The mapped owner is all the guest can see or be: chown to
            // it is a no-op, to anyone else refused.
            if valid.contains(SetattrValid::UID) {
                if attr.st_uid != uid {
                    return Err(err(libc::EPERM));
                }
                valid.remove(SetattrValid::UID);
            }
            if valid.contains(SetattrValid::GID) {
                if attr.st_gid != gid {
                    return Err(err(libc::EPERM));
                }
                valid.remove(SetattrValid::GID);
            }
        }
        self.inner
            .setattr(&self.ctx(ctx), inode, attr, handle, valid)
            .map(|(st, t)| (self.show(st), t))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(&self.ctx(ctx), inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), parent)?;
        self.nameable(&self.ctx(ctx), parent, name)?;
        self.make_entry(|| self.inner.symlink(&self.ctx(ctx), linkname, parent, name))
            .map(|e| self.show_entry(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.nameable(&self.ctx(ctx), inode, name)?;
        // A device node made by a root helper would be a host device.
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(err(libc::EPERM));
        }
        self.make_entry(|| {
            self.inner
                .mknod(&self.ctx(ctx), inode, name, mode, rdev, umask)
        })
        .map(|e| self.show_entry(e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), parent)?;
        self.nameable(&self.ctx(ctx), parent, name)?;
        self.make_entry(|| self.inner.mkdir(&self.ctx(ctx), parent, name, mode, umask))
            .map(|e| self.show_entry(e))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.replaceable(&self.ctx(ctx), parent, name)?;
        self.inner.unlink(&self.ctx(ctx), parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.replaceable(&self.ctx(ctx), parent, name)?;
        self.inner.rmdir(&self.ctx(ctx), parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        // Both ends are in this share: the Vfs refuses a rename across
        // file systems before it gets here.
        self.writable()?;
        // Out of and into: the moved entry and whatever it would replace.
        self.replaceable(&self.ctx(ctx), olddir, oldname)?;
        self.replaceable(&self.ctx(ctx), newdir, newname)?;
        self.nameable(&self.ctx(ctx), newdir, newname)?;
        self.inner
            .rename(&self.ctx(ctx), olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        // A second name for a protected file would not let it be written
        // (writes are checked on the inode), but nothing needs one.
        self.unprotected(&self.ctx(ctx), inode)?;
        self.unprotected(&self.ctx(ctx), newparent)?;
        self.nameable(&self.ctx(ctx), newparent, newname)?;
        self.make_entry(|| self.inner.link(&self.ctx(ctx), inode, newparent, newname))
            .map(|e| self.show_entry(e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let ctx = self.ctx(ctx);
        if open_writes(flags) {
            self.writable()?;
            self.unprotected(&ctx, inode)?;
        }
        self.openable(&ctx, inode)?;
        self.budget.take()?;
        let opened = self.inner.open(&ctx, inode, flags, fuse_flags);
        self.hold_handle(opened.as_ref().ok().and_then(|o| o.0));
        opened
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        // Without O_EXCL the library opens (and may truncate) a file that
        // is already there.
        self.replaceable(&self.ctx(ctx), parent, name)?;
        self.nameable(&self.ctx(ctx), parent, name)?;
        // The handle's descriptor first; the inode's is make_entry's.
        self.budget.take()?;
        let mut rest = None;
        let made = self.make_entry(|| {
            let (e, h, o, p) = self.inner.create(&self.ctx(ctx), parent, name, args)?;
            rest = Some((h, o, p));
            Ok(e)
        });
        match (made, rest) {
            (Ok(e), Some((h, o, p))) => {
                self.hold_handle(h);
                Ok((self.show_entry(e), h, o, p))
            }
            (made, _) => {
                self.budget.give_back(1);
                Err(made.err().unwrap_or_else(|| err(libc::EIO)))
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(
            &self.ctx(ctx),
            inode,
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        // No handle on a protected file is open for writing (open refuses
        // it); checked again on the inode all the same.
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner.write(
            &self.ctx(ctx),
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(&self.ctx(ctx), inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        // Writes nothing the share has not already written.
        self.inner.fsync(&self.ctx(ctx), inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner
            .fallocate(&self.ctx(ctx), inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(
            &self.ctx(ctx),
            inode,
            flags,
            handle,
            flush,
            flock_release,
            lock_owner,
        )?;
        self.released(handle);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(&self.ctx(ctx), inode)?;
        if self.policy.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner
            .setxattr(&self.ctx(ctx), inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(&self.ctx(ctx), inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(&self.ctx(ctx), inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner.removexattr(&self.ctx(ctx), inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        if open_writes(flags) {
            self.writable()?;
        }
        self.budget.take()?;
        let opened = self.inner.opendir(&self.ctx(ctx), inode, flags);
        self.hold_handle(opened.as_ref().ok().and_then(|o| o.0));
        opened
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(&self.ctx(ctx), inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let ctx = self.ctx(ctx);
        // Each entry is a lookup the library has already counted. Over
        // budget it is undone here and the listing ends (ENFILE if it is
        // the first entry); an entry that does not fit (0) the library
        // forgets itself; one the reply refuses (an error) it does not,
        // so that is undone here too.
        let mut shown = |d: DirEntry, e: Entry| {
            let ino = e.inode;
            self.hold_entry(&ctx, &e)?;
            match add_entry(d, self.show_entry(e)) {
                Ok(0) => {
                    self.forgotten(ino, 1);
                    Ok(0)
                }
                Ok(n) => Ok(n),
                Err(e) => {
                    self.forgotten(ino, 1);
                    self.inner.forget(&ctx, ino, 1);
                    Err(e)
                }
            }
        };
        self.inner
            .readdirplus(&ctx, inode, handle, size, offset, &mut shown)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(&self.ctx(ctx), inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner
            .releasedir(&self.ctx(ctx), inode, flags, handle)?;
        self.released(handle);
        Ok(())
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // A DAX mapping could be writable; the device has no cache window
        // today, so a read-only share simply has none.
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner.setupmapping(
            &self.ctx(ctx),
            inode,
            handle,
            foffset,
            len,
            flags,
            moffset,
            vu_req,
        )
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: u64,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner
            .removemapping(&self.ctx(ctx), inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
            self.unprotected(&self.ctx(ctx), inode)?;
        }
        self.inner.access(&self.ctx(ctx), inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner
            .lseek(&self.ctx(ctx), inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner
            .getlk(&self.ctx(ctx), inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        // The library has no locks (ENOSYS: the guest kernel keeps them
        // locally); nothing to refuse on a read-only share.
        self.inner
            .setlk(&self.ctx(ctx), inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner
            .setlkw(&self.ctx(ctx), inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // An ioctl can do anything (FS_IOC_SETFLAGS, ...).
        self.writable()?;
        self.unprotected(&self.ctx(ctx), inode)?;
        self.inner
            .ioctl(&self.ctx(ctx), inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(&self.ctx(ctx), inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner
            .poll(&self.ctx(ctx), inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::open_writes;

    #[test]
    fn open_flags_that_write() {
        assert!(!open_writes(libc::O_RDONLY as u32));
        assert!(!open_writes((libc::O_RDONLY | libc::O_NONBLOCK) as u32));
        assert!(open_writes(libc::O_WRONLY as u32));
        assert!(open_writes(libc::O_RDWR as u32));
        assert!(open_writes(libc::O_ACCMODE as u32), "the invalid mode 3");
        assert!(open_writes((libc::O_RDONLY | libc::O_TRUNC) as u32));
    }
}
