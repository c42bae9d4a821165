//! PID 1 duties in the VM: the filesystems every program expects, the
//! hostname and loopback, the session disk, reaping orphans, and ending the
//! VM by rebooting (with no ACPI the guest cannot power off; the VMM treats
//! the reboot as the end).

use std::path::Path;

use nix::mount::{mount, MsFlags};

pub const HOSTNAME: &str = "cowork";
/// The session disk (second virtio-blk device), ext4 made by the host.
pub const SESSION_DISK: &str = "/dev/vdb";
pub const SESSION_ROOT: &str = "/sessions";

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {e}")),
    }
}

/// Tells the VMM's boot timer that init is running: the figure boot time is
/// measured by, as Firecracker's init does. Harmless where nothing listens.
pub fn signal_boot_timer() {
    use crate::wire::{BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
    // SAFETY: ioperm only grants this process access to one I/O port; the
    // `out` then writes one byte to that port and touches no memory.
    unsafe {
        if nix::libc::ioperm(BOOT_TIMER_PORT as nix::libc::c_ulong, 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") BOOT_TIMER_PORT, in("al") BOOT_TIMER_MAGIC, options(nomem, nostack));
        }
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroup2,
/// sets the hostname, brings up `lo` and mounts the session disk. Problems
/// are returned, not fatal: a guest missing one still serves.
pub fn early_init() -> Vec<String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid | MsFlags::MS_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", nosuid | MsFlags::MS_NOEXEC, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("ptmxmode=0666,mode=0620"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777")),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid | MsFlags::MS_NOEXEC,
            None,
        ),
    ];
    let mut problems: Vec<String> = steps
        .iter()
        .filter_map(|(src, dst, fs, fl, data)| mount_fs(src, dst, fs, *fl, *data).err())
        .collect();
    // Sessions must not read the kernel log (nor, in it, the command line
    // with the agent token) nor make user namespaces to undo their view.
    for (knob, value) in [
        ("/proc/sys/kernel/dmesg_restrict", "1"),
        ("/proc/sys/kernel/kptr_restrict", "2"),
        ("/proc/sys/user/max_user_namespaces", "0"),
        // Nor hard-link files they do not own (a link of someone else's
        // file in its own directory would be read by the agent's
        // readFile), nor trick anyone with links in sticky directories.
        ("/proc/sys/fs/protected_hardlinks", "1"),
        ("/proc/sys/fs/protected_symlinks", "1"),
        // Nor listen on a privileged port: the egress forwarder's
        // (`wire::EGRESS_LISTEN`) is one. (The VM's own namespace; each
        // session's starts at the kernel's 1024, see session_ns.)
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "1024"),
    ] {
        if let Err(e) = std::fs::write(knob, value) {
            problems.push(format!("{knob}: {e}"));
        }
    }
    // Let the sessions' cgroups use the memory and (where the kernel has
    // it) pids controllers: one write each, as a write naming a missing
    // controller fails whole.
    for c in ["+memory", "+pids"] {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", c);
    }
    if let Err(e) = nix::unistd::sethostname(HOSTNAME) {
        problems.push(format!("sethostname: {e}"));
    }
    if let Err(e) = loopback_up() {
        problems.push(format!("lo: {e}"));
    }
    if Path::new(SESSION_DISK).exists() {
        if let Err(e) = mount_fs(SESSION_DISK, SESSION_ROOT, "ext4", nosuid, None) {
            problems.push(e);
        }
    } else {
        let _ = std::fs::create_dir_all(SESSION_ROOT);
    }
    problems
}

/// Where a virtio-fs device is mounted whole when shares are taken from
/// its subdirectories.
pub const FS_ROOT: &str = "/run/cowork-fs";

/// Brings `lo` up in the calling thread's network namespace (the VM's at
/// boot; a session's own in [`crate::session_ns`]).
pub(crate) fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: the fd is a live socket and `req` a valid ifreq that the
    // kernel fills in (SIOCGIFFLAGS) or reads (SIOCSIFFLAGS).
    unsafe {
        if nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("SIOCGIFFLAGS: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
        if nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Reaps every child until `agent` exits; returns its exit code. Orphans of
/// the sessions are re-parented to PID 1 and end here too.
pub fn reap_until(agent: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == agent => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == agent => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// Longest token accepted (the host makes 64 hex digits).
const MAX_TOKEN: usize = 256;

/// The agent token ([`crate::wire::TOKEN_PARAM`]) on a kernel command
/// line; empty when there is none or it is not plain hex of a sane length.
pub fn token_from_cmdline(cmdline: &str) -> String {
    let prefix = format!("{}=", crate::wire::TOKEN_PARAM);
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .next_back()
        .filter(|t| t.len() <= MAX_TOKEN && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_string()
}

/// Reads the token PID 1 hands the agent on its stdin (a pipe nobody else
/// has), at most [`MAX_TOKEN`] bytes.
pub fn read_token(from: impl std::io::Read) -> String {
    use std::io::Read;
    let mut buf = String::new();
    let _ = from.take(MAX_TOKEN as u64).read_to_string(&mut buf);
    let token = buf.trim();
    if token.bytes().all(|b| b.is_ascii_hexdigit()) {
        token.to_string()
    } else {
        String::new()
    }
}

/// Syncs, unmounts what it can, and reboots: the VMM sees the VM end.
pub fn power_off() -> ! {
    nix::unistd::sync();
    for target in ["/sessions", "/tmp", "/run"] {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) does not return on success; if it failed there is nothing
    // left to do but stop.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_read_from_the_command_line() {
        let t = |s: &str| token_from_cmdline(s);
        assert_eq!(t("console=ttyS0 cowork.token=00ffAb reboot=k"), "00ffAb");
        assert_eq!(t("console=ttyS0"), "");
        assert_eq!(t("cowork.token=zz"), "", "not hex");
        assert_eq!(t(&format!("cowork.token={}", "a".repeat(300))), "");
        assert_eq!(t("xcowork.token=aa"), "");
        assert_eq!(read_token(&b"abc123\n"[..]), "abc123");
        assert_eq!(read_token(&b"abc 123"[..]), "");
    }
}
