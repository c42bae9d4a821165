//! The sandbox's pid 1, and which binary provides it. The init itself is
//! the cowork-sandbox-init crate: a small static binary,
//! `cowork-microvm-sandbox-init`, installed beside the helper (or in the
//! package's library directory). When it is missing, the helper re-runs
//! itself as `cowork-microvm sandbox-init`, which runs the same code after
//! a slower start (a multi-megabyte binary), so a partial install still
//! works.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub use cowork_sandbox_init::STATUS_PATH;

/// The small init's file name beside the helper.
pub const BINARY: &str = "cowork-microvm-sandbox-init";
/// Where the .deb installs it, relative to the helper's directory
/// (/usr/bin/cowork-microvm → /usr/lib/cowork-microvm/sandbox-init).
const PACKAGED: &str = "../lib/cowork-microvm/sandbox-init";
/// Where the small init appears inside the sandbox.
pub const SMALL_PATH: &str = "/run/cowork/sandbox-init";

/// The binary bwrap starts as pid 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitBinary {
    /// The small init, at this host path.
    Small(PathBuf),
    /// The helper itself, run with the `sandbox-init` subcommand.
    Helper(PathBuf),
}

impl InitBinary {
    /// The host file bound into the sandbox.
    pub fn host_path(&self) -> &Path {
        match self {
            Self::Small(p) | Self::Helper(p) => p,
        }
    }

    /// Its path inside the sandbox and the arguments before `--proxy`:
    /// the command bwrap runs.
    pub fn command(&self) -> Vec<OsString> {
        match self {
            Self::Small(_) => vec![SMALL_PATH.into()],
            Self::Helper(_) => vec![super::sandbox::INIT_PATH.into(), "sandbox-init".into()],
        }
    }
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// The small init beside `helper_exe` or where the package puts it, else
/// the helper. Which one is used is logged once.
pub fn locate(helper_exe: &Path) -> InitBinary {
    static LOGGED: Once = Once::new();
    let dir = helper_exe.parent().unwrap_or(Path::new("/"));
    let found = [dir.join(BINARY), dir.join(PACKAGED)]
        .into_iter()
        .find(|p| is_file(p));
    let init = match found {
        Some(p) => InitBinary::Small(p),
        None => InitBinary::Helper(helper_exe.to_path_buf()),
    };
    LOGGED.call_once(|| match &init {
        InitBinary::Small(p) => tracing::info!("bwrap: sandbox init {}", p.display()),
        InitBinary::Helper(_) => tracing::warn!(
            "bwrap: no {BINARY} beside {} nor in {}; the sandbox's init is the helper \
             itself, which starts slower (reinstall to get it)",
            helper_exe.display(),
            dir.join(PACKAGED).display()
        ),
    });
    init
}

/// `cowork-microvm sandbox-init`: the fallback init. Returns the exit code
/// for this process.
pub fn main(proxy: &Path, listen: &str, command: &[String]) -> i32 {
    cowork_sandbox_init::run(&cowork_sandbox_init::Options {
        proxy: proxy.to_path_buf(),
        listen: listen.to_string(),
        command: command.iter().map(OsString::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_small_init_beside_the_helper_then_the_packaged_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let helper = bin.join("cowork-microvm");
        std::fs::write(&helper, "").expect("helper");
        assert_eq!(locate(&helper), InitBinary::Helper(helper.clone()));
        let lib = tmp.path().join("lib/cowork-microvm");
        std::fs::create_dir_all(&lib).expect("lib");
        std::fs::write(lib.join("sandbox-init"), "").expect("packaged");
        assert_eq!(
            locate(&helper),
            InitBinary::Small(bin.join(PACKAGED)),
            "the package's library directory"
        );
        std::fs::write(bin.join(BINARY), "").expect("beside");
        assert_eq!(locate(&helper), InitBinary::Small(bin.join(BINARY)));
    }
}
