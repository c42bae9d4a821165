//! One virtio-blk request, parsed from and answered into a descriptor
//! chain. The chain is the guest's: every length, sector and layout is
//! checked before the backing file is touched, and a request that makes no
//! sense gets an error status (or, if it has nowhere to put a status, is
//! returned unused).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{ID_BYTES, SECTOR_SIZE};

/// Data moves through a bounded buffer, whatever the request's size.
const COPY_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            0 => RequestType::In,
            1 => RequestType::Out,
            4 => RequestType::Flush,
            8 => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    IoErr = 1,
    Unsupported = 2,
}

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Header {
    kind: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: Header is plain old data with no padding (4 + 4 + 8 bytes).
unsafe impl ByteValued for Header {}

pub struct Backing<'a> {
    pub file: &'a File,
    pub capacity: u64,
    pub read_only: bool,
    pub id: &'a [u8],
}

/// The byte range a request covers, if it lies within the disk.
fn range(sector: u64, len: usize, capacity: u64) -> Option<u64> {
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len as u64)?;
    (end <= capacity).then_some(start)
}

fn copy_in(b: &Backing, start: u64, w: &mut Writer) -> std::io::Result<usize> {
    let total = w.available_bytes();
    let mut buf = vec![0u8; total.min(COPY_CHUNK)];
    let mut done = 0;
    while done < total {
        let n = (total - done).min(buf.len());
        b.file.read_exact_at(&mut buf[..n], start + done as u64)?;
        w.write_all(&buf[..n])?;
        done += n;
    }
    Ok(done)
}

fn copy_out(b: &Backing, start: u64, r: &mut Reader) -> std::io::Result<()> {
    let total = r.available_bytes();
    let mut buf = vec![0u8; total.min(COPY_CHUNK)];
    let mut done = 0;
    while done < total {
        let n = (total - done).min(buf.len());
        r.read_exact(&mut buf[..n])?;
        b.file.write_all_at(&buf[..n], start + done as u64)?;
        done += n;
    }
    Ok(())
}

/// Serves one chain; returns the number of bytes written into it (for the
/// used ring), status byte included.
pub fn serve(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, b: &Backing) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) =
        (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        return 0;
    };
    let writable = writer.available_bytes();
    if writable == 0 {
        return 0; // nowhere to put a status
    }
    let Ok(mut status_w) = writer.split_at(writable - 1) else {
        return 0;
    };
    let (status, data) = match reader.read_obj::<Header>() {
        Err(_) => (Status::IoErr, 0),
        Ok(h) => match RequestType::from(u32::from_le(h.kind)) {
            RequestType::In => {
                match range(u64::from_le(h.sector), writer.available_bytes(), b.capacity) {
                    None => (Status::IoErr, 0),
                    Some(start) => match copy_in(b, start, &mut writer) {
                        Ok(n) => (Status::Ok, n),
                        Err(_) => (Status::IoErr, 0),
                    },
                }
            }
            RequestType::Out if b.read_only => (Status::IoErr, 0),
            RequestType::Out => {
                match range(u64::from_le(h.sector), reader.available_bytes(), b.capacity) {
                    None => (Status::IoErr, 0),
                    Some(start) => match copy_out(b, start, &mut reader) {
                        Ok(()) => (Status::Ok, 0),
                        Err(_) => (Status::IoErr, 0),
                    },
                }
            }
            RequestType::Flush if b.read_only => (Status::Ok, 0),
            RequestType::Flush => match b.file.sync_data() {
                Ok(()) => (Status::Ok, 0),
                Err(_) => (Status::IoErr, 0),
            },
            RequestType::GetId => {
                let n = b.id.len().min(ID_BYTES).min(writer.available_bytes());
                match writer.write_all(&b.id[..n]) {
                    Ok(()) => (Status::Ok, n),
                    Err(_) => (Status::IoErr, 0),
                }
            }
            RequestType::Unsupported(_) => (Status::Unsupported, 0),
        },
    };
    match status_w.write_all(&[status as u8]) {
        Ok(()) => (data + 1) as u32,
        Err(_) => 0,
    }
}
