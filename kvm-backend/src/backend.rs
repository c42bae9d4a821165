//! The protocol's methods on the kvm backend.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cowork_backend::api::*;
use cowork_backend::{BackendError, Result};
use cowork_egress::policy::Policy;
use cowork_guest::wire::HostMsg;
use nix::sys::signal::Signal;

use crate::agent_link::Reply;
use crate::shares::Owner;
use crate::{agent_answer, egress, unexpected, KvmBackend, SDK_GUEST};

/// readFile's limit in the guest, as on the other backends.
const READ_FILE_LIMIT: u64 = 4 * 1024 * 1024;
const GUEST_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// The command the guest runs: the agent (any command named `claude`, as
/// the app's `/usr/local/bin/claude`) is the SDK's binary in its share,
/// which installSdk must have named; anything else runs as given.
fn guest_command(command: &str, sdk: bool) -> Result<String> {
    let sdk = sdk.then(|| Path::new(SDK_GUEST).join(cowork_backend::agent::AGENT_NAME));
    Ok(
        match cowork_backend::agent::agent_binary(command, sdk.as_deref())? {
            Some(bin) => bin.display().to_string(),
            None => command.to_string(),
        },
    )
}

impl KvmBackend {
    /// The session disk's bookkeeping runs in the guest where it is
    /// mounted, by the same rules as the other backends'.
    async fn session_disk<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        args: serde_json::Value,
    ) -> Result<T> {
        let link = self.link()?;
        let op = op.to_string();
        let answer = link
            .request(|req| HostMsg::Sessions { req, op, args })
            .await;
        match agent_answer("session disk", answer)? {
            Reply::Json(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BackendError::invalid("session disk", e.to_string())),
            other => Err(unexpected("session disk", other)),
        }
    }

    /// Sessions with a spawn under way or a running process: their
    /// directories are in use.
    fn active_sessions(&self) -> Vec<String> {
        let st = self.lock();
        let Some(link) = st.link.clone() else {
            return Vec::new();
        };
        st.sessions
            .active(|id| link.status(id).is_some_and(|s| s.running))
    }

    async fn spawn_in(&self, r: &SpawnRequest) -> Result<SpawnResult> {
        let link = self.link()?;
        let home = format!("/sessions/{}", r.name);
        let (token, sdk) = {
            let st = self.lock();
            (st.token.clone(), st.sdk.is_some())
        };
        // This process's egress credential: the guest forwarder passes the
        // proxy conversation through unchanged, the host proxy maps the
        // credential to this session's allowedDomains.
        let (policy, rejected) = Policy::new(r.allowed_domains.as_deref().unwrap_or(&[]));
        if !rejected.is_empty() {
            tracing::warn!(session = %r.name, "allowedDomains entries ignored: {}", rejected.join(", "));
        }
        let credential = egress::random_token()?;
        {
            let mut policies = self.egress.lock();
            policies.retain(|_, (id, _)| *id != r.id && link.status(id).is_some_and(|s| s.running));
            policies.insert(credential.clone(), (r.id.clone(), Arc::new(policy)));
        }
        let proxy = format!(
            "http://cowork:{credential}@{}",
            cowork_guest::wire::EGRESS_LISTEN
        );
        let command = guest_command(&r.command, sdk)?;
        // A process that looks itself up by name finds the SDK's first.
        let path = if sdk {
            format!("{SDK_GUEST}:{GUEST_PATH}")
        } else {
            GUEST_PATH.to_string()
        };
        let base = [
            ("HOME".to_string(), home.clone()),
            ("PATH".to_string(), path),
            // The image's locale (nothing in the guest reads
            // /etc/default/locale); the app's env may say otherwise.
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("HTTP_PROXY".to_string(), proxy.clone()),
            ("HTTPS_PROXY".to_string(), proxy.clone()),
            ("http_proxy".to_string(), proxy.clone()),
            ("https_proxy".to_string(), proxy),
            ("NO_PROXY".to_string(), "localhost,127.0.0.1".to_string()),
            ("no_proxy".to_string(), "localhost,127.0.0.1".to_string()),
        ];
        let token = r.oauth_token.as_deref().or(token.as_deref());
        let env = cowork_backend::spawn_env::session_env(base, &r.env, token);
        let mut failed_mounts = Vec::new();
        let mut first = None;
        for (name, spec) in &r.additional_mounts {
            match self.share(&link, &r.name, name, spec).await {
                Ok(guest) => {
                    first.get_or_insert(guest);
                }
                Err(e) => failed_mounts.push(FailedMount {
                    name: name.clone(),
                    path: spec.path.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let cwd = r.cwd.clone().or(first).unwrap_or(home);
        link.spawn(
            &r.id,
            command,
            r.args.clone(),
            env.into_iter().collect(),
            Some(cwd),
            Some(r.name.clone()),
        )
        .await
        .map_err(|e| BackendError::invalid("spawn", e))?;
        Ok(SpawnResult { failed_mounts })
    }
}

#[async_trait]
impl Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    async fn configure(&self, config: &VmConfig) -> Result<()> {
        if let Some(name) = &config.user_data_name {
            cowork_backend::session_data::validate_name("userDataName", name)?;
        }
        let mut st = self.lock();
        st.mem_mib = config.memory_mb.or(st.mem_mib);
        st.cpus = config.cpu_count.or(st.cpus);
        // The profile's session disk is the one the next start boots with.
        if config.user_data_name.is_some() {
            st.profile = config.user_data_name.clone();
        }
        Ok(())
    }

    async fn create_vm(&self, _request: CreateRequest) -> Result<()> {
        Ok(())
    }

    async fn start(&self, req: StartRequest) -> Result<()> {
        self.start_machine(req).await
    }

    async fn stop(&self) -> Result<()> {
        self.stop_machine().await
    }

    fn is_running(&self) -> bool {
        self.lock().is_running()
    }

    fn is_guest_connected(&self) -> bool {
        let st = self.lock();
        st.is_running() && st.link.as_ref().is_some_and(|l| l.is_alive())
    }

    async fn spawn(&self, r: SpawnRequest) -> Result<SpawnResult> {
        cowork_backend::session_data::validate_name("processName", &r.name)?;
        self.lock().sessions.begin_spawn(&r.name, &r.id);
        let result = self.spawn_in(&r).await;
        self.lock()
            .sessions
            .end_spawn(&r.name, &r.id, result.is_ok());
        result
    }

    async fn kill(&self, id: &str, sig: Signal) -> Result<()> {
        let link = self.link()?;
        if link.status(id).is_none() {
            return Err(BackendError::NoSuchProcess(id.into()));
        }
        link.kill(id, sig as i32)
            .await
            .map_err(|_| BackendError::ProcessNotRunning(id.into()))
    }

    async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()> {
        let link = self.link()?;
        if link.status(id).is_none() {
            return Err(BackendError::NoSuchProcess(id.into()));
        }
        link.write_stdin(id, data.as_bytes(), eof)
            .await
            .map_err(|_| BackendError::ProcessNotRunning(id.into()))
    }

    fn process_status(&self, id: &str) -> Result<ProcessStatus> {
        self.lock()
            .link
            .as_ref()
            .and_then(|l| l.status(id))
            .ok_or_else(|| BackendError::NoSuchProcess(id.into()))
    }

    async fn read_file(&self, session: &str, path: &str) -> Result<String> {
        cowork_backend::session_data::validate_name("processName", session)?;
        let link = self.link()?;
        let path = path.to_string();
        let answer = link
            .request(|req| HostMsg::ReadFile {
                req,
                path,
                limit: READ_FILE_LIMIT,
                // The agent opens the path inside this session's directory
                // only, so one session cannot have it read another's files.
                session: Some(session.to_string()),
            })
            .await;
        match agent_answer("readFile", answer)? {
            Reply::File(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            other => Err(unexpected("readFile", other)),
        }
    }

    async fn mount_path(&self, r: MountPathRequest) -> Result<MountPathResult> {
        let link = self.link()?;
        let session = self
            .lock()
            .sessions
            .session_of(&r.process_id)
            .map(str::to_string)
            .ok_or_else(|| BackendError::NoSuchProcess(r.process_id.clone()))?;
        if !link.status(&r.process_id).is_some_and(|s| s.running) {
            return Err(BackendError::ProcessNotRunning(r.process_id.clone()));
        }
        let spec = MountSpec {
            path: r.subpath.clone(),
            mode: r.mode,
        };
        let guest_path = self.share(&link, &session, &r.mount_name, &spec).await?;
        Ok(MountPathResult { guest_path })
    }

    async fn install_sdk(&self, sub: &str, version: &str) -> Result<()> {
        use cowork_backend::paths::{resolve_host_path, validate_mount_source};
        cowork_backend::session_data::validate_name("version", version)?;
        let dir = resolve_host_path(&self.cfg.home, sub)?.join(version);
        let bin = cowork_backend::agent::sdk_binary(&dir)?;
        let canon = validate_mount_source(&self.cfg.home, &dir)?;
        self.lock().sdk = Some(canon.clone());
        // Exported now if the VM runs, else at the next start.
        if let Ok(link) = self.link() {
            self.export(&link, Owner::All, canon, true, SDK_GUEST)
                .await?;
        }
        tracing::info!(sdk = %bin.display(), "SDK installed (read-only in the VM at {SDK_GUEST})");
        Ok(())
    }

    fn add_oauth_token(&self, token: String) {
        self.lock().token = Some(token);
    }

    async fn sessions_disk_info(&self, low: u64) -> Result<DiskInfo> {
        let active = self.active_sessions();
        self.session_disk(
            "diskInfo",
            serde_json::json!({"lowWater": low, "active": active}),
        )
        .await
    }

    async fn delete_session_dirs(&self, names: Vec<String>) -> Result<DeleteResult> {
        let active = self.active_sessions();
        self.session_disk(
            "delete",
            serde_json::json!({"names": names, "active": active}),
        )
        .await
    }

    async fn prune_session_caches(&self, r: PruneRequest) -> Result<PruneResult> {
        let active = self.active_sessions();
        self.session_disk("prune", serde_json::json!({"request": r, "active": active}))
            .await
    }

    async fn send_guest_response(
        &self,
        id: &str,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<()> {
        let _ = (result, error);
        // Our agent makes no requests of the app (yet).
        Err(BackendError::NoPendingRequest(id.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_is_the_sdk_binary_once_installed() {
        let sdk = "/run/cowork/sdk/claude";
        assert_eq!(guest_command("/usr/local/bin/claude", true).unwrap(), sdk);
        assert_eq!(guest_command("claude", true).unwrap(), sdk);
        assert_eq!(guest_command("/bin/sh", true).unwrap(), "/bin/sh");
        assert_eq!(guest_command("/bin/sh", false).unwrap(), "/bin/sh");
        assert!(matches!(
            guest_command("claude", false),
            Err(BackendError::SdkNotInstalled(_))
        ));
    }
}
