//! What an image build shows while it works: on a terminal, a spinner
//! naming the step when its length is unknown (kernel build, mmdebstrap,
//! mke2fs) and a bar where the size is known (copying the kernel, hashing
//! an artifact); elsewhere (CI logs, a pipe) one plain line per step.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A step of unknown length.
pub struct Step {
    bar: ProgressBar,
}

impl Step {
    pub fn start(what: &str) -> Step {
        let bar = ProgressBar::new_spinner();
        if bar.is_hidden() {
            eprintln!("image: {what}");
        } else {
            bar.set_style(
                ProgressStyle::with_template("{spinner} image: {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Step { bar }
    }

    /// Ends the spinner, leaving `done` as its last line.
    pub fn done(self, done: &str) {
        if self.bar.is_hidden() {
            eprintln!("image: {done}");
        } else {
            self.bar.finish_and_clear();
            eprintln!("image: {done}");
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        // An error return leaves no spinner spinning over the message.
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// A byte bar for `total` bytes of `what`; hidden off a terminal.
fn bytes_bar(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("image: {msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// sha256 and size of `path`, with a bar (artifacts are up to a few
/// hundred MiB).
pub fn sha256_file(path: &Path, what: &str) -> std::io::Result<(String, u64)> {
    let total = std::fs::metadata(path)?.len();
    let bar = bytes_bar(what, total);
    let r = copy_hashing(path, None, &bar);
    bar.finish_and_clear();
    r
}

/// Copies `from` to a new file `to` (removed first, so a hard link to it
/// elsewhere is never written through), with a bar; returns the sha256 and
/// size of what was copied.
pub fn copy_file(from: &Path, to: &Path, what: &str) -> std::io::Result<(String, u64)> {
    let total = std::fs::metadata(from)?.len();
    let bar = bytes_bar(what, total);
    let _ = std::fs::remove_file(to);
    let mut out = std::fs::File::create(to)?;
    let r = copy_hashing(from, Some(&mut out), &bar);
    bar.finish_and_clear();
    let r = r?;
    out.sync_all()?;
    Ok(r)
}

fn copy_hashing(
    from: &Path,
    mut to: Option<&mut std::fs::File>,
    bar: &ProgressBar,
) -> std::io::Result<(String, u64)> {
    crate::manifest::sha256_stream(std::fs::File::open(from)?, |chunk| {
        if let Some(out) = to.as_deref_mut() {
            out.write_all(chunk)?;
        }
        bar.inc(chunk.len() as u64);
        Ok(())
    })
}

/// Runs `cmd`, which writes `file`, with a bar of the bytes it has
/// allocated so far against `total` (what the tree to copy holds: the
/// image is sparse, so its length says nothing until it is done). Off a
/// terminal, the step's line only. Returns its output (stderr kept for a
/// failure's message, read on a thread so a chatty tool cannot block).
pub fn run_writing(
    cmd: &mut std::process::Command,
    file: &Path,
    total: u64,
    what: &str,
) -> std::io::Result<std::process::Output> {
    use std::os::unix::fs::MetadataExt;
    use std::process::Stdio;
    let bar = bytes_bar(what, total);
    if bar.is_hidden() {
        eprintln!("image: {what}");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            // At most 1 MiB of a tool's complaints.
            let _ = s.take(1 << 20).read_to_end(&mut buf);
        }
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let written = std::fs::metadata(file).map_or(0, |m| m.blocks() * 512);
        bar.set_position(written.min(total));
        std::thread::sleep(Duration::from_millis(100));
    };
    bar.finish_and_clear();
    let stderr = reader.join().unwrap_or_default();
    Ok(std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    })
}
