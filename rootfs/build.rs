//! Probes what this crate's tests need and sets a `has_*` cfg for each
//! prerequisite present (see prerequisites/probes.rs): tests without theirs
//! show as ignored, with the reason, instead of passing.

include!("../prerequisites/probes.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../prerequisites/probes.rs");
    set_cfgs(&[
        // the standard profile: mmdebstrap as root, and debugfs to read the
        // image back (tests/standard.rs; the mirror is checked at run time)
        (
            "has_mmdebstrap",
            is_root() && on_path("mmdebstrap") && on_path("mke2fs") && on_path("debugfs"),
        ),
    ]);
}
