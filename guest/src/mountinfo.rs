//! Which session directories have something mounted in them, from
//! `/proc/self/mountinfo`. The session-disk bookkeeping (delete, prune)
//! runs as root in the agent's namespace, where a session's shares are
//! mounted under `/sessions/<name>/mnt/<m>`: deleting such a directory
//! would delete the user's host files through the share.

use std::collections::HashSet;
use std::path::Path;

/// The names of the sessions under `sessions_root` that have a mount at or
/// below their directory, from the text of a mountinfo file.
pub fn mounted_sessions(sessions_root: &Path, mountinfo: &str) -> HashSet<String> {
    let root = sessions_root.to_string_lossy();
    let root = root.trim_end_matches('/');
    let prefix = format!("{root}/");
    mountinfo
        .lines()
        // Field 5 is the mount point (octal escapes for space, tab,
        // newline and backslash).
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter_map(|mp| {
            let rest = mp.strip_prefix(&prefix)?;
            let name = rest.split('/').next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The same, for the agent's own mount namespace now. An unreadable
/// mountinfo is an error: without it nothing is known to be safe.
pub fn mounted_sessions_now(sessions_root: &Path) -> Result<HashSet<String>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    Ok(mounted_sessions(sessions_root, &text))
}

/// Undoes mountinfo's `\ooo` escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_in_a_session_directory_are_found() {
        let info = "\
22 1 254:0 / / ro,relatime shared:1 - ext4 /dev/vda ro
30 22 254:16 / /sessions rw,nosuid shared:9 - ext4 /dev/vdb rw
41 30 0:40 /share /sessions/alpha/mnt/work rw shared:12 - virtiofs cowork rw
42 30 0:40 /x /sessions/with\\040space/mnt/m rw - virtiofs cowork rw
43 30 0:41 / /sessions/beta rw - tmpfs tmpfs rw
44 30 0:42 / /sessionsX/gamma rw - tmpfs tmpfs rw
";
        let got = mounted_sessions(Path::new("/sessions/"), info);
        let want: HashSet<String> = ["alpha", "with space", "beta"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
    }
}
