//! Ending a session in the VM: every process still running as its user is
//! killed, not only the ones the agent started. A session's process can
//! `setsid` or double-fork a daemon that outlives the process the host
//! spawned; once the host considers the session idle (its shares are
//! unexported, its directory may be deleted) such a daemon must not keep
//! running with the session's uid.
//!
//! Processes are found by scanning `/proc/<pid>/status` and signalled
//! through a descriptor of their `/proc/<pid>` directory
//! (`pidfd_send_signal` accepts one), so a pid reused between the check
//! and the kill is never hit.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::libc;

/// How long to go on killing (a process may fork while it is killed).
pub const END_WITHIN: Duration = Duration::from_secs(2);
/// Pause between scans.
const RESCAN: Duration = Duration::from_millis(20);

/// Kills every process running as `uid` (any of its real, effective, saved
/// or file-system uids), again and again until none is left or `within`
/// passes. Never PID 1, the agent itself, or a process with any uid 0
/// (root's and the agent's own children before they drop to the session's
/// user). Zombies are already dead and do not count.
pub fn kill_uid(proc_root: &str, uid: u32, within: Duration) -> Result<(), String> {
    if uid == 0 {
        return Err("refusing to kill root's processes".into());
    }
    let deadline = Instant::now() + within;
    loop {
        let left = kill_pass(proc_root, uid)?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{left} process(es) of uid {uid} still running after {}s",
                within.as_secs_f32()
            ));
        }
        std::thread::sleep(RESCAN);
    }
}

/// One scan: SIGKILL to every live process of `uid`; how many were found.
fn kill_pass(proc_root: &str, uid: u32) -> Result<usize, String> {
    let me = std::process::id();
    let rd = std::fs::read_dir(proc_root).map_err(|e| format!("{proc_root}: {e}"))?;
    let mut found = 0;
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        // Gone since the listing: nothing to do.
        let Some(dir) = open_dir(&format!("{proc_root}/{pid}")) else {
            continue;
        };
        let Some(status) = read_status(&dir) else {
            continue;
        };
        if !belongs_to(&status, uid) {
            continue;
        }
        found += 1;
        signal(&dir, pid);
    }
    Ok(found)
}

/// True when the status is of a live process of `uid` and of no root uid.
fn belongs_to(status: &str, uid: u32) -> bool {
    let mut uids: Vec<u32> = Vec::new();
    let mut zombie = false;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uids = v
                .split_ascii_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("State:") {
            zombie = v.trim_start().starts_with('Z') || v.trim_start().starts_with('X');
        }
    }
    !zombie && uids.contains(&uid) && !uids.contains(&0)
}

fn open_dir(path: &str) -> Option<OwnedFd> {
    let c = CString::new(path).ok()?;
    // SAFETY: `c` is a NUL-terminated string alive for the call; the
    // returned descriptor, when valid, is owned by nobody else.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a non-negative `fd` was just opened here and is ours alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The process's status read through its directory's descriptor (so it is
/// the same process that gets the signal); bounded.
fn read_status(dir: &OwnedFd) -> Option<String> {
    // SAFETY: `dir` is a live descriptor and the name a static C string;
    // the returned descriptor, when valid, is owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"status".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a non-negative `fd` was just opened here and is ours alone.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut s = String::new();
    f.take(64 * 1024).read_to_string(&mut s).ok()?;
    Some(s)
}

/// SIGKILL through the `/proc/<pid>` descriptor; plain kill(2) only where
/// the kernel lacks pidfd_send_signal.
fn signal(dir: &OwnedFd, pid: u32) {
    // SAFETY: pidfd_send_signal takes a live descriptor (ours), a signal
    // number, a null siginfo and no flags; it touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            dir.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        if let Ok(p) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_non_root_processes_of_the_uid_belong() {
        let st = |state: &str, uids: &str| format!("Name:\tx\nState:\t{state}\nUid:\t{uids}\n");
        assert!(belongs_to(
            &st("S (sleeping)", "20001 20001 20001 20001"),
            20001
        ));
        assert!(!belongs_to(
            &st("S (sleeping)", "20002 20002 20002 20002"),
            20001
        ));
        assert!(!belongs_to(
            &st("Z (zombie)", "20001 20001 20001 20001"),
            20001
        ));
        // Root between fork and setresuid, or a setuid program: spared.
        assert!(!belongs_to(
            &st("R (running)", "0 20001 20001 20001"),
            20001
        ));
        assert!(!belongs_to("garbage", 20001));
        assert!(kill_uid("/proc", 0, Duration::ZERO).is_err());
    }
}
