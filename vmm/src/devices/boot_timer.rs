//! The boot timer: the guest's init writes a magic byte to a port when it
//! starts; the VMM records how long after VM creation that was.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bus::BusDevice;
use crate::layout::BOOT_TIMER_MAGIC;

#[derive(Clone)]
pub struct BootTimer {
    start: Instant,
    seen: Arc<Mutex<Option<Duration>>>,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            seen: Arc::default(),
        }
    }

    /// When the guest's init first signalled, after VM creation.
    pub fn elapsed(&self) -> Option<Duration> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&BOOT_TIMER_MAGIC) {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.is_none() {
                let t = self.start.elapsed();
                tracing::info!(
                    "guest init started {:.1} ms after VM creation",
                    t.as_secs_f64() * 1e3
                );
                *seen = Some(t);
            }
        }
    }
}
