//! The proxy offered on a Unix socket, one per sandboxed process, so each
//! process's policy is its own. The socket is bound into the sandbox; the
//! sandbox's forwarder connects to it for every TCP connection it accepts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::policy::Policy;
use crate::proxy::{serve, Outcome};

/// Conversations one process may have open at once.
const MAX_CONVERSATIONS: usize = 256;

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
        let slots = Arc::new(Semaphore::new(MAX_CONVERSATIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let policy = policy.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    let outcome = serve(stream, &policy).await;
                    match &outcome {
                        Outcome::Tunnelled { host, port } | Outcome::Forwarded { host, port } => {
                            tracing::debug!(session = %session, "egress to {host}:{port}")
                        }
                        Outcome::UpstreamFailed { host, error } => {
                            tracing::debug!(session = %session, "egress to {host} failed: {error}")
                        }
                        Outcome::Denied { .. }
                        | Outcome::Blocked { .. }
                        | Outcome::BadRequest(_) => {}
                    }
                    drop(permit);
                });
            }
        });
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
