//! Which hosts a session may reach: `allowedDomains` of its spawn. Exact
//! names and `*.example.com` wildcards (which match subdomains, not the bare
//! domain); no list means no egress at all.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

/// Lower-cases a host and drops a trailing dot and IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl Policy {
    /// Builds a policy; entries that are not host names or `*.` wildcards
    /// are returned as rejected rather than silently widening anything.
    pub fn new(domains: &[String]) -> (Policy, Vec<String>) {
        let mut p = Policy::default();
        let mut rejected = Vec::new();
        for d in domains {
            let d = normalize_host(d);
            let (target, name) = match d.strip_prefix("*.") {
                Some(rest) => (&mut p.suffixes, rest.to_string()),
                None => (&mut p.exact, d.clone()),
            };
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
                && !name.starts_with('.');
            if valid {
                target.push(name);
            } else {
                rejected.push(d);
            }
        }
        (p, rejected)
    }

    pub fn deny_all() -> Policy {
        Policy::default()
    }

    pub fn allows(&self, host: &str) -> bool {
        let h = normalize_host(host);
        if self.exact.contains(&h) {
            return true;
        }
        self.suffixes.iter().any(|s| {
            h.len() > s.len() + 1
                && h.ends_with(s.as_str())
                && h.as_bytes()[h.len() - s.len() - 1] == b'.'
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Policy {
        Policy::new(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).0
    }

    #[test]
    fn matching() {
        let pol = p(&["api.anthropic.com", "*.github.com", "LOCALHOST."]);
        for ok in [
            "api.anthropic.com",
            "API.Anthropic.com.",
            "raw.github.com",
            "a.b.github.com",
            "localhost",
        ] {
            assert!(pol.allows(ok), "{ok}");
        }
        for no in [
            "github.com",
            "evilgithub.com",
            "anthropic.com",
            "x.api.anthropic.com",
            "",
            "127.0.0.1",
        ] {
            assert!(!pol.allows(no), "{no}");
        }
        assert!(!Policy::deny_all().allows("localhost"));
        let (_, rejected) = Policy::new(&["*".into(), "a b".into(), "*.".into(), "ok.com".into()]);
        assert_eq!(rejected, ["*", "a b", "*"], "reported as normalized");
    }
}
