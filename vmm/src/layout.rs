//! Where things are in guest physical memory and port space (x86_64).

/// The PVH `hvm_start_info` and, right after it, the memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const MEMMAP_START: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Low RAM ends where the EBDA/BIOS area starts; RAM resumes at 1 MiB.
pub const EBDA_START: u64 = 0x9_fc00;
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: RAM stops below it and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices: one 4 KiB window each, from here up.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Their interrupts, one each from here up (4 is the serial port's).
pub const VIRTIO_IRQ_START: u32 = 5;
pub const SERIAL_IRQ: u32 = 4;
pub const SERIAL_PORT: u16 = 0x3f8;
/// i8042: a write of 0xfe to the command port resets (ends) the VM.
pub const I8042_PORT: u16 = 0x60;
/// The boot timer: the guest's init writes [`BOOT_TIMER_MAGIC`] here when
/// it starts, so boot time is measured the way Firecracker measures it.
pub const BOOT_TIMER_PORT: u16 = 0x4f0;
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// KVM needs three pages for the TSS below 4 GiB, out of the guest's way.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The in-memory GDT used at entry.
pub const GDT_START: u64 = 0x500;
