//! Every fuzz target's seeds and every input that once crashed one
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) run through the
//! same entry points the fuzzers use, on every `cargo test`.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("helper_requests", cowork_microvm::fuzz::helper_requests),
    ("guest_wire", cowork_microvm::fuzz::guest_wire),
    ("guest_paths", cowork_microvm::fuzz::guest_paths),
    ("vsock_packets", cowork_vmm::fuzz::vsock),
    ("blk_requests", cowork_vmm::fuzz::block),
    ("fuse_requests", cowork_vmm::fuzz::fs),
];

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_and_past_crashes_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz target {name} has no seeds");
        let crashes = inputs(&root.join("regressions").join(name));
        for file in seeds.iter().chain(&crashes) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}
