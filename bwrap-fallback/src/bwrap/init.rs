//! `cowork-microvm sandbox-init`: pid 1 of a bwrap sandbox. It
//! - forwards TCP connections on the sandbox's own loopback to the egress
//!   proxy's Unix socket, so `HTTP(S)_PROXY=http://127.0.0.1:3128` works
//!   in a sandbox that has no network;
//! - runs the session's command in its own process group and forwards the
//!   signals `kill` sends it there (pid 1 ignores signals it has no handler
//!   for, so nothing else would reach the command);
//! - reaps orphans, and when the command ends, records how it ended in the
//!   status file (bwrap can only pass on an exit code) and exits, which
//!   ends every process left in the sandbox's pid namespace.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::net::{TcpListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

/// Where init records the command's end, inside the sandbox, in the form
/// [`crate::process::parse_exit_record`] reads.
pub const STATUS_PATH: &str = "/run/cowork/status";

/// Signals passed on to the command's process group.
const FORWARDED: [Signal; 9] = [
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

/// Pause after a failed accept (EMFILE when the session has used up its
/// descriptors, ENOBUFS...): doubling from the first to the last, reset by
/// a successful accept. Retrying at once would spin pid 1 on a core while
/// the condition lasts.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX)
}

async fn forward(listener: TcpListener, proxy: std::path::PathBuf) {
    let mut pause = Duration::ZERO;
    loop {
        let mut tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                pause = Duration::ZERO;
                tcp
            }
            Err(_) => {
                pause = next_backoff(pause);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Ok(mut unix) = UnixStream::connect(&proxy).await {
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
            }
        });
    }
}

fn record(status: &str) {
    let _ = std::fs::write(STATUS_PATH, status);
}

/// Runs `command` and returns the exit code for this process.
pub fn main(proxy: &Path, listen: &str, command: &[String]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("sandbox-init: no command");
        return 127;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbox-init: {e}");
            return 127;
        }
    };
    rt.block_on(async {
        match TcpListener::bind(listen).await {
            Ok(l) => {
                tokio::spawn(forward(l, proxy.to_path_buf()));
            }
            Err(e) => eprintln!("cowork sandbox: egress proxy unavailable on {listen}: {e}"),
        }
        // Handlers first, so nothing sent after the command starts is lost.
        let mut streams = Vec::new();
        for s in FORWARDED {
            if let Ok(st) = signal(SignalKind::from_raw(s as i32)) {
                streams.push((s, st));
            }
        }
        let Ok(mut chld) = signal(SignalKind::child()) else {
            return 127;
        };
        let child = match std::process::Command::new(program)
            .args(args)
            .process_group(0)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{program}: {e}");
                record("exit 127");
                return 127;
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        // The status arrives through waitpid below, not through `child`.
        std::mem::forget(child);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Signal>();
        for (sig, mut st) in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while st.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        loop {
            // Reap everything that has ended: the command, and orphans that
            // were re-parented to us.
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p == pid => {
                        record(&format!("exit {code}"));
                        return code;
                    }
                    Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                        record(&format!("signal {}", sig.as_str()));
                        return 128 + sig as i32;
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            tokio::select! {
                _ = chld.recv() => {}
                Some(sig) = rx.recv() => { let _ = killpg(pid, sig); }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            d = next_backoff(d);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
