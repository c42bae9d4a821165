//! `cowork-microvm image build|verify`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cowork_rootfs::{manifest, BuildOptions, Profile};

use crate::cli::ImageCommand;
use crate::config::{cache_dir, home_dir, image_dir};

/// A static `cowork-guest` beside this binary, else where `make image`
/// builds it.
fn default_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut candidates = vec![exe.with_file_name("cowork-guest")];
    if let Some(target) = exe.parent().and_then(Path::parent) {
        candidates.push(target.join("x86_64-unknown-linux-gnu/release/cowork-guest"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file() && cowork_rootfs::tree::is_dynamic(p).ok() == Some(false))
}

pub fn main(cmd: ImageCommand) -> Result<i32> {
    let home = home_dir();
    match cmd {
        ImageCommand::Build {
            profile,
            out,
            agent,
            no_kernel,
        } => {
            let Some(profiles) = Profile::parse_list(&profile) else {
                bail!("unknown profile {profile:?}: use minimal, standard, or a list such as standard,minimal");
            };
            let agent = agent.or_else(default_agent).context(
                "no guest agent found beside this binary: build it with `make image`, or pass --agent PATH",
            )?;
            let opts = BuildOptions {
                profiles,
                out: out.unwrap_or_else(|| image_dir(&home)),
                agent,
                kernel: !no_kernel,
                cache: cache_dir(&home),
            };
            let m = cowork_rootfs::build(&opts)?;
            for (name, a) in &m.artifacts {
                println!(
                    "{}  {}  ({} bytes)",
                    a.sha256,
                    opts.out.join(name).display(),
                    a.size
                );
            }
            Ok(0)
        }
        ImageCommand::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| image_dir(&home));
            let m = manifest::verify_dir(&dir)?;
            println!(
                "{}: {} artifacts match their manifest ({} profile)",
                dir.display(),
                m.artifacts.len(),
                m.profile
            );
            Ok(0)
        }
    }
}
