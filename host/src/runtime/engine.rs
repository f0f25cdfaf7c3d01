//! The process-wide wasmtime engine and the clock that interrupts guests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use wasmtime::{Config, Engine};

/// One epoch tick; hook deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Bound on the wasm call stack; a deeper recursion traps instead of
/// growing further. Far above what an honest hook uses.
const MAX_WASM_STACK: usize = 512 * 1024;

/// The engine every module is compiled with, plus its epoch ticker.
pub struct GuestEngine {
    engine: Engine,
    /// Process that runs the ticker: after Pingora daemonises (fork), the
    /// child has no ticker thread and must start its own.
    ticker_pid: AtomicU32,
}

impl GuestEngine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        // Deadlines: a guest loop traps once the epoch passes its deadline.
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        let guest_engine = Arc::new(GuestEngine {
            engine,
            ticker_pid: AtomicU32::new(0),
        });
        guest_engine.ensure_ticker();
        Ok(guest_engine)
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts the ticker thread unless this process already runs one.
    pub fn ensure_ticker(&self) {
        let pid = std::process::id();
        if self.ticker_pid.swap(pid, Ordering::SeqCst) == pid {
            return;
        }
        let engine = self.engine.clone();
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            })
            .expect("spawning the epoch thread");
    }
}

/// A Pingora background service that makes sure the ticker runs in the
/// serving process (it starts after daemonisation).
pub struct EpochTicker(pub Arc<GuestEngine>);

#[async_trait]
impl BackgroundService for EpochTicker {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.ensure_ticker();
    }
}
