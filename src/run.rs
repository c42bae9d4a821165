//! `cowork-microvm run`: one command in a session, driven through the
//! helper protocol exactly as the app drives it, with its output streamed
//! here, this terminal's stdin forwarded, and its exit code returned.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::cli::RunArgs;
use crate::client::{Client, EventStream};
use crate::config::Settings;
use crate::logging::LogControl;
use crate::select::Selection;

const PROCESS_ID: &str = "run-1";

struct MountArg {
    name: String,
    path: PathBuf,
    ro: bool,
}

fn parse_mount(spec: &str) -> Result<MountArg> {
    let mut parts = spec.splitn(3, ':');
    let dir = parts.next().unwrap_or_default();
    let name = parts.next().filter(|n| !n.is_empty());
    let ro = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => bail!("--mount {spec}: mode must be ro or rw, not {other:?}"),
    };
    let path = std::fs::canonicalize(dir)
        .with_context(|| format!("--mount {spec}: cannot resolve {dir:?}"))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into()),
    };
    Ok(MountArg { name, path, ro })
}

/// `--env KEY=VALUE`s as spawn's `env` object.
fn env_block(specs: &[String]) -> Result<Map<String, Value>> {
    let mut env = Map::new();
    for spec in specs {
        match spec.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), Value::String(v.to_string()));
            }
            _ => bail!("--env {spec}: expected KEY=VALUE"),
        }
    }
    Ok(env)
}

/// `--sdk DIR` as installSdk's params: DIR's parent (root-relative, as the
/// app sends paths, when inside the home; absolute otherwise) and its last
/// component as the version.
fn sdk_params(dir: &Path, home: &Path) -> Result<Value> {
    let shown = dir.display();
    let dir =
        std::fs::canonicalize(dir).with_context(|| format!("--sdk {shown}: cannot resolve it"))?;
    if !dir.join("claude").is_file() {
        bail!("--sdk {shown}: {} holds no `claude` binary", dir.display());
    }
    let (Some(parent), Some(version)) = (dir.parent(), dir.file_name()) else {
        bail!("--sdk {shown}: give the version folder that holds `claude`");
    };
    let home = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
    let subpath = if parent.starts_with(&home) {
        parent.strip_prefix("/").unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    };
    Ok(json!({"sdkSubpath": subpath.to_string_lossy(), "version": version.to_string_lossy()}))
}

fn mounts(args: &RunArgs, home: &Path) -> Result<Vec<MountArg>> {
    if !args.mounts.is_empty() {
        return args.mounts.iter().map(|m| parse_mount(m)).collect();
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let home = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
    if cwd.starts_with(&home) && cwd != home {
        return Ok(vec![parse_mount(&cwd.to_string_lossy())?]);
    }
    Ok(Vec::new())
}

pub fn main(args: RunArgs) -> Result<i32> {
    // An in-process helper gives up what `serve` gives up, before anything
    // of ours is open and before the runtime's threads exist (they, and
    // every session process, inherit no-new-privileges from this thread).
    if args.socket.is_none() {
        crate::privileges::close_inherited_descriptors();
    }
    // Before the backend is chosen: its warnings (no isolation on host, a
    // bad config file) go to the terminal.
    crate::logging::init_terminal();
    let settings = Settings::load();
    let own = args
        .socket
        .is_none()
        .then(|| crate::app::choose(&settings, args.backend.as_deref()));
    if let Some(sel) = &own {
        let bwrap = cowork_bwrap_fallback::bwrap::probe::find_on_path("bwrap");
        let privs = crate::privileges::forbid_new_privileges(sel.chosen, bwrap.as_deref());
        tracing::debug!("privilege gain through exec: {privs}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = rt.block_on(run(args, settings, own));
    // The stdin reader may be parked in a blocking read; do not wait for it.
    rt.shutdown_background();
    code
}

/// `own`: the backend chosen for an in-process helper (none with
/// `--socket`, which talks to a running one).
async fn run(args: RunArgs, settings: Settings, own: Option<Selection>) -> Result<i32> {
    let mounts = mounts(&args, &settings.home)?;
    // Checked before any helper starts, so a typo fails at once.
    let sdk = args
        .sdk
        .as_deref()
        .map(|d| sdk_params(d, &settings.home))
        .transpose()?;
    let env = env_block(&args.env)?;
    // In-process helper on a private socket, unless told to use a running one.
    let mut private_dir = None;
    let socket = match (&args.socket, own) {
        (Some(s), _) => s.clone(),
        (None, None) => bail!("no helper to talk to"),
        (None, Some(sel)) => {
            let helper = crate::app::build(&settings, &sel, LogControl::default());
            let dir = tempdir_private()?;
            let path = dir.join("helper.sock");
            let bound = crate::server::bind(&path)?;
            tokio::spawn(async move {
                let h = helper.clone();
                crate::server::accept_loop(h, &bound.listener).await;
            });
            private_dir = Some(dir);
            path
        }
    };
    let extra = Extra { sdk, env };
    let result = session(&args, &socket, &mounts, &extra, private_dir.is_some()).await;
    if let Some(dir) = private_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn tempdir_private() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("cowork-microvm-run-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// What `--sdk` and `--env` add to the session, already checked.
struct Extra {
    sdk: Option<Value>,
    env: Map<String, Value>,
}

async fn session(
    args: &RunArgs,
    socket: &Path,
    mounts: &[MountArg],
    extra: &Extra,
    owns_helper: bool,
) -> Result<i32> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("run-{}", std::process::id()));
    let client = Client::connect(socket).await?;
    client
        .call(
            "configure",
            json!({"userDataName": "cowork-microvm-run", "sessionOnly": true}),
        )
        .await?;
    let mut events = EventStream::subscribe(socket).await?;
    client
        .call("startVM", json!({}))
        .await
        .context("startVM failed")?;
    if let Some(sdk) = &extra.sdk {
        client
            .call("installSdk", sdk.clone())
            .await
            .context("installSdk failed")?;
    }

    let mut additional = Map::new();
    for m in mounts {
        let rel = m.path.strip_prefix("/").unwrap_or(&m.path);
        additional.insert(
            m.name.clone(),
            json!({"path": rel.to_string_lossy(), "mode": if m.ro { "ro" } else { "rw" }}),
        );
    }
    let (command, rest) = args.command.split_first().context("no command given")?;
    let mut spawn = json!({
        "id": PROCESS_ID,
        "name": name,
        "command": command,
        "args": rest,
        "additionalMounts": additional,
    });
    if let Some(first) = mounts.first() {
        spawn["cwd"] = json!(format!("/sessions/{name}/mnt/{}", first.name));
    }
    if !extra.env.is_empty() {
        spawn["env"] = Value::Object(extra.env.clone());
    }
    if !args.allow_domains.is_empty() {
        spawn["allowedDomains"] = json!(args.allow_domains);
    }
    let res = client.call("spawn", spawn).await.context("spawn failed")?;
    if let Some(failed) = res.get("failedMounts").and_then(Value::as_array) {
        for f in failed {
            eprintln!("cowork-microvm: mount refused: {f}");
        }
    }
    let client = std::sync::Arc::new(client);
    tokio::spawn(forward_stdin(client.clone()));
    let code = relay(&mut events, &client).await;
    if owns_helper {
        let _ = client.call("stopVM", json!({})).await;
    }
    code
}

/// Output to this terminal until the process's exit event; Ctrl-C and
/// SIGTERM here are passed on to the session process.
async fn relay(events: &mut EventStream, client: &Client) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev.context("lost the event stream")?,
            _ = int.recv() => { let _ = client.call("kill", json!({"id": PROCESS_ID, "signal": "SIGINT"})).await; continue }
            _ = term.recv() => { let _ = client.call("kill", json!({"id": PROCESS_ID, "signal": "SIGTERM"})).await; continue }
        };
        if !ev.is_for(PROCESS_ID) {
            continue;
        }
        match ev.kind.as_str() {
            "stdout" => {
                let _ = out.write_all(ev.data.unwrap_or_default().as_bytes());
                let _ = out.flush();
            }
            "stderr" => {
                let _ = err.write_all(ev.data.unwrap_or_default().as_bytes());
            }
            "error" => eprintln!("cowork-microvm: {}", ev.message.unwrap_or_default()),
            "exit" => {
                return Ok(match (ev.exit_code, ev.signal.as_deref()) {
                    (Some(c), _) => c,
                    (None, Some(sig)) => {
                        let num = sig
                            .parse::<nix::sys::signal::Signal>()
                            .map(|s| s as i32)
                            .unwrap_or(0);
                        128 + num
                    }
                    (None, None) => 1,
                });
            }
            _ => {}
        }
    }
}

/// Copies this process's stdin to the session process; end of input
/// closes the session's stdin.
async fn forward_stdin(client: std::sync::Arc<Client>) {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    let mut text = cowork_backend::utf8::Utf8Stream::default();
    loop {
        let n = stdin.read(&mut buf).await.unwrap_or(0);
        let data = if n == 0 {
            text.finish()
        } else {
            text.push(&buf[..n])
        };
        let params = json!({"id": PROCESS_ID, "data": data, "eof": n == 0});
        if client.call("writeStdin", params).await.is_err() || n == 0 {
            return;
        }
    }
}
