//! One vCPU's thread: KVM_RUN, and each exit dispatched to the buses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::bus::Bus;
use crate::devices::{ExitReason, VmExit};

/// The signal that kicks a vCPU out of KVM_RUN (its handler does nothing).
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's handler once per process.
pub fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop) {
            tracing::warn!("cannot install the vCPU kick handler: {e}");
        }
    });
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: VmExit,
    /// Exits handled, for figures and tests.
    pub exits: Arc<ExitCounts>,
}

/// Exits by kind: where a guest's time in the VMM goes.
#[derive(Default, Debug)]
pub struct ExitCounts {
    pub total: AtomicU64,
    pub pio: AtomicU64,
    pub mmio: AtomicU64,
    /// Port I/O to the serial port alone (console output costs exits).
    pub serial: AtomicU64,
}

impl Vcpu {
    /// Runs until the VM ends (any vCPU's exit reason, or a stop).
    pub fn run(mut self) -> Result<(), String> {
        loop {
            if self.exit.reason() != ExitReason::Running {
                return Ok(());
            }
            let result = self.fd.run();
            self.exits.total.fetch_add(1, Ordering::Relaxed);
            match &result {
                Ok(VcpuExit::IoIn(port, _)) | Ok(VcpuExit::IoOut(port, _)) => {
                    self.exits.pio.fetch_add(1, Ordering::Relaxed);
                    if (crate::layout::SERIAL_PORT..crate::layout::SERIAL_PORT + 8).contains(port) {
                        self.exits.serial.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(VcpuExit::MmioRead(..)) | Ok(VcpuExit::MmioWrite(..)) => {
                    self.exits.mmio.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            match result {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(port as u64, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(port as u64, data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                // A guest that reboots with reboot=t triple-faults: the end.
                Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) => {
                    self.exit.request(ExitReason::Reset)
                }
                Ok(VcpuExit::Hlt) => self.exit.request(ExitReason::Reset),
                Ok(VcpuExit::Intr) => {}
                Ok(other) => {
                    let msg = format!("vCPU {}: unexpected exit {other:?}", self.id);
                    self.exit.request(ExitReason::Failed);
                    return Err(msg);
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    self.exit.request(ExitReason::Failed);
                    return Err(format!("vCPU {}: KVM_RUN failed: {e}", self.id));
                }
            }
        }
    }
}
