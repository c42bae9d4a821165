//! The one error type every backend operation returns. Its `Display` text is
//! what the desktop app shows, so each message names the cause and, where
//! there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the session environment is not running: call startVM first")]
    NotRunning,
    #[error("backend {backend} is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("no process with id {0:?}")]
    NoSuchProcess(String),
    #[error("process {0:?} is not running")]
    ProcessNotRunning(String),
    #[error("a process with id {0:?} is already running")]
    DuplicateProcess(String),
    #[error("too many processes: at most {0} may run at once")]
    TooManyProcesses(usize),
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("path {path:?} escapes mount {mount:?}")]
    Escape { path: String, mount: String },
    #[error("path {path:?} names mount {mount:?}, which session {session:?} does not have")]
    UnknownMount {
        path: String,
        mount: String,
        session: String,
    },
    #[error("path {path:?} is not allowed: {reason}")]
    PathNotAllowed { path: String, reason: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("file {path:?} is {size} bytes, over the {limit}-byte limit of readFile")]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("the SDK binary {0:?} does not exist or is not executable: run installSdk with a valid sdkSubpath and version")]
    SdkMissing(PathBuf),
    #[error("{0:?} is the Claude Code agent, but no SDK is installed: call installSdk {{sdkSubpath, version}} first (the folder <sdkSubpath>/<version> must hold the `claude` binary)")]
    SdkNotInstalled(String),
    #[error("no pending guest request with id {0:?}")]
    NoPendingRequest(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        BackendError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;
