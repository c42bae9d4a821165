//! The kvm backend: sessions in a microVM on the in-process VMM
//! (`cowork-vmm`), run by the guest agent (`cowork-guest`) over
//! virtio-vsock.
//!
//! - [`lifecycle`]: startVM/stopVM, one at a time; the agent's handshake;
//!   the watcher that notices the guest's own end.
//! - [`agent_link`]: the helper's end of the agent's channel.
//! - [`sessions`]: which process belongs to which session, each session's
//!   guest user and mounts, and what goes when a session's last process
//!   ends.
//! - [`shares`]: host folders exported over virtio-fs and mounted for a
//!   session (or the SDK for all).
//! - [`egress`]: per-process proxy credentials over the vsock transport.
//! - [`session_disk`], [`console`], [`probe`]: the per-profile disk, the
//!   bounded console log, and whether this machine can run the backend.
//!
//! The VMM library knows nothing of the protocol: everything session-shaped
//! lives here.

pub mod agent_link;
mod backend;
pub mod console;
pub mod egress;
pub mod lifecycle;
pub mod probe;
mod protected_ids;
pub mod session_disk;
pub mod sessions;
pub mod shares;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cowork_backend::{BackendError, EventBus, Result};

use agent_link::{AgentLink, Reply};

/// The guest's kernel command line (the agent token is added per boot).
pub const GUEST_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro rootfstype=ext4 init=/sbin/init";
/// Where the SDK folder appears in the guest (on tmpfs: the rootfs is
/// read-only); `claude` resolves to the binary in it.
pub const SDK_GUEST: &str = "/run/cowork/sdk";

/// What the guest boots on: the VM, or (tests) the agent as a process on
/// this machine connected over a Unix socket, which drives the same
/// session logic without KVM.
#[derive(Debug, Clone)]
pub enum Machine {
    Vm {
        seccomp: Option<cowork_vmm::seccomp::Mode>,
    },
    AgentProcess {
        agent: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct KvmConfig {
    /// The guest image (kernel, rootfs, manifest).
    pub images: PathBuf,
    /// The backend's own state: session disks, sockets, console log.
    pub data: PathBuf,
    /// Mount sources must be inside it, as on the other backends.
    pub home: PathBuf,
    pub machine: Machine,
    /// Whether the protected paths of read-write shares stay read-only.
    pub protection: cowork_backend::protected::Protection,
}

pub struct KvmBackend {
    cfg: KvmConfig,
    bus: EventBus,
    state: Arc<Mutex<lifecycle::State>>,
    egress: Arc<egress::EgressPolicies>,
    /// startVM and stopVM one at a time: a stop racing a start waits for
    /// it, then stops what it started.
    life: tokio::sync::Mutex<()>,
    /// Exports and unexports one at a time (spawn, mountPath, and the
    /// clean-up after a session's last process).
    share_ops: Arc<tokio::sync::Mutex<()>>,
}

/// An agent request's outcome in the backend's terms: its refusal or a
/// lost channel become errors; any other answer is the caller's to match.
fn agent_answer(what: &'static str, r: std::result::Result<Reply, String>) -> Result<Reply> {
    match r {
        Ok(Reply::Failed(e)) => Err(BackendError::invalid(what, e)),
        Ok(reply) => Ok(reply),
        Err(e) => Err(unavailable(e)),
    }
}

fn unexpected(what: &'static str, reply: Reply) -> BackendError {
    BackendError::invalid(what, format!("unexpected answer {reply:?}"))
}

fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: "kvm".into(),
        reason: reason.into(),
    }
}

impl KvmBackend {
    pub fn new(cfg: KvmConfig, bus: EventBus) -> Self {
        Self {
            cfg,
            bus,
            state: Arc::default(),
            egress: Arc::default(),
            life: tokio::sync::Mutex::new(()),
            share_ops: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lifecycle::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live agent link, or why there is none.
    fn link(&self) -> Result<Arc<AgentLink>> {
        let st = self.lock();
        st.link.clone().filter(|l| l.is_alive()).ok_or_else(|| {
            if st.is_running() {
                unavailable("the guest agent is not connected")
            } else {
                BackendError::NotRunning
            }
        })
    }
}
