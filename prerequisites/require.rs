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
/// cfg), when it went away since the build, or when run with `--ignored`:
/// each time the test fails with the reason, rather than pass without
/// having run. (Where build.rs found it missing, the test is ignored with
/// that reason, which is how a skip shows.)
pub fn require(present: bool, test: &str, missing: &str) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{test}: {missing}; CI must provide it");
    panic!("{test}: {missing} (the build found it, or the test was run with --ignored: install it, or leave the test ignored)");
}

/// For a part of a test that has parts of its own prerequisites (the
/// nested harness's agent turn and image update): true when `present`.
/// Under CI a missing one fails the test; elsewhere the test runs without
/// that part and says so (its other assertions still run).
#[allow(dead_code)] // only some of the test crates including this have such parts
pub fn optional_part(present: bool, test: &str, missing: &str) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{test}: {missing}; CI must provide it");
    eprintln!("{test}: run without a part: {missing}");
    false
}
