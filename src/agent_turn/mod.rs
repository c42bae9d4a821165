//! One real Claude Code turn through the helper protocol, without the
//! internet: the pinned CLI from the cache `tests/agent/fetch-claude.sh`
//! fills, a mock of the Messages API on the host's loopback ([`mock_api`]),
//! and a loopback host name the sandbox's egress proxy can be told to allow
//! ([`loopback_name`]). Used by `tests/agent_turn.rs` and the bench's
//! agent-turn row.

pub mod conversation;
pub mod drive;
pub mod mock_api;

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The Claude Code version the test and the bench run (npm
/// `@anthropic-ai/claude-code-linux-x64`); its integrity is pinned in
/// `tests/agent/fetch-claude.sh`.
pub const CLI_VERSION: &str = "2.1.328";

/// Where the fetch script caches the CLI: `<root>/<version>/sdk` is an SDK
/// directory for `installSdk` (`sdkSubpath` = it, `version` =
/// [`CLI_VERSION`]).
pub fn cache_root() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("cowork-microvm/claude-code"))
}

/// The cached SDK directory, when the CLI binary is in it.
pub fn cached_sdk() -> Option<PathBuf> {
    let sdk = cache_root()?.join(CLI_VERSION).join("sdk");
    sdk.join(CLI_VERSION)
        .join("claude")
        .is_file()
        .then_some(sdk)
}

/// Where the app keeps the SDK, relative to the home directory (installSdk's
/// `sdkSubpath`).
pub const SDK_SUBPATH: &str = ".local/share/claude-sdk";

/// Puts the CLI from the SDK directory `sdk` into `home`'s
/// [`SDK_SUBPATH`], as the app's download does: the kvm backend shares only
/// folders inside the home. A hard link when both are on one file system
/// (and the file is ours to link), else a copy. The bwrap and kvm backends
/// share it read-only; on the host backend the agent could write it, but
/// nothing there does (the auto-updater is off).
pub fn stage_sdk(sdk: &Path, home: &Path) -> std::io::Result<()> {
    let dir = home.join(SDK_SUBPATH).join(CLI_VERSION);
    std::fs::create_dir_all(&dir)?;
    let from = sdk.join(CLI_VERSION).join("claude");
    let to = dir.join("claude");
    if to.exists() {
        return Ok(());
    }
    if std::fs::hard_link(&from, &to).is_err() {
        std::fs::copy(&from, &to)?;
    }
    Ok(())
}

/// The environment that keeps the CLI talking only to the mock. Measured
/// with 2.1.328 in print mode: without it the CLI opens 6 connections to
/// api.anthropic.com:443 besides its Messages calls; the first variable
/// alone stops all of them (the others name what it covers, for older or
/// newer versions). Stream-json mode needs nothing more to stay
/// non-interactive.
pub const QUIET_ENV: &[(&str, &str)] = &[
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
];

/// A host name that resolves, on this machine and without editing system
/// files, only to IPv4 loopback addresses; and the first of them (what the
/// mock binds). The machine's own host name comes first (Debian maps it to
/// 127.0.1.1 in /etc/hosts, systemd's nss-myhostname to 127.0.0.2 or the
/// like), then `localhost.localdomain`. Not `localhost`: inside the bwrap
/// sandbox that is the sandbox's own loopback (and NO_PROXY lists it), while
/// any other name goes through the egress proxy, which resolves it on the
/// host, where the mock listens.
pub fn loopback_name() -> Option<(String, Ipv4Addr)> {
    let mut candidates = Vec::new();
    // The UTS name, as gethostname(2) returns it.
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            candidates.push(h.to_string());
        }
    }
    candidates.push("localhost.localdomain".into());
    candidates.into_iter().find_map(|name| {
        let addrs: Vec<IpAddr> = (name.as_str(), 0)
            .to_socket_addrs()
            .ok()?
            .map(|a| a.ip())
            .collect();
        // Every address must be loopback: traffic may go nowhere else.
        if addrs.is_empty() || !addrs.iter().all(IpAddr::is_loopback) {
            return None;
        }
        let v4 = addrs.into_iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })?;
        Some((name, v4))
    })
}
