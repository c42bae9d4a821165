//! Logs to stderr (which the app appends to its own log) and to the
//! helper's own file, where users and maintainers look first. Lifecycle
//! lines are `info`; `debug` is on with COWORK_VM_DEBUG=1 or the
//! `setDebugLogging` method. Nothing logs an env block or a token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter};

/// A log file past this size is moved to `<name>.1` at start-up.
const ROTATE_AT: u64 = 10 * 1024 * 1024;

/// Switches debug logging at run time.
#[derive(Clone, Default)]
pub struct LogControl {
    set: Option<Arc<dyn Fn(bool) + Send + Sync>>,
}

impl LogControl {
    pub fn set_debug(&self, on: bool) {
        if let Some(f) = &self.set {
            f(on);
        }
        tracing::info!("debug logging {}", if on { "on" } else { "off" });
    }
}

fn filter(debug: bool) -> EnvFilter {
    EnvFilter::new(if debug { "debug" } else { "info" })
}

pub fn env_debug() -> bool {
    matches!(
        std::env::var("COWORK_VM_DEBUG").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// `~/.config/Claude/logs/cowork_vm_daemon.log`, or COWORK_VM_LOG_FILE
/// (empty: no file).
pub fn log_file_path(home: &Path) -> Option<PathBuf> {
    match std::env::var_os("COWORK_VM_LOG_FILE") {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(home.join(".config/Claude/logs/cowork_vm_daemon.log")),
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path)
        .map(|m| m.len() > ROTATE_AT)
        .unwrap_or(false)
    {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Installs the global subscriber. Returns the control for
/// `setDebugLogging`; a file that cannot be opened is reported on stderr
/// and logging goes on without it.
pub fn init(log_file: Option<&Path>) -> LogControl {
    init_with(filter(env_debug()), log_file)
}

/// Warnings only, to stderr: for commands at a terminal (`run`).
pub fn init_terminal() {
    let _ = init_with(
        EnvFilter::new(if env_debug() { "debug" } else { "warn" }),
        None,
    );
}

fn init_with(initial: EnvFilter, log_file: Option<&Path>) -> LogControl {
    let (filter_layer, handle) = reload::Layer::new(initial);
    let file = log_file.and_then(|p| match open_log(p) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("cowork-microvm: cannot open log file {}: {e}", p.display());
            None
        }
    });
    let file_layer = file.map(|f| fmt::layer().with_ansi(false).with_writer(Mutex::new(f)));
    let stderr_layer = fmt::layer().with_ansi(false).with_writer(std::io::stderr);
    let installed = tracing_subscriber::registry()
        .with(filter_layer)
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .is_ok();
    install_panic_hook();
    if !installed {
        return LogControl::default();
    }
    LogControl {
        set: Some(Arc::new(move |on| {
            let _ = handle.modify(|f| *f = filter(on));
        })),
    }
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        default(info);
    }));
}
