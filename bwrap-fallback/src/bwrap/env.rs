//! Which of the helper's own environment variables reach a bwrap session.
//!
//! The helper's environment is the desktop app's, which may hold API keys,
//! `GITHUB_TOKEN`, `AWS_*` credentials and the like: a sandbox that
//! inherited it would hand them to whatever the agent runs. So the sandbox
//! starts from nothing but locale, terminal and search-path settings; the
//! rest (HOME, TMPDIR, the proxy variables, the token, the spawn's own
//! `env`) is added explicitly by the launch.

/// Variables passed through by exact name: harmless, and programs behave
/// oddly without them.
const PASSED: [&str; 7] = ["PATH", "LANG", "LANGUAGE", "TERM", "TZ", "USER", "LOGNAME"];

/// Whether the helper's variable `key` may enter the sandbox.
pub fn passes(key: &str) -> bool {
    PASSED.contains(&key) || key.starts_with("LC_")
}

/// The subset of `vars` (normally the helper's environment) a sandbox
/// inherits.
pub fn inherited(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter().filter(|(k, _)| passes(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_variables_pass() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C.UTF-8"),
            ("LANG", "C"),
            ("GITHUB_TOKEN", "ghp_x"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("ANTHROPIC_API_KEY", "sk"),
            ("HOME", "/home/a"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("PATHX", "no"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let kept: Vec<String> = inherited(vars).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, ["PATH", "LC_ALL", "LANG"]);
    }
}
