//! Drives one real Claude Code turn through a running helper, exactly as
//! the app does, against the built-in mock of the Messages API, then a
//! second turn in another session whose allowed domains leave the mock
//! out; prints what both produced as one JSON object. The nested harness
//! (tests/nested/e2e-nested.sh) runs it inside its machine against the kvm
//! backend, where no cargo test binary can run; tests/agent_turn.rs covers
//! the host and bwrap backends in-process.
//!
//!   agent_turn --socket S --home H --sdk DIR --host NAME
//!
//! `--sdk` holds `<version>/claude` (the npm package's binary); NAME must
//! resolve to a loopback address here (the mock listens there) and is what
//! the first session's egress allows.
#![allow(clippy::print_stdout)] // the report is this program's output

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cowork_microvm::agent_turn::{self, conversation, drive, mock_api::MockApi};
use cowork_microvm::client::{Client, EventStream};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The helper's socket.
    #[arg(long)]
    socket: PathBuf,
    /// The helper's home directory: the SDK and the work folder go there.
    #[arg(long)]
    home: PathBuf,
    /// A directory holding `<version>/claude`.
    #[arg(long)]
    sdk: PathBuf,
    /// A host name resolving to loopback, for the mock.
    #[arg(long)]
    host: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let ip = (a.host.as_str(), 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", a.host))?
        .find_map(|s| match s.ip() {
            IpAddr::V4(v4) if v4.is_loopback() => Some(v4),
            _ => None,
        })
        .with_context(|| format!("{} does not resolve to IPv4 loopback", a.host))?;
    let mock = MockApi::start(ip).context("cannot start the mock API")?;
    std::fs::create_dir_all(a.home.join(conversation::WORK_MOUNT))?;
    agent_turn::stage_sdk(&a.sdk, &a.home).context("cannot put the CLI in the home")?;
    let client = Client::connect(&a.socket).await?;
    let mut events = EventStream::subscribe(&a.socket).await?;
    client
        .call("installSdk", conversation::install_sdk())
        .await?;
    let base_url = format!("http://{}:{}", a.host, mock.port());
    let proof = a.home.join(conversation::WORK_MOUNT).join("proof.txt");

    let spawn = conversation::spawn("allowed", "agent", &base_url, std::slice::from_ref(&a.host));
    let allowed = drive::one_turn(
        &client,
        &mut events,
        "allowed",
        spawn,
        "Write the proof file.",
    )
    .await
    .context("the allowed turn")?;
    let proof_text = std::fs::read_to_string(&proof).unwrap_or_default();
    let answered: Vec<&str> = mock.requests().iter().map(|s| s.answered).collect();
    let seen_before = mock.requests().len();
    if proof.exists() {
        std::fs::remove_file(&proof)?;
    }

    let spawn = conversation::spawn(
        "refused",
        "agent-refused",
        &base_url,
        &["api.anthropic.com".to_string()],
    );
    let refused = drive::one_turn(
        &client,
        &mut events,
        "refused",
        spawn,
        "Write the proof file.",
    )
    .await
    .context("the refused turn")?;
    let report = json!({
        "allowed": {
            "result": allowed.result,
            "firstLineMs": allowed.first_line_ms,
            "resultMs": allowed.result_ms,
            "toolOutput": allowed.tool_output,
            "approvals": allowed.approvals,
            "proof": proof_text,
            "mockAnswered": answered,
        },
        "refused": {
            "result": refused.result,
            "exitCode": refused.exit_code,
            "proofWritten": proof.exists(),
            "mockRequests": mock.requests().len() - seen_before,
        },
    });
    println!("{report}");
    if allowed.result.as_ref().map(|r| &r["is_error"]) != Some(&Value::Bool(false)) {
        bail!("the allowed turn did not succeed");
    }
    Ok(())
}
