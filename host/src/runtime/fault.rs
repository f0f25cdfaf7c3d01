//! Why a hook call failed, in words for the log.

use std::fmt;

/// A guest fault: the request gets 500 and the log says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFault {
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
    /// `hook_alloc` returned 0 or a buffer outside memory.
    Alloc(String),
    /// The returned `(ptr, len)` is outside the guest's memory.
    OutputOutOfBounds { ptr: u32, len: u32, memory: usize },
    /// The output is larger than the host accepts.
    OutputTooLarge { len: u32, max: usize },
    /// The output is not UTF-8.
    InvalidUtf8,
    /// The output is not JSON of the expected shape.
    InvalidOutput(String),
}

impl HookFault {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HookFault::Timeout { .. } => "timeout",
            HookFault::MemoryLimit { .. } => "memory_limit",
            HookFault::Trap { .. } => "trap",
            HookFault::Instantiate(_) => "instantiate",
            HookFault::Alloc(_) => "alloc",
            HookFault::OutputOutOfBounds { .. }
            | HookFault::OutputTooLarge { .. }
            | HookFault::InvalidUtf8
            | HookFault::InvalidOutput(_) => "invalid_output",
        }
    }
}

impl fmt::Display for HookFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookFault::Timeout { limit_ms } => write!(f, "deadline of {limit_ms} ms exceeded"),
            HookFault::MemoryLimit { limit_mib, trap } => {
                write!(f, "memory limit of {limit_mib} MiB reached ({trap})")
            }
            HookFault::Trap {
                trap,
                guest_said: Some(said),
            } => write!(f, "trap: {trap}; guest said: {said}"),
            HookFault::Trap { trap, .. } => write!(f, "trap: {trap}"),
            HookFault::Instantiate(e) => write!(f, "cannot instantiate: {e}"),
            HookFault::Alloc(e) => write!(f, "hook_alloc failed: {e}"),
            HookFault::OutputOutOfBounds { ptr, len, memory } => write!(
                f,
                "output ({ptr:#x}, {len}) lies outside guest memory of {memory} bytes"
            ),
            HookFault::OutputTooLarge { len, max } => {
                write!(f, "output of {len} bytes exceeds the {max} byte cap")
            }
            HookFault::InvalidUtf8 => write!(f, "output is not UTF-8"),
            HookFault::InvalidOutput(e) => write!(f, "invalid output: {e}"),
        }
    }
}

impl std::error::Error for HookFault {}
