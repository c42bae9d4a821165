//! x86_64 boot-time state: CPUID, the entry register state for the PVH
//! (32-bit) and long-mode (64-bit) entries, and the PVH start info.

pub mod cpuid;
pub mod mptable;
pub mod pvh;
pub mod regs;
