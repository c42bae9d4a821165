//! The .deb as a user gets it: `make deb`, installed with dpkg into a
//! scratch root (its own dpkg database; maintainer scripts run without a
//! chroot, with DPKG_ROOT set, as dpkg does for --force-script-chrootless),
//! then the installed binary: `--help`, `image build` of the minimal
//! profile from the packaged kernel and agent (no source tree, no Rust
//! needed: the binary finds them relative to itself), `image verify`,
//! `doctor --json`, `uninstall --purge`; then `dpkg --purge` leaves no
//! file of the package behind.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::require;

const TREE: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Every file (not directory) under `dir`, skipping dpkg's own database.
fn files(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&p, skip));
        } else {
            out.push(p);
        }
    }
    out
}

fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--log=/dev/null");
    c
}

#[test]
#[cfg_attr(not(has_deb_tools), ignore = "needs dpkg-deb, dpkg and make")]
#[cfg_attr(
    all(has_deb_tools, not(has_root)),
    ignore = "dpkg --root installs need root"
)]
#[cfg_attr(
    all(has_deb_tools, has_root, not(has_guest_kernel)),
    ignore = "no cached guest kernel to package (rootfs/build-kernel.sh, ~6 min)"
)]
#[cfg_attr(
    all(has_deb_tools, has_root, has_guest_kernel, not(has_rootfs_tools)),
    ignore = "needs e2fsprogs and busybox-static (minimal image)"
)]
fn the_deb_installs_builds_an_image_and_purges_clean() {
    let test = "the_deb_installs_builds_an_image_and_purges_clean";
    let tools = Path::new("/bin/busybox").exists() && Path::new("/usr/bin/dpkg-deb").exists();
    if !require(tools, test, "needs dpkg-deb and busybox-static") {
        return;
    }
    // `make deb` builds the release helper and the static agent (warm
    // when `make release agent` ran) and packages the cached kernel.
    let made = run(Command::new("make").arg("-s").arg("deb").current_dir(TREE));
    let line = made.lines().rev().find(|l| l.trim().ends_with(".deb"));
    let deb = PathBuf::from(line.unwrap_or_default().trim());
    let deb = if deb.is_absolute() {
        deb
    } else {
        Path::new(TREE).join(deb)
    };
    assert!(deb.is_file(), "make deb printed {made}");
    let size = std::fs::metadata(&deb).unwrap().len();
    eprintln!("{}: {} MiB", deb.display(), size >> 20);
    let fields = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(
        fields.contains("Depends:") && fields.contains("e2fsprogs"),
        "{fields}"
    );
    assert!(fields.contains("Recommends: bubblewrap"), "{fields}");
    // lintian clean: no error or warning beyond the package's own
    // overrides (packaging/deb/lintian-overrides, each with its reason).
    let lintian = Path::new("/usr/bin/lintian").exists();
    if require(
        lintian,
        test,
        "lintian is not installed (apt-get install lintian)",
    ) {
        run(Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(&deb));
    }

    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), b"").unwrap();
    let t0 = Instant::now();
    // Dependencies are the host's (e2fsprogs, libc), not the scratch root's.
    run(dpkg(&root).arg("--force-depends").arg("-i").arg(&deb));

    let bin = root.join("usr/bin/cowork-microvm");
    let home = t.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let user = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", t.path().join("run"));
        c
    };
    let help = run(&mut user(&["--help"]));
    assert!(
        help.contains("image build") && help.contains("uninstall --purge"),
        "{help}"
    );

    let built = run(&mut user(&["image", "build", "--profile", "minimal"]));
    eprintln!("dpkg -i to a built image: {:.1?}\n{built}", t0.elapsed());
    assert!(built.contains("(prebuilt, verified)"), "{built}");
    let verified = run(&mut user(&["image", "verify"]));
    assert!(verified.contains("match their manifest"), "{verified}");

    let doctor = user(&["doctor", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let image = &report["image"];
    assert_eq!(image["verified"], true, "{report}");
    assert_eq!(image["wireMatches"], true, "{report}");
    assert_eq!(image["profile"], "minimal", "{report}");
    assert_eq!(report["mke2fs"]["ok"], true, "{report}");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !text.contains("make image"),
        "an installed doctor names make: {text}"
    );

    // Removing the user's files: refused without a terminal or --yes.
    let refused = user(&["uninstall", "--purge"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(home.join(".local/share/cowork-microvm/images").is_dir());
    let removed = run(&mut user(&["uninstall", "--purge", "--yes"]));
    assert!(removed.contains("removed"), "{removed}");
    let left = files(&home, Path::new("/nonexistent"));
    assert!(left.is_empty(), "uninstall --purge left {left:?}");

    run(dpkg(&root).arg("--purge").arg("cowork-microvm"));
    let left = files(&root, &admin);
    assert!(left.is_empty(), "dpkg --purge left {left:?}");
    assert!(!root.join("usr/lib/cowork-microvm").exists());
}
