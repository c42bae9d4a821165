//! Where a packaged install keeps what `image build` needs (the prebuilt
//! guest kernel, the static agent), found relative to this binary so the
//! same lookup works in /usr, /usr/local or a scratch root; and whether we
//! run from a source tree (doctor then suggests `make` targets).

use std::path::{Path, PathBuf};

/// The installation prefix: `/usr` for `/usr/bin/cowork-microvm`.
fn prefix() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.to_path_buf())
}

/// `<prefix>/lib/cowork-microvm/<name>` when it is a file.
pub fn lib_file(name: &str) -> Option<PathBuf> {
    let p = prefix()?.join("lib/cowork-microvm").join(name);
    p.is_file().then_some(p)
}

/// The packaged kernel and its description (`kernel.json`: inputs and
/// sha256), when both are installed.
pub fn kernel() -> Option<cowork_rootfs::PrebuiltKernel> {
    let vmlinux = lib_file(cowork_rootfs::KERNEL)?;
    let info = prefix()?.join("share/cowork-microvm/kernel.json");
    info.is_file()
        .then_some(cowork_rootfs::PrebuiltKernel { vmlinux, info })
}

/// A kernel given on the command line: its `kernel.json` must be beside it.
pub fn kernel_at(vmlinux: &Path) -> cowork_rootfs::PrebuiltKernel {
    cowork_rootfs::PrebuiltKernel {
        info: vmlinux.with_file_name("kernel.json"),
        vmlinux: vmlinux.to_path_buf(),
    }
}

/// Whether this binary was built in a source tree (`<tree>/target/<profile>/`
/// with the Makefile at `<tree>`), where `make image` is the way to build.
pub fn source_tree() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?;
    if target.file_name()? != "target" {
        return None;
    }
    let tree = target.parent()?;
    tree.join("Makefile").is_file().then(|| tree.to_path_buf())
}

/// The command that builds the guest image, as this user can run it.
pub fn image_build_command() -> String {
    if source_tree().is_some() {
        "make image (or cowork-microvm image build)".into()
    } else {
        "cowork-microvm image build".into()
    }
}
