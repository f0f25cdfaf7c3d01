//! An instance of an ABI v1 module: the wasm layer's instance plus typed
//! handles to the v1 exports, the input buffer protocol (`hook_alloc`,
//! then the hook on `(ptr, len)`, output packed as `(ptr << 32) | len`),
//! and the input parts its `hook.input_part` import reads.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{InstancePre, TypedFunc};

use crate::abi::hook_table::Hook;
use crate::abi::{CallError, HookFault};
use wasm_runtime::{
    GuestLimits, LongCallSignal, Prepared, RuntimeFault, Sandbox, SliceMeter, Unmetered,
    WasmInstance,
};

/// Largest output a hook may return; anything bigger is a fault.
pub(super) const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// The parts of a hook's input a lazy-input guest fetches on demand
/// through `hook.input_part` (`wire::PART_*`). Borrowed for one call, so a
/// part is encoded only if the guest asks for it. `Sync`, because a call
/// that yields may resume on another worker thread.
pub trait InputParts: Sync {
    /// The JSON of `part`, or None if this call has no such part.
    fn part(&self, part: i32) -> Option<&str>;

    /// The first value of header `name` (any case) of `part` (a request
    /// or a response), or None if it or the part is absent.
    fn header(&self, part: i32, name: &str) -> Option<&[u8]>;
}

/// A call without input parts (`hook_init`).
pub struct NoParts;

impl InputParts for NoParts {
    fn part(&self, _part: i32) -> Option<&str> {
        None
    }

    fn header(&self, _part: i32, _name: &str) -> Option<&[u8]> {
        None
    }
}

/// The input parts of the call in progress, with the borrow's lifetime
/// erased so that it fits in the `'static` store data.
///
/// Invariant: set only by [`V1Instance::call_direct`] and
/// [`V1Instance::call_sliced`] through [`PartsGuard`], which clears it
/// when dropped (also when unwinding, or when the call's future is dropped
/// half-way), before the borrow ends; read only by the `hook.input_part`
/// import, which runs only inside such a call (`hook_abi_version` runs on
/// a fresh instance, where it is `None`). A call future that is leaked
/// instead of dropped leaks the instance it holds with it: `V1Module`
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

/// What a v1 instance keeps in its store for its imports.
#[derive(Default)]
pub struct V1State {
    /// Input parts of the call in progress.
    parts: Option<PartsPtr>,
}

impl V1State {
    /// The input parts of the call in progress, if any.
    pub fn parts(&self) -> Option<&dyn InputParts> {
        self.parts.as_ref().map(PartsPtr::get)
    }
}

/// A hook export: input `(ptr, len)`, output packed in an i64.
type HookFunc = TypedFunc<(i32, i32), i64>;

/// Typed handles to an instance's exports. A call borrows its handle
/// (cloning one costs type-registry reference counting).
struct Exports {
    alloc: TypedFunc<i32, i32>,
    abi_version: TypedFunc<(), i32>,
    init: Option<HookFunc>,
    /// By [`Hook::index`]; None where the module leaves a hook out.
    hooks: [Option<HookFunc>; Hook::COUNT],
}

/// What an instance can be called for: `hook_init`, or a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `hook_init`, with the module configuration.
    Init,
    /// A request hook.
    Hook(Hook),
}

/// A live ABI v1 instance.
pub struct V1Instance {
    wasm: WasmInstance<V1State>,
    exports: Exports,
    /// Hook calls served, for the reuse bound.
    pub calls: u64,
}

/// An export the ABI requires, or an error naming it.
fn required<F>(name: &str, func: Option<F>) -> wasmtime::Result<F> {
    func.ok_or_else(|| wasmtime::Error::msg(format!("missing export `{name}`")))
}

/// A hook's `(ptr, len)` output location, packed in an i64.
fn unpack(packed: i64) -> (u32, u32) {
    ((packed as u64 >> 32) as u32, packed as u64 as u32)
}

impl V1Instance {
    /// A store for a v1 instance of `pre`; see [`WasmInstance::prepare`].
    pub fn prepare(
        pre: &InstancePre<Sandbox<V1State>>,
        module_name: Arc<str>,
        limits: GuestLimits,
        long_calls: LongCallSignal,
    ) -> Prepared<'_, V1State> {
        WasmInstance::prepare(pre, module_name, limits, long_calls, V1State::default())
    }

    /// Looks up the v1 exports of a started instance.
    pub fn new(mut wasm: WasmInstance<V1State>) -> wasmtime::Result<Self> {
        const HOOK_SIGNATURE: &str = "(i32, i32) -> i64";
        let mut hooks = [const { None }; Hook::COUNT];
        for hook in Hook::ALL {
            hooks[hook.index()] = wasm.func(hook.export(), HOOK_SIGNATURE)?;
        }
        let exports = Exports {
            alloc: required("hook_alloc", wasm.func("hook_alloc", "(i32) -> i32")?)?,
            abi_version: required(
                "hook_abi_version",
                wasm.func("hook_abi_version", "() -> i32")?,
            )?,
            init: wasm.func("hook_init", HOOK_SIGNATURE)?,
            hooks,
        };
        Ok(V1Instance {
            wasm,
            exports,
            calls: 0,
        })
    }

    /// Whether the module exports `hook_init`.
    pub fn has_init(&self) -> bool {
        self.exports.init.is_some()
    }

    /// Calls `hook_abi_version`.
    pub async fn abi_version(&mut self) -> Result<i32, HookFault> {
        self.wasm.begin(Duration::ZERO);
        self.wasm
            .call_sliced(&self.exports.abi_version, (), &Unmetered)
            .await
            .map_err(|e| e.into_fault().into())
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
        let mut guard = PartsGuard::set(self, parts);
        let this = &mut *guard;
        let len = this.begin_call(export, input, Duration::ZERO)?;
        let ptr = if len == 0 {
            0
        } else {
            let ptr = this.wasm.call_direct(&this.exports.alloc, len, meter)?;
            this.write_input(ptr, len, input)?
        };
        let func = this.exports.func(export)?;
        let packed = this.wasm.call_direct(func, (ptr, len), meter)?;
        Ok(unpack(packed))
    }

    /// As [`call_direct`](Self::call_direct), on a fiber that yields the
    /// worker at every tick once the call runs long; `ran` is running time
    /// the call already spent in a stopped attempt.
    pub async fn call_sliced(
        &mut self,
        export: Export,
        input: &[&[u8]],
        parts: &dyn InputParts,
        meter: &dyn SliceMeter,
        ran: Duration,
    ) -> Result<(u32, u32), CallError> {
        let mut guard = PartsGuard::set(self, parts);
        let this = &mut *guard;
        let len = this.begin_call(export, input, ran)?;
        let ptr = if len == 0 {
            0
        } else {
            let ptr = this
                .wasm
                .call_sliced(&this.exports.alloc, len, meter)
                .await?;
            this.write_input(ptr, len, input)?
        };
        let func = this.exports.func(export)?;
        let packed = this.wasm.call_sliced(func, (ptr, len), meter).await?;
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
        // One deadline for the whole call, input buffer included.
        self.wasm.begin(ran);
        let total: usize = input.iter().map(|piece| piece.len()).sum();
        // No input (a `lazy_ctx` guest): no buffer, (0, 0). Inputs are
        // bounded far below 2 GiB by Pingora's header limits.
        Ok(i32::try_from(total).unwrap_or(i32::MAX))
    }

    /// The output bytes a call returned, checked to lie in guest memory.
    pub fn output(&self, (ptr, len): (u32, u32)) -> Result<&[u8], HookFault> {
        if len as usize > MAX_OUTPUT_BYTES {
            return Err(HookFault::OutputTooLarge {
                len,
                max: MAX_OUTPUT_BYTES,
            });
        }
        self.wasm
            .memory(ptr, len)
            .ok_or(HookFault::OutputOutOfBounds {
                ptr,
                len,
                memory: self.wasm.memory_size(),
            })
    }

    /// Holds `slot` of its tenant's instance quota while it lives.
    pub fn hold(&mut self, slot: wasm_runtime::QuotaSlot) {
        self.wasm.hold(slot);
    }

    /// Gives up its quota slot, to the instance that replaces it.
    pub fn release(&mut self) -> Option<wasm_runtime::QuotaSlot> {
        self.wasm.release()
    }

    /// The running time of the last call, earlier attempts included.
    pub fn running(&self) -> Duration {
        self.wasm.running()
    }

    /// Writes `input` into the buffer of `len` bytes that `hook_alloc`
    /// returned at `ptr`; returns `ptr`.
    fn write_input(&mut self, ptr: i32, len: i32, input: &[&[u8]]) -> Result<i32, CallError> {
        if ptr == 0 {
            return Err(HookFault::Alloc(format!("returned 0 for {len} bytes")).into());
        }
        let target = self
            .wasm
            .memory_mut(ptr as u32, len as u32)
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
}

impl Exports {
    /// The function that runs `export`.
    fn func(&self, export: Export) -> Result<&HookFunc, CallError> {
        let func = match export {
            Export::Init => self.init.as_ref(),
            Export::Hook(hook) => self.hooks[hook.index()].as_ref(),
        };
        // The module checks exports before it calls; reaching here without
        // one is the host's mistake, reported as a trap.
        func.ok_or_else(|| {
            CallError::Fault(
                RuntimeFault::Trap {
                    trap: "the host called an export the module lacks".into(),
                    guest_said: None,
                }
                .into(),
            )
        })
    }
}

/// An instance whose store holds `parts` until this guard is dropped.
struct PartsGuard<'i> {
    instance: &'i mut V1Instance,
}

impl<'i> PartsGuard<'i> {
    fn set(instance: &'i mut V1Instance, parts: &'i dyn InputParts) -> Self {
        instance.wasm.abi_mut().parts = Some(PartsPtr::new(parts));
        PartsGuard { instance }
    }
}

impl Drop for PartsGuard<'_> {
    fn drop(&mut self) {
        self.instance.wasm.abi_mut().parts = None;
    }
}

impl Deref for PartsGuard<'_> {
    type Target = V1Instance;

    fn deref(&self) -> &V1Instance {
        self.instance
    }
}

impl DerefMut for PartsGuard<'_> {
    fn deref_mut(&mut self) -> &mut V1Instance {
        self.instance
    }
}
