//! The virtio-blk device: a backing file, its size, read-only or not.

use std::fs::{File, OpenOptions};
use std::path::Path;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::request::{serve, Backing};
use super::*;
use crate::devices::virtio::VirtioDevice;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {0} is empty or not a whole number of 512-byte sectors")]
    Size(String),
}

pub struct Block {
    file: File,
    capacity: u64,
    read_only: bool,
    id: Vec<u8>,
    features: u64,
    config: [u8; 8],
}

impl Block {
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: shown.clone(),
                source,
            })?;
        let capacity = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: shown.clone(),
                source,
            })?
            .len();
        if capacity == 0 || capacity % SECTOR_SIZE != 0 {
            return Err(BlockError::Size(shown));
        }
        let mut features = VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Ok(Block {
            file,
            capacity,
            read_only,
            id: id.as_bytes().iter().take(ID_BYTES).copied().collect(),
            features,
            config: (capacity / SECTOR_SIZE).to_le_bytes(),
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        let backing = Backing {
            file: &self.file,
            capacity: self.capacity,
            read_only: self.read_only,
            id: &self.id,
        };
        crate::devices::virtio::drain_queue(queue, mem, |chain| serve(chain, mem, &backing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn disk(ro: bool) -> (tempfile::NamedTempFile, Block) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8 * 512u32).map(|i| (i / 512) as u8).collect();
        f.write_all(&content).unwrap();
        let b = Block::open(f.path(), ro, "cowork-disk-id-12345678").unwrap();
        (f, b)
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    /// Runs one chain through the device; (status byte, used length).
    fn run(b: &mut Block, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u8, u32) {
        let vq = MockSplitQueue::new(mem, 16);
        mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        vq.build_desc_chain(descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        b.process_queue(0, std::slice::from_mut(&mut q), mem);
        let used_len = vq.used().ring().ref_at(0).unwrap().load().len();
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used_len)
    }

    /// Header, one data descriptor, status.
    fn req(data_len: u32, data_flags: u32) -> Vec<RawDescriptor> {
        vec![
            desc(HDR, 16, 0),
            desc(DATA, data_len, data_flags),
            desc(STATUS, 1, VRING_DESC_F_WRITE),
        ]
    }

    #[test]
    fn read_write_flush_and_id() {
        let (f, mut b) = disk(false);
        let m = mem();
        header(&m, 0, 3);
        assert_eq!(run(&mut b, &m, &req(1024, VRING_DESC_F_WRITE)), (0, 1025));
        let mut got = [0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|x| *x == 3) && got[512..].iter().all(|x| *x == 4));

        header(&m, 1, 7);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mut b, &m, &req(512, 0)).0, 0);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[7 * 512..].iter().all(|x| *x == 0x5a));

        header(&m, 4, 0);
        assert_eq!(
            run(
                &mut b,
                &m,
                &[desc(HDR, 16, 0), desc(STATUS, 1, VRING_DESC_F_WRITE)]
            )
            .0,
            0
        );

        header(&m, 8, 0);
        let (st, len) = run(&mut b, &m, &req(20, VRING_DESC_F_WRITE));
        assert_eq!((st, len), (0, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"cowork-disk-id-12345");

        header(&m, 11, 0);
        assert_eq!(
            run(&mut b, &m, &req(16, VRING_DESC_F_WRITE)).0,
            2,
            "unsupported"
        );
    }

    #[test]
    fn out_of_range_and_read_only_are_errors() {
        let (_f, mut b) = disk(false);
        let m = mem();
        header(&m, 0, 7);
        assert_eq!(
            run(&mut b, &m, &req(1024, VRING_DESC_F_WRITE)).0,
            1,
            "past the end"
        );
        header(&m, 0, u64::MAX / 2);
        assert_eq!(
            run(&mut b, &m, &req(512, VRING_DESC_F_WRITE)).0,
            1,
            "sector overflow"
        );

        let (f, mut ro) = disk(true);
        let before = std::fs::read(f.path()).unwrap();
        header(&m, 1, 0);
        assert_eq!(
            run(&mut ro, &m, &req(512, 0)).0,
            1,
            "read-only refuses writes"
        );
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        assert!(ro.features() & VIRTIO_BLK_F_RO != 0);
    }

    #[test]
    fn malformed_chains_are_survived() {
        let (_f, mut b) = disk(false);
        let m = mem();
        // A header shorter than 16 bytes: an I/O error, not a panic.
        header(&m, 0, 0);
        assert_eq!(
            run(
                &mut b,
                &m,
                &[desc(HDR, 8, 0), desc(STATUS, 1, VRING_DESC_F_WRITE)]
            )
            .0,
            1
        );
        // No writable descriptor at all: returned unused.
        assert_eq!(
            run(&mut b, &m, &[desc(HDR, 16, 0), desc(DATA, 512, 0)]),
            (0xaa, 0)
        );
        // A descriptor pointing outside guest memory.
        let (st, _) = run(
            &mut b,
            &m,
            &req(512, VRING_DESC_F_WRITE)
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    if i == 1 {
                        desc(0xffff_ff00_0000, 512, VRING_DESC_F_WRITE)
                    } else {
                        d
                    }
                })
                .collect::<Vec<_>>(),
        );
        assert_ne!(st, 0);
        // A chain that loops back on itself ends; the device moves on.
        let vq = MockSplitQueue::new(&m, 16);
        let looping = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                STATUS,
                1,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&looping, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        b.process_queue(0, std::slice::from_mut(&mut q), &m);
        // Empty and zero-length requests too.
        assert_eq!(
            run(
                &mut b,
                &m,
                &[desc(HDR, 0, 0), desc(STATUS, 0, VRING_DESC_F_WRITE)]
            )
            .1,
            0
        );
    }

    #[test]
    fn config_space_is_capacity_and_bounded() {
        let (_f, b) = disk(true);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut beyond = [0xffu8; 4];
        b.read_config(u64::MAX, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        assert!(Block::open(Path::new("/nonexistent"), true, "x").is_err());
    }
}
