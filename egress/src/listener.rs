//! The proxy offered on a Unix socket: one per sandboxed process for bwrap
//! (so each process's policy is its own; the socket is bound into the
//! sandbox and its forwarder connects to it for every TCP connection it
//! accepts), or one for a whole VM, whose sessions the credential tells
//! apart ([`serve_connections`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::dial::SystemResolver;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::proxy::{serve_limited, Outcome};

pub struct EgressListener {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl EgressListener {
    pub fn bind(path: &Path, policy: Policy, session: String) -> std::io::Result<EgressListener> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let policy = Arc::new(policy);
        // The socket is this process's alone, so every connection is its
        // session's whatever credential it sends.
        let task = tokio::spawn(serve_connections(
            listener,
            move |_| Some(policy.clone()),
            Limits::default(),
            session.into(),
        ));
        Ok(EgressListener {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EgressListener {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves every connection `listener` accepts, each with the policy
/// `choose` picks for its proxy credential, under `limits`: at most
/// `limits.unidentified` connections waiting for their request head at
/// once (all sessions together: before the head nobody is known), each for
/// at most `limits.head_deadline`; once identified a conversation counts
/// against its own session's `limits.per_session` instead. `label` names
/// the sessions' owner in logs.
pub async fn serve_connections<F>(
    listener: UnixListener,
    choose: F,
    limits: Limits,
    label: Arc<str>,
) where
    F: Fn(Option<&str>) -> Option<Arc<Policy>> + Send + Sync + 'static,
{
    let unidentified = Arc::new(Semaphore::new(limits.unidentified));
    let choose = Arc::new(choose);
    loop {
        // Taken before accepting: when every slot waits for a head, new
        // connections wait in the socket's backlog, in order, and a slow
        // client is cut off at the head deadline, so a waiting one is let
        // in within that.
        let Ok(slot) = unidentified.clone().acquire_owned().await else {
            break;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or a passing error: keep serving.
                tracing::debug!("egress ({label}): accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let choose = choose.clone();
        let label = label.clone();
        tokio::spawn(async move {
            let outcome =
                serve_limited(stream, |t| choose(t), &SystemResolver, &limits, Some(slot)).await;
            match &outcome {
                Outcome::Tunnelled { host, port } | Outcome::Forwarded { host, port } => {
                    tracing::debug!(session = %label, "egress to {host}:{port}")
                }
                Outcome::UpstreamFailed { host, error } => {
                    tracing::debug!(session = %label, "egress to {host} failed: {error}")
                }
                Outcome::Denied { .. }
                | Outcome::Blocked { .. }
                | Outcome::PortDenied { .. }
                | Outcome::TooMany
                | Outcome::HeadTimedOut
                | Outcome::BadRequest(_) => {}
            }
        });
    }
}
