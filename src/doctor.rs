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
    socket_dir: SocketDir,
    config_file: String,
    config_problems: Vec<String>,
    data_dir: PathBuf,
    log_file: Option<PathBuf>,
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
    let report = Report {
        backend: sel.chosen,
        why: sel.why.clone(),
        sandboxed,
        probes: sel.probes.clone(),
        notes: sel.notes.clone(),
        kvm_pvm: kvm_is_pvm(),
        guest_image: {
            let dir = crate::config::image_dir(&settings.home);
            match cowork_rootfs::manifest::verify_dir(&dir) {
                Ok(m) => format!(
                    "{} profile in {}: every artifact matches its manifest",
                    m.profile,
                    dir.display()
                ),
                Err(e) => e.to_string(),
            }
        },
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
    println!("[note] image  {}", r.guest_image);
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
