//! CPUID for a vCPU: what KVM supports, plus the hypervisor bit (without
//! it the guest has no kvm-clock and boots 2.5 times slower on the CMOS
//! clock) and this vCPU's APIC id.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

pub fn for_vcpu(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx |= 1 << 31;
                e.ebx = (e.ebx & 0x0000_ffff) | ((count as u32) << 16) | ((id as u32) << 24);
            }
            0xb => e.edx = id as u32,
            _ => {}
        }
    }
    Ok(cpuid)
}
