//! `manifest.json` beside the artifacts: what went in (input versions, the
//! kernel config's hash, the agent's hash) and each artifact's sha256. The
//! helper refuses an artifact whose hash does not match. Each rootfs's
//! package versions are recorded too, so two images can be compared by what
//! they hold and a rebuild from the same versions checked byte for byte.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
/// 2: several rootfs profiles per directory (inputs keyed `<profile>.<key>`)
/// and `packages`. Version 1 manifests still load (no packages).
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    /// The profile the kvm backend boots (`rootfs-<profile>.ext4`); other
    /// profiles built alongside (for tests) are in `artifacts` too.
    pub profile: String,
    pub source_date_epoch: u64,
    /// Everything that determines the artifacts; equal inputs, equal bytes.
    pub inputs: BTreeMap<String, String>,
    /// Per profile, every package in its rootfs as `name=version`, sorted.
    #[serde(default)]
    pub packages: BTreeMap<String, Vec<String>>,
    /// The guest agent's wire protocol version
    /// (`cowork_guest::wire::PROTOCOL_VERSION` of the helper that built the
    /// image): the kvm backend refuses to boot an image whose agent speaks
    /// another. Absent in images built before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_version: Option<u32>,
    /// File name (beside the manifest) to its hash and size.
    pub artifacts: BTreeMap<String, Artifact>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no manifest at {0}: build it with `cowork-microvm image build`")]
    Missing(PathBuf),
    #[error("cannot read {path}: {error}")]
    Unreadable { path: PathBuf, error: String },
    #[error("{path} does not match its manifest: expected sha256 {expected}, found {actual}; rebuild it with `cowork-microvm image build`")]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_stream(std::fs::File::open(path)?, |_| Ok(()))
}

/// sha256 (hex) and length of everything `r` yields, each chunk also
/// handed to `each` (a copy, a progress bar).
pub fn sha256_stream(
    mut r: impl Read,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        h.update(chunk);
        each(chunk)?;
        size += n as u64;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

pub fn sha256_bytes(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, VerifyError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(|_| VerifyError::Missing(path.clone()))?;
        serde_json::from_slice(&text).map_err(|e| VerifyError::Unreadable {
            path,
            error: e.to_string(),
        })
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(MANIFEST), text)
    }

    /// Why a helper speaking wire protocol `ours` must not boot this
    /// image (its agent speaks another, or an unrecorded one), naming the
    /// command that fixes it; `None` when they match.
    pub fn wire_mismatch(&self, ours: u32) -> Option<String> {
        match self.wire_version {
            Some(v) if v == ours => None,
            theirs => Some(format!(
                "the guest image's agent speaks wire protocol {}, this helper speaks version {ours}: rebuild the image with `cowork-microvm image build`",
                theirs.map_or_else(|| "(not recorded: an older image)".to_string(), |v| format!("version {v}"))
            )),
        }
    }

    /// Checks every artifact against its recorded hash.
    pub fn verify(&self, dir: &Path) -> Result<(), VerifyError> {
        for (name, want) in &self.artifacts {
            let path = dir.join(name);
            let (actual, _) = sha256_file(&path).map_err(|e| VerifyError::Unreadable {
                path: path.clone(),
                error: e.to_string(),
            })?;
            if actual != want.sha256 {
                return Err(VerifyError::Mismatch {
                    path,
                    expected: want.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Loads the manifest in `dir` and verifies only what a boot uses: the
/// kernel and the rootfs of the profile it names. With several profiles in
/// one directory (the standard rootfs is about 300 MiB) this spares hashing
/// the ones that are not booted.
pub fn verify_boot(dir: &Path) -> Result<Manifest, VerifyError> {
    let m = Manifest::load(dir)?;
    let rootfs = format!("rootfs-{}.ext4", m.profile);
    let boot = Manifest {
        artifacts: m
            .artifacts
            .iter()
            .filter(|(name, _)| *name == "vmlinux" || **name == rootfs)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..m.clone()
    };
    boot.verify(dir)?;
    Ok(m)
}

/// Loads and verifies the manifest in `dir`.
pub fn verify_dir(dir: &Path) -> Result<Manifest, VerifyError> {
    let m = Manifest::load(dir)?;
    m.verify(dir)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_changed_artifact() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.img"), b"image").unwrap();
        let (sha256, size) = sha256_file(&t.path().join("a.img")).unwrap();
        let m = Manifest {
            format_version: FORMAT_VERSION,
            profile: "minimal".into(),
            source_date_epoch: 1,
            inputs: BTreeMap::new(),
            packages: BTreeMap::new(),
            wire_version: None,
            artifacts: [("a.img".to_string(), Artifact { sha256, size })].into(),
        };
        m.write(t.path()).unwrap();
        assert_eq!(verify_dir(t.path()).unwrap(), m);
        std::fs::write(t.path().join("a.img"), b"imagf").unwrap();
        let e = verify_dir(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("a.img") && e.contains("expected sha256") && e.contains("found"),
            "{e}"
        );
        assert!(matches!(
            verify_dir(&t.path().join("nope")),
            Err(VerifyError::Missing(_))
        ));
    }

    #[test]
    fn a_boot_verifies_the_named_profile_only() {
        let t = tempfile::tempdir().unwrap();
        let mut artifacts = BTreeMap::new();
        for name in ["vmlinux", "rootfs-standard.ext4", "rootfs-minimal.ext4"] {
            std::fs::write(t.path().join(name), name).unwrap();
            let (sha256, size) = sha256_file(&t.path().join(name)).unwrap();
            artifacts.insert(name.to_string(), Artifact { sha256, size });
        }
        let m = Manifest {
            format_version: FORMAT_VERSION,
            profile: "standard".into(),
            source_date_epoch: 1,
            inputs: BTreeMap::new(),
            packages: BTreeMap::new(),
            wire_version: None,
            artifacts,
        };
        m.write(t.path()).unwrap();
        std::fs::remove_file(t.path().join("rootfs-minimal.ext4")).unwrap();
        assert_eq!(verify_boot(t.path()).unwrap(), m);
        assert!(verify_dir(t.path()).is_err());
        std::fs::write(t.path().join("rootfs-standard.ext4"), b"changed").unwrap();
        let e = verify_boot(t.path()).unwrap_err().to_string();
        assert!(e.contains("rootfs-standard.ext4"), "{e}");
    }

    #[test]
    fn a_wire_version_other_than_ours_is_named_with_its_fix() {
        let mut m = Manifest {
            format_version: FORMAT_VERSION,
            profile: "minimal".into(),
            source_date_epoch: 1,
            inputs: BTreeMap::new(),
            packages: BTreeMap::new(),
            wire_version: Some(2),
            artifacts: BTreeMap::new(),
        };
        assert_eq!(m.wire_mismatch(2), None);
        let e = m.wire_mismatch(3).unwrap();
        assert!(
            e.contains("version 2") && e.contains("cowork-microvm image build"),
            "{e}"
        );
        m.wire_version = None;
        assert!(m.wire_mismatch(2).unwrap().contains("not recorded"));
        // Written and read back: the field survives, and an older manifest
        // without it loads as None.
        m.wire_version = Some(7);
        let t = tempfile::tempdir().unwrap();
        m.write(t.path()).unwrap();
        assert_eq!(Manifest::load(t.path()).unwrap().wire_version, Some(7));
    }

    #[test]
    fn a_version_1_manifest_still_loads() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(MANIFEST),
            br#"{"formatVersion":1,"profile":"minimal","sourceDateEpoch":1,
                "inputs":{"profile":"minimal"},"artifacts":{}}"#,
        )
        .unwrap();
        let m = Manifest::load(t.path()).unwrap();
        assert_eq!((m.format_version, m.packages.len()), (1, 0));
    }
}
