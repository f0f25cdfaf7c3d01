//! One instantiated guest, whatever its ABI: its store, memory and limits,
//! and the call path that runs an export under a deadline, slices it when
//! it runs long, and names the fault when it fails.
//!
//! A call first runs directly on the worker's stack, the cheapest way. If
//! it runs past [`YIELD_AFTER`], the deadline check stops it with
//! [`CallError::NeedsSlicing`]; the ABI layer then discards the instance
//! (stopped mid-call, it is unusable) and runs the call again in a fresh
//! one with [`WasmInstance::call_sliced`], on a wasmtime fiber that gives
//! its worker back at every epoch tick, so a guest that computes for long
//! holds no worker. The deadline counts the call's own running time (both
//! runs, the sum of their slices), not the time it waited for a turn, so a
//! neighbour's load cannot make an honest call time out.
//!
//! A guest whose state cannot be rebuilt (a proxy-wasm filter) cannot be
//! stopped and run again: its calls are held ([`WasmInstance::call_held`]),
//! directly on the worker's stack to their end or deadline, and one that
//! runs long hands its worker's other tasks to another thread instead.

use crate::guest_text::{sanitize, LogRate, MAX_GUEST_TEXT};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Instance, InstancePre, Memory, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder,
    Trap, TypedFunc, UpdateDeadline, WasmParams, WasmResults,
};

use super::engine::{LongCallSignal, YIELD_AFTER};
use super::fault::RuntimeFault;
use super::limits::GuestLimits;

/// Longest guest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// Where a call's guest running time is charged as it is spent: after
/// every slice, so a budget sees a sliced call while it still runs (a
/// held call is one slice: charged when it ends).
pub trait SliceMeter: Sync {
    /// `ran` of guest time was just spent, ending at `ended`.
    fn charge(&self, ran: Duration, ended: Instant);
}

/// A meter that charges nobody (load-time calls, benches).
pub struct Unmetered;

impl SliceMeter for Unmetered {
    fn charge(&self, _ran: Duration, _ended: Instant) {}
}

/// The running time of the call in progress: the slices it has finished,
/// and when the current one started. Shared between the future that polls
/// the call (which times each slice) and the epoch callback (which checks
/// the deadline), so it lives outside the store.
struct CallClock {
    origin: Instant,
    /// Nanoseconds since `origin` at which the current slice started.
    slice_started: AtomicU64,
    /// Nanoseconds of finished slices.
    ran: AtomicU64,
}

impl CallClock {
    fn new() -> Self {
        CallClock {
            origin: Instant::now(),
            slice_started: AtomicU64::new(0),
            ran: AtomicU64::new(0),
        }
    }

    /// A new call, which has already run `ran` (in an earlier attempt).
    fn begin(&self, ran: Duration) {
        self.ran.store(ran.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Running time of finished slices.
    fn finished(&self) -> Duration {
        Duration::from_nanos(self.ran.load(Ordering::Relaxed))
    }

    fn start_slice(&self, now: Instant) {
        let since = now.saturating_duration_since(self.origin).as_nanos() as u64;
        self.slice_started.store(since, Ordering::Relaxed);
    }

    fn end_slice(&self, ran: Duration) {
        // Only the thread running the call writes: no read-modify-write.
        let finished = self.ran.load(Ordering::Relaxed);
        self.ran
            .store(finished + ran.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs one slice of the call, `run`, timing it and charging it to
    /// `meter`.
    fn slice<T>(&self, meter: &dyn SliceMeter, run: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        self.start_slice(started);
        let out = run();
        let ended = Instant::now();
        // From the slice's start as the clock has it: time the host spent
        // inside it on the guest's behalf ([`Self::exclude`]) is not the
        // guest's.
        let since = ended.saturating_duration_since(self.origin).as_nanos() as u64;
        let ran =
            Duration::from_nanos(since.saturating_sub(self.slice_started.load(Ordering::Relaxed)));
        self.end_slice(ran);
        meter.charge(ran, ended);
        out
    }

    /// Leaves `spent` of the current slice out of the call's running time:
    /// host work during the call (handing its worker off) that neither its
    /// deadline nor its tenant's budget should pay for.
    fn exclude(&self, spent: Duration) {
        let nanos = spent.as_nanos() as u64;
        let started = self.slice_started.load(Ordering::Relaxed);
        self.slice_started
            .store(started.saturating_add(nanos), Ordering::Relaxed);
    }

    /// Running time so far, the current slice included.
    fn running(&self) -> Duration {
        let now = self.origin.elapsed().as_nanos() as u64;
        let slice = now.saturating_sub(self.slice_started.load(Ordering::Relaxed));
        Duration::from_nanos(self.ran.load(Ordering::Relaxed).saturating_add(slice))
    }
}

/// Polls a guest call, timing each slice (each poll) into `clock` and
/// charging it to `meter`.
async fn timed<F: Future>(clock: &CallClock, meter: &dyn SliceMeter, call: F) -> F::Output {
    let mut call = pin!(call);
    poll_fn(|cx| clock.slice(meter, || call.as_mut().poll(cx))).await
}

/// How a call runs, and so what its deadline checks do once it has run
/// [`YIELD_AFTER`] (before its deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallMode {
    /// On the worker's stack: stop it with [`NeedsSlicing`], to run again
    /// sliced.
    Direct,
    /// On a fiber (a call, or instantiation with its start function):
    /// yield the worker, carry on when polled again.
    Sliced,
    /// On the worker's stack, never stopped before its deadline: a guest
    /// whose state cannot be rebuilt (a proxy-wasm filter) runs on, and
    /// its worker's other tasks go to another thread ([`hand_off_worker`]).
    Held,
    /// A held call whose worker was handed off: it just runs on.
    HandedOff,
}

/// The error a deadline check stops a direct call with: it runs long, and
/// must run again sliced.
#[derive(Debug)]
struct NeedsSlicing;

impl std::fmt::Display for NeedsSlicing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call runs long and is to run again sliced")
    }
}

impl std::error::Error for NeedsSlicing {}

/// How a call ended without output.
#[derive(Debug)]
pub enum CallError {
    /// The guest faulted.
    Fault(RuntimeFault),
    /// A direct call ran long and was stopped; its instance is unusable,
    /// and the call is to run again, sliced, in a fresh one.
    NeedsSlicing,
}

impl From<RuntimeFault> for CallError {
    fn from(fault: RuntimeFault) -> Self {
        CallError::Fault(fault)
    }
}

/// The store data of an instance: what the wasm layer keeps for its
/// limits, deadline and faults, and `abi`, the guest ABI's own state.
pub struct Sandbox<T> {
    module_name: Arc<str>,
    /// The instance's memory, for the imports (set once instantiated).
    memory: Option<Memory>,
    /// The running time of the call in progress, and how long it may run.
    clock: Arc<CallClock>,
    hook_timeout: Duration,
    /// How the call in progress runs, for its deadline checks.
    mode: CallMode,
    /// Raised when a call runs long, so the ticker slices finely.
    long_calls: LongCallSignal,
    limiter: GuestLimiter,
    /// The guest's last error-level log line during the current call.
    last_error_log: Option<String>,
    /// Its owner's bound on guest log lines, if any.
    log_rate: Option<Arc<LogRate>>,
    /// The guest ABI's per-instance state.
    pub abi: T,
}

impl<T> Sandbox<T> {
    /// The instance's memory, once instantiated.
    pub fn memory(&self) -> Option<Memory> {
        self.memory
    }

    /// Writes one guest log line into the proxy's log, labelled with the
    /// module; an error-level line is kept for the fault report, as it is
    /// how a Rust guest's panic message reaches the log.
    pub fn guest_log(&mut self, level: log::Level, line: String) {
        let admitted = self.log_rate.as_ref().is_none_or(|rate| rate.admit());
        if admitted && log::log_enabled!(target: "guest", level) {
            log::log!(target: "guest", level, "module {}: {line}", self.module_name);
        }
        if level == log::Level::Error {
            self.last_error_log = Some(line);
        }
    }
}

/// `StoreLimits`, remembering whether a limit was hit so the fault can say
/// "memory limit" instead of the guest's resulting abort; and the
/// instance's memory charged to its owner's quota, if it has one.
struct GuestLimiter {
    limits: StoreLimits,
    memory_limit_hit: bool,
    quota: Option<Arc<crate::InstanceQuota>>,
    /// Bytes charged to `quota`, given back when the store goes.
    charged: u64,
    /// Whether `quota` refused a growth (at instantiation: no room).
    quota_full: bool,
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        if let Some(quota) = &self.quota {
            quota.refund_memory(self.charged);
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let mut allowed = self.limits.memory_growing(current, desired, maximum)?;
        if let (true, Some(quota)) = (allowed, &self.quota) {
            let more = desired.saturating_sub(current) as u64;
            allowed = quota.charge_memory(more);
            if allowed {
                self.charged += more;
            }
            self.quota_full |= !allowed;
        }
        self.memory_limit_hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Reads at most [`MAX_LOG_LINE`] bytes of a guest string, lossily, for a
/// log line; a bad pointer yields a placeholder rather than a trap, and
/// the text goes through [`sanitize`] (one guest line stays one log line:
/// no forged lines, no hidden text).
pub fn read_guest_line<T>(caller: &mut Caller<'_, Sandbox<T>>, ptr: u32, len: u32) -> String {
    let Some(memory) = caller.data().memory else {
        return "<no memory export>".into();
    };
    let data = memory.data(&caller);
    let start = ptr as usize;
    let end = start.saturating_add((len as usize).min(MAX_LOG_LINE));
    match data.get(start..end) {
        Some(bytes) => sanitize(&String::from_utf8_lossy(bytes), MAX_GUEST_TEXT),
        None => format!("<log line ({ptr:#x}, {len}) outside memory>"),
    }
}

/// A live instance of a module, under its limits.
pub struct WasmInstance<T: 'static> {
    store: Store<Sandbox<T>>,
    instance: Instance,
    memory: Memory,
    clock: Arc<CallClock>,
    limits: GuestLimits,
    /// Its place in its owner's instance quota, if it has one.
    slot: Option<crate::QuotaSlot>,
}

/// A store ready for one instance, not yet instantiated; see
/// [`WasmInstance::prepare`].
pub struct Prepared<'p, T: 'static> {
    pre: &'p InstancePre<Sandbox<T>>,
    store: Store<Sandbox<T>>,
    clock: Arc<CallClock>,
    limits: GuestLimits,
}

impl<T: Send + 'static> Prepared<'_, T> {
    /// Holds the instance's guest log lines to `rate` (its owner's).
    pub fn with_log_rate(mut self, rate: Arc<LogRate>) -> Self {
        self.store.data_mut().log_rate = Some(rate);
        self
    }

    /// Charges the instance's linear memory, from its first page, to its
    /// owner's `quota`: growth past the owner's bound fails as past the
    /// instance's own limit does.
    pub fn with_memory_quota(mut self, quota: Arc<crate::InstanceQuota>) -> Self {
        self.store.data_mut().limiter.quota = Some(quota);
        self
    }

    /// Instantiates on this thread's stack: no fiber, the way a fresh
    /// instance is cheapest. A start function that runs past
    /// [`YIELD_AFTER`] is stopped with [`CallError::NeedsSlicing`]; then
    /// prepare again and [`start`](Self::start).
    pub fn start_direct(mut self, meter: &dyn SliceMeter) -> Result<WasmInstance<T>, CallError> {
        let instantiated = self
            .clock
            .slice(meter, || self.pre.instantiate(&mut self.store));
        let instance = match instantiated {
            Ok(instance) => self.started(instance),
            Err(error) => Err(self.no_room(error)),
        };
        instance.map_err(|error| {
            if error.downcast_ref::<NeedsSlicing>().is_some() {
                CallError::NeedsSlicing
            } else {
                CallError::Fault(RuntimeFault::of_instantiation(&error))
            }
        })
    }

    /// Instantiates on this thread's stack, the start function held to
    /// its end or its deadline as [`WasmInstance::call_held`] holds a call.
    pub fn start_held(mut self, meter: &dyn SliceMeter) -> wasmtime::Result<WasmInstance<T>> {
        self.store.data_mut().mode = CallMode::Held;
        let instantiated = self
            .clock
            .slice(meter, || self.pre.instantiate(&mut self.store));
        match instantiated {
            Ok(instance) => self.started(instance),
            Err(error) => Err(self.no_room(error)),
        }
    }

    /// `error`, said to be for want of room if the owner's memory quota
    /// refused the instance its first pages.
    fn no_room(&self, error: wasmtime::Error) -> wasmtime::Error {
        if self.store.data().limiter.quota_full {
            error.context(crate::NoRoom::Memory)
        } else {
            error
        }
    }

    /// Instantiates on a fiber: a start function runs sliced, like a long
    /// call, under the same deadline, its time charged to `meter`.
    pub async fn start(mut self, meter: &dyn SliceMeter) -> wasmtime::Result<WasmInstance<T>> {
        self.store.data_mut().mode = CallMode::Sliced;
        let instantiate = self.pre.instantiate_async(&mut self.store);
        let instance = Box::pin(timed(&self.clock, meter, instantiate)).await;
        match instance {
            Ok(instance) => self.started(instance),
            Err(error) => Err(self.no_room(error)),
        }
    }

    fn started(self, instance: Instance) -> wasmtime::Result<WasmInstance<T>> {
        WasmInstance::with_instance(self.store, instance, self.clock, self.limits)
    }
}

impl<T: Send + 'static> WasmInstance<T> {
    /// A fresh store for one instance of `pre` under `limits`, with `abi`
    /// as the ABI's state; a call that runs long raises `long_calls`.
    /// Start it with [`Prepared::start_direct`] or [`Prepared::start`].
    pub fn prepare(
        pre: &InstancePre<Sandbox<T>>,
        module_name: Arc<str>,
        limits: GuestLimits,
        long_calls: LongCallSignal,
        abi: T,
    ) -> Prepared<'_, T> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_limit_bytes())
            .instances(1)
            .build();
        let clock = Arc::new(CallClock::new());
        let state = Sandbox {
            module_name,
            memory: None,
            clock: clock.clone(),
            hook_timeout: limits.hook_timeout(),
            mode: CallMode::Direct,
            long_calls,
            limiter: GuestLimiter {
                limits: store_limits,
                memory_limit_hit: false,
                quota: None,
                charged: 0,
                quota_full: false,
            },
            last_error_log: None,
            log_rate: None,
            abi,
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        // At each tick a call that has run its time is stopped (a Timeout
        // fault); one that runs long is sliced (see the module docs).
        store.epoch_deadline_callback(|mut store| {
            let state = store.data();
            let running = state.clock.running();
            if running < YIELD_AFTER {
                // A short call that happened to meet a tick: carry on, so
                // an honest hook never waits behind other requests.
                return Ok(UpdateDeadline::Continue(1));
            }
            state.long_calls.raise();
            if running >= state.hook_timeout {
                return Ok(UpdateDeadline::Interrupt);
            }
            match state.mode {
                CallMode::Direct => Err(wasmtime::Error::new(NeedsSlicing)),
                CallMode::Held => {
                    let clock = state.clock.clone();
                    store.data_mut().mode = CallMode::HandedOff;
                    clock.exclude(hand_off_worker());
                    Ok(UpdateDeadline::Continue(1))
                }
                CallMode::HandedOff => Ok(UpdateDeadline::Continue(1)),
                // Tokio's yield defers the wake-up until the worker has run
                // its other ready tasks and polled for I/O: a long guest call
                // goes behind every request that is ready to run, not just
                // behind those already queued.
                CallMode::Sliced => Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                )),
            }
        });
        // A start function runs during instantiation: bound it too.
        clock.begin(Duration::ZERO);
        store.set_epoch_deadline(1);
        Prepared {
            pre,
            store,
            clock,
            limits,
        }
    }

    fn with_instance(
        mut store: Store<Sandbox<T>>,
        instance: Instance,
        clock: Arc<CallClock>,
        limits: GuestLimits,
    ) -> wasmtime::Result<Self> {
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("missing export `memory` (a memory)"))?;
        store.data_mut().memory = Some(memory);
        Ok(WasmInstance {
            store,
            instance,
            memory,
            clock,
            limits,
            slot: None,
        })
    }

    /// The export `name` as a function of type `(P) -> R`: None if the
    /// module has no such export, an error naming the expected type if it
    /// has one of another type.
    pub fn func<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        signature: &str,
    ) -> wasmtime::Result<Option<TypedFunc<P, R>>> {
        let Some(export) = self.instance.get_export(&mut self.store, name) else {
            return Ok(None);
        };
        export
            .into_func()
            .ok_or_else(|| wasmtime::Error::msg("not a function"))
            .and_then(|func| func.typed::<P, R>(&self.store))
            .map(Some)
            .map_err(|e| e.context(format!("export `{name}` must be a function {signature}")))
    }

    /// Holds `slot` of its owner's quota for as long as it lives.
    pub fn hold(&mut self, slot: crate::QuotaSlot) {
        self.slot = Some(slot);
    }

    /// Gives up its quota slot (to move it to the instance that replaces
    /// this one).
    pub fn release(&mut self) -> Option<crate::QuotaSlot> {
        self.slot.take()
    }

    /// The ABI's state.
    pub fn abi_mut(&mut self) -> &mut T {
        &mut self.store.data_mut().abi
    }

    /// Starts a call: one deadline for all it runs until the next
    /// `begin`; `ran` is running time it already spent in a stopped
    /// attempt.
    pub fn begin(&mut self, ran: Duration) {
        self.store.data_mut().last_error_log = None;
        self.clock.begin(ran);
    }

    /// The running time of the call since [`begin`](Self::begin), earlier
    /// attempts included.
    pub fn running(&self) -> Duration {
        self.clock.finished()
    }

    /// Calls `func` on this thread's stack, timing it into the call's
    /// clock and charging it to `meter`. [`CallError::NeedsSlicing`] if it
    /// ran long: then this instance is unusable.
    pub fn call_direct<P, R>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        self.call_on_stack(CallMode::Direct, func, params, meter)
    }

    /// Calls `func` on this thread's stack to its end or its deadline,
    /// timing it into the call's clock and charging it to `meter`: no
    /// fiber, so a short call (nearly all) costs a plain call. One that
    /// runs past [`YIELD_AFTER`] is not stopped (the guest's state could
    /// not be rebuilt to run it again); instead its worker's other tasks
    /// are handed to another thread, as `tokio::task::block_in_place`
    /// does, so they never wait behind it. For guests whose hostcalls are
    /// all synchronous (they may call back into the guest).
    pub fn call_held<P, R>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        self.call_on_stack(CallMode::Held, func, params, meter)
    }

    /// `func` called on this thread's stack in `mode`, as one slice.
    fn call_on_stack<P, R>(
        &mut self,
        mode: CallMode,
        func: &TypedFunc<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        self.arm(mode);
        let store = &mut self.store;
        let result = self.clock.slice(meter, || func.call(store, params));
        result.map_err(|e| self.call_error(e))
    }

    /// Calls `func` on a fiber that yields at every tick once the call has
    /// run [`YIELD_AFTER`], timing each slice into the call's clock and
    /// charging it to `meter`.
    pub async fn call_sliced<P, R>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams + Sync,
        R: WasmResults + Send + Sync,
    {
        self.arm(CallMode::Sliced);
        // Boxed: the fiber's future is large, and only long calls (and
        // load-time calls) come here.
        let call = Box::pin(timed(
            &self.clock,
            meter,
            func.call_async(&mut self.store, params),
        ));
        let result = call.await;
        result.map_err(|e| self.call_error(e))
    }

    /// The `len` bytes of guest memory at `ptr`, if they lie inside it.
    pub fn memory(&self, ptr: u32, len: u32) -> Option<&[u8]> {
        let start = ptr as usize;
        self.memory
            .data(&self.store)
            .get(start..start.checked_add(len as usize)?)
    }

    /// As [`memory`](Self::memory), writable.
    pub fn memory_mut(&mut self, ptr: u32, len: u32) -> Option<&mut [u8]> {
        let start = ptr as usize;
        self.memory
            .data_mut(&mut self.store)
            .get_mut(start..start.checked_add(len as usize)?)
    }

    /// The size of guest memory in bytes.
    pub fn memory_size(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Readies the store for a call in `mode`. The first deadline check
    /// comes at the next tick; a call shorter than that (nearly all) never
    /// meets one.
    fn arm(&mut self, mode: CallMode) {
        self.store.data_mut().mode = mode;
        self.store.set_epoch_deadline(1);
    }

    fn call_error(&mut self, error: wasmtime::Error) -> CallError {
        if error.downcast_ref::<NeedsSlicing>().is_some() {
            CallError::NeedsSlicing
        } else {
            CallError::Fault(self.fault(error))
        }
    }

    /// Names what went wrong in a failed call.
    fn fault(&mut self, error: wasmtime::Error) -> RuntimeFault {
        let limits = self.limits;
        let state = self.store.data_mut();
        let trap = error.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::Interrupt) {
            return RuntimeFault::Timeout {
                limit_ms: limits.hook_timeout_ms,
            };
        }
        let message = match trap {
            Some(trap) => trap
                .to_string()
                .trim_start_matches("wasm trap: ")
                .to_string(),
            None => format!("{error:#}"),
        };
        if std::mem::take(&mut state.limiter.memory_limit_hit) {
            return RuntimeFault::MemoryLimit {
                limit_mib: limits.memory_limit_mib,
                trap: message,
            };
        }
        RuntimeFault::Trap {
            trap: message,
            guest_said: state.last_error_log.take(),
        }
    }
}

impl CallError {
    /// The fault to report. A call that needs slicing is run again by the
    /// ABI layer, so only an internal mistake would report it.
    pub fn into_fault(self) -> RuntimeFault {
        match self {
            CallError::Fault(fault) => fault,
            CallError::NeedsSlicing => RuntimeFault::Trap {
                trap: "a direct call was stopped and not run again".into(),
                guest_said: None,
            },
        }
    }
}

/// How long a held call waits at most, once, for a thread to take over
/// its worker's other tasks.
const HAND_OFF_WAIT: Duration = Duration::from_millis(5);

/// From a held call past its first slice, once: on a worker of a
/// multi-threaded tokio runtime, hands the worker's other tasks to another
/// thread (`block_in_place`), so the call runs on without holding them.
/// `block_in_place` takes the worker back when its closure ends if no
/// thread has taken it up yet, so the closure waits (up to
/// [`HAND_OFF_WAIT`]) until a task spawned just before has run: a thread
/// is then serving the worker's queue (the new one, or another worker
/// that stole from it). Elsewhere (no runtime, a current-thread one, a
/// load-time call) the call just runs on, as under [`block_on`].
/// Returns how long it took.
fn hand_off_worker() -> Duration {
    let started = Instant::now();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Duration::ZERO;
    };
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Duration::ZERO;
    }
    let taken_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = taken_up.clone();
    // Spawned from this worker, it waits in this worker's own queue.
    runtime.spawn(async move { flag.store(true, Ordering::Release) });
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        while !taken_up.load(Ordering::Acquire) && started.elapsed() < HAND_OFF_WAIT {
            std::thread::sleep(Duration::from_micros(20));
        }
    });
    started.elapsed()
}

/// Runs a call to its end on this thread: its yields are polled again at
/// once, and its deadline still bounds it. For load-time calls (start-up,
/// the reload thread) and for a caller that cannot await: then the thread
/// is held for as long as the call runs, up to its deadline, as if the
/// call were never sliced.
pub fn block_on<F: Future>(call: F) -> F::Output {
    let mut call = pin!(call);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = call.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Runs a call to its end for a caller that cannot await, on a worker of
/// a multi-threaded tokio runtime, without holding the worker's other
/// tasks: the first poll runs here (a held call ends in it, and hands its
/// worker off itself if it runs long); a future still pending after it (a
/// sliced call) goes on under `block_in_place`, which hands this worker's
/// other tasks to another thread for as long as it runs (up to its
/// deadline). Elsewhere (no runtime, or a current-thread one) it is
/// [`block_on`].
pub fn run_to_end<F: Future>(call: F) -> F::Output {
    let mut call = pin!(call);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(out) = call.as_mut().poll(&mut cx) {
        return out;
    }
    let on_worker = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if on_worker {
        tokio::task::block_in_place(|| block_on(call))
    } else {
        block_on(call)
    }
}
