//! Files and folders inside a read-write share that a program on the host
//! would later run or obey: git's hooks and config, shell start-up files,
//! Claude Code's own commands and agents, MCP server lists, editor task
//! files. A session that could rewrite them would run code as the user the
//! next time the user (not the sandbox) opens a shell, commits, or starts
//! Claude Code in that folder. So each backend keeps the ones that already
//! exist read-only to the session, while the rest of the folder stays
//! writable (editing, `git commit`, a new repository all still work).
//!
//! This module says which paths those are, relative to a share's root; each
//! backend enforces it its own way (bwrap binds them read-only over
//! themselves, the kvm backend's file server refuses writes to them). The
//! search is bounded in depth and in entries read, and never follows a
//! symlink: a session can only make it find less, never more, and a
//! protected path it removed before the share was made is simply not there.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The protected names, each relative to a folder the search visits (the
/// share's root and the folders below it, down to [`MAX_DEPTH`]).
pub const PROTECTED: &[&str] = &[
    // git runs hooks, and its config can name a hook path, an fsmonitor or
    // a pager command, for every later git command in the repository.
    ".git/hooks",
    ".git/config",
    ".git/config.worktree",
    ".gitmodules",
    ".gitconfig",
    // Hook managers keep the hooks git runs outside .git/hooks (husky sets
    // core.hooksPath to .husky; pre-commit and lefthook run the commands
    // their file names).
    ".husky",
    ".pre-commit-config.yaml",
    "lefthook.yml",
    "lefthook.yaml",
    ".lefthook.yml",
    // Shell start-up files, for a share that is (or holds) a home.
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
    // direnv runs this on entering the folder.
    ".envrc",
    // Claude Code's project commands, agents, hooks (in its settings) and
    // MCP servers, which the user's own (unsandboxed) Claude Code would
    // load.
    ".claude/commands",
    ".claude/agents",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".mcp.json",
    // Editors run tasks and load settings from these.
    ".vscode",
    ".idea",
    // ripgrep reads its flags from here (it can name a preprocessor); npm
    // from .npmrc (it can name the shell scripts run with).
    ".ripgreprc",
    ".npmrc",
    // For a share that is a home: what the desktop, the user's services,
    // git, ssh, the Claude app and this helper read from it.
    ".config/autostart",
    ".config/systemd",
    ".config/git",
    ".config/fish",
    ".config/Claude",
    ".config/cowork-microvm",
    ".ssh",
];

/// How deep below a share's root the search looks for [`PROTECTED`] names:
/// the root itself and folders up to this many levels below it (a folder
/// of repositories, a repository with submodules).
pub const MAX_DEPTH: usize = 3;

/// At most this many directory entries are read per share, so a share of a
/// huge tree costs a bounded time at mount.
pub const MAX_ENTRIES: usize = 50_000;

/// Whether protection is on: the default, unless the helper's config says
/// `"protectedPaths": false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    #[default]
    On,
    Off,
}

/// What a search found under one share root.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Existing protected paths, relative to the root, shallowest first.
    pub paths: Vec<PathBuf>,
    /// Why the search could not see the whole share, if it could not: it
    /// stopped at [`MAX_ENTRIES`], or the share's root or an entry could not
    /// be read (a session can make its own folders unreadable). A backend
    /// then cannot tell what in the share to protect, and shares it
    /// read-only whole (see [`read_only_instead`]).
    pub incomplete: Option<String>,
    /// The folders kept whole for being unreadable: every protected name
    /// under one reports it, so it is looked up here, not in `paths`.
    blocked: std::collections::HashSet<PathBuf>,
}

/// At most this many unreadable folders are kept read-only one by one;
/// past that the search is incomplete (bwrap binds at most 512 paths per
/// spawn anyway).
const MAX_BLOCKED: usize = 512;

/// The log line of a read-write share kept read-only whole because its
/// protected paths could not all be found or enforced (`why`): the search
/// fails closed, and the config key that turns protection off is the way
/// to share such a folder writable.
pub fn read_only_instead(shown: &Path, why: &str) {
    tracing::warn!(
        "protected paths: {} is shared read-only: {why}; set \"protectedPaths\": false in the helper's config to share it writable without protection",
        shown.display()
    );
}

/// Finds the existing [`PROTECTED`] paths under `root` (a directory the
/// caller has already resolved). Symlinks are never followed, neither as
/// folders to descend into nor as matches (a symlink named `.bashrc` is
/// left out: what it points to is not protected by its name). The session
/// may change the tree between this search and the caller's use of it, so
/// the caller opens every returned path again with no symlink resolution
/// beneath the root, and skips what no longer resolves.
pub fn find(root: &Path) -> Found {
    find_within(root, MAX_ENTRIES)
}

/// [`find`] reading at most `max_entries` directory entries.
pub fn find_within(root: &Path, max_entries: usize) -> Found {
    let mut found = Found::default();
    let mut budget = max_entries;
    let mut queue: std::collections::VecDeque<(PathBuf, usize)> =
        std::collections::VecDeque::from([(PathBuf::new(), 0)]);
    while let Some((rel, depth)) = queue.pop_front() {
        for name in PROTECTED {
            let candidate = rel.join(name);
            match entry(root, &candidate) {
                Entry::Real => found.paths.push(candidate),
                Entry::Absent => {}
                Entry::Blocked(folder) => found.add_blocked(folder),
            }
        }
        git_extras(root, &rel, &mut found, &mut budget);
        if depth == MAX_DEPTH {
            continue;
        }
        let entries = match std::fs::read_dir(root.join(&rel)) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(_) => {
                found.add_blocked(rel);
                continue;
            }
        };
        for entry in entries {
            if budget == 0 {
                found.out_of_budget(max_entries);
                return found;
            }
            budget -= 1;
            // The entry's own type: a symlink to a folder is not a folder.
            let (kind, entry) = match entry.and_then(|e| Ok((e.file_type()?, e))) {
                Ok(pair) => pair,
                Err(e) => {
                    found.unreadable(&rel, &e);
                    continue;
                }
            };
            let name = entry.file_name();
            if kind.is_dir() && !skipped(&name) {
                queue.push_back((rel.join(name), depth + 1));
            }
        }
    }
    found
}

/// What git would also obey in the repository at `rel`, beyond the fixed
/// names: a `.git` that is a file (it names the git folder, and so the
/// hooks, git uses), a hooks folder inside the share that the protected
/// config names (`core.hooksPath`), and the hooks and config of each
/// submodule's git folder under `.git/modules`.
fn git_extras(root: &Path, rel: &Path, found: &mut Found, budget: &mut usize) {
    let dot_git = rel.join(".git");
    let Ok(meta) = std::fs::symlink_metadata(root.join(&dot_git)) else {
        return;
    };
    if meta.file_type().is_file() && is_real_entry(root, &dot_git, found) {
        found.paths.push(dot_git);
        return;
    }
    if !meta.file_type().is_dir() || !is_real_entry(root, &dot_git, found) {
        return;
    }
    if let Some(hooks) = hooks_path(root, &dot_git.join("config")) {
        let candidate = rel.join(hooks);
        if is_real_entry(root, &candidate, found) && !found.paths.contains(&candidate) {
            found.paths.push(candidate);
        }
    }
    submodule_git_dirs(root, &dot_git.join("modules"), 0, found, budget);
    linked_worktrees(root, &dot_git.join("worktrees"), found, budget);
}

/// The entries of `dir`, if it is a real folder under `root`, each counted
/// against the search's budget (the search is marked truncated where the
/// budget ran out).
fn listed(
    root: &Path,
    dir: &Path,
    found: &mut Found,
    budget: &mut usize,
) -> Vec<std::fs::DirEntry> {
    let mut out = Vec::new();
    if !is_real_entry(root, dir, found) {
        return out;
    }
    let entries = match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return out,
        Err(_) => {
            found.add_blocked(dir.to_path_buf());
            return out;
        }
    };
    for entry in entries {
        if *budget == 0 {
            found.incomplete.get_or_insert_with(|| {
                "the protected-path search ran out of its entry budget".into()
            });
            break;
        }
        *budget -= 1;
        match entry {
            Ok(e) => out.push(e),
            Err(e) => found.unreadable(dir, &e),
        }
    }
    out
}

/// Each linked worktree's administrative folder names the repository git
/// uses for it (`commondir`) and may hold its own config: the session must
/// not point them elsewhere.
fn linked_worktrees(root: &Path, dir: &Path, found: &mut Found, budget: &mut usize) {
    for entry in listed(root, dir, found, budget) {
        for name in ["commondir", "gitdir", "config.worktree"] {
            let candidate = dir.join(entry.file_name()).join(name);
            if is_real_entry(root, &candidate, found) {
                found.paths.push(candidate);
            }
        }
    }
}

/// The relative `core.hooksPath` a repository's config names, if any and
/// if it stays inside the repository (plain names only). Any `hooksPath`
/// key counts, whatever its section: finding one too many costs nothing.
fn hooks_path(root: &Path, config: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Neither a symlink nor a FIFO the session planted may hold the read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(root.join(config))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES).read_to_end(&mut bytes).ok()?;
    // Lossy: a stray non-UTF-8 byte elsewhere must not hide the key.
    let text = String::from_utf8_lossy(&bytes);
    text.lines().rev().find_map(|line| {
        // `[core] hooksPath = x` may share the section's line.
        let line = line.rsplit(']').next().unwrap_or(line);
        let (key, value) = line.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("hookspath") {
            return None;
        }
        let value = value.split(['#', ';']).next().unwrap_or_default();
        let value = value.trim().trim_matches('"');
        let path: PathBuf = Path::new(value)
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        let plain = !path.as_os_str().is_empty()
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        plain.then_some(path)
    })
}

/// A repository's config is read this far for `core.hooksPath`.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// How deep submodules' git folders are looked for below `.git/modules`
/// (a submodule's name may hold slashes, and submodules nest).
const MAX_MODULE_DEPTH: usize = 6;

/// Each git folder under `dir` (a `.git/modules` or a level of a
/// submodule's name inside one) has its hooks and config protected.
fn submodule_git_dirs(
    root: &Path,
    dir: &Path,
    depth: usize,
    found: &mut Found,
    budget: &mut usize,
) {
    if depth == MAX_MODULE_DEPTH {
        return;
    }
    for entry in listed(root, dir, found, budget) {
        if !entry.file_type().is_ok_and(|k| k.is_dir()) {
            continue;
        }
        let sub = dir.join(entry.file_name());
        if is_real_entry(root, &sub.join("HEAD"), found) {
            for name in ["hooks", "config"] {
                let candidate = sub.join(name);
                if is_real_entry(root, &candidate, found) {
                    found.paths.push(candidate);
                }
            }
            submodule_git_dirs(root, &sub.join("modules"), depth + 1, found, budget);
        } else {
            submodule_git_dirs(root, &sub, depth + 1, found, budget);
        }
    }
}

/// Folders not worth descending into: protected ones (already whole) and
/// dependency trees, which hold many folders and none of the user's own
/// start-up files.
fn skipped(name: &OsStr) -> bool {
    name == ".git" || name == "node_modules" || PROTECTED.iter().any(|p| OsStr::new(p) == name)
}

/// What a search finds at a path.
enum Entry {
    /// There, with no symlink on the way or at its end.
    Real,
    /// Not there, or a symlink is on the way.
    Absent,
    /// This folder (on the way) cannot be searched: the session may have
    /// taken its permissions away to hide what is inside.
    Blocked(PathBuf),
}

fn entry(root: &Path, rel: &Path) -> Entry {
    let mut at = root.to_path_buf();
    let mut walked = PathBuf::new();
    for part in rel.components() {
        let parent = walked.clone();
        at.push(part);
        walked.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.file_type().is_symlink() => {}
            Ok(_) => return Entry::Absent,
            Err(e) if gone(&e) => return Entry::Absent,
            Err(_) => return Entry::Blocked(parent),
        }
    }
    Entry::Real
}

/// `rel` exists under `root` with no symlink on the way or at its end. A
/// folder on the way the search cannot look into (a session can take the
/// permission from one of its own) is kept read-only whole instead: what
/// it hides is unknown.
fn is_real_entry(root: &Path, rel: &Path, found: &mut Found) -> bool {
    match entry(root, rel) {
        Entry::Real => true,
        Entry::Absent => false,
        Entry::Blocked(folder) => {
            found.add_blocked(folder);
            false
        }
    }
}

fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOENT | nix::libc::ENOTDIR)
    )
}

impl Found {
    /// A folder the search could not read (a session can make one of its
    /// own unreadable) is kept as it is, read-only as a whole: what it
    /// hides cannot then be changed either, and its permissions cannot be
    /// given back from inside. The share's root cannot be kept read-only
    /// that way on its own: the search is incomplete, and the whole share
    /// goes read-only.
    fn add_blocked(&mut self, folder: PathBuf) {
        if folder.as_os_str().is_empty() {
            self.incomplete
                .get_or_insert_with(|| "its folder could not be read".into());
        } else if self.blocked.contains(&folder) {
            // Reported again by another name under it.
        } else if self.blocked.len() >= MAX_BLOCKED {
            self.incomplete.get_or_insert_with(|| {
                format!("over {MAX_BLOCKED} folders in it could not be read")
            });
        } else {
            // At most MAX_BLOCKED times: the linear look costs little.
            if !self.paths.contains(&folder) {
                self.paths.push(folder.clone());
            }
            self.blocked.insert(folder);
        }
    }

    fn out_of_budget(&mut self, max_entries: usize) {
        self.incomplete.get_or_insert_with(|| {
            format!("the protected-path search stops at {max_entries} entries")
        });
    }

    /// An entry of `dir` that could not be read: what it is, and so what
    /// it hides, is unknown (unless it was just removed).
    fn unreadable(&mut self, dir: &Path, e: &std::io::Error) {
        if gone(e) {
            return;
        }
        self.incomplete
            .get_or_insert_with(|| format!("an entry in {:?} could not be read ({e})", dir));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Every one of `want` is among the paths found.
    fn assert_finds(got: &[PathBuf], want: &[&str]) {
        for w in want {
            assert!(got.contains(&PathBuf::from(w)), "{w} missing from {got:?}");
        }
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn finds_existing_protected_paths_at_each_depth() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(r, ".bashrc");
        touch(r, ".git/config");
        touch(r, ".git/hooks/pre-commit");
        touch(r, "repo/.git/config");
        touch(r, "a/b/c/.mcp.json");
        touch(r, "a/b/c/d/.mcp.json"); // below MAX_DEPTH
        touch(r, "src/main.rs");
        let f = find(r);
        let got: Vec<_> = f.paths.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                ".git/hooks",
                ".git/config",
                ".bashrc",
                "repo/.git/config",
                "a/b/c/.mcp.json"
            ]
        );
        assert!(f.incomplete.is_none());
    }

    #[test]
    fn git_folders_named_elsewhere_are_found() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // A worktree or submodule checkout: .git is a file naming the folder.
        touch(r, "wt/.git");
        // Submodules' own git folders, one with a slash in its name.
        touch(r, "repo/.git/config");
        touch(r, "repo/.git/modules/lib/HEAD");
        touch(r, "repo/.git/modules/lib/config");
        touch(r, "repo/.git/modules/lib/hooks/post-checkout");
        touch(r, "repo/.git/modules/vendor/x/HEAD");
        touch(r, "repo/.git/modules/vendor/x/config");
        // husky-style hooks named by the protected config.
        touch(r, "hp/.git/config");
        std::fs::write(
            r.join("hp/.git/config"),
            "[core]\n\thooksPath = tools/hooks\n",
        )
        .unwrap();
        touch(r, "hp/tools/hooks/pre-commit");
        // A linked worktree's administrative files.
        touch(r, "repo/.git/worktrees/wt1/commondir");
        touch(r, "repo/.git/worktrees/wt1/gitdir");
        assert_finds(
            &find(r).paths,
            &[
                "wt/.git",
                "repo/.git/config",
                "repo/.git/modules/lib/hooks",
                "repo/.git/modules/lib/config",
                "repo/.git/modules/vendor/x/config",
                "hp/.git/config",
                "hp/tools/hooks",
                "repo/.git/worktrees/wt1/commondir",
                "repo/.git/worktrees/wt1/gitdir",
            ],
        );
    }

    /// As a user, not root: root reads any folder, so nothing is hidden
    /// from it. Run as root, the test runs itself again as uid 65534.
    #[test]
    fn a_folder_made_unreadable_is_protected_whole() {
        if !nix::unistd::geteuid().is_root() {
            return unreadable_folders_inner();
        }
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "protected::tests::unreadable_folders_inner"])
            .args(["--ignored", "--test-threads", "1"])
            .env("TMPDIR", "/tmp")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{out:?}");
        assert!(
            text.contains("1 passed"),
            "the inner test did not run: {text}"
        );
    }

    #[test]
    #[ignore = "run as uid 65534 by a_folder_made_unreadable_is_protected_whole"]
    fn unreadable_folders_inner() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(r, "repo/.git/config");
        touch(r, "deep/a/.bashrc");
        touch(r, "cl/.claude/settings.json");
        let mode = |p: &str, m: u32| {
            std::fs::set_permissions(r.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        touch(r, "sub/.git/modules/m/hooks/post-checkout");
        mode("repo/.git", 0o000);
        mode("deep", 0o300); // searchable, not listable
        mode("cl/.claude", 0o600); // listable, not searchable
        mode("sub/.git/modules", 0o000);
        // Listable but not searchable: the search sees the module's folder
        // and cannot look into it.
        touch(r, "wt/.git/modules/m/HEAD");
        touch(r, "wt/.git/modules/m/hooks/post-checkout");
        mode("wt/.git/modules/m", 0o600);
        let got = find(r);
        // The share's root itself unreadable: nothing under it can be
        // vouched for, so the search is incomplete (the share goes
        // read-only whole).
        mode("", 0o000);
        let root_hidden = find(r);
        for p in [
            "",
            "repo/.git",
            "deep",
            "cl/.claude",
            "sub/.git/modules",
            "wt/.git/modules/m",
        ] {
            mode(p, 0o755);
        }
        assert_eq!(got.incomplete, None);
        assert_finds(
            &got.paths,
            &[
                "repo/.git",
                "deep",
                "cl/.claude",
                "sub/.git/modules",
                "wt/.git/modules/m",
            ],
        );
        assert!(root_hidden.incomplete.is_some(), "{root_hidden:?}");
    }

    #[test]
    fn hooks_path_is_read_as_git_writes_it() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (i, text) in [
            &b"[core] hooksPath = ./h # comment\n"[..],
            b"\xff\xfe[core]\n\thooksPath=\"h\"\n",
        ]
        .iter()
        .enumerate()
        {
            touch(r, &format!("r{i}/h/pre-commit"));
            touch(r, &format!("r{i}/.git/config"));
            std::fs::write(r.join(format!("r{i}/.git/config")), text).unwrap();
        }
        let got = find(r).paths;
        assert_finds(&got, &["r0/h", "r1/h"]);
    }

    #[test]
    fn a_hooks_path_leaving_the_repository_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(r, "hp/.git/config");
        std::fs::write(r.join("hp/.git/config"), "hooksPath = ../other\n").unwrap();
        touch(r, "other/pre-commit");
        assert_eq!(find(r).paths, [PathBuf::from("hp/.git/config")]);
    }

    #[test]
    fn symlinks_are_neither_matched_nor_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        touch(outside.path(), ".bashrc");
        touch(outside.path(), "x/.git/config");
        let r = d.path();
        std::os::unix::fs::symlink(outside.path().join(".bashrc"), r.join(".bashrc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), r.join("link")).unwrap();
        std::fs::create_dir(r.join(".git")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x/.git/config"), r.join(".git/config"))
            .unwrap();
        assert_eq!(find(r), Found::default());
    }

    #[test]
    fn a_huge_tree_stops_at_the_entry_budget() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let wide = r.join("wide");
        std::fs::create_dir(&wide).unwrap();
        for i in 0..MAX_ENTRIES + 10 {
            std::fs::File::create(wide.join(i.to_string())).unwrap();
        }
        touch(r, "wide2/deeper/.profile");
        let f = find(r);
        assert!(f.incomplete.is_some());
        // The same stop, with a smaller budget.
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for i in 0..20 {
            touch(r, &format!("d{i}/.bashrc"));
        }
        assert!(find_within(r, 10).incomplete.is_some());
        assert!(find_within(r, 100).incomplete.is_none());
    }
}
