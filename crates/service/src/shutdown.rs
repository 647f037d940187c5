//! Shutdown signals.
//!
//! One listener per process: [`listen`] installs the SIGINT and SIGTERM
//! handlers and records the first signal; every caller of [`signal`] or
//! [`received`] sees it, even one that starts waiting after it came.

use std::sync::OnceLock;

use tokio::sync::watch;

/// The first SIGINT or SIGTERM, once it came.
static RECEIVED: OnceLock<watch::Sender<Option<&'static str>>> = OnceLock::new();

/// Starts listening for SIGINT and SIGTERM, once per process (later calls
/// only subscribe). Call it inside the runtime, before anything may want
/// to see the signal: the handlers are installed when it returns, and
/// from then on neither signal terminates the process by itself.
///
/// # Panics
/// Outside a Tokio runtime.
pub fn listen() -> watch::Receiver<Option<&'static str>> {
    RECEIVED
        .get_or_init(|| {
            let (tx, _) = watch::channel(None);
            let first = first_signal();
            let sender = tx.clone();
            tokio::spawn(async move {
                let name = first.await;
                sender.send_replace(Some(name));
            });
            tx
        })
        .subscribe()
}

/// Completes on the first SIGINT or SIGTERM, and logs which.
pub async fn signal() {
    // Awaited outside the macro: a disabled level skips its arguments.
    let name = received().await;
    tracing::info!("received {name}, shutting down");
}

/// Completes on the first SIGINT or SIGTERM (also one that came before
/// the call, once [`listen`] ran), with its name; logs nothing.
pub async fn received() -> &'static str {
    let mut rx = listen();
    let seen = rx.wait_for(Option::is_some).await.map(|name| *name);
    match seen {
        Ok(name) => name.unwrap_or("signal"),
        // The sender lives in a static: never dropped.
        Err(_) => std::future::pending().await,
    }
}

/// Installs the handlers now and completes on the first signal.
fn first_signal() -> impl std::future::Future<Output = &'static str> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            let recv = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = recv(int, "sigint") => "sigint",
                () = recv(term, "sigterm") => "sigterm",
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
            "sigint"
        }
    }
}
