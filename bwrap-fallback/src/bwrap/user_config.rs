//! The user's extra sandbox mounts, as the community daemon reads them:
//! `preferences.coworkBwrapMounts` in
//! `~/.config/Claude/claude_desktop_linux_config.json`. The file is
//! untrusted input: every bad part is skipped with a message naming it.

use std::path::{Path, PathBuf};

use cowork_backend::paths::{canonicalize_lenient, forbidden_reason};
use serde_json::Value;

pub const CONFIG_RELATIVE: &str = ".config/Claude/claude_desktop_linux_config.json";
/// Default binds that can never be switched off.
const ALWAYS: [&str; 3] = ["/", "/dev", "/proc"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserMounts {
    /// (source on the host, destination in the sandbox)
    pub ro: Vec<(PathBuf, PathBuf)>,
    pub rw: Vec<(PathBuf, PathBuf)>,
    /// Default binds the user switched off.
    pub disabled: Vec<PathBuf>,
}

fn bind_entry(v: &Value) -> Result<(PathBuf, PathBuf), String> {
    let (src, dst) = match v {
        Value::String(s) => (s.as_str(), s.as_str()),
        Value::Object(o) => match (
            o.get("src").and_then(Value::as_str),
            o.get("dst").and_then(Value::as_str),
        ) {
            (Some(s), Some(d)) => (s, d),
            (Some(s), None) => (s, s),
            _ => {
                return Err(format!(
                    "{v}: needs a string \"src\" (and optionally \"dst\")"
                ))
            }
        },
        other => return Err(format!("{other}: must be a path or {{src, dst}}")),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(format!("{src} -> {dst}: paths must be absolute"));
    }
    Ok((PathBuf::from(src), PathBuf::from(dst)))
}

fn check_bind(
    src: &Path,
    dst: &Path,
    writable: bool,
    home: &Path,
) -> Result<(PathBuf, PathBuf), String> {
    let canon = canonicalize_lenient(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if !canon.exists() {
        return Err(format!("{}: does not exist", src.display()));
    }
    if let Some(r) = forbidden_reason(&canon) {
        return Err(format!("{}: {r}", src.display()));
    }
    let dst_norm = cowork_backend::paths::join_within(Path::new("/"), &dst.to_string_lossy())
        .ok_or_else(|| format!("{}: '..' climbs above /", dst.display()))?;
    if let Some(r) = forbidden_reason(&dst_norm) {
        return Err(format!("destination {}: {r}", dst.display()));
    }
    if writable {
        let home = canonicalize_lenient(home).unwrap_or_else(|_| home.to_path_buf());
        if !canon.starts_with(&home) {
            return Err(format!(
                "{}: read-write binds must be inside your home directory",
                src.display()
            ));
        }
    }
    Ok((canon, dst_norm))
}

/// Reads and validates the user's mounts. Returns them with a message for
/// each thing that was ignored.
pub fn load(home: &Path) -> (UserMounts, Vec<String>) {
    let path = home.join(CONFIG_RELATIVE);
    let mut problems = Vec::new();
    let text = match std::fs::read(&path) {
        Ok(t) if t.len() <= 1024 * 1024 => t,
        Ok(_) => {
            return (
                UserMounts::default(),
                vec![format!("{} is over 1 MiB; ignored", path.display())],
            )
        }
        Err(_) => return (UserMounts::default(), problems),
    };
    let doc: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            return (
                UserMounts::default(),
                vec![format!(
                    "{} is not valid JSON ({e}); ignored",
                    path.display()
                )],
            )
        }
    };
    let Some(cfg) = doc
        .get("preferences")
        .and_then(|p| p.get("coworkBwrapMounts"))
    else {
        return (UserMounts::default(), problems);
    };
    let mut out = UserMounts::default();
    let list = |key: &str, problems: &mut Vec<String>| -> Vec<Value> {
        match cfg.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                problems.push(format!(
                    "coworkBwrapMounts.{key} must be a list, not {other}; ignored"
                ));
                Vec::new()
            }
        }
    };
    for (key, writable) in [("additionalROBinds", false), ("additionalBinds", true)] {
        for v in list(key, &mut problems) {
            match bind_entry(&v).and_then(|(s, d)| check_bind(&s, &d, writable, home)) {
                Ok(b) if writable => out.rw.push(b),
                Ok(b) => out.ro.push(b),
                Err(e) => problems.push(format!("coworkBwrapMounts.{key}: {e}; ignored")),
            }
        }
    }
    for v in list("disabledDefaultBinds", &mut problems) {
        match v.as_str() {
            Some(p) if ALWAYS.contains(&p.trim_end_matches('/')) || p == "/" => problems.push(
                format!("coworkBwrapMounts.disabledDefaultBinds: {p} cannot be disabled; ignored"),
            ),
            Some(p) if p.starts_with('/') => {
                out.disabled.push(PathBuf::from(p.trim_end_matches('/')))
            }
            _ => problems.push(format!(
                "coworkBwrapMounts.disabledDefaultBinds: {v} is not an absolute path; ignored"
            )),
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_every_entry() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(home.join("data")).unwrap();
        std::fs::create_dir_all(home.join(".config/Claude")).unwrap();
        std::os::unix::fs::symlink("/proc/self", home.join("proclink")).unwrap();
        let data = home.join("data");
        let cfg = serde_json::json!({"preferences": {"coworkBwrapMounts": {
            "additionalROBinds": ["/usr/share", {"src": data, "dst": "/data"}, "relative", "/proc/cpuinfo", home.join("proclink"), 5],
            "additionalBinds": [data, "/usr/share", {"src": data, "dst": "/sys/x"}],
            "disabledDefaultBinds": ["/etc", "/proc", "/", 7],
        }}});
        std::fs::write(home.join(CONFIG_RELATIVE), cfg.to_string()).unwrap();
        let (m, problems) = load(&home);
        assert_eq!(
            m.ro,
            vec![
                (PathBuf::from("/usr/share"), PathBuf::from("/usr/share")),
                (data.clone(), PathBuf::from("/data"))
            ]
        );
        assert_eq!(m.rw, vec![(data.clone(), data.clone())]);
        assert_eq!(m.disabled, vec![PathBuf::from("/etc")]);
        assert_eq!(problems.len(), 9, "{problems:#?}");

        std::fs::write(home.join(CONFIG_RELATIVE), "{oops").unwrap();
        let (m, problems) = load(&home);
        assert_eq!(m, UserMounts::default());
        assert!(problems[0].contains("not valid JSON"));
        std::fs::write(
            home.join(CONFIG_RELATIVE),
            r#"{"preferences":{"coworkBwrapMounts":{"additionalBinds":"x"}}}"#,
        )
        .unwrap();
        assert!(load(&home).1[0].contains("must be a list"));
    }
}
