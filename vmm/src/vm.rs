//! Building and running a VM: KVM, guest memory, the kernel through its
//! PVH entry, devices on virtio-mmio declared on the command line, one
//! thread per vCPU, and a clean end that joins every thread.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::{cpuid, pvh, regs};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::event_loop::{DeviceSources, EventLoop, Source};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::{ExitReason, VmExit};
use crate::layout::*;
use crate::memory;
use crate::seccomp::ThreadRole;
use crate::vcpu::{install_kick_handler, kick_signal, ExitCounts, Vcpu};

/// vCPUs per VM: the guest finds them through the MP table.
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm: {0} (is KVM available and are you in the kvm group?)")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM set-up failed at {0}: {1}")]
    Setup(&'static str, kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("cannot open the guest kernel {0}: {1}")]
    KernelOpen(PathBuf, std::io::Error),
    #[error("cannot load the guest kernel {0}: {1} (it must be an uncompressed ELF vmlinux)")]
    KernelLoad(PathBuf, String),
    #[error("the guest kernel {0} has no PVH entry note (build it with CONFIG_PVH=y)")]
    NoPvh(PathBuf),
    #[error("{0} vCPUs asked for; a VM has 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("vsock at {0}: {1}")]
    Vsock(PathBuf, std::io::Error),
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::device::BlockError),
    #[error("{0}")]
    Other(String),
}

pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: String,
}

/// What the VM runs.
pub enum Boot {
    /// An uncompressed ELF vmlinux entered through its PVH note, with this
    /// command line (virtio-mmio devices are appended to it).
    Kernel { path: PathBuf, cmdline: String },
    /// Raw 64-bit code loaded at physical `load`, entered at virtual
    /// `entry` in long mode: how tests exercise the KVM plumbing.
    LongMode {
        code: Vec<u8>,
        load: u64,
        entry: u64,
    },
}

/// The guest's vsock: its CID, and the Unix socket its host side is
/// bridged through (see `devices::virtio::vsock`).
pub struct VsockConfig {
    pub cid: u64,
    pub uds: PathBuf,
}

pub struct VmConfig {
    pub boot: Boot,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    /// Folders for the guest over virtio-fs (one device, tag
    /// `devices::virtio::fs::TAG`); shares can be added while it runs.
    pub shares: Option<Arc<crate::devices::virtio::fs::Shares>>,
    /// Where the serial console goes.
    pub console: Box<dyn Write + Send>,
    /// Confine the vCPU and device threads with seccomp filters
    /// ([`crate::seccomp`]) before they run; `None` only for debugging.
    pub seccomp: Option<crate::seccomp::Mode>,
}

pub struct Vm {
    _vm: VmFd,
    devices: EventLoop,
    _mem: GuestMemoryMmap,
    threads: Vec<JoinHandle<Result<(), String>>>,
    exit: VmExit,
    boot_timer: BootTimer,
    exits: Arc<ExitCounts>,
    started: Instant,
}

fn setup<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|e| VmError::Setup(what, e))
}

enum Entry {
    Pvh { rip: u64, start_info: u64 },
    LongMode { rip: u64 },
}

/// Puts what `boot` names into guest memory; where vCPU 0 starts.
fn load(boot: &Boot, mem: &GuestMemoryMmap, mmio_args: &str) -> Result<Entry, VmError> {
    match boot {
        Boot::Kernel { path, cmdline } => {
            let mut kernel = File::open(path).map_err(|e| VmError::KernelOpen(path.clone(), e))?;
            let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START)))
                .map_err(|e| VmError::KernelLoad(path.clone(), e.to_string()))?;
            let PvhBootCapability::PvhEntryPresent(rip) = loaded.pvh_boot_cap else {
                return Err(VmError::NoPvh(path.clone()));
            };
            let full = format!("{cmdline}{mmio_args}");
            if full.len() >= CMDLINE_MAX_SIZE {
                return Err(VmError::Cmdline(format!(
                    "{} bytes, over the {CMDLINE_MAX_SIZE}-byte limit",
                    full.len()
                )));
            }
            let mut bytes = full.into_bytes();
            bytes.push(0);
            mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
                .map_err(|e| VmError::Cmdline(e.to_string()))?;
            let start_info =
                pvh::write(mem).map_err(|e| VmError::Other(format!("PVH start info: {e}")))?;
            Ok(Entry::Pvh {
                rip: rip.raw_value(),
                start_info,
            })
        }
        Boot::LongMode { code, load, entry } => {
            mem.write_slice(code, GuestAddress(*load))
                .map_err(|e| VmError::Other(format!("payload: {e}")))?;
            Ok(Entry::LongMode { rip: *entry })
        }
    }
}

/// A short name for a virtio device type, for its thread's name.
fn kind(device_type: u32) -> &'static str {
    match device_type {
        2 => "blk",
        4 => "rng",
        19 => "vsock",
        26 => "fs",
        _ => "virtio",
    }
}

impl Vm {
    pub fn start(cfg: VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(VmError::Vcpus(cfg.vcpus));
        }
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let vm = setup("create VM", kvm.create_vm())?;
        setup("TSS address", vm.set_tss_address(KVM_TSS_ADDRESS))?;
        setup("irqchip", vm.create_irq_chip())?;
        // Without the in-kernel PIT the guest hangs once its init ends.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        setup("PIT", vm.create_pit2(pit))?;

        let mem = memory::create(cfg.mem_mib)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmError::Other(format!("guest memory: {e}")))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // Vm keeps until after every vCPU thread has been joined.
            setup("memory region", unsafe { vm.set_user_memory_region(r) })?;
        }

        let exit = VmExit::default();
        let boot_timer = BootTimer::new(started);
        let mut pio = Bus::default();
        let mut mmio = Bus::default();
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Other(e.to_string()))?;
        setup("serial irqfd", vm.register_irqfd(&serial_irq, SERIAL_IRQ))?;
        let insert = |bus: &mut Bus,
                      base: u64,
                      len: u64,
                      dev: Arc<Mutex<dyn crate::devices::bus::BusDevice>>| {
            bus.insert(base, len, dev)
                .map_err(|e| VmError::Other(e.to_string()))
        };
        insert(
            &mut pio,
            SERIAL_PORT as u64,
            8,
            Arc::new(Mutex::new(SerialDevice::new(serial_irq, cfg.console))),
        )?;
        insert(
            &mut pio,
            I8042_PORT as u64,
            5,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        insert(
            &mut pio,
            BOOT_TIMER_PORT as u64,
            1,
            Arc::new(Mutex::new(boot_timer.clone())),
        )?;

        // virtio devices: the disks in order (vda, vdb, ...), the rng, vsock,
        // virtio-fs.
        let mut devices: Vec<Box<dyn crate::devices::virtio::VirtioDevice>> = Vec::new();
        for disk in &cfg.disks {
            devices.push(Box::new(Block::open(&disk.path, disk.read_only, &disk.id)?));
        }
        devices.push(Box::new(crate::devices::virtio::rng::Rng));
        if let Some(v) = &cfg.vsock {
            devices.push(Box::new(
                Vsock::new(v.cid, &v.uds).map_err(|e| VmError::Vsock(v.uds.clone(), e))?,
            ));
        }
        if let Some(shares) = &cfg.shares {
            devices.push(Box::new(crate::devices::virtio::fs::Fs::new(
                crate::devices::virtio::fs::TAG,
                shares.clone(),
            )));
        }
        let other = |e: std::io::Error| VmError::Other(e.to_string());
        let mut mmio_args = String::new();
        let mut sources = Vec::new();
        for (i, dev) in devices.into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
            let irq = VIRTIO_IRQ_START + i as u32;
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(other)?;
            setup("virtio irqfd", vm.register_irqfd(&evt, irq))?;
            let name = format!("vm-dev{i}-{}", kind(dev.device_type()));
            let mut own = Vec::new();
            let transport = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), evt)));
            let (queues, backend) = {
                let t = transport.lock().unwrap_or_else(|e| e.into_inner());
                (t.queue_count(), t.backend_fd())
            };
            // Queue notifies go to the device's thread through ioeventfds;
            // the register write stays handled too, should KVM refuse one.
            for index in 0..queues as u32 {
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(other)?;
                let addr = IoEventAddress::Mmio(base + crate::devices::virtio::mmio::QUEUE_NOTIFY);
                setup("ioeventfd", vm.register_ioevent(&evt, &addr, index))?;
                own.push(Source::Queue {
                    transport: transport.clone(),
                    index,
                    evt,
                });
            }
            if let Some(fd) = backend {
                own.push(Source::Backend {
                    transport: transport.clone(),
                    fd,
                });
            }
            sources.push(DeviceSources { name, sources: own });
            insert(&mut mmio, base, VIRTIO_MMIO_SIZE, transport)?;
            mmio_args.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        }
        let filter = |role| {
            cfg.seccomp
                .map(|mode| crate::seccomp::filter(role, mode))
                .transpose()
                .map_err(|e| VmError::Other(e.to_string()))
        };
        let vcpu_filter = filter(ThreadRole::Vcpu)?;
        let entry = load(&cfg.boot, &mem, &mmio_args)?;
        if matches!(cfg.boot, Boot::Kernel { .. }) {
            crate::arch::mptable::write(&mem, cfg.vcpus)
                .map_err(|e| VmError::Other(e.to_string()))?;
        }

        // Every vCPU is made and set up before any runs: a later one failing
        // leaves nothing behind (its fds, and the rest, are dropped here).
        install_kick_handler();
        let exits = Arc::new(ExitCounts::default());
        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        for id in 0..cfg.vcpus {
            let fd = setup("create vCPU", vm.create_vcpu(id as u64))?;
            let cpuid = setup("CPUID", cpuid::for_vcpu(&kvm, id, cfg.vcpus))?;
            setup("set CPUID", fd.set_cpuid2(&cpuid))?;
            regs::set_msrs(&fd).map_err(|e| VmError::Other(e.to_string()))?;
            regs::set_lint(&fd).map_err(|e| VmError::Other(e.to_string()))?;
            if id == 0 {
                let set = match entry {
                    Entry::Pvh { rip, start_info } => regs::pvh_entry(&fd, &mem, rip, start_info),
                    Entry::LongMode { rip } => regs::long_mode_entry(&fd, &mem, rip, rip & !0xfff),
                };
                set.map_err(|e| VmError::Other(e.to_string()))?;
            }
            let vcpu = Vcpu {
                fd,
                id,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: exit.clone(),
                exits: exits.clone(),
            };
            vcpus.push((format!("vcpu{id}"), vcpu));
        }
        let device_loop = EventLoop::start(sources, filter(ThreadRole::Devices)?).map_err(other)?;
        // Then all start or none: each thread confines itself first, and
        // only when every one has do they enter the guest. On a failure the
        // started ones are joined before `Vm::start` returns, so the device
        // threads (`device_loop`'s drop) and guest memory go after them.
        let threads = crate::vcpu_start::start_all(
            vcpus,
            move |_: &Vcpu| match &vcpu_filter {
                Some(f) => seccompiler::apply_filter(f).map_err(|e| format!("seccomp filter: {e}")),
                None => Ok(()),
            },
            Vcpu::run,
        )
        .map_err(VmError::Other)?;
        Ok(Vm {
            _vm: vm,
            devices: device_loop,
            _mem: mem,
            threads,
            exit,
            boot_timer,
            exits,
            started,
        })
    }

    /// Asks the VM to end; [`Vm::wait`] then returns promptly.
    pub fn stop(&self) {
        self.exit.request(ExitReason::Stopped);
    }

    pub fn exit_handle(&self) -> VmExit {
        self.exit.clone()
    }

    pub fn boot_timer(&self) -> BootTimer {
        self.boot_timer.clone()
    }

    pub fn exits(&self) -> &ExitCounts {
        &self.exits
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Bytes of guest RAM the guest has touched (resident in this process),
    /// so VMM overhead can be told apart from guest memory.
    pub fn guest_resident_bytes(&self) -> u64 {
        let page = 4096usize;
        let mut total = 0u64;
        for r in self._mem.iter() {
            let Ok(host) = self._mem.get_host_address(r.start_addr()) else {
                continue;
            };
            let len = r.len() as usize;
            let mut vec = vec![0u8; len.div_ceil(page)];
            // SAFETY: [host, host+len) is one live mapping owned by `_mem`,
            // page-aligned, and `vec` has one byte per page of it.
            let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
            if rc == 0 {
                total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64;
            }
        }
        total
    }

    /// Waits for the VM to end (or `limit` to pass, then stops it), joins
    /// every vCPU thread and frees guest memory.
    pub fn wait(mut self, limit: Option<Duration>) -> Result<ExitReason, VmError> {
        let deadline = limit.map(|l| Instant::now() + l);
        while self.exit.reason() == ExitReason::Running {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.stop();
                break;
            }
            if self.threads.iter().all(|t| t.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Kick every vCPU out of KVM_RUN until all have seen the end.
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in &self.threads {
                if !t.is_finished() {
                    let _ = t.kill(kick_signal());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.devices.stop();
        let mut failure = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a vCPU thread panicked".into()),
            }
        }
        match failure {
            Some(e) => Err(VmError::Other(e)),
            None => Ok(self.exit.reason()),
        }
    }
}
