//! Shutdown signals.

/// Completes on the first SIGINT or SIGTERM, and logs which.
pub async fn signal() {
    // Awaited outside the macro: a disabled level skips its arguments.
    let name = received().await;
    tracing::info!("received {name}, shutting down");
}

/// Completes on the first SIGINT or SIGTERM, with its name; logs nothing.
/// Every caller sees the signal.
pub async fn received() -> &'static str {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
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
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "sigint",
        () = term => "sigterm",
    }
}
