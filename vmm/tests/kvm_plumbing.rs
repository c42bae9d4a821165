//! The KVM plumbing on this machine's own /dev/kvm (which runs small
//! hand-made guests even where it cannot boot Linux, see
//! kvm-on-these-machines.md): long-mode entry at a higher-half address,
//! serial output, MMIO reads and writes of a virtio-mmio device's
//! registers, a boot-timer write, and the i8042 reset that ends the VM.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowork_vmm::arch::regs::HIGHER_HALF;
use cowork_vmm::devices::ExitReason;
use cowork_vmm::{Boot, DiskConfig, Vm, VmConfig};

#[path = "../../prerequisites/require.rs"]
mod prerequisite;
use prerequisite::require;

/// Whether /dev/kvm opens read-write now (build.rs checked at build time).
fn kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

const NO_KVM: &str = "/dev/kvm is not read-write here";

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Assembled from:
///   mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al
///   movabs rax,0xd0000000; mov ebx,[rax]; cmp ebx,0x74726976 ("virt"); jne fail
///   mov dword [rax+0x70],1; mov ebx,[rax+0x70]; cmp ebx,1; jne fail     (virtio status)
///   mov al,'M'; out dx,al; mov al,10; out dx,al
///   mov dx,0x4f0; mov al,123; out dx,al; jmp reset                        (boot timer)
/// fail: mov al,'F'; out dx,al
/// reset: mov dx,0x64; mov al,0xfe; out dx,al; hlt                         (i8042 reset)
const PAYLOAD: [u8; 71] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4f, 0xee, 0xb0, 0x4b, 0xee, 0x48, 0xb8, 0x00, 0x00, 0x00, 0xd0,
    0x00, 0x00, 0x00, 0x00, 0x8b, 0x18, 0x81, 0xfb, 0x76, 0x69, 0x72, 0x74, 0x75, 0x1e, 0xc7, 0x40,
    0x70, 0x01, 0x00, 0x00, 0x00, 0x8b, 0x58, 0x70, 0x83, 0xfb, 0x01, 0x75, 0x0f, 0xb0, 0x4d, 0xee,
    0xb0, 0x0a, 0xee, 0x66, 0xba, 0xf0, 0x04, 0xb0, 0x7b, 0xee, 0xeb, 0x03, 0xb0, 0x46, 0xee, 0x66,
    0xba, 0x64, 0x00, 0xb0, 0xfe, 0xee, 0xf4,
];

#[test]
#[cfg_attr(not(has_kvm), ignore = "needs /dev/kvm read-write")]
fn long_mode_payload_drives_serial_mmio_boot_timer_and_reset() {
    if !require(
        kvm(),
        "long_mode_payload_drives_serial_mmio_boot_timer_and_reset",
        NO_KVM,
    ) {
        return;
    }
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let console = Console::default();
    let load = 0x10_0000;
    let vm = Vm::start(VmConfig {
        boot: Boot::LongMode {
            code: PAYLOAD.to_vec(),
            load,
            entry: HIGHER_HALF + load,
        },
        mem_mib: 64,
        vcpus: 1,
        shares: None,
        vsock: None,
        disks: vec![DiskConfig {
            path: disk.path().to_path_buf(),
            read_only: true,
            id: "t".into(),
        }],
        console: Box::new(console.clone()),
        seccomp: Some(cowork_vmm::seccomp::Mode::Enforce),
    })
    .unwrap();
    let timer = vm.boot_timer();
    let reason = vm.wait(Some(Duration::from_secs(60))).unwrap();
    let out = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    assert_eq!(out, "OKM\n", "serial output from the guest");
    assert_eq!(reason, ExitReason::Reset, "the i8042 reset ended the VM");
    let t = timer.elapsed().expect("the boot timer fired");
    eprintln!("payload: boot timer at {:.3} ms", t.as_secs_f64() * 1e3);
}

fn cfg(boot: Boot, mem_mib: u64, vcpus: u8) -> VmConfig {
    VmConfig {
        boot,
        mem_mib,
        vcpus,
        disks: vec![],
        shares: None,
        vsock: None,
        console: Box::new(std::io::sink()),
        seccomp: Some(cowork_vmm::seccomp::Mode::Enforce),
    }
}

fn kernel(path: &str) -> Boot {
    Boot::Kernel {
        path: path.into(),
        cmdline: String::new(),
    }
}

/// Vm::start's error message, or "" if it started.
fn start_error(c: VmConfig) -> String {
    Vm::start(c)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// Refused before KVM is opened, so this runs anywhere.
#[test]
fn bad_vcpu_counts_fail_at_once() {
    assert!(start_error(cfg(kernel("/x"), 64, 0)).contains("vCPUs"));
    assert!(start_error(cfg(kernel("/x"), 64, 33)).contains("1 to 32"));
}

#[test]
#[cfg_attr(not(has_kvm), ignore = "needs /dev/kvm read-write")]
fn bad_kernels_and_memory_sizes_fail_at_once() {
    if !require(kvm(), "bad_kernels_and_memory_sizes_fail_at_once", NO_KVM) {
        return;
    }
    let e = start_error;
    assert!(e(cfg(kernel("/nonexistent/vmlinux"), 64, 1)).contains("cannot open the guest kernel"));
    assert!(
        e(cfg(kernel("/bin/true"), 64, 1)).contains("PVH")
            || e(cfg(kernel("/bin/true"), 64, 1)).contains("load")
    );
    assert!(e(cfg(kernel("/nonexistent"), 1 << 30, 1)).contains("MiB"));
    let notelf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(notelf.path(), b"not an ELF at all").unwrap();
    assert!(e(cfg(kernel(notelf.path().to_str().unwrap()), 64, 1)).contains("load"));
}

/// The /proc/self/task entry of the named thread of this process.
fn thread_dir(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.path())
}

/// The named thread's seccomp mode line ("2" is filtered).
fn thread_seccomp(name: &str) -> Option<String> {
    let status = std::fs::read_to_string(thread_dir(name)?.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
}

/// CPU ticks (user+system) the named thread of this process has used.
fn thread_ticks(name: &str) -> Option<u64> {
    thread_dir(name).and_then(|t| {
        let stat = std::fs::read_to_string(t.join("stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    })
}

/// With every device attached (vsock included) and a guest that never
/// touches them, the device thread sleeps: a spinning one would starve the
/// vCPUs of the device locks.
#[test]
#[cfg_attr(not(has_kvm), ignore = "needs /dev/kvm read-write")]
fn idle_devices_do_not_spin() {
    if !require(kvm(), "idle_devices_do_not_spin", NO_KVM) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let load = 0x10_0000;
    let vm = Vm::start(VmConfig {
        // jmp . : the guest spins, the devices idle.
        boot: Boot::LongMode {
            code: vec![0xeb, 0xfe],
            load,
            entry: HIGHER_HALF + load,
        },
        mem_mib: 64,
        vcpus: 1,
        shares: None,
        vsock: Some(cowork_vmm::VsockConfig {
            cid: 3,
            uds: dir.path().join("v.sock"),
        }),
        disks: vec![],
        console: Box::new(Console::default()),
        seccomp: Some(cowork_vmm::seccomp::Mode::Enforce),
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // One thread per device: no disks, so the rng is device 0, vsock 1.
    let devices = ["vm-dev0-rng", "vm-dev1-vsock"];
    let ticks: u64 = devices
        .iter()
        .map(|d| thread_ticks(d).expect("the device thread exists"))
        .sum();
    // Both kinds of VMM thread confined themselves before running.
    for thread in devices.into_iter().chain(["vcpu0"]) {
        assert_eq!(
            thread_seccomp(thread).as_deref(),
            Some("2"),
            "{thread} is filtered"
        );
    }
    vm.stop();
    vm.wait(None).unwrap();
    eprintln!("device threads: {ticks} ticks in 0.5 s");
    assert!(
        ticks < 10,
        "the device threads spin ({ticks} ticks in 0.5 s)"
    );
}
