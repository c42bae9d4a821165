//! Host folders in the guest: each exported over the VM's one virtio-fs
//! device (one share per session, folder and mode, showing the session's
//! guest user as the owner of its files) and mounted by the agent where
//! the session expects it. A session's shares go when it goes idle
//! ([`crate::sessions`]); the SDK's share serves every session read-only.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cowork_backend::api::{MountMode, MountSpec};
use cowork_backend::paths::resolve_host_path;
use cowork_backend::protected::Protection;
use cowork_backend::{BackendError, Result};
use cowork_guest::wire::HostMsg;
use cowork_vmm::devices::virtio::fs::{Protected, TAG as FS_TAG};

use crate::agent_link::{AgentLink, Reply};
use crate::lifecycle::State;
use crate::{agent_answer, unexpected, KvmBackend};

/// Whose a share is: a session's (its files shown as its user's), or every
/// session's (the SDK).
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Session(&'a str),
    All,
}

impl KvmBackend {
    /// The guest user a session's processes run as, asked of the agent once
    /// per VM.
    pub(crate) async fn session_user(&self, link: &AgentLink, session: &str) -> Result<(u32, u32)> {
        if let Some(u) = self.lock().sessions.get(session).and_then(|s| s.user) {
            return Ok(u);
        }
        let name = session.to_string();
        let answer = link
            .request(|req| HostMsg::SessionUser { req, session: name })
            .await;
        let user = match agent_answer("session user", answer)? {
            Reply::Json(bytes) => {
                #[derive(serde::Deserialize)]
                struct User {
                    uid: u32,
                    gid: u32,
                }
                let u: User = serde_json::from_slice(&bytes)
                    .map_err(|e| BackendError::invalid("session user", e.to_string()))?;
                (u.uid, u.gid)
            }
            other => return Err(unexpected("session user", other)),
        };
        self.lock().sessions.get_mut(session).user = Some(user);
        Ok(user)
    }

    /// Exports a mount's host folder (checked as on the other backends)
    /// and has the agent mount it at `/sessions/<session>/mnt/<name>`.
    pub(crate) async fn share(
        &self,
        link: &AgentLink,
        session: &str,
        name: &str,
        spec: &MountSpec,
    ) -> Result<String> {
        cowork_backend::session_data::validate_name("mount name", name)?;
        let source = resolve_host_path(&self.cfg.home, &spec.path)?;
        // Checked, and made if missing, one component at a time with no
        // symlink followed (the same resolution as the bwrap backend's);
        // export opens it again the same way.
        let (canon, _) = cowork_backend::resolve::open_mount_source(&self.cfg.home, &source, true)?;
        let guest = format!("/sessions/{session}/mnt/{name}");
        let ro = spec.mode == Some(MountMode::Ro);
        self.export(link, Owner::Session(session), canon, ro, &guest)
            .await?;
        Ok(guest)
    }

    /// Exports `dir` (once per owner, folder and mode) and has the agent
    /// mount it at `guest`, replacing what was mounted there.
    pub(crate) async fn export(
        &self,
        link: &AgentLink,
        owner: Owner<'_>,
        dir: PathBuf,
        ro: bool,
        guest: &str,
    ) -> Result<()> {
        let _one_at_a_time = self.share_ops.lock().await;
        let user = match owner {
            Owner::Session(s) => Some(self.session_user(link, s).await?),
            Owner::All => None,
        };
        let key = (dir.clone(), ro);
        let (shares, existing, mounted) = {
            let mut st = self.lock();
            let shares = st.shares.clone().ok_or(BackendError::NotRunning)?;
            let (existing, mounted) = match owner {
                Owner::Session(s) => {
                    let e = st.sessions.get_mut(s);
                    (e.exported.get(&key).cloned(), e.mounts.get(guest).cloned())
                }
                Owner::All => (
                    st.common_shares.get(&key).cloned(),
                    st.common_mounts.get(guest).cloned(),
                ),
            };
            (shares, existing, mounted)
        };
        let share = match existing {
            Some(s) => s,
            None => {
                // The folder is opened once, beneath the home with no
                // symlink on the way, and the file server imports that very
                // folder through the descriptor ("/." makes the open follow
                // the descriptor's magic link, which names the folder
                // itself, not a path): a symlink a session plants after
                // the checks above changes nothing.
                let (_, root) =
                    cowork_backend::resolve::open_mount_source(&self.cfg.home, &dir, false)?;
                let opened = PathBuf::from(format!("/proc/self/fd/{}/.", root.as_raw_fd()));
                // A share whose protected paths cannot all be taken is
                // exported read-only whole (the search fails closed).
                let (ro, protected) = match self.protected_in(&opened, &dir, ro).await? {
                    Some(p) => (ro, p),
                    None => (true, Protected::default()),
                };
                let s = shares
                    .add_protected(&opened, ro, user, protected)
                    .map_err(|e| {
                        BackendError::invalid("share", format!("{}: {e}", dir.display()))
                    })?;
                drop(root);
                let mut st = self.lock();
                match owner {
                    Owner::Session(name) => {
                        st.sessions.get_mut(name).exported.insert(key, s.clone());
                    }
                    Owner::All => {
                        st.common_shares.insert(key, s.clone());
                    }
                }
                s
            }
        };
        if mounted.as_deref() == Some(share.as_str()) {
            return Ok(());
        }
        if mounted.is_some() {
            let path = guest.to_string();
            let _ = link.request(|req| HostMsg::Unmount { req, path }).await;
        }
        let path = guest.to_string();
        let subdir = Some(share.clone());
        let answer = link
            .request(|req| HostMsg::Mount {
                req,
                tag: FS_TAG.into(),
                subdir,
                path,
                read_only: ro,
            })
            .await;
        match agent_answer("share", answer)? {
            Reply::Done => {
                let mut st = self.lock();
                match owner {
                    Owner::Session(s) => {
                        st.sessions
                            .get_mut(s)
                            .mounts
                            .insert(guest.to_string(), share);
                    }
                    Owner::All => {
                        st.common_mounts.insert(guest.to_string(), share);
                    }
                }
                Ok(())
            }
            other => Err(unexpected("share", other)),
        }
    }
}

impl KvmBackend {
    /// What the file server keeps from the guest in a new share of `dir`:
    /// the protected paths there now, in a read-write share, unless the
    /// config turned protection off; `None` when they cannot all be taken.
    async fn protected_in(
        &self,
        dir: &std::path::Path,
        shown: &std::path::Path,
        ro: bool,
    ) -> Result<Option<Protected>> {
        if ro || self.cfg.protection == Protection::Off {
            return Ok(Some(Protected::default()));
        }
        let (dir, shown) = (dir.to_path_buf(), shown.to_path_buf());
        tokio::task::spawn_blocking(move || crate::protected_ids::take(&dir, &shown))
            .await
            .map_err(|e| BackendError::invalid("share", format!("protected paths: {e}")))
    }
}

/// Ends idle sessions (no spawn under way, no running process): every
/// process left running as the session's user is killed in the guest,
/// then its folders are unmounted there and unexported from the device.
/// A folder the guest could not unmount stays exported (and the session's):
/// removing it would free its device index for another session's folder
/// while the guest still reaches the old one through it. Woken by every
/// process end.
pub(crate) async fn release_idle(state: &Arc<Mutex<State>>, share_ops: &tokio::sync::Mutex<()>) {
    let _one_at_a_time = share_ops.lock().await;
    let (link, shares, released) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(link), Some(shares)) = (st.link.clone(), st.shares.clone()) else {
            return;
        };
        let running = |id: &str| link.status(id).is_some_and(|s| s.running);
        let released = st.sessions.release_idle(running);
        (link, shares, released)
    };
    for r in released {
        let session = r.session.clone();
        let ended = agent_answer(
            "end session",
            link.request(|req| HostMsg::EndSession {
                req,
                session: session.clone(),
            })
            .await,
        );
        let mut stuck = ended
            .as_ref()
            .err()
            .map(|e| format!("ending its processes: {e}"));
        for path in r.mounts.keys() {
            let p = path.clone();
            if let Err(e) = agent_answer(
                "unmount",
                link.request(|req| HostMsg::Unmount { req, path: p }).await,
            ) {
                stuck.get_or_insert(format!("unmounting {path}: {e}"));
            }
        }
        if let Some(why) = stuck {
            tracing::warn!(session = %session, "session idle, but its folders stay exported: {why}");
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sessions
                .restore(r);
            continue;
        }
        let names = r.shares();
        for name in &names {
            shares.remove(name);
        }
        tracing::info!(session = %session, "session idle: {} share(s) unexported", names.len());
    }
}
