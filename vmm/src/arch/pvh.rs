//! The PVH start info (`hvm_start_info`, magic 0x336ec578, version 1) with
//! the memory map and the command line, written where RBX will point.

use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{CMDLINE_START, EBDA_START, HIGH_RAM_START, MEMMAP_START, PVH_INFO_START};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn entry(addr: u64, size: u64, type_: u32) -> hvm_memmap_table_entry {
    hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    }
}

/// The e820-style map: low RAM, the EBDA/BIOS hole, then every RAM region.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED),
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIGH_RAM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

pub fn write(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    let map = memory_map(mem);
    for (i, e) in map.iter().enumerate() {
        mem.write_obj(
            *e,
            GuestAddress(MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64),
        )?;
    }
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    mem.write_obj(info, GuestAddress(PVH_INFO_START))?;
    Ok(PVH_INFO_START)
}
