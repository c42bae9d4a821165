// What the build scripts of the root package, vmm/ and guest/ probe for
// their tests, in one place: each build.rs `include!`s this file (so it
// has no `use` of its own, which would clash with the includer's) and
// declares its `has_*` cfgs through `set_cfgs`. Each uses only some of the
// probes, hence their `allow(dead_code)`.
//
// A test whose prerequisite is missing is marked
// `#[cfg_attr(not(has_x), ignore = "why")]`, so a plain `cargo test` counts
// it as ignored and says why, instead of reporting it as passed. Under CI
// (`CI` set to anything but `false`/`0`/empty) every cfg is set: CI
// installs the prerequisites, so a missing one must fail the test (its
// run-time check panics there) rather than hide it.

/// Whether `tool` is an executable file in a directory of `PATH`.
#[allow(dead_code)]
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Whether `program args` runs and exits 0 (its output discarded).
#[allow(dead_code)]
fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the build (and so, normally, the tests) runs as root.
#[allow(dead_code)]
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether the building user can open `path` for reading and writing
/// (as the tests must open /dev/kvm).
#[allow(dead_code)]
fn read_write(path: &std::path::Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}

/// Reruns the build script when `p` changes, but only if it exists: cargo
/// treats a missing watched path as always changed, which would rebuild
/// the package on every `cargo test`.
#[allow(dead_code)]
fn watch(p: &std::path::Path) {
    if p.exists() {
        println!("cargo::rerun-if-changed={}", p.display());
    }
}

/// Whether this is a CI run, where every prerequisite must be present.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Declares every cfg in `present`, reruns when `CI` or `PATH` changes (the
/// tools found move with `PATH`), and sets each cfg whose prerequisite is
/// there, or all of them under CI.
fn set_cfgs(present: &[(&str, bool)]) {
    for var in ["CI", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let ci = in_ci();
    for &(cfg, ok) in present {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if ok || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
