//! Address ranges to devices, for port I/O and for MMIO. A guest access
//! that hits no device is harmless: reads see all ones, writes vanish.

use std::sync::{Arc, Mutex};

pub trait BusDevice: Send {
    /// `offset` is from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct Overlap {
    pub base: u64,
    pub len: u64,
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Default, Clone)]
pub struct Bus {
    /// (base, length, device), sorted by base, never overlapping.
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Overlap> {
        let end = base.checked_add(len).ok_or(Overlap { base, len })?;
        if len == 0 || self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(Overlap { base, len });
        }
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(at, (base, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let i = self
            .ranges
            .partition_point(|(b, _, _)| *b <= addr)
            .checked_sub(1)?;
        let (base, len, dev) = &self.ranges[i];
        let off = addr - base;
        (off + size as u64 <= *len).then_some((off, dev))
    }

    /// False when nothing is there (the caller answers all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_and_refuses_overlaps() {
        let mut bus = Bus::default();
        bus.insert(0x10, 8, Arc::new(Mutex::new(Echo(1)))).unwrap();
        bus.insert(0x20, 8, Arc::new(Mutex::new(Echo(5)))).unwrap();
        assert!(bus.insert(0x14, 8, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus
            .insert(u64::MAX, 8, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x20, &[9]));
        assert!(bus.read(0x21, &mut b));
        assert_eq!(b[0], 10);
        assert!(!bus.read(0x18, &mut b), "gap");
        let mut wide = [0u8; 4];
        assert!(!bus.read(0x16, &mut wide), "straddles the end");
    }
}
