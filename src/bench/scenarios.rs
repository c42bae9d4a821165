//! The scenarios beyond spawn latency and output: cold start, many
//! sessions at once, and file work on a shared folder. Each runs the same
//! shell commands on every backend (busybox in the minimal guest, the
//! host's tools elsewhere), so the figures compare like with like.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::{stats, wait_exit, Profile, Stats};
use crate::client::{Client, EventStream};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Concurrent {
    pub sessions: usize,
    pub mib_each: usize,
    pub seconds: f64,
    pub mib_s: f64,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FileWork {
    pub files: usize,
    pub untar_s: Option<f64>,
    pub churn_s: Option<f64>,
    pub write_mib_s: Option<f64>,
    pub read_mib_s: Option<f64>,
    pub git_status_s: Option<f64>,
    /// Steps that could not run here, and why.
    pub skipped: Vec<String>,
}

/// Runs `script` with `sh -c` in `cwd`; its duration, or why it failed.
async fn timed(
    client: &Client,
    events: &mut EventStream,
    id: &str,
    script: &str,
    cwd: &str,
    mounts: &serde_json::Value,
) -> Result<f64> {
    let t0 = Instant::now();
    client
        .call(
            "spawn",
            json!({"id": id, "name": "bench", "command": "sh", "args": ["-c", script],
                "cwd": cwd, "additionalMounts": mounts}),
        )
        .await?;
    let code = wait_exit(events, id, |_| {}).await?;
    if code != Some(0) {
        bail!("`{script}` exited with {code:?}");
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `sessions` sessions at once, each writing 1 MiB to stdout: the wall
/// time until every byte and exit has arrived.
pub async fn concurrent(
    client: &Client,
    events: &mut EventStream,
    kind: &str,
    sessions: usize,
) -> Result<Concurrent> {
    eprintln!("bench [{kind}] {sessions} concurrent sessions × 1 MiB of output");
    const EACH: usize = 1024 * 1024;
    let t0 = Instant::now();
    // Events are read while the sessions are started: a subscriber that
    // stops reading is dropped by the helper (docs/protocol.md).
    let spawner = async {
        for i in 0..sessions {
            client
                .call(
                    "spawn",
                    json!({"id": format!("c{i}"), "name": format!("bench{i}"), "command": "sh",
                        "args": ["-c", "dd if=/dev/zero bs=65536 count=16 2>/dev/null | tr '\\000' x"]}),
                )
                .await?;
        }
        anyhow::Ok(())
    };
    let reader = async {
        let mut bytes = 0usize;
        let mut left = sessions;
        while left > 0 {
            let ev = events.next().await?;
            let concerns = ev
                .id
                .as_ref()
                .and_then(|v| v.as_str())
                .is_some_and(|id| id.starts_with('c'));
            if !concerns {
                continue;
            }
            match ev.kind.as_str() {
                "stdout" => bytes += ev.data.map(|d| d.len()).unwrap_or(0),
                "exit" => left -= 1,
                _ => {}
            }
        }
        anyhow::Ok(bytes)
    };
    // A failed spawn ends the wait too.
    let ((), bytes) = tokio::try_join!(spawner, reader)?;
    let seconds = t0.elapsed().as_secs_f64();
    if bytes != sessions * EACH {
        bail!("output lost: {bytes} of {} bytes", sessions * EACH);
    }
    Ok(Concurrent {
        sessions,
        mib_each: 1,
        seconds,
        mib_s: sessions as f64 / seconds,
    })
}

/// The shell steps of the file work, in order, run in the shared folder
/// that holds `tree.tar`: the same on every backend and the QEMU reference.
pub(super) fn file_steps(p: &Profile) -> [(&'static str, String); 4] {
    [
        ("untar", "rm -rf tree && mkdir tree && tar xf tree.tar -C tree".into()),
        (
            "churn",
            format!(
                "mkdir -p churn && cd churn && i=0; while [ $i -lt {n} ]; do echo x > f$i; i=$((i+1)); done; ls -l > /dev/null; rm -f f*",
                n = p.files / 5
            ),
        ),
        (
            "write",
            format!("dd if=/dev/zero of=big bs=1048576 count={} 2>/dev/null && sync", p.big_mib),
        ),
        ("read", "dd if=big of=/dev/null bs=1048576 2>/dev/null".into()),
    ]
}

/// A tar of `n` small files in nested directories, made on the host.
pub(super) fn make_tree_tar(dir: &Path, n: usize) -> Result<()> {
    let src = dir.join("tree-src");
    let _ = std::fs::remove_dir_all(&src);
    for i in 0..n {
        let d = src.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}\n").repeat(8))?;
    }
    let st = std::process::Command::new("tar")
        .arg("cf")
        .arg(dir.join("tree.tar"))
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .context("cannot run tar on the host")?;
    std::fs::remove_dir_all(&src)?;
    if !st.success() {
        bail!("tar on the host failed");
    }
    Ok(())
}

/// File work in a read-write shared folder: untar, small-file churn,
/// sequential write and read, `git status` where git exists.
pub async fn file_work(
    client: &Client,
    events: &mut EventStream,
    kind: &str,
    work: &Path,
    p: &Profile,
) -> Result<FileWork> {
    make_tree_tar(work, p.files)?;
    let cwd = "/sessions/bench/mnt/work";
    let mounts = json!({"work": {"path": "work", "mode": "rw"}});
    let mut out = FileWork {
        files: p.files,
        ..Default::default()
    };
    eprintln!(
        "bench [{kind}] file work on a shared folder: untar {} files, churn, {} MiB write/read",
        p.files, p.big_mib
    );
    for (id, script) in file_steps(p) {
        match timed(client, events, id, &script, cwd, &mounts).await {
            Ok(s) => match id {
                "untar" => out.untar_s = Some(s),
                "churn" => out.churn_s = Some(s),
                "write" => out.write_mib_s = Some(p.big_mib as f64 / s),
                _ => out.read_mib_s = Some(p.big_mib as f64 / s),
            },
            Err(e) => out.skipped.push(format!("{id}: {e:#}")),
        }
    }
    let has_git = timed(client, events, "hasgit", "command -v git", cwd, &mounts)
        .await
        .is_ok();
    if has_git {
        let script = "cd tree && (git init -q . && git add -A && git -c user.email=b@b -c user.name=b commit -qm t) >/dev/null 2>&1; git status --porcelain >/dev/null";
        // The first run builds the repository; the second is the figure.
        let _ = timed(client, events, "git0", script, cwd, &mounts).await;
        match timed(
            client,
            events,
            "git1",
            "cd tree && git status --porcelain >/dev/null",
            cwd,
            &mounts,
        )
        .await
        {
            Ok(s) => out.git_status_s = Some(s),
            Err(e) => out.skipped.push(format!("git status: {e:#}")),
        }
    } else {
        out.skipped.push(
            "git status: no git in this backend's environment (the minimal guest image has none)"
                .into(),
        );
    }
    let _ = timed(
        client,
        events,
        "clean",
        "rm -rf tree churn big",
        cwd,
        &mounts,
    )
    .await;
    Ok(out)
}

/// stopVM then startVM, `repeats` times: until the environment answers
/// again (for kvm, until the guest agent's hello).
pub async fn cold_start(client: &Client, kind: &str, repeats: usize) -> Result<Stats> {
    eprintln!("bench [{kind}] cold start: {repeats} × stopVM + startVM");
    let mut v = Vec::new();
    for _ in 0..repeats {
        client.call("stopVM", json!({})).await?;
        let t0 = Instant::now();
        client.call("startVM", json!({})).await.context("startVM")?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(v))
}
