//! The device against mock queues and real Unix sockets: what a guest
//! driver would send, well-formed or not.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{
    op, Header, HEADER_LEN, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{host_port_path, Vsock, BUF_ALLOC, GUEST_CID, HOST_CID};
use crate::devices::virtio::VirtioDevice;

const QLEN: u16 = 64;
const RX_BUFS: u64 = 0x100_0000;
const TX_BUFS: u64 = 0x20_0000;
const SLOT: u64 = 0x2_0000;

struct Guest {
    mem: &'static GuestMemoryMmap,
    rx: MockSplitQueue<'static, GuestMemoryMmap>,
    tx: MockSplitQueue<'static, GuestMemoryMmap>,
    queues: Vec<Queue>,
    dev: Vsock,
    rx_next: u16,
    rx_seen: u16,
    tx_next: u16,
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

fn hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 1 << 20,
        ..Default::default()
    }
}

impl Guest {
    fn new() -> Guest {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap(),
        ));
        let rx = MockSplitQueue::create(mem, GuestAddress(0), QLEN);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QLEN);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            Queue::new(64).unwrap(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(GUEST_CID, &uds).unwrap();
        Guest {
            mem,
            rx,
            tx,
            queues,
            dev,
            rx_next: 0,
            rx_seen: 0,
            tx_next: 0,
            _dir: dir,
            uds,
        }
    }

    /// Gives the device `n` receive buffers of `len` bytes.
    fn post_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let slot = self.rx_next % QLEN;
            let d = desc(RX_BUFS + slot as u64 * SLOT, len, VRING_DESC_F_WRITE);
            self.rx.add_desc_chains(&[d], slot).unwrap();
            self.rx_next = self.rx_next.wrapping_add(1);
        }
        self.dev.process_queue(0, &mut self.queues, self.mem);
    }

    /// Sends raw chain bytes: a header descriptor then a payload one.
    fn send_raw(&mut self, header: &[u8], payload: &[u8]) {
        let slot = (self.tx_next % (QLEN / 2)) * 2;
        let at = TX_BUFS + slot as u64 * SLOT;
        self.mem.write_slice(header, GuestAddress(at)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + SLOT))
            .unwrap();
        let mut chain = vec![desc(at, header.len() as u32, 0)];
        if !payload.is_empty() {
            chain.push(desc(at + SLOT, payload.len() as u32, 0));
        }
        let n = chain.len();
        for (i, d) in chain.iter_mut().enumerate() {
            if i + 1 < n {
                let s = SplitDescriptor::from(*d);
                *d = RawDescriptor::from(SplitDescriptor::new(
                    s.addr().0,
                    s.len(),
                    s.flags() | 1,
                    slot + i as u16 + 1,
                ));
            }
        }
        self.tx.add_desc_chains(&chain, slot).unwrap();
        self.tx_next = self.tx_next.wrapping_add(1);
        self.dev.process_queue(1, &mut self.queues, self.mem);
    }

    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        self.send_raw(&h.to_bytes(), payload);
    }

    /// Packets the device put in the receive queue since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != used {
            let e = self
                .rx
                .used()
                .ring()
                .ref_at((self.rx_seen % QLEN) as usize)
                .unwrap()
                .load();
            self.rx_seen = self.rx_seen.wrapping_add(1);
            if e.len() == 0 {
                continue;
            }
            let at = RX_BUFS + e.id() as u64 * SLOT;
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let h = Header::parse(&raw);
            assert_eq!(e.len() as usize, HEADER_LEN + h.len as usize);
            let mut p = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut p, GuestAddress(at + HEADER_LEN as u64))
                .unwrap();
            out.push((h, p));
        }
        out
    }

    fn backend(&mut self) {
        self.dev.process_backend(&mut self.queues, self.mem);
    }

    fn ops(&mut self) -> Vec<u16> {
        self.recv().iter().map(|(h, _)| h.op).collect()
    }

    /// A guest connection from `port` to a host listener on 1024.
    fn connect(&mut self, port: u32) -> (UnixListener, UnixStream) {
        let l = UnixListener::bind(host_port_path(&self.uds, 1024)).unwrap();
        self.send(hdr(port, 1024, op::REQUEST), &[]);
        assert_eq!(self.ops(), vec![op::RESPONSE]);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (l, s)
    }
}

/// Lets the kernel deliver what one end wrote before the device polls.
fn settle() {
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn guest_stream_to_a_host_listener_both_ways_and_closed() {
    let mut g = Guest::new();
    g.post_rx(8, 4096);
    let (_l, mut host) = g.connect(5000);
    assert_eq!(g.dev.connection_count(), 1);

    g.send(hdr(5000, 1024, op::RW), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world").unwrap();
    settle();
    g.backend();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    let (h, p) = &pkts[0];
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::RW, 1024, 5000, GUEST_CID)
    );
    assert_eq!(p, b"world");
    assert_eq!(h.buf_alloc, BUF_ALLOC);

    // The host closes: the guest hears SHUTDOWN; the guest closes too and
    // the device resets and forgets the stream.
    drop(host);
    settle();
    g.backend();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
    let mut h = hdr(5000, 1024, op::SHUTDOWN);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(h, &[]);
    assert_eq!(g.ops(), vec![op::RST]);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn refused_malformed_and_unknown_packets() {
    let mut g = Guest::new();
    g.post_rx(16, 4096);
    // Nobody listens on 7000.
    g.send(hdr(1, 7000, op::REQUEST), &[]);
    assert_eq!(g.ops(), vec![op::RST]);
    // Data, credit and responses for streams that do not exist.
    for o in [op::RW, op::RESPONSE, op::CREDIT_UPDATE, op::SHUTDOWN, 0, 99] {
        g.send(hdr(2, 7000, o), b"x");
    }
    assert_eq!(g.ops(), vec![op::RST; 6]);
    // A RST for nothing gets no answer.
    g.send(hdr(2, 7000, op::RST), &[]);
    // Shorter than a header, wrong CIDs, wrong type: dropped.
    g.send_raw(&[0u8; 10], &[]);
    let mut bad = hdr(3, 7000, op::REQUEST);
    bad.src_cid = 99;
    g.send(bad, &[]);
    let mut bad = hdr(3, 7000, op::REQUEST);
    bad.dst_cid = 7;
    g.send(bad, &[]);
    let mut bad = hdr(3, 7000, op::REQUEST);
    bad.type_ = 2;
    g.send(bad, &[]);
    assert!(g.recv().is_empty());
    assert_eq!(g.dev.connection_count(), 0);

    // On a live stream: a length beyond the chain, a huge length, zero.
    let (_l, mut host) = g.connect(5001);
    let mut lying = hdr(5001, 1024, op::RW);
    lying.len = 1000;
    g.send_raw(&lying.to_bytes(), b"short");
    let mut huge = hdr(5001, 1024, op::RW);
    huge.len = u32::MAX;
    g.send_raw(&huge.to_bytes(), b"x");
    assert!(g.recv().is_empty(), "malformed packets are dropped");
    g.send(hdr(5001, 1024, op::RW), &[]);
    g.send(hdr(5001, 1024, op::RW), b"ok");
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
    // A second REQUEST for a live stream resets it.
    g.send(hdr(5001, 1024, op::REQUEST), &[]);
    assert_eq!(g.ops(), vec![op::RST]);
    // Receive buffers too small for a header are returned empty.
    let mut g = Guest::new();
    g.post_rx(2, 8);
    g.send(hdr(1, 7000, op::REQUEST), &[]);
    assert!(g.recv().is_empty());
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mut g = Guest::new();
    g.post_rx(16, 4096);
    let l = UnixListener::bind(host_port_path(&g.uds, 1024)).unwrap();
    let mut req = hdr(6000, 1024, op::REQUEST);
    req.buf_alloc = 100;
    g.send(req, &[]);
    assert_eq!(g.ops(), vec![op::RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(&[7u8; 1000]).unwrap();
    settle();
    g.backend();
    let pkts = g.recv();
    let data: usize = pkts
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(data, 100, "no more than the guest's buffer");
    assert!(pkts.iter().any(|(h, _)| h.op == op::CREDIT_REQUEST));
    // The guest frees its buffer: the next 100 bytes come.
    let mut upd = hdr(6000, 1024, op::CREDIT_UPDATE);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 100;
    g.send(upd, &[]);
    let data: usize = g
        .recv()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(data, 100);
}

#[test]
fn a_guest_over_its_credit_is_reset_and_host_memory_stays_bounded() {
    let mut g = Guest::new();
    g.post_rx(16, 4096);
    // The host never reads.
    let (_l, _host) = g.connect(5002);
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0usize;
    while g.dev.connection_count() == 1 {
        g.send(hdr(5002, 1024, op::RW), &chunk);
        sent += chunk.len();
        assert!(sent < 64 << 20, "the device kept accepting");
    }
    assert!(g.ops().contains(&op::RST));
}

#[test]
fn hybrid_connect_to_a_guest_port() {
    let mut g = Guest::new();
    g.post_rx(8, 4096);
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\nearly").unwrap();
    settle();
    g.backend();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    let req = pkts[0].0;
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 52));
    assert!(req.src_port >= 1 << 30);
    // The guest accepts.
    let mut resp = hdr(52, req.src_port, op::RESPONSE);
    resp.buf_alloc = 4096;
    g.send(resp, &[]);
    let mut line = [0u8; 64];
    let n = host.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].1.as_slice()),
        (op::RW, &b"early"[..])
    );

    // A line that is not CONNECT gets ERR; a guest that refuses closes.
    let mut bad = UnixStream::connect(&g.uds).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    let mut refused = UnixStream::connect(&g.uds).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    refused.write_all(b"CONNECT 53\n").unwrap();
    settle();
    g.backend();
    let mut s = String::new();
    bad.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ERR\n");
    let req = g.recv()[0].0;
    g.send(hdr(53, req.src_port, op::RST), &[]);
    let mut rest = Vec::new();
    refused.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed without OK");

    // A device reset closes every host stream.
    g.dev.reset();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(g.dev.connection_count(), 0);
}

/// The device thread watches the backend descriptor level-triggered: after
/// the device has handled it, it must not stay ready, or the thread spins
/// and starves the vCPUs of the transport lock.
#[test]
fn backend_is_quiet_once_handled() {
    let ready = |g: &Guest| {
        let mut p = libc::pollfd {
            fd: g.dev.backend_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) > 0 }
    };
    let mut g = Guest::new();
    g.post_rx(8, 4096);
    assert!(!ready(&g));
    let (_l, mut host) = g.connect(5003);
    g.send(hdr(5003, 1024, op::RW), b"x");
    host.write_all(b"y").unwrap();
    settle();
    g.backend();
    assert!(!ready(&g), "after data");
    // The guest stops sending (the agent exiting does this): the host's
    // write side is shut once, and that must not wake the device for ever.
    let mut h = hdr(5003, 1024, op::SHUTDOWN);
    h.flags = SHUTDOWN_SEND;
    g.send(h, &[]);
    settle();
    g.backend();
    assert!(!ready(&g), "after the guest's half-close");
    let mut eof = Vec::new();
    host.read_to_end(&mut eof).unwrap();
    assert_eq!(eof, b"x", "the host sees the guest's data, then its end");
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(h, &[]);
    settle();
    g.backend();
    assert!(!ready(&g), "after the guest closed");
    g.dev.reset();
    settle();
    g.backend();
    assert!(!ready(&g), "after a reset");
    drop(host);
    settle();
    g.backend();
    assert!(!ready(&g), "after the host closed");
}
