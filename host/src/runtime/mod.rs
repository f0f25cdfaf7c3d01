//! The wasmtime side: one engine per process, one [`GuestModule`] per
//! `.wasm` file, and instances that run hooks under limits.

mod engine;
mod fault;
mod instance;
mod module;

pub use engine::{EngineOptions, EpochTicker, GuestEngine};
pub use fault::HookFault;
pub use instance::{InputParts, NoParts, SliceMeter, Unmetered};
pub use module::{
    decode_json, GuestLimits, GuestModule, Hook, InputMode, MAX_HOOK_TIMEOUT_MS,
    MAX_MEMORY_LIMIT_MIB,
};
