//! `cowork-microvm image build|verify|list|prune`.
//!
//! Without `--out`, a build goes into a new versioned directory of the image
//! store (see `cowork_rootfs::store`) and `current` is switched to it only
//! once it is complete and verified, so a helper never boots a half-written
//! image; older images are then removed unless a running VM still holds
//! them. Session disks live in the data directory, not here, and survive.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cowork_rootfs::{manifest, store, BuildOptions, Profile};

use crate::cli::ImageCommand;
use crate::config::{cache_dir, home_dir, image_dir};

/// The static agent: the packaged one, else `cowork-guest` beside this
/// binary, else where `make agent` builds it.
fn default_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut candidates: Vec<PathBuf> = crate::installed::lib_file("cowork-guest")
        .into_iter()
        .collect();
    candidates.push(exe.with_file_name("cowork-guest"));
    if let Some(target) = exe.parent().and_then(Path::parent) {
        candidates.push(target.join("x86_64-unknown-linux-gnu/release/cowork-guest"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file() && cowork_rootfs::tree::is_dynamic(p).ok() == Some(false))
}

struct Build {
    profile: String,
    out: Option<PathBuf>,
    agent: Option<PathBuf>,
    kernel: Option<PathBuf>,
    no_kernel: bool,
}

/// Under `sudo` (the standard profile needs root), the user who ran it:
/// the image is theirs, in their home, owned by them, so their helper can
/// boot it and `image prune`/`uninstall --purge` can remove it.
fn sudo_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()?
}

/// The directories `build` is about to create under `home` (from the first
/// missing ancestor of `dir`), to hand them to the sudo user afterwards.
fn missing_dirs(dir: &Path, home: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| d.starts_with(home) && *d != home && !d.exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Gives `paths` (recursively, never following a symlink) to `user`.
fn give_to(user: &nix::unistd::User, paths: &[PathBuf]) {
    fn walk(p: &Path, uid: u32, gid: u32) {
        if let Err(e) = std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
            eprintln!("image: cannot give {} to uid {uid}: {e}", p.display());
        }
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    for p in paths {
        if p.symlink_metadata().is_ok() {
            walk(p, user.uid.as_raw(), user.gid.as_raw());
        }
    }
}

fn build(b: Build) -> Result<i32> {
    let sudo = sudo_user();
    let home = sudo.as_ref().map_or_else(home_dir, |u| u.dir.clone());
    if let Some(u) = &sudo {
        if !home.is_dir() {
            bail!(
                "run under sudo by {}, whose home {} does not exist: the image would have nowhere to go",
                u.name,
                home.display()
            );
        }
    }
    // What this build may create for the sudo user, found before it does:
    // the cache, and the image store unless the caller chose `--out`.
    let (root, cache) = (image_dir(&home), cache_dir(&home));
    let mut theirs = missing_dirs(&cache, &home);
    theirs.push(cache);
    if b.out.is_none() {
        theirs.extend(missing_dirs(&root, &home));
        theirs.push(root);
    }
    // Never anything outside their home, whatever the environment says.
    theirs.retain(|p| p.starts_with(&home) && p != &home);
    let result = build_as(b, &home);
    if let Some(user) = &sudo {
        give_to(user, &theirs);
    }
    result
}

fn build_as(b: Build, home: &Path) -> Result<i32> {
    let Some(profiles) = Profile::parse_list(&b.profile) else {
        bail!(
            "unknown profile {:?}: use minimal, standard, or a list such as standard,minimal",
            b.profile
        );
    };
    let agent = b.agent.or_else(default_agent).context(
        "no guest agent found (the package installs /usr/lib/cowork-microvm/cowork-guest; \
         in a source tree run `make agent`), or pass --agent PATH",
    )?;
    let prebuilt_kernel = match b.kernel {
        Some(k) => Some(crate::installed::kernel_at(&k)),
        None => crate::installed::kernel(),
    };
    let mut opts = BuildOptions {
        profiles,
        out: PathBuf::new(),
        agent,
        kernel: !b.no_kernel,
        cache: cache_dir(home),
        prebuilt_kernel,
        reuse_from: None,
        wire_version: Some(cowork_guest::wire::PROTOCOL_VERSION),
    };
    if let Some(out) = b.out {
        // The flat layout, as before: the caller owns this directory.
        opts.out = out;
        let m = cowork_rootfs::build(&opts)?;
        print_artifacts(&opts.out, &m);
        return Ok(0);
    }
    let root = image_dir(home);
    // Unchanged rootfs images are reused from the current image (or a flat
    // one left in the root by an older release).
    opts.reuse_from = Some(store::resolve(&root));
    opts.out = store::new_version(&root)
        .with_context(|| format!("cannot create an image directory in {}", root.display()))?;
    // Held while building: a concurrent prune leaves this directory alone.
    let building = store::InUse::take(&opts.out)?;
    let built = cowork_rootfs::build(&opts)
        .map_err(anyhow::Error::from)
        .and_then(|m| {
            manifest::verify_dir(&opts.out)?;
            Ok(m)
        });
    let m = match built {
        Ok(m) => m,
        Err(e) => {
            drop(building);
            let _ = std::fs::remove_dir_all(&opts.out);
            return Err(e);
        }
    };
    store::switch(&root, &opts.out)
        .with_context(|| format!("cannot switch {} to the new image", root.display()))?;
    drop(building);
    print_artifacts(&opts.out, &m);
    println!("current image: {}", opts.out.display());
    report_prune(&store::prune(&root)?);
    Ok(0)
}

fn print_artifacts(dir: &Path, m: &manifest::Manifest) {
    for (name, a) in &m.artifacts {
        println!(
            "{}  {}  ({} bytes)",
            a.sha256,
            dir.join(name).display(),
            a.size
        );
    }
}

fn report_prune(p: &store::Pruned) {
    for d in &p.removed {
        println!("removed old image {}", d.display());
    }
    for d in &p.kept_in_use {
        println!(
            "kept old image {}: a running VM uses it (`cowork-microvm image prune` removes it once that VM stops)",
            d.display()
        );
    }
}

fn list(json: bool) -> Result<i32> {
    let root = image_dir(&home_dir());
    let entries = store::list(&root)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    if entries.is_empty() {
        let flat = root.join(manifest::MANIFEST).is_file();
        println!(
            "no versioned images in {}{}",
            root.display(),
            if flat {
                " (a flat image is there: `cowork-microvm image build` makes a versioned one)"
            } else {
                ""
            }
        );
        return Ok(0);
    }
    println!(
        "{:<28} {:>7} {:>9} {:>7} {:>6}  PATH",
        "IMAGE", "CURRENT", "SIZE(MiB)", "PROFILE", "IN USE"
    );
    for e in &entries {
        println!(
            "{:<28} {:>7} {:>9} {:>7} {:>6}  {}",
            e.id,
            if e.current { "*" } else { "" },
            e.size >> 20,
            e.profile.as_deref().unwrap_or("?"),
            if e.in_use { "yes" } else { "no" },
            e.path.display()
        );
    }
    Ok(0)
}

pub fn main(cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Build {
            profile,
            out,
            agent,
            kernel,
            no_kernel,
        } => build(Build {
            profile,
            out,
            agent,
            kernel,
            no_kernel,
        }),
        ImageCommand::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| store::resolve(&image_dir(&home_dir())));
            let m = manifest::verify_dir(&dir)?;
            println!(
                "{}: {} artifacts match their manifest ({} profile)",
                dir.display(),
                m.artifacts.len(),
                m.profile
            );
            Ok(0)
        }
        ImageCommand::List { json } => list(json),
        ImageCommand::Prune => {
            report_prune(&store::prune(&image_dir(&home_dir()))?);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dirs_stop_at_home_and_at_what_exists() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        std::fs::create_dir_all(home.join(".local")).unwrap();
        let dir = home.join(".local/share/cowork-microvm/images");
        assert_eq!(
            missing_dirs(&dir, home),
            [
                dir.clone(),
                home.join(".local/share/cowork-microvm"),
                home.join(".local/share"),
            ]
        );
        assert!(missing_dirs(Path::new("/nonexistent/x"), home).is_empty());
    }
}
