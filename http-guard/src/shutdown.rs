//! The servers' stop signal: SIGINT or SIGTERM.

use std::future::Future;

/// Resolves on SIGINT or SIGTERM. SIGTERM is listened for from the moment this is called,
/// not from the first poll: a server calls it before it prints where it listens, so a
/// supervisor's (or a script's) SIGTERM right after that line is a graceful stop, never the
/// default action that kills the process.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            None
        }
    };
    async move {
        let ctrl_c = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT"),
            _ = term => tracing::info!("SIGTERM"),
        }
    }
}
