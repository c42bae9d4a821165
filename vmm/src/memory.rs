//! Guest memory: RAM below the 32-bit MMIO hole, the rest above 4 GiB.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest RAM: at least 64 MiB, at most 64 GiB.
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{0} MiB of guest memory is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB)")]
    Size(u64),
    #[error("{0} MiB of guest memory is more than this host has available ({1} MiB)")]
    TooMuch(u64, u64),
    #[error("cannot map guest memory: {0}")]
    Mmap(String),
}

/// The RAM ranges for `mib` MiB.
pub fn ranges(mib: u64) -> Vec<(GuestAddress, usize)> {
    let bytes = mib << 20;
    if bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// MemAvailable from /proc/meminfo, in MiB.
fn host_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    if let Some(avail) = host_available_mib() {
        if mib > avail {
            return Err(MemoryError::TooMuch(mib, avail));
        }
    }
    GuestMemoryMmap::from_ranges(&ranges(mib)).map_err(|e| MemoryError::Mmap(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_the_hole() {
        assert_eq!(ranges(512), vec![(GuestAddress(0), 512 << 20)]);
        let r = ranges(4096);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
        assert!(matches!(create(1), Err(MemoryError::Size(1))));
        assert!(matches!(
            create(MAX_MEMORY_MIB + 1),
            Err(MemoryError::Size(_))
        ));
    }
}
