//! The agent command: the app spawns Claude Code as
//! `/usr/local/bin/claude` (its path inside Anthropic's VM), and both
//! reference peers run the binary `installSdk` named for any command whose
//! basename is `claude` (helper-protocol.md, "What the current client sends
//! and expects").

use std::path::Path;

use crate::{BackendError, Result};

/// The basename that means "the agent".
pub const AGENT_NAME: &str = "claude";

/// True when `command` names the agent (`claude`, `/usr/local/bin/claude`,
/// any path ending in `claude`).
pub fn is_agent_command(command: &str) -> bool {
    Path::new(command)
        .file_name()
        .is_some_and(|n| n == AGENT_NAME)
}

/// The installed SDK binary to run for `command`, `None` when `command` is
/// not the agent. The agent without an `installSdk` is an error that says
/// what to do, not a run of whatever `claude` the host has on its PATH.
pub fn agent_binary<'a>(command: &str, sdk: Option<&'a Path>) -> Result<Option<&'a Path>> {
    if !is_agent_command(command) {
        return Ok(None);
    }
    sdk.map(Some)
        .ok_or_else(|| BackendError::SdkNotInstalled(command.to_string()))
}

/// The agent binary in an SDK folder (`<sdkSubpath>/<version>`), which
/// installSdk requires to exist and be executable.
pub fn sdk_binary(dir: &Path) -> Result<std::path::PathBuf> {
    let bin = dir.join(AGENT_NAME);
    if crate::paths::is_executable(&bin) {
        Ok(bin)
    } else {
        Err(BackendError::SdkMissing(bin))
    }
}

/// Puts `dir` first on `PATH` in `env` (the inherited environment), so a
/// process that looks itself up by name (`claude` running `claude`) finds
/// the installed SDK.
pub fn prepend_path(env: &mut Vec<(String, String)>, dir: &Path) {
    let dir = dir.to_string_lossy();
    match env.iter_mut().find(|(k, _)| k == "PATH") {
        Some((_, v)) if !v.is_empty() => *v = format!("{dir}:{v}"),
        Some((_, v)) => *v = dir.into_owned(),
        None => env.push(("PATH".into(), dir.into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_command_named_claude_is_the_agent() {
        for c in [
            "claude",
            "/usr/local/bin/claude",
            "bin/claude",
            "//x/claude",
        ] {
            assert!(is_agent_command(c), "{c}");
        }
        for c in ["claude-code", "/bin/sh", "claude.sh", "/usr/local/bin/", ""] {
            assert!(!is_agent_command(c), "{c}");
        }
    }

    #[test]
    fn agent_needs_an_installed_sdk() {
        let sdk = Path::new("/home/a/.sdk/1.0/claude");
        assert_eq!(
            agent_binary("/usr/local/bin/claude", Some(sdk)).unwrap(),
            Some(sdk)
        );
        assert_eq!(agent_binary("/bin/sh", Some(sdk)).unwrap(), None);
        assert_eq!(agent_binary("/bin/sh", None).unwrap(), None);
        let e = agent_binary("/usr/local/bin/claude", None).unwrap_err();
        assert!(e.to_string().contains("call installSdk"), "{e}");
    }

    #[test]
    fn path_gets_the_sdk_first() {
        let mut env = vec![("PATH".to_string(), "/usr/bin".to_string())];
        prepend_path(&mut env, Path::new("/s/1.0"));
        assert_eq!(env, vec![("PATH".into(), "/s/1.0:/usr/bin".into())]);
        let mut env = Vec::new();
        prepend_path(&mut env, Path::new("/s/1.0"));
        assert_eq!(env, vec![("PATH".into(), "/s/1.0".into())]);
    }
}
