//! What the app sends and reads in an agent turn: the spawn of the CLI
//! with its stream-json flags, the user message line, and the answer to
//! the CLI's tool permission requests.

use serde_json::{json, Value};

use super::{CLI_VERSION, QUIET_ENV, SDK_SUBPATH};

/// The shared folder (a mount named so under the helper's home) the turn
/// works in.
pub const WORK_MOUNT: &str = "work";

/// `installSdk`'s params for the CLI [`super::stage_sdk`] put in the home.
pub fn install_sdk() -> Value {
    json!({"sdkSubpath": SDK_SUBPATH, "version": CLI_VERSION})
}

/// `spawn`'s params: `/usr/local/bin/claude` in session `session` with the
/// app's stream-json flags and tool permissions asked over stdio, an OAuth
/// token, the API at `base_url`, and egress limited to `allowed`.
pub fn spawn(id: &str, session: &str, base_url: &str, allowed: &[String]) -> Value {
    let mut env = json!({"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": base_url});
    for (k, v) in QUIET_ENV {
        env[*k] = json!(v);
    }
    json!({
        "id": id, "name": session, "command": "/usr/local/bin/claude",
        "args": ["--output-format", "stream-json", "--input-format", "stream-json", "--verbose",
            "--permission-prompt-tool", "stdio"],
        "cwd": format!("/sessions/{session}/mnt/{WORK_MOUNT}"),
        "env": env,
        // Any token: the mock does not check it, and the real API is never
        // reached.
        "oauthToken": "sk-ant-oat01-mock-token",
        "additionalMounts": {WORK_MOUNT: {"path": WORK_MOUNT, "mode": "rw"}},
        "allowedDomains": allowed,
        "isResume": false,
    })
}

/// One user message as a stdin line.
pub fn user_line(text: &str) -> String {
    let v = json!({"type": "user", "message": {"role": "user", "content": text}});
    format!("{v}\n")
}

/// The app's answer to the CLI's tool permission request (a
/// `control_request` line on stdout): allow, input unchanged, as a stdin
/// line. None for any other line.
pub fn permission_reply(line: &Value) -> Option<String> {
    if line["type"] != "control_request" || line["request"]["subtype"] != "can_use_tool" {
        return None;
    }
    let v = json!({"type": "control_response", "response": {
        "subtype": "success", "request_id": line["request_id"],
        "response": {"behavior": "allow", "updatedInput": line["request"]["input"]}}});
    Some(format!("{v}\n"))
}

/// Splits complete lines off `buf` (stdout arrives in arbitrary chunks).
pub fn take_lines(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(i) = buf.find('\n') {
        let line: String = buf.drain(..=i).collect();
        out.push(line.trim_end().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_reply_allows_only_tool_requests() {
        let req = json!({"type": "control_request", "request_id": "r1",
            "request": {"subtype": "can_use_tool", "tool_name": "Bash", "input": {"command": "ls"}}});
        let reply: Value =
            serde_json::from_str(&permission_reply(&req).unwrap_or_default()).unwrap_or_default();
        assert_eq!(reply["response"]["request_id"], "r1");
        assert_eq!(reply["response"]["response"]["behavior"], "allow");
        assert_eq!(
            reply["response"]["response"]["updatedInput"]["command"],
            "ls"
        );
        assert!(permission_reply(&json!({"type": "result"})).is_none());
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut b = String::from("{\"a\":1}\n{\"b\"");
        assert_eq!(take_lines(&mut b), vec!["{\"a\":1}"]);
        b.push_str(":2}\n");
        assert_eq!(take_lines(&mut b), vec!["{\"b\":2}"]);
        assert!(b.is_empty());
    }
}
