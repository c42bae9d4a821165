//! Resource limits per session, in the VM: every process of a session runs
//! in a cgroup of its own inside its session's
//! (`/sys/fs/cgroup/cowork/s-<session>/p-<id>-<n>/`). The session's cgroup
//! caps memory (a share of the VM's, so one session cannot have the whole
//! VM's memory, the agent's included, taken) and, where the kernel has the
//! pids controller, the number of tasks (fork bombs); the process's own
//! cgroup gives its exit's OOM kill count. The child joins its cgroup
//! between fork and exec, so nothing it starts escapes the accounting.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/cowork";
/// Tasks a session may have at once (needs CONFIG_CGROUP_PIDS).
pub const PIDS_MAX: u32 = 4096;
/// The share of the VM's memory one session may use, in percent.
pub const MEMORY_PERCENT: u64 = 80;

/// Makes the per-process cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    /// `memory.max` of each session; `None` when the VM's memory is unknown.
    memory_max: Option<u64>,
}

/// A process's cgroup, made before the fork.
#[derive(Debug)]
pub struct ProcessCgroup {
    pub dir: PathBuf,
    procs: CString,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cgroups {
    /// Under `root` ([`CGROUP_ROOT`] in the VM), sessions limited to
    /// [`MEMORY_PERCENT`] of `meminfo`'s MemTotal.
    pub fn new(root: &Path, meminfo: &str) -> Cgroups {
        Cgroups {
            root: root.to_path_buf(),
            memory_max: mem_total(meminfo).map(|t| t / 100 * MEMORY_PERCENT),
        }
    }

    /// For the VM: [`CGROUP_ROOT`] and /proc/meminfo.
    pub fn vm() -> Cgroups {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Cgroups::new(Path::new(CGROUP_ROOT), &meminfo)
    }

    /// A new cgroup for process `id` of `session` (a validated name), in
    /// the session's cgroup, made with its limits on first use.
    pub fn for_process(&self, session: Option<&str>, id: &str) -> Result<ProcessCgroup, String> {
        mkdir(&self.root)?;
        enable_controllers(&self.root);
        let parent = match session {
            Some(name) => {
                // Prefixed: a session named like an interface file
                // (`cgroup.procs`) must not collide with one.
                let dir = self.root.join(format!("s-{name}"));
                mkdir(&dir)?;
                self.limit(&dir)?;
                enable_controllers(&dir);
                dir
            }
            None => self.root.clone(),
        };
        let safe: String = id
            .chars()
            .take(64)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("p-{safe}-{n}"));
        mkdir(&dir)?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
        Ok(ProcessCgroup { dir, procs })
    }

    /// The session's limits. Memory is required (the VM's survival);
    /// pids only where the kernel has the controller.
    fn limit(&self, dir: &Path) -> Result<(), String> {
        if let Some(max) = self.memory_max {
            let f = dir.join("memory.max");
            std::fs::write(&f, max.to_string()).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        let _ = std::fs::write(dir.join("pids.max"), PIDS_MAX.to_string());
        Ok(())
    }
}

impl ProcessCgroup {
    /// In the child between fork and exec: moves the calling process into
    /// the cgroup (writing "0" to `cgroup.procs` moves the writer). Only
    /// system calls on data made before the fork.
    pub fn join_in_child(&self) -> std::io::Result<()> {
        crate::oom::write_in_child(&self.procs, b"0")
    }
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("mkdir {}: {e}", dir.display())),
    }
}

/// Lets the cgroups below `dir` use the memory and pids controllers; one
/// write each, as a write naming a controller the kernel lacks fails whole.
fn enable_controllers(dir: &Path) {
    for c in ["+memory", "+pids"] {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
    }
}

/// MemTotal in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// OOM kills the process's cgroup saw (its `memory.events`).
pub fn oom_kills(cgroup: &Path) -> Option<u64> {
    let events = std::fs::read_to_string(cgroup.join("memory.events")).ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_get_limits_and_processes_their_own_cgroup() {
        // A plain directory stands in for the cgroup file system: the
        // files written are what the kernel would be told.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cowork");
        let cg = Cgroups::new(&root, "MemTotal:        1000000 kB\nMemFree: 5 kB\n");
        let a = cg.for_process(Some("cgroup.procs"), "run/1").unwrap();
        let b = cg.for_process(Some("cgroup.procs"), "run/1").unwrap();
        assert_ne!(a.dir, b.dir, "one cgroup per process");
        let session = root.join("s-cgroup.procs");
        assert_eq!(a.dir.parent(), Some(session.as_path()));
        let read = |f: &str| std::fs::read_to_string(session.join(f)).unwrap();
        assert_eq!(
            read("memory.max"),
            (1_000_000u64 * 1024 / 100 * 80).to_string()
        );
        assert_eq!(read("pids.max"), "4096");
        assert!(a
            .dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("p-run_1-"));
        assert_eq!(mem_total("nothing"), None);
    }
}
