//! The environment of a spawned session process (helper-protocol.md,
//! "Environment of a spawned process").

use std::collections::BTreeMap;

/// Never passed on to a session: they would make the agent think it runs
/// inside Claude Code or Electron.
pub const BLOCKED_KEYS: [&str; 3] = ["CLAUDECODE", "ELECTRON_RUN_AS_NODE", "ELECTRON_NO_ASAR"];
pub const TOKEN_KEY: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// `base` (what the session inherits), then the approved token, then the
/// spawn's own `env` (so an explicit value, even empty, wins), minus the
/// blocked keys, with `TERM=xterm-256color`.
pub fn session_env(
    base: impl IntoIterator<Item = (String, String)>,
    requested: &BTreeMap<String, String>,
    token: Option<&str>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = base.into_iter().collect();
    if let Some(t) = token {
        env.insert(TOKEN_KEY.to_string(), t.to_string());
    }
    for (k, v) in requested {
        env.insert(k.clone(), v.clone());
    }
    for k in BLOCKED_KEYS {
        env.remove(k);
    }
    env.insert("TERM".into(), "xterm-256color".into());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn rules() {
        let base = map(&[("CLAUDECODE", "1"), ("PATH", "/bin"), ("TERM", "dumb")]);
        let env = session_env(
            base.clone(),
            &map(&[("ELECTRON_RUN_AS_NODE", "1")]),
            Some("tok"),
        );
        assert_eq!(
            env,
            map(&[
                ("PATH", "/bin"),
                ("TERM", "xterm-256color"),
                (TOKEN_KEY, "tok")
            ])
        );
        let env = session_env(base, &map(&[(TOKEN_KEY, "")]), Some("tok"));
        assert_eq!(env[TOKEN_KEY], "", "an explicit empty value wins");
    }
}
