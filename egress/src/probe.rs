//! `apiReachability`: whether the API answers, asked through the egress
//! proxy's own code path (a CONNECT for the probe URL's host only).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::policy::Policy;
use crate::proxy::serve;

const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// `(host, port)` of an http(s) URL.
pub fn url_authority(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// True when a CONNECT to the URL's host through the proxy succeeds.
pub async fn api_reachable(url: &str) -> bool {
    let Some((host, port)) = url_authority(url) else {
        return false;
    };
    // The URL is the app's, not a session's: it may name this machine.
    let policy = Policy::trusted(&host);
    let (mut ours, theirs) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move { serve(theirs, &policy).await });
    let talk = async {
        ours.write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = [0u8; 12];
        ours.read_exact(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    let ok = tokio::time::timeout(PROBE_LIMIT, talk)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    drop(ours);
    server.abort();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            url_authority("https://api.anthropic.com/v1"),
            Some(("api.anthropic.com".into(), 443))
        );
        assert_eq!(
            url_authority("http://localhost:8080"),
            Some(("localhost".into(), 8080))
        );
        assert_eq!(url_authority("ftp://x"), None);
        assert_eq!(url_authority("nonsense"), None);
    }

    #[tokio::test]
    async fn reachable_and_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(api_reachable(&format!("http://127.0.0.1:{port}/")).await);
        drop(l);
        assert!(!api_reachable(&format!("http://127.0.0.1:{port}/")).await);
    }
}
