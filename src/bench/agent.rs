//! The agent-turn row: one real Claude Code turn (the pinned CLI from the
//! cache, the Messages API mocked on the host's loopback) per iteration,
//! timed from spawn to the first stdout line and to the `result` line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::{stats, Stats};
use crate::agent_turn::{self, conversation, mock_api::MockApi};
use crate::client::{Client, EventStream};

/// How long one turn may take before the row counts as failed.
const TURN: Duration = Duration::from_secs(120);

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentTurn {
    pub turns: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_ms: Option<Stats>,
    /// Why it was not measured here (the CLI is not cached, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why a turn failed: a figure, not a gate (the minimal kvm image
    /// cannot run the glibc CLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs `turns` turns in the helper whose home is `home`.
pub async fn agent_turns(
    client: &Client,
    events: &mut EventStream,
    kind: &str,
    home: &Path,
    turns: usize,
) -> AgentTurn {
    let mut row = AgentTurn {
        turns,
        ..AgentTurn::default()
    };
    let Some(sdk) = agent_turn::cached_sdk() else {
        row.skipped = Some(format!(
            "Claude Code {} is not cached (tests/agent/fetch-claude.sh fetches it)",
            agent_turn::CLI_VERSION
        ));
        return row;
    };
    let Some((host, ip)) = agent_turn::loopback_name() else {
        row.skipped = Some("no host name resolves to loopback only".into());
        return row;
    };
    eprintln!("bench [{kind}] agent turn (Claude Code against a mock API): {turns}");
    let (mut first, mut result) = (Vec::new(), Vec::new());
    let run = async {
        let mock = MockApi::start(ip).context("cannot start the mock API")?;
        std::fs::create_dir_all(home.join(conversation::WORK_MOUNT))?;
        agent_turn::stage_sdk(&sdk, home).context("cannot put the CLI in the home")?;
        client
            .call("installSdk", conversation::install_sdk())
            .await?;
        let base_url = format!("http://{host}:{}", mock.port());
        for i in 0..turns {
            let id = format!("agent{i}");
            let (f, r) = one_turn(client, events, &id, &base_url, &host).await?;
            first.push(f);
            result.push(r);
        }
        anyhow::Ok(())
    };
    if let Err(e) = run.await {
        eprintln!("bench [{kind}] agent turn failed: {e:#}");
        row.error = Some(format!("{e:#}"));
    }
    row.first_line_ms = Some(stats(first)).filter(|s| s.samples > 0);
    row.result_ms = Some(stats(result)).filter(|s| s.samples > 0);
    row
}

/// One turn: (spawn→first stdout line, spawn→result line) in ms.
async fn one_turn(
    client: &Client,
    events: &mut EventStream,
    id: &str,
    base_url: &str,
    host: &str,
) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let spawn = conversation::spawn(id, "bench", base_url, &[host.to_string()]);
    client.call("spawn", spawn).await.context("spawn")?;
    let user = conversation::user_line("Write the proof file.");
    client
        .call("writeStdin", json!({"id": id, "data": user}))
        .await?;
    let mut first = None;
    let mut buf = String::new();
    let outcome = tokio::time::timeout(TURN, async {
        loop {
            let ev = events.next().await?;
            if !ev.is_for(id) {
                continue;
            }
            match ev.kind.as_str() {
                "stdout" => {
                    first.get_or_insert_with(|| ms(t0));
                    buf.push_str(ev.data.as_deref().unwrap_or(""));
                    for line in conversation::take_lines(&mut buf) {
                        let Ok(v) = serde_json::from_str::<Value>(&line) else {
                            continue;
                        };
                        if v["type"] == "result" {
                            if v["is_error"] != false {
                                bail!("the turn ended in an error: {}", v["result"]);
                            }
                            return Ok(ms(t0));
                        }
                        if let Some(reply) = conversation::permission_reply(&v) {
                            client
                                .call("writeStdin", json!({"id": id, "data": reply}))
                                .await?;
                        }
                    }
                }
                "exit" => bail!("the CLI exited ({:?}) before its result", ev.exit_code),
                _ => {}
            }
        }
    })
    .await;
    // The CLI waits for the next message: end it either way.
    let _ = client
        .call("kill", json!({"id": id, "signal": "SIGKILL"}))
        .await;
    let result = outcome.map_err(|_| anyhow::anyhow!("no result within {TURN:?}"))??;
    Ok((first.unwrap_or(result), result))
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}
