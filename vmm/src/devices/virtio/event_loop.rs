//! The VM's device threads: one per device, each an epoll over that
//! device's queue ioeventfds and backend descriptor, so a vCPU that
//! notifies a queue goes straight back to the guest (KVM signals the
//! eventfd without an exit to user space) and data arriving for the guest
//! is delivered without a vCPU exit at all.
//!
//! One thread per device so that one device's slow or stuck work (a FUSE
//! request on a slow disk, a huge read) never holds up another's: the
//! agent's vsock channel and the disks keep being served. Stopping waits a
//! bounded time for each thread; one stuck in a syscall is left behind
//! (detached), owning the `Arc`s of everything it touches, so nothing it
//! uses is freed under it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;

pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// Something the loop watches.
pub enum Source {
    /// The ioeventfd KVM signals when the guest writes `index` to the
    /// transport's QueueNotify register.
    Queue {
        transport: SharedTransport,
        index: u32,
        evt: EventFd,
    },
    /// A device's own descriptor (see `VirtioDevice::backend_fd`).
    Backend {
        transport: SharedTransport,
        fd: RawFd,
    },
}

/// One device's thread name and what its thread watches.
pub struct DeviceSources {
    pub name: String,
    pub sources: Vec<Source>,
}

pub struct EventLoop {
    /// Written once to end every thread: never read, so (level-triggered)
    /// each thread's epoll keeps reporting it.
    stop: EventFd,
    threads: Vec<(String, JoinHandle<()>)>,
}

const STOP: u64 = u64::MAX;

/// How long [`EventLoop::stop`] waits for the threads before leaving the
/// stuck ones behind.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

fn lock(t: &SharedTransport) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLoop {
    /// Starts a thread per device; with `filter`, each thread confines
    /// itself to it before serving anything (and the start fails, ending
    /// the threads already started, if one cannot).
    pub fn start(devices: Vec<DeviceSources>, filter: Option<BpfProgram>) -> io::Result<EventLoop> {
        let mut lp = EventLoop {
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
            threads: Vec::new(),
        };
        for dev in devices {
            if dev.sources.is_empty() {
                continue;
            }
            let thread = spawn(dev.name.clone(), dev.sources, &lp.stop, filter.clone())?;
            lp.threads.push((dev.name, thread));
        }
        Ok(lp)
    }

    /// Ends the threads, waiting at most [`STOP_GRACE`] for them.
    pub fn stop(&mut self) {
        self.stop_within(STOP_GRACE)
    }

    /// Ends the threads, waiting at most `grace` for them all; a thread
    /// still busy then (stuck in a syscall) is logged and left detached.
    pub fn stop_within(&mut self, grace: Duration) {
        let _ = self.stop.write(1);
        let deadline = Instant::now() + grace;
        while self.threads.iter().any(|(_, t)| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (name, t) in self.threads.drain(..) {
            if !t.is_finished() {
                tracing::error!(
                    "device thread {name} did not end within {grace:?}; leaving it behind"
                );
                continue;
            }
            if t.join().is_err() {
                tracing::error!("the VM's device thread {name} panicked");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one device's thread and waits until it has confined itself.
fn spawn(
    name: String,
    sources: Vec<Source>,
    stop: &EventFd,
    filter: Option<BpfProgram>,
) -> io::Result<JoinHandle<()>> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP),
    )?;
    for (token, source) in sources.iter().enumerate() {
        let fd = match source {
            Source::Queue { evt, .. } => evt.as_raw_fd(),
            Source::Backend { fd, .. } => *fd,
        };
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token as u64),
        )?;
    }
    // The thread owns a descriptor of the stop eventfd (and everything
    // else it uses), so leaving it behind frees nothing under it.
    let stop_seen = stop.try_clone()?;
    let (confined_tx, confined) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let applied = match &filter {
                Some(f) => seccompiler::apply_filter(f).map_err(|e| e.to_string()),
                None => Ok(()),
            };
            let ok = applied.is_ok();
            let _ = confined_tx.send(applied);
            if ok {
                run(epoll, sources, stop_seen)
            }
        })?;
    match confined.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(io::Error::other(format!(
            "device thread {name}: seccomp filter: {e}"
        ))),
        Err(_) => Err(io::Error::other(format!(
            "device thread {name} ended at start"
        ))),
    }
}

/// Serves one device until the stop eventfd is signalled; `_stop` keeps
/// the descriptor the epoll watches open as long as the thread runs.
fn run(epoll: Epoll, sources: Vec<Source>, _stop: EventFd) {
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("VM device loop: epoll failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == STOP {
                // Not read: the other device threads see it too.
                return;
            }
            match sources.get(ev.data() as usize) {
                Some(Source::Queue {
                    transport,
                    index,
                    evt,
                }) => {
                    // Several notifies coalesce into one read: one pass
                    // over the queue serves them all.
                    let _ = evt.read();
                    lock(transport).notify(*index);
                }
                Some(Source::Backend { transport, .. }) => lock(transport).backend_event(),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use virtio_queue::Queue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::VirtioDevice;

    /// A device whose backend work is `work`, run on each backend event.
    struct Backend {
        evt: EventFd,
        work: Box<dyn FnMut() + Send>,
    }

    impl VirtioDevice for Backend {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn process_queue(&mut self, _: usize, _: &mut [Queue], _: &GuestMemoryMmap) -> bool {
            false
        }
        fn backend_fd(&self) -> Option<RawFd> {
            Some(self.evt.as_raw_fd())
        }
        fn process_backend(&mut self, _: &mut [Queue], _: &GuestMemoryMmap) -> bool {
            let _ = self.evt.read();
            (self.work)();
            false
        }
    }

    /// A device and the eventfd that wakes its backend.
    fn device(name: &str, work: Box<dyn FnMut() + Send>) -> (DeviceSources, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let fd = evt.as_raw_fd();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(Backend { evt, work }),
            mem,
            irq,
        )));
        let sources = vec![Source::Backend { transport, fd }];
        (
            DeviceSources {
                name: name.into(),
                sources,
            },
            kick,
        )
    }

    #[test]
    fn a_stuck_device_neither_holds_up_the_others_nor_stop() {
        // The stuck one blocks until `release` is dropped (at the end, so
        // the test leaves no thread behind).
        let (release, stuck_until) = mpsc::channel::<()>();
        let (stuck_tx, stuck_entered) = mpsc::channel();
        let (stuck, kick_stuck) = device(
            "test-stuck",
            Box::new(move || {
                let _ = stuck_tx.send(());
                let _ = stuck_until.recv();
            }),
        );
        let (served_tx, served) = mpsc::channel();
        let (healthy, kick_healthy) = device(
            "test-healthy",
            Box::new(move || {
                let _ = served_tx.send(());
            }),
        );
        let mut lp = EventLoop::start(vec![stuck, healthy], None).unwrap();
        kick_stuck.write(1).unwrap();
        stuck_entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the stuck device started its work");
        kick_healthy.write(1).unwrap();
        assert!(
            served.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the healthy device is served while the other is stuck"
        );
        let started = Instant::now();
        lp.stop_within(Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop returned in bounded time ({:?})",
            started.elapsed()
        );
        drop(release);
    }
}
