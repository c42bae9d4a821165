//! The OOM killer's choice: PID 1 and the agent are never its victims (the
//! VM would be lost with them), the sessions' processes are ordinary ones.
//! `oom_score_adj` is inherited, so a spawned process puts itself back to
//! 0 before exec, while it is still root: that also resets the floor root
//! set (`oom_score_adj_min`), so the session cannot lower it again.

use nix::libc;

const PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// Makes the calling process (and what it starts from now on) exempt from
/// the OOM killer; needs CAP_SYS_RESOURCE.
pub fn protect_self() -> Result<(), String> {
    std::fs::write("/proc/self/oom_score_adj", "-1000")
        .map_err(|e| format!("/proc/self/oom_score_adj: {e}"))
}

/// In a child between fork and exec: back to the ordinary score. Only
/// system calls on static data, as is allowed there. Raising the value
/// needs no privilege.
pub fn reset_in_child() -> std::io::Result<()> {
    write_in_child(PATH, b"0")
}

/// Writes `data` to the file at `path` with raw system calls only: what a
/// child may do between fork and exec.
pub(crate) fn write_in_child(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is NUL-terminated and `data` a live buffer, both
    // borrowed for the calls; the descriptor is ours and closed before
    // returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if usize::try_from(r).ok() != Some(data.len()) {
            return Err(err);
        }
    }
    Ok(())
}
