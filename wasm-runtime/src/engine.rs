//! The process-wide wasmtime engine and the clock that interrupts guests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

/// The epoch tick while every guest call is short: a call's first deadline
/// check (and first yield) comes at most this long after it starts. Nearly
/// every call ends long before, so the ticker mostly sleeps.
const IDLE_TICK: Duration = Duration::from_millis(5);

/// The epoch tick while some guest call runs long (it met a tick): the
/// slice after which a long call gives its worker back, so the longest a
/// request waits behind a busy guest on its worker. Kept up for
/// [`SLICING_HOLD`] after the last long call, so a call that yielded and
/// waits for its next turn is still sliced finely when it resumes.
const SLICE_TICK: Duration = Duration::from_micros(250);

/// Running time before a call first yields. An honest hook takes
/// microseconds and so never yields (it would wait behind every ready
/// request); a call past this gives its worker back at every tick. It is
/// also the shortest deadline that can be enforced (`hook_timeout_ms` is at
/// least 1 ms).
pub(super) const YIELD_AFTER: Duration = Duration::from_micros(500);

/// How long the ticker stays at [`SLICE_TICK`] after a long call was seen.
const SLICING_HOLD: Duration = Duration::from_millis(50);

/// Raised by the deadline check of a call that has run past
/// [`YIELD_AFTER`]; the engine's ticker reads it to choose its period. The
/// fast path never touches it.
#[derive(Clone, Default)]
pub struct LongCallSignal(Arc<AtomicBool>);

impl LongCallSignal {
    /// Some guest call is running long.
    pub(super) fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether one was, since the last look.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Bound on the wasm call stack; a deeper recursion traps instead of
/// growing further. Far above what an honest hook uses.
const MAX_WASM_STACK: usize = 512 * 1024;

/// A call's fiber stack: the wasm stack bound plus room for host frames.
const ASYNC_STACK_SIZE: usize = MAX_WASM_STACK + 256 * 1024;

/// Instance slots in the pooling allocator, over all modules and tenants.
/// Live instances are those running a call (at most a tenant's
/// `max_concurrent_calls`) plus each module's idle ones (a handful), so
/// this serves some hundreds of tenants, reloads included. Past it,
/// instantiation fails and that request gets 500. Each slot reserves (not
/// commits) about 4 GiB of address space, and one fiber stack, which a
/// store keeps for its later calls.
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
    /// Instances are replaced after a few calls (`--instance-reuse` at most
    /// [`FEW_CALLS`]). Then guest code checks every memory access itself
    /// instead of relying on guard pages: a little dearer per access, but
    /// an instance's memory then needs no page protection changed when it
    /// grows or when its slot is reset, which costs a system call and a
    /// TLB flush on every instance.
    pub fresh_instances: bool,
}

/// An instance reuse bound this low makes instances short-lived enough to
/// prefer explicit bounds checks (see [`EngineOptions::fresh_instances`]).
pub const FEW_CALLS: u64 = 10;

/// The engine every module is compiled with, plus its epoch ticker.
pub struct GuestEngine {
    engine: Engine,
    long_calls: LongCallSignal,
    cache: Option<Cache>,
    /// Process that runs the ticker: after Pingora daemonises (fork), the
    /// child has no ticker thread and must start its own.
    ticker_pid: AtomicU32,
}

impl GuestEngine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(options: &EngineOptions) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        // Deadlines and slices: a running guest meets a check at every tick,
        // where it yields or, past its deadline, traps.
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        // Sliced calls run on fibers (held and direct ones on the worker's
        // stack); a fiber's stack holds the wasm stack plus the host frames
        // below it.
        config.async_stack_size(ASYNC_STACK_SIZE);

        // Pre-reserved instance slots: instantiation takes microseconds
        // instead of mapping fresh memory, and memory past the cap cannot be
        // had even if a limiter were bypassed.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(MAX_INSTANCES)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES)
            .total_stacks(MAX_INSTANCES)
            .max_memory_size(options.max_memory_bytes.max(1 << 20))
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            // Linux 6.7+: reset only the pages a guest dirtied, and keep them
            // mapped; elsewhere this quietly falls back to madvise.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if options.fresh_instances {
            // No guard region and no signal handlers: out-of-bounds
            // accesses are caught by the checks compiled into the guest.
            // The reservation is the largest memory, so memory never moves.
            config.signals_based_traps(false);
            config.memory_guard_size(0);
            config.memory_reservation(options.max_memory_bytes.max(1 << 20) as u64);
        }
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
            long_calls: LongCallSignal::default(),
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

    /// What its instances raise when a call runs long.
    pub fn long_calls(&self) -> &LongCallSignal {
        &self.long_calls
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
        let long_calls = self.long_calls.clone();
        let spawned = thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                let mut slicing_until = Instant::now();
                loop {
                    if long_calls.take() {
                        slicing_until = Instant::now() + SLICING_HOLD;
                    }
                    let tick = if Instant::now() < slicing_until {
                        SLICE_TICK
                    } else {
                        IDLE_TICK
                    };
                    thread::sleep(tick);
                    engine.increment_epoch();
                }
            });
        if spawned.is_err() {
            // Not running after all: a later call may try again.
            self.ticker_pid.store(0, Ordering::SeqCst);
        }
        spawned.map(drop)
    }
}

/// Gives the heap memory freed since start (compiling a module takes tens
/// of MiB, which the allocator otherwise keeps) back to the system, so
/// the idle proxy's resident size is what serving needs. Called after
/// modules are loaded, off the request path.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes no pointers and is safe to call
        // from any thread at any time; it only returns free pages.
        unsafe {
            malloc_trim(0);
        }
    }
}
