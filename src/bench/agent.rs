//! The agent-turn row: one real Claude Code turn (the pinned CLI from the
//! cache, the Messages API mocked on the host's loopback) per iteration,
//! timed from spawn to the first stdout line and to the `result` line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{stats, Stats};
use crate::agent_turn::{self, conversation, drive, mock_api::MockApi};
use crate::client::{Client, EventStream};

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
    let spawn = conversation::spawn(id, "bench", base_url, &[host.to_string()]);
    let out = drive::one_turn(client, events, id, spawn, "Write the proof file.").await?;
    let Some(result) = &out.result else {
        bail!("the CLI exited ({:?}) before its result", out.exit_code);
    };
    if result["is_error"] != false {
        bail!("the turn ended in an error: {}", result["result"]);
    }
    let done = out.result_ms.unwrap_or_default();
    Ok((out.first_line_ms.unwrap_or(done), done))
}
