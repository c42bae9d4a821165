//! The backend contract: what the helper asks of host, bwrap and kvm alike,
//! and the request/result types those methods carry.
//!
//! Request types deserialize straight from the protocol's `params`; they do
//! not derive `Debug` where they hold an environment or a token, so neither
//! can reach a log by accident.

use std::collections::BTreeMap;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    Ro,
    #[default]
    Rw,
}

/// One entry of `additionalMounts`: a host path (root- or home-relative,
/// see [`crate::paths::resolve_host_path`]) and its mode.
#[derive(Debug, Clone, Deserialize)]
pub struct MountSpec {
    pub path: String,
    #[serde(default)]
    pub mode: Option<MountMode>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpawnRequest {
    pub id: String,
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub is_resume: Option<bool>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// In the client's order: the first plain mount is the working folder.
    #[serde(default, deserialize_with = "ordered_map")]
    pub additional_mounts: Vec<(String, MountSpec)>,
    #[serde(default)]
    pub allowed_domains: Option<Vec<String>>,
    #[serde(default)]
    pub one_shot: Option<bool>,
    #[serde(default)]
    pub mount_skeleton_home: Option<bool>,
    #[serde(default)]
    pub oauth_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedMount {
    pub name: String,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpawnResult {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_mounts: Vec<FailedMount>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    #[serde(default)]
    pub bundle_path: Option<String>,
    #[serde(default)]
    pub memory_gb: Option<f64>,
    #[serde(default)]
    pub cpu_count: Option<u32>,
    #[serde(default, rename = "apiProbeURL")]
    pub api_probe_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRequest {
    #[serde(default)]
    pub bundle_path: Option<String>,
    #[serde(default, rename = "diskSizeGB")]
    pub disk_size_gb: Option<f64>,
}

/// What `configure` tells the helper about the desktop profile and VM size.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmConfig {
    #[serde(default)]
    pub user_data_name: Option<String>,
    #[serde(default)]
    pub user_data_root: Option<String>,
    #[serde(default, rename = "memoryMB")]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpu_count: Option<u32>,
    #[serde(default)]
    pub session_only: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPathRequest {
    pub process_id: String,
    pub subpath: String,
    pub mount_name: String,
    #[serde(default)]
    pub mode: Option<MountMode>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPathResult {
    /// Where the share appears in the session; the older daemon returned it.
    pub guest_path: String,
}

/// A JSON object as its entries in document order (a map would sort them).
fn ordered_map<'de, D, V>(d: D) -> std::result::Result<Vec<(String, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, V>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_any(Entries(std::marker::PhantomData))
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDiskEntry {
    pub name: String,
    pub size_bytes: u64,
    pub last_modified_ms: u64,
    pub active: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub low_water: bool,
    pub sessions: Vec<SessionDiskEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeleteResult {
    pub deleted: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneRequest {
    #[serde(default)]
    pub only_if_free_bytes_below: Option<u64>,
    #[serde(default)]
    pub include_session_tmp: Option<bool>,
    #[serde(default)]
    pub session_tmp_older_than_seconds: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneResult {
    pub pruned_sessions: Vec<String>,
    pub skipped_sessions: Vec<String>,
    pub freed_bytes: u64,
    pub errors: BTreeMap<String, String>,
}

/// A session environment: where Cowork processes run. One backend serves
/// the helper for its whole life.
#[async_trait]
pub trait Backend: Send + Sync {
    /// "host", "bwrap" or "kvm".
    fn name(&self) -> &'static str;

    async fn configure(&self, config: &VmConfig) -> Result<()>;
    async fn create_vm(&self, request: CreateRequest) -> Result<()>;
    async fn start(&self, request: StartRequest) -> Result<()>;
    /// Ends every process (as a group) and the environment itself.
    async fn stop(&self) -> Result<()>;
    fn is_running(&self) -> bool;
    fn is_guest_connected(&self) -> bool;

    async fn spawn(&self, request: SpawnRequest) -> Result<SpawnResult>;
    async fn kill(&self, id: &str, signal: Signal) -> Result<()>;
    /// Queues `data` for the process's stdin; `eof` closes it afterwards.
    async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()>;
    fn process_status(&self, id: &str) -> Result<ProcessStatus>;

    async fn read_file(&self, session: &str, path: &str) -> Result<String>;
    async fn mount_path(&self, request: MountPathRequest) -> Result<MountPathResult>;
    async fn install_sdk(&self, sdk_subpath: &str, version: &str) -> Result<()>;
    fn add_oauth_token(&self, token: String);

    async fn sessions_disk_info(&self, low_water_bytes: u64) -> Result<DiskInfo>;
    async fn delete_session_dirs(&self, names: Vec<String>) -> Result<DeleteResult>;
    async fn prune_session_caches(&self, request: PruneRequest) -> Result<PruneResult>;

    async fn send_guest_response(
        &self,
        id: &str,
        result_json: Option<String>,
        error: Option<String>,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_keep_client_order() {
        let r: SpawnRequest = serde_json::from_value(serde_json::json!({
            "id": "1", "name": "s", "command": "c",
            "additionalMounts": {"zeta": {"path": "z"}, "alpha": {"path": "a", "mode": "ro"}},
        }))
        .unwrap();
        let names: Vec<_> = r
            .additional_mounts
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(r.additional_mounts[1].1.mode, Some(MountMode::Ro));
        let bad = serde_json::from_value::<SpawnRequest>(serde_json::json!({
            "id": "1", "name": "s", "command": "c", "additionalMounts": {"a": {"path": 1}},
        }));
        assert!(bad.is_err());
    }
}
