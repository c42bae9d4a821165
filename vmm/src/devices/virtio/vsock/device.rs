//! The device: its queues on one side, the host's Unix sockets on the
//! other, and the table of streams between them.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::connection::{Connection, GuestData, State};
use super::packet::{self, op, Header, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::{drain_queue, VirtioDevice};

pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const HOST_CID: u64 = 2;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 64];

/// Streams open at once; a guest asking for more is reset.
pub const MAX_CONNECTIONS: usize = 256;
/// Hybrid-mode clients that have not finished their CONNECT line.
const MAX_HANDSHAKES: usize = 32;
const HANDSHAKE_MAX_LEN: usize = 32;
/// Control packets waiting for room in the guest's receive queue. A guest
/// that floods us with bad packets and never reads loses the excess.
const MAX_CONTROL: usize = 1024;
/// Packets delivered per wake-up before yielding the device lock; the rest
/// follows at once through the kick eventfd.
const RX_BATCH: usize = 256;
/// Rounds of host events handled per wake-up (see `poll_host`).
const POLL_ROUNDS: usize = 64;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_KICK: u64 = 1;
const FIRST_TOKEN: u64 = 2;
/// Host ports for host-initiated streams are taken from here up.
const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;

/// (host port, guest port): a stream's identity.
type Key = (u32, u32);

enum Target {
    Conn(Key),
    Handshake(UnixStream),
}

pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    kick: EventFd,
    conns: HashMap<Key, Connection>,
    targets: HashMap<u64, Target>,
    control: VecDeque<(Key, u16, u32)>,
    control_dropped: u64,
    next_token: u64,
    next_port: u32,
    scratch: Vec<u8>,
}

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// Connects without blocking: a listener whose backlog is full is an error
/// (the guest's REQUEST is reset), not a stalled device.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// `CONNECT <port>\n` from a hybrid-mode client.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

impl Vsock {
    /// A device for guest `cid` whose host side lives at `uds`.
    pub fn new(cid: u64, uds: &Path) -> io::Result<Vsock> {
        if cid <= HOST_CID || cid >= u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("guest CID {cid} is reserved or out of range"),
            ));
        }
        // A socket left by an earlier run of this VM is ours to replace.
        if std::fs::symlink_metadata(uds)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(uds)?;
        }
        let listener = UnixListener::bind(uds)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_LISTENER),
        )?;
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_KICK),
        )?;
        Ok(Vsock {
            cid,
            uds: uds.to_path_buf(),
            listener,
            epoll,
            kick,
            conns: HashMap::new(),
            targets: HashMap::new(),
            control: VecDeque::new(),
            control_dropped: 0,
            next_token: FIRST_TOKEN,
            next_port: FIRST_EPHEMERAL_PORT,
            scratch: vec![0u8; MAX_PAYLOAD],
        })
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            self.control_dropped += 1;
            if self.control_dropped.is_power_of_two() {
                tracing::warn!(
                    "vsock: guest is not reading; {} control packets dropped",
                    self.control_dropped
                );
            }
            return;
        }
        self.control.push_back((key, op, flags));
    }

    fn header(&mut self, key: Key, op: u16, flags: u32, len: usize) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get_mut(&key)
            .map(|c| c.credit_for_header())
            .unwrap_or((0, 0));
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn register(&mut self, fd: RawFd, target: Target) -> io::Result<u64> {
        let token = self.next_token;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(stream_events(), token),
        )?;
        self.next_token += 1;
        self.targets.insert(token, target);
        Ok(token)
    }

    /// Forgets a stream (closing its host socket); tells the guest unless
    /// the guest is the one that reset it.
    fn close(&mut self, key: Key, tell_guest: bool) {
        if let Some(c) = self.conns.remove(&key) {
            self.targets.remove(&c.token);
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        if tell_guest {
            self.push_control(key, op::RST, 0);
        }
    }

    fn ephemeral_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.conns.keys().any(|(h, _)| *h == p) {
                return p;
            }
        }
    }

    // ---- host side -------------------------------------------------------

    fn accept_hybrid(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    let handshakes = self
                        .targets
                        .values()
                        .filter(|t| matches!(t, Target::Handshake(_)))
                        .count();
                    if handshakes >= MAX_HANDSHAKES || s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = s.as_raw_fd();
                    if let Err(e) = self.register(fd, Target::Handshake(s)) {
                        crate::guest_log!(
                            warn,
                            "vsock-watch",
                            "vsock: cannot watch a host connection: {e}"
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::guest_log!(
                        warn,
                        "vsock-accept",
                        "vsock: accept on {}: {e}",
                        self.uds.display()
                    );
                    return;
                }
            }
        }
    }

    /// Reads a hybrid client's `CONNECT <port>\n` (only that line: what
    /// follows is stream data) and sends the guest a REQUEST.
    fn handshake(&mut self, token: u64) {
        let Some(Target::Handshake(s)) = self.targets.get(&token) else {
            return;
        };
        let mut buf = [0u8; HANDSHAKE_MAX_LEN];
        let n = match socket::recv(s.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(_) => 0,
        };
        let Some(end) = buf[..n].iter().position(|b| *b == b'\n') else {
            if n == 0 || n == HANDSHAKE_MAX_LEN {
                // Gone, or not a CONNECT line.
                self.targets.remove(&token);
            }
            return;
        };
        let mut line = [0u8; HANDSHAKE_MAX_LEN];
        let got = socket::recv(s.as_raw_fd(), &mut line[..=end], MsgFlags::empty()).unwrap_or(0);
        let port = parse_connect(&line[..got]);
        let Some(Target::Handshake(mut s)) = self.targets.remove(&token) else {
            return;
        };
        let Some(guest_port) = port.filter(|_| self.conns.len() < MAX_CONNECTIONS) else {
            let _ = s.write_all(b"ERR\n");
            return;
        };
        let key = (self.ephemeral_port(), guest_port);
        let mut c = Connection::new(s, token, State::Connecting);
        c.hybrid_reply = true;
        // Anything sent after the line is already waiting.
        c.readable = true;
        self.targets.insert(token, Target::Conn(key));
        self.conns.insert(key, c);
        self.push_control(key, op::REQUEST, 0);
    }

    fn stream_event(&mut self, key: Key, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        // Room in the host socket matters only with something to write.
        if c.pending_to_host() > 0 {
            self.flushed(key);
        }
    }

    /// Writes what waits for the host socket and acts on the outcome.
    fn flushed(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush().is_err() {
            self.close(key, true);
            return;
        }
        let update = c.needs_credit_update();
        if c.finished() {
            self.close(key, true);
        } else if update {
            self.push_control(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// Everything the host side has signalled since the last call, in a
    /// bounded number of rounds: should events keep coming, the rest is
    /// left to the next wake-up (the kick) so the device lock is released
    /// in between and the vCPUs are never starved of it.
    fn poll_host(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        for _ in 0..POLL_ROUNDS {
            let n = self.epoll.wait(0, &mut events).unwrap_or(0);
            // Until nothing is left: handling one event (an accept) can
            // make another ready (the new stream's first data).
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept_hybrid(),
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                    }
                    token => match self.targets.get(&token) {
                        Some(Target::Handshake(_)) => self.handshake(token),
                        Some(Target::Conn(key)) => {
                            let key = *key;
                            self.stream_event(key, ev.event_set());
                        }
                        None => {}
                    },
                }
            }
        }
        let _ = self.kick.write(1);
    }

    // ---- guest side ------------------------------------------------------

    /// A guest connects to host port `key.0`: bridge it to `<uds>_<port>`.
    fn guest_request(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.push_control(key, op::RST, 0);
            return;
        }
        let path = super::host_port_path(&self.uds, key.0);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                crate::guest_log!(
                    debug,
                    "vsock-connect",
                    "vsock: guest port {} to host port {}: {e}",
                    key.1,
                    key.0
                );
                self.push_control(key, op::RST, 0);
                return;
            }
        };
        let Ok(token) = self.register(stream.as_raw_fd(), Target::Conn(key)) else {
            self.push_control(key, op::RST, 0);
            return;
        };
        let mut c = Connection::new(stream, token, State::Established);
        c.peer_credit_from(hdr);
        self.conns.insert(key, c);
        self.push_control(key, op::RESPONSE, 0);
    }

    /// One packet from the guest. Nothing in it is trusted.
    fn guest_packet(&mut self, hdr: Header, payload: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            crate::guest_log!(
                debug,
                "vsock-bad-packet",
                "vsock: dropped a packet with bad addressing or type: {hdr:?}"
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            self.guest_request(key, &hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.push_control(key, op::RST, 0);
            }
            return;
        };
        c.peer_credit_from(&hdr);
        match hdr.op {
            op::RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                if c.hybrid_reply {
                    let line = format!("OK {}\n", key.0);
                    if c.stream.write_all(line.as_bytes()).is_err() {
                        self.close(key, true);
                    }
                }
            }
            op::RW if c.state == State::Established => match c.take_from_guest(payload) {
                GuestData::Accepted => self.flushed(key),
                GuestData::OverCredit => {
                    crate::guest_log!(
                        debug,
                        "vsock-credit",
                        "vsock: guest port {} sent beyond its credit",
                        key.1
                    );
                    self.close(key, true);
                }
                GuestData::HostGone => self.close(key, true),
            },
            op::SHUTDOWN => {
                c.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flushed(key);
            }
            op::CREDIT_UPDATE => c.credit_requested = false,
            op::CREDIT_REQUEST => self.push_control(key, op::CREDIT_UPDATE, 0),
            op::RST => self.close(key, false),
            // A RESPONSE to nothing, data before the handshake, an unknown op.
            _ => self.close(key, true),
        }
    }

    /// Streams with data for the guest and credit to send it; asks for
    /// credit where it ran out.
    fn senders(&mut self) -> Vec<Key> {
        let mut ready = Vec::new();
        let mut ask = Vec::new();
        for (key, c) in &mut self.conns {
            if !c.wants_to_send() {
                continue;
            }
            if c.peer_credit() > 0 {
                ready.push(*key);
            } else if !c.credit_requested {
                c.credit_requested = true;
                ask.push(*key);
            }
        }
        for key in ask {
            self.push_control(key, op::CREDIT_REQUEST, 0);
        }
        ready.sort_unstable();
        ready
    }

    /// Fills the guest's receive queue: control packets first, then one
    /// data packet per ready stream in turn. True when the guest should be
    /// interrupted.
    fn deliver(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(RX) else {
            return false;
        };
        if !q.ready() {
            return false;
        }
        let mut used = 0usize;
        'fill: while used < RX_BATCH {
            if let Some((key, op, flags)) = self.control.pop_front() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    self.control.push_front((key, op, flags));
                    break;
                };
                let head = chain.head_index();
                let hdr = self.header(key, op, flags, 0);
                let len = Writer::new(mem, chain)
                    .ok()
                    .and_then(|mut w| packet::write_rx(&mut w, hdr, &[]).ok())
                    .unwrap_or(0);
                if q.add_used(mem, head, len).is_err() {
                    break;
                }
                used += 1;
                continue;
            }
            let senders = self.senders();
            if senders.is_empty() && self.control.is_empty() {
                break;
            }
            for key in senders {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break 'fill;
                };
                let head = chain.head_index();
                let Ok(mut w) = Writer::new(mem, chain) else {
                    let _ = q.add_used(mem, head, 0);
                    used += 1;
                    continue;
                };
                let Some(c) = self.conns.get_mut(&key) else {
                    q.go_to_previous_position();
                    continue;
                };
                let room = packet::rx_room(&w).min(c.peer_credit()).min(MAX_PAYLOAD);
                let (op, flags, n) = if room == 0 {
                    // A buffer too small for a header: returned empty.
                    (None, 0, 0)
                } else {
                    match c.read_host(&mut self.scratch[..room]) {
                        Ok(0) => (Some(op::SHUTDOWN), SHUTDOWN_SEND, 0),
                        Ok(n) => (Some(op::RW), 0, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            q.go_to_previous_position();
                            continue;
                        }
                        Err(_) => {
                            q.go_to_previous_position();
                            self.close(key, true);
                            continue;
                        }
                    }
                };
                let mut len = 0;
                if let Some(op) = op {
                    c.sent_to_guest(n);
                    let hdr = self.header(key, op, flags, n);
                    len = packet::write_rx(&mut w, hdr, &self.scratch[..n]).unwrap_or(0);
                }
                if q.add_used(mem, head, len).is_err() {
                    break 'fill;
                }
                used += 1;
                if self.conns.get(&key).is_some_and(|c| c.finished()) {
                    self.close(key, true);
                }
            }
        }
        if used >= RX_BATCH {
            let _ = self.kick.write(1);
        }
        used > 0 && q.needs_notification(mem).unwrap_or(true)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        crate::devices::virtio::read_config_window(&cfg, offset, data);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let mut irq = false;
        if index == TX {
            if let Some(tx) = queues.get_mut(TX) {
                irq = drain_queue(tx, mem, |chain| {
                    match packet::read_tx(chain, mem) {
                        Ok((hdr, payload)) => self.guest_packet(hdr, &payload),
                        Err(e) => {
                            crate::guest_log!(
                                debug,
                                "vsock-malformed",
                                "vsock: dropped a malformed packet: {e}"
                            )
                        }
                    }
                    0
                });
            }
        } else if index != RX {
            // The event queue only holds buffers for events we never send.
            return false;
        }
        self.poll_host();
        self.deliver(queues, mem) || irq
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.poll_host();
        self.deliver(queues, mem)
    }

    fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, false);
        }
        self.control.clear();
    }
}
