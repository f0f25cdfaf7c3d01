//! Draining before an upgrade or a graceful stop: once SIGQUIT (Pingora's
//! upgrade: the listening sockets go to a new process) or SIGTERM arrives,
//! each HTTP/1.1 response says `Connection: close`. Clients then open
//! their next connection to whichever process listens, instead of sending
//! a request down an idle keep-alive connection at the moment the old
//! process closes it, which would fail the request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Whether this process is on its way out.
#[derive(Default, Clone)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether connections should close after their current response.
    pub(crate) fn has_begun(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sets [`Draining`] on SIGQUIT or SIGTERM; Pingora's own handlers of
/// those signals run as before.
pub(crate) struct DrainOnSignal(pub Draining);

#[async_trait]
impl BackgroundService for DrainOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut terminate)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()))
        else {
            log::warn!("no draining before upgrades: cannot watch SIGQUIT and SIGTERM");
            return;
        };
        let why = tokio::select! {
            _ = quit.recv() => "SIGQUIT (upgrade)",
            _ = terminate.recv() => "SIGTERM",
            _ = shutdown.changed() => "shutdown",
        };
        log::info!("{why}: draining, each connection closes after its current response");
        self.0.start();
    }
}
