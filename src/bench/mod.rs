//! `cowork-microvm bench`: figures measured through the real socket
//! protocol against a helper started as a child process (so its memory is
//! its own), each backend side by side in one run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

mod agent;
mod chart;
mod qemu_ref;
mod scenarios;

use crate::cli::BenchArgs;
use crate::client::{Client, EventStream};
use crate::select::Kind;

const WARMUP: usize = 10;

#[derive(Serialize, Default)]
struct Stats {
    samples: usize,
    median: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        samples: v.len(),
        median: pick(0.5),
        p90: pick(0.9),
        p99: pick(0.99),
        min: v[0],
        max: v[v.len() - 1],
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackendResult {
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spawn_exit_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout_mib_s: Option<Stats>,
    /// stopVM then startVM until the guest (or sandbox) is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_start_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrent: Option<scenarios::Concurrent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<scenarios::FileWork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_turn: Option<agent::AgentTurn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper_peak_rss_kib: Option<u64>,
}

impl BackendResult {
    fn new(backend: &str) -> Self {
        Self {
            backend: backend.into(),
            skipped: None,
            error: None,
            spawn_exit_ms: None,
            stdout_mib_s: None,
            cold_start_ms: None,
            concurrent: None,
            files: None,
            agent_turn: None,
            helper_rss_kib: None,
            helper_peak_rss_kib: None,
        }
    }
}

/// The helper under test, killed when dropped.
struct HelperProcess {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl HelperProcess {
    fn start(backend: &str, peer: Option<&Path>) -> Result<HelperProcess> {
        let label = if peer.is_some() { "peer" } else { backend };
        let dir = std::env::temp_dir().join(format!(
            "cowork-bench-{}-{label}-{backend}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home/shared"))?;
        let socket = dir.join("s.sock");
        // The community daemon speaks the same protocol; it is driven the
        // way the app starts it, its backend chosen the way it reads it.
        let mut cmd = match peer {
            Some(script) => {
                let mut c = Command::new("node");
                c.arg(script).arg("-socket").arg(&socket);
                c.env("COWORK_VM_BACKEND", backend);
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["serve", "--backend", backend, "--socket"])
                    .arg(&socket);
                c
            }
        };
        let child = cmd
            .env("COWORK_VM_LOG_FILE", "")
            .env("COWORK_VM_DATA_DIR", dir.join("data"))
            // A home of its own: the shared folder lives there, as the
            // app's do in the user's home.
            .env("HOME", dir.join("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| match peer {
                Some(p) => format!("cannot run node {}", p.display()),
                None => "cannot start the helper".into(),
            })?;
        let mut h = HelperProcess { child, dir, socket };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&h.socket).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                bail!("the helper exited ({status}) before listening");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the helper did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(h)
    }

    fn rss_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.child.id(), field)
    }
}

/// A KiB figure (`VmRSS:`, `VmHWM:`) from process `pid`'s status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits for `id`'s exit (passing output sizes on); its exit code.
async fn wait_exit(
    events: &mut EventStream,
    id: &str,
    mut on_data: impl FnMut(usize),
) -> Result<Option<i32>> {
    loop {
        let ev = events.next().await?;
        if !ev.is_for(id) {
            continue;
        }
        match ev.kind.as_str() {
            "stdout" | "stderr" => on_data(ev.data.map(|d| d.len()).unwrap_or(0)),
            "exit" => return Ok(ev.exit_code),
            _ => {}
        }
    }
}

fn output_file(dir: &Path, mib: usize) -> Result<PathBuf> {
    let path = dir.join("output.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let line = format!("{}\n", "cowork-microvm bench output line ".repeat(3));
    let mut written = 0;
    while written < mib * 1024 * 1024 {
        f.write_all(line.as_bytes())?;
        written += line.len();
    }
    f.flush()?;
    Ok(path)
}

/// How big the scenarios are: `--quick` for CI, the full profile for the
/// figures people quote.
pub struct Profile {
    pub iterations: usize,
    pub mib: usize,
    pub repeats: usize,
    pub sessions: usize,
    pub files: usize,
    pub big_mib: usize,
    pub agent_turns: usize,
}

async fn measure(
    kind: &str,
    peer: Option<&Path>,
    label: &str,
    p: &Profile,
) -> Result<BackendResult> {
    let (iterations, mib, repeats) = (p.iterations, p.mib, p.repeats);
    let mut res = BackendResult::new(label);
    let helper = HelperProcess::start(kind, peer)?;
    // From here on, progress and figures are this run's label.
    let kind = label;
    let client = Client::connect(&helper.socket).await?;
    client
        .call(
            "configure",
            json!({"userDataName": "bench", "sessionOnly": true}),
        )
        .await?;
    let mut events = EventStream::subscribe(&helper.socket).await?;
    client.call("startVM", json!({})).await.context("startVM")?;

    eprintln!("bench [{kind}] spawn→exit of /bin/true: {WARMUP} warm-up + {iterations}");
    let mut lat = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        let id = format!("t{i}");
        let t0 = Instant::now();
        client
            .call(
                "spawn",
                json!({"id": id, "name": "bench", "command": "/bin/true", "args": []}),
            )
            .await?;
        let code = wait_exit(&mut events, &id, |_| {}).await?;
        if code != Some(0) {
            bail!("/bin/true exited with {code:?}");
        }
        if i >= WARMUP {
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    res.spawn_exit_ms = Some(stats(lat));

    // Read from a shared folder by its guest path, as a session would.
    output_file(&helper.dir.join("home/shared"), mib)?;
    let cwd = "/sessions/bench/mnt/shared";
    let mounts = json!({"shared": {"path": "shared", "mode": "ro"}});
    eprintln!("bench [{kind}] stdout throughput: {repeats} × {mib} MiB");
    let mut rates = Vec::new();
    for i in 0..repeats + 1 {
        let id = format!("o{i}");
        let mut bytes = 0usize;
        let t0 = Instant::now();
        client
            .call(
                "spawn",
                json!({"id": id, "name": "bench", "command": "cat", "args": ["output.txt"],
                    "cwd": cwd, "additionalMounts": mounts}),
            )
            .await?;
        wait_exit(&mut events, &id, |n| bytes += n).await?;
        let secs = t0.elapsed().as_secs_f64();
        if bytes != mib * 1024 * 1024 && bytes < mib * 1024 * 1024 {
            bail!(
                "output lost: got {bytes} of at least {} bytes",
                mib * 1024 * 1024
            );
        }
        if i > 0 {
            rates.push(bytes as f64 / (1024.0 * 1024.0) / secs);
        }
    }
    res.stdout_mib_s = Some(stats(rates));
    let work = helper.dir.join("home/work");
    std::fs::create_dir_all(&work)?;
    res.concurrent = Some(scenarios::concurrent(&client, &mut events, kind, p.sessions).await?);
    res.files = Some(scenarios::file_work(&client, &mut events, kind, &work, p).await?);
    let home = helper.dir.join("home");
    res.agent_turn =
        Some(agent::agent_turns(&client, &mut events, kind, &home, p.agent_turns).await);
    res.cold_start_ms = Some(scenarios::cold_start(&client, kind, repeats).await?);
    client.call("stopVM", json!({})).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    res.helper_rss_kib = helper.rss_kib("VmRSS:");
    res.helper_peak_rss_kib = helper.rss_kib("VmHWM:");
    Ok(res)
}

/// spawn+wait of /bin/true straight from this process: the machine's floor
/// under any backend's spawn→exit figure.
fn spawn_floor(iterations: usize) -> Stats {
    let mut v = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        let t0 = Instant::now();
        let ok = Command::new("/bin/true")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && i >= WARMUP {
            v.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    stats(v)
}

/// Why the community daemon cannot be measured, if it cannot.
fn peer_missing(script: &Path) -> Option<String> {
    if !script.is_file() {
        return Some(format!("{} is not a file", script.display()));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("node is not installed (apt-get install nodejs)".into()),
    }
}

fn skip_reason(kind: Kind) -> Option<String> {
    match kind {
        Kind::Host => None,
        Kind::Bwrap => Some(crate::select::probe_bwrap())
            .filter(|p| !p.usable)
            .map(|p| p.detail),
        Kind::Kvm => Some(crate::select::probe_kvm())
            .filter(|p| !p.usable)
            .map(|p| p.detail),
    }
}

pub fn main(args: BenchArgs) -> Result<i32> {
    let p = if args.quick {
        Profile {
            iterations: args.iterations.unwrap_or(30),
            mib: args.output_mib.unwrap_or(16),
            repeats: args.repeats.map_or(2, usize::from),
            sessions: 10,
            files: args.files.unwrap_or(1000),
            big_mib: args.big_mib.unwrap_or(64),
            agent_turns: 2,
        }
    } else {
        Profile {
            iterations: args.iterations.unwrap_or(200),
            mib: args.output_mib.unwrap_or(256),
            repeats: args.repeats.map_or(5, usize::from),
            sessions: 50,
            files: args.files.unwrap_or(5000),
            big_mib: args.big_mib.unwrap_or(1024),
            agent_turns: 5,
        }
    };
    let (iterations, mib) = (p.iterations, p.mib);
    if iterations == 0 || mib == 0 || p.files == 0 || p.big_mib == 0 || p.repeats == 0 {
        bail!("--iterations, --output-mib, --files, --big-mib and --repeats must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!("bench [floor] spawn+wait of /bin/true without a helper: {iterations}");
    let floor = spawn_floor(iterations);
    let mut results = Vec::new();
    // Our helper on each backend, then the community daemon on the same
    // ones when its path is given.
    let names: Vec<&str> = args
        .backend
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut runs: Vec<(String, &str, Option<&Path>)> =
        names.iter().map(|n| (n.to_string(), *n, None)).collect();
    if let Some(peer) = args.peer_node.as_deref() {
        runs.extend(names.iter().map(|n| (format!("node-{n}"), *n, Some(peer))));
    }
    for (label, name, peer) in runs {
        if name == "qemu" && peer.is_none() {
            results.push(reference_row(&p));
            continue;
        }
        let Some(kind) = Kind::parse(name) else {
            let mut r = BackendResult::new(&label);
            r.skipped = Some("not a backend (kvm, bwrap, host, or qemu for the reference)".into());
            results.push(r);
            continue;
        };
        let why = skip_reason(kind).or_else(|| peer.and_then(peer_missing));
        if let Some(why) = why {
            eprintln!("bench [{label}] skipped: {why}");
            let mut r = BackendResult::new(&label);
            r.skipped = Some(why);
            results.push(r);
            continue;
        }
        match rt.block_on(measure(kind.as_str(), peer, &label, &p)) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("bench [{label}] failed: {e:#}");
                let mut r = BackendResult::new(&label);
                r.error = Some(format!("{e:#}"));
                results.push(r);
            }
        }
    }
    print_table(&floor, &results);
    let doc = json!({
        "tool": "cowork-microvm bench",
        "version": env!("CARGO_PKG_VERSION"),
        "profile": if args.quick { "quick" } else { "full" },
        "iterations": iterations,
        "outputMiB": mib,
        "sessions": p.sessions,
        "files": p.files,
        "bigFileMiB": p.big_mib,
        "repeats": p.repeats,
        "spawnFloorMs": floor,
        "results": results,
    });
    let figures = chart::figures(&doc);
    let baseline = args.baseline.clone().or_else(|| {
        figures
            .first()
            .and_then(|f| f.values.first().map(|(b, _)| b.clone()))
    });
    let ratios = chart::ratios(&figures, baseline.as_deref());
    print_ratios(&ratios, baseline.as_deref());
    let mut doc = doc;
    doc["baseline"] = json!(baseline);
    doc["ratios"] = json!(ratios);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "cowork-microvm bench ({} profile) on {}",
            if args.quick { "quick" } else { "full" },
            chart::machine()
        );
        std::fs::write(path, chart::svg(&title, &figures))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
        match chart::png_from_svg(path) {
            Ok(png) => eprintln!("bench: wrote {}", png.display()),
            Err(why) => eprintln!("bench: no PNG: {why}"),
        }
    }
    Ok(if results.iter().any(|r| r.error.is_some()) {
        1
    } else {
        0
    })
}

/// The QEMU + virtiofsd reference row, or why it was skipped or failed.
fn reference_row(p: &Profile) -> BackendResult {
    if let Some(why) = qemu_ref::skip_reason() {
        eprintln!("bench [qemu] skipped: {why}");
        let mut r = BackendResult::new("qemu");
        r.skipped = Some(why);
        return r;
    }
    let dir = std::env::temp_dir().join(format!("cowork-bench-qemu-{}", std::process::id()));
    let result = std::fs::create_dir_all(&dir)
        .context("cannot create the reference's directory")
        .and_then(|()| qemu_ref::measure(p, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| {
        eprintln!("bench [qemu] failed: {e:#}");
        let mut r = BackendResult::new("qemu");
        r.error = Some(format!("{e:#}"));
        r
    })
}

fn print_ratios(ratios: &serde_json::Map<String, serde_json::Value>, baseline: Option<&str>) {
    let Some(base) = baseline else {
        return;
    };
    println!("\nratios against {base} (higher is slower for times, faster for rates):");
    for (metric, per) in ratios {
        let cells: Vec<String> = per
            .as_object()
            .into_iter()
            .flatten()
            .map(|(b, v)| format!("{b} {:.2}x", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!("  {metric:<28} {}", cells.join("  "));
    }
}

fn print_table(floor: &Stats, results: &[BackendResult]) {
    println!(
        "{:<8} {:>14} {:>12} {:>16} {:>12} {:>14}",
        "backend", "spawn→exit p50", "p90 (ms)", "stdout MiB/s p50", "RSS (MiB)", "peak RSS (MiB)"
    );
    println!(
        "{:<8} {:>14.3} {:>12.3}   (spawn+wait with no helper: this machine's floor)",
        "floor", floor.median, floor.p90
    );
    for r in results {
        if let Some(why) = r.skipped.as_ref().or(r.error.as_ref()) {
            let label = if r.skipped.is_some() {
                "skipped"
            } else {
                "FAILED"
            };
            println!("{:<8} {label}: {why}", r.backend);
            continue;
        }
        let ms = r.spawn_exit_ms.as_ref();
        let mib = |k: Option<u64>| {
            k.map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or("-".into())
        };
        // Not measured (the QEMU reference has no agent to spawn through).
        let fig =
            |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or("-".into());
        println!(
            "{:<8} {:>14} {:>12} {:>16} {:>12} {:>14}",
            r.backend,
            fig(ms.map(|s| s.median), 3),
            fig(ms.map(|s| s.p90), 3),
            fig(r.stdout_mib_s.as_ref().map(|s| s.median), 0),
            mib(r.helper_rss_kib),
            mib(r.helper_peak_rss_kib),
        );
    }
    print_agent_table(results);
}

/// spawn→first stdout line and spawn→result of the agent turn, per backend.
fn print_agent_table(results: &[BackendResult]) {
    let rows: Vec<(&str, &agent::AgentTurn)> = results
        .iter()
        .filter_map(|r| Some((r.backend.as_str(), r.agent_turn.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nagent turn: Claude Code {} against a mock API, timed from spawn",
        crate::agent_turn::CLI_VERSION
    );
    println!(
        "{:<8} {:>6} {:>17} {:>13}",
        "backend", "turns", "first line p50", "result p50"
    );
    for (backend, a) in rows {
        if let Some(why) = a.skipped.as_ref() {
            println!("{backend:<8} skipped: {why}");
            continue;
        }
        let fig = |s: Option<&Stats>| {
            s.map(|s| format!("{:.0} ms", s.median))
                .unwrap_or("-".into())
        };
        println!(
            "{backend:<8} {:>6} {:>17} {:>13}{}",
            a.turns,
            fig(a.first_line_ms.as_ref()),
            fig(a.result_ms.as_ref()),
            a.error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
    }
}
