//! The egress proxy itself: one HTTP proxy conversation over any byte
//! stream (a Unix socket from a sandbox, a vsock stream from a VM, an
//! in-memory pipe in tests). CONNECT for https; absolute-URI requests for
//! plain http. The policy decides; the transport is the caller's business.

use std::time::Duration;

use crate::dial::{dial, DialError, Resolver, SystemResolver};
use crate::idle::{Activity, Stamped};
use crate::limits::Limits;
use crate::policy::{normalize_host, Policy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

/// The request line and headers must fit in this.
const MAX_HEAD: usize = 32 * 1024;
/// Marks a refusal by the policy, for clients and tests to tell it from an
/// upstream's own 403.
const REFUSAL_HEADER: &str = "X-Proxy-Error: blocked-by-allowlist";
/// Marks a refusal because the session has too many connections open.
const LIMIT_HEADER: &str = "X-Proxy-Error: too-many-connections";

/// What happened to one proxied conversation, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Tunnelled {
        host: String,
        port: u16,
    },
    Forwarded {
        host: String,
        port: u16,
    },
    /// Not in the allowlist.
    Denied {
        host: String,
    },
    /// Allowed by name, but every address it has is internal and it was not
    /// allowed exactly (docs/egress.md).
    Blocked {
        host: String,
    },
    /// CONNECT to a port of an allowed host that neither
    /// [`crate::policy::TUNNEL_PORTS`] nor the list names.
    PortDenied {
        host: String,
        port: u16,
    },
    /// The session already had its cap of conversations open.
    TooMany,
    /// The request head did not arrive within the deadline.
    HeadTimedOut,
    BadRequest(String),
    UpstreamFailed {
        host: String,
        error: String,
    },
}

struct Head {
    method: String,
    target: String,
    version: String,
    /// Header lines after the request line, without the final blank line.
    headers: Vec<String>,
    /// Bytes read past the end of the head (the start of a body).
    rest: Vec<u8>,
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Head, String> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if i > MAX_HEAD {
                return Err(format!("request head over {MAX_HEAD} bytes"));
            }
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("request head over {MAX_HEAD} bytes"));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request head ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text =
        std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || target.is_empty() {
        return Err(format!("malformed request line {line:?}"));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers: lines.map(str::to_string).collect(),
        rest: buf[end + 4..].to_vec(),
    })
}

/// Splits `host:port` (or `[v6]:port`); `default` when no port is given.
fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    let bad = || format!("bad host {authority:?}");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None => default,
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((normalize_host(host), port))
}

/// `http://host[:port]/path` into (host, port, origin-form path).
fn split_absolute(uri: &str) -> Result<(String, u16, String), String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URIs are proxied without CONNECT, not {uri:?}"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let (host, port) = split_host_port(authority, 80)?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok((host, port, path))
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, status: &str, body: &str) {
    respond_marked(s, status, "", body).await
}

/// [`respond`] with `extra`, header lines each ending in CRLF.
async fn respond_marked<S: AsyncWrite + Unpin>(s: &mut S, status: &str, extra: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// `403` for a destination the policy refuses.
async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, body: &str) {
    let msg = format!(
        "HTTP/1.1 403 Forbidden\r\n{REFUSAL_HEADER}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Serves one proxy conversation on `client` under `policy`.
pub async fn serve<S>(client: S, policy: &Policy) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(client, |_| Some(std::sync::Arc::new(policy.clone()))).await
}

/// The password of a `Proxy-Authorization: Basic` header, if any.
fn proxy_password(headers: &[String]) -> Option<String> {
    use base64::Engine;
    let value = headers.iter().find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim())
    })?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

/// Serves one conversation whose policy depends on who asks: `choose`
/// gets the proxy password the client sent (a VM's sessions share one
/// transport, so each carries its own credential) and returns the
/// policy, or `None` to answer 407.
pub async fn serve_with<S, F>(client: S, choose: F) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Option<&str>) -> Option<std::sync::Arc<Policy>>,
{
    serve_using(client, choose, &SystemResolver).await
}

/// [`serve_with`], resolving names with `resolver`.
pub async fn serve_using<S, F, R>(client: S, choose: F, resolver: &R) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Option<&str>) -> Option<std::sync::Arc<Policy>>,
    R: Resolver,
{
    serve_limited(client, choose, resolver, &Limits::default(), None).await
}

/// [`serve_using`] under `limits`. `unidentified` is the caller's slot for
/// a connection whose session is not known yet
/// ([`crate::listener::serve_connections`]): it is given back once the head
/// is read and the conversation counts against its session instead.
pub async fn serve_limited<S, F, R>(
    mut client: S,
    choose: F,
    resolver: &R,
    limits: &Limits,
    unidentified: Option<OwnedSemaphorePermit>,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Option<&str>) -> Option<std::sync::Arc<Policy>>,
    R: Resolver,
{
    // The deadline is for the whole head, not per read: a client sending
    // one byte a minute is cut off as surely as one sending nothing.
    let head = match tokio::time::timeout(limits.head_deadline, read_head(&mut client)).await {
        Ok(h) => h,
        Err(_) => {
            let body = format!(
                "cowork egress proxy: the request head did not arrive within {}s\n",
                limits.head_deadline.as_secs_f32()
            );
            respond(&mut client, "408 Request Timeout", &body).await;
            return Outcome::HeadTimedOut;
        }
    };
    let policy = match &head {
        Ok(h) => choose(proxy_password(&h.headers).as_deref()),
        Err(_) => None,
    };
    let policy = match (policy, &head) {
        (Some(p), _) => p,
        (None, Err(_)) => std::sync::Arc::new(Policy::default()),
        (None, Ok(_)) => {
            let body =
                "cowork egress proxy: this session's proxy credentials are missing or unknown\n";
            let msg = format!(
                "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"cowork\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(msg.as_bytes()).await;
            let _ = client.shutdown().await;
            return Outcome::Denied {
                host: "(no credentials)".into(),
            };
        }
    };
    let policy = &*policy;
    let conversations = policy.conversations();
    let Some(_slot) = conversations.try_open(limits.per_session) else {
        if conversations.first_refusal() {
            tracing::warn!(
                "egress: a session reached its cap of {} open proxy connections; \
                 further ones get 429 until some close (logged once per session)",
                limits.per_session
            );
        }
        let body = format!(
            "cowork egress proxy: this session already has {} connections open through the proxy; close some and retry\n",
            limits.per_session
        );
        // 429, not 503: the session's own share is used up, the proxy is
        // not down. The header tells it from an upstream's own 429.
        respond_marked(
            &mut client,
            "429 Too Many Requests",
            &format!("{LIMIT_HEADER}\r\n"),
            &body,
        )
        .await;
        return Outcome::TooMany;
    };
    // Counted against its session now: the shared pool for connections not
    // yet identified gets its slot back.
    drop(unidentified);
    let connect = head
        .as_ref()
        .is_ok_and(|h| h.method.eq_ignore_ascii_case("CONNECT"));
    let target = head.and_then(|head| {
        let target = if connect {
            split_host_port(&head.target, 443).map(|(h, p)| (h, p, String::new()))
        } else {
            split_absolute(&head.target)
        };
        target.map(|t| (t, head))
    });
    let ((host, port, path), head) = match target {
        Ok(t) => t,
        Err(e) => {
            let body = format!("cowork egress proxy: {e}\n");
            respond(&mut client, "400 Bad Request", &body).await;
            return Outcome::BadRequest(e);
        }
    };
    let Some(reach) = policy.check(&host) else {
        policy.log_denial(&host, "is not in this session's allowedDomains");
        refuse(
            &mut client,
            &format!("cowork egress proxy: {host} is not in this session's allowed domains\n"),
        )
        .await;
        return Outcome::Denied { host };
    };
    if connect && !policy.tunnel_port_allowed(&host, port) {
        policy.log_denial(
            &format!("{host}:{port}"),
            "is a port a tunnel may not use: only 443 and 80, or one an allowedDomains entry names",
        );
        refuse(
            &mut client,
            &format!("cowork egress proxy: tunnels to {host} may use ports 443 and 80 only, not {port}, unless the allowed domains name it ({host}:{port})\n"),
        )
        .await;
        return Outcome::PortDenied { host, port };
    }
    let mut upstream = match dial(&host, port, reach, resolver).await {
        Ok(u) => u,
        Err(DialError::Blocked) => {
            policy.log_denial(
                &host,
                "resolves only to internal addresses, which only an exact allowedDomains entry may reach",
            );
            refuse(
                &mut client,
                &format!("cowork egress proxy: {host} is on a local or private network, which only an exact host name in the allowed domains may reach\n"),
            )
            .await;
            return Outcome::Blocked { host };
        }
        Err(DialError::Failed(error)) => {
            respond(
                &mut client,
                "502 Bad Gateway",
                &format!("cowork egress proxy: {host}:{port}: {error}\n"),
            )
            .await;
            return Outcome::UpstreamFailed { host, error };
        }
    };
    let outcome = if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return Outcome::Tunnelled { host, port };
        }
        Outcome::Tunnelled { host, port }
    } else {
        // One request per upstream connection: a keep-alive connection
        // could otherwise carry a second request to another host.
        let mut req = format!("{} {path} {}\r\n", head.method, head.version);
        for h in &head.headers {
            let name = h
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if !matches!(
                name.as_str(),
                "proxy-connection" | "connection" | "proxy-authorization" | "keep-alive"
            ) {
                req.push_str(h);
                req.push_str("\r\n");
            }
        }
        req.push_str("Connection: close\r\n\r\n");
        if upstream.write_all(req.as_bytes()).await.is_err()
            || upstream.write_all(&head.rest).await.is_err()
        {
            return Outcome::UpstreamFailed {
                host,
                error: "upstream closed".into(),
            };
        }
        // The response tells the client this connection ends with it, so
        // a keep-alive client does not send its next request (perhaps for
        // another host) down this upstream connection.
        relay_one_response(client, upstream, limits.idle_timeout).await;
        return Outcome::Forwarded { host, port };
    };
    let activity = Activity::new();
    let mut c = Stamped::new(&mut client, &activity);
    let mut u = Stamped::new(&mut upstream, &activity);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
        _ = activity.idle(limits.idle_timeout) => {
            tracing::debug!("egress: a tunnel idle for {:?}, closed", limits.idle_timeout);
        }
    }
    // Returning drops both streams: the client and the upstream both see
    // the connection end.
    outcome
}

/// The most of a response head that is rewritten; a longer one passes
/// through as it is.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head with its connection headers replaced by
/// `Connection: close`; `None` when `head` is not a complete head.
fn close_response_head(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut out = String::with_capacity(end + 24);
    for (i, line) in text.split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or_default().trim();
        let hop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if i == 0 || !hop {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&head[end + 4..]);
    Some(bytes)
}

/// Relays one forwarded request's body up and its response down (its head
/// saying `Connection: close`), and ends with the upstream's response, or
/// once nothing has moved either way for `idle`.
async fn relay_one_response<S>(client: S, upstream: tokio::net::TcpStream, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut cr, mut cw) = tokio::io::split(Stamped::new(client, &activity));
    let (mut ur, mut uw) = tokio::io::split(Stamped::new(upstream, &activity));
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
        // The client is done sending; the response may still be coming.
        std::future::pending::<()>().await;
    };
    let down = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match ur.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > MAX_RESPONSE_HEAD {
                break;
            }
        }
        let first = close_response_head(&head).unwrap_or(head);
        if cw.write_all(&first).await.is_ok() {
            let _ = tokio::io::copy(&mut ur, &mut cw).await;
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = activity.idle(idle) => {
            tracing::debug!("egress: forwarded exchange idle for {idle:?}, closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn upstream() -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
            )
            .await
            .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, h)
    }

    async fn talk(policy: &Policy, request: &str) -> (Outcome, String) {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let policy = policy.clone();
        let server = tokio::spawn(async move { serve(theirs, &policy).await });
        ours.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut out)).await;
        drop(ours);
        (
            server.await.unwrap(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    #[tokio::test]
    async fn forwards_allowed_http_and_refuses_the_rest() {
        let (pol, _) = Policy::new(&["localhost".into()]);
        let (port, seen) = upstream().await;
        let (o, reply) = talk(&pol, &format!("GET http://localhost:{port}/x?y=1 HTTP/1.1\r\nHost: localhost\r\nProxy-Connection: keep-alive\r\n\r\n")).await;
        assert_eq!(
            o,
            Outcome::Forwarded {
                host: "localhost".into(),
                port
            }
        );
        assert!(reply.ends_with("hi"), "{reply}");
        assert!(
            reply.contains("\r\nConnection: close\r\n")
                && !reply.to_ascii_lowercase().contains("keep-alive"),
            "the client is told the connection ends with this response: {reply}"
        );
        let seen = seen.await.unwrap();
        assert!(seen.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("Connection: close")
                && !seen.to_ascii_lowercase().contains("proxy-connection")
        );

        let (o, reply) = talk(
            &pol,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        )
        .await;
        assert_eq!(
            o,
            Outcome::Denied {
                host: "example.com".into()
            }
        );
        assert!(reply.starts_with("HTTP/1.1 403"));
        assert!(reply.contains("\r\nX-Proxy-Error: blocked-by-allowlist\r\n"));
        assert!(reply.contains("example.com"), "the body names the host");
        let (o, _) = talk(
            &Policy::deny_all(),
            "GET http://localhost/ HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(matches!(o, Outcome::Denied { .. }));
    }

    /// Several sessions share one transport (a VM): each request names its
    /// session by the proxy password, and gets that session's policy.
    #[tokio::test]
    async fn credentials_choose_the_policy() {
        use base64::Engine;
        let (allow, _) = Policy::new(&["localhost".into()]);
        let allow = std::sync::Arc::new(allow);
        let ask = |req: String, creds: Option<&'static str>| {
            let allow = allow.clone();
            async move {
                let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
                let server = tokio::spawn(async move {
                    serve_with(theirs, |pw| (pw == Some("tok1")).then_some(allow)).await
                });
                let auth = creds
                    .map(|c| {
                        let b = base64::engine::general_purpose::STANDARD.encode(c);
                        format!("Proxy-Authorization: Basic {b}\r\n")
                    })
                    .unwrap_or_default();
                ours.write_all(format!("{req}\r\n{auth}\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut reply = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut reply))
                    .await;
                drop(ours);
                (
                    server.await.unwrap(),
                    String::from_utf8_lossy(&reply).into_owned(),
                )
            }
        };
        let (port, seen) = upstream().await;
        let get = format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost");
        let (o, reply) = ask(get.clone(), Some("cowork:tok1")).await;
        assert!(matches!(o, Outcome::Forwarded { .. }), "{o:?} {reply}");
        drop(seen);
        let (o, reply) = ask(get.clone(), None).await;
        assert!(reply.starts_with("HTTP/1.1 407"), "{reply}");
        assert!(matches!(o, Outcome::Denied { .. }));
        let (_, reply) = ask(get.clone(), Some("cowork:other")).await;
        assert!(reply.starts_with("HTTP/1.1 407"), "unknown token: {reply}");
        let (_, reply) = ask(get, Some("no-colon")).await;
        assert!(
            reply.starts_with("HTTP/1.1 407"),
            "malformed credentials: {reply}"
        );
    }

    /// Resolves every name to one fixed address and counts the lookups.
    struct FixedResolver {
        ip: std::net::IpAddr,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl Resolver for FixedResolver {
        async fn resolve(&self, _: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(vec![std::net::SocketAddr::new(self.ip, port)])
        }
    }

    /// A request through the proxy whose names all resolve to `ip`.
    async fn talk_resolving(
        policy: &Policy,
        request: &str,
        resolver: std::sync::Arc<FixedResolver>,
    ) -> (Outcome, String) {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let policy = std::sync::Arc::new(policy.clone());
        let server =
            tokio::spawn(async move { serve_using(theirs, |_| Some(policy), &*resolver).await });
        ours.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut out)).await;
        drop(ours);
        // A proxy that connected to a listener that never answers would
        // wait forever: fail instead of hanging.
        let outcome = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the proxy is still busy: did it connect upstream?")
            .unwrap();
        (outcome, String::from_utf8_lossy(&out).into_owned())
    }

    fn loopback_resolver() -> std::sync::Arc<FixedResolver> {
        std::sync::Arc::new(FixedResolver {
            ip: "127.0.0.1".parse().unwrap(),
            lookups: Default::default(),
        })
    }

    /// Whether anything connected to `l` (it never answers).
    async fn was_contacted(l: &TcpListener) -> bool {
        tokio::time::timeout(Duration::from_millis(200), l.accept())
            .await
            .is_ok()
    }

    /// A wildcard entry's subdomain pointed (by whoever runs its DNS) at
    /// the host's loopback is refused before any connection.
    #[tokio::test]
    async fn wildcard_names_cannot_reach_internal_addresses() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // The port is named so a tunnel may use it at all.
        let (pol, _) = Policy::new(&[format!("*.example.test:{port}")]);
        let resolver = loopback_resolver();
        for req in [
            format!("CONNECT inward.example.test:{port} HTTP/1.1\r\n\r\n"),
            format!("GET http://inward.example.test:{port}/ HTTP/1.1\r\n\r\n"),
        ] {
            let (o, reply) = talk_resolving(&pol, &req, resolver.clone()).await;
            assert_eq!(
                o,
                Outcome::Blocked {
                    host: "inward.example.test".into()
                }
            );
            assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
            assert!(reply.contains("\r\nX-Proxy-Error: blocked-by-allowlist\r\n"));
            assert!(reply.contains("inward.example.test"), "body names the host");
        }
        assert!(!was_contacted(&l).await, "no connection was attempted");
    }

    /// An exact entry may be on the local network (a user's gateway).
    #[tokio::test]
    async fn exact_names_may_resolve_to_internal_addresses() {
        let (pol, _) = Policy::new(&["gw.example.test".into()]);
        let (port, seen) = upstream().await;
        let resolver = loopback_resolver();
        let (o, reply) = talk_resolving(
            &pol,
            &format!(
                "GET http://gw.example.test:{port}/in HTTP/1.1\r\nHost: gw.example.test\r\n\r\n"
            ),
            resolver.clone(),
        )
        .await;
        assert_eq!(
            o,
            Outcome::Forwarded {
                host: "gw.example.test".into(),
                port
            }
        );
        assert!(reply.ends_with("hi"), "{reply}");
        assert!(seen.await.unwrap().starts_with("GET /in HTTP/1.1"));
        assert_eq!(
            resolver.lookups.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    /// IP literals are never internal destinations, even listed exactly,
    /// and are refused without a lookup or a connection.
    #[tokio::test]
    async fn internal_ip_literals_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let resolver = loopback_resolver();
        for (entry, authority) in [
            ("10.0.0.1".to_string(), "10.0.0.1:80".to_string()),
            (
                format!("[::ffff:127.0.0.1]:{port}"),
                format!("[::ffff:127.0.0.1]:{port}"),
            ),
            (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        ] {
            let (pol, rejected) = Policy::new(std::slice::from_ref(&entry));
            assert!(rejected.is_empty());
            let (o, reply) = talk_resolving(
                &pol,
                &format!("CONNECT {authority} HTTP/1.1\r\n\r\n"),
                resolver.clone(),
            )
            .await;
            assert!(matches!(o, Outcome::Blocked { .. }), "{entry}: {o:?}");
            assert!(reply.contains("X-Proxy-Error: blocked-by-allowlist"));
        }
        assert!(!was_contacted(&l).await, "no connection was attempted");
        assert_eq!(
            resolver.lookups.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[tokio::test]
    async fn tunnels_connect() {
        let (port, seen) = upstream().await;
        let (pol, _) = Policy::new(&[format!("localhost:{port}")]);
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { serve(theirs, &pol).await });
        ours.write_all(format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 39];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        ours.write_all(b"raw bytes").await.unwrap();
        assert_eq!(seen.await.unwrap(), "raw bytes");
        drop(ours);
        assert!(matches!(server.await.unwrap(), Outcome::Tunnelled { .. }));
    }

    #[tokio::test]
    async fn malformed_requests_get_400() {
        let pol = Policy::new(&["localhost".into()]).0;
        for bad in [
            "garbage\r\n\r\n",
            "GET /relative HTTP/1.1\r\n\r\n",
            "GET https://localhost/ HTTP/1.1\r\n\r\n",
            "CONNECT localhost:99999 HTTP/1.1\r\n\r\n",
            "CONNECT :443 HTTP/1.1\r\n\r\n",
            "GET http://localhost/ SPDY/3\r\n\r\n",
        ] {
            let (o, reply) = talk(&pol, bad).await;
            assert!(matches!(o, Outcome::BadRequest(_)), "{bad:?}: {o:?}");
            assert!(reply.starts_with("HTTP/1.1 400"), "{bad:?}");
        }
        let huge = format!(
            "GET http://localhost/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 10)
        );
        assert!(matches!(talk(&pol, &huge).await.0, Outcome::BadRequest(_)));
    }
}
