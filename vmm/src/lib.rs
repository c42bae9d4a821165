//! The in-process microVM of cowork-microvm, on rust-vmm crates
//! (kvm-ioctls, vm-memory, linux-loader, vm-superio, virtio-queue): KVM,
//! guest memory, the guest kernel through its PVH entry, an 8250 console,
//! i8042 reset, a boot timer, and virtio-blk, virtio-rng and virtio-vsock
//! on virtio-mmio, served by a device thread woken through ioeventfds.

pub mod arch;
pub mod devices;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod layout;
pub mod log_limit;
pub mod memory;
#[cfg(test)]
#[path = "../../prerequisites/require.rs"]
mod prerequisite;
pub mod seccomp;
pub mod vcpu;
pub mod vcpu_start;
pub mod vm;

pub use vm::{Boot, DiskConfig, Vm, VmConfig, VmError, VsockConfig};
