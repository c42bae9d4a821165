//! The socket server: accept loop, signals, and a clean exit.

pub mod connection;
pub mod socket;

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::dispatch::Helper;
pub use socket::{bind, BindError, BoundSocket};

/// How long a clean exit waits for the backend to stop its sessions.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Serves until SIGTERM, SIGINT or SIGHUP, then stops the backend and
/// removes the socket.
pub async fn run(helper: Helper, socket: BoundSocket) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(
        backend = helper.backend.name(),
        "listening on {}",
        socket.path.display()
    );
    let why = tokio::select! {
        _ = accept_loop(helper.clone(), &socket.listener) => "the listener failing",
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    };
    tracing::info!("received {why}; stopping");
    shutdown(&helper, &socket).await;
    Ok(())
}

/// Accepts connections for ever, each served in its own task.
pub async fn accept_loop(helper: Helper, listener: &tokio::net::UnixListener) {
    let mut conn = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                conn += 1;
                tokio::spawn(connection::serve(helper.clone(), stream, conn));
            }
            Err(e) => {
                // Out of descriptors, usually: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn shutdown(helper: &Helper, socket: &BoundSocket) {
    socket.cleanup();
    match tokio::time::timeout(STOP_LIMIT, helper.backend.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("stopping the backend failed: {e}"),
        Err(_) => tracing::warn!("the backend did not stop within {}s", STOP_LIMIT.as_secs()),
    }
}
