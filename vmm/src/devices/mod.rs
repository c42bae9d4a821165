//! Devices on the port-I/O and MMIO buses.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// How the VM should end, set by whichever device or vCPU saw it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    Running = 0,
    /// The guest asked for a reset (i8042) or triple-faulted: its normal
    /// way to end, as it has no ACPI to power off.
    Reset = 1,
    /// The VMM was asked to stop.
    Stopped = 2,
    /// A vCPU failed.
    Failed = 3,
}

/// Shared between vCPUs and devices: the first reason set wins.
#[derive(Clone, Default)]
pub struct VmExit(Arc<AtomicU8>);

impl VmExit {
    pub fn request(&self, why: ExitReason) {
        let _ = self
            .0
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn reason(&self) -> ExitReason {
        match self.0.load(Ordering::SeqCst) {
            0 => ExitReason::Running,
            1 => ExitReason::Reset,
            2 => ExitReason::Stopped,
            _ => ExitReason::Failed,
        }
    }
}
