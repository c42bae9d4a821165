//! Which backend serves, decided the way the community daemon decides
//! (backends.md): an explicit choice, else bwrap if it works, else kvm if it
//! can run here, else host with a loud warning. A bwrap that is installed
//! but cannot create namespaces falls through to kvm like a missing one:
//! host, with no isolation at all, is only the last resort.

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

pub use cowork_kvm_backend::probe::{kvm_is_pvm, kvm_rw};

/// Why the kvm backend cannot run here, or `None` when it can (the image
/// in the configured image directory).
pub fn kvm_unusable_reason() -> Option<String> {
    let images = crate::config::current_image_dir(&crate::config::home_dir());
    cowork_kvm_backend::probe::unusable_reason(&images)
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
            fix: (!kvm_is_pvm()).then(|| {
                format!(
                    "{}   (builds the guest image)",
                    crate::installed::image_build_command()
                )
            }),
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
    let (chosen, why) = detect(&bwrap, find_on_path("bwrap").is_some(), &kvm, &mut notes);
    Selection {
        chosen,
        usable: true,
        why,
        probes,
        notes,
    }
}

/// The automatic choice: bwrap, then kvm, then host.
fn detect(
    bwrap: &Probe,
    bwrap_installed: bool,
    kvm: &Probe,
    notes: &mut Vec<String>,
) -> (Kind, String) {
    if bwrap_installed && !bwrap.usable {
        notes.push(format!("bwrap is installed but unusable: {}", bwrap.detail));
    }
    let (chosen, why) = if bwrap.usable {
        (Kind::Bwrap, "bwrap works")
    } else if kvm.usable {
        (Kind::Kvm, "/dev/kvm and a guest image are present")
    } else {
        (Kind::Host, "no sandboxed backend is usable")
    };
    if chosen == Kind::Bwrap && kvm.usable {
        notes.push("kvm is usable here: COWORK_MICROVM_BACKEND=kvm gives VM isolation".into());
    }
    (chosen, why.into())
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

    fn probe(backend: Kind, usable: bool) -> Probe {
        Probe {
            backend,
            usable,
            detail: "d".into(),
            fix: None,
        }
    }

    /// bwrap, then kvm, then host; a broken bwrap does not stop kvm.
    #[test]
    fn detection_order() {
        let kind = |bwrap: bool, installed: bool, kvm: bool| {
            let mut notes = Vec::new();
            let (k, _) = detect(
                &probe(Kind::Bwrap, bwrap),
                installed,
                &probe(Kind::Kvm, kvm),
                &mut notes,
            );
            (k, notes)
        };
        assert_eq!(kind(true, true, true).0, Kind::Bwrap);
        assert_eq!(kind(false, false, true).0, Kind::Kvm);
        let (k, notes) = kind(false, true, true);
        assert_eq!(k, Kind::Kvm, "installed but unusable bwrap falls through");
        assert!(notes.iter().any(|n| n.contains("installed but unusable")));
        assert_eq!(kind(false, true, false).0, Kind::Host);
        assert_eq!(kind(false, false, false).0, Kind::Host);
    }
}
