//! The lifecycle signals every scalestack process obeys.
//!
//! A process stops gracefully on SIGINT (Ctrl-C) or SIGTERM. A process started
//! by `scalestack up` also stops when its supervisor is gone, even if the
//! supervisor was killed with SIGKILL and could send nothing: the supervisor
//! holds the write end of the child's stdin, and end-of-file on stdin means
//! the parent has exited.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Environment variable set by the supervisor on its children.
pub const SUPERVISED_ENV: &str = "SCALESTACK_SUPERVISED";

/// Resolves when the process should shut down: on SIGINT, on SIGTERM, or (for
/// a supervised child) when the supervisor exits.
pub async fn shutdown_signal() {
    let parent_gone = if std::env::var_os(SUPERVISED_ENV).is_some() {
        Some(watch_parent())
    } else {
        None
    };
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT can be handled");
    let parent = async {
        match parent_gone {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        () = parent => tracing::warn!("the supervisor is gone; shutting down"),
    }
}

/// Reads stdin on a plain thread until end-of-file. (A tokio stdin read would
/// occupy a blocking-pool thread that runtime shutdown waits for forever.)
fn watch_parent() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The pipe may be non-blocking (the parent's runtime can set
                    // that on the shared description): poll it gently.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stdin to watch the supervisor");
                        return;
                    }
                }
            }
            let _ = tx.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch the supervisor; a killed supervisor may leave this process running");
    }
    rx
}
