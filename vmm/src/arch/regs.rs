//! Entry register state. PVH enters in 32-bit protected mode with flat
//! segments (what the Linux PVH entry expects); the long-mode entry, with
//! identity and higher-half page tables, is what hand-made 64-bit payloads
//! use.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::GDT_START;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page tables for the long-mode entry: one PML4, two PDPTs, and a page
/// directory per GiB of the low 4 GiB (so MMIO below 4 GiB is mapped too).
const PML4_START: u64 = 0x9000;
const PDPT_LOW: u64 = 0xa000;
const PDPT_HIGH: u64 = 0xb000;
const PD_START: [u64; 4] = [0xc000, 0xd000, 0xe000, 0xf000];
/// Where the long-mode entry maps physical 0 a second time.
pub const HIGHER_HALF: u64 = 0xffff_ffff_8000_0000;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("vCPU register set-up failed: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("cannot write boot tables to guest memory: {0}")]
    Memory(String),
}

fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: (bit(47) == 0) as u8,
        padding: 0,
    }
}

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(|e| RegsError::Memory(e.to_string()))?;
    }
    Ok(())
}

fn set_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(vcpu.set_fpu(&fpu)?)
}

fn set_segments(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    code: u64,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
) -> Result<(), RegsError> {
    let data = gdt_entry(0xc093, 0, 0xfffff);
    let tss = gdt_entry(0x808b, 0, 0xfffff);
    let gdt = [0, code, data, tss];
    write_gdt(mem, &gdt)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.cs = segment(code, 0x08);
    let ds = segment(data, 0x10);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (ds, ds, ds, ds, ds);
    sregs.tr = segment(tss, 0x18);
    sregs.cr0 = cr0;
    sregs.cr3 = cr3;
    sregs.cr4 = cr4;
    sregs.efer = efer;
    vcpu.set_sregs(&sregs)?;
    set_fpu(vcpu)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

fn lvt(regs: &[std::os::raw::c_char], at: usize) -> u32 {
    u32::from_le_bytes([
        regs[at] as u8,
        regs[at + 1] as u8,
        regs[at + 2] as u8,
        regs[at + 3] as u8,
    ])
}

fn set_lvt(regs: &mut [std::os::raw::c_char], at: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[at + i] = *b as std::os::raw::c_char;
    }
}

/// Local APIC wiring every vCPU needs before the guest programs its own:
/// LINT0 takes the 8259's interrupts (ExtINT), LINT1 NMIs, as the MP table
/// says.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic()?;
    let mode = |v: u32, m: u32| (v & !0x700) | (m << 8);
    let lint0 = lvt(&lapic.regs, APIC_LVT0);
    set_lvt(&mut lapic.regs, APIC_LVT0, mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lvt(&lapic.regs, APIC_LVT1);
    set_lvt(&mut lapic.regs, APIC_LVT1, mode(lint1, APIC_MODE_NMI));
    Ok(vcpu.set_lapic(&lapic)?)
}

/// Boot MSRs: fast string operations on, as firmware leaves them.
pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = [kvm_bindings::kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }];
    let msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|e| RegsError::Memory(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        tracing::debug!("KVM took {set} of {} boot MSRs", entries.len());
    }
    Ok(())
}

/// PVH entry: 32-bit flat protected mode, paging off, RBX = start info.
pub fn pvh_entry(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
    start_info: u64,
) -> Result<(), RegsError> {
    set_segments(
        vcpu,
        mem,
        gdt_entry(0xc09b, 0, 0xfffff),
        CR0_PE | CR0_ET,
        0,
        0,
        0,
    )?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    };
    Ok(vcpu.set_regs(&regs)?)
}

/// 64-bit entry: the low 4 GiB identity-mapped, the first GiB mapped again
/// at [`HIGHER_HALF`] (2 MiB pages), paging and long mode on.
pub fn long_mode_entry(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
    stack: u64,
) -> Result<(), RegsError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| RegsError::Memory(e.to_string()))
    };
    w(PDPT_LOW | 0x3, PML4_START)?;
    w(PDPT_HIGH | 0x3, PML4_START + 511 * 8)?;
    for (gib, pd) in PD_START.iter().enumerate() {
        w(pd | 0x3, PDPT_LOW + gib as u64 * 8)?;
        for i in 0..512u64 {
            w(((gib as u64) << 30) | (i << 21) | 0x83, pd + i * 8)?;
        }
    }
    w(PD_START[0] | 0x3, PDPT_HIGH + 510 * 8)?;
    set_segments(
        vcpu,
        mem,
        gdt_entry(0xa09b, 0, 0xfffff),
        CR0_PE | CR0_ET | CR0_PG,
        PML4_START,
        CR4_PAE,
        EFER_LME | EFER_LMA,
    )?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: stack,
        rbp: stack,
        ..Default::default()
    };
    Ok(vcpu.set_regs(&regs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let s = segment(code, 8);
        assert_eq!(
            (s.type_, s.l, s.db, s.g, s.present, s.s),
            (0xb, 1, 0, 1, 1, 1)
        );
        let c32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 8);
        assert_eq!((c32.l, c32.db), (0, 1));
    }
}
