//! Why a guest call failed in the wasm layer, in words for the log.

use std::fmt;

use crate::guest_text::{sanitize, MAX_GUEST_TEXT};
use crate::NoRoom;

/// A fault the wasm layer names: the guest ran too long, wanted too much
/// memory, trapped, or could not be instantiated. What an ABI makes of a
/// guest's output is the ABI's to name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeFault {
    /// The hook ran past its deadline (`--hook-timeout-ms`).
    Timeout { limit_ms: u64 },
    /// The instance tried to grow memory past `--memory-limit-mib`.
    MemoryLimit { limit_mib: u64, trap: String },
    /// The guest trapped; `guest_said` is its last error log line (a panic
    /// message, for Rust guests).
    Trap {
        trap: String,
        guest_said: Option<String>,
    },
    /// A new instance could not be made.
    Instantiate(String),
    /// A new instance could not be made for want of room: its owner's
    /// memory bound, or a free slot in the engine's pool. Not the guest's
    /// fault: the host answers 503 and does not count it against the guest.
    NoRoom(NoRoom, String),
}

impl RuntimeFault {
    /// What a failed instantiation is: [`NoRoom`](Self::NoRoom) when the
    /// pooling allocator is out of slots or the owner's memory bound was
    /// met, else [`Instantiate`](Self::Instantiate).
    pub fn of_instantiation(error: &wasmtime::Error) -> Self {
        let text = format!("{error:#}");
        if let Some(room) = error.downcast_ref::<NoRoom>() {
            RuntimeFault::NoRoom(*room, text)
        } else if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            RuntimeFault::NoRoom(NoRoom::EngineSlots, text)
        } else {
            RuntimeFault::Instantiate(text)
        }
    }
}

impl RuntimeFault {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeFault::Timeout { .. } => "timeout",
            RuntimeFault::MemoryLimit { .. } => "memory_limit",
            RuntimeFault::Trap { .. } => "trap",
            RuntimeFault::Instantiate(_) => "instantiate",
            RuntimeFault::NoRoom(..) => "no_room",
        }
    }
}

/// Traps and instantiation errors carry guest text (backtraces name the
/// guest's functions from its name section; a panic message is the
/// guest's own): every part of it goes through the log sanitiser.
impl fmt::Display for RuntimeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clean = |text: &str| sanitize(text, MAX_GUEST_TEXT);
        match self {
            RuntimeFault::Timeout { limit_ms } => write!(f, "deadline of {limit_ms} ms exceeded"),
            RuntimeFault::MemoryLimit { limit_mib, trap } => {
                write!(
                    f,
                    "memory limit of {limit_mib} MiB reached ({})",
                    clean(trap)
                )
            }
            RuntimeFault::Trap {
                trap,
                guest_said: Some(said),
            } => write!(f, "trap: {}; guest said: {}", clean(trap), clean(said)),
            RuntimeFault::Trap { trap, .. } => write!(f, "trap: {}", clean(trap)),
            RuntimeFault::Instantiate(e) => write!(f, "cannot instantiate: {}", clean(e)),
            RuntimeFault::NoRoom(room, e) => {
                write!(f, "no room for an instance ({room}): {}", clean(e))
            }
        }
    }
}

impl std::error::Error for RuntimeFault {}
