//! The backend the helper serves with when the backend asked for cannot run
//! here: the helper still answers every method, and `startVM` (which the app
//! shows as a boot failure) says exactly why and how to fix it. It never
//! falls back to running sessions unisolated behind the user's back.

use async_trait::async_trait;
use cowork_backend::api::*;
use cowork_backend::{BackendError, Result};
use nix::sys::signal::Signal;

pub struct UnavailableBackend {
    pub name: &'static str,
    pub reason: String,
}

impl UnavailableBackend {
    fn err(&self) -> BackendError {
        BackendError::Unavailable {
            backend: self.name.to_string(),
            reason: self.reason.clone(),
        }
    }
}

#[async_trait]
impl Backend for UnavailableBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn configure(&self, _: &VmConfig) -> Result<()> {
        Ok(())
    }
    async fn create_vm(&self, _: CreateRequest) -> Result<()> {
        Err(self.err())
    }
    async fn start(&self, _: StartRequest) -> Result<()> {
        Err(self.err())
    }
    async fn stop(&self) -> Result<()> {
        Ok(())
    }
    fn is_running(&self) -> bool {
        false
    }
    fn is_guest_connected(&self) -> bool {
        false
    }
    async fn spawn(&self, _: SpawnRequest) -> Result<SpawnResult> {
        Err(self.err())
    }
    async fn kill(&self, id: &str, _: Signal) -> Result<()> {
        Err(BackendError::NoSuchProcess(id.into()))
    }
    async fn write_stdin(&self, id: &str, _: String, _: bool) -> Result<()> {
        Err(BackendError::NoSuchProcess(id.into()))
    }
    fn process_status(&self, id: &str) -> Result<ProcessStatus> {
        Err(BackendError::NoSuchProcess(id.into()))
    }
    async fn read_file(&self, _: &str, _: &str) -> Result<String> {
        Err(self.err())
    }
    async fn mount_path(&self, _: MountPathRequest) -> Result<MountPathResult> {
        Err(self.err())
    }
    async fn install_sdk(&self, _: &str, _: &str) -> Result<()> {
        Err(self.err())
    }
    fn add_oauth_token(&self, _: String) {}
    async fn sessions_disk_info(&self, _: u64) -> Result<DiskInfo> {
        Err(self.err())
    }
    async fn delete_session_dirs(&self, _: Vec<String>) -> Result<DeleteResult> {
        Err(self.err())
    }
    async fn prune_session_caches(&self, _: PruneRequest) -> Result<PruneResult> {
        Err(self.err())
    }
    async fn send_guest_response(
        &self,
        id: &str,
        _: Option<String>,
        _: Option<String>,
    ) -> Result<()> {
        Err(BackendError::NoPendingRequest(id.into()))
    }
}
