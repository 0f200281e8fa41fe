//! Stopping on SIGINT/SIGTERM.
//!
//! The first signal asks the tool to stop: it stops consuming, finishes and acknowledges
//! what it has in hand, and closes its connection. A second signal exits at once (code 130),
//! for the operator whose broker is gone and who does not want to wait.

use tokio::sync::watch;

/// A handle that resolves when a stop was asked for. Clone it into every task that must stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// Install the SIGINT/SIGTERM handlers and return the handle.
    pub fn install() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(false);
        let signalled = tx.clone();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                seen += 1;
                if seen > 1 {
                    tracing::warn!(signal = name, "second signal: exiting at once");
                    std::process::exit(130);
                }
                tracing::info!(signal = name, "stopping: finishing the message in hand");
                let _ = signalled.send(true);
            }
        });
        Ok(Shutdown { rx, tx })
    }

    /// A handle that never fires, and its trigger (for tests and embedding).
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx.clone(), Shutdown { rx, tx })
    }

    /// Ask every holder to stop, as a signal does (a tool that saw its work is over: its
    /// reader went away).
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }

    /// Has a stop been asked for?
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Wait until a stop is asked for. (If the trigger is dropped, this waits forever.)
    pub async fn requested(&mut self) {
        if self.rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
