//! Guest paths inside a spawn's arguments and environment, for backends that
//! run in the host's path space. Which flags and variables carry paths is
//! fixed by helper-protocol.md.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::paths::{parse_guest_path, SessionPaths};

/// Flags whose following values are directories (`--add-dir` takes several).
const DIR_FLAGS: [&str; 2] = ["--add-dir", "--plugin-dir"];
/// Flags whose value is a comma list of `Tool` or `Tool(pattern)`.
const TOOL_FLAGS: [&str; 2] = ["--allowedTools", "--disallowedTools"];
/// Variables whose values are paths.
pub const PATH_VARS: [&str; 2] = ["CLAUDE_CONFIG_DIR", "CLAUDE_COWORK_MEMORY_PATH_OVERRIDE"];

fn path_value(sp: &SessionPaths, v: &str) -> Result<String> {
    Ok(match sp.translate(v)? {
        Some(p) => p.to_string_lossy().into_owned(),
        None => v.to_string(),
    })
}

/// A tool pattern that is a guest path keeps its form: `//sessions/...`
/// (Claude Code's absolute-path marker) becomes `//<host path>`.
fn tool_pattern(sp: &SessionPaths, pattern: &str) -> Result<String> {
    let Some(g) = parse_guest_path(pattern) else {
        return Ok(pattern.to_string());
    };
    let host = path_value(sp, pattern)?;
    Ok(if g.doubled { format!("/{host}") } else { host })
}

/// Splits a tool list at the commas that are not inside parentheses.
pub fn split_tool_list(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out
}

fn tool_list(sp: &SessionPaths, list: &str) -> Result<String> {
    let items = split_tool_list(list)
        .into_iter()
        .map(|item| {
            let t = item.trim();
            match (t.find('('), t.ends_with(')')) {
                (Some(open), true) => {
                    let pat = tool_pattern(sp, &t[open + 1..t.len() - 1])?;
                    Ok(format!("{}({pat})", &t[..open]))
                }
                _ => Ok(item.to_string()),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(items.join(","))
}

/// Translates the path-carrying flags in `args` (both `--flag value` and
/// `--flag=value`). Anything that escapes its mount is an error.
pub fn translate_args(sp: &SessionPaths, args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if let Some((flag, value)) = arg.split_once('=') {
            if DIR_FLAGS.contains(&flag) {
                out.push(format!("{flag}={}", path_value(sp, value)?));
                continue;
            }
            if TOOL_FLAGS.contains(&flag) {
                out.push(format!("{flag}={}", tool_list(sp, value)?));
                continue;
            }
        }
        out.push(arg.clone());
        if DIR_FLAGS.contains(&arg.as_str()) {
            // --add-dir is variadic: every value up to the next flag.
            let variadic = arg == "--add-dir";
            while i < args.len() && !args[i].starts_with('-') {
                out.push(path_value(sp, &args[i])?);
                i += 1;
                if !variadic {
                    break;
                }
            }
        } else if TOOL_FLAGS.contains(&arg.as_str()) && i < args.len() {
            out.push(tool_list(sp, &args[i])?);
            i += 1;
        }
    }
    Ok(out)
}

/// Translates the path-carrying variables of `env` in place.
pub fn translate_env(sp: &SessionPaths, env: &mut BTreeMap<String, String>) -> Result<()> {
    for key in PATH_VARS {
        if let Some(v) = env.get_mut(key) {
            *v = path_value(sp, v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MountMode;
    use crate::paths::HostMount;
    use std::path::PathBuf;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_are_translated_and_escapes_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let p = root.join("p");
        std::fs::create_dir_all(&p).unwrap();
        let mounts = vec![(
            "proj".into(),
            HostMount {
                host: p.clone(),
                mode: MountMode::Rw,
            },
        )];
        let sp = SessionPaths {
            name: "s",
            dir: &root,
            mounts: &mounts,
        };
        let ps = p.to_string_lossy();
        let args = s(&[
            "--add-dir",
            "/sessions/s/mnt/proj/a",
            "//sessions/s/mnt/proj/b",
            "--plugin-dir=/sessions/s/mnt/proj",
            "--allowedTools",
            "Read(//sessions/s/mnt/proj/**),Bash(git log:*,x),Edit",
            "-p",
            "/sessions/s/mnt/proj/untouched",
        ]);
        let got = translate_args(&sp, &args).unwrap();
        assert_eq!(
            got,
            vec![
                "--add-dir".to_string(),
                format!("{ps}/a"),
                format!("{ps}/b"),
                format!("--plugin-dir={ps}"),
                "--allowedTools".into(),
                format!("Read(/{ps}/**),Bash(git log:*,x),Edit"),
                "-p".into(),
                "/sessions/s/mnt/proj/untouched".into(),
            ]
        );
        for bad in [
            s(&["--add-dir", "/sessions/s/mnt/proj/../../etc"]),
            s(&["--disallowedTools=Read(/sessions/s/mnt/proj/../x)"]),
        ] {
            assert!(translate_args(&sp, &bad).is_err(), "{bad:?}");
        }
        let mut env: BTreeMap<String, String> = [(
            "CLAUDE_CONFIG_DIR".to_string(),
            "/sessions/s/mnt/proj/.c".to_string(),
        )]
        .into();
        translate_env(&sp, &mut env).unwrap();
        assert_eq!(PathBuf::from(&env["CLAUDE_CONFIG_DIR"]), p.join(".c"));
    }

    #[test]
    fn tool_list_split_respects_parentheses() {
        assert_eq!(split_tool_list("A,B(x,y),C"), vec!["A", "B(x,y)", "C"]);
    }
}
