//! The VM's device thread: one epoll over every queue's ioeventfd and every
//! device backend, so a vCPU that notifies a queue goes straight back to
//! the guest (KVM signals the eventfd without an exit to user space) and
//! data arriving for the guest is delivered without a vCPU exit at all.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const STOP: u64 = u64::MAX;

fn lock(t: &SharedTransport) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLoop {
    /// Starts the thread; with `filter`, the thread confines itself to it
    /// before serving anything (and the start fails if it cannot).
    pub fn start(sources: Vec<Source>, filter: Option<BpfProgram>) -> io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
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
        let stop_seen = stop.try_clone()?;
        let (confined_tx, confined) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("vm-devices".into())
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
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(io::Error::other(format!(
                    "device thread seccomp filter: {e}"
                )))
            }
            Err(_) => return Err(io::Error::other("the device thread ended at start")),
        }
        Ok(EventLoop {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the VM's device thread panicked");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(epoll: Epoll, sources: Vec<Source>, stop: EventFd) {
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
                let _ = stop.read();
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
