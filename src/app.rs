//! Putting a helper together: settings, logging, the chosen backend.

use std::sync::Arc;

use cowork_backend::{Backend, EventBus};
use cowork_bwrap_fallback::bwrap::{probe, BwrapSetup};
use cowork_bwrap_fallback::{HostDirs, Isolation, LocalBackend};

use crate::config::Settings;
use crate::dispatch::Helper;
use crate::logging::LogControl;
use crate::select::{select, Kind, Selection};
use crate::unavailable::UnavailableBackend;

/// Selects the backend (`cli_backend` wins over the settings) and logs why.
pub fn choose(settings: &Settings, cli_backend: Option<&str>) -> Selection {
    let forced = cli_backend
        .map(|b| (b, "--backend"))
        .or(settings.backend.as_ref().map(|(v, src)| (v.as_str(), *src)));
    let sel = select(forced);
    for p in &settings.problems {
        tracing::warn!("config: {p}");
    }
    for n in &sel.notes {
        tracing::info!("backend selection: {n}");
    }
    tracing::info!(
        backend = sel.chosen.as_str(),
        "backend selected: {}",
        sel.why
    );
    if sel.chosen == Kind::Host {
        tracing::warn!(
            "=== host backend: sessions run with NO isolation and full network access ==="
        );
    }
    sel
}

/// The bwrap sandbox's host facts; `None` when bwrap is not installed.
fn bwrap_setup() -> Option<BwrapSetup> {
    let bwrap = probe::find_on_path("bwrap")?;
    let helper_exe = std::env::current_exe().ok()?;
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    Some(BwrapSetup {
        disable_userns: probe::supports_disable_userns(&bwrap),
        bwrap,
        helper_exe,
        runtime_dir: runtime.join(format!("cowork-microvm-{}", std::process::id())),
    })
}

pub fn build(settings: &Settings, sel: &Selection, log: LogControl) -> Helper {
    let bus = EventBus::new();
    let dirs = HostDirs {
        home: settings.home.clone(),
        data: settings.data_dir.clone(),
        protection: settings.protection,
    };
    let backend: Option<Arc<dyn Backend>> = match (sel.chosen, sel.usable) {
        (Kind::Host, _) => Some(Arc::new(LocalBackend::new(
            Isolation::Host,
            dirs,
            bus.clone(),
        ))),
        (Kind::Bwrap, true) => bwrap_setup().map(|s| {
            Arc::new(LocalBackend::new(Isolation::Bwrap(s), dirs, bus.clone())) as Arc<dyn Backend>
        }),
        (Kind::Kvm, true) => Some(Arc::new(cowork_kvm_backend::KvmBackend::new(
            cowork_kvm_backend::KvmConfig {
                images: crate::config::image_dir(&settings.home),
                data: settings.data_dir.join("vm"),
                home: settings.home.clone(),
                protection: settings.protection,
                machine: cowork_kvm_backend::Machine::Vm {
                    seccomp: crate::config::vm_seccomp(),
                },
            },
            bus.clone(),
        ))),
        _ => None,
    };
    let backend: Arc<dyn Backend> = match backend {
        Some(b) => b,
        None => {
            let kind = sel.chosen;
            let reason = sel
                .probe(kind)
                .map(|p| match &p.fix {
                    Some(fix) => format!("{} (fix: {fix})", p.detail),
                    None => p.detail.clone(),
                })
                .unwrap_or_default();
            tracing::error!(
                backend = kind.as_str(),
                "the requested backend cannot run here: {reason}"
            );
            Arc::new(UnavailableBackend {
                name: kind.as_str(),
                reason,
            })
        }
    };
    Helper { backend, bus, log }
}
