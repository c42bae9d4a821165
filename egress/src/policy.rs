//! Which hosts a session may reach: `allowedDomains` of its spawn. Exact
//! names and `*.example.com` wildcards (which match subdomains, not the bare
//! domain), each optionally with a `:port`; no list means no egress at all.
//! Which addresses an allowed host may be reached at depends on how it was
//! allowed ([`Reach`]); which ports a tunnel may go to, on the ports the
//! list names ([`Policy::tunnel_port_allowed`]).

use std::net::IpAddr;

use crate::conversations::Conversations;
use crate::denials::{DenialLog, FirstTime};

/// Ports every allowed host may be tunnelled to (CONNECT): https and http.
/// Any other port must be named in an entry (`host:8443`), so an allowed
/// API host is not also a way to its SSH or SMTP port.
pub const TUNNEL_PORTS: [u16; 2] = [443, 80];

/// One `allowedDomains` entry: a host name (or the domain of a wildcard)
/// and the extra port it names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    exact: Vec<Entry>,
    suffixes: Vec<Entry>,
    /// Set only for the helper's own API probe, whose URL comes from the
    /// app: it may be an address on this machine.
    trusted: bool,
    denials: DenialLog,
    /// The session's open conversations, shared by every clone (each
    /// connection of the session serves with a clone).
    conversations: Conversations,
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

/// Splits an entry into its host part and the port it names: `host:port`
/// and `[v6]:port` name one; a bare IPv6 literal (several colons) names
/// none. `Err` for a port that is not a number in 1..=65535.
fn split_entry(entry: &str) -> Result<(&str, Option<u16>), ()> {
    let (host, port) = if entry.starts_with('[') {
        match entry.rsplit_once("]:") {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    } else {
        match entry.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            _ => (entry, None),
        }
    };
    match port {
        None => Ok((host, None)),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok((host, Some(n))),
            _ => Err(()),
        },
    }
}

impl Policy {
    /// Builds a policy; entries that are not host names or `*.` wildcards
    /// (each with an optional `:port`) are returned as rejected rather than
    /// silently widening anything.
    pub fn new(domains: &[String]) -> (Policy, Vec<String>) {
        let mut p = Policy::default();
        let mut rejected = Vec::new();
        for d in domains {
            let raw = d.trim().to_ascii_lowercase();
            let Ok((host, port)) = split_entry(&raw) else {
                rejected.push(normalize_host(&raw));
                continue;
            };
            let d = normalize_host(host);
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
                target.push(Entry { name, port });
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
            exact: vec![Entry {
                name: normalize_host(host),
                port: None,
            }],
            trusted: true,
            ..Policy::default()
        }
    }

    /// Whether `host` may be reached, and where; `None` when it is not
    /// allowed at all.
    pub fn check(&self, host: &str) -> Option<Reach> {
        let h = normalize_host(host);
        let literal = h.parse::<IpAddr>().is_ok();
        if self.exact.iter().any(|e| e.name == h) {
            return Some(if self.trusted || !literal {
                Reach::Any
            } else {
                Reach::PublicOnly
            });
        }
        let wildcard = self.wildcard_entries(&h).next().is_some();
        wildcard.then_some(Reach::PublicOnly)
    }

    /// The wildcard entries matching normalized `h`.
    fn wildcard_entries<'a>(&'a self, h: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        // A wildcard names a DNS domain: `*.0.0.1` must not match the
        // address 10.0.0.1.
        let literal = h.parse::<IpAddr>().is_ok();
        self.suffixes.iter().filter(move |s| {
            let s = s.name.as_str();
            !literal
                && h.len() > s.len() + 1
                && h.ends_with(s)
                && h.as_bytes()[h.len() - s.len() - 1] == b'.'
        })
    }

    /// Whether a tunnel (CONNECT) to an allowed `host` may go to `port`:
    /// [`TUNNEL_PORTS`], or a port an entry matching the host names. Plain
    /// http forwarding is not limited by port: the proxy itself speaks
    /// HTTP to the upstream, so a non-HTTP service there only ever sees
    /// one HTTP request.
    pub fn tunnel_port_allowed(&self, host: &str, port: u16) -> bool {
        if self.trusted || TUNNEL_PORTS.contains(&port) {
            return true;
        }
        let h = normalize_host(host);
        let named = self
            .exact
            .iter()
            .filter(|e| e.name == h)
            .chain(self.wildcard_entries(&h))
            .any(|e| e.port == Some(port));
        named
    }

    /// This session's count of open conversations.
    pub fn conversations(&self) -> &Conversations {
        &self.conversations
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
    fn entries_may_name_a_port() {
        let pol = p(&[
            "api.anthropic.com",
            "git.example.test:22",
            "*.svc.test:8443",
            "[::1]:9000",
            "::ffff:10.0.0.1",
        ]);
        assert!(
            pol.allows("git.example.test"),
            "the host, whatever its port"
        );
        assert!(pol.allows("a.svc.test") && pol.allows("::1"));
        assert!(
            pol.allows("::ffff:10.0.0.1"),
            "a bare IPv6 literal names no port"
        );
        for (host, port) in [
            ("api.anthropic.com", 443),
            ("api.anthropic.com", 80),
            ("git.example.test", 22),
            ("git.example.test", 443),
            ("a.svc.test", 8443),
            ("::1", 9000),
        ] {
            assert!(pol.tunnel_port_allowed(host, port), "{host}:{port}");
        }
        for (host, port) in [
            ("api.anthropic.com", 22),
            ("api.anthropic.com", 25),
            ("git.example.test", 23),
            ("a.svc.test", 22),
            ("::1", 22),
        ] {
            assert!(!pol.tunnel_port_allowed(host, port), "{host}:{port}");
        }
        assert!(Policy::trusted("localhost").tunnel_port_allowed("localhost", 8080));
        let (_, rejected) =
            Policy::new(&["a.test:0".into(), "a.test:99999".into(), "a.test:x".into()]);
        assert_eq!(rejected.len(), 3, "{rejected:?}");
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
