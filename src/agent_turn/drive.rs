//! Drives one turn through a running helper as the app does: spawn the CLI
//! ([`conversation::spawn`]), the user message through `writeStdin`, the
//! CLI's tool permission requests answered, stdout events read line by
//! line until the `result` line. Shared by the bench's agent-turn row and
//! the `agent_turn` example the nested harness runs inside its machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::conversation;
use crate::client::{Client, EventStream};

/// How long one turn may take (the CLI's first start reads ~370 MB; under
/// nested emulation it takes tens of seconds).
pub const TURN: Duration = Duration::from_secs(300);

/// What one turn produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Spawn → first stdout line, and → the `result` line, in ms.
    pub first_line_ms: Option<f64>,
    pub result_ms: Option<f64>,
    /// The `result` line.
    pub result: Option<Value>,
    /// What the Bash tool printed, as the CLI reported it back on stdout
    /// (the tool_result blocks of its `user` lines).
    pub tool_output: String,
    /// Tool permission requests answered.
    pub approvals: usize,
    /// The exit code, when the CLI exited before its result.
    pub exit_code: Option<i64>,
}

/// Runs one turn of process `id` with `spawn` (spawn's params) and the user
/// message `prompt`, then kills the CLI (it waits for the next message).
pub async fn one_turn(
    client: &Client,
    events: &mut EventStream,
    id: &str,
    spawn: Value,
    prompt: &str,
) -> Result<Outcome> {
    let t0 = Instant::now();
    client.call("spawn", spawn).await?;
    let user = conversation::user_line(prompt);
    client
        .call("writeStdin", json!({"id": id, "data": user}))
        .await?;
    let mut out = Outcome::default();
    let mut buf = String::new();
    let read = tokio::time::timeout(TURN, async {
        while out.result.is_none() && out.exit_code.is_none() {
            let ev = events.next().await?;
            if !ev.is_for(id) {
                continue;
            }
            match ev.kind.as_str() {
                "stdout" => {
                    out.first_line_ms.get_or_insert_with(|| ms(t0));
                    buf.push_str(ev.data.as_deref().unwrap_or(""));
                    for line in conversation::take_lines(&mut buf) {
                        let Ok(v) = serde_json::from_str::<Value>(&line) else {
                            continue;
                        };
                        if v["type"] == "result" {
                            out.result_ms = Some(ms(t0));
                            out.result = Some(v);
                            break;
                        }
                        out.tool_output.push_str(&tool_results(&v));
                        if let Some(reply) = conversation::permission_reply(&v) {
                            out.approvals += 1;
                            client
                                .call("writeStdin", json!({"id": id, "data": reply}))
                                .await?;
                        }
                    }
                }
                "exit" => out.exit_code = Some(i64::from(ev.exit_code.unwrap_or(-1))),
                _ => {}
            }
        }
        anyhow::Ok(())
    })
    .await;
    let _ = client
        .call("kill", json!({"id": id, "signal": "SIGKILL"}))
        .await;
    match read {
        Ok(r) => r?,
        Err(_) => bail!("no result within {TURN:?}"),
    }
    Ok(out)
}

/// The text of the tool_result blocks in a stream-json `user` line.
fn tool_results(line: &Value) -> String {
    if line["type"] != "user" {
        return String::new();
    }
    let Some(blocks) = line["message"]["content"].as_array() else {
        return String::new();
    };
    let mut s = String::new();
    for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
        match &b["content"] {
            Value::String(t) => s.push_str(t),
            Value::Array(parts) => {
                for p in parts {
                    s.push_str(p["text"].as_str().unwrap_or(""));
                }
            }
            _ => {}
        }
        s.push('\n');
    }
    s
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_output_is_read_from_user_lines_only() {
        let user = json!({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "Linux cowork 6.12"},
            {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "two"}]},
            {"type": "text", "text": "not a tool"}]}});
        assert_eq!(tool_results(&user), "Linux cowork 6.12\ntwo\n");
        let assistant = json!({"type": "assistant", "message": {"content": [
            {"type": "tool_result", "content": "no"}]}});
        assert_eq!(tool_results(&assistant), "");
    }
}
