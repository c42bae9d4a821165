//! Which process belongs to which session, and what each session holds in
//! the running VM: its guest user and its mounted shares. A session is
//! active while a spawn for it is under way or one of its processes runs;
//! its directories are then never deleted or pruned, and once it is idle
//! its shares are unexported (the guest no longer reaches those folders).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// One session's state for the VM's life.
#[derive(Debug, Default)]
pub struct Session {
    /// The guest user its processes run as (from the agent).
    pub user: Option<(u32, u32)>,
    /// Spawns under way (their processes may not be running yet).
    pending: usize,
    /// Its processes, running or ended.
    procs: HashSet<String>,
    /// Guest path → share name, what is mounted for it.
    pub mounts: BTreeMap<String, String>,
    /// (host folder, read-only) → share name, what is exported for it.
    pub exported: HashMap<(PathBuf, bool), String>,
}

/// What an idle session gives back: the guest paths to unmount and the
/// shares to unexport (given back with [`Sessions::restore`] when the
/// guest could not unmount them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub session: String,
    /// Guest path → share.
    pub mounts: BTreeMap<String, String>,
    /// (host folder, read-only) → share.
    pub exported: Vec<((PathBuf, bool), String)>,
}

impl Released {
    /// The shares to unexport, each once.
    pub fn shares(&self) -> Vec<String> {
        let mut v: Vec<String> = self.exported.iter().map(|(_, s)| s.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_name: HashMap<String, Session>,
    process: HashMap<String, String>,
}

impl Sessions {
    /// A spawn of `id` in `session` begins: the session is active from now.
    pub fn begin_spawn(&mut self, session: &str, id: &str) {
        let s = self.by_name.entry(session.to_string()).or_default();
        s.pending += 1;
        s.procs.insert(id.to_string());
        self.process.insert(id.to_string(), session.to_string());
    }

    /// The spawn of `id` is over; a failed one leaves no trace of `id`.
    pub fn end_spawn(&mut self, session: &str, id: &str, started: bool) {
        if let Some(s) = self.by_name.get_mut(session) {
            s.pending = s.pending.saturating_sub(1);
            if !started {
                s.procs.remove(id);
            }
        }
        if !started {
            self.process.remove(id);
        }
    }

    pub fn session_of(&self, id: &str) -> Option<&str> {
        self.process.get(id).map(String::as_str)
    }

    pub fn get(&self, session: &str) -> Option<&Session> {
        self.by_name.get(session)
    }

    pub fn get_mut(&mut self, session: &str) -> &mut Session {
        self.by_name.entry(session.to_string()).or_default()
    }

    fn is_active(s: &Session, running: &impl Fn(&str) -> bool) -> bool {
        s.pending > 0 || s.procs.iter().any(|id| running(id))
    }

    /// The sessions whose directories are in use, sorted.
    pub fn active(&self, running: impl Fn(&str) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, s)| Self::is_active(s, &running))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Takes what idle sessions hold (their mounts and shares) and forgets
    /// their ended processes; the caller unmounts and unexports it.
    pub fn release_idle(&mut self, running: impl Fn(&str) -> bool) -> Vec<Released> {
        let mut out = Vec::new();
        for (name, s) in &mut self.by_name {
            if Self::is_active(s, &running) {
                continue;
            }
            for id in s.procs.drain() {
                self.process.remove(&id);
            }
            if s.mounts.is_empty() && s.exported.is_empty() {
                continue;
            }
            let mut exported: Vec<_> = s.exported.drain().collect();
            exported.sort();
            out.push(Released {
                session: name.clone(),
                mounts: std::mem::take(&mut s.mounts),
                exported,
            });
        }
        out.sort_by(|a, b| a.session.cmp(&b.session));
        out
    }

    /// Takes back what could not be released (the guest still has it
    /// mounted): it stays exported and the session's own.
    pub fn restore(&mut self, r: Released) {
        let s = self.get_mut(&r.session);
        s.mounts.extend(r.mounts);
        s.exported.extend(r.exported);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(s: &mut Sessions, session: &str, path: &str, share: &str) {
        let e = s.get_mut(session);
        e.mounts.insert(path.into(), share.into());
        e.exported
            .insert((PathBuf::from(format!("/h/{share}")), false), share.into());
    }

    #[test]
    fn a_session_is_active_from_spawn_to_its_last_exit() {
        let mut s = Sessions::default();
        s.begin_spawn("a", "p1");
        assert_eq!(s.active(|_| false), ["a"], "pending counts as active");
        s.end_spawn("a", "p1", true);
        assert_eq!(s.active(|id| id == "p1"), ["a"]);
        assert!(s.active(|_| false).is_empty());
        assert_eq!(s.session_of("p1"), Some("a"));
    }

    #[test]
    fn a_failed_spawn_leaves_nothing() {
        let mut s = Sessions::default();
        s.begin_spawn("a", "p1");
        s.end_spawn("a", "p1", false);
        assert_eq!(s.session_of("p1"), None);
        assert!(s.active(|_| true).is_empty());
    }

    #[test]
    fn only_idle_sessions_give_back_their_shares() {
        let mut s = Sessions::default();
        s.begin_spawn("a", "pa");
        s.end_spawn("a", "pa", true);
        s.begin_spawn("b", "pb");
        s.end_spawn("b", "pb", true);
        mounted(&mut s, "a", "/sessions/a/mnt/x", "s1");
        mounted(&mut s, "b", "/sessions/b/mnt/y", "s2");
        let released = s.release_idle(|id| id == "pb");
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].session, "a");
        assert_eq!(
            released[0].mounts.keys().collect::<Vec<_>>(),
            ["/sessions/a/mnt/x"]
        );
        assert_eq!(released[0].shares(), ["s1"]);
        assert!(
            s.release_idle(|id| id == "pb").is_empty(),
            "given back once"
        );
        assert_eq!(s.session_of("pa"), None);
        assert_eq!(s.session_of("pb"), Some("b"));
    }

    #[test]
    fn what_could_not_be_released_is_kept() {
        let mut s = Sessions::default();
        s.begin_spawn("a", "pa");
        s.end_spawn("a", "pa", true);
        mounted(&mut s, "a", "/sessions/a/mnt/x", "s1");
        let mut released = s.release_idle(|_| false);
        s.restore(released.remove(0));
        let again = s.release_idle(|_| false);
        assert_eq!(again[0].shares(), ["s1"], "still the session's to release");
    }

    #[test]
    fn a_spawn_under_way_keeps_the_shares() {
        let mut s = Sessions::default();
        s.begin_spawn("a", "p1");
        mounted(&mut s, "a", "/sessions/a/mnt/x", "s1");
        assert!(s.release_idle(|_| false).is_empty());
    }
}
