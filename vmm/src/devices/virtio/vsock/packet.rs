//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and moving packets
//! in and out of descriptor chains. Everything here comes from the guest
//! and is checked before use.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

pub const HEADER_LEN: usize = 44;
/// Largest payload in one packet, either way (Linux's own limit).
pub const MAX_PAYLOAD: usize = 64 * 1024;
pub const TYPE_STREAM: u16 = 1;

pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("descriptor chain: {0}")]
    Chain(String),
    #[error("chain of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("header says {said} payload bytes, the chain holds {holds}")]
    Length { said: u32, holds: usize },
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    (u32_at(b, at) as u64) | ((u32_at(b, at + 4) as u64) << 32)
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads a guest-to-host packet: its header, and its payload for RW (the
/// only op that carries one; other ops' lengths are ignored as Linux does).
pub fn read_tx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<(Header, Vec<u8>), PacketError> {
    let mut r = Reader::new(mem, chain).map_err(|e| PacketError::Chain(e.to_string()))?;
    let holds = r.available_bytes();
    if holds < HEADER_LEN {
        return Err(PacketError::Short(holds));
    }
    let mut raw = [0u8; HEADER_LEN];
    r.read_exact(&mut raw)
        .map_err(|e| PacketError::Chain(e.to_string()))?;
    let hdr = Header::parse(&raw);
    if hdr.op != op::RW {
        return Ok((hdr, Vec::new()));
    }
    if hdr.len as usize > MAX_PAYLOAD {
        return Err(PacketError::TooLarge(hdr.len));
    }
    let holds = r.available_bytes();
    if (hdr.len as usize) > holds {
        return Err(PacketError::Length {
            said: hdr.len,
            holds,
        });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    r.read_exact(&mut payload)
        .map_err(|e| PacketError::Chain(e.to_string()))?;
    Ok((hdr, payload))
}

/// Room for payload in a host-to-guest chain (0 if not even a header fits).
pub fn rx_room(w: &Writer<'_>) -> usize {
    w.available_bytes().saturating_sub(HEADER_LEN)
}

/// Writes a packet into a host-to-guest chain; the bytes used.
pub fn write_rx(w: &mut Writer<'_>, hdr: Header, payload: &[u8]) -> std::io::Result<u32> {
    w.write_all(&hdr.to_bytes())?;
    w.write_all(payload)?;
    Ok((HEADER_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 262_144,
            fwd_cnt: u32::MAX,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(Header::parse(&b), h);
    }
}
