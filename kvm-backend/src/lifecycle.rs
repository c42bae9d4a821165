//! startVM and stopVM, one at a time (the backend's `life` lock): boot the
//! machine, accept the agent whose hello carries this boot's token, serve
//! egress, and release idle sessions' shares; a watcher notices the
//! guest's own end (panic, reboot) and reaps it. stopVM asks the agent for
//! a clean end, stops the VM after a grace, and returns within a bound
//! whatever the guest does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowork_backend::api::StartRequest;
use cowork_backend::{BackendError, Event, EventBus, NetworkStatus, Result};
use cowork_vmm::devices::virtio::fs::Shares;
use cowork_vmm::devices::ExitReason;
use cowork_vmm::{Boot, DiskConfig, Vm};

use crate::agent_link::AgentLink;
use crate::console::{Console, LOG_LIMIT};
use crate::sessions::Sessions;
use crate::shares::Owner;
use crate::{egress, session_disk, unavailable, KvmBackend, Machine, GUEST_CMDLINE, SDK_GUEST};

/// startVM fails if the agent has not connected by then: well before the
/// app gives up on the request (30 s), so it sees why. A healthy guest
/// takes a fraction of a second on hardware, seconds under emulation.
const BOOT_LIMIT: Duration = Duration::from_secs(25);
const DEFAULT_MEM_MIB: u64 = 1024;
/// How long stopVM lets the agent shut the guest down before stopping it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long stopVM waits for the VM's threads once it is stopped; a thread
/// stuck in a system call past it is left behind (logged), not waited on.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// The open-file limit the kvm backend asks for (virtio-fs holds one per
/// file the guest knows).
const FD_LIMIT: u64 = 65536;
/// sun_path holds 108 bytes; the per-port sockets add a suffix.
const MAX_UDS_LEN: usize = 96;
/// Agent handshakes under way at once: a guest process opening
/// connections to the agent port cannot queue the real agent behind it.
const HANDSHAKES: usize = 16;
/// How long a connection to the agent port has to say its hello: the
/// agent says it at once; a silent connection gives its slot back soon.
const HELLO_LIMIT: Duration = Duration::from_secs(2);
/// How long a session stays idle (no process, no spawn under way) before
/// its processes are ended and its folders unexported.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// Refused agent connections logged one by one per boot; later ones are
/// counted.
const REFUSALS_LOGGED: u64 = 10;

/// What runs the guest.
pub(crate) enum Running {
    Vm(Arc<Vm>),
    Process(Arc<Mutex<std::process::Child>>),
}

impl Running {
    fn is_alive(&self) -> bool {
        match self {
            Running::Vm(vm) => vm.exit_handle().reason() == ExitReason::Running,
            Running::Process(c) => c
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .is_ok_and(|s| s.is_none()),
        }
    }

    fn same(&self, other: &Running) -> bool {
        match (self, other) {
            (Running::Vm(a), Running::Vm(b)) => Arc::ptr_eq(a, b),
            (Running::Process(a), Running::Process(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn share(&self) -> Running {
        match self {
            Running::Vm(vm) => Running::Vm(vm.clone()),
            Running::Process(c) => Running::Process(c.clone()),
        }
    }
}

#[derive(Default)]
pub struct State {
    pub(crate) machine: Option<Running>,
    pub(crate) link: Option<Arc<AgentLink>>,
    pub(crate) shares: Option<Arc<Shares>>,
    /// This VM's sessions: processes, users, mounts.
    pub(crate) sessions: Sessions,
    /// Shares every session sees (the SDK), and where they are mounted.
    pub(crate) common_shares: HashMap<(PathBuf, bool), String>,
    pub(crate) common_mounts: HashMap<String, String>,
    /// Kept across VMs: what installSdk and configure set.
    pub(crate) sdk: Option<PathBuf>,
    pub(crate) profile: Option<String>,
    pub(crate) mem_mib: Option<u64>,
    pub(crate) cpus: Option<u32>,
    pub(crate) token: Option<String>,
    /// Why the last connection to the agent port was refused (startVM's
    /// error says it when no agent came).
    last_refusal: Option<String>,
    /// The agent's acceptor, egress, the idle-session releaser, the
    /// watcher: they end with the VM.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The shared lock on the image directory the VM booted: while held,
    /// `image build`/`image prune` keep that image (see
    /// cowork_rootfs::store).
    image_in_use: Option<cowork_rootfs::store::InUse>,
}

impl State {
    pub(crate) fn is_running(&self) -> bool {
        self.machine.as_ref().is_some_and(Running::is_alive)
    }

    /// Everything that belongs to one VM's life, taken out of the state.
    fn take_vm(&mut self) -> (Option<Running>, Option<Arc<AgentLink>>) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.shares = None;
        self.sessions = Sessions::default();
        self.common_shares.clear();
        self.common_mounts.clear();
        self.image_in_use = None;
        (self.machine.take(), self.link.take())
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

fn listen(path: &Path) -> Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path)
        .map_err(|e| BackendError::io(format!("cannot listen on {}", path.display()), e))
}

/// Accepts connections to the agent port for the VM's life. Only a hello
/// with this boot's token becomes the agent, and only while no agent is
/// connected (the agent reconnects after a dropped channel); anything else
/// is refused and logged (the first few, then counted).
async fn accept_agents(
    listener: tokio::net::UnixListener,
    state: Arc<Mutex<State>>,
    bus: EventBus,
    token: Arc<str>,
    exited: Arc<tokio::sync::Notify>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let st = state.clone();
    let refuse = move |why: &str| {
        st.lock().unwrap_or_else(|e| e.into_inner()).last_refusal = Some(why.to_string());
        let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n <= REFUSALS_LOGGED {
            tracing::warn!("a connection to the agent port was refused: {why}");
        } else if n.is_power_of_two() {
            tracing::warn!("{n} connections to the agent port refused so far this boot");
        }
    };
    let refuse = Arc::new(refuse);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: the guest's doing; keep serving.
                tracing::debug!("agent port: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
        if lock().link.as_ref().is_some_and(|l| l.is_alive()) {
            refuse("the agent is already connected");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse("too many handshakes under way");
            continue;
        };
        let (state, bus, token, exited, refuse) = (
            state.clone(),
            bus.clone(),
            token.clone(),
            exited.clone(),
            refuse.clone(),
        );
        tokio::spawn(async move {
            let link = AgentLink::accept(stream, bus, HELLO_LIMIT, &token, exited).await;
            drop(permit);
            match link {
                Ok(link) => {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    if st.link.as_ref().is_some_and(|l| l.is_alive()) {
                        drop(st);
                        refuse("the agent is already connected");
                    } else {
                        tracing::info!(
                            "guest agent {} connected",
                            crate::agent_link::shown(&link.agent)
                        );
                        st.link = Some(link);
                    }
                }
                Err(e) => refuse(&e),
            }
        });
    }
}

/// Releases idle sessions' shares after process ends, for the VM's life:
/// [`IDLE_GRACE`] after an end, what is still idle then is released (a
/// session spawning one command after another keeps its shares, and the
/// guest its page cache of them).
async fn release_on_exit(
    state: Arc<Mutex<State>>,
    share_ops: Arc<tokio::sync::Mutex<()>>,
    exited: Arc<tokio::sync::Notify>,
) {
    loop {
        exited.notified().await;
        tokio::time::sleep(IDLE_GRACE).await;
        crate::shares::release_idle(&state, &share_ops).await;
    }
}

/// Notices the guest's own end (a panic reboots it, a crash resets it, the
/// agent process dies) and reaps it, so its processes get their exit
/// events and the next startVM starts afresh; the log says why.
async fn watch_guest(machine: Running, state: Arc<Mutex<State>>, console: Console) {
    while machine.is_alive() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if st.machine.as_ref().is_some_and(|m| m.same(&machine)) {
            // This task is among the ones taken: it must not abort itself
            // before it has reaped.
            let mine = st.tasks.pop();
            let taken = st.take_vm();
            drop(mine);
            Some(taken)
        } else {
            None
        }
    };
    drop(machine);
    if let Some((Some(m), _link)) = taken {
        let why = match &m {
            Running::Vm(vm) => format!("{:?}", vm.exit_handle().reason()),
            Running::Process(_) => "the agent process ended".into(),
        };
        tracing::error!(
            "the guest ended on its own ({why}); console tail:\n{}",
            console.tail()
        );
        reap(m).await;
    }
}

/// Stops the machine if it still runs and waits for it, [`REAP_LIMIT`] at
/// most: a VM thread stuck past that is left behind, with what it uses.
async fn reap(machine: Running) {
    match machine {
        Running::Vm(vm) => {
            vm.stop();
            let mut vm = vm;
            let until = tokio::time::Instant::now() + REAP_LIMIT;
            // Another task (the watcher) may hold a reference for a moment.
            let vm = loop {
                match Arc::try_unwrap(vm) {
                    Ok(v) => break v,
                    Err(shared) if tokio::time::Instant::now() < until => {
                        vm = shared;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        tracing::warn!(
                            "the VM is still referenced; its threads are not waited for"
                        );
                        return;
                    }
                }
            };
            let wait = tokio::task::spawn_blocking(move || vm.wait(None));
            match tokio::time::timeout(REAP_LIMIT, wait).await {
                Ok(Ok(Ok(reason))) => tracing::info!("the VM ended ({reason:?})"),
                Ok(Ok(Err(e))) => tracing::warn!("the VM ended with an error: {e}"),
                Ok(Err(e)) => tracing::warn!("the VM's end could not be awaited: {e}"),
                Err(_) => tracing::warn!(
                    "the VM's threads did not end within {}s; left behind",
                    REAP_LIMIT.as_secs()
                ),
            }
        }
        Running::Process(child) => {
            let mut c = child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl KvmBackend {
    async fn step(&self, step: &str, status: &str) {
        self.bus
            .publish(&Event::StartupStep {
                step: step.into(),
                status: status.into(),
            })
            .await;
    }

    fn vsock_path(&self) -> Result<PathBuf> {
        let uds = self.cfg.data.join("v.sock");
        if uds.as_os_str().len() > MAX_UDS_LEN {
            return Err(unavailable(format!(
                "the data directory's path is too long for a Unix socket ({}); set COWORK_VM_DATA_DIR to a shorter one",
                uds.display()
            )));
        }
        Ok(uds)
    }

    /// Boots the VM with the agent token on its command line.
    async fn boot_vm(
        &self,
        req: &StartRequest,
        seccomp: Option<cowork_vmm::seccomp::Mode>,
        uds: PathBuf,
        token: &str,
        shares: Arc<Shares>,
        console: Console,
    ) -> Result<Running> {
        if let Some(reason) = crate::probe::unusable_reason(&self.cfg.images) {
            return Err(unavailable(reason));
        }
        self.step("verifyImage", "started").await;
        // The store's current image, resolved once: this VM reads that
        // directory even if a later `image build` switches `current`. It is
        // locked before it is verified, so a prune cannot remove it between.
        let images = cowork_rootfs::store::resolve(&self.cfg.images);
        let in_use = cowork_rootfs::store::InUse::take(&images).map_err(|e| {
            unavailable(format!(
                "the guest image {} cannot be used ({e}); run `cowork-microvm image build`",
                images.display()
            ))
        })?;
        let dir = images.clone();
        let manifest =
            tokio::task::spawn_blocking(move || cowork_rootfs::manifest::verify_boot(&dir))
                .await
                .map_err(|e| BackendError::invalid("image check", e.to_string()))?
                .map_err(|e| unavailable(e.to_string()))?;
        // An agent speaking another wire version would fail after boot with
        // a confusing error; refuse the image before booting it instead.
        if let Some(why) = manifest.wire_mismatch(cowork_guest::wire::PROTOCOL_VERSION) {
            return Err(unavailable(format!("{why} ({})", images.display())));
        }
        self.step("verifyImage", "completed").await;
        let rootfs = format!("rootfs-{}.ext4", manifest.profile);
        let (mem_mib, cpus, profile) = {
            let st = self.lock();
            let mem = req
                .memory_gb
                .map(|g| (g * 1024.0) as u64)
                .or(st.mem_mib)
                .unwrap_or(DEFAULT_MEM_MIB);
            (
                mem,
                req.cpu_count.or(st.cpus).unwrap_or(1),
                st.profile.clone(),
            )
        };
        let max = cowork_vmm::vm::MAX_VCPUS;
        if cpus > u32::from(max) {
            tracing::warn!("cpuCount {cpus} asked for; the VM gets {max}, the most it can have");
        }
        let cpus = u8::try_from(cpus).unwrap_or(u8::MAX).clamp(1, max);
        raise_fd_limit();
        let disk = session_disk::path_for(&self.cfg.data, profile.as_deref());
        let made = disk.clone();
        tokio::task::spawn_blocking(move || session_disk::ensure(&made))
            .await
            .map_err(|e| BackendError::invalid("session disk", e.to_string()))??;
        self.step("bootVM", "started").await;
        let cfg = cowork_vmm::VmConfig {
            boot: Boot::Kernel {
                path: images.join("vmlinux"),
                cmdline: format!(
                    "{GUEST_CMDLINE} quiet {}={token}",
                    cowork_guest::wire::TOKEN_PARAM
                ),
            },
            mem_mib,
            vcpus: cpus,
            shares: Some(shares),
            seccomp,
            vsock: Some(cowork_vmm::VsockConfig {
                cid: cowork_vmm::devices::virtio::vsock::GUEST_CID,
                uds,
            }),
            disks: vec![
                DiskConfig {
                    path: images.join(rootfs),
                    read_only: true,
                    id: "cowork-rootfs".into(),
                },
                DiskConfig {
                    path: disk,
                    read_only: false,
                    id: "cowork-sessions".into(),
                },
            ],
            console: Box::new(console),
        };
        let vm = tokio::task::spawn_blocking(move || Vm::start(cfg))
            .await
            .map_err(|e| BackendError::invalid("VM start", e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        self.lock().image_in_use = Some(in_use);
        Ok(Running::Vm(Arc::new(vm)))
    }

    /// Runs the agent as a process on this machine (tests): it connects to
    /// the agent and egress sockets as the guest's would over vsock.
    fn start_agent_process(&self, agent: &Path, uds: &Path, token: &str) -> Result<Running> {
        use cowork_guest::wire::{AGENT_PORT, EGRESS_PORT};
        use cowork_vmm::devices::virtio::vsock::host_port_path;
        let profile = self.lock().profile.clone();
        let root = self.cfg.data.join(format!(
            "sessions-{}",
            profile.as_deref().unwrap_or("default")
        ));
        cowork_backend::session_data::create_private_dir(&root)?;
        let child = std::process::Command::new(agent)
            .arg("--unix")
            .arg(host_port_path(uds, AGENT_PORT))
            .arg("--egress-unix")
            .arg(host_port_path(uds, EGRESS_PORT))
            .arg("--sessions-root")
            .arg(&root)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env(cowork_guest::wire::TOKEN_ENV, token)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| BackendError::io(format!("cannot start {}", agent.display()), e))?;
        Ok(Running::Process(Arc::new(Mutex::new(child))))
    }

    pub(crate) async fn start_machine(&self, req: StartRequest) -> Result<()> {
        let _one_at_a_time = self.life.lock().await;
        if self.lock().is_running() {
            return Ok(());
        }
        cowork_backend::session_data::create_private_dir(&self.cfg.data)?;
        let uds = self.vsock_path()?;
        use cowork_guest::wire::{AGENT_PORT, EGRESS_PORT};
        use cowork_vmm::devices::virtio::vsock::host_port_path;
        let agent_listener = listen(&host_port_path(&uds, AGENT_PORT))?;
        let egress_listener = listen(&host_port_path(&uds, EGRESS_PORT))?;
        let token: Arc<str> = egress::random_token()?.into();
        let shares = Arc::new(Shares::new());
        let log = self.cfg.data.join("console.log");
        let console = Console::new(std::fs::File::create(&log).ok(), LOG_LIMIT);
        let machine = match &self.cfg.machine {
            Machine::Vm { seccomp } => {
                self.boot_vm(
                    &req,
                    *seccomp,
                    uds.clone(),
                    &token,
                    shares.clone(),
                    console.clone(),
                )
                .await?
            }
            Machine::AgentProcess { agent } => self.start_agent_process(agent, &uds, &token)?,
        };
        let exited = Arc::new(tokio::sync::Notify::new());
        let acceptor = tokio::spawn(accept_agents(
            agent_listener,
            self.state.clone(),
            self.bus.clone(),
            token.clone(),
            exited.clone(),
        ));
        if let Err(why) = self.await_agent(&machine).await {
            acceptor.abort();
            self.lock().link = None;
            reap(machine).await;
            self.lock().image_in_use = None;
            return Err(unavailable(format!(
                "{why}; console tail (full log in {}):\n{}",
                log.display(),
                console.tail()
            )));
        }
        {
            let mut st = self.lock();
            st.tasks = vec![
                acceptor,
                tokio::spawn(egress::serve(egress_listener, self.egress.clone())),
                tokio::spawn(release_on_exit(
                    self.state.clone(),
                    self.share_ops.clone(),
                    exited,
                )),
                // Last: the watcher takes itself out of this list.
                tokio::spawn(watch_guest(
                    machine.share(),
                    self.state.clone(),
                    console.clone(),
                )),
            ];
            st.machine = Some(machine);
            st.shares = Some(shares);
        }
        let sdk = self.lock().sdk.clone();
        if let (Some(dir), Ok(link)) = (sdk, self.link()) {
            if let Err(e) = self.export(&link, Owner::All, dir, true, SDK_GUEST).await {
                tracing::warn!("the SDK could not be shared with the VM: {e}");
            }
        }
        self.step("connectAgent", "completed").await;
        self.bus
            .publish(&Event::NetworkStatus {
                status: NetworkStatus::Connected,
            })
            .await;
        // The app leaves "starting" only once it has heard one.
        let bus = self.bus.clone();
        let probe = req.api_probe_url.clone();
        tokio::spawn(async move {
            let status = match probe {
                Some(url) if cowork_egress::probe::api_reachable(&url).await => "reachable",
                Some(_) => "unreachable",
                None => "unknown",
            };
            bus.publish(&Event::ApiReachability {
                status: status.into(),
            })
            .await;
        });
        Ok(())
    }

    /// Waits for the guest's init (VM) and for the agent's authenticated
    /// hello, [`BOOT_LIMIT`] in all.
    async fn await_agent(&self, machine: &Running) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
        if let Running::Vm(vm) = machine {
            let timer = vm.boot_timer();
            while timer.elapsed().is_none()
                && machine.is_alive()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let Some(t) = timer.elapsed() else {
                self.step("bootVM", "failed").await;
                return Err(match vm.exit_handle().reason() {
                    ExitReason::Running | ExitReason::Stopped => format!(
                        "the guest did not reach its init within {}s",
                        BOOT_LIMIT.as_secs()
                    ),
                    other => format!("the guest ended before its init started ({other:?})"),
                });
            };
            tracing::info!(
                "guest init started {:.0} ms after VM creation",
                t.as_secs_f64() * 1e3
            );
        }
        self.step("bootVM", "completed").await;
        self.step("connectAgent", "started").await;
        self.lock().last_refusal = None;
        let why = loop {
            if self.lock().link.as_ref().is_some_and(|l| l.is_alive()) {
                return Ok(());
            }
            if !machine.is_alive() {
                break "the guest ended before its agent connected".to_string();
            }
            if tokio::time::Instant::now() >= deadline {
                let refusal = self.lock().last_refusal.take();
                break match refusal {
                    Some(r) => format!(
                        "no guest agent was accepted within {}s (last refusal: {r})",
                        BOOT_LIMIT.as_secs()
                    ),
                    None => format!(
                        "the guest agent did not connect within {}s",
                        BOOT_LIMIT.as_secs()
                    ),
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.step("connectAgent", "failed").await;
        Err(why)
    }

    pub(crate) async fn stop_machine(&self) -> Result<()> {
        let _one_at_a_time = self.life.lock().await;
        // Held until the VM has ended: its image is not pruned under it.
        let in_use = self.lock().image_in_use.take();
        let (machine, link) = self.lock().take_vm();
        // The VM's processes are gone with it: so are their credentials.
        self.egress.lock().clear();
        let Some(machine) = machine else {
            return Ok(());
        };
        // A clean end first: the agent ends every process, syncs the
        // session disk and powers off; the VM is stopped if it does not.
        if let Some(link) = link.filter(|l| l.is_alive()) {
            let until = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            if tokio::time::timeout(SHUTDOWN_GRACE, link.shutdown())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                while machine.is_alive() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        reap(machine).await;
        drop(in_use);
        self.prune_old_images().await;
        Ok(())
    }

    /// An image update (`image build`) while the VM ran left the image it
    /// booted behind, kept for it: with the VM stopped, nothing needs it.
    async fn prune_old_images(&self) {
        let root = self.cfg.images.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            // A flat image directory (`image build --out`) has no versions.
            (cowork_rootfs::store::resolve(&root) != root)
                .then(|| cowork_rootfs::store::prune(&root))
        })
        .await;
        match pruned {
            Ok(Some(Ok(p))) => {
                for d in p.removed {
                    tracing::info!("removed the previous guest image {}", d.display());
                }
            }
            Ok(Some(Err(e))) => tracing::warn!("cannot prune old guest images: {e}"),
            Ok(None) | Err(_) => {}
        }
    }
}
