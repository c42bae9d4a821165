//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI
//! finds its CPUs, its I/O APIC and how ISA interrupts are wired. Linux
//! scans the last KiB of base memory for the floating pointer, so the
//! table goes at [`MPTABLE_START`] (inside the e820 hole we reserve).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::EBDA_START;

pub const MPTABLE_START: u64 = EBDA_START;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// ISA interrupts 0..=23 are routed to the I/O APIC pin of the same number.
const IRQ_MAX: u8 = 23;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_INT: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit an MP table (at most 254)")]
    TooManyCpus(u8),
    #[error("cannot write the MP table: {0}")]
    Memory(String),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table's bytes for `cpus` vCPUs (APIC ids 0..cpus, the I/O APIC next),
/// floating pointer first, as placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        // CPU signature (family 6) and features (FPU, APIC), then reserved.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        // type, interrupt type, flags (conforming: u16), bus, bus irq,
        // destination I/O APIC, its pin.
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 takes the 8259's ExtINT, LINT1 NMIs, on every local APIC.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const HEADER_LEN: usize = 44;
    let table_len = HEADER_LEN + entries.len();
    let table_addr = base + 16;
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"COWORK  ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes long, rev 1.4, checksum, features
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| MpTableError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_counts_and_layout() {
        let t = build(4, MPTABLE_START).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let addr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(addr, MPTABLE_START + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "table checksum");
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // The first CPU is the bootstrap processor, the others are not.
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BSP);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
        // It fits the hole below 1 MiB.
        assert!(MPTABLE_START + t.len() as u64 <= crate::layout::HIGH_RAM_START);
        assert!(build(0, 0).is_err() && build(255, 0).is_err());
    }
}
