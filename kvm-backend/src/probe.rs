//! Whether the kvm backend can run on this machine.

use std::path::Path;

/// Whether /dev/kvm is provided by the kvm_pvm module (no hardware
/// virtualization: a standard guest kernel cannot boot there).
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn kvm_rw() -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err(
            "/dev/kvm does not exist (no KVM on this machine, or the kvm module is not loaded)"
                .into(),
        );
    }
    access(dev, AccessFlags::R_OK | AccessFlags::W_OK)
        .map_err(|e| format!("/dev/kvm is not read-write for you: {e}"))
}

/// Why the kvm backend cannot run here with the image in `images`, or
/// `None` when it can: /dev/kvm read-write, real hardware virtualization
/// (not PVM), and a guest image.
pub fn unusable_reason(images: &Path) -> Option<String> {
    if let Err(e) = kvm_rw() {
        return Some(e);
    }
    if kvm_is_pvm() {
        return Some("/dev/kvm is PVM-backed (the kvm_pvm module): a standard guest kernel cannot boot on it; use bwrap here".into());
    }
    // The store's `current` image, if the directory is a store.
    let images = &cowork_rootfs::store::resolve(images);
    // Presence only: hashing the artifacts is doctor's job and startVM's,
    // not every helper start-up's.
    match cowork_rootfs::manifest::Manifest::load(images) {
        Ok(m) if m.artifacts.contains_key("vmlinux") => None,
        Ok(_) => Some(format!(
            "the guest image in {} has no kernel; run `cowork-microvm image build`",
            images.display()
        )),
        Err(e) => Some(format!("guest image: {e}")),
    }
}
