//! Where things live, and the helper's own settings: environment variables
//! and `~/.config/cowork-microvm/config.json`. Every source is untrusted: a
//! bad value is logged and ignored, never fatal.

use std::path::{Path, PathBuf};

use cowork_backend::protected::Protection;
use serde::Deserialize;

pub const CONFIG_ENV: &str = "COWORK_MICROVM_CONFIG";
/// This project's own backend choice; wins over COWORK_VM_BACKEND, which the
/// community launcher already spends on `bwrap`.
pub const BACKEND_ENV: &str = "COWORK_MICROVM_BACKEND";
/// The community daemon's override, honoured the same way.
pub const COMMUNITY_BACKEND_ENV: &str = "COWORK_VM_BACKEND";
pub const DATA_DIR_ENV: &str = "COWORK_VM_DATA_DIR";
pub const IMAGE_DIR_ENV: &str = "COWORK_VM_IMAGE_DIR";
/// `off` runs the VMM's threads and a kvm helper without their seccomp
/// filters, `log` lets through but logs (kernel log, `audit: type=1326`)
/// what they would refuse; both for debugging. Anything else enforces.
pub const SECCOMP_ENV: &str = "COWORK_VM_SECCOMP";

/// How the VMM's threads and a kvm helper confine themselves (see
/// [`SECCOMP_ENV`]).
pub fn vm_seccomp() -> Option<cowork_vmm::seccomp::Mode> {
    use cowork_vmm::seccomp::Mode;
    match std::env::var(SECCOMP_ENV).as_deref() {
        Ok("off") => {
            tracing::warn!("{SECCOMP_ENV}=off: the VM's threads run without seccomp filters");
            None
        }
        Ok("log") => {
            tracing::warn!("{SECCOMP_ENV}=log: seccomp filters only log what they would refuse");
            Some(Mode::Log)
        }
        _ => Some(Mode::Enforce),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// "kvm", "bwrap" or "host".
    pub backend: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `false` lets sessions write the protected paths of their read-write
    /// folders (`cowork_backend::protected`); on by default.
    pub protected_paths: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub home: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    /// The configured backend and where it came from, if any.
    pub backend: Option<(String, &'static str)>,
    /// Whether the protected paths of read-write folders stay read-only.
    pub protection: Protection,
    /// Problems found while reading the settings, for the log and doctor.
    pub problems: Vec<String>,
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn home_dir() -> PathBuf {
    env_path("HOME")
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Where guest images live: COWORK_VM_IMAGE_DIR, else
/// `$XDG_DATA_HOME/cowork-microvm/images`.
pub fn image_dir(home: &Path) -> PathBuf {
    env_path(IMAGE_DIR_ENV).unwrap_or_else(|| {
        env_path("XDG_DATA_HOME")
            .unwrap_or_else(|| home.join(".local/share"))
            .join("cowork-microvm/images")
    })
}

/// The image to boot: the store's `current` image under [`image_dir`], or
/// that directory itself when it holds a flat image (`image build --out`).
pub fn current_image_dir(home: &Path) -> PathBuf {
    cowork_rootfs::store::resolve(&image_dir(home))
}

/// Where expensive builds (the guest kernel) are cached.
pub fn cache_dir(home: &Path) -> PathBuf {
    env_path("COWORK_VM_CACHE_DIR").unwrap_or_else(|| {
        env_path("XDG_CACHE_HOME")
            .unwrap_or_else(|| home.join(".cache"))
            .join("cowork-microvm")
    })
}

/// The socket a direct run uses without `-socket`.
pub fn default_socket() -> PathBuf {
    env_path("XDG_RUNTIME_DIR")
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("cowork-vm-service.sock")
}

fn read_file_config(path: &Path, problems: &mut Vec<String>) -> FileConfig {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileConfig::default(),
        Err(e) => {
            problems.push(format!("cannot read {}: {e}; ignoring it", path.display()));
            return FileConfig::default();
        }
    };
    if text.len() > 1024 * 1024 {
        problems.push(format!("{} is over 1 MiB; ignoring it", path.display()));
        return FileConfig::default();
    }
    serde_json::from_slice(&text).unwrap_or_else(|e| {
        problems.push(format!("{} is not valid: {e}; ignoring it", path.display()));
        FileConfig::default()
    })
}

impl Settings {
    pub fn load() -> Self {
        let home = home_dir();
        let config_path = env_path(CONFIG_ENV).unwrap_or_else(|| {
            env_path("XDG_CONFIG_HOME")
                .unwrap_or_else(|| home.join(".config"))
                .join("cowork-microvm/config.json")
        });
        let mut problems = Vec::new();
        let file = read_file_config(&config_path, &mut problems);
        let data_dir = env_path(DATA_DIR_ENV)
            .or(file.data_dir.filter(|d| d.is_absolute()))
            .unwrap_or_else(|| {
                env_path("XDG_DATA_HOME")
                    .unwrap_or_else(|| home.join(".local/share"))
                    .join("cowork-microvm")
            });
        let backend = std::env::var(BACKEND_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (v, BACKEND_ENV))
            .or(file.backend.map(|v| (v, "config file")))
            .or_else(|| {
                std::env::var(COMMUNITY_BACKEND_ENV)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, COMMUNITY_BACKEND_ENV))
            });
        let protection = match file.protected_paths {
            Some(false) => {
                tracing::warn!("protectedPaths is false: sessions may rewrite git hooks, shell start-up files and the like in their read-write folders");
                Protection::Off
            }
            _ => Protection::On,
        };
        Settings {
            home,
            data_dir,
            config_path,
            backend,
            protection,
            problems,
        }
    }
}
