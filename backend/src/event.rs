//! Events the helper sends to subscribers (helper-protocol.md, "Events").

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    Stdout {
        id: String,
        data: String,
    },
    Stderr {
        id: String,
        data: String,
    },
    Exit {
        id: String,
        #[serde(rename = "exitCode", skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        #[serde(rename = "oomKillCount", skip_serializing_if = "Option::is_none")]
        oom_kill_count: Option<u64>,
    },
    Error {
        id: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fatal: Option<bool>,
    },
    NetworkStatus {
        status: NetworkStatus,
    },
    ApiReachability {
        status: String,
    },
    StartupStep {
        step: String,
        status: String,
    },
    Request {
        id: String,
        method: String,
        params: serde_json::Value,
    },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkStatus {
    Connected,
    Disconnected,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_match_the_protocol() {
        let out = Event::Stdout {
            id: "p1".into(),
            data: "hi\n".into(),
        };
        assert_eq!(
            serde_json::to_value(out).unwrap(),
            json!({"type": "stdout", "id": "p1", "data": "hi\n"})
        );
        let exit = Event::Exit {
            id: "p1".into(),
            exit_code: None,
            signal: Some("SIGKILL".into()),
            oom_kill_count: None,
        };
        assert_eq!(
            serde_json::to_value(exit).unwrap(),
            json!({"type": "exit", "id": "p1", "signal": "SIGKILL"})
        );
        let net = Event::NetworkStatus {
            status: NetworkStatus::Disconnected,
        };
        assert_eq!(
            serde_json::to_value(net).unwrap(),
            json!({"type": "networkStatus", "status": "disconnected"})
        );
        let step = Event::StartupStep {
            step: "boot".into(),
            status: "done".into(),
        };
        assert_eq!(
            serde_json::to_value(step).unwrap(),
            json!({"type": "startupStep", "step": "boot", "status": "done"})
        );
    }
}
