//! `cowork-microvm uninstall --purge`: removes every file this project
//! created for the user running it (images, caches, session disks and data,
//! logs, the runtime socket, config). The package itself is apt's to
//! remove. It lists what it will remove first and asks; with no terminal it
//! needs `--yes`. It refuses while a helper answers on a socket: removing
//! the disks of running sessions under them would lose their work.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::{cache_dir, default_socket, image_dir, Settings};

/// Socket names a helper listens on in the runtime directory: ours by
/// default, and the one Claude Desktop passes with `-socket`.
const SOCKET_NAMES: [&str; 2] = ["cowork-vm-service.sock", "claude-cowork-vm.sock"];

/// What would be removed: existing paths, none inside another.
pub fn targets(settings: &Settings) -> Vec<PathBuf> {
    let home = &settings.home;
    let mut all = vec![image_dir(home), cache_dir(home), settings.data_dir.clone()];
    // The config directory when it is ours; a config file named by
    // COWORK_MICROVM_CONFIG elsewhere is removed alone.
    match settings.config_path.parent() {
        Some(dir) if dir.file_name().is_some_and(|n| n == "cowork-microvm") => {
            all.push(dir.to_path_buf())
        }
        _ => all.push(settings.config_path.clone()),
    }
    if let Some(log) = crate::logging::log_file_path(home) {
        let mut rotated = log.clone().into_os_string();
        rotated.push(".1");
        all.push(PathBuf::from(rotated));
        all.push(log);
    }
    all.push(default_socket());
    let mut out: Vec<PathBuf> = Vec::new();
    for p in all {
        if p.symlink_metadata().is_err() || !safe_to_remove(&p, home) {
            continue;
        }
        if out.iter().any(|o| p.starts_with(o)) {
            continue;
        }
        out.retain(|o| !o.starts_with(&p));
        out.push(p);
    }
    out
}

/// Never `/`, a top-level directory, the home directory or one of its
/// ancestors, whatever an environment variable says.
fn safe_to_remove(p: &Path, home: &Path) -> bool {
    p.is_absolute() && p.components().count() > 2 && !home.starts_with(p)
}

/// A helper answering on one of the runtime directory's sockets.
fn running_helper() -> Option<PathBuf> {
    let dir = default_socket().parent()?.to_path_buf();
    SOCKET_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|s| UnixStream::connect(s).is_ok())
}

fn remove(p: &Path) -> std::io::Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn main(purge: bool, yes: bool) -> Result<i32> {
    if !purge {
        bail!("uninstall removes your images, caches, session data, logs and config: run it as `cowork-microvm uninstall --purge` (the package itself: apt purge cowork-microvm)");
    }
    if let Some(sock) = running_helper() {
        bail!(
            "a helper is running (it answers on {}): quit Claude Desktop (or stop that helper) first, then run this again",
            sock.display()
        );
    }
    let settings = Settings::load();
    let targets = targets(&settings);
    if targets.is_empty() {
        println!("nothing to remove: cowork-microvm has no files of yours");
        return Ok(0);
    }
    println!("This removes:");
    for t in &targets {
        println!("  {}", t.display());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not on a terminal: pass --yes to remove these without asking");
        }
        print!("Remove them? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        // One short line at most: nobody types more to say y.
        std::io::stdin().lock().take(64).read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing removed");
            return Ok(1);
        }
    }
    let mut failed = 0;
    for t in &targets {
        match remove(t) {
            Ok(()) => println!("removed {}", t.display()),
            Err(e) => {
                eprintln!("cannot remove {}: {e}", t.display());
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_home_root_or_their_ancestors() {
        let home = Path::new("/home/u");
        assert!(!safe_to_remove(Path::new("/"), home));
        assert!(!safe_to_remove(Path::new("/home"), home));
        assert!(!safe_to_remove(Path::new("/home/u"), home));
        assert!(!safe_to_remove(Path::new("relative/x"), home));
        assert!(safe_to_remove(
            Path::new("/home/u/.cache/cowork-microvm"),
            home
        ));
    }
}
