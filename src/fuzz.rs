//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! test that replays their seeds and past crashes
//! (`tests/fuzz_regressions.rs`). Each takes bytes from an untrusted
//! peer and checks what must hold whatever they are, beyond not panicking.

use cowork_backend::api::{CreateRequest, MountPathRequest, SpawnRequest, StartRequest};
use cowork_backend::paths::{
    join_within, parse_guest_path, resolve_host_path, validate_mount_source, HostMount,
    SessionPaths,
};
use cowork_guest::wire::{self, GuestMsg, HostMsg};

use crate::protocol::{parse_request, read_frame};

fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()
        .map(|rt| rt.block_on(f))
}

/// The helper socket: `data` as a stream of frames, each a request whose
/// params are then read as every typed request that has them.
pub fn helper_requests(data: &[u8]) {
    block_on(async {
        let mut r = data;
        while let Ok(Some(body)) = read_frame(&mut r).await {
            let Ok(req) = parse_request(&body) else {
                continue;
            };
            assert!(!req.method.is_empty(), "a request always has a method");
            assert!(req.params.is_object(), "params are always an object");
            let p = req.params;
            let _ = serde_json::from_value::<SpawnRequest>(p.clone());
            let _ = serde_json::from_value::<StartRequest>(p.clone());
            let _ = serde_json::from_value::<CreateRequest>(p.clone());
            let _ = serde_json::from_value::<MountPathRequest>(p);
        }
    });
}

/// The host↔guest channel, both directions: `data` as a stream of frames
/// read the way the agent reads the host's and the host the agent's.
pub fn guest_wire(data: &[u8]) {
    block_on(async {
        let mut r = data;
        while let Ok(Some(frame)) = wire::read_frame(&mut r).await {
            let Ok(body) = frame else { break };
            assert!(
                body.len() <= wire::MAX_FRAME,
                "frames stay within the limit"
            );
            if let Ok((_, payload)) = wire::decode::<HostMsg>(&body) {
                assert!(payload.len() < body.len());
            }
            if let Ok((msg, payload)) = wire::decode::<GuestMsg>(&body) {
                // What decodes re-encodes: the host forwards payloads as is.
                if let Ok(again) = wire::encode(&msg, payload) {
                    assert!(wire::decode::<GuestMsg>(&again[4..]).is_ok());
                }
            }
        }
    });
}

/// Guest paths and mount sources: the first line of `data` is a path, the
/// second a mount name. Whatever a path translates to stays inside the
/// session's directory or the named mount's folder.
pub fn guest_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let path = lines.next().unwrap_or("");
    let mount = lines.next().unwrap_or("proj");
    let (Ok(home), Ok(data_dir)) = (tempfile::tempdir(), tempfile::tempdir()) else {
        return;
    };
    let share = home.path().join("share");
    let _ = std::fs::create_dir(&share);
    let mounts = vec![(
        mount.to_string(),
        HostMount {
            host: share.clone(),
            mode: Default::default(),
        },
    )];
    let sp = SessionPaths {
        name: "fuzz",
        dir: data_dir.path(),
        mounts: &mounts,
    };
    let _ = parse_guest_path(path);
    for translated in [sp.translate(path), sp.translate_cwd(path)] {
        if let Ok(Some(host)) = translated {
            assert!(
                host.starts_with(data_dir.path()) || host.starts_with(&share),
                "{path:?} escaped to {}",
                host.display()
            );
        }
    }
    if let Some(joined) = join_within(&share, path) {
        assert!(
            joined.starts_with(&share),
            "{path:?} joined out of the base"
        );
    }
    let Ok(canon_home) = home.path().canonicalize() else {
        return;
    };
    let source = resolve_host_path(home.path(), path).unwrap_or_else(|_| path.into());
    if let Ok(source) = validate_mount_source(home.path(), &source) {
        assert!(
            source.starts_with(&canon_home),
            "mount source {path:?} accepted outside home"
        );
    }
}
