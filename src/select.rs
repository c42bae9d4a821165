//! Which backend serves, decided the way the community daemon decides
//! (backends.md): an explicit choice, else bwrap if it works, else kvm if it
//! can run here, else host with a loud warning.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Kvm,
    Bwrap,
    Host,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Some(Kind::Kvm),
            "bwrap" => Some(Kind::Bwrap),
            "host" => Some(Kind::Host),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kvm => "kvm",
            Kind::Bwrap => "bwrap",
            Kind::Host => "host",
        }
    }
}

/// What a backend's check found.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub backend: Kind,
    pub usable: bool,
    /// Why it is or is not usable.
    pub detail: String,
    /// The command that fixes it, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub chosen: Kind,
    /// Whether `chosen` can actually run sessions.
    pub usable: bool,
    pub why: String,
    pub probes: Vec<Probe>,
    pub notes: Vec<String>,
}

impl Selection {
    pub fn probe(&self, kind: Kind) -> Option<&Probe> {
        self.probes.iter().find(|p| p.backend == kind)
    }
}

pub use cowork_bwrap_fallback::bwrap::probe::find_on_path;

/// Runs `bwrap --ro-bind / / true` with a time limit.
pub fn probe_bwrap() -> Probe {
    let p = cowork_bwrap_fallback::bwrap::probe::probe();
    Probe {
        backend: Kind::Bwrap,
        usable: p.usable,
        detail: p.detail,
        fix: p.fix,
    }
}

/// Whether /dev/kvm is provided by the kvm_pvm module (no hardware
/// virtualization: a standard guest kernel cannot boot there).
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn kvm_rw() -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err(
            "/dev/kvm does not exist (no KVM on this machine, or the kvm module is not loaded)"
                .into(),
        );
    }
    access(dev, AccessFlags::R_OK | AccessFlags::W_OK)
        .map_err(|e| format!("/dev/kvm is not read-write for you: {e}"))
}

/// Why the kvm backend cannot run here, or `None` when it can: /dev/kvm
/// read-write, real hardware virtualization (not PVM), and a guest image.
pub fn kvm_unusable_reason() -> Option<String> {
    if let Err(e) = kvm_rw() {
        return Some(e);
    }
    if kvm_is_pvm() {
        return Some("/dev/kvm is PVM-backed (the kvm_pvm module): a standard guest kernel cannot boot on it; use bwrap here".into());
    }
    let images = crate::config::image_dir(&crate::config::home_dir());
    // Presence only: hashing the artifacts is doctor's job and startVM's,
    // not every helper start-up's.
    match cowork_rootfs::manifest::Manifest::load(&images) {
        Ok(m) if m.artifacts.contains_key("vmlinux") => None,
        Ok(_) => Some(format!(
            "the guest image in {} has no kernel; run make image",
            images.display()
        )),
        Err(e) => Some(format!("guest image: {e}")),
    }
}

pub fn probe_kvm() -> Probe {
    if let Err(e) = kvm_rw() {
        return Probe {
            backend: Kind::Kvm,
            usable: false,
            detail: e,
            fix: Some("sudo usermod -aG kvm $USER   (then log in again)".into()),
        };
    }
    match kvm_unusable_reason() {
        None => Probe {
            backend: Kind::Kvm,
            usable: true,
            detail: "/dev/kvm is read-write and a guest image is present".into(),
            fix: None,
        },
        Some(reason) => Probe {
            backend: Kind::Kvm,
            usable: false,
            fix: (!kvm_is_pvm())
                .then(|| "make image   (builds the guest kernel and rootfs)".to_string()),
            detail: reason,
        },
    }
}

/// Decides the backend. `forced` is an explicit choice and where it came
/// from (CLI flag, environment, config file).
pub fn select(forced: Option<(&str, &str)>) -> Selection {
    let mut notes = Vec::new();
    let bwrap = probe_bwrap();
    let kvm = probe_kvm();
    let host = Probe {
        backend: Kind::Host,
        usable: true,
        detail: "always available; NO isolation: sessions see all your files and the network"
            .into(),
        fix: None,
    };
    let probes = vec![bwrap.clone(), kvm.clone(), host];

    if let Some((value, source)) = forced {
        match Kind::parse(value) {
            Some(kind) => {
                let usable = match kind {
                    Kind::Host => true,
                    Kind::Bwrap => bwrap.usable,
                    Kind::Kvm => kvm.usable,
                };
                return Selection {
                    chosen: kind,
                    usable,
                    why: format!("{source}={value}"),
                    probes,
                    notes,
                };
            }
            None => notes.push(format!(
                "{source}={value:?} is not a backend (kvm, bwrap, host); detecting instead"
            )),
        }
    }
    let pick = |chosen: Kind, usable: bool, why: String, mut notes: Vec<String>| {
        if chosen != Kind::Kvm && kvm.usable {
            notes.push("kvm is usable here: COWORK_MICROVM_BACKEND=kvm gives VM isolation".into());
        }
        Selection {
            chosen,
            usable,
            why,
            probes: probes.clone(),
            notes,
        }
    };
    if find_on_path("bwrap").is_some() && !bwrap.usable {
        notes.push(format!("bwrap is installed but unusable: {}", bwrap.detail));
        return pick(
            Kind::Host,
            true,
            "bwrap is installed but cannot run (not falling through to kvm)".into(),
            notes,
        );
    }
    if bwrap.usable {
        return pick(Kind::Bwrap, true, "bwrap works".into(), notes);
    }
    if kvm.usable {
        return pick(
            Kind::Kvm,
            true,
            "/dev/kvm and a verified guest image are present".into(),
            notes,
        );
    }
    pick(
        Kind::Host,
        true,
        "no sandboxed backend is usable".into(),
        notes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_is_case_insensitive_and_unknown_values_detect() {
        assert_eq!(Kind::parse(" KVM "), Some(Kind::Kvm));
        let s = select(Some(("HoSt", "test")));
        assert_eq!(s.chosen, Kind::Host);
        let s = select(Some(("qemu", "test")));
        assert!(s.notes.iter().any(|n| n.contains("not a backend")));
    }
}
