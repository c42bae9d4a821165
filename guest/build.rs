//! Probes what this crate's tests need and sets a `has_*` cfg for each
//! prerequisite present (see prerequisites/probes.rs): tests without theirs
//! show as ignored, with the reason, instead of passing.

include!("../prerequisites/probes.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../prerequisites/probes.rs");
    set_cfgs(&[
        // root: chown to session users, mounts
        ("has_root", is_root()),
        // util-linux unshare makes the namespaces tests/confine.rs runs the
        // agent in (only as root, which has_root covers)
        (
            "has_unshare",
            succeeds(
                "unshare",
                &[
                    "--mount",
                    "--pid",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--fork",
                    "--propagation",
                    "private",
                    "true",
                ],
            ),
        ),
    ]);
}
