//! The wasm layer: one engine per process, instances that run a guest's
//! exports under limits (memory, deadline, slicing) and name its faults,
//! and pools of idle instances. It knows wasmtime and nothing of HTTP,
//! Pingora or any guest ABI; the host's ABIs build on it.

mod engine;
mod fault;
pub mod guest_text;
mod instance;
mod limits;
mod pool;
mod quota;

pub use engine::{release_freed_memory, EngineOptions, GuestEngine, LongCallSignal, FEW_CALLS};
pub use fault::RuntimeFault;
pub use instance::{
    block_on, read_guest_line, run_to_end, CallError, Prepared, Sandbox, SliceMeter, Unmetered,
    WasmInstance,
};
pub use limits::{GuestLimits, MAX_HOOK_TIMEOUT_MS, MAX_MEMORY_LIMIT_MIB};
pub use pool::IdleInstances;
pub use quota::{InstanceQuota, NoRoom, QuotaSlot};
