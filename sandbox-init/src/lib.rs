//! pid 1 of a bwrap sandbox. It
//! - forwards TCP connections on the sandbox's own loopback to the egress
//!   proxy's Unix socket, so `HTTP(S)_PROXY=http://127.0.0.1:3128` works
//!   in a sandbox that has no network ([`relay`]);
//! - runs the session's command in its own process group and forwards the
//!   signals `kill` sends it there (pid 1 ignores signals it has no handler
//!   for, so nothing else would reach the command) ([`supervise`]);
//! - reaps orphans, and when the command ends, records how it ended in the
//!   status file (bwrap can only pass on an exit code) and exits, which
//!   ends every process left in the sandbox's pid namespace.
//!
//! It is its own small binary rather than the helper re-executed: every
//! spawn in a sandbox starts it, and a few hundred kilobytes with no async
//! runtime load and start far faster than the multi-megabyte helper. The
//! helper's `sandbox-init` subcommand runs this same code when the small
//! binary is missing.

pub mod args;
pub mod relay;
pub mod supervise;

use std::ffi::OsString;

pub use args::Options;

/// Where init records the command's end, inside the sandbox, as
/// `exit N` or `signal NAME`.
pub const STATUS_PATH: &str = "/run/cowork/status";

/// What the binary does with its arguments (without the program name):
/// the exit code for this process.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    match args::parse(args) {
        Ok(opts) => run(&opts),
        Err(e) => {
            eprintln!("sandbox-init: {e}");
            eprintln!("usage: {}", args::USAGE);
            127
        }
    }
}

/// Runs the sandbox as pid 1 and returns the exit code for this process.
/// Must be called before any other thread exists: the signal mask set
/// here has to be inherited by every thread of the process.
pub fn run(opts: &Options) -> i32 {
    close_inherited();
    let signals = match supervise::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandbox-init: cannot block signals: {e}");
            return 127;
        }
    };
    relay::start(&opts.listen, &opts.proxy);
    supervise::run_command(&opts.command, &signals, STATUS_PATH.as_ref())
}

/// Closes every descriptor above stderr that init was started with. bwrap
/// closes the share descriptors it mounted (`--bind-fd`) itself; this makes
/// sure none reaches the session even if it did not: a directory
/// descriptor of a share's host folder would let the session open `..`
/// from it, out of the sandbox. Init has opened nothing yet when this runs.
fn close_inherited() {
    // SAFETY: close_range only closes descriptors; nothing in this process
    // holds one above 2 yet (run() calls this first). ENOSYS (kernel before
    // 5.9) leaves them to bwrap, which closes them already.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            3 as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            0 as nix::libc::c_uint,
        );
    }
}
