//! One instantiated guest: its store, memory and exports, and the call path
//! that writes input, runs a hook under a deadline and bounds-checks the
//! output.
//!
//! A hook call first runs directly on the worker's stack, the cheapest way
//! (a fiber costs about 0.25 us per call). If it runs past
//! [`YIELD_AFTER`], the deadline check stops it; its instance, stopped
//! mid-call, is discarded, and the call runs again from the start in a
//! fresh instance on a wasmtime fiber that gives its worker back at every
//! epoch tick, so a guest that computes for long holds no worker: the other
//! requests on that worker run between its slices. The deadline counts the
//! call's own running time (both runs, the sum of their slices), not the
//! time it waited for a turn, so a neighbour's load cannot make an honest
//! call time out.

use std::future::{poll_fn, Future};
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Instance, InstancePre, Linker, Memory, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc, UpdateDeadline, WasmParams, WasmResults,
};

use super::engine::{LongCallSignal, YIELD_AFTER};
use super::fault::HookFault;
use super::module::GuestLimits;

/// Largest output a hook may return; anything bigger is a fault.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Longest guest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// The parts of a hook's input a lazy-input guest fetches on demand
/// through `hook.input_part` (`wire::PART_*`). Borrowed for one call, so a
/// part is encoded only if the guest asks for it. `Sync`, because a call
/// that yields may resume on another worker thread.
pub trait InputParts: Sync {
    /// The JSON of `part`, or None if this call has no such part.
    fn part(&self, part: i32) -> Option<&str>;
}

/// A call without input parts (`hook_init`).
pub struct NoParts;

impl InputParts for NoParts {
    fn part(&self, _part: i32) -> Option<&str> {
        None
    }
}

/// The input parts of the call in progress, with the borrow's lifetime
/// erased so that it fits in the `'static` store data.
///
/// Invariant: set only by [`GuestInstance::call_direct`] and
/// [`GuestInstance::call_sliced`] through [`PartsGuard`], which clears it
/// when dropped (also when unwinding, or when the call's future is dropped
/// half-way), before the borrow ends; read only by the `hook.input_part`
/// import, which runs only inside such a call (`hook_abi_version` runs on
/// a fresh instance, where it is `None`). A call future that is leaked
/// instead of dropped leaks the instance it holds with it: `GuestModule`
/// owns every instance inside its own call future.
struct PartsPtr(NonNull<dyn InputParts>);

// SAFETY: the referent is `Sync` (a bound of `InputParts`), so using it from
// whichever thread resumes the call is sound; and the pointer never outlives
// the borrow, which the call's future holds (see the invariant above).
unsafe impl Send for PartsPtr {}

impl PartsPtr {
    fn new(parts: &dyn InputParts) -> Self {
        let ptr: NonNull<dyn InputParts + '_> = NonNull::from(parts);
        // SAFETY: only the lifetime changes; the invariant keeps every use
        // within the original borrow.
        PartsPtr(unsafe {
            std::mem::transmute::<NonNull<dyn InputParts + '_>, NonNull<dyn InputParts>>(ptr)
        })
    }

    fn get(&self) -> &dyn InputParts {
        // SAFETY: by the invariant, the borrow this came from is still live.
        unsafe { self.0.as_ref() }
    }
}

/// Where a call's guest running time is charged as it is spent: after
/// every slice, so a budget sees a long call while it still runs.
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
        let ran = ended - started;
        self.end_slice(ran);
        meter.charge(ran, ended);
        out
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
pub enum CallMode {
    /// On the worker's stack: stop it with [`NeedsSlicing`], to run again
    /// sliced.
    Direct,
    /// On a fiber (a call, or instantiation with its start function):
    /// yield the worker, carry on when polled again.
    Sliced,
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
    Fault(HookFault),
    /// A direct call ran long and was stopped; its instance is unusable,
    /// and the call is to run again, sliced, in a fresh one.
    NeedsSlicing,
}

impl From<HookFault> for CallError {
    fn from(fault: HookFault) -> Self {
        CallError::Fault(fault)
    }
}

/// Per-store state the host keeps for one instance.
pub struct GuestState {
    module_name: Arc<str>,
    /// The instance's memory, for the imports (set once instantiated).
    memory: Option<Memory>,
    /// Input parts of the call in progress.
    parts: Option<PartsPtr>,
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
}

/// `StoreLimits`, remembering whether a limit was hit so the fault can say
/// "memory limit" instead of the guest's resulting abort.
struct GuestLimiter {
    limits: StoreLimits,
    memory_limit_hit: bool,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
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

/// Registers the host imports (module `hook`) every guest may use.
pub fn add_host_imports(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "hook",
        "log",
        |mut caller: Caller<'_, GuestState>, level: i32, ptr: i32, len: i32| {
            let line = read_guest_str(&mut caller, ptr as u32, len as u32);
            let level = match level {
                1 => log::Level::Error,
                2 => log::Level::Warn,
                3 => log::Level::Info,
                4 => log::Level::Debug,
                _ => log::Level::Trace,
            };
            let state = caller.data_mut();
            log::log!(target: "guest", level, "module {}: {line}", state.module_name);
            if level == log::Level::Error {
                state.last_error_log = Some(line);
            }
        },
    )?;
    linker.func_wrap(
        "hook",
        "input_part",
        |mut caller: Caller<'_, GuestState>, part: i32, ptr: i32, len: i32| -> i32 {
            let Some(memory) = caller.data().memory else {
                return -1;
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let Some(bytes) = state.parts.as_ref().and_then(|p| p.get().part(part)) else {
                return -1;
            };
            let Ok(size) = i32::try_from(bytes.len()) else {
                return -1;
            };
            let copied = bytes.len().min(len as u32 as usize);
            let start = ptr as u32 as usize;
            match data.get_mut(start..start + copied) {
                Some(target) => {
                    target.copy_from_slice(&bytes.as_bytes()[..copied]);
                    size
                }
                None => -1,
            }
        },
    )?;
    Ok(())
}

/// Reads at most [`MAX_LOG_LINE`] bytes of a guest string, lossily; a bad
/// pointer yields a placeholder rather than a trap.
fn read_guest_str(caller: &mut Caller<'_, GuestState>, ptr: u32, len: u32) -> String {
    let Some(memory) = caller.data().memory else {
        return "<no memory export>".into();
    };
    let data = memory.data(&caller);
    let start = ptr as usize;
    let end = start.saturating_add((len as usize).min(MAX_LOG_LINE));
    match data.get(start..end) {
        // One guest line stays one log line: no forged lines via newlines.
        Some(bytes) => String::from_utf8_lossy(bytes)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        None => format!("<log line ({ptr:#x}, {len}) outside memory>"),
    }
}

/// A live instance of a module and typed handles to its exports.
pub struct GuestInstance {
    store: Store<GuestState>,
    memory: Memory,
    exports: Exports,
    clock: Arc<CallClock>,
    limits: GuestLimits,
    /// Hook calls served, for the reuse bound.
    pub calls: u64,
}

/// Typed handles to an instance's exports. A call borrows its handle
/// (cloning one costs type-registry reference counting).
struct Exports {
    alloc: TypedFunc<i32, i32>,
    abi_version: TypedFunc<(), i32>,
    init: Option<TypedFunc<(i32, i32), i64>>,
    upstream_peer: TypedFunc<(i32, i32), i64>,
    upstream_request_filter: TypedFunc<(i32, i32), i64>,
}

/// Picks the export a call runs; None if the module lacks it.
type Pick<P, R> = fn(&Exports) -> Option<&TypedFunc<P, R>>;

/// `hook_alloc`.
const ALLOC: Pick<i32, i32> = |exports| Some(&exports.alloc);

/// The export that runs `export`.
fn hook(export: Export) -> Pick<(i32, i32), i64> {
    match export {
        Export::Init => |exports| exports.init.as_ref(),
        Export::UpstreamPeer => |exports| Some(&exports.upstream_peer),
        Export::UpstreamRequestFilter => |exports| Some(&exports.upstream_request_filter),
    }
}

/// A hook's `(ptr, len)` output location, packed in an i64.
fn unpack(packed: i64) -> (u32, u32) {
    ((packed as u64 >> 32) as u32, packed as u64 as u32)
}

fn missing_export() -> CallError {
    HookFault::Instantiate("the module lacks this export".into()).into()
}

/// The hook exports an instance can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `hook_init`
    Init,
    /// `upstream_peer`
    UpstreamPeer,
    /// `upstream_request_filter`
    UpstreamRequestFilter,
}

impl GuestInstance {
    /// Instantiates `pre` in a fresh store under `limits`; a call that runs
    /// long raises `long_calls`. A start function runs sliced, like a long
    /// call, under the same deadline, its time charged to `meter`.
    pub async fn new(
        pre: &InstancePre<GuestState>,
        module_name: Arc<str>,
        limits: GuestLimits,
        long_calls: LongCallSignal,
        meter: &dyn SliceMeter,
    ) -> wasmtime::Result<Self> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_limit_bytes())
            .instances(1)
            .build();
        let clock = Arc::new(CallClock::new());
        let state = GuestState {
            module_name,
            memory: None,
            parts: None,
            clock: clock.clone(),
            hook_timeout: limits.hook_timeout(),
            mode: CallMode::Sliced,
            long_calls,
            limiter: GuestLimiter {
                limits: store_limits,
                memory_limit_hit: false,
            },
            last_error_log: None,
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        // At each tick a call that has run its time is stopped (a Timeout
        // fault); one that runs long is sliced (see the module docs).
        store.epoch_deadline_callback(|store| {
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
        // A start function runs during instantiation: bound and slice it too.
        clock.begin(Duration::ZERO);
        store.set_epoch_deadline(1);
        let instance: Instance =
            Box::pin(timed(&clock, meter, pre.instantiate_async(&mut store))).await?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("missing export `memory` (a memory)"))?;
        store.data_mut().memory = Some(memory);
        let func = |store: &mut Store<GuestState>, name: &str| {
            instance
                .get_typed_func::<(i32, i32), i64>(store, name)
                .map_err(|e| {
                    e.context(format!(
                        "export `{name}` must be a function (i32, i32) -> i64"
                    ))
                })
        };
        let upstream_peer = func(&mut store, "upstream_peer")?;
        let upstream_request_filter = func(&mut store, "upstream_request_filter")?;
        let init = match instance.get_export(&mut store, "hook_init") {
            Some(_) => Some(func(&mut store, "hook_init")?),
            None => None,
        };
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "hook_alloc")
            .map_err(|e| e.context("export `hook_alloc` must be a function (i32) -> i32"))?;
        let abi_version = instance
            .get_typed_func::<(), i32>(&mut store, "hook_abi_version")
            .map_err(|e| e.context("export `hook_abi_version` must be a function () -> i32"))?;
        Ok(GuestInstance {
            store,
            memory,
            exports: Exports {
                alloc,
                abi_version,
                init,
                upstream_peer,
                upstream_request_filter,
            },
            clock,
            limits,
            calls: 0,
        })
    }

    /// Whether the module exports `hook_init`.
    pub fn has_init(&self) -> bool {
        self.exports.init.is_some()
    }

    /// Calls `hook_abi_version`.
    pub async fn abi_version(&mut self) -> Result<i32, HookFault> {
        self.clock.begin(Duration::ZERO);
        let pick: Pick<(), i32> = |exports| Some(&exports.abi_version);
        self.run_sliced(pick, (), &Unmetered)
            .await
            .map_err(CallError::into_fault)
    }

    /// Runs `export` on `input` (the concatenation of its pieces) directly
    /// on this thread's stack, with `parts` for `hook.input_part` and its
    /// guest time charged to `meter`. Returns where the output lies in
    /// guest memory (see [`output`](Self::output)), or
    /// [`CallError::NeedsSlicing`] if it ran long: then this instance is
    /// unusable and the call is to run again with
    /// [`call_sliced`](Self::call_sliced) in a fresh one.
    pub fn call_direct(
        &mut self,
        export: Export,
        input: &[&[u8]],
        parts: &dyn InputParts,
        meter: &dyn SliceMeter,
    ) -> Result<(u32, u32), CallError> {
        let mut this = PartsGuard::set(self, parts);
        let len = this.begin_call(export, input, Duration::ZERO)?;
        let ptr = if len == 0 {
            0
        } else {
            let ptr = this.run_direct(ALLOC, len, meter)?;
            this.write_input(ptr, len, input)?
        };
        let packed = this.run_direct(hook(export), (ptr, len), meter)?;
        Ok(unpack(packed))
    }

    /// As [`call_direct`](Self::call_direct), on a fiber that yields the
    /// worker at every tick once the call has run [`YIELD_AFTER`]; `ran`
    /// is running time the call already spent in a stopped attempt.
    pub async fn call_sliced(
        &mut self,
        export: Export,
        input: &[&[u8]],
        parts: &dyn InputParts,
        meter: &dyn SliceMeter,
        ran: Duration,
    ) -> Result<(u32, u32), CallError> {
        let mut this = PartsGuard::set(self, parts);
        let len = this.begin_call(export, input, ran)?;
        let ptr = if len == 0 {
            0
        } else {
            let ptr = this.run_sliced(ALLOC, len, meter).await?;
            this.write_input(ptr, len, input)?
        };
        let packed = this.run_sliced(hook(export), (ptr, len), meter).await?;
        Ok(unpack(packed))
    }

    /// Starts a call's bookkeeping; returns the input's length.
    fn begin_call(
        &mut self,
        export: Export,
        input: &[&[u8]],
        ran: Duration,
    ) -> Result<i32, CallError> {
        if export != Export::Init {
            self.calls += 1;
        }
        self.store.data_mut().last_error_log = None;
        // One deadline for the whole call, input buffer included.
        self.clock.begin(ran);
        let total: usize = input.iter().map(|piece| piece.len()).sum();
        // No input (a `lazy_ctx` guest): no buffer, (0, 0).
        i32::try_from(total).map_err(|_| HookFault::Alloc(format!("input of {total} bytes")).into())
    }

    /// The output bytes a call returned, checked to lie in guest memory.
    pub fn output(&self, (ptr, len): (u32, u32)) -> Result<&[u8], HookFault> {
        if len as usize > MAX_OUTPUT_BYTES {
            return Err(HookFault::OutputTooLarge {
                len,
                max: MAX_OUTPUT_BYTES,
            });
        }
        let data = self.memory.data(&self.store);
        let start = ptr as usize;
        data.get(start..start + len as usize)
            .ok_or(HookFault::OutputOutOfBounds {
                ptr,
                len,
                memory: data.len(),
            })
    }

    /// The running time of the last call, earlier attempts included.
    pub fn running(&self) -> Duration {
        self.clock.finished()
    }

    /// Calls the export `pick` chooses on this thread's stack, timing it
    /// into the call's clock and charging it to `meter`.
    fn run_direct<P, R>(
        &mut self,
        pick: Pick<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        self.arm(CallMode::Direct);
        let Some(func) = pick(&self.exports) else {
            return Err(missing_export());
        };
        let store = &mut self.store;
        let result = self.clock.slice(meter, || func.call(store, params));
        result.map_err(|e| self.call_error(e))
    }

    /// Calls the export `pick` chooses on a fiber that yields at every
    /// tick, timing each slice into the call's clock and charging it to
    /// `meter`.
    async fn run_sliced<P, R>(
        &mut self,
        pick: Pick<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams + Sync,
        R: WasmResults + Send + Sync,
    {
        self.arm(CallMode::Sliced);
        let Some(func) = pick(&self.exports) else {
            return Err(missing_export());
        };
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

    /// Writes `input` into the buffer of `len` bytes that `hook_alloc`
    /// returned at `ptr`; returns `ptr`.
    fn write_input(&mut self, ptr: i32, len: i32, input: &[&[u8]]) -> Result<i32, CallError> {
        if ptr == 0 {
            return Err(HookFault::Alloc(format!("returned 0 for {len} bytes")).into());
        }
        let target = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(ptr as u32 as usize..)
            .and_then(|rest| rest.get_mut(..len as usize))
            .ok_or_else(|| {
                CallError::from(HookFault::Alloc(format!(
                    "buffer at {ptr:#x} lies outside memory"
                )))
            })?;
        let mut at = 0;
        for piece in input {
            target[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        Ok(ptr)
    }

    /// Names what went wrong in a failed call.
    fn fault(&mut self, error: wasmtime::Error) -> HookFault {
        let limits = self.limits;
        let state = self.store.data_mut();
        let trap = error.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::Interrupt) {
            return HookFault::Timeout {
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
            return HookFault::MemoryLimit {
                limit_mib: limits.memory_limit_mib,
                trap: message,
            };
        }
        HookFault::Trap {
            trap: message,
            guest_said: state.last_error_log.take(),
        }
    }
}

impl CallError {
    /// The fault to report. A call that needs slicing is run again by the
    /// module, so only an internal mistake would report it.
    pub fn into_fault(self) -> HookFault {
        match self {
            CallError::Fault(fault) => fault,
            CallError::NeedsSlicing => HookFault::Trap {
                trap: "a direct call was stopped and not run again".into(),
                guest_said: None,
            },
        }
    }
}

/// An instance whose store holds `parts` until this guard is dropped.
struct PartsGuard<'i> {
    instance: &'i mut GuestInstance,
}

impl<'i> PartsGuard<'i> {
    fn set(instance: &'i mut GuestInstance, parts: &'i dyn InputParts) -> Self {
        instance.store.data_mut().parts = Some(PartsPtr::new(parts));
        PartsGuard { instance }
    }
}

impl Drop for PartsGuard<'_> {
    fn drop(&mut self) {
        self.instance.store.data_mut().parts = None;
    }
}

impl Deref for PartsGuard<'_> {
    type Target = GuestInstance;

    fn deref(&self) -> &GuestInstance {
        self.instance
    }
}

impl DerefMut for PartsGuard<'_> {
    fn deref_mut(&mut self) -> &mut GuestInstance {
        self.instance
    }
}
