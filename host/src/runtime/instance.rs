//! One instantiated guest: its store, memory and exports, and the call path
//! that writes input, runs a hook under a deadline and bounds-checks the
//! output.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Instance, InstancePre, Linker, Memory, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc, UpdateDeadline,
};

use super::fault::HookFault;
use super::module::GuestLimits;

/// Largest output a hook may return; anything bigger is a fault.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Longest guest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// The parts of a hook's input a lazy-input guest fetches on demand
/// through `hook.input_part` (`wire::PART_*`). Borrowed for one call, so a
/// part is encoded only if the guest asks for it.
pub trait InputParts {
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
/// Invariant: set only by [`GuestInstance::call`] through [`PartsGuard`],
/// which clears it before the borrow ends (also when unwinding); read only
/// by the `hook.input_part` import, which runs only inside that call.
struct PartsPtr(NonNull<dyn InputParts>);

// SAFETY: the pointer is only dereferenced on the thread running the call
// that set it, and never outlives that call (see the invariant above).
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

/// Per-store state the host keeps for one instance.
pub struct GuestState {
    module_name: Arc<str>,
    /// The instance's memory, for the imports (set once instantiated).
    memory: Option<Memory>,
    /// Input parts of the call in progress.
    parts: Option<PartsPtr>,
    /// When the call in progress started, and how long it may run.
    call_started: Instant,
    hook_timeout: Duration,
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
    alloc: TypedFunc<i32, i32>,
    abi_version: TypedFunc<(), i32>,
    init: Option<TypedFunc<(i32, i32), i64>>,
    upstream_peer: TypedFunc<(i32, i32), i64>,
    upstream_request_filter: TypedFunc<(i32, i32), i64>,
    limits: GuestLimits,
    /// Hook calls served, for the reuse bound.
    pub calls: u64,
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
    /// Instantiates `pre` in a fresh store capped at `memory_limit_bytes`.
    pub fn new(
        pre: &InstancePre<GuestState>,
        module_name: Arc<str>,
        limits: GuestLimits,
    ) -> wasmtime::Result<Self> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_limit_bytes())
            .instances(1)
            .build();
        let state = GuestState {
            module_name,
            memory: None,
            parts: None,
            call_started: Instant::now(),
            hook_timeout: limits.hook_timeout(),
            limiter: GuestLimiter {
                limits: store_limits,
                memory_limit_hit: false,
            },
            last_error_log: None,
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        // At each deadline check, a call that has run its time is stopped
        // (a Timeout fault); any other is checked again a tick later.
        store.epoch_deadline_callback(|store| {
            let state = store.data();
            Ok(if state.call_started.elapsed() >= state.hook_timeout {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        // A start function runs during instantiation: bound it too.
        store.set_epoch_deadline(limits.first_check_ticks());
        let instance: Instance = pre.instantiate(&mut store)?;
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
            alloc,
            abi_version,
            init,
            upstream_peer,
            upstream_request_filter,
            limits,
            calls: 0,
        })
    }

    /// Whether the module exports `hook_init`.
    pub fn has_init(&self) -> bool {
        self.init.is_some()
    }

    /// Calls `hook_abi_version`.
    pub fn abi_version(&mut self) -> Result<i32, HookFault> {
        self.start_clock();
        let result = self.abi_version.call(&mut self.store, ());
        result.map_err(|e| self.fault(e))
    }

    /// Runs `export` on `input` (the concatenation of its pieces), with
    /// `parts` for `hook.input_part`, and hands the output bytes, still in
    /// guest memory, to `decode`.
    pub fn call<T>(
        &mut self,
        export: Export,
        input: &[&[u8]],
        parts: &dyn InputParts,
        decode: impl FnOnce(&[u8]) -> Result<T, HookFault>,
    ) -> Result<T, HookFault> {
        PartsGuard::set(self, parts).call_with_parts(export, input, decode)
    }

    fn call_with_parts<T>(
        &mut self,
        export: Export,
        input: &[&[u8]],
        decode: impl FnOnce(&[u8]) -> Result<T, HookFault>,
    ) -> Result<T, HookFault> {
        if export != Export::Init {
            self.calls += 1;
        }
        self.store.data_mut().last_error_log = None;
        let total: usize = input.iter().map(|piece| piece.len()).sum();
        let len = i32::try_from(total)
            .map_err(|_| HookFault::Alloc(format!("input of {total} bytes")))?;

        // One deadline for the whole call, input buffer included.
        self.start_clock();
        // No input (a `lazy_ctx` guest): no buffer, (0, 0).
        let ptr = if total == 0 {
            0
        } else {
            self.alloc_input(len, input)?
        };
        let func = match export {
            Export::Init => match &self.init {
                Some(init) => init,
                None => return Err(HookFault::Instantiate("no hook_init export".into())),
            },
            Export::UpstreamPeer => &self.upstream_peer,
            Export::UpstreamRequestFilter => &self.upstream_request_filter,
        };
        let result = func.call(&mut self.store, (ptr, len));
        let packed = result.map_err(|e| self.fault(e))?;

        let (out_ptr, out_len) = ((packed as u64 >> 32) as u32, packed as u64 as u32);
        if out_len as usize > MAX_OUTPUT_BYTES {
            return Err(HookFault::OutputTooLarge {
                len: out_len,
                max: MAX_OUTPUT_BYTES,
            });
        }
        let data = self.memory.data(&self.store);
        let start = out_ptr as usize;
        let output =
            data.get(start..start + out_len as usize)
                .ok_or(HookFault::OutputOutOfBounds {
                    ptr: out_ptr,
                    len: out_len,
                    memory: data.len(),
                })?;
        decode(output)
    }

    /// Asks the guest for an input buffer of `len` bytes and writes
    /// `input` into it.
    fn alloc_input(&mut self, len: i32, input: &[&[u8]]) -> Result<i32, HookFault> {
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| self.fault(e))?;
        if ptr == 0 {
            return Err(HookFault::Alloc(format!("returned 0 for {len} bytes")));
        }
        let total = len as usize;
        let target = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(ptr as u32 as usize..)
            .and_then(|rest| rest.get_mut(..total))
            .ok_or_else(|| HookFault::Alloc(format!("buffer at {ptr:#x} lies outside memory")))?;
        let mut at = 0;
        for piece in input {
            target[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        Ok(ptr)
    }

    /// Starts a call's deadline.
    fn start_clock(&mut self) {
        self.store.data_mut().call_started = Instant::now();
        self.store
            .set_epoch_deadline(self.limits.first_check_ticks());
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
