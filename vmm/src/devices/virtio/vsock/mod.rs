//! virtio-vsock in user space: no /dev/vhost-vsock, no kernel module. The
//! guest (CID [`GUEST_CID`] by default) talks to the host (CID 2); every
//! stream is bridged to a Unix socket in the helper, the way Firecracker's
//! vsock device does it:
//!
//! - a guest connecting to host port `P` reaches whoever listens on the
//!   Unix socket `<uds>_P` (the helper's agent and egress listeners);
//! - a host process connects to `<uds>`, writes `CONNECT <port>\n`, and
//!   once the guest accepts reads `OK <host port>\n`, then has a stream to
//!   the guest's port ("hybrid" mode, handy with socat for debugging).
//!
//! Flow control is the spec's credit scheme (see `connection`), so what
//! the host buffers per stream is bounded whatever the guest does.

mod connection;
mod device;
pub mod packet;

pub use connection::BUF_ALLOC;
pub use device::{Vsock, HOST_CID, MAX_CONNECTIONS, VIRTIO_ID_VSOCK};

/// The guest's CID unless configured otherwise (the first one a guest can
/// have; 0-2 are reserved).
pub const GUEST_CID: u64 = 3;

/// The Unix socket a guest connection to host `port` is bridged to.
pub fn host_port_path(uds: &std::path::Path, port: u32) -> std::path::PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
}

#[cfg(test)]
mod tests;
