//! The process-wide wasmtime engine and the clock that interrupts guests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

/// One epoch tick: how often a running guest checks its deadline, so a
/// hook that overruns is stopped at most this much after its deadline. A
/// tick wakes the ticker thread; 1 ms ticks cost 2-3% of end-to-end
/// throughput on a 2-core machine, 5 ms ticks wake it a fifth as often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bound on the wasm call stack; a deeper recursion traps instead of
/// growing further. Far above what an honest hook uses.
const MAX_WASM_STACK: usize = 512 * 1024;

/// Instance slots in the pooling allocator, over all modules and tenants.
/// Live instances are those running a call (at most one per worker thread)
/// plus each module's idle ones (at most one per worker thread that called
/// it), so with 2 worker threads this serves some 400 tenants, reloads
/// included. Past it, instantiation fails and that request gets 500. Each
/// slot reserves (not commits) about 4 GiB of address space.
const MAX_INSTANCES: u32 = 1000;

/// Linear memory kept mapped when a pooled slot is freed: reset by memset
/// instead of being unmapped and faulted in again. Covers a Rust guest's
/// stack and heap for ordinary JSON.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// How the engine is set up.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// The largest per-instance memory cap any module will have.
    pub max_memory_bytes: usize,
    /// Where compiled modules are cached between starts; None disables.
    pub cache_dir: Option<PathBuf>,
}

/// The engine every module is compiled with, plus its epoch ticker.
pub struct GuestEngine {
    engine: Engine,
    cache: Option<Cache>,
    /// Process that runs the ticker: after Pingora daemonises (fork), the
    /// child has no ticker thread and must start its own.
    ticker_pid: AtomicU32,
}

impl GuestEngine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(options: &EngineOptions) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        // Deadlines: a guest loop traps once the epoch passes its deadline.
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);

        // Pre-reserved instance slots: instantiation takes microseconds
        // instead of mapping fresh memory, and memory past the cap cannot be
        // had even if a limiter were bypassed.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(MAX_INSTANCES)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES)
            .max_memory_size(options.max_memory_bytes.max(1 << 20))
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            // Linux 6.7+: reset only the pages a guest dirtied, and keep them
            // mapped; elsewhere this quietly falls back to madvise.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let mut module_cache = None;
        if let Some(dir) = &options.cache_dir {
            // wasmtime's own cache: keyed by the module's hash and the
            // engine's settings and version, so a stale entry is never used.
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = Cache::new(cache_config)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("module cache in {}", dir.display()))?;
            config.cache(Some(cache.clone()));
            module_cache = Some(cache);
        }

        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        let guest_engine = Arc::new(GuestEngine {
            engine,
            cache: module_cache,
            ticker_pid: AtomicU32::new(0),
        });
        guest_engine
            .ensure_ticker()
            .context("starting the epoch ticker thread")?;
        Ok(guest_engine)
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiled-module cache hits so far (0 without a cache).
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::cache_hits)
    }

    /// Starts the ticker thread unless this process already runs one.
    pub fn ensure_ticker(&self) -> std::io::Result<()> {
        let pid = std::process::id();
        if self.ticker_pid.swap(pid, Ordering::SeqCst) == pid {
            return Ok(());
        }
        let engine = self.engine.clone();
        let spawned = thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            });
        if spawned.is_err() {
            // Not running after all: a later call may try again.
            self.ticker_pid.store(0, Ordering::SeqCst);
        }
        spawned.map(drop)
    }
}

/// A Pingora background service that makes sure the ticker runs in the
/// serving process (it starts after daemonisation).
pub struct EpochTicker(pub Arc<GuestEngine>);

#[async_trait]
impl BackgroundService for EpochTicker {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if let Err(e) = self.0.ensure_ticker() {
            // Without ticks no hook deadline holds: a looping guest would
            // hold a worker for ever. Better to stop than to serve so.
            log::error!("cannot start the epoch ticker thread: {e}; stopping");
            std::process::exit(1);
        }
    }
}
