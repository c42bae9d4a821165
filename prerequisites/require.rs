//! The run-time half of a test's prerequisite check (probes.rs, run by
//! each build.rs, is the build-time half). Test code of the root package,
//! vmm/ and guest/ includes this file as a module through `#[path]`.

/// Whether this is a CI run (`CI` set, and not to `false`/`0`/empty),
/// where every prerequisite is installed and a missing one is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// True when the prerequisite is `present`. A test that build.rs did not
/// mark ignored gets here with it missing only under CI (which sets every
/// cfg: then this panics), when it went away since the build, or when run
/// with `--ignored` (then the test says SKIP and why, and returns).
pub fn require(present: bool, test: &str, missing: &str) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{test}: {missing}; CI must provide it");
    eprintln!("SKIP {test}: {missing}");
    false
}
