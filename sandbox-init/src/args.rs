//! The init's command line. It comes from the helper (not the session),
//! but is still checked rather than trusted to be well formed.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str =
    "cowork-microvm-sandbox-init --proxy SOCKET --listen ADDR -- COMMAND [ARG...]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The egress proxy's Unix socket, bound into the sandbox.
    pub proxy: PathBuf,
    /// The loopback address the relay listens on (`127.0.0.1:3128`).
    pub listen: String,
    /// The session's program and its arguments: never empty.
    pub command: Vec<OsString>,
}

/// Parses `--proxy P --listen A -- COMMAND...` (the two options in either
/// order, `--opt=value` accepted too).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    let mut it = args.into_iter();
    let (mut proxy, mut listen) = (None, None);
    loop {
        let Some(arg) = it.next() else {
            return Err("no command after --".into());
        };
        if arg == "--" {
            break;
        }
        let text = arg
            .to_str()
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) => (n, Some(OsString::from(v))),
            None => (text, None),
        };
        let slot = match name {
            "--proxy" => &mut proxy,
            "--listen" => &mut listen,
            _ => return Err(format!("unexpected argument {text:?}")),
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    let proxy = proxy.ok_or("--proxy is required")?;
    let listen = listen
        .ok_or("--listen is required")?
        .into_string()
        .map_err(|v| format!("--listen {v:?} is not an address"))?;
    let command: Vec<OsString> = it.collect();
    if command.is_empty() {
        return Err("no command after --".into());
    }
    Ok(Options {
        proxy: proxy.into(),
        listen,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_helpers_form() {
        let o = parse(os(&[
            "--proxy",
            "/run/p.sock",
            "--listen",
            "127.0.0.1:3128",
            "--",
            "sh",
            "-c",
            "--proxy",
        ]))
        .expect("valid");
        assert_eq!(o.proxy, PathBuf::from("/run/p.sock"));
        assert_eq!(o.listen, "127.0.0.1:3128");
        assert_eq!(o.command, os(&["sh", "-c", "--proxy"]));
        let o = parse(os(&["--listen=a:1", "--proxy=/p", "--", "x"])).expect("valid");
        assert_eq!((o.listen.as_str(), o.command.len()), ("a:1", 1));
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            &[][..],
            &["--proxy", "/p", "--listen", "a:1"],
            &["--proxy", "/p", "--listen", "a:1", "--"],
            &["--listen", "a:1", "--", "x"],
            &["--proxy", "/p", "--", "x"],
            &["--proxy"],
            &["--bogus", "--", "x"],
            &["x"],
        ] {
            assert!(parse(os(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
