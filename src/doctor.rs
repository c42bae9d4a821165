//! `cowork-microvm doctor`: one screen that says which backend will run and
//! why, what is missing, and the exact command that fixes it.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Settings;
use crate::select::{kvm_is_pvm, Kind, Selection};
use crate::server::socket::dir_problems;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    backend: Kind,
    why: String,
    sandboxed: bool,
    probes: Vec<crate::select::Probe>,
    notes: Vec<String>,
    kvm_pvm: bool,
    guest_image: String,
    image: ImageCheck,
    mke2fs: ToolCheck,
    socket_dir: SocketDir,
    config_file: String,
    config_problems: Vec<String>,
    data_dir: PathBuf,
    log_file: Option<PathBuf>,
}

/// The guest image the kvm backend would boot, checked as a boot checks it
/// (hashes, and the agent's wire version against this helper's).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageCheck {
    /// The image store (or flat image directory) configured.
    root: PathBuf,
    /// The directory a VM would boot (`current`).
    dir: PathBuf,
    present: bool,
    /// Every artifact matches its manifest's sha256.
    verified: bool,
    profile: Option<String>,
    /// The agent's wire protocol version the manifest records.
    wire_version: Option<u32>,
    helper_wire_version: u32,
    wire_matches: bool,
    detail: String,
    fix: Option<String>,
}

fn check_image(home: &std::path::Path) -> ImageCheck {
    let root = crate::config::image_dir(home);
    let dir = cowork_rootfs::store::resolve(&root);
    let ours = cowork_guest::wire::PROTOCOL_VERSION;
    let loaded = cowork_rootfs::manifest::Manifest::load(&dir);
    let present = loaded.is_ok();
    let (verified, profile, wire_version, detail) = match cowork_rootfs::manifest::verify_dir(&dir)
    {
        Ok(m) => (
            true,
            Some(m.profile.clone()),
            m.wire_version,
            format!(
                "{} profile in {}: every artifact matches its manifest",
                m.profile,
                dir.display()
            ),
        ),
        Err(e) => {
            let m = loaded.as_ref().ok();
            (
                false,
                m.map(|m| m.profile.clone()),
                m.and_then(|m| m.wire_version),
                e.to_string(),
            )
        }
    };
    let wire_matches = wire_version == Some(ours);
    let mismatch = loaded.as_ref().ok().and_then(|m| m.wire_mismatch(ours));
    let detail = match mismatch {
        Some(why) => format!("{detail}; {why}: the kvm backend refuses it"),
        None => detail,
    };
    ImageCheck {
        fix: (!verified || !wire_matches).then(crate::installed::image_build_command),
        root,
        dir,
        present,
        verified,
        profile,
        wire_version,
        helper_wire_version: ours,
        wire_matches,
        detail,
    }
}

/// A tool a backend needs, and whether it is the right one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolCheck {
    path: Option<PathBuf>,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

/// mke2fs makes the session disk (and image builds): it must be
/// e2fsprogs' (`-d`, `-E root_owner`), not busybox's applet, which lacks
/// them. e2fsprogs' prints its version and library with `-V`.
fn check_mke2fs() -> ToolCheck {
    let fix = Some("sudo apt-get install e2fsprogs".to_string());
    // Where the kvm backend's session disk looks first, then PATH.
    let path = ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| cowork_bwrap_fallback::bwrap::probe::find_on_path("mke2fs"));
    let Some(path) = path else {
        return ToolCheck {
            path: None,
            ok: false,
            detail: "mke2fs is not on PATH: the kvm backend cannot make the session disk".into(),
            fix,
        };
    };
    let out = std::process::Command::new(&path)
        .arg("-V")
        .stdin(std::process::Stdio::null())
        .output();
    let text = out
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t
        })
        .unwrap_or_default();
    let ok = text.contains("EXT2FS Library");
    let first = text.lines().next().unwrap_or("").trim().to_string();
    ToolCheck {
        detail: if ok {
            format!("{} is e2fsprogs' ({first})", path.display())
        } else {
            format!(
                "{} is not e2fsprogs' mke2fs (busybox's?): it cannot make the session disk",
                path.display()
            )
        },
        fix: (!ok).then_some(fix).flatten(),
        ok,
        path: Some(path),
    }
}

#[derive(Serialize)]
struct SocketDir {
    path: PathBuf,
    problems: Vec<String>,
}

/// Prints the report; the exit code is 0 when a sandboxed backend will run.
pub fn main(json: bool) -> i32 {
    let settings = Settings::load();
    let forced = settings.backend.as_ref().map(|(v, s)| (v.as_str(), *s));
    let sel: Selection = crate::select::select(forced);
    let sock = crate::config::default_socket();
    let sock_dir = sock
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let sandboxed = sel.usable && sel.chosen != Kind::Host;
    let image = check_image(&settings.home);
    let report = Report {
        backend: sel.chosen,
        why: sel.why.clone(),
        sandboxed,
        probes: sel.probes.clone(),
        notes: sel.notes.clone(),
        kvm_pvm: kvm_is_pvm(),
        guest_image: image.detail.clone(),
        image,
        mke2fs: check_mke2fs(),
        socket_dir: SocketDir {
            problems: dir_problems(&sock_dir),
            path: sock_dir,
        },
        config_file: settings.config_path.display().to_string(),
        config_problems: settings.problems.clone(),
        data_dir: settings.data_dir.clone(),
        log_file: crate::logging::log_file_path(&settings.home),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot encode the report: {e}"),
        }
    } else {
        print_text(&report);
    }
    if sandboxed {
        0
    } else {
        1
    }
}

fn print_text(r: &Report) {
    println!("cowork-microvm doctor");
    println!();
    let verdict = if r.sandboxed {
        "sandboxed"
    } else if r.backend == Kind::Host {
        "NO ISOLATION"
    } else {
        "UNUSABLE"
    };
    println!(
        "Backend that will run: {} ({verdict}) -- {}",
        r.backend.as_str(),
        r.why
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!();
    for p in &r.probes {
        let mark = if p.usable { " ok " } else { "FAIL" };
        println!("[{mark}] {:<6} {}", p.backend.as_str(), p.detail);
        if let Some(fix) = &p.fix {
            println!("       fix: {fix}");
        }
    }
    if r.kvm_pvm {
        println!("[note] kvm    this host's /dev/kvm comes from the kvm_pvm module (PVM): a standard guest kernel cannot boot directly on it");
    }
    let i = &r.image;
    let mark = if i.verified && i.wire_matches {
        " ok "
    } else {
        "warn"
    };
    println!("[{mark}] image  {}", i.detail);
    if let Some(fix) = &i.fix {
        println!("       fix: {fix}");
    }
    let m = &r.mke2fs;
    println!(
        "[{}] mke2fs {}",
        if m.ok { " ok " } else { "warn" },
        m.detail
    );
    if let Some(fix) = &m.fix {
        println!("       fix: {fix}");
    }
    println!();
    if r.socket_dir.problems.is_empty() {
        println!(
            "[ ok ] socket directory {} (0700, yours)",
            r.socket_dir.path.display()
        );
    } else {
        for p in &r.socket_dir.problems {
            println!("[warn] socket directory: {p}");
        }
    }
    if r.config_problems.is_empty() {
        println!("[ ok ] config {}", r.config_file);
    } else {
        for p in &r.config_problems {
            println!("[warn] config: {p}");
        }
    }
    println!("       data  {}", r.data_dir.display());
    if let Some(l) = &r.log_file {
        println!("       log   {}", l.display());
    }
    println!();
    if !r.sandboxed {
        println!("No sandboxed backend will run: Cowork sessions would run with your full access. Apply a fix above.");
    }
}
