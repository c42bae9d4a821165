//! The guest's end of egress: a TCP listener on the guest's loopback
//! ([`crate::wire::EGRESS_LISTEN`]) whose every connection is forwarded to
//! the host's egress proxy (over vsock in the VM; over a Unix socket when
//! the agent runs on the host for tests).

use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_vsock::{VsockAddr, VsockStream};

/// Where the host side of a channel is.
#[derive(Debug, Clone)]
pub enum HostEnd {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

/// A connected channel to the host, whichever transport it is.
pub enum Channel {
    Vsock(VsockStream),
    Unix(tokio::net::UnixStream),
}

impl HostEnd {
    pub async fn connect(&self) -> std::io::Result<Channel> {
        match self {
            HostEnd::Vsock { cid, port } => VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .map(Channel::Vsock),
            HostEnd::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Channel::Unix),
        }
    }
}

/// Accepts on `listen` for ever, forwarding each connection to `host`.
pub async fn forward(listen: &str, host: HostEnd) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let host = host.clone();
        tokio::spawn(async move {
            let res = match host.connect().await {
                Ok(Channel::Vsock(mut v)) => tokio::io::copy_bidirectional(&mut tcp, &mut v).await,
                Ok(Channel::Unix(mut u)) => tokio::io::copy_bidirectional(&mut tcp, &mut u).await,
                Err(e) => Err(e),
            };
            drop(res);
        });
    }
}
