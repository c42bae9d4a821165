//! The command under pid 1: started in its own process group, sent the
//! signals pid 1 receives, waited for while orphans are reaped, and its end
//! recorded. Signals are blocked and taken synchronously with `sigwait`,
//! so there are no handlers and nothing can be lost between checks.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::sys::signal::{killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals passed on to the command's process group.
pub const FORWARDED: [Signal; 9] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
];

/// Blocks the forwarded signals and SIGCHLD in this thread (and so in
/// every thread started after), leaving them pending for [`run_command`].
/// Blocked before the command starts, so nothing sent after is lost.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    Ok(set)
}

fn record(status_path: &Path, status: &str) {
    let _ = std::fs::write(status_path, status);
}

/// Runs `command` (program and arguments) and returns the exit code for
/// this process: the command's, or 128 + the signal that ended it.
pub fn run_command(command: &[OsString], signals: &SigSet, status_path: &Path) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("sandbox-init: no command");
        return 127;
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).process_group(0);
    // The command must not inherit the blocked set: it would never see the
    // signals forwarded to it. std does not reset the mask on every path.
    // SAFETY: runs in the forked child before exec; sigprocmask is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", program.to_string_lossy());
            record(status_path, "exit 127");
            return 127;
        }
    };
    let Ok(raw) = i32::try_from(child.id()) else {
        return 127;
    };
    let pid = Pid::from_raw(raw);
    // The status arrives through waitpid below, not through `child`.
    drop(child);
    loop {
        // Reap everything that has ended: the command, and orphans that
        // were re-parented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => {
                    record(status_path, &format!("exit {code}"));
                    return code;
                }
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                    record(status_path, &format!("signal {}", sig.as_str()));
                    return 128 + sig as i32;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            // Cannot happen with a valid set; a pause keeps pid 1 from
            // spinning should it ever.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Ok(sig) => {
                let _ = killpg(pid, sig);
            }
        }
    }
}
