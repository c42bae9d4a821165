//! The virtio-mmio transport (virtio 1.x, 4.2.2): the register window the
//! guest drives a device through, declared on the kernel command line as
//! `virtio_mmio.device=4K@<base>:<irq>`.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{status, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5555_434d; // "MCUU": cowork-microvm
const INT_USED_RING: u32 = 1;
/// The QueueNotify register's offset: where ioeventfds are attached.
pub const QUEUE_NOTIFY: u64 = 0x50;

mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const VENDOR_ID: u64 = 0x0c;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = super::QUEUE_NOTIFY;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_DRIVER_LOW: u64 = 0x90;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x94;
    pub const QUEUE_DEVICE_LOW: u64 = 0xa0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0xa4;
    pub const CONFIG_GENERATION: u64 = 0xfc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: EventFd,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: EventFd) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .collect();
        Self {
            device,
            mem,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::FAILED == 0
    }

    fn interrupt(&mut self) {
        self.interrupt_status |= INT_USED_RING;
        if let Err(e) = self.irq.write(1) {
            crate::guest_log!(warn, "virtio-irq", "virtio interrupt failed: {e}");
        }
    }

    /// The driver notified queue `index` (a register write, or the queue's
    /// ioeventfd on the event loop).
    pub fn notify(&mut self, index: u32) {
        if !self.active() || !self.queues.get(index as usize).is_some_and(|q| q.ready()) {
            return;
        }
        if self
            .device
            .process_queue(index as usize, &mut self.queues, &self.mem)
        {
            self.interrupt();
        }
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// The device's backend descriptor is ready.
    pub fn backend_event(&mut self) {
        let queues: &mut [Queue] = if self.active() {
            &mut self.queues
        } else {
            &mut []
        };
        if self.device.process_backend(queues, &self.mem) {
            self.interrupt();
        }
    }

    fn read32(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map(|q| q.max_size() as u32).unwrap_or(0),
            reg::QUEUE_READY => self.selected().map(|q| q.ready() as u32).unwrap_or(0),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u64, v: u32) {
        // Queue layout is only writable before the driver says it is done.
        let setup = self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                1 => {
                    self.driver_features = (self.driver_features & 0xffff_ffff) | ((v as u64) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if setup => {
                if let Some(q) = self.selected() {
                    q.set_size(v.min(u16::MAX as u32) as u16);
                }
            }
            reg::QUEUE_READY if setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH if setup => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => {
                if v == 0 {
                    self.reset();
                } else {
                    if v & status::FEATURES_OK != 0
                        && self.driver_features & !self.device_features() != 0
                    {
                        // The driver accepted features we never offered.
                        self.status = v | status::FAILED;
                        return;
                    }
                    self.status = v;
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG || data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write32(offset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    struct Dummy;
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn process_queue(&mut self, _: usize, _: &mut [Queue], _: &GuestMemoryMmap) -> bool {
            true
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn registers_and_handshake() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(0).unwrap();
        let mut t = MmioTransport::new(Box::new(Dummy), mem, irq.try_clone().unwrap());
        assert_eq!(rd(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 4);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
        t.write(reg::DEVICE_FEATURES_SEL, &1u32.to_le_bytes());
        assert_eq!(
            rd(&mut t, reg::DEVICE_FEATURES),
            1,
            "VERSION_1 in the high word"
        );
        // Features we never offered fail the handshake.
        t.write(reg::DRIVER_FEATURES_SEL, &0u32.to_le_bytes());
        t.write(reg::DRIVER_FEATURES, &(1u32 << 7).to_le_bytes());
        t.write(
            reg::STATUS,
            &(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).to_le_bytes(),
        );
        assert!(rd(&mut t, reg::STATUS) & status::FAILED != 0);
        t.write(reg::STATUS, &0u32.to_le_bytes());
        assert_eq!(rd(&mut t, reg::STATUS), 0, "reset");
        // A selected queue that does not exist reads as absent.
        t.write(reg::QUEUE_SEL, &7u32.to_le_bytes());
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        t.write(reg::QUEUE_NOTIFY, &7u32.to_le_bytes());
        // Odd-sized and unaligned accesses are ignored.
        let mut b = [0u8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 3];
        t.read(reg::CONFIG + 2, &mut c);
        assert_eq!(c, [2, 2, 2]);
    }
}
