//! Which hosts a session may reach: `allowedDomains` of its spawn. Exact
//! names and `*.example.com` wildcards (which match subdomains, not the bare
//! domain); no list means no egress at all. Which addresses an allowed
//! host may be reached at depends on how it was allowed ([`Reach`]).

use std::net::IpAddr;

use crate::denials::{DenialLog, FirstTime};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    exact: Vec<String>,
    suffixes: Vec<String>,
    /// Set only for the helper's own API probe, whose URL comes from the
    /// app: it may be an address on this machine.
    trusted: bool,
    denials: DenialLog,
}

/// Where an allowed host may be connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Any address it resolves to, internal ones included: the allowlist
    /// names this host exactly (a user's own gateway, `localhost`).
    Any,
    /// Public addresses only ([`crate::address::is_internal`] refused): a
    /// wildcard match, whose subdomains anyone controlling the domain's
    /// DNS may point anywhere, or an IP literal.
    PublicOnly,
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

    /// A policy allowing exactly `host`, at any address: for the helper's
    /// own probe of the app's API URL, never for a session.
    pub fn trusted(host: &str) -> Policy {
        Policy {
            exact: vec![normalize_host(host)],
            trusted: true,
            ..Policy::default()
        }
    }

    /// Whether `host` may be reached, and where; `None` when it is not
    /// allowed at all.
    pub fn check(&self, host: &str) -> Option<Reach> {
        let h = normalize_host(host);
        let literal = h.parse::<IpAddr>().is_ok();
        if self.exact.contains(&h) {
            return Some(if self.trusted || !literal {
                Reach::Any
            } else {
                Reach::PublicOnly
            });
        }
        // A wildcard names a DNS domain: `*.0.0.1` must not match the
        // address 10.0.0.1.
        let wildcard = !literal
            && self.suffixes.iter().any(|s| {
                h.len() > s.len() + 1
                    && h.ends_with(s.as_str())
                    && h.as_bytes()[h.len() - s.len() - 1] == b'.'
            });
        wildcard.then_some(Reach::PublicOnly)
    }

    pub fn allows(&self, host: &str) -> bool {
        self.check(host).is_some()
    }

    /// Logs a refusal of `host`, once per host for this policy (and so per
    /// session).
    pub fn log_denial(&self, host: &str, why: &str) {
        match self.denials.record(host) {
            FirstTime::Yes => tracing::warn!(host = %host, "egress denied: {host} {why}"),
            FirstTime::Full => tracing::warn!(
                "egress denied: {host} {why}; further refused hosts of this session are not logged"
            ),
            FirstTime::No => {}
        }
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

    #[test]
    fn reach_depends_on_how_a_host_is_allowed() {
        let pol = p(&["gw.home.test", "*.example.test", "10.0.0.1", "*.0.0.1"]);
        assert_eq!(pol.check("GW.home.test."), Some(Reach::Any));
        assert_eq!(pol.check("a.example.test"), Some(Reach::PublicOnly));
        assert_eq!(pol.check("10.0.0.1"), Some(Reach::PublicOnly), "literal");
        assert_eq!(pol.check("127.0.0.1"), None, "wildcards skip literals");
        assert_eq!(pol.check("example.test"), None);
        assert_eq!(
            Policy::trusted("127.0.0.1").check("127.0.0.1"),
            Some(Reach::Any)
        );
    }
}
