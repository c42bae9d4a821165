//! Reproducible guest images: the kernel (Debian's linux-source-6.12 and
//! `kernel/guest.config`, built by `build-kernel.sh`, both embedded here so
//! an installed helper can build them), a rootfs per profile as an ext4
//! image, and `manifest.json` with every input and artifact hash.
//!
//! Run by `make image` and `cowork-microvm image build`.

pub mod ext4;
pub mod manifest;
pub mod progress;
pub mod store;
pub mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use manifest::{sha256_bytes, sha256_file, Artifact, Manifest, FORMAT_VERSION};

pub const KERNEL_FRAGMENT: &str = include_str!("../kernel/guest.config");
pub const KERNEL_SCRIPT: &str = include_str!("../build-kernel.sh");
/// Every timestamp in the images.
pub const SOURCE_DATE_EPOCH: u64 = 1_700_000_000;
pub const KERNEL: &str = "vmlinux";
pub const BUSYBOX: &str = "/bin/busybox";
/// The standard profile's packages come from here (and `-security` beside it).
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Minimal,
    Standard,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "minimal" => Some(Profile::Minimal),
            "standard" => Some(Profile::Standard),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Minimal => "minimal",
            Profile::Standard => "standard",
        }
    }

    pub fn rootfs_file(self) -> String {
        format!("rootfs-{}.ext4", self.name())
    }

    /// A comma-separated list (`standard,minimal`), without repeats; the
    /// first is the profile the image's manifest names.
    pub fn parse_list(s: &str) -> Option<Vec<Profile>> {
        let mut out = Vec::new();
        for name in s.split(',') {
            let p = Profile::parse(name.trim())?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("missing build dependencies; install them with: sudo apt-get install {0}")]
    Missing(String),
    #[error("{0}")]
    NeedsRoot(String),
    #[error(
        "the agent {0} is dynamically linked; the guest needs a static one (the package installs /usr/lib/cowork-microvm/cowork-guest; `make agent` builds it)"
    )]
    DynamicAgent(PathBuf),
    #[error("{0}")]
    Step(String),
}

pub struct BuildOptions {
    /// The rootfs profiles to build into `out`; the first is the one the
    /// manifest names, which the kvm backend boots. The others are there
    /// for whoever asks for their file (tests boot `rootfs-minimal.ext4`).
    pub profiles: Vec<Profile>,
    pub out: PathBuf,
    pub agent: PathBuf,
    /// Build the kernel too (skipped by tests that only check the rootfs).
    pub kernel: bool,
    /// Where the kernel build is cached between runs.
    pub cache: PathBuf,
    /// A kernel built already (the packaged one) to use instead of
    /// building it: with `kernel`, this is copied instead.
    pub prebuilt_kernel: Option<PrebuiltKernel>,
    /// A directory holding an earlier build whose rootfs images are reused
    /// (hard-linked, else copied) when their inputs are unchanged; `None`
    /// looks in `out` itself.
    pub reuse_from: Option<PathBuf>,
    /// The agent's wire protocol version, recorded in the manifest.
    pub wire_version: Option<u32>,
}

/// A prebuilt guest kernel and the `kernel.json` that describes it (what
/// `build-kernel.sh` writes: its inputs and `vmlinuxSha256`).
#[derive(Debug, Clone)]
pub struct PrebuiltKernel {
    pub vmlinux: PathBuf,
    pub info: PathBuf,
}

fn progress(step: &str) {
    eprintln!("image: {step}");
}

/// The kernel's inputs from a `kernel.json`, keyed `kernel.<key>` for the
/// manifest (its `vmlinuxSha256` is the artifact's hash, recorded there).
fn kernel_inputs(info: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, String> {
    info.into_iter()
        .filter(|(k, _)| k != "vmlinuxSha256")
        .map(|(k, v)| {
            (
                format!("kernel.{k}"),
                v.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Copies a prebuilt kernel into `out`, refusing one that does not match
/// the hash its `kernel.json` gives.
fn copy_kernel(k: &PrebuiltKernel, out: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let text = std::fs::read(&k.info)
        .map_err(|e| BuildError::Step(format!("{}: {e}", k.info.display())))?;
    if text.len() > 1 << 20 {
        return Err(BuildError::Step(format!(
            "{} is too large",
            k.info.display()
        )));
    }
    let info: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| BuildError::Step(format!("{}: {e}", k.info.display())))?;
    let want = info
        .get("vmlinuxSha256")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| BuildError::Step(format!("{} has no vmlinuxSha256", k.info.display())))?;
    let (got, _) = progress::copy_file(&k.vmlinux, &out.join(KERNEL), "kernel (prebuilt)")
        .map_err(|e| BuildError::Step(format!("kernel {}: {e}", k.vmlinux.display())))?;
    if got != want {
        let _ = std::fs::remove_file(out.join(KERNEL));
        return Err(BuildError::Step(format!(
            "{} does not match {}: sha256 {got}, expected {want}; reinstall the package",
            k.vmlinux.display(),
            k.info.display()
        )));
    }
    progress(&format!(
        "kernel: {} (prebuilt, verified)",
        k.vmlinux.display()
    ));
    Ok(kernel_inputs(info))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn check_tools(opts: &BuildOptions) -> Result<(), BuildError> {
    let mut missing = Vec::new();
    if !have("mke2fs") || !have("debugfs") {
        missing.push("e2fsprogs");
    }
    if opts.profiles.contains(&Profile::Minimal) && !Path::new(BUSYBOX).exists() {
        missing.push("busybox-static");
    }
    if opts.profiles.contains(&Profile::Standard) && !have("mmdebstrap") {
        missing.push("mmdebstrap");
    }
    if opts.kernel && opts.prebuilt_kernel.is_none() {
        for (tool, pkg) in [
            ("make", "build-essential"),
            ("flex", "flex"),
            ("bison", "bison"),
            ("bc", "bc"),
        ] {
            if !have(tool) {
                missing.push(pkg);
            }
        }
        if !Path::new("/usr/src/linux-source-6.12.tar.xz").exists() {
            missing.push("linux-source-6.12");
        }
        for (hdr, pkg) in [
            ("/usr/include/libelf.h", "libelf-dev"),
            ("/usr/include/openssl/ssl.h", "libssl-dev"),
        ] {
            if !Path::new(hdr).exists() {
                missing.push(pkg);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Missing(missing.join(" ")))
    }
}

fn host_package_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn build_kernel(opts: &BuildOptions, work: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let step = progress::Step::start(
        "kernel (cached after the first build; about 6 minutes without a cache)",
    );
    let dir = work.join("kernel-src");
    std::fs::create_dir_all(dir.join("kernel")).map_err(|e| BuildError::Step(e.to_string()))?;
    std::fs::write(dir.join("build-kernel.sh"), KERNEL_SCRIPT)
        .map_err(|e| BuildError::Step(e.to_string()))?;
    std::fs::write(dir.join("kernel/guest.config"), KERNEL_FRAGMENT)
        .map_err(|e| BuildError::Step(e.to_string()))?;
    // Its output is kept for a failure's message: the spinner says what
    // runs meanwhile.
    let run = Command::new("bash")
        .arg(dir.join("build-kernel.sh"))
        .arg(&opts.out)
        .env("COWORK_VM_CACHE_DIR", &opts.cache)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| BuildError::Step(format!("kernel build: {e}")))?;
    if !run.status.success() {
        let err = String::from_utf8_lossy(&run.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BuildError::Step(format!(
            "kernel build failed ({}):\n{}",
            run.status,
            tail.join("\n")
        )));
    }
    step.done("kernel: built (or found in the cache)");
    let info: BTreeMap<String, serde_json::Value> = std::fs::read(opts.out.join("kernel.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .ok_or_else(|| BuildError::Step("kernel build left no kernel.json".into()))?;
    let _ = std::fs::remove_file(opts.out.join("kernel.json"));
    Ok(kernel_inputs(info))
}

/// The inputs that decide one profile's rootfs, keyed `<profile>.<key>`:
/// if a manifest in `out` has the same ones and the file verifies, that
/// rootfs is not rebuilt. For the standard profile that includes the apt
/// sources but not the mirror's state: a rebuild with new package versions
/// needs the old rootfs (or manifest) removed.
fn rootfs_inputs(
    opts: &BuildOptions,
    profile: Profile,
) -> Result<BTreeMap<String, String>, BuildError> {
    let (agent_sha, _) = sha256_file(&opts.agent)
        .map_err(|e| BuildError::Step(format!("agent {}: {e}", opts.agent.display())))?;
    let mut inputs = BTreeMap::from([
        ("agentSha256".to_string(), agent_sha),
        (
            "builder".to_string(),
            sha256_bytes(concat!(include_str!("tree.rs"), include_str!("ext4.rs")).as_bytes()),
        ),
    ]);
    match profile {
        Profile::Minimal => {
            inputs.insert(
                "busyboxStatic".into(),
                host_package_version("busybox-static"),
            );
        }
        Profile::Standard => {
            inputs.insert(
                "debianSources".into(),
                tree::standard_sources(DEBIAN_MIRROR).join("; "),
            );
            inputs.insert("packages".into(), tree::STANDARD_PACKAGES.join(","));
            inputs.insert("mmdebstrap".into(), host_package_version("mmdebstrap"));
        }
    }
    Ok(inputs
        .into_iter()
        .map(|(k, v)| (format!("{}.{k}", profile.name()), v))
        .collect())
}

fn inputs_of(m: &Manifest, profile: Profile) -> BTreeMap<String, String> {
    let prefix = format!("{}.", profile.name());
    m.inputs
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Builds (or finds cached) the kernel and each profile's rootfs in
/// `opts.out`, writes the manifest and returns it.
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let Some(&primary) = opts.profiles.first() else {
        return Err(BuildError::Step("no profile to build".into()));
    };
    check_tools(opts)?;
    if tree::is_dynamic(&opts.agent)
        .map_err(|e| BuildError::Step(format!("agent {}: {e}", opts.agent.display())))?
    {
        return Err(BuildError::DynamicAgent(opts.agent.clone()));
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| BuildError::Step(format!("{}: {e}", opts.out.display())))?;
    let work = opts.out.join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| BuildError::Step(e.to_string()))?;
    let result = build_in(opts, primary, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn artifact(out: &Path, name: &str) -> Result<Artifact, BuildError> {
    let (sha256, size) = progress::sha256_file(&out.join(name), &format!("hashing {name}"))
        .map_err(|e| BuildError::Step(format!("{name}: {e}")))?;
    Ok(Artifact { sha256, size })
}

/// Puts `from` at `to` as a hard link (same bytes, no copy), else a copy.
fn link_or_copy(from: &Path, to: &Path, what: &str) -> std::io::Result<()> {
    if from == to {
        return Ok(());
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    progress::copy_file(from, to, what).map(|_| ())
}

fn build_in(opts: &BuildOptions, primary: Profile, work: &Path) -> Result<Manifest, BuildError> {
    let reuse = opts.reuse_from.as_deref().unwrap_or(&opts.out);
    let old = Manifest::load(reuse).ok();
    let mut m = Manifest {
        format_version: FORMAT_VERSION,
        profile: primary.name().into(),
        source_date_epoch: SOURCE_DATE_EPOCH,
        inputs: BTreeMap::new(),
        packages: BTreeMap::new(),
        wire_version: opts.wire_version,
        artifacts: BTreeMap::new(),
    };
    if let (true, Some(k)) = (opts.kernel, &opts.prebuilt_kernel) {
        m.inputs.extend(copy_kernel(k, &opts.out)?);
        m.artifacts
            .insert(KERNEL.to_string(), artifact(&opts.out, KERNEL)?);
    } else if opts.kernel {
        m.inputs.extend(build_kernel(opts, work)?);
        m.artifacts
            .insert(KERNEL.to_string(), artifact(&opts.out, KERNEL)?);
    }
    for &profile in &opts.profiles {
        let inputs = rootfs_inputs(opts, profile)?;
        let rootfs = profile.rootfs_file();
        let cached = old.as_ref().and_then(|o| {
            let a = o.artifacts.get(&rootfs)?;
            let fresh = inputs_of(o, profile) == inputs
                && progress::sha256_file(&reuse.join(&rootfs), &format!("checking {rootfs}"))
                    .ok()?
                    .0
                    == a.sha256;
            fresh.then(|| (a.clone(), o.packages.get(profile.name()).cloned()))
        });
        if let Some((a, packages)) = cached {
            link_or_copy(&reuse.join(&rootfs), &opts.out.join(&rootfs), &rootfs)
                .map_err(|e| BuildError::Step(format!("{rootfs}: {e}")))?;
            progress(&format!("{rootfs}: up to date ({})", reuse.display()));
            m.artifacts.insert(rootfs, a);
            if let Some(p) = packages {
                m.packages.insert(profile.name().into(), p);
            }
            m.inputs.extend(inputs);
            continue;
        }
        let t0 = std::time::Instant::now();
        let step = progress::Step::start(&match profile {
            Profile::Minimal => "minimal rootfs tree (busybox)".to_string(),
            Profile::Standard => "standard rootfs tree (mmdebstrap: a few minutes)".to_string(),
        });
        let root = work.join(format!("root-{}", profile.name()));
        std::fs::create_dir_all(&root).map_err(|e| BuildError::Step(e.to_string()))?;
        let packages = match profile {
            Profile::Minimal => {
                tree::minimal(&root, &opts.agent, Path::new(BUSYBOX))?;
                vec![format!(
                    "busybox-static={}",
                    host_package_version("busybox-static")
                )]
            }
            Profile::Standard => {
                let sources = tree::standard_sources(DEBIAN_MIRROR);
                tree::standard(&root, &opts.agent, &sources, SOURCE_DATE_EPOCH)?;
                tree::packages(&root)?
            }
        };
        step.done(&format!("{} rootfs tree", profile.name()));
        ext4::make_image(&root, &opts.out.join(&rootfs), SOURCE_DATE_EPOCH, work)?;
        // The tree of the standard profile is a few hundred MB.
        let _ = std::fs::remove_dir_all(&root);
        let a = artifact(&opts.out, &rootfs)?;
        progress(&format!(
            "{rootfs}: {} MiB, {} packages, built in {:.0?}",
            a.size >> 20,
            packages.len(),
            t0.elapsed()
        ));
        m.artifacts.insert(rootfs, a);
        m.packages.insert(profile.name().into(), packages);
        m.inputs.extend(inputs);
    }
    m.write(&opts.out)
        .map_err(|e| BuildError::Step(format!("manifest: {e}")))?;
    progress(&format!("done: {}", opts.out.display()));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lists_keep_order_and_drop_repeats() {
        assert_eq!(
            Profile::parse_list("standard,minimal,standard"),
            Some(vec![Profile::Standard, Profile::Minimal])
        );
        assert_eq!(
            Profile::parse_list(" minimal "),
            Some(vec![Profile::Minimal])
        );
        assert_eq!(Profile::parse_list("standard,big"), None);
        assert_eq!(Profile::parse_list(""), None);
    }
}
