//! Whether bubblewrap can run here, and if not, why and how to fix it
//! (backends.md: `bwrap --ro-bind / / true` within 5 s, failures classified).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROBE_LIMIT: Duration = Duration::from_secs(5);

pub const INSTALL_FIX: &str = "sudo apt-get install bubblewrap   (Fedora: sudo dnf install bubblewrap; Arch: sudo pacman -S bubblewrap)";

/// Ubuntu 24.04+ blocks unprivileged user namespaces through AppArmor.
pub const APPARMOR_FIX: &str = "sudo sh -c 'printf \"abi <abi/4.0>,\\ninclude <tunables/global>\\nprofile bwrap /usr/bin/bwrap flags=(unconfined) {\\n  userns,\\n}\\n\" > /etc/apparmor.d/bwrap && apparmor_parser -r /etc/apparmor.d/bwrap'   (or, system-wide: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)";

#[derive(Debug, Clone)]
pub struct BwrapProbe {
    pub path: Option<PathBuf>,
    pub usable: bool,
    pub detail: String,
    pub fix: Option<String>,
}

pub use cowork_backend::paths::is_executable;

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Stderr of a failed probe that means unprivileged user namespaces are
/// blocked (Ubuntu's AppArmor restriction, or a sysctl).
pub fn userns_blocked(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "user namespace",
        "apparmor",
        "operation not permitted",
        "uid map",
        "gid map",
        "clone_newuser",
        "clone_newns",
        "cap_sys_admin",
        "no permissions to create new namespace",
    ]
    .iter()
    .any(|p| s.contains(p))
}

pub fn probe() -> BwrapProbe {
    let Some(bwrap) = find_on_path("bwrap") else {
        return BwrapProbe {
            path: None,
            usable: false,
            detail: "bwrap is not installed".into(),
            fix: Some(INSTALL_FIX.into()),
        };
    };
    let fail = |detail: String, fix: Option<&str>| BwrapProbe {
        path: Some(bwrap.clone()),
        usable: false,
        detail,
        fix: fix.map(str::to_string),
    };
    let child = Command::new(&bwrap)
        .args(["--ro-bind", "/", "/", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {}: {e}", bwrap.display()), None),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() < PROBE_LIMIT => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut stderr = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(4096).read_to_string(&mut stderr);
    }
    match status {
        None => fail(
            format!("`bwrap --ro-bind / / true` did not finish within {}s", PROBE_LIMIT.as_secs()),
            None,
        ),
        Some(st) if st.success() => BwrapProbe {
            path: Some(bwrap.clone()),
            usable: true,
            detail: format!("{} can create namespaces", bwrap.display()),
            fix: None,
        },
        Some(_) if userns_blocked(&stderr) => fail(
            format!(
                "bwrap cannot create a user namespace: unprivileged user namespaces are blocked (Ubuntu 24.04+ sets apparmor_restrict_unprivileged_userns=1). bwrap said: {}",
                stderr.trim()
            ),
            Some(APPARMOR_FIX),
        ),
        Some(st) => fail(format!("`bwrap --ro-bind / / true` failed ({st}): {}", stderr.trim()), None),
    }
}

/// Whether this bwrap has `--disable-userns` (0.8 and later).
pub fn supports_disable_userns(bwrap: &Path) -> bool {
    Command::new(bwrap)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--disable-userns"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_userns_failures() {
        assert!(userns_blocked(
            "bwrap: setting up uid map: Permission denied"
        ));
        assert!(userns_blocked("bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces."));
        assert!(!userns_blocked(
            "bwrap: execvp true: No such file or directory"
        ));
    }
}
