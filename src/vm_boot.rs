//! `cowork-microvm vm boot`: the guest on the in-process VMM, its console
//! on stdout, and the figures the benchmarks need: the boot timer (the
//! guest's init signalling), the agent's ready line, and the VMM's memory
//! beyond the guest's.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cowork_guest::wire::{self, GuestMsg, HostMsg};
use cowork_vmm::devices::ExitReason;
use cowork_vmm::{Boot, DiskConfig, Vm, VmConfig, VsockConfig};
use serde_json::json;

use crate::cli::VmBootArgs;
use crate::config::{current_image_dir, home_dir};

/// What the agent prints on the console once it runs.
pub const READY_LINE: &str = "cowork-guest: ready";
/// The guest's command line (virtio-mmio devices are appended by the VMM).
pub use cowork_kvm_backend::GUEST_CMDLINE;

/// How long the guest may take to power off once the agent is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The console: to stdout, watching for the ready line.
#[derive(Clone)]
struct Console {
    ready: Arc<AtomicBool>,
    ready_at: Arc<Mutex<Option<Instant>>>,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stdout().write_all(b);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(b);
        if !self.ready.load(Ordering::Relaxed)
            && String::from_utf8_lossy(&tail).contains(READY_LINE)
        {
            *self.ready_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.ready.store(true, Ordering::Relaxed);
        }
        // Keep only what a line split across writes needs.
        let keep = tail.len().saturating_sub(4096);
        tail.drain(..keep);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn finish(args: &VmBootArgs, result: serde_json::Value, ready: bool) -> Result<i32> {
    eprintln!("vm boot: {result}");
    if let Some(path) = &args.json {
        std::fs::write(path, result.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if args.until_ready && !ready { 1 } else { 0 })
}

/// The same guest under QEMU's microvm machine on KVM, watched the same way.
fn boot_qemu(
    args: &VmBootArgs,
    qemu: &std::path::Path,
    kernel: &std::path::Path,
    rootfs: &std::path::Path,
    cmdline: &str,
) -> Result<i32> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = std::process::Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm,acpi=off",
            "-cpu",
            "host",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-nographic", "-serial", "stdio", "-no-reboot", "-m"])
        .arg(args.mem_mib.to_string())
        .arg("-smp")
        .arg(args.cpus.to_string())
        .arg("-kernel")
        .arg(kernel)
        .arg("-append")
        .arg(cmdline)
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            rootfs.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", qemu.display()))?;
    let mut out = child.stdout.take().context("no QEMU stdout")?;
    let mut console = Console {
        ready: Arc::default(),
        ready_at: Arc::default(),
        tail: Arc::default(),
    };
    let watcher = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || console.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let deadline = started + Duration::from_secs(args.timeout);
    while Instant::now() < deadline && !(args.until_ready && watcher.ready.load(Ordering::Relaxed))
    {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        });
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let ready_ms = watcher
        .ready_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let result = json!({"engine": "qemu", "ready": ready_ms.is_some(), "readyMs": ready_ms, "processRssKiB": rss});
    finish(args, result, ready_ms.is_some())
}

/// The agent's channel as `vm boot` uses it: when its hello arrived over
/// vsock, and the stream to ask it to shut down with.
#[derive(Clone, Default)]
struct AgentSeen(Arc<Mutex<Option<(Instant, std::os::unix::net::UnixStream)>>>);

fn read_guest_msg(s: &mut impl std::io::Read) -> Result<GuestMsg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = wire::check_len(u32::from_be_bytes(len))?;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    Ok(wire::decode::<GuestMsg>(&body)?.0)
}

/// Listens where the guest's connections to the agent port land and
/// records the hello (a blocking accept: this is a one-shot command).
fn watch_agent(uds: &std::path::Path) -> Result<AgentSeen> {
    let path = cowork_vmm::devices::virtio::vsock::host_port_path(uds, wire::AGENT_PORT);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let seen = AgentSeen::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        if let Ok(GuestMsg::Hello { .. }) = read_guest_msg(&mut s) {
            *out.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), s));
        }
    });
    Ok(seen)
}

pub fn main(args: VmBootArgs) -> Result<i32> {
    let images = current_image_dir(&home_dir());
    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| images.join("vmlinux"));
    let rootfs = args
        .rootfs
        .clone()
        .unwrap_or_else(|| images.join("rootfs-minimal.ext4"));
    let cmdline = if args.verbose {
        GUEST_CMDLINE.to_string()
    } else {
        format!("{GUEST_CMDLINE} quiet")
    };
    if let Some(qemu) = &args.qemu {
        return boot_qemu(&args, qemu, &kernel, &rootfs, &cmdline);
    }
    let mut disks = vec![DiskConfig {
        path: rootfs,
        read_only: true,
        id: "cowork-rootfs".into(),
    }];
    for (i, d) in args.disks.iter().enumerate() {
        disks.push(DiskConfig {
            path: d.clone(),
            read_only: false,
            id: format!("cowork-disk{i}"),
        });
    }
    let console = Console {
        ready: Arc::default(),
        ready_at: Arc::default(),
        tail: Arc::default(),
    };
    let vsock_dir = tempfile::Builder::new()
        .prefix("cowork-vm-boot")
        .tempdir()
        .context("cannot create the vsock directory")?;
    let uds = vsock_dir.path().join("v.sock");
    let agent = watch_agent(&uds)?;
    let rss_before = rss_kib().unwrap_or(0);
    let vm = Vm::start(VmConfig {
        boot: Boot::Kernel {
            path: kernel,
            cmdline,
        },
        mem_mib: args.mem_mib,
        vcpus: args.cpus,
        disks,
        shares: None,
        seccomp: crate::config::vm_seccomp(),
        vsock: Some(VsockConfig {
            cid: cowork_vmm::devices::virtio::vsock::GUEST_CID,
            uds,
        }),
        console: Box::new(console.clone()),
    })
    .context("cannot start the VM")?;
    let agent_at = || {
        agent
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(t, _)| *t)
    };
    let started = vm.started();
    let exit = vm.exit_handle();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut timed_out = false;
    while exit.reason() == ExitReason::Running {
        if args.until_ready && console.ready.load(Ordering::Relaxed) && agent_at().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss = rss_kib().unwrap_or(0);
    let guest_kib = vm.guest_resident_bytes() / 1024;
    let boot_timer = vm.boot_timer().elapsed();
    let exits = {
        use std::sync::atomic::Ordering::Relaxed;
        let e = vm.exits();
        json!({"total": e.total.load(Relaxed), "pio": e.pio.load(Relaxed), "serial": e.serial.load(Relaxed), "mmio": e.mmio.load(Relaxed)})
    };
    // A clean end: the agent is asked to shut down (the guest reboots,
    // which ends the VM); a stop if it cannot be asked or does not.
    let agent_hello = agent_at();
    let asked = agent
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .is_some_and(|(_, s)| {
            wire::encode(&HostMsg::Shutdown, &[])
                .ok()
                .is_some_and(|f| s.write_all(&f).is_ok())
        });
    let shutdown_from = Instant::now();
    let grace = if asked {
        SHUTDOWN_GRACE
    } else {
        Duration::ZERO
    };
    let reason = vm.wait(Some(grace)).context("the VM failed")?;
    let shutdown_ms =
        (asked && reason == ExitReason::Reset).then(|| shutdown_from.elapsed().as_secs_f64() * 1e3);
    let ready_ms = console
        .ready_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let result = json!({
        "engine": "cowork-vmm",
        "ready": ready_ms.is_some(),
        "readyMs": ready_ms,
        "bootTimerMs": boot_timer.map(|d| d.as_secs_f64() * 1e3),
        "agentConnected": agent_hello.is_some(),
        "agentHelloMs": agent_hello.map(|t| (t - started).as_secs_f64() * 1e3),
        "agentShutdownMs": shutdown_ms,
        "exitReason": format!("{reason:?}"),
        "timedOut": timed_out,
        "exits": exits,
        "processRssKiB": rss,
        "processRssBeforeVmKiB": rss_before,
        "guestResidentKiB": guest_kib,
        "vmmOverheadKiB": rss.saturating_sub(guest_kib),
    });
    finish(&args, result, ready_ms.is_some())
}
