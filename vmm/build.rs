//! Probes what this crate's tests need and sets a `has_*` cfg for each
//! prerequisite present (see prerequisites/probes.rs): tests without theirs
//! show as ignored, with the reason, instead of passing.

include!("../prerequisites/probes.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../prerequisites/probes.rs");
    set_cfgs(&[
        // /dev/kvm opens read-write for this user (tests/kvm_plumbing.rs)
        ("has_kvm", read_write(std::path::Path::new("/dev/kvm"))),
        // root: switching to a guest's uid, making device nodes
        ("has_root", is_root()),
        // mke2fs under the helper's seccomp filter
        ("has_mke2fs", on_path("mke2fs")),
    ]);
}
