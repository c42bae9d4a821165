//! Signal names and numbers as `kill` accepts them and `exit` reports them.

use nix::sys::signal::Signal;

use crate::error::{BackendError, Result};

/// Accepts `"SIGTERM"`, `"TERM"`, `"term"`, `"15"` or the JSON number 15.
/// No signal given means SIGTERM, as Node's `kill()` does.
pub fn parse_signal(value: Option<&serde_json::Value>) -> Result<Signal> {
    let bad = |v: &dyn std::fmt::Display| BackendError::BadSignal(v.to_string());
    match value {
        None | Some(serde_json::Value::Null) => Ok(Signal::SIGTERM),
        Some(serde_json::Value::Number(n)) => {
            let num = n.as_i64().ok_or_else(|| bad(n))?;
            i32::try_from(num)
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
                .ok_or_else(|| bad(n))
        }
        Some(serde_json::Value::String(s)) => {
            let t = s.trim();
            if let Ok(num) = t.parse::<i32>() {
                return Signal::try_from(num).map_err(|_| bad(s));
            }
            let upper = t.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>().map_err(|_| bad(s))
        }
        Some(other) => Err(bad(other)),
    }
}

/// The name the `exit` event uses for a signal number, e.g. "SIGKILL".
pub fn signal_name(num: i32) -> String {
    Signal::try_from(num)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{num}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_numbers() {
        for v in [
            json!("SIGKILL"),
            json!("KILL"),
            json!("kill"),
            json!(9),
            json!("9"),
        ] {
            assert_eq!(parse_signal(Some(&v)).unwrap(), Signal::SIGKILL, "{v}");
        }
        assert_eq!(parse_signal(None).unwrap(), Signal::SIGTERM);
        for v in [
            json!("SIGNOPE"),
            json!(0),
            json!(-1),
            json!(1e10),
            json!([1]),
            json!(4.5),
        ] {
            assert!(parse_signal(Some(&v)).is_err(), "{v}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
