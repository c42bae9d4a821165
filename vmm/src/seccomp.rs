//! Deny-by-default syscall filters (seccompiler). The VMM's own threads
//! each install theirs before they touch guest input: a vCPU thread before
//! its first KVM_RUN, the device thread before its first epoll wait. A
//! helper serving the kvm backend also confines the whole process (every
//! thread, and mke2fs, the one program it runs) with the broader
//! [`ThreadRole::Helper`] list first; filters stack, so that list holds
//! everything the VMM threads' lists allow.
//!
//! A syscall outside a list fails with EPERM instead of killing the
//! helper: one helper process serves every session, and a vCPU or device
//! thread that trips the filter must end its VM, not the others' work.
//! The lists were taken from the threads' code and strace of the VMM's
//! tests; docs/security.md says what they allow and why.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which of the VMM's threads a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Runs KVM_RUN and the devices' register accesses (MMIO/PIO exits).
    Vcpu,
    /// Serves virtqueues and device backends: virtio-fs passthrough file
    /// work, vsock's Unix sockets, the disk images.
    Devices,
    /// Every thread of a helper serving the kvm backend: the socket server
    /// (tokio), the egress proxy, VM setup, the session disk's mke2fs.
    Helper,
}

/// What a filter does with a syscall outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it with EPERM.
    Enforce,
    /// Let it run and have the kernel log it (`audit: type=1326` in the
    /// kernel log): for finding what a list lacks, never for real use.
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadRole, String),
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadRole, String),
}

// ioctl request numbers the filters name (x86-64 encodings).
const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;

/// Syscalls every VMM thread needs: memory, locks, time, logging, and
/// ending the thread. The clock reads are normally served by the vDSO
/// without a syscall, but not where there is no usable vDSO clock (an
/// emulated machine, some hypervisors): there glibc falls back to the real
/// syscalls, and refusing them breaks every program that reads the time
/// (mke2fs under the inherited helper filter did).
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_time,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_epoll_ctl,
    libc::SYS_exit,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The device thread's work beyond [`COMMON`]: the FUSE passthrough server
/// (files of the shared folders, by descriptor and `*at` calls, and the
/// per-request credential switch it does when run as root), vsock's Unix
/// sockets, the disk images' positioned I/O.
const DEVICES: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_fallocate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getsockopt,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_readlinkat,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_removexattr,
    libc::SYS_renameat2,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setsockopt,
    libc::SYS_setxattr,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlinkat,
    libc::SYS_umask,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_utimensat,
];

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

/// `mmap`/`mprotect`/`mremap` never make memory executable: a thread that
/// only runs already-loaded code has no reason to.
fn no_exec(arg: u8) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let prot_exec = libc::PROT_EXEC as u64;
    Ok(vec![SeccompRule::new(vec![cond(
        arg,
        SeccompCmpOp::MaskedEq(prot_exec),
        0,
    )?])?])
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
        .collect()
}

/// The helper process's work beyond [`COMMON`] and [`DEVICES`]: the tokio
/// runtime, the socket server, the egress proxy (DNS, TCP), creating the
/// VM, starting mke2fs and what mke2fs itself calls. Not in it: mounts,
/// namespaces, ptrace and other processes' memory, module and kexec
/// loading, bpf, perf, keyrings, io_uring, userfaultfd, open_by_handle_at,
/// clock and reboot changes.
const HELPER: &[libc::c_long] = &[
    libc::SYS_access,
    libc::SYS_arch_prctl,
    libc::SYS_capget,
    libc::SYS_chdir,
    libc::SYS_chmod,
    libc::SYS_close_range,
    libc::SYS_dup2,
    libc::SYS_epoll_create1,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fchdir,
    libc::SYS_getcwd,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getppid,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_getsockname,
    libc::SYS_kill,
    libc::SYS_memfd_create,
    libc::SYS_mkdir,
    libc::SYS_newfstatat,
    libc::SYS_open,
    // Every share is opened beneath the home with RESOLVE_BENEATH and
    // RESOLVE_NO_SYMLINKS (cowork_backend::resolve).
    libc::SYS_openat2,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe2,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_readlink,
    libc::SYS_recvmmsg,
    libc::SYS_rename,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sched_getaffinity,
    // The VMM threads stack their own filters on this one (a filter can
    // only be added to, never lifted).
    libc::SYS_seccomp,
    libc::SYS_sendmmsg,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_setpgid,
    libc::SYS_setrlimit,
    libc::SYS_setsid,
    libc::SYS_signalfd4,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_sysinfo,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_uname,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_epoll_pwait2,
];

/// clone(2) in the helper: threads (CLONE_THREAD), or the vfork-style
/// child posix_spawn makes to start mke2fs (CLONE_VM | CLONE_VFORK: the
/// child shares memory and runs only until its execve). A plain fork, a
/// copy of the helper with every session's state, is refused.
fn helper_clone() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let thread = libc::CLONE_THREAD as u64;
    let spawn = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    Ok(vec![
        SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(thread), thread)?])?,
        SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(spawn), spawn)?])?,
    ])
}

/// A filter that answers clone3 with ENOSYS and lets everything else
/// through (the other filters decide): installed with the helper's, so
/// glibc (pthread_create, posix_spawn) falls back to clone(2).
pub fn clone3_enosys() -> Result<BpfProgram, SeccompError> {
    let build = |e: &dyn std::fmt::Display| SeccompError::Build(ThreadRole::Helper, e.to_string());
    let f = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| build(&e))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| build(&e))
}

fn rules(role: ThreadRole) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &sc in COMMON {
        m.insert(sc, vec![]);
    }
    if role == ThreadRole::Helper {
        for &sc in DEVICES.iter().chain(HELPER) {
            m.insert(sc, vec![]);
        }
        // Shared libraries (the resolver's NSS modules, mke2fs's own) are
        // mapped executable; KVM setup and the terminal take many ioctls
        // (the VMM threads' own filters narrow them again).
        for sc in [
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_mremap,
            libc::SYS_ioctl,
            libc::SYS_execve,
            libc::SYS_tgkill,
        ] {
            m.insert(sc, vec![]);
        }
        // Unix sockets (the app, vsock), TCP/UDP (the proxy, DNS), netlink
        // (the resolver's interface query).
        let domains = [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ];
        let domains: Vec<u64> = domains.iter().map(|d| *d as u64).collect();
        m.insert(libc::SYS_socket, one_of(0, &domains)?);
        m.insert(libc::SYS_socketpair, one_of(0, &[libc::AF_UNIX as u64])?);
        m.insert(libc::SYS_clone, helper_clone()?);
        // clone3's flags are in memory a filter cannot read: allowed here,
        // and answered ENOSYS by [`clone3_enosys`] stacked on top, so glibc
        // falls back to clone(2), whose flags are checked.
        m.insert(libc::SYS_clone3, vec![]);
        return Ok(m);
    }
    m.insert(libc::SYS_mmap, no_exec(2)?);
    m.insert(libc::SYS_mprotect, no_exec(2)?);
    // mremap keeps the old protection: allowed as is.
    m.insert(libc::SYS_mremap, vec![]);
    // Signals only to this process (a panic's abort); never kill(2).
    m.insert(libc::SYS_tgkill, one_of(0, &[std::process::id() as u64])?);
    match role {
        ThreadRole::Vcpu => {
            m.insert(libc::SYS_ioctl, one_of(1, &[KVM_RUN])?);
        }
        ThreadRole::Helper => {}
        ThreadRole::Devices => {
            for &sc in DEVICES {
                m.insert(sc, vec![]);
            }
            // vsock's sockets are made non-blocking (std's FIONBIO); std
            // may set close-on-exec by ioctl. The passthrough makes none.
            m.insert(libc::SYS_ioctl, one_of(1, &[FIONBIO, FIOCLEX])?);
            // vsock's host side is Unix sockets, nothing else.
            m.insert(libc::SYS_socket, one_of(0, &[libc::AF_UNIX as u64])?);
            m.insert(libc::SYS_socketpair, one_of(0, &[libc::AF_UNIX as u64])?);
        }
    }
    Ok(m)
}

/// The compiled filter for `role`.
pub fn filter(role: ThreadRole, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let build = |e: &dyn std::fmt::Display| SeccompError::Build(role, e.to_string());
    let mismatch = match mode {
        Mode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
        Mode::Log => SeccompAction::Log,
    };
    let f = SeccompFilter::new(
        rules(role).map_err(|e| build(&e))?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(&e))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| build(&e))
}

/// Installs `role`'s filter on the calling thread (and sets its
/// no-new-privileges bit, which seccomp requires of unprivileged callers).
pub fn install(role: ThreadRole, mode: Mode) -> Result<(), SeccompError> {
    let prog = filter(role, mode)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(role, e.to_string()))?;
    if role == ThreadRole::Helper {
        seccompiler::apply_filter(&clone3_enosys()?)
            .map_err(|e| SeccompError::Install(role, e.to_string()))?;
    }
    Ok(())
}

/// Installs the [`ThreadRole::Helper`] filter on every thread of this
/// process at once; threads started later inherit it.
pub fn install_process_wide(mode: Mode) -> Result<(), SeccompError> {
    let role = ThreadRole::Helper;
    let prog = filter(role, mode)?;
    seccompiler::apply_filter_all_threads(&prog)
        .map_err(|e| SeccompError::Install(role, e.to_string()))?;
    seccompiler::apply_filter_all_threads(&clone3_enosys()?)
        .map_err(|e| SeccompError::Install(role, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread under `role`'s filter.
    fn confined<T: Send + 'static>(role: ThreadRole, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            install(role, Mode::Enforce).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("confined thread panicked"))
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn vcpu_threads_cannot_open_files_fork_or_make_sockets() {
        let (open, sock, fork) = confined(ThreadRole::Vcpu, || {
            // SAFETY: plain syscalls with valid arguments; their results are
            // only inspected.
            unsafe {
                let open = libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
                let open = (open, errno());
                let sock = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let sock = (sock, errno());
                let fork = libc::syscall(libc::SYS_fork);
                (open, sock, (fork, errno()))
            }
        });
        assert_eq!(open, (-1, libc::EPERM), "openat under the vCPU filter");
        assert_eq!(sock, (-1, libc::EPERM), "socket under the vCPU filter");
        assert_eq!(fork, (-1, libc::EPERM), "fork under the vCPU filter");
    }

    #[test]
    fn device_threads_serve_files_and_unix_sockets_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f");
        let results = confined(ThreadRole::Devices, move || {
            let file = std::fs::write(&path, b"x").is_ok();
            let unix = std::os::unix::net::UnixDatagram::unbound().is_ok();
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.raw_os_error());
            // SAFETY: execve of a path that exists, with empty argv/envp;
            // it is expected to be refused before doing anything.
            let exec = unsafe {
                let argv = [std::ptr::null::<libc::c_char>()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), argv.as_ptr())
            };
            let exec = (exec, errno());
            // SAFETY: an anonymous mapping, unmapped on success.
            let wx = unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p != libc::MAP_FAILED {
                    libc::munmap(p, 4096);
                }
                (p == libc::MAP_FAILED, errno())
            };
            (file, unix, tcp.err(), exec, wx)
        });
        assert!(results.0, "file work is allowed on the device thread");
        assert!(results.1, "Unix sockets are allowed on the device thread");
        assert_eq!(
            results.2,
            Some(Some(libc::EPERM)),
            "an inet socket is refused"
        );
        assert_eq!(results.3, (-1, libc::EPERM), "execve is refused");
        assert_eq!(
            results.4,
            (true, libc::EPERM),
            "executable memory is refused"
        );
    }

    /// What a filter does with the forbidden calls each test makes, each
    /// with arguments the kernel would refuse (EINVAL, ENOENT, EBADF) if
    /// the filter let it through, so none of them can fork or exec.
    #[derive(Debug, PartialEq)]
    struct Forbidden {
        fork_like_clone: i32,
        thread_clone: i32,
        clone3: i32,
        execve: i32,
        unknown_ioctl: i32,
        kvm_get_regs: i32,
    }

    fn forbidden_calls() -> Forbidden {
        let rc = |r: libc::c_long| if r == -1 { errno() } else { 0 };
        // SAFETY: each call's arguments are invalid for the kernel (see
        // above) and point at nothing it would write.
        unsafe {
            Forbidden {
                // CLONE_SIGHAND without CLONE_VM: EINVAL once past the filter.
                fork_like_clone: rc(libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_SIGHAND | libc::SIGCHLD,
                    0,
                    0,
                    0,
                    0,
                )),
                // CLONE_THREAD without CLONE_SIGHAND: EINVAL likewise.
                thread_clone: rc(libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_THREAD,
                    0,
                    0,
                    0,
                    0,
                )),
                clone3: rc(libc::syscall(libc::SYS_clone3, 0usize, 0usize)),
                execve: rc(libc::syscall(
                    libc::SYS_execve,
                    c"/nonexistent/cowork-test".as_ptr(),
                    0usize,
                    0usize,
                )),
                unknown_ioctl: rc(libc::syscall(libc::SYS_ioctl, -1, libc::TCGETS, 0usize)),
                // KVM_GET_REGS: a vCPU thread does not read registers.
                kvm_get_regs: rc(libc::syscall(libc::SYS_ioctl, -1, 0x8090_ae81u64, 0usize)),
            }
        }
    }

    #[test]
    fn vmm_threads_cannot_clone_exec_or_make_unknown_ioctls() {
        for role in [ThreadRole::Vcpu, ThreadRole::Devices] {
            let got = confined(role, forbidden_calls);
            let eperm = libc::EPERM;
            assert_eq!(
                got,
                Forbidden {
                    fork_like_clone: eperm,
                    thread_clone: eperm,
                    clone3: eperm,
                    execve: eperm,
                    unknown_ioctl: eperm,
                    kvm_get_regs: eperm,
                },
                "{role:?}"
            );
        }
        // The same calls unfiltered reach the kernel (so EPERM above is the
        // filter's, not the kernel's own answer).
        let open = std::thread::spawn(forbidden_calls).join().ok();
        assert_eq!(
            open.map(|f| (f.fork_like_clone, f.thread_clone, f.execve, f.unknown_ioctl)),
            Some((libc::EINVAL, libc::EINVAL, libc::ENOENT, libc::EBADF))
        );
    }

    #[test]
    fn the_helper_clones_threads_but_never_forks() {
        let got = confined(ThreadRole::Helper, forbidden_calls);
        assert_eq!(got.fork_like_clone, libc::EPERM, "a fork-like clone");
        assert_eq!(got.thread_clone, libc::EINVAL, "a thread clone passes");
        assert_eq!(got.clone3, libc::ENOSYS, "clone3: glibc falls back");
    }

    /// The clock syscalls themselves, bypassing the vDSO (as glibc does
    /// where the vDSO clock is unusable): allowed under every filter.
    #[test]
    fn raw_clock_syscalls_pass_every_filter() {
        for role in [ThreadRole::Vcpu, ThreadRole::Devices, ThreadRole::Helper] {
            let results = confined(role, || {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let mut tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 0,
                };
                let mut t: libc::time_t = 0;
                // SAFETY: each call writes only into the local it is given.
                unsafe {
                    [
                        libc::syscall(libc::SYS_gettimeofday, &mut tv, 0usize),
                        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts),
                        libc::syscall(libc::SYS_clock_getres, libc::CLOCK_MONOTONIC, &mut ts),
                        libc::syscall(libc::SYS_time, &mut t),
                    ]
                }
            });
            let [gtod, gettime, getres, time] = results;
            assert_eq!(gtod, 0, "{role:?}: gettimeofday");
            assert_eq!(gettime, 0, "{role:?}: clock_gettime");
            assert_eq!(getres, 0, "{role:?}: clock_getres");
            // time(2) returns the time itself; a refusal would be -EPERM.
            assert!(time > 0, "{role:?}: time returned {time}");
        }
    }

    #[test]
    fn every_filter_compiles_in_both_modes() {
        for role in [ThreadRole::Vcpu, ThreadRole::Devices, ThreadRole::Helper] {
            for mode in [Mode::Enforce, Mode::Log] {
                assert!(filter(role, mode).is_ok_and(|p| !p.is_empty()));
            }
        }
    }

    /// Filters stack: the helper's must let through every syscall the VMM
    /// threads' filters allow, or those threads would be refused twice over.
    #[test]
    fn the_helper_list_covers_the_vmm_threads_lists() {
        let helper = rules(ThreadRole::Helper).unwrap_or_default();
        for role in [ThreadRole::Vcpu, ThreadRole::Devices] {
            for sc in rules(role).unwrap_or_default().keys() {
                assert!(
                    helper.contains_key(sc),
                    "{role:?} allows syscall {sc}, the helper not"
                );
            }
        }
    }

    /// What a kvm helper does outside its VM threads still works under its
    /// filter: name resolution, TCP both ways, and threads.
    #[test]
    fn the_helper_filter_lets_the_helper_work() {
        let (resolved, tcp, thread) = confined(ThreadRole::Helper, move || {
            use std::net::ToSocketAddrs;
            let resolved = ("localhost", 80)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.next().is_some());
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| {
                let addr = l.local_addr()?;
                let _c = std::net::TcpStream::connect(addr)?;
                l.accept().map(|_| ())
            });
            let thread = std::thread::spawn(|| 7).join().ok();
            // SAFETY: open_how is three integers; zeroes are valid. The
            // path is a NUL-terminated literal; the descriptor returned is
            // closed at once.
            let beneath = unsafe {
                let mut how: libc::open_how = std::mem::zeroed();
                how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
                how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
                let fd = libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    c".".as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                );
                if fd >= 0 {
                    libc::close(fd as libc::c_int);
                }
                fd >= 0 || errno() == libc::ENOSYS
            };
            assert!(beneath, "openat2 beneath a folder: errno {}", errno());
            // The VM's threads confine themselves further under it.
            let stacked = std::thread::spawn(|| install(ThreadRole::Vcpu, Mode::Enforce).is_ok())
                .join()
                .unwrap_or(false);
            assert!(stacked, "a VMM thread's filter stacks on the helper's");
            (resolved, tcp.map_err(|e| e.to_string()), thread)
        });
        assert!(resolved, "localhost resolves");
        assert_eq!(tcp, Ok(()), "TCP listen, connect and accept");
        assert_eq!(thread, Some(7), "threads start and end");
    }

    /// mke2fs, run as the kvm backend runs it (a child inheriting the
    /// helper's filter), starts and formats a disk. Whether it is there is
    /// checked outside the filter, so a refused spawn fails the test
    /// instead of passing for a missing tool.
    #[test]
    #[cfg_attr(not(has_mke2fs), ignore = "needs mke2fs on PATH")]
    fn mke2fs_runs_under_the_helper_filter() {
        let found = std::process::Command::new("mke2fs")
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !crate::prerequisite::require(
            found,
            "mke2fs_runs_under_the_helper_filter",
            "no mke2fs on PATH",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let img = dir.path().join("disk.img");
        let mke2fs = confined(ThreadRole::Helper, move || {
            std::fs::File::create(&img)
                .and_then(|f| f.set_len(64 << 20))
                .and_then(|()| {
                    std::process::Command::new("mke2fs")
                        .args(["-q", "-F", "-t", "ext4"])
                        .arg(&img)
                        .status()
                })
                .map(|s| s.success())
                .map_err(|e| e.to_string())
        });
        assert_eq!(mke2fs, Ok(true), "mke2fs runs under the inherited filter");
    }

    #[test]
    fn the_helper_filter_refuses_mounts_namespaces_and_ptrace() {
        let (mount, unshare, ptrace, file) = confined(ThreadRole::Helper, || {
            // SAFETY: syscalls with valid (or null) arguments; only their
            // results are inspected, and each is expected to be refused.
            unsafe {
                let mount = libc::mount(
                    c"none".as_ptr(),
                    c"/mnt".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
                let mount = (mount, errno());
                let unshare = (libc::unshare(libc::CLONE_NEWUSER), errno());
                let ptrace = libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                let ptrace = (ptrace, errno());
                (
                    mount,
                    unshare,
                    (ptrace.0 as i32, ptrace.1),
                    std::fs::metadata("/").is_ok(),
                )
            }
        });
        assert_eq!(mount, (-1, libc::EPERM));
        assert_eq!(unshare, (-1, libc::EPERM));
        assert_eq!(ptrace, (-1, libc::EPERM));
        assert!(file, "ordinary file work goes on");
    }
}
