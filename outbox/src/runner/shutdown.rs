//! Shutdown signals: Ctrl-C, SIGTERM, or a future the user gives, turned into
//! one watch channel that every part of the Runner can wait on.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// Whether shutdown was asked for.
pub(super) fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Completes once shutdown is requested (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Returns true when shutdown was requested before `delay` passed.
pub(super) async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = stopped(stop) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Ctrl-C or SIGTERM, whichever comes first.
pub(super) async fn default_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "outbox: cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "outbox: cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("outbox: Ctrl-C received"),
        () = term => info!("outbox: SIGTERM received"),
    }
}
