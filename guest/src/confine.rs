//! What a session's process sees in the VM and who it runs as.
//!
//! Each session process enters its session's network and IPC namespaces
//! (one pair per session, [`crate::session_ns`]), gets its own mount
//! namespace, built in the child between fork and exec (as root), then
//! drops to the session's own unprivileged user:
//!
//! - `/sessions` (the session disk) is covered by an empty tmpfs with only
//!   `/sessions/<name>` put back (recursively, with its shares; parked on
//!   the device root while /sessions is covered, then moved);
//! - the whole virtio-fs device (`/run/cowork-fs`) is covered by an empty
//!   read-only tmpfs;
//! - `/tmp` and `/dev/shm` are the session's own directories;
//! - `/proc` is a fresh procfs with `hidepid=invisible` (other users'
//!   processes, the agent and PID 1 included, do not exist for it) and
//!   `/proc/cmdline` (the agent token) masked by `/dev/null`;
//! - `/sys` and `/sys/fs/cgroup` are read-only.
//!
//! The whole tree is made a slave of the agent's (which is shared), so a
//! share the agent mounts or unmounts later under `/sessions/<name>/mnt/`
//! appears or disappears in running processes at once, and nothing a
//! session mounts could travel back.
//!
//! The mount steps are computed before fork as data ([`Plan`]: C strings,
//! no allocation left to do) and applied in the child with raw system
//! calls only, which is what is allowed between fork and exec in a
//! multi-threaded program. The paths are those of a [`Layout`] so the same
//! code runs relocated under a test directory (see `tests/confine.rs`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::libc;

/// The first uid (and gid) given to a session; the range ends below
/// `nobody` (65534).
pub const UID_BASE: u32 = 20000;
pub const UID_END: u32 = 65000;

/// The directory of the session disk holding a session's shares; not
/// re-owned when an old directory is adopted (mounts of other filesystems).
const SHARES_DIR: &str = "mnt";

/// Where things are. In the VM: [`Layout::vm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The session disk: one directory per session, owned by its user.
    pub sessions_root: PathBuf,
    /// Where the agent mounts whole virtio-fs devices: hidden.
    pub fs_root: PathBuf,
    /// The agent's private directories for each session's /tmp and
    /// /dev/shm (`<store>/<name>/{tmp,shm}`), hidden under the session's
    /// own /tmp.
    pub store: PathBuf,
}

impl Layout {
    pub fn vm() -> Layout {
        Layout {
            sessions_root: PathBuf::from(crate::init::SESSION_ROOT),
            fs_root: PathBuf::from(crate::init::FS_ROOT),
            store: PathBuf::from("/tmp/.cowork-sessions"),
        }
    }

    /// Everything under `dir` but the system's /tmp, /dev/shm, /proc and
    /// /sys (the test runs in its own mount namespace).
    pub fn under(dir: &Path) -> Layout {
        Layout {
            sessions_root: dir.join("sessions"),
            fs_root: dir.join("fs"),
            store: dir.join("store"),
        }
    }
}

/// Sets the agent's side up once: its mounts shared (so they propagate to
/// the sessions' slave copies) and the directories the plans use.
pub fn prepare_agent(layout: &Layout) -> Result<(), String> {
    for dir in [&layout.sessions_root, &layout.fs_root] {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layout.store)
        .map_err(|e| format!("mkdir {}: {e}", layout.store.display()))?;
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| format!("make / shared: {e}"))
}

/// Serializes uid allocation (two first uses at once must not pick the
/// same uid).
static ALLOCATING: Mutex<()> = Mutex::new(());

/// The session's (uid, gid), made on first use: the owner of
/// `<root>/<name>` is the record (so it survives reboots); a new session
/// gets one more than the highest in use. An existing directory not owned
/// by a session user (made before sessions had users) is adopted: it and
/// everything in it (but its shares) are given to the new user.
pub fn session_user(root: &Path, name: &str) -> Result<(u32, u32), String> {
    cowork_backend::session_data::validate_name("session name", name).map_err(|e| e.to_string())?;
    let _guard = ALLOCATING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root.join(name);
    let existing = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Some(m),
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    if let Some(m) = &existing {
        if is_session_id(m.uid()) {
            return Ok((m.uid(), m.gid()));
        }
    }
    let uid = next_uid(root)?;
    if existing.is_none() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    give(&dir, uid, true)?;
    Ok((uid, uid))
}

/// The session's uid if it has one already (its directory exists and is
/// owned by a session user); never makes one.
pub fn existing_session_user(root: &Path, name: &str) -> Result<Option<u32>, String> {
    cowork_backend::session_data::validate_name("session name", name).map_err(|e| e.to_string())?;
    let dir = root.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && is_session_id(m.uid()) => Ok(Some(m.uid())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn is_session_id(id: u32) -> bool {
    (UID_BASE..UID_END).contains(&id)
}

/// The record of the highest uid ever given, in the session disk's root
/// (root's, mode 0600; sessions see only their own directory). A uid is
/// never given twice: a daemon of a deleted session may still run as it.
pub const UID_MARK: &str = ".cowork-uids";

/// The highest uid ever given, if any was.
fn read_mark(root: &Path) -> Result<Option<u32>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join(UID_MARK);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    f.take(64)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // A damaged record is not taken as "none given": that could give an
    // old uid again.
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{}: not a uid: {text:?}", path.display()))
}

/// Records `uid` as the highest given, durably, before it is used.
fn write_mark(root: &Path, uid: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = root.join(format!("{UID_MARK}.new"));
    let fail = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(format!("{uid}\n").as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    let path = root.join(UID_MARK);
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// One past the highest uid ever given (the record, or the directories'
/// owners where the record is behind, e.g. a disk from before it), then
/// recorded. Never a uid given before: when the range is used up, sessions
/// cannot be made any more.
fn next_uid(root: &Path) -> Result<u32, String> {
    let rd = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let in_use = rd
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.uid())
        .filter(|u| is_session_id(*u))
        .max();
    let highest = in_use.max(read_mark(root)?);
    let next = match highest {
        None => UID_BASE,
        Some(hi) => hi.saturating_add(1).max(UID_BASE),
    };
    if !is_session_id(next) {
        return Err(format!(
            "every session uid ({UID_BASE}-{}) has been given once and none is given twice; \
             a new session disk is needed for more sessions",
            UID_END - 1
        ));
    }
    write_mark(root, next)?;
    Ok(next)
}

/// Gives `dir` (mode 0700) and, when `all`, what is in it to `uid`, never
/// following symbolic links nor entering the shares' directory or another
/// filesystem.
fn give(dir: &Path, uid: u32, all: bool) -> Result<(), String> {
    use std::os::unix::fs::{lchown, PermissionsExt};
    let top = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    lchown(dir, Some(uid), Some(uid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    if !all {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != top.dev() || (d == dir && e.file_name() == SHARES_DIR) {
                continue;
            }
            // Best effort: one file that cannot change hands is no reason
            // to refuse the session.
            let _ = lchown(&p, Some(uid), Some(uid));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// Makes `rel` (plain names only) under `base`, each new directory given
/// to `uid`, by descriptor: no symbolic link is followed, so a session
/// swapping a component of its own directory for a link cannot have root
/// make (and give it) a directory anywhere else.
fn mkdirs_owned(base: &Path, rel: &Path, uid: u32) -> Result<(), String> {
    use crate::safe_path::{open_dir, Create};
    open_dir(base, rel, Create::Owned(uid, uid)).map(drop)
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// Create `target` (a directory, mode 0700) first.
    pub mkdir: bool,
    /// A failure is ignored (a mount that may not exist here, e.g. a
    /// cgroup file system).
    pub optional: bool,
}

/// Everything the child does between fork and exec, computed beforehand.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<MountStep>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    /// The session's network and IPC namespaces, entered first
    /// ([`crate::session_ns`]); `None` leaves the agent's.
    pub namespaces: Option<std::sync::Arc<crate::session_ns::SessionNs>>,
}

fn c(p: impl AsRef<Path>) -> Result<CString, String> {
    CString::new(p.as_ref().as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", p.as_ref().display()))
}

impl Plan {
    /// The mount steps for session `name`.
    pub fn steps(layout: &Layout, name: &str) -> Result<Vec<MountStep>, String> {
        let ms = |source: Option<&str>,
                  target: &Path,
                  fstype: Option<&str>,
                  flags: libc::c_ulong,
                  data: Option<&str>|
         -> Result<MountStep, String> {
            Ok(MountStep {
                source: source.map(c).transpose()?,
                target: c(target)?,
                fstype: fstype.map(c).transpose()?,
                flags,
                data: data.map(c).transpose()?,
                mkdir: false,
                optional: false,
            })
        };
        let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let own = layout.sessions_root.join(name);
        let store = layout.store.join(name);
        let src = |p: &Path| p.to_str().map(str::to_owned).ok_or("path is not UTF-8");
        let own_src = src(&own)?;
        let fs_src = src(&layout.fs_root)?;
        let tmp = src(&store.join("tmp"))?;
        let shm = src(&store.join("shm"))?;
        let ro_again = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hard;
        let mut steps = vec![
            // Nothing below travels back to the agent; its mounts still
            // come in.
            ms(
                None,
                Path::new("/"),
                None,
                libc::MS_REC | libc::MS_SLAVE,
                None,
            )?,
            // The session's directory (with its shares) is parked on the
            // device root while /sessions is covered, then moved back: a
            // bind source must be in the namespace, so it cannot come from
            // a descriptor opened before it.
            ms(
                Some(&own_src),
                &layout.fs_root,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?,
            ms(
                Some("tmpfs"),
                &layout.sessions_root,
                Some("tmpfs"),
                hard,
                Some("mode=0755,size=64k"),
            )?,
            MountStep {
                mkdir: true,
                ..ms(Some(&fs_src), &own, None, libc::MS_MOVE, None)?
            },
            ms(
                Some("tmpfs"),
                &layout.fs_root,
                Some("tmpfs"),
                hard | libc::MS_RDONLY,
                Some("mode=0755,size=4k"),
            )?,
            // /dev/shm before /tmp: in the VM the store is under /tmp,
            // which the next step covers.
            ms(Some(&shm), Path::new("/dev/shm"), None, libc::MS_BIND, None)?,
            ms(Some(&tmp), Path::new("/tmp"), None, libc::MS_BIND, None)?,
            ms(
                Some("proc"),
                Path::new("/proc"),
                Some("proc"),
                hard,
                Some("hidepid=invisible"),
            )?,
            ms(
                Some("/dev/null"),
                Path::new("/proc/cmdline"),
                None,
                libc::MS_BIND,
                None,
            )?,
            ms(None, Path::new("/sys"), None, ro_again, None)?,
        ];
        steps.push(MountStep {
            optional: true,
            ..ms(None, Path::new("/sys/fs/cgroup"), None, ro_again, None)?
        });
        Ok(steps)
    }

    /// Prepares session `name`'s process: its user (made on first use),
    /// its private /tmp and /dev/shm, `cwd` (made when inside the
    /// session's directory; the session's directory when `None`) and the
    /// mount steps.
    pub fn new(layout: &Layout, name: &str, cwd: Option<&str>) -> Result<Plan, String> {
        let (uid, gid) = session_user(&layout.sessions_root, name)?;
        let own = layout.sessions_root.join(name);
        for sub in ["tmp", "shm"] {
            mkdirs_owned(&layout.store, &Path::new(name).join(sub), uid)?;
        }
        let cwd = match cwd {
            None => own.clone(),
            Some(d) => {
                let d = PathBuf::from(d);
                if !d.is_absolute() {
                    return Err(format!("cwd {} is not absolute", d.display()));
                }
                if let Ok(rel) = d.strip_prefix(&own) {
                    // From the sessions root, so the session's own
                    // directory is not taken on trust either.
                    let rel = Path::new(name).join(rel);
                    mkdirs_owned(&layout.sessions_root, &rel, uid)?;
                }
                d
            }
        };
        Ok(Plan {
            steps: Plan::steps(layout, name)?,
            cwd: c(&cwd)?,
            uid,
            gid,
            namespaces: None,
        })
    }

    /// Applies the plan in the child after fork: only system calls, no
    /// allocation, no locks.
    pub fn apply(&self) -> std::io::Result<()> {
        fn check(r: libc::c_int) -> std::io::Result<()> {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        fn ptr(s: &Option<CString>) -> *const libc::c_char {
            s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
        }
        // The session's network and IPC namespaces first: entering them
        // needs the capabilities dropped below.
        if let Some(ns) = &self.namespaces {
            ns.enter_in_child()?;
        }
        // SAFETY: every pointer is a NUL-terminated string owned by `self`
        // (or null where the call allows it), alive for the whole call;
        // these calls touch no memory of ours otherwise.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            for s in &self.steps {
                if s.mkdir {
                    let r = libc::mkdir(s.target.as_ptr(), 0o700);
                    if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let r = libc::mount(
                    ptr(&s.source),
                    s.target.as_ptr(),
                    ptr(&s.fstype),
                    s.flags,
                    ptr(&s.data).cast(),
                );
                if !s.optional {
                    check(r)?;
                }
            }
            // No capability can come back: drop the bounding set (EINVAL
            // past the last one the kernel knows).
            for cap in 0..64 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            // From root to non-root with no SECBIT_KEEP_CAPS: every
            // capability is gone.
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            // Entered as the session's user, not root: whatever the
            // session has made of the path since it was checked, it leads
            // nowhere the session could not go itself.
            check(libc::chdir(self.cwd.as_ptr()))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(steps: &[MountStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| s.target.to_string_lossy().into_owned())
            .collect()
    }

    /// No bind takes its source from under a place an earlier step has
    /// already covered (in the VM the store lives under /tmp).
    #[test]
    fn no_source_is_covered_before_it_is_bound() {
        let steps = Plan::steps(&Layout::vm(), "alpha").unwrap();
        let path = |c: &CString| PathBuf::from(c.to_string_lossy().into_owned());
        for (i, s) in steps.iter().enumerate() {
            let Some(src) = s.source.as_ref().map(path) else {
                continue;
            };
            if !src.is_absolute() || s.flags & libc::MS_MOVE != 0 {
                continue;
            }
            for earlier in &steps[1..i] {
                let covered = path(&earlier.target);
                assert!(
                    !src.starts_with(&covered) || covered == Path::new("/"),
                    "step {i} binds {} from under {}, covered earlier",
                    src.display(),
                    covered.display()
                );
            }
        }
    }

    #[test]
    fn the_plan_shows_the_session_alone() {
        let l = Layout::vm();
        let steps = Plan::steps(&l, "alpha").unwrap();
        let t = targets(&steps);
        // The tree is a slave first, so nothing below leaks back.
        assert_eq!(t[0], "/");
        assert_eq!(steps[0].flags, libc::MS_REC | libc::MS_SLAVE);
        // alpha's directory (with its shares) parked, /sessions covered,
        // alpha's directory moved back: nothing else of the disk shows.
        assert_eq!(t[1], "/run/cowork-fs");
        assert_eq!(steps[1].source.as_deref(), Some(c"/sessions/alpha"));
        assert_eq!(steps[1].flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(t[2], "/sessions");
        assert_eq!(steps[2].fstype.as_deref(), Some(c"tmpfs"));
        assert_eq!(t[3], "/sessions/alpha");
        assert_eq!(steps[3].flags, libc::MS_MOVE);
        // Then the whole virtio-fs device covered, read-only.
        assert_eq!(t[4], "/run/cowork-fs");
        assert_eq!(steps[4].fstype.as_deref(), Some(c"tmpfs"));
        assert_ne!(steps[4].flags & libc::MS_RDONLY, 0);
        // A fresh /proc hiding others' processes, the command line masked.
        let proc = steps.iter().find(|s| s.target.as_c_str() == c"/proc");
        assert_eq!(proc.unwrap().data.as_deref(), Some(c"hidepid=invisible"));
        let cmdline = steps
            .iter()
            .find(|s| s.target.as_c_str() == c"/proc/cmdline");
        assert_eq!(cmdline.unwrap().source.as_deref(), Some(c"/dev/null"));
        // Private /tmp and /dev/shm from the session's own store.
        let src = |t: &CStr| {
            steps
                .iter()
                .find(|s| s.target.as_c_str() == t)
                .and_then(|s| s.source.clone())
        };
        use std::ffi::CStr;
        assert_eq!(
            src(c"/tmp").as_deref(),
            Some(c"/tmp/.cowork-sessions/alpha/tmp")
        );
        assert_eq!(
            src(c"/dev/shm").as_deref(),
            Some(c"/tmp/.cowork-sessions/alpha/shm")
        );
        // /sys read-only; nothing ever binds the session disk's root, the
        // device root or another session.
        let sys = steps.iter().find(|s| s.target.as_c_str() == c"/sys");
        assert_ne!(sys.unwrap().flags & libc::MS_RDONLY, 0);
        for s in &steps {
            let source = s.source.as_deref().map(|s| s.to_string_lossy());
            let bound_from = (s.flags & libc::MS_BIND != 0).then_some(source.clone());
            assert!(
                !matches!(
                    bound_from.flatten().as_deref(),
                    Some("/sessions" | "/run/cowork-fs")
                ),
                "{s:?}"
            );
            assert!(
                !source.is_some_and(|s| s.starts_with("/run/cowork-fs/")),
                "{s:?}"
            );
            assert!(s.flags & libc::MS_SHARED == 0, "nothing propagates out");
        }
    }

    #[test]
    #[cfg_attr(not(has_root), ignore = "chown needs root")]
    fn users_are_stable_and_distinct() {
        if !crate::prerequisite::require(
            nix::unistd::geteuid().is_root(),
            "users_are_stable_and_distinct",
            "chown needs root",
        ) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = session_user(root, "a").unwrap();
        let b = session_user(root, "b").unwrap();
        assert_eq!(a, (UID_BASE, UID_BASE));
        assert_eq!(b, (UID_BASE + 1, UID_BASE + 1));
        assert_eq!(session_user(root, "a").unwrap(), a, "stable");
        let m = std::fs::metadata(root.join("a")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        // An old root-owned directory is adopted with its files, not its
        // shares.
        std::fs::create_dir_all(root.join("old/work")).unwrap();
        std::fs::create_dir_all(root.join("old/mnt/share")).unwrap();
        std::fs::write(root.join("old/work/f"), b"x").unwrap();
        let old = session_user(root, "old").unwrap();
        assert_eq!(old.0, UID_BASE + 2);
        let owner = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().uid();
        assert_eq!(owner("old/work/f"), old.0);
        assert_eq!(owner("old/mnt/share"), 0);
        for bad in ["", "..", "a/b", "x\0"] {
            assert!(session_user(root, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    #[cfg_attr(not(has_root), ignore = "chown needs root")]
    fn uids_are_never_given_twice() {
        if !crate::prerequisite::require(
            nix::unistd::geteuid().is_root(),
            "uids_are_never_given_twice",
            "chown needs root",
        ) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = session_user(root, "a").unwrap().0;
        let b = session_user(root, "b").unwrap().0;
        // Both deleted (a daemon of b may still run as b's uid): the next
        // session gets a new uid all the same.
        std::fs::remove_dir_all(root.join("a")).unwrap();
        std::fs::remove_dir_all(root.join("b")).unwrap();
        let c = session_user(root, "c").unwrap().0;
        assert!(c > a && c > b, "{a} {b} {c}");
        assert_eq!(existing_session_user(root, "c").unwrap(), Some(c));
        assert_eq!(existing_session_user(root, "a").unwrap(), None);
        // The record is root's alone.
        let m = std::fs::symlink_metadata(root.join(UID_MARK)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
        assert!(m.is_file());
        // At the end of the range: a clear refusal, never an old uid.
        std::fs::write(root.join(UID_MARK), format!("{}", UID_END - 1)).unwrap();
        let err = session_user(root, "d").unwrap_err();
        assert!(err.contains("given once"), "{err}");
        assert!(!root.join("d").exists());
        // A damaged record is not read as "nothing given yet".
        std::fs::write(root.join(UID_MARK), "garbage").unwrap();
        assert!(session_user(root, "e").is_err());
    }
}
