//! The kvm backend: the guest on the in-process VMM, sessions run by the
//! guest agent over virtio-vsock. `startVM` boots the VM and waits for the
//! agent's hello; a watcher notices the guest's end (panic, reboot) and
//! reaps the VM, which closes the agent channel: every running process
//! then gets its exit event. A spawn's `additionalMounts` are exported
//! over the VM's virtio-fs device and mounted by the agent where the
//! session expects them.

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

use std::collections::HashMap;

use cowork_backend::api::{FailedMount, MountMode, MountSpec};
use cowork_backend::paths::{resolve_host_path, validate_mount_source};
use cowork_vmm::devices::virtio::fs::{Shares, TAG as FS_TAG};

use cowork_bwrap_fallback::egress::policy::Policy;
use cowork_bwrap_fallback::egress::proxy::serve_with;

use crate::agent_link::{AgentLink, Reply};
use crate::vm_boot::GUEST_CMDLINE;

/// startVM fails if the guest's init has not started by then: well before
/// the app gives up on the request (30 s), so it sees why. A healthy guest
/// takes a fraction of a second on hardware, seconds under emulation.
const BOOT_LIMIT: Duration = Duration::from_secs(25);
const DEFAULT_MEM_MIB: u64 = 1024;
/// The console tail an error report carries.
const TAIL_BYTES: usize = 4096;
/// The session disk's apparent size (a sparse file: it takes what is used).
const SESSION_DISK_BYTES: u64 = 16 << 30;
/// readFile's limit in the guest, as on the other backends.
const READ_FILE_LIMIT: u64 = 4 * 1024 * 1024;
/// Where the SDK folder appears in the guest (on tmpfs: the rootfs is
/// read-only).
const SDK_GUEST: &str = "/run/cowork/sdk";

/// How long stopVM lets the agent shut the guest down before stopping it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The open-file limit the kvm backend asks for (virtio-fs holds one per
/// file the guest knows).
const FD_LIMIT: u64 = 65536;
/// sun_path holds 108 bytes; the per-port sockets add a suffix.
const MAX_UDS_LEN: usize = 96;

pub struct KvmBackend {
    images: PathBuf,
    data: PathBuf,
    /// Mount sources must be inside it, as on the other backends.
    home: PathBuf,
    bus: EventBus,
    state: Arc<Mutex<State>>,
    egress: Arc<EgressPolicies>,
}

/// An agent request's outcome in the backend's terms: its refusal or a
/// lost channel become errors; any other answer is the caller's to match.
fn agent_answer(what: &'static str, r: std::result::Result<Reply, String>) -> Result<Reply> {
    match r {
        Ok(Reply::Failed(e)) => Err(BackendError::invalid(what, e)),
        Ok(reply) => Ok(reply),
        Err(e) => Err(unavailable(e)),
    }
}

fn unexpected(what: &'static str, reply: Reply) -> BackendError {
    BackendError::invalid(what, format!("unexpected answer {reply:?}"))
}

fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: "kvm".into(),
        reason: reason.into(),
    }
}

/// virtio-fs keeps a descriptor open for every file the guest has looked
/// up (until it forgets it): lift the soft open-file limit, as virtiofsd
/// does, to [`FD_LIMIT`] at most (see docs/vmm.md for why not further).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.min(FD_LIMIT);
    if soft < want {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            tracing::warn!("cannot raise the open-file limit from {soft} to {want}: {e}");
        }
    }
    if want < FD_LIMIT {
        tracing::warn!("the open-file limit is {want}: shared folders with many files may fail in the VM (raise it with ulimit -Hn or LimitNOFILE=)");
    }
}

/// The per-profile session disk: a sparse file with ext4 inside, made once
/// and kept, so session data survives stopVM/startVM and helper restarts.
fn ensure_session_disk(path: &std::path::Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("img.new");
    let f = std::fs::File::create(&tmp)
        .map_err(|e| BackendError::io(format!("cannot create {}", tmp.display()), e))?;
    f.set_len(SESSION_DISK_BYTES)
        .map_err(|e| BackendError::io(format!("cannot size {}", tmp.display()), e))?;
    drop(f);
    let mke2fs = ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mke2fs"));
    let out = std::process::Command::new(&mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "cowork-sessions",
            "-E",
            // Lazy inode tables and journal: the guest's kernel finishes
            // them in the background; zeroing them here would make the
            // first startVM write hundreds of MiB.
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(&tmp)
        .output();
    match out {
        Ok(o) if o.status.success() => std::fs::rename(&tmp, path)
            .map_err(|e| BackendError::io(format!("cannot create {}", path.display()), e)),
        Ok(o) => {
            let _ = std::fs::remove_file(&tmp);
            Err(unavailable(format!(
                "mke2fs could not format the session disk: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(unavailable(format!(
                "cannot run mke2fs to make the session disk ({e}); install e2fsprogs"
            )))
        }
    }
}

#[derive(Default)]
struct State {
    vm: Option<Arc<Vm>>,
    link: Option<Arc<AgentLink>>,
    /// The SDK folder installSdk named (exported read-only at [`SDK_GUEST`]
    /// on every start) and which process runs in which session.
    sdk: Option<PathBuf>,
    session_of: HashMap<String, String>,
    /// Accepts the agent's reconnections.
    accept_task: Option<tokio::task::JoinHandle<()>>,
    /// Watches for the guest's own end.
    watch_task: Option<tokio::task::JoinHandle<()>>,
    mem_mib: Option<u64>,
    cpus: Option<u32>,
    token: Option<String>,
    /// The VM's virtio-fs shares, and which share is mounted where.
    shares: Option<Arc<Shares>>,
    share_of: HashMap<(PathBuf, bool), String>,
    mounted: HashMap<String, String>,
    /// Serves the guest's egress connections.
    egress_task: Option<tokio::task::JoinHandle<()>>,
}

impl State {
    /// What belongs to one VM's life: its shares' mounts and its processes'
    /// sessions (process ids start afresh with the next agent).
    fn forget_vm_state(&mut self) {
        self.share_of.clear();
        self.mounted.clear();
        self.session_of.clear();
    }
}

/// Each spawned process's egress credential and policy: one transport
/// carries every session's traffic, so each request says whose it is.
#[derive(Default)]
struct EgressPolicies(Mutex<HashMap<String, (String, Arc<Policy>)>>);

impl EgressPolicies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Arc<Policy>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, token: Option<&str>) -> Option<Arc<Policy>> {
        self.lock().get(token?).map(|(_, p)| p.clone())
    }
}

/// A fresh unguessable credential.
fn egress_token() -> Result<String> {
    use std::io::Read;
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| BackendError::io("cannot read /dev/urandom", e))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Conversations through the egress proxy at once, all sessions together.
const EGRESS_CONVERSATIONS: usize = 256;

/// Serves the guest's egress connections (its forwarder dials host port
/// EGRESS_PORT over vsock) with each process's own policy.
async fn serve_egress(listener: tokio::net::UnixListener, policies: Arc<EgressPolicies>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(EGRESS_CONVERSATIONS));
    while let Ok((stream, _)) = listener.accept().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let policies = policies.clone();
        tokio::spawn(async move {
            let outcome = serve_with(stream, |token| policies.find(token)).await;
            tracing::debug!("VM egress: {outcome:?}");
            drop(permit);
        });
    }
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
    pub fn new(images: PathBuf, data: PathBuf, home: PathBuf, bus: EventBus) -> Self {
        Self {
            images,
            data,
            home,
            bus,
            state: Arc::default(),
            egress: Arc::default(),
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

    fn link(&self) -> Result<Arc<AgentLink>> {
        self.lock()
            .link
            .clone()
            .filter(|l| l.is_alive())
            .ok_or_else(|| {
                if self.running_vm().is_some() {
                    unavailable("the guest agent is not connected")
                } else {
                    BackendError::NotRunning
                }
            })
    }

    /// Exports a mount's host folder (checked as on the other backends)
    /// and has the agent mount it at `/sessions/<session>/mnt/<name>`.
    async fn share(
        &self,
        link: &AgentLink,
        session: &str,
        name: &str,
        spec: &MountSpec,
    ) -> Result<String> {
        cowork_backend::session_data::validate_name("mount name", name)?;
        let source = resolve_host_path(&self.home, &spec.path)?;
        let canon = validate_mount_source(&self.home, &source)?;
        if !canon.exists() {
            std::fs::create_dir_all(&canon)
                .map_err(|e| BackendError::io(format!("cannot create {}", canon.display()), e))?;
        }
        let guest = format!("/sessions/{session}/mnt/{name}");
        self.export(link, canon, spec.mode == Some(MountMode::Ro), &guest)
            .await?;
        Ok(guest)
    }

    /// Exports `dir` over virtio-fs (once per folder and mode) and has the
    /// agent mount it at `guest` (replacing what was mounted there).
    async fn export(&self, link: &AgentLink, dir: PathBuf, ro: bool, guest: &str) -> Result<()> {
        let (shares, existing, mounted) = {
            let st = self.lock();
            let shares = st.shares.clone().ok_or(BackendError::NotRunning)?;
            (
                shares,
                st.share_of.get(&(dir.clone(), ro)).cloned(),
                st.mounted.get(guest).cloned(),
            )
        };
        let share = match existing {
            Some(s) => s,
            None => {
                let s = shares
                    .add(&dir, ro, None)
                    .map_err(|e| BackendError::invalid("share", e.to_string()))?;
                self.lock().share_of.insert((dir, ro), s.clone());
                s
            }
        };
        if mounted.as_deref() == Some(share.as_str()) {
            return Ok(());
        }
        if mounted.is_some() {
            let path = guest.to_string();
            let _ = link
                .request(|req| cowork_guest::wire::HostMsg::Unmount { req, path })
                .await;
        }
        let path = guest.to_string();
        let subdir = Some(share.clone());
        let answer = link
            .request(|req| cowork_guest::wire::HostMsg::Mount {
                req,
                tag: FS_TAG.into(),
                subdir,
                path,
                read_only: ro,
            })
            .await;
        match agent_answer("share", answer)? {
            Reply::Done => {
                self.lock().mounted.insert(guest.to_string(), share);
                Ok(())
            }
            other => Err(unexpected("share", other)),
        }
    }

    /// Sessions with a running process: their directories are in use.
    fn active_sessions(&self) -> Vec<String> {
        let Ok(link) = self.link() else {
            return Vec::new();
        };
        let mut active: Vec<String> = self
            .lock()
            .session_of
            .iter()
            .filter(|(id, _)| link.status(id).is_some_and(|s| s.running))
            .map(|(_, session)| session.clone())
            .collect();
        active.sort();
        active.dedup();
        active
    }

    /// The session disk is mounted in the guest: its bookkeeping runs
    /// there, by the same rules as the other backends'.
    async fn session_disk<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        args: serde_json::Value,
    ) -> Result<T> {
        let link = self.link()?;
        let op = op.to_string();
        let answer = link
            .request(|req| cowork_guest::wire::HostMsg::Sessions { req, op, args })
            .await;
        match agent_answer("session disk", answer)? {
            Reply::Json(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BackendError::invalid("session disk", e.to_string())),
            other => Err(unexpected("session disk", other)),
        }
    }

    fn vsock_path(&self) -> Result<PathBuf> {
        let uds = self.data.join("v.sock");
        if uds.as_os_str().len() > MAX_UDS_LEN {
            return Err(unavailable(format!(
                "the data directory's path is too long for a Unix socket ({}); set COWORK_VM_DATA_DIR to a shorter one",
                uds.display()
            )));
        }
        Ok(uds)
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
            tracing::warn!("cpuCount {cpus} asked for; the VM gets {max}, the most it can have");
        }
        let cpus = u8::try_from(cpus).unwrap_or(u8::MAX).clamp(1, max);
        cowork_backend::session_data::create_private_dir(&self.data)?;
        raise_fd_limit();
        let uds = self.vsock_path()?;
        let agent_path = cowork_vmm::devices::virtio::vsock::host_port_path(
            &uds,
            cowork_guest::wire::AGENT_PORT,
        );
        let _ = std::fs::remove_file(&agent_path);
        let agent_listener = tokio::net::UnixListener::bind(&agent_path).map_err(|e| {
            BackendError::io(format!("cannot listen on {}", agent_path.display()), e)
        })?;
        let egress_path = cowork_vmm::devices::virtio::vsock::host_port_path(
            &uds,
            cowork_guest::wire::EGRESS_PORT,
        );
        let _ = std::fs::remove_file(&egress_path);
        let egress_listener = tokio::net::UnixListener::bind(&egress_path).map_err(|e| {
            BackendError::io(format!("cannot listen on {}", egress_path.display()), e)
        })?;
        let disk = self.data.join("sessiondata.img");
        let made = disk.clone();
        tokio::task::spawn_blocking(move || ensure_session_disk(&made))
            .await
            .map_err(|e| BackendError::invalid("session disk", e.to_string()))??;
        let log = self.data.join("console.log");
        let console = Console {
            file: Arc::new(Mutex::new(std::fs::File::create(&log).ok())),
            tail: Arc::default(),
        };
        self.step("bootVM", "started").await;
        let shares = Arc::new(Shares::new());
        let cfg = cowork_vmm::VmConfig {
            boot: Boot::Kernel {
                path: self.images.join("vmlinux"),
                cmdline: format!("{GUEST_CMDLINE} quiet"),
            },
            mem_mib,
            vcpus: cpus,
            shares: Some(shares.clone()),
            seccomp: crate::config::vm_seccomp(),
            vsock: Some(cowork_vmm::VsockConfig {
                cid: cowork_vmm::devices::virtio::vsock::GUEST_CID,
                uds,
            }),
            disks: vec![
                DiskConfig {
                    path: self.images.join(rootfs),
                    read_only: true,
                    id: "cowork-rootfs".into(),
                },
                DiskConfig {
                    path: disk,
                    read_only: false,
                    id: "cowork-sessions".into(),
                },
            ],
            console: Box::new(console.clone()),
        };
        let vm = tokio::task::spawn_blocking(move || Vm::start(cfg))
            .await
            .map_err(|e| BackendError::invalid("VM start", e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let vm = Arc::new(vm);
        let timer = vm.boot_timer();
        let exit = vm.exit_handle();
        let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
        let failed = |why: String| {
            let tail =
                String::from_utf8_lossy(&console.tail.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned();
            unavailable(format!(
                "{why}; console tail (full log in {}):\n{tail}",
                log.display()
            ))
        };
        while timer.elapsed().is_none()
            && exit.reason() == ExitReason::Running
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if timer.elapsed().is_none() {
            let why = match exit.reason() {
                ExitReason::Running | ExitReason::Stopped => format!(
                    "the guest did not reach its init within {}s",
                    BOOT_LIMIT.as_secs()
                ),
                other => format!("the guest ended before its init started ({other:?})"),
            };
            reap(vm).await;
            self.step("bootVM", "failed").await;
            return Err(failed(why));
        }
        if let Some(t) = timer.elapsed() {
            tracing::info!(
                "guest init started {:.0} ms after VM creation",
                t.as_secs_f64() * 1e3
            );
        }
        self.step("bootVM", "completed").await;
        self.step("connectAgent", "started").await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let link = match tokio::time::timeout(left, agent_listener.accept()).await {
            Ok(Ok((stream, _))) => AgentLink::accept(stream, self.bus.clone(), left).await,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the guest agent did not connect within {}s",
                BOOT_LIMIT.as_secs()
            )),
        };
        let link = match link {
            Ok(l) => l,
            Err(why) => {
                reap(vm).await;
                self.step("connectAgent", "failed").await;
                return Err(failed(why));
            }
        };
        tracing::info!("guest agent {} connected", link.agent);
        {
            let mut st = self.lock();
            st.accept_task = Some(tokio::spawn(accept_reconnects(
                agent_listener,
                self.state.clone(),
                self.bus.clone(),
            )));
            st.watch_task = Some(tokio::spawn(watch_guest(
                vm.clone(),
                self.state.clone(),
                console.tail.clone(),
            )));
            st.egress_task = Some(tokio::spawn(serve_egress(
                egress_listener,
                self.egress.clone(),
            )));
            st.vm = Some(vm);
            st.link = Some(link);
            st.shares = Some(shares);
            st.forget_vm_state();
        }
        let sdk = self.lock().sdk.clone();
        if let (Some(dir), Ok(link)) = (sdk, self.link()) {
            if let Err(e) = self.export(&link, dir, true, SDK_GUEST).await {
                tracing::warn!("the SDK could not be shared with the VM: {e}");
            }
        }
        self.step("connectAgent", "completed").await;
        self.bus
            .publish(&Event::NetworkStatus {
                status: NetworkStatus::Connected,
            })
            .await;
        if let Some(url) = req.api_probe_url.clone() {
            let bus = self.bus.clone();
            tokio::spawn(async move {
                let ok = cowork_bwrap_fallback::egress::probe::api_reachable(&url).await;
                let status = if ok { "reachable" } else { "unreachable" };
                bus.publish(&Event::ApiReachability {
                    status: status.into(),
                })
                .await;
            });
        }
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let (vm, link) = {
            let mut st = self.lock();
            for t in [st.accept_task.take(), st.watch_task.take()]
                .into_iter()
                .flatten()
            {
                t.abort();
            }
            st.shares = None;
            st.forget_vm_state();
            (st.vm.take(), st.link.take())
        };
        // The VM's processes are gone with it: so are their credentials.
        self.egress.lock().clear();
        let Some(vm) = vm else {
            return Ok(());
        };
        // A clean end first: the agent ends every process, syncs the
        // session disk and powers off; the VM is stopped if it does not.
        if let Some(link) = link.filter(|l| l.is_alive()) {
            if link.shutdown().await.is_ok() {
                let exit = vm.exit_handle();
                let until = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                while exit.reason() == ExitReason::Running && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        reap(vm).await;
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.running_vm().is_some()
    }

    fn is_guest_connected(&self) -> bool {
        self.running_vm().is_some() && self.lock().link.as_ref().is_some_and(|l| l.is_alive())
    }

    async fn spawn(&self, r: SpawnRequest) -> Result<SpawnResult> {
        cowork_backend::session_data::validate_name("processName", &r.name)?;
        let link = self.link()?;
        let home = format!("/sessions/{}", r.name);
        let token = self.lock().token.clone();
        // This process's egress credential: the guest forwarder passes the
        // proxy conversation through unchanged, the host proxy maps the
        // credential to this session's allowedDomains.
        let (policy, rejected) = Policy::new(r.allowed_domains.as_deref().unwrap_or(&[]));
        if !rejected.is_empty() {
            tracing::warn!(session = %r.name, "allowedDomains entries ignored: {}", rejected.join(", "));
        }
        let egress = egress_token()?;
        {
            let mut policies = self.egress.lock();
            policies.retain(|_, (id, _)| *id != r.id && link.status(id).is_some_and(|s| s.running));
            policies.insert(egress.clone(), (r.id.clone(), Arc::new(policy)));
        }
        let proxy = format!(
            "http://cowork:{egress}@{}",
            cowork_guest::wire::EGRESS_LISTEN
        );
        let base = [
            ("HOME".to_string(), home.clone()),
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_string(),
            ),
            ("HTTP_PROXY".to_string(), proxy.clone()),
            ("HTTPS_PROXY".to_string(), proxy.clone()),
            ("http_proxy".to_string(), proxy.clone()),
            ("https_proxy".to_string(), proxy),
            ("NO_PROXY".to_string(), "localhost,127.0.0.1".to_string()),
            ("no_proxy".to_string(), "localhost,127.0.0.1".to_string()),
        ];
        let token = r.oauth_token.as_deref().or(token.as_deref());
        let env = cowork_backend::spawn_env::session_env(base, &r.env, token);
        let mut failed_mounts = Vec::new();
        let mut first = None;
        for (name, spec) in &r.additional_mounts {
            match self.share(&link, &r.name, name, spec).await {
                Ok(guest) => {
                    first.get_or_insert(guest);
                }
                Err(e) => failed_mounts.push(FailedMount {
                    name: name.clone(),
                    path: spec.path.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let cwd = r.cwd.clone().or(first).unwrap_or(home);
        link.spawn(
            &r.id,
            r.command.clone(),
            r.args.clone(),
            env.into_iter().collect(),
            Some(cwd),
        )
        .await
        .map_err(|e| BackendError::invalid("spawn", e))?;
        Ok(SpawnResult { failed_mounts })
    }
    async fn kill(&self, id: &str, sig: Signal) -> Result<()> {
        let link = self.link()?;
        if link.status(id).is_none() {
            return Err(BackendError::NoSuchProcess(id.into()));
        }
        link.kill(id, sig as i32)
            .await
            .map_err(|_| BackendError::ProcessNotRunning(id.into()))
    }
    async fn write_stdin(&self, id: &str, data: String, eof: bool) -> Result<()> {
        let link = self.link()?;
        if link.status(id).is_none() {
            return Err(BackendError::NoSuchProcess(id.into()));
        }
        link.write_stdin(id, data.as_bytes(), eof)
            .await
            .map_err(|_| BackendError::ProcessNotRunning(id.into()))
    }
    fn process_status(&self, id: &str) -> Result<ProcessStatus> {
        self.lock()
            .link
            .as_ref()
            .and_then(|l| l.status(id))
            .ok_or_else(|| BackendError::NoSuchProcess(id.into()))
    }
    async fn read_file(&self, session: &str, path: &str) -> Result<String> {
        cowork_backend::session_data::validate_name("processName", session)?;
        let link = self.link()?;
        let path = path.to_string();
        let answer = link
            .request(|req| cowork_guest::wire::HostMsg::ReadFile {
                req,
                path,
                limit: READ_FILE_LIMIT,
            })
            .await;
        match agent_answer("readFile", answer)? {
            Reply::File(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            other => Err(unexpected("readFile", other)),
        }
    }
    async fn mount_path(&self, r: MountPathRequest) -> Result<MountPathResult> {
        let link = self.link()?;
        let session = self
            .lock()
            .session_of
            .get(&r.process_id)
            .cloned()
            .ok_or_else(|| BackendError::NoSuchProcess(r.process_id.clone()))?;
        let spec = MountSpec {
            path: r.subpath.clone(),
            mode: r.mode,
        };
        let guest_path = self.share(&link, &session, &r.mount_name, &spec).await?;
        Ok(MountPathResult { guest_path })
    }
    async fn install_sdk(&self, sub: &str, version: &str) -> Result<()> {
        cowork_backend::session_data::validate_name("version", version)?;
        let dir = resolve_host_path(&self.home, sub)?.join(version);
        let bin = dir.join("claude");
        let executable = std::fs::metadata(&bin).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        });
        if !executable {
            return Err(BackendError::SdkMissing(bin));
        }
        let canon = validate_mount_source(&self.home, &dir)?;
        self.lock().sdk = Some(canon.clone());
        // Exported now if the VM runs, else at the next start.
        if let Ok(link) = self.link() {
            self.export(&link, canon, true, SDK_GUEST).await?;
        }
        tracing::info!(sdk = %bin.display(), "SDK installed (read-only in the VM at {SDK_GUEST})");
        Ok(())
    }
    fn add_oauth_token(&self, token: String) {
        self.lock().token = Some(token);
    }
    async fn sessions_disk_info(&self, low: u64) -> Result<DiskInfo> {
        let active = self.active_sessions();
        self.session_disk(
            "diskInfo",
            serde_json::json!({"lowWater": low, "active": active}),
        )
        .await
    }
    async fn delete_session_dirs(&self, names: Vec<String>) -> Result<DeleteResult> {
        let active = self.active_sessions();
        self.session_disk(
            "delete",
            serde_json::json!({"names": names, "active": active}),
        )
        .await
    }
    async fn prune_session_caches(&self, r: PruneRequest) -> Result<PruneResult> {
        let active = self.active_sessions();
        self.session_disk("prune", serde_json::json!({"request": r, "active": active}))
            .await
    }
    async fn send_guest_response(
        &self,
        id: &str,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<()> {
        let _ = (result, error);
        // Our agent makes no requests of the app (yet).
        Err(BackendError::NoPendingRequest(id.into()))
    }
}

/// Stops the VM if it still runs, joins its threads and frees its memory;
/// dropping its devices closes the agent channel.
async fn reap(vm: Arc<Vm>) {
    vm.stop();
    let mut vm = vm;
    // The watcher may hold the other reference for a moment.
    let vm = loop {
        match Arc::try_unwrap(vm) {
            Ok(v) => break v,
            Err(shared) => {
                vm = shared;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    match tokio::task::spawn_blocking(move || vm.wait(None)).await {
        Ok(Ok(reason)) => tracing::info!("the VM ended ({reason:?})"),
        Ok(Err(e)) => tracing::warn!("the VM ended with an error: {e}"),
        Err(e) => tracing::warn!("the VM's end could not be awaited: {e}"),
    }
}

/// The agent reconnects after a dropped channel: the newest link wins.
async fn accept_reconnects(
    listener: tokio::net::UnixListener,
    state: Arc<Mutex<State>>,
    bus: EventBus,
) {
    while let Ok((stream, _)) = listener.accept().await {
        match AgentLink::accept(stream, bus.clone(), Duration::from_secs(10)).await {
            Ok(link) => {
                state.lock().unwrap_or_else(|e| e.into_inner()).link = Some(link);
            }
            Err(e) => tracing::warn!("a guest agent connection was refused: {e}"),
        }
    }
}

/// Notices the guest's own end (a panic reboots it, a crash resets it)
/// and reaps the VM, so its processes get their exit events and the next
/// startVM starts afresh; the log says why, with the console's tail.
async fn watch_guest(vm: Arc<Vm>, state: Arc<Mutex<State>>, tail: Arc<Mutex<Vec<u8>>>) {
    let exit = vm.exit_handle();
    while exit.reason() == ExitReason::Running {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(vm);
    let taken = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        for t in [st.accept_task.take(), st.egress_task.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        st.vm.take()
    };
    if let Some(vm) = taken {
        let tail =
            String::from_utf8_lossy(&tail.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        tracing::error!(
            "the guest ended on its own ({:?}); console tail:\n{tail}",
            exit.reason()
        );
        reap(vm).await;
    }
}
