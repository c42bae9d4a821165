//! The kvm backend: the guest on the in-process VMM. This version boots and
//! stops the VM (`startVM`, `stopVM`, `isRunning`, startup steps); running
//! sessions in it needs the virtio-vsock agent channel, which is the next
//! step, so those methods say so plainly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cowork_backend::api::*;
use cowork_backend::{BackendError, Event, EventBus, NetworkStatus, Result};
use cowork_vmm::devices::ExitReason;
use cowork_vmm::{Boot, DiskConfig, Vm};
use nix::sys::signal::Signal;

use crate::unavailable::UnavailableBackend;
use crate::vm_boot::GUEST_CMDLINE;

/// startVM fails if the guest's init has not started by then: well before
/// the app gives up on the request (30 s), so it sees why. A healthy guest
/// takes a fraction of a second on hardware, seconds under emulation.
const BOOT_LIMIT: Duration = Duration::from_secs(25);
const DEFAULT_MEM_MIB: u64 = 1024;
/// The console tail an error report carries.
const TAIL_BYTES: usize = 4096;

pub struct KvmBackend {
    images: PathBuf,
    data: PathBuf,
    bus: EventBus,
    state: Mutex<State>,
    sessions: UnavailableBackend,
}

#[derive(Default)]
struct State {
    vm: Option<Arc<Vm>>,
    mem_mib: Option<u64>,
    cpus: Option<u32>,
}

/// The console: to a log file, with the last bytes kept for error reports.
#[derive(Clone)]
struct Console {
    file: Arc<Mutex<Option<std::fs::File>>>,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(b);
        }
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.extend_from_slice(b);
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl KvmBackend {
    pub fn new(images: PathBuf, data: PathBuf, bus: EventBus) -> Self {
        let sessions = UnavailableBackend {
            name: "kvm",
            reason: "sessions in the VM need the virtio-vsock agent channel, which this version does not have yet; use the bwrap backend".into(),
        };
        Self {
            images,
            data,
            bus,
            state: Mutex::default(),
            sessions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn step(&self, step: &str, status: &str) {
        self.bus
            .publish(&Event::StartupStep {
                step: step.into(),
                status: status.into(),
            })
            .await;
    }

    fn running_vm(&self) -> Option<Arc<Vm>> {
        let st = self.lock();
        st.vm
            .clone()
            .filter(|vm| vm.exit_handle().reason() == ExitReason::Running)
    }
}

#[async_trait]
impl Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    async fn configure(&self, config: &cowork_backend::api::VmConfig) -> Result<()> {
        let mut st = self.lock();
        st.mem_mib = config.memory_mb.or(st.mem_mib);
        st.cpus = config.cpu_count.or(st.cpus);
        Ok(())
    }

    async fn create_vm(&self, _request: CreateRequest) -> Result<()> {
        Ok(())
    }

    async fn start(&self, req: StartRequest) -> Result<()> {
        if self.running_vm().is_some() {
            return Ok(());
        }
        if let Some(reason) = crate::select::kvm_unusable_reason() {
            return Err(BackendError::Unavailable {
                backend: "kvm".into(),
                reason,
            });
        }
        self.step("verifyImage", "started").await;
        let images = self.images.clone();
        let manifest =
            tokio::task::spawn_blocking(move || cowork_rootfs::manifest::verify_dir(&images))
                .await
                .map_err(|e| BackendError::invalid("image check", e.to_string()))?
                .map_err(|e| BackendError::Unavailable {
                    backend: "kvm".into(),
                    reason: e.to_string(),
                })?;
        self.step("verifyImage", "completed").await;
        let rootfs = format!("rootfs-{}.ext4", manifest.profile);
        let (mem_mib, cpus) = {
            let st = self.lock();
            let mem = req
                .memory_gb
                .map(|g| (g * 1024.0) as u64)
                .or(st.mem_mib)
                .unwrap_or(DEFAULT_MEM_MIB);
            (mem, req.cpu_count.or(st.cpus).unwrap_or(1))
        };
        let max = cowork_vmm::vm::MAX_VCPUS;
        if cpus > u32::from(max) {
            tracing::warn!("cpuCount {cpus} asked for; the VM gets {max} (no SMP yet)");
        }
        let cpus = u8::try_from(cpus).unwrap_or(u8::MAX).clamp(1, max);
        cowork_backend::session_data::create_private_dir(&self.data)?;
        let log = self.data.join("console.log");
        let console = Console {
            file: Arc::new(Mutex::new(std::fs::File::create(&log).ok())),
            tail: Arc::default(),
        };
        self.step("bootVM", "started").await;
        let cfg = cowork_vmm::VmConfig {
            boot: Boot::Kernel {
                path: self.images.join("vmlinux"),
                cmdline: format!("{GUEST_CMDLINE} quiet"),
            },
            mem_mib,
            vcpus: cpus,
            vsock: None,
            disks: vec![DiskConfig {
                path: self.images.join(rootfs),
                read_only: true,
                id: "cowork-rootfs".into(),
            }],
            console: Box::new(console.clone()),
        };
        let vm = tokio::task::spawn_blocking(move || Vm::start(cfg))
            .await
            .map_err(|e| BackendError::invalid("VM start", e.to_string()))?
            .map_err(|e| BackendError::Unavailable {
                backend: "kvm".into(),
                reason: e.to_string(),
            })?;
        let vm = Arc::new(vm);
        let timer = vm.boot_timer();
        let exit = vm.exit_handle();
        let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
        while timer.elapsed().is_none()
            && exit.reason() == ExitReason::Running
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if timer.elapsed().is_none() {
            vm.stop();
            let tail =
                String::from_utf8_lossy(&console.tail.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned();
            let why = match exit.reason() {
                ExitReason::Running | ExitReason::Stopped => format!(
                    "the guest did not reach its init within {}s",
                    BOOT_LIMIT.as_secs()
                ),
                other => format!("the guest ended before its init started ({other:?})"),
            };
            self.step("bootVM", "failed").await;
            return Err(BackendError::Unavailable {
                backend: "kvm".into(),
                reason: format!(
                    "{why}; console tail (full log in {}):\n{tail}",
                    log.display()
                ),
            });
        }
        if let Some(t) = timer.elapsed() {
            tracing::info!(
                "guest init started {:.0} ms after VM creation",
                t.as_secs_f64() * 1e3
            );
        }
        self.lock().vm = Some(vm);
        self.step("bootVM", "completed").await;
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let vm = self.lock().vm.take();
        if let Some(vm) = vm {
            vm.stop();
            // The last reference joins every vCPU thread and frees memory.
            let joined = tokio::task::spawn_blocking(move || match Arc::try_unwrap(vm) {
                Ok(vm) => vm.wait(None).map(|_| ()).map_err(|e| e.to_string()),
                Err(_) => Ok(()),
            })
            .await;
            if let Ok(Err(e)) = joined {
                tracing::warn!("the VM ended with an error: {e}");
            }
            self.bus
                .publish(&Event::NetworkStatus {
                    status: NetworkStatus::Disconnected,
                })
                .await;
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.running_vm().is_some()
    }

    fn is_guest_connected(&self) -> bool {
        false
    }

    // Sessions need the agent channel: until then the same answers as an
    // unavailable backend, with the reason.
    async fn spawn(&self, r: SpawnRequest) -> Result<SpawnResult> {
        self.sessions.spawn(r).await
    }
    async fn kill(&self, id: &str, sig: Signal) -> Result<()> {
        self.sessions.kill(id, sig).await
    }
    async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()> {
        self.sessions.write_stdin(id, data, eof).await
    }
    fn process_status(&self, id: &str) -> Result<ProcessStatus> {
        self.sessions.process_status(id)
    }
    async fn read_file(&self, session: &str, path: &str) -> Result<String> {
        self.sessions.read_file(session, path).await
    }
    async fn mount_path(&self, r: MountPathRequest) -> Result<MountPathResult> {
        self.sessions.mount_path(r).await
    }
    async fn install_sdk(&self, sub: &str, version: &str) -> Result<()> {
        self.sessions.install_sdk(sub, version).await
    }
    fn add_oauth_token(&self, _: String) {}
    async fn sessions_disk_info(&self, low: u64) -> Result<DiskInfo> {
        self.sessions.sessions_disk_info(low).await
    }
    async fn delete_session_dirs(&self, names: Vec<String>) -> Result<DeleteResult> {
        self.sessions.delete_session_dirs(names).await
    }
    async fn prune_session_caches(&self, r: PruneRequest) -> Result<PruneResult> {
        self.sessions.prune_session_caches(r).await
    }
    async fn send_guest_response(
        &self,
        id: &str,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<()> {
        self.sessions.send_guest_response(id, result, error).await
    }
}
