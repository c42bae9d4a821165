//! The host backend's launch: no isolation at all, so guest paths in the
//! spawn are translated into host paths (never out of the mount they name)
//! and the process runs as the user, in the host's path space.

use std::path::{Path, PathBuf};

use cowork_backend::agent::{agent_binary, prepend_path};
use cowork_backend::args::{translate_args, translate_env};
use cowork_backend::paths::SessionPaths;
use cowork_backend::session_data::TMP_DIR;
use cowork_backend::spawn_env::session_env;
use cowork_backend::{BackendError, Result, SpawnRequest};

use crate::process::{Launch, SignalRoute};

fn program(sp: &SessionPaths, command: &str) -> Result<PathBuf> {
    Ok(sp
        .translate(command)?
        .unwrap_or_else(|| PathBuf::from(command)))
}

fn cwd(sp: &SessionPaths, cwd: Option<&str>) -> Result<PathBuf> {
    let dir = match cwd {
        Some(c) if !c.is_empty() => match sp.translate_cwd(c)? {
            Some(p) => p,
            None => PathBuf::from(c),
        },
        _ => sp
            .working_mount()
            .map(|(_, m)| m.host.clone())
            .unwrap_or_else(|| sp.dir.to_path_buf()),
    };
    if !dir.is_dir() {
        return Err(BackendError::PathNotAllowed {
            path: cwd.unwrap_or_default().to_string(),
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    Ok(dir)
}

pub fn launch(
    sp: &SessionPaths,
    req: &SpawnRequest,
    mut base: Vec<(String, String)>,
    token: Option<&str>,
    sdk: Option<&Path>,
) -> Result<Launch> {
    if req.allowed_domains.is_some() {
        tracing::warn!(session = %req.name, "host backend cannot enforce allowedDomains: the session has the user's full network access");
    }
    let agent = agent_binary(&req.command, sdk)?;
    let program = match agent {
        Some(bin) => bin.to_path_buf(),
        None => program(sp, &req.command)?,
    };
    if let Some(dir) = agent.and_then(Path::parent) {
        prepend_path(&mut base, dir);
    }
    let args = translate_args(sp, &req.args)?;
    let cwd = cwd(sp, req.cwd.as_deref())?;
    base.push((
        "TMPDIR".into(),
        sp.dir.join(TMP_DIR).to_string_lossy().into_owned(),
    ));
    let mut env = session_env(base, &req.env, token);
    translate_env(sp, &mut env)?;
    Ok(Launch {
        id: req.id.clone(),
        session: req.name.clone(),
        program,
        args: args.into_iter().map(Into::into).collect(),
        env: env.into_iter().collect(),
        cwd,
        signals: SignalRoute::Group,
        exit_record: None,
        guard: None,
        pass_fds: Vec::new(),
    })
}
