//! The guest's serial console: to a log file, bounded, with the last bytes
//! kept for error reports. The guest writes what it likes to its console,
//! so the file stops growing at [`LOG_LIMIT`] (one line says so) instead of
//! filling the user's disk.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The console tail an error report carries.
pub const TAIL_BYTES: usize = 4096;
/// The most a boot's console log keeps.
pub const LOG_LIMIT: u64 = 8 << 20;

#[derive(Default)]
struct LogFile {
    file: Option<std::fs::File>,
    written: u64,
    truncated: bool,
}

#[derive(Clone, Default)]
pub struct Console {
    log: Arc<Mutex<LogFile>>,
    tail: Arc<Mutex<Vec<u8>>>,
    limit: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Console {
    /// A console logging to `file` (none: the tail only), at most `limit`
    /// bytes of it.
    pub fn new(file: Option<std::fs::File>, limit: u64) -> Console {
        Console {
            log: Arc::new(Mutex::new(LogFile {
                file,
                ..Default::default()
            })),
            tail: Arc::default(),
            limit,
        }
    }

    /// The last [`TAIL_BYTES`] the guest wrote, as text.
    pub fn tail(&self) -> String {
        String::from_utf8_lossy(&lock(&self.tail)).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        {
            let mut log = lock(&self.log);
            let room = self.limit.saturating_sub(log.written);
            let take = b.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let cut = take < b.len() && !log.truncated;
            if let Some(f) = log.file.as_mut() {
                let _ = f.write_all(&b[..take]);
                if cut {
                    let _ = f.write_all(b"\n[cowork-microvm: console log limit reached; later output is only kept in memory as the tail]\n");
                }
            }
            log.written += take as u64;
            log.truncated |= cut;
        }
        let mut t = lock(&self.tail);
        t.extend_from_slice(b);
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stops_at_its_limit_and_the_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut c = Console::new(Some(std::fs::File::create(&path).unwrap()), 10_000);
        for _ in 0..1000 {
            c.write_all(&[b'x'; 100]).unwrap();
        }
        c.write_all(b"the end").unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 10_000 + 200, "log grew to {len}");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("limit reached"));
        assert!(c.tail().ends_with("the end"));
        assert!(c.tail().len() <= TAIL_BYTES);
    }
}
