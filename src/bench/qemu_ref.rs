//! The reference row, `qemu`: the same guest kernel and rootfs under
//! QEMU's microvm machine on KVM, the shared folder served by Debian's
//! external virtiofsd (vhost-user-fs), as Anthropic's helper does it.
//! There is no agent on that side (ours speaks over our own vsock device),
//! so the guest's shell runs the same file-work steps from the serial
//! console and busybox `time` measures each inside the guest; cold start is
//! QEMU's start until that shell's prompt.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::scenarios::{file_steps, make_tree_tar, FileWork};
use super::{stats, status_kib, BackendResult, Profile};

const VIRTIOFSD: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const WORK_LIMIT: Duration = Duration::from_secs(1800);
const MEM_MIB: u64 = 1024;
/// The guest's shell shows this once it reads commands.
const PROMPT: &str = "\n/ # ";

struct Parts {
    qemu: PathBuf,
    virtiofsd: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What the reference needs, or why it cannot run here.
fn parts() -> Result<Parts, String> {
    let qemu = on_path("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")?;
    let virtiofsd = VIRTIOFSD
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("virtiofsd is not installed (qemu-system-common on Debian 12, virtiofsd later)")?;
    let kvm = crate::select::probe_kvm();
    if !kvm.usable {
        return Err(kvm.detail);
    }
    let images = crate::config::current_image_dir(&crate::config::home_dir());
    let kernel = images.join("vmlinux");
    let rootfs = images.join("rootfs-minimal.ext4");
    if !kernel.is_file() || !rootfs.is_file() {
        return Err(format!(
            "no guest image in {} (cowork-microvm image build)",
            images.display()
        ));
    }
    Ok(Parts {
        qemu,
        virtiofsd,
        kernel,
        rootfs,
    })
}

/// Why the reference row cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    parts().err()
}

/// Both processes, killed when dropped.
struct Running {
    virtiofsd: Child,
    qemu: Option<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in self
            .qemu
            .iter_mut()
            .chain(std::iter::once(&mut self.virtiofsd))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or(0)
}

/// Waits until the console output satisfies `done`, QEMU ends, or `limit`.
fn wait_console(
    console: &Mutex<String>,
    qemu: &mut Child,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if done(&console.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        if let Ok(Some(st)) = qemu.try_wait() {
            bail!("QEMU ended ({st}) before the guest finished");
        }
        if t0.elapsed() > limit {
            bail!("the guest did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds from busybox `time`'s `real\t0m 1.23s` (or `1h 2m 3.45s`).
fn parse_real(line: &str) -> Option<f64> {
    let rest = line.strip_prefix("real")?.trim();
    let mut secs = 0.0;
    for part in rest.split_whitespace() {
        let (n, unit) = part.split_at(part.len().checked_sub(1)?);
        let n: f64 = n.parse().ok()?;
        secs += match unit {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            _ => return None,
        };
    }
    Some(secs)
}

/// Each step's time from the console: the `real` line after `STEP <name>`.
fn step_times(console: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix("STEP ") {
            current = Some(name.trim().to_string());
        } else if let (Some(name), Some(s)) = (current.as_ref(), parse_real(line)) {
            out.push((name.clone(), s));
            current = None;
        }
    }
    out
}

/// The one command line the guest's shell runs: mount the share, then each
/// step under `time`. Markers are split with `""` so the console's echo of
/// this line never looks like the markers themselves.
fn guest_script(p: &Profile) -> Result<String> {
    let mut s = String::from(
        "mount -t proc p /proc; mount -t tmpfs t /tmp; mkdir /tmp/m; mount -t virtiofs work /tmp/m && cd /tmp/m && echo READY\"\"-MOUNTED",
    );
    for (name, script) in file_steps(p) {
        if script.contains('\'') {
            bail!("step {name} cannot be quoted for the guest shell");
        }
        s += &format!("; echo STEP\"\" {name}; time sh -c '{script}'");
    }
    s += "; echo STEPS\"\"-DONE; reboot -f\n";
    Ok(s)
}

pub fn measure(p: &Profile, dir: &Path) -> Result<BackendResult> {
    let parts = parts().map_err(anyhow::Error::msg)?;
    let mut res = BackendResult::new("qemu");
    let share = dir.join("work");
    std::fs::create_dir_all(&share)?;
    make_tree_tar(&share, p.files)?;
    let sock = dir.join("virtiofsd.sock");
    // virtiofsd's chroot sandbox needs root; otherwise its user-namespace one.
    let sandbox = if nix::unistd::geteuid().is_root() {
        "chroot"
    } else {
        "namespace"
    };
    let virtiofsd = Command::new(&parts.virtiofsd)
        .arg(format!("--socket-path={}", sock.display()))
        .arg("-o")
        .arg(format!("source={}", share.display()))
        .args(["-o", "cache=auto", "-o"])
        .arg(format!("sandbox={sandbox}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", parts.virtiofsd.display()))?;
    let mut run = Running {
        virtiofsd,
        qemu: None,
    };
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("virtiofsd did not create its socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "bench [qemu] QEMU microvm + virtiofsd, same guest: boot, then untar {} files, churn, {} MiB write/read",
        p.files, p.big_mib
    );
    let fsd_pid = run.virtiofsd.id();
    let started = Instant::now();
    let spawned = Command::new(&parts.qemu)
        .args(["-accel", "kvm", "-cpu", "host", "-M"])
        .arg("microvm,acpi=off,memory-backend=mem")
        // virtiofsd serves modern virtio only; microvm defaults to legacy.
        .args(["-global", "virtio-mmio.force-legacy=false", "-m"])
        .arg(MEM_MIB.to_string())
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on"
        ))
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&parts.kernel)
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            parts.rootfs.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root", "-chardev"])
        .arg(format!("socket,id=vfs,path={}", sock.display()))
        .args([
            "-device",
            "vhost-user-fs-device,chardev=vfs,tag=work",
            "-append",
        ])
        // QEMU appends the virtio-mmio devices to the command line, so the
        // shell cannot get its commands there: it reads them from the console.
        .arg("console=ttyS0 reboot=t panic=-1 root=/dev/vda ro rootfstype=ext4 quiet init=/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", parts.qemu.display()))?;
    // Owned by `run` from here on, so every way out of here ends it.
    let qemu = run.qemu.insert(spawned);
    let mut stdin = qemu.stdin.take().context("no QEMU stdin")?;
    let mut stdout = qemu.stdout.take().context("no QEMU stdout")?;
    let console = Arc::new(Mutex::new(String::new()));
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            let mut c = sink.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: the steps print a few lines; a runaway console must
            // not grow this process.
            if c.len() < 1 << 20 {
                c.push_str(&text);
            }
        }
    });
    let result = (|| -> Result<()> {
        wait_console(&console, qemu, BOOT_LIMIT, |c| c.contains(PROMPT))?;
        res.cold_start_ms = Some(stats(vec![started.elapsed().as_secs_f64() * 1e3]));
        // Input sent before the prompt is lost while the UART comes up.
        stdin.write_all(guest_script(p)?.as_bytes())?;
        stdin.flush()?;
        wait_console(&console, qemu, BOOT_LIMIT, |c| {
            c.contains("READY-MOUNTED") || c.contains("mount: mounting work")
        })?;
        if !console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains("READY-MOUNTED")
        {
            bail!("the guest could not mount virtiofsd's share");
        }
        let rss = rss_kib(qemu.id()) + rss_kib(fsd_pid);
        wait_console(&console, qemu, WORK_LIMIT, |c| c.contains("STEPS-DONE"))?;
        res.helper_peak_rss_kib = Some(rss.max(rss_kib(qemu.id()) + rss_kib(fsd_pid)));
        res.helper_rss_kib = Some(rss);
        Ok(())
    })();
    drop(run);
    let _ = reader.join();
    let text = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(e) = result {
        let tail: String = text
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{e:#}; console tail: {tail}");
    }
    let mut files = FileWork {
        files: p.files,
        ..Default::default()
    };
    for (name, secs) in step_times(&text) {
        let secs = secs.max(0.01);
        match name.as_str() {
            "untar" => files.untar_s = Some(secs),
            "churn" => files.churn_s = Some(secs),
            "write" => files.write_mib_s = Some(p.big_mib as f64 / secs),
            "read" => files.read_mib_s = Some(p.big_mib as f64 / secs),
            _ => {}
        }
    }
    files
        .skipped
        .push("git status: no git in the minimal guest image".into());
    res.files = Some(files);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_times_and_steps_are_read_from_the_console() {
        assert_eq!(parse_real("real\t0m 1.23s"), Some(1.23));
        assert_eq!(parse_real("real\t1h 2m 3.00s"), Some(3723.0));
        assert_eq!(parse_real("real 0m x"), None);
        assert_eq!(parse_real("user\t0m 0.01s"), None);
        let console = "/ # mount ...; echo STEP\"\" untar; time sh -c 'x'\r\nSTEP untar\r\nreal\t0m 0.57s\r\nuser\t0m 0.03s\r\nSTEP churn\r\nreal\t0m 2.00s\r\n";
        assert_eq!(
            step_times(console),
            vec![("untar".to_string(), 0.57), ("churn".to_string(), 2.0)]
        );
    }

    #[test]
    fn the_guest_script_never_echoes_its_own_markers() {
        let p = Profile {
            iterations: 1,
            mib: 1,
            repeats: 1,
            sessions: 1,
            files: 10,
            big_mib: 1,
            agent_turns: 0,
        };
        let s = guest_script(&p).unwrap_or_default();
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1);
        for marker in ["READY-MOUNTED", "STEPS-DONE", "STEP untar"] {
            assert!(!s.contains(marker), "{marker} would match its own echo");
        }
    }
}
