//! One stream between a guest port and a host Unix socket, with the
//! credit accounting of virtio 1.2, 5.10.6.3: each side says how much it
//! can buffer (`buf_alloc`) and how much it has passed on (`fwd_cnt`); a
//! sender never has more in flight than the receiver's free space.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use super::packet::{Header, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// What we buffer per connection for the host side (bytes from the guest
/// that the host socket has not taken yet). The guest is told this much
/// and may not send more: the bound on host memory per stream.
pub const BUF_ALLOC: u32 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// We sent REQUEST for a host-initiated connection.
    Connecting,
    Established,
}

pub struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// Payload bytes from the guest written to the host socket.
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_sent: u32,
    to_host: VecDeque<u8>,
    /// The host socket has something (data or its end) not yet read.
    pub readable: bool,
    /// The host socket will send no more.
    pub host_eof: bool,
    /// SHUTDOWN flags the guest has sent.
    pub peer_shutdown: u32,
    /// A CREDIT_REQUEST is out and not answered.
    pub credit_requested: bool,
    /// A hybrid-mode client waits for "OK <port>" once the guest accepts.
    pub hybrid_reply: bool,
    /// We have shut the host socket's write side (once: every shutdown
    /// wakes the socket's pollers, and a repeated one would loop).
    host_write_shut: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GuestData {
    Accepted,
    /// More than the credit we gave: the guest broke the protocol.
    OverCredit,
    /// The host socket is gone.
    HostGone,
}

impl Connection {
    pub fn new(stream: UnixStream, token: u64, state: State) -> Connection {
        Connection {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: VecDeque::new(),
            readable: false,
            host_eof: false,
            peer_shutdown: 0,
            credit_requested: false,
            hybrid_reply: false,
            host_write_shut: false,
        }
    }

    /// Every packet from the guest carries its current credit.
    pub fn peer_credit_from(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many bytes the guest can take now. A guest that shrinks its
    /// buffer below what is in flight gets nothing until it catches up.
    pub fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    pub fn sent_to_guest(&mut self, n: usize) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
    }

    /// Our credit fields for a packet to the guest (and notes that the
    /// guest now knows them).
    pub fn credit_for_header(&mut self) -> (u32, u32) {
        self.fwd_cnt_sent = self.fwd_cnt;
        (BUF_ALLOC, self.fwd_cnt)
    }

    /// The guest's view of our free space has fallen below one full packet
    /// while we have freed more: tell it, or it stalls.
    pub fn needs_credit_update(&self) -> bool {
        let unacked = self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent);
        let guest_sees_free =
            BUF_ALLOC.saturating_sub(self.to_host.len() as u32 + unacked) as usize;
        unacked > 0 && guest_sees_free < MAX_PAYLOAD
    }

    pub fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// Bytes from the guest for the host socket.
    pub fn take_from_guest(&mut self, data: &[u8]) -> GuestData {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return GuestData::OverCredit;
        }
        self.to_host.extend(data);
        match self.flush() {
            Ok(()) => GuestData::Accepted,
            Err(_) => GuestData::HostGone,
        }
    }

    /// Writes what the host socket takes; the rest waits for it to drain.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether there is host data the guest may be sent now.
    pub fn wants_to_send(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// Reads host data for the guest; `Ok(0)` is the host's end, `Err`
    /// with `WouldBlock` means nothing more for now.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.readable = false;
                    self.host_eof = true;
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.readable = false;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Both sides are done and everything the guest sent has been passed
    /// on: the connection can be reset and forgotten.
    pub fn finished(&self) -> bool {
        let guest_done = self.peer_shutdown & SHUTDOWN_SEND != 0;
        guest_done
            && self.to_host.is_empty()
            && (self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 1, State::Established), b)
    }

    #[test]
    fn credit_in_flight_and_a_shrinking_peer() {
        let (mut c, _b) = pair();
        c.peer_credit_from(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 1000);
        c.sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        // The peer shrinks its buffer below what is in flight: no credit,
        // no underflow.
        c.peer_credit_from(&Header {
            buf_alloc: 100,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.tx_cnt = u32::MAX - 10;
        c.peer_credit_from(&Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 50,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 60);
    }

    #[test]
    fn guest_data_is_bounded_by_our_credit() {
        let (mut c, b) = pair();
        // Nobody reads `b`: the socket fills, then our buffer, then the
        // guest is over its credit.
        let chunk = vec![7u8; MAX_PAYLOAD];
        let mut accepted = 0usize;
        loop {
            match c.take_from_guest(&chunk) {
                GuestData::Accepted => accepted += chunk.len(),
                GuestData::OverCredit => break,
                GuestData::HostGone => panic!("host is there"),
            }
            assert!(accepted < 64 << 20, "never bounded");
        }
        assert!(c.pending_to_host() <= BUF_ALLOC as usize);
        drop(b);
        c.to_host.clear();
        c.to_host.push_back(1);
        assert!(c.flush().is_err(), "EPIPE once the host end is gone");
    }

    #[test]
    fn credit_update_when_the_guest_would_stall() {
        let (mut c, mut b) = pair();
        let _ = c.credit_for_header();
        assert!(!c.needs_credit_update());
        let big = vec![1u8; BUF_ALLOC as usize - 1000];
        assert_eq!(c.take_from_guest(&big), GuestData::Accepted);
        let mut sink = vec![0u8; BUF_ALLOC as usize];
        let mut got = 0;
        while got < big.len() {
            got += b.read(&mut sink).unwrap();
            c.flush().unwrap();
        }
        assert!(c.needs_credit_update());
        let (alloc, fwd) = c.credit_for_header();
        assert_eq!((alloc, fwd as usize), (BUF_ALLOC, big.len()));
        assert!(!c.needs_credit_update());
    }
}
