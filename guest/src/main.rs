//! `cowork-guest`: the agent. As PID 1 in the VM it sets the machine up,
//! runs itself as the agent in a child process, reaps orphans and reboots
//! when the agent is done. Run by hand (`--unix PATH`) it serves a host on
//! a Unix socket, which is how its behaviour is tested without a VM.

use std::path::PathBuf;
use std::time::Duration;

use cowork_guest::agent::{self, Config, End};
use cowork_guest::forward::{Channel, HostEnd};
use cowork_guest::{confine, init, session_ns, wire};

const USAGE: &str =
    "usage: cowork-guest [--unix PATH] [--egress-unix PATH] [--read-file-limit BYTES] [--sessions-root DIR]";
/// readFile's ceiling: its reply must fit one host protocol frame.
const READ_FILE_LIMIT: u64 = 4 * 1024 * 1024;

struct Args {
    host: HostEnd,
    egress: HostEnd,
    read_file_limit: u64,
    sessions_root: PathBuf,
    agent_child: bool,
    /// Test only (hidden): confine processes as in the VM, with every
    /// path of the layout under this directory.
    confine_root: Option<PathBuf>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        host: HostEnd::Vsock {
            cid: 2,
            port: wire::AGENT_PORT,
        },
        egress: HostEnd::Vsock {
            cid: 2,
            port: wire::EGRESS_PORT,
        },
        read_file_limit: READ_FILE_LIMIT,
        sessions_root: PathBuf::from(init::SESSION_ROOT),
        agent_child: false,
        confine_root: None,
    };
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--unix" => a.host = HostEnd::Unix(PathBuf::from(value()?)),
            "--egress-unix" => a.egress = HostEnd::Unix(PathBuf::from(value()?)),
            "--read-file-limit" => {
                a.read_file_limit = value()?
                    .parse()
                    .map_err(|_| format!("--read-file-limit takes bytes\n{USAGE}"))?
            }
            "--sessions-root" => a.sessions_root = PathBuf::from(value()?),
            "--agent" => a.agent_child = true,
            "--confine-test-root" => a.confine_root = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// Connects to the host with back-off (100 ms doubling to 2 s) and serves
/// it; reconnects after a drop until the host asks for shutdown.
async fn run_agent(args: Args, in_vm: bool, token: String) {
    let confine = match (&args.confine_root, in_vm) {
        (Some(dir), _) => Some(confine::Layout::under(dir)),
        (None, true) => Some(confine::Layout::vm()),
        (None, false) => None,
    };
    let sessions_root = match &confine {
        Some(l) => l.sessions_root.clone(),
        None => args.sessions_root.clone(),
    };
    if in_vm || confine.is_some() {
        // PID 1 made the agent exempt already (inherited); said again in
        // case it could not.
        if let Err(e) = cowork_guest::oom::protect_self() {
            eprintln!("cowork-guest: agent still an OOM victim: {e}");
        }
    }
    if let Some(layout) = &confine {
        // Without it the sessions would see too much: serve nobody.
        if let Err(e) = confine::prepare_agent(layout) {
            eprintln!("cowork-guest: cannot confine sessions: {e}");
            std::process::exit(1);
        }
    }
    // Confined, each session has its own loopback with its own egress
    // listener (none in the agent's namespace: no session is there).
    let namespaces = match &confine {
        Some(_) => match wire::EGRESS_LISTEN.parse() {
            Ok(listen) => Some(std::sync::Arc::new(session_ns::Registry::new(
                listen,
                args.egress.clone(),
            ))),
            Err(e) => {
                eprintln!("cowork-guest: {}: {e}", wire::EGRESS_LISTEN);
                std::process::exit(1);
            }
        },
        None => None,
    };
    let cfg = Config {
        read_file_limit: args.read_file_limit,
        in_vm,
        sessions_root,
        confine,
        namespaces,
        token,
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match args.host.connect().await {
            Ok(ch) => {
                delay = Duration::from_millis(100);
                let end = match ch {
                    Channel::Vsock(s) => agent::serve(s, cfg.clone()).await,
                    Channel::Unix(s) => agent::serve(s, cfg.clone()).await,
                };
                if end == End::Shutdown || !in_vm {
                    return;
                }
            }
            Err(e) if !in_vm => {
                eprintln!(
                    "cowork-guest: cannot reach the host at {:?}: {e}",
                    args.host
                );
                std::process::exit(2);
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cowork-guest: {e}");
            std::process::exit(2);
        }
    };
    // PID 1 of the VM: started by the kernel with no arguments. Run by hand
    // (or as PID 1 of a test's PID namespace) it must not touch the
    // machine's settings.
    let pid1 = std::process::id() == 1
        && args.confine_root.is_none()
        && matches!(args.host, HostEnd::Vsock { .. });
    if pid1 {
        init::signal_boot_timer();
        for p in init::early_init() {
            eprintln!("cowork-guest: {p}");
        }
        // Losing PID 1 (or the agent, which inherits this) to the OOM
        // killer would end the VM: let it pick a session's process.
        if let Err(e) = cowork_guest::oom::protect_self() {
            eprintln!("cowork-guest: {e}");
        }
        // The agent runs as a child so that PID 1 is free to reap every
        // orphan without stealing the agent's own children's statuses.
        let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/sbin/init"));
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let token = init::token_from_cmdline(&cmdline);
        // The token goes to the agent alone, on a pipe as its stdin: not
        // in its environment or arguments, which other processes can read.
        let agent = std::process::Command::new(me)
            .arg("--agent")
            .stdin(std::process::Stdio::piped())
            .spawn();
        match agent {
            Ok(mut child) => {
                if let Some(mut pipe) = child.stdin.take() {
                    use std::io::Write;
                    let _ = pipe.write_all(token.as_bytes());
                }
                println!("cowork-guest: ready (agent pid {})", child.id());
                let code = init::reap_until(nix::unistd::Pid::from_raw(child.id() as i32));
                println!("cowork-guest: agent ended ({code}); rebooting");
            }
            Err(e) => eprintln!("cowork-guest: cannot start the agent: {e}"),
        }
        init::power_off();
    }
    let in_vm = args.agent_child;
    // In the VM, PID 1 hands the token on the agent's stdin; run by hand
    // (a host testing its session logic) it comes from the environment.
    let token = if in_vm {
        init::read_token(std::io::stdin())
    } else {
        std::env::var(wire::TOKEN_ENV).unwrap_or_default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cowork-guest: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(run_agent(args, in_vm, token));
}
