//! Keeps the wasm layer's epoch ticker running in the serving process.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use wasm_runtime::GuestEngine;

/// A Pingora background service that makes sure the ticker runs in the
/// serving process (it starts after daemonisation).
pub(crate) struct EpochTicker(pub(crate) Arc<GuestEngine>);

#[async_trait]
impl BackgroundService for EpochTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Err(e) = self.0.ensure_ticker() {
            // Without ticks no hook deadline holds: a looping guest would
            // hold a worker for ever. Better to stop than to serve so.
            log::error!("cannot start the epoch ticker thread: {e}; stopping");
            std::process::exit(1);
        }
        // The ticker is a thread of its own; the service lives as long as
        // the server, so Pingora does not report it as ended.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    }
}
