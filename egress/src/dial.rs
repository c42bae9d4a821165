//! The proxy's upstream connection: resolve once, drop the addresses the
//! policy does not allow for this host, connect only to what is left. The
//! address checked is the address connected to: there is no second lookup
//! a DNS answer could change in between.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::address::is_internal;
use crate::policy::Reach;

/// Resolution plus connection attempts must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A name resolving to more addresses than this is tried on the first ones.
const MAX_ADDRESSES: usize = 16;

/// Name resolution, a seam so tests can make any name resolve anywhere
/// without a network.
pub trait Resolver: Send + Sync {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The system's resolver (getaddrinfo, on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port))
            .await?
            .take(MAX_ADDRESSES)
            .collect())
    }
}

#[derive(Debug)]
pub enum DialError {
    /// Every address the host has is one the policy keeps it from.
    Blocked,
    Failed(String),
}

/// Connects to `host:port` at an address `reach` allows. An IP literal is
/// checked before any connection attempt and never resolved.
pub async fn dial<R: Resolver>(
    host: &str,
    port: u16,
    reach: Reach,
    resolver: &R,
) -> Result<TcpStream, DialError> {
    let permitted = |ip: IpAddr| reach == Reach::Any || !is_internal(ip);
    let attempt = async {
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => resolver
                .resolve(host, port)
                .await
                .map_err(|e| DialError::Failed(e.to_string()))?,
        };
        let total = addrs.len();
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .take(MAX_ADDRESSES)
            .filter(|a| permitted(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(if total == 0 {
                DialError::Failed("no address".into())
            } else {
                DialError::Blocked
            });
        }
        let mut last = String::new();
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(DialError::Failed(last))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Failed(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}
