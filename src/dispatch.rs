//! Method name to backend call: each method's params are decoded into a
//! typed struct, so a missing or mistyped field is an error reply naming
//! the method and the field.

use std::sync::Arc;

use cowork_backend::signal::parse_signal;
use cowork_backend::{Backend, BackendError, EventBus};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::logging::LogControl;

/// Most names `deleteSessionDirs` takes in one call.
const MAX_DELETE_NAMES: usize = 10_000;

/// What every connection shares.
#[derive(Clone)]
pub struct Helper {
    pub backend: Arc<dyn Backend>,
    pub bus: EventBus,
    pub log: LogControl,
}

fn params<T: DeserializeOwned>(method: &str, v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("invalid params for {method}: {e}"))
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Kill {
    id: String,
    #[serde(default)]
    signal: Option<Value>,
}

#[derive(Deserialize)]
struct WriteStdin {
    id: String,
    data: String,
    /// Our extension: close stdin after `data` (the app never sends it).
    #[serde(default)]
    eof: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadFile {
    process_name: String,
    file_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstallSdk {
    sdk_subpath: String,
    version: String,
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DiskInfo {
    #[serde(default)]
    low_water_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct Names {
    names: Vec<String>,
}

#[derive(Deserialize)]
struct Debug {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GuestResponse {
    id: Value,
    #[serde(default)]
    result_json: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode result: {e}"))
}

fn empty() -> Result<Value, String> {
    Ok(json!({}))
}

/// `kill` and `writeStdin` for a process that is unknown or already ended
/// succeed and do nothing, as both reference peers answer: the client sends
/// them racing the process's exit and treats an error as a failed turn.
fn gone_is_done(r: cowork_backend::Result<()>) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(BackendError::NoSuchProcess(id) | BackendError::ProcessNotRunning(id)) => {
            tracing::debug!(process = %id, "request for a process that is not running: ignored");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs one request. `subscribeEvents` is the connection's business and
/// never reaches here.
pub async fn dispatch(h: &Helper, method: &str, p: Value) -> Result<Value, String> {
    let b = &h.backend;
    let err = |e: cowork_backend::BackendError| e.to_string();
    match method {
        "configure" => {
            b.configure(&params(method, p)?).await.map_err(err)?;
            empty()
        }
        "createVM" => {
            b.create_vm(params(method, p)?).await.map_err(err)?;
            empty()
        }
        "startVM" => {
            let req = params(method, p)?;
            h.bus.start_began();
            b.start(req).await.map_err(err)?;
            empty()
        }
        "stopVM" => {
            b.stop().await.map_err(err)?;
            h.bus.forget_state();
            empty()
        }
        "isRunning" => Ok(json!({"running": b.is_running()})),
        "isGuestConnected" => Ok(json!({"connected": b.is_guest_connected()})),
        "spawn" => to_value(b.spawn(params(method, p)?).await.map_err(err)?),
        "kill" => {
            let k: Kill = params(method, p)?;
            let sig = parse_signal(k.signal.as_ref()).map_err(err)?;
            gone_is_done(b.kill(&k.id, sig).await)?;
            empty()
        }
        "writeStdin" => {
            let w: WriteStdin = params(method, p)?;
            gone_is_done(b.write_stdin(&w.id, w.data, w.eof).await)?;
            empty()
        }
        "isProcessRunning" => {
            let Id { id } = params(method, p)?;
            match b.process_status(&id) {
                Ok(st) => to_value(st),
                // Retried by the client: an id it never spawned is simply
                // not running.
                Err(BackendError::NoSuchProcess(_)) => Ok(json!({"running": false})),
                Err(e) => Err(e.to_string()),
            }
        }
        "readFile" => {
            let r: ReadFile = params(method, p)?;
            let content = b
                .read_file(&r.process_name, &r.file_path)
                .await
                .map_err(err)?;
            Ok(json!({ "content": content }))
        }
        "mountPath" => to_value(b.mount_path(params(method, p)?).await.map_err(err)?),
        "installSdk" => {
            let s: InstallSdk = params(method, p)?;
            b.install_sdk(&s.sdk_subpath, &s.version)
                .await
                .map_err(err)?;
            empty()
        }
        "addApprovedOauthToken" => {
            let Token { token } = params(method, p)?;
            b.add_oauth_token(token);
            empty()
        }
        "getSessionsDiskInfo" => {
            let d: DiskInfo = params(method, p)?;
            to_value(
                b.sessions_disk_info(d.low_water_bytes.unwrap_or(0))
                    .await
                    .map_err(err)?,
            )
        }
        "deleteSessionDirs" => {
            let Names { names } = params(method, p)?;
            if names.len() > MAX_DELETE_NAMES {
                return Err(format!(
                    "invalid params for {method}: at most {MAX_DELETE_NAMES} names"
                ));
            }
            to_value(b.delete_session_dirs(names).await.map_err(err)?)
        }
        "pruneSessionCaches" => to_value(
            b.prune_session_caches(params(method, p)?)
                .await
                .map_err(err)?,
        ),
        "sendGuestResponse" => {
            let g: GuestResponse = params(method, p)?;
            let id = match g.id {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "invalid params for {method}: id {other} is not a string or number"
                    ))
                }
            };
            match b.send_guest_response(&id, g.result_json, g.error).await {
                // As both reference peers answer: the request may have been
                // answered or abandoned already; nothing is left to do.
                Ok(()) | Err(BackendError::NoPendingRequest(_)) => empty(),
                Err(e) => Err(e.to_string()),
            }
        }
        "setDebugLogging" => {
            let Debug { enabled } = params(method, p)?;
            h.log.set_debug(enabled);
            empty()
        }
        "getNetworkDrives" => Ok(json!({"drives": []})),
        "subscribeEvents" => {
            Err("subscribeEvents must be the first request on its own connection".into())
        }
        other => Err(format!("Unknown method: {other}")),
    }
}
