//! The host<->guest protocol, defined once for both sides.
//!
//! A frame is a 4-byte big-endian length, then a 4-byte big-endian header
//! length, the header (JSON: [`HostMsg`] or [`GuestMsg`]), and a raw byte
//! payload (process output, stdin data, file content), so bytes travel as
//! bytes. The guest connects to the host (CID 2) on [`AGENT_PORT`] and
//! starts with [`GuestMsg::Hello`].

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 2;
/// The vsock port the host listens on for the agent. Named here only.
pub const AGENT_PORT: u32 = 1024;
/// The vsock port of the host's egress proxy.
pub const EGRESS_PORT: u32 = 1025;
/// The guest's end of the egress proxy: HTTP(S)_PROXY points here. The
/// agent listens there in each session's own network namespace. A
/// privileged port (below 1024; sessions have no CAP_NET_BIND_SERVICE, a
/// new network namespace's `ip_unprivileged_port_start` is 1024 and
/// sessions cannot write its sysctls), so no session can listen there and
/// collect proxy credentials, even if the forwarder were gone.
pub const EGRESS_LISTEN: &str = "127.0.0.1:312";
/// The VMM's boot timer: init writes the magic byte to this port when it
/// starts (vmm/src/layout.rs has the VMM's side; a test checks they agree).
pub const BOOT_TIMER_PORT: u16 = 0x4f0;
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// The kernel command-line parameter that carries the per-boot agent
/// token: PID 1 reads it, hands it to the agent alone, and the agent's
/// hello proves with it that it is the agent (sessions cannot read it).
pub const TOKEN_PARAM: &str = "cowork.token";
/// Where the agent takes its token from when run by hand over a Unix
/// socket (in the VM, PID 1 hands it on the agent's stdin instead).
pub const TOKEN_ENV: &str = "COWORK_AGENT_TOKEN";
/// Largest frame either side accepts (header and payload).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Largest header.
pub const MAX_HEADER: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum HostMsg {
    /// Start a process. Its output and exit come back under `id`.
    Spawn {
        id: String,
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        cwd: Option<String>,
        /// The session the process belongs to: in the VM the agent runs it
        /// as that session's own user, in that session's own view of the
        /// file system. `None` only where the agent confines nothing (run
        /// by hand over a Unix socket).
        #[serde(default)]
        session: Option<String>,
    },
    /// The session's user, made on first use: answered with
    /// [`GuestMsg::Json`] `{"uid": u32, "gid": u32}` or `Failed`. The host
    /// shows a session's shared folders as owned by it.
    SessionUser {
        req: u64,
        session: String,
    },
    /// The session has gone idle on the host: every process still running
    /// as its user (daemons that outlived the spawned process included) is
    /// killed, so none can hold on to its shares or its uid; answered with
    /// `Done` once they are gone, or `Failed`.
    EndSession {
        req: u64,
        session: String,
    },
    /// The payload goes to the process's stdin.
    Stdin {
        id: String,
    },
    CloseStdin {
        id: String,
    },
    Kill {
        id: String,
        signal: i32,
    },
    /// Answered with [`GuestMsg::File`] or [`GuestMsg::Failed`].
    ReadFile {
        req: u64,
        path: String,
        limit: u64,
        /// The session asking: in the VM `path` must be inside its
        /// directory and is opened there, symbolic links followed only
        /// while they stay inside; without one the VM's agent refuses.
        /// Ignored where the agent confines nothing (run by hand).
        #[serde(default)]
        session: Option<String>,
    },
    /// Mount virtio-fs `tag` at `path` (only its directory `subdir`, when
    /// given: one device carries every share); answered with `Done` or
    /// `Failed`.
    Mount {
        req: u64,
        tag: String,
        #[serde(default)]
        subdir: Option<String>,
        path: String,
        read_only: bool,
    },
    Unmount {
        req: u64,
        path: String,
    },
    Ping {
        req: u64,
    },
    /// Bookkeeping of the session disk, done where it is mounted: `op` is
    /// `diskInfo`, `delete` or `prune`, `args` its request; answered with
    /// [`GuestMsg::Json`] (the result) or `Failed`.
    Sessions {
        req: u64,
        op: String,
        args: serde_json::Value,
    },
    /// End every process, sync, unmount and reboot (ends the VM).
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum GuestMsg {
    Hello {
        version: u32,
        agent: String,
        /// The per-boot token from the kernel command line
        /// ([`TOKEN_PARAM`]); empty where there is none (run by hand).
        #[serde(default)]
        token: String,
    },
    Spawned {
        id: String,
    },
    SpawnFailed {
        id: String,
        error: String,
    },
    /// Payload: bytes the process wrote.
    Stdout {
        id: String,
    },
    Stderr {
        id: String,
    },
    /// After all of the process's output.
    Exit {
        id: String,
        code: Option<i32>,
        signal: Option<i32>,
        oom_kill_count: Option<u64>,
    },
    /// Payload: the file's content.
    File {
        req: u64,
    },
    Done {
        req: u64,
    },
    Failed {
        req: u64,
        error: String,
    },
    Pong {
        req: u64,
    },
    /// Payload: a JSON result.
    Json {
        req: u64,
    },
    /// A message the agent could not act on (no request to answer).
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("header length {header} does not fit a frame of {frame} bytes")]
    BadHeaderLength { header: usize, frame: usize },
    #[error("bad header: {0}")]
    BadHeader(String),
}

/// Encodes one frame.
pub fn encode<T: Serialize>(header: &T, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let h = serde_json::to_vec(header).map_err(|e| WireError::BadHeader(e.to_string()))?;
    let total = 4 + h.len() + payload.len();
    if total > MAX_FRAME || h.len() > MAX_HEADER {
        return Err(WireError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks a frame length read off the stream before reading the body.
pub fn check_len(len: u32) -> Result<usize, WireError> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len < 4 {
        return Err(WireError::BadHeaderLength {
            header: 0,
            frame: len,
        });
    }
    Ok(len)
}

/// Splits a frame body (after the outer length) into header and payload.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<(T, &'a [u8]), WireError> {
    if body.len() < 4 {
        return Err(WireError::BadHeaderLength {
            header: 0,
            frame: body.len(),
        });
    }
    let hlen = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if hlen > body.len() - 4 || hlen > MAX_HEADER {
        return Err(WireError::BadHeaderLength {
            header: hlen,
            frame: body.len(),
        });
    }
    let header = serde_json::from_slice(&body[4..4 + hlen])
        .map_err(|e| WireError::BadHeader(e.to_string()))?;
    Ok((header, &body[4 + hlen..]))
}

/// Reads one frame body; `None` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Result<Vec<u8>, WireError>>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = match check_len(u32::from_be_bytes(len)) {
        Ok(n) => n,
        Err(e) => return Ok(Some(Err(e))),
    };
    let mut body = Vec::with_capacity(n.min(64 * 1024));
    let got = r.take(n as u64).read_to_end(&mut body).await?;
    if got != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(Ok(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_frames() {
        let f = encode(&HostMsg::Stdin { id: "p".into() }, b"bytes\xff").unwrap();
        let (h, p): (HostMsg, _) = decode(&f[4..]).unwrap();
        assert_eq!(h, HostMsg::Stdin { id: "p".into() });
        assert_eq!(p, b"bytes\xff");
        assert!(matches!(check_len(u32::MAX), Err(WireError::TooLarge(_))));
        assert!(check_len(2).is_err());
        assert!(decode::<HostMsg>(&[0, 0, 0, 99, b'{']).is_err());
        assert!(
            decode::<HostMsg>(&[0, 0, 0, 2, b'{', b'}']).is_err(),
            "no type tag"
        );
        assert!(decode::<HostMsg>(&[0, 0]).is_err());
        assert!(encode(&GuestMsg::File { req: 1 }, &vec![0u8; MAX_FRAME]).is_err());
    }

    #[test]
    fn read_file_without_a_session_still_decodes() {
        let old = br#"{"type":"readFile","req":1,"path":"/x","limit":5}"#;
        let m: HostMsg = serde_json::from_slice(old).unwrap();
        assert!(matches!(m, HostMsg::ReadFile { session: None, .. }));
    }
}
