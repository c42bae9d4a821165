//! The guest's egress: one vsock transport carries every session's proxy
//! conversations, so each process gets its own credential in its
//! `HTTP(S)_PROXY` URL and the host proxy maps it to that process's
//! `allowedDomains` (no credential, or an unknown one: 407).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cowork_backend::{BackendError, Result};
use cowork_egress::policy::Policy;

/// Credential → (process id, its policy).
#[derive(Default)]
pub struct EgressPolicies(Mutex<HashMap<String, (String, Arc<Policy>)>>);

impl EgressPolicies {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Arc<Policy>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, token: Option<&str>) -> Option<Arc<Policy>> {
        self.lock().get(token?).map(|(_, p)| p.clone())
    }

    /// Forgets the credentials of processes for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|_, (id, _)| keep(id));
    }
}

/// A fresh unguessable credential (128 bits, hex).
pub fn random_token() -> Result<String> {
    use std::io::Read;
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| BackendError::io("cannot read /dev/urandom", e))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves the guest's egress connections (its forwarder dials the host's
/// egress port over vsock) with each process's own policy.
pub async fn serve(listener: tokio::net::UnixListener, policies: Arc<EgressPolicies>) {
    // The egress crate's loop: a shared slot only until the request head
    // names the session, then the session's own cap, so one session's
    // connections cannot starve another's.
    cowork_egress::listener::serve_connections(
        listener,
        move |token| policies.find(token),
        cowork_egress::limits::Limits::default(),
        "VM".into(),
    )
    .await
}
