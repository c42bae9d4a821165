//! What the helper gives up when it starts serving: descriptors inherited
//! from whoever launched it, and, where no backend needs it, the ability to
//! gain privileges through exec (setuid binaries, file capabilities).

use std::os::unix::fs::PermissionsExt;

use crate::select::Kind;

/// Closes every descriptor above stderr. The app starts the helper with
/// stdio only; anything else open (a launcher's sockets, a terminal's
/// extra descriptors) would otherwise leak into every session process.
/// Must run before the helper opens anything of its own.
pub fn close_inherited_descriptors() {
    // SAFETY: close_range(2) on a range of descriptors; nothing of ours is
    // open yet, and a kernel without it (before 5.9) returns ENOSYS.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Older kernels: close what /proc lists (collected first, since
        // reading the directory opens a descriptor of its own).
        let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in open {
            // SAFETY: closing a descriptor number that is not ours to keep;
            // the directory's own (already closed) fails harmlessly.
            unsafe { libc::close(fd) };
        }
    }
}

/// Sets no-new-privileges for the helper and everything it starts, unless
/// the chosen backend may need to gain privileges: the host backend runs
/// the user's own commands (sudo included), and a setuid bubblewrap (on
/// distributions without unprivileged user namespaces) needs its bit.
/// Returns what was done, for the log.
pub fn forbid_new_privileges(kind: Kind, bwrap: Option<&std::path::Path>) -> &'static str {
    let setuid_bwrap = bwrap
        .and_then(|b| std::fs::metadata(b).ok())
        .is_some_and(|m| m.permissions().mode() & 0o4000 != 0);
    match kind {
        Kind::Host => return "kept: the host backend runs the user's commands as they are",
        Kind::Bwrap if setuid_bwrap => return "kept: bubblewrap is setuid here",
        _ => {}
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r == 0 {
        "dropped"
    } else {
        "kept: prctl(PR_SET_NO_NEW_PRIVS) failed"
    }
}

/// Whether no-new-privileges is set on the calling thread.
pub fn no_new_privileges() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
}
