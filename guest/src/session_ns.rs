//! Each session's own network and IPC namespaces.
//!
//! Without them every session in the VM would share one loopback (a
//! server one session listens on at 127.0.0.1, or a port it squats, is
//! there for all), one set of abstract Unix socket names (scoped by the
//! network namespace) and one set of System V IPC objects and POSIX
//! message queues (scoped by the IPC namespace). So each session gets a
//! pair of its own, made when its first process is spawned and shared by
//! all its processes (the Claude CLI and the servers and tools it starts
//! still talk over loopback), until the host ends the session.
//!
//! The namespaces are made on a short-lived thread of their own, never on
//! one of the agent's threads (which must stay in the VM's namespaces):
//! it unshares, keeps them by descriptors of `/proc/thread-self/ns/*`,
//! brings the new `lo` up, and makes the session's egress listener there
//! (a socket belongs to the network namespace it was made in), then ends.
//! Each process of the session enters both before exec
//! ([`SessionNs::enter_in_child`]); the agent's forwarder accepts on the
//! listener from its runtime, as it did on the VM-wide one.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::libc;

use crate::forward::HostEnd;

/// Live session namespaces at most (each costs kernel memory; the host
/// serves a handful of sessions at once). One more is refused until a
/// session is ended.
pub const MAX_SESSIONS: usize = 128;

/// One session's namespaces, held by descriptor (which keeps them alive
/// with no process in them).
#[derive(Debug)]
pub struct SessionNs {
    net: OwnedFd,
    ipc: OwnedFd,
}

impl SessionNs {
    /// New network and IPC namespaces with `lo` up, and a listener on
    /// `listen` made in the new network namespace (non-blocking).
    pub fn new(listen: std::net::SocketAddr) -> Result<(SessionNs, std::net::TcpListener), String> {
        std::thread::Builder::new()
            .name("session-ns".into())
            // The thread ends right after: its namespaces go nowhere else.
            .spawn(move || make(listen))
            .map_err(|e| format!("cannot start a thread for the session's namespaces: {e}"))?
            .join()
            .map_err(|_| "the thread making the session's namespaces panicked".to_string())?
    }

    /// Enters the session's network and IPC namespaces. Runs in the child
    /// between fork and exec, as root (setns needs CAP_SYS_ADMIN, so
    /// before the capabilities are dropped): system calls only, on
    /// descriptors opened before the fork.
    pub fn enter_in_child(&self) -> std::io::Result<()> {
        for (fd, kind) in [
            (&self.net, libc::CLONE_NEWNET),
            (&self.ipc, libc::CLONE_NEWIPC),
        ] {
            // SAFETY: setns takes a live descriptor of ours and a flag; it
            // touches no memory of ours.
            if unsafe { libc::setns(fd.as_raw_fd(), kind) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The network namespace's inode (what `/proc/<pid>/ns/net` names).
    pub fn net_inode(&self) -> std::io::Result<u64> {
        inode(&self.net)
    }

    /// The IPC namespace's inode.
    pub fn ipc_inode(&self) -> std::io::Result<u64> {
        inode(&self.ipc)
    }
}

fn inode(fd: &OwnedFd) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::from(fd.try_clone()?);
    Ok(f.metadata()?.ino())
}

/// On the dedicated thread: unshare, keep, set up.
fn make(listen: std::net::SocketAddr) -> Result<(SessionNs, std::net::TcpListener), String> {
    // SAFETY: unshare takes flags only. It moves this thread alone (a
    // thread of its own that ends after this function) into the new
    // namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC) } < 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET|CLONE_NEWIPC): {}",
            std::io::Error::last_os_error()
        ));
    }
    let ns = SessionNs {
        net: open_ns(c"/proc/thread-self/ns/net")?,
        ipc: open_ns(c"/proc/thread-self/ns/ipc")?,
    };
    crate::init::loopback_up().map_err(|e| format!("lo in the session's namespace: {e}"))?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen} in the session's namespace: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{listen}: {e}"))?;
    Ok((ns, listener))
}

fn open_ns(path: &CStr) -> Result<OwnedFd, String> {
    // SAFETY: `path` is NUL-terminated and alive for the call; the
    // returned descriptor, when valid, is owned by nobody else.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "{}: {}",
            path.to_string_lossy(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a non-negative `fd` was just opened here and is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A live session's namespaces and the forwarder serving its listener.
struct Entry {
    ns: Arc<SessionNs>,
    forwarder: tokio::task::AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Ends the accept loop and drops the listener with it; the
        // descriptors go with the last `Arc` (a spawn under way may hold
        // one until its child has exec'd).
        self.forwarder.abort();
    }
}

/// Every live session's namespaces, by session name; at most
/// [`MAX_SESSIONS`].
pub struct Registry {
    sessions: Mutex<HashMap<String, Entry>>,
    listen: std::net::SocketAddr,
    egress: HostEnd,
    max: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("listen", &self.listen)
            .field("egress", &self.egress)
            .field("live", &self.live())
            .finish()
    }
}

impl Registry {
    /// Each session's egress listener on `listen` (in its own namespace)
    /// forwards to `egress`.
    pub fn new(listen: std::net::SocketAddr, egress: HostEnd) -> Registry {
        Registry::with_max(listen, egress, MAX_SESSIONS)
    }

    pub fn with_max(listen: std::net::SocketAddr, egress: HostEnd, max: usize) -> Registry {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            listen,
            egress,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `session`'s namespaces, made (with its egress forwarder, a task on
    /// the current tokio runtime) on first use.
    pub fn for_session(&self, session: &str) -> Result<Arc<SessionNs>, String> {
        let mut table = self.lock();
        if let Some(e) = table.get(session) {
            return Ok(e.ns.clone());
        }
        if table.len() >= self.max {
            return Err(format!(
                "at most {} sessions may have processes at once; end one first",
                self.max
            ));
        }
        let (ns, listener) = SessionNs::new(self.listen)?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("egress listener of session {session:?}: {e}"))?;
        let forwarder = tokio::spawn(crate::forward::serve(listener, self.egress.clone()));
        let ns = Arc::new(ns);
        table.insert(
            session.to_string(),
            Entry {
                ns: ns.clone(),
                forwarder: forwarder.abort_handle(),
            },
        );
        Ok(ns)
    }

    /// Lets `session`'s namespaces and egress listener go (the session
    /// has ended); nothing when it had none.
    pub fn end(&self, session: &str) {
        let gone = self.lock().remove(session);
        drop(gone);
    }

    /// How many sessions have namespaces.
    pub fn live(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_inode(kind: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/thread-self/ns/{kind}"))
            .unwrap()
            .ino()
    }

    fn able(test: &str) -> bool {
        crate::prerequisite::require(
            nix::unistd::geteuid().is_root(),
            test,
            "making namespaces needs root",
        )
    }

    #[tokio::test]
    #[cfg_attr(not(has_root), ignore = "making namespaces needs root")]
    async fn one_pair_per_session_bounded_and_released() {
        if !able("one_pair_per_session_bounded_and_released") {
            return;
        }
        // The privileged port as in the VM: only root binds it, and the
        // new namespace's is free whatever the machine listens on.
        let listen = "127.0.0.1:312".parse().unwrap();
        let reg = Registry::with_max(listen, HostEnd::Unix("/nonexistent".into()), 2);
        let a = reg.for_session("a").unwrap();
        let a_again = reg.for_session("a").unwrap();
        let b = reg.for_session("b").unwrap();
        assert!(Arc::ptr_eq(&a, &a_again), "one pair per session");
        let (an, ai) = (a.net_inode().unwrap(), a.ipc_inode().unwrap());
        let (bn, bi) = (b.net_inode().unwrap(), b.ipc_inode().unwrap());
        assert_ne!(an, bn);
        assert_ne!(ai, bi);
        // The agent's own thread stays where it was.
        assert!(![an, bn].contains(&own_inode("net")));
        assert!(![ai, bi].contains(&own_inode("ipc")));
        // The egress listener is in the session's namespace, whose `lo`
        // is up: a thread that enters it connects (and the forwarder
        // accepts; its host end is missing, so it hangs up).
        // (A thread of its own, never one of the runtime's pool.)
        let in_a = a.clone();
        let client = std::thread::spawn(move || {
            in_a.enter_in_child().unwrap();
            let mut s = std::net::TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            use std::io::Read;
            s.read(&mut [0u8; 1]).unwrap()
        });
        while !client.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            client.join().unwrap(),
            0,
            "accepted, then closed by the forwarder"
        );
        // Bounded: a third live session is refused until one ends.
        let err = reg.for_session("c").unwrap_err();
        assert!(err.contains("at most 2"), "{err}");
        reg.end("a");
        assert_eq!(reg.live(), 1);
        let a2 = reg.for_session("a").unwrap();
        assert_ne!(a2.net_inode().unwrap(), an, "a new pair after the end");
        reg.end("never");
        assert_eq!(reg.live(), 2);
    }
}
