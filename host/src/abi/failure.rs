//! How a hook call can fail to give its result, whatever the guest's ABI.

use std::fmt;

use wasm_runtime::{NoRoom, RuntimeFault};

use crate::abi::throttle::Throttle;
use crate::upstream::pools::PoolError;

/// A guest fault: the request gets 500 (or the hook is skipped under
/// fail-open) and the log says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFault {
    /// The wasm layer stopped the call: deadline, memory, trap, or no
    /// instance.
    Runtime(RuntimeFault),
    /// `hook_alloc` returned 0 or a buffer outside memory.
    Alloc(String),
    /// The returned `(ptr, len)` is outside the guest's memory.
    OutputOutOfBounds { ptr: u32, len: u32, memory: usize },
    /// The output is larger than the host accepts.
    OutputTooLarge { len: u32, max: usize },
    /// The output is not UTF-8.
    InvalidUtf8,
    /// The output is not JSON of the expected shape, or asks for what the
    /// host refuses (a bad header, status or peer).
    InvalidOutput(String),
    /// The guest named a pool its tenant does not have, or gave no key
    /// for a consistent one.
    Pool(PoolError),
    /// A proxy-wasm filter's VM, shared with other filter entries of its
    /// tenant (one `vm_id`), faulted in another entry's callback on this
    /// request: the instance holding this entry's context is gone.
    VmLost,
}

impl HookFault {
    /// A new instance could not be made, for `why`.
    pub fn instantiate(why: String) -> Self {
        RuntimeFault::Instantiate(why).into()
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HookFault::Runtime(fault) => fault.kind(),
            HookFault::Alloc(_) => "alloc",
            HookFault::OutputOutOfBounds { .. }
            | HookFault::OutputTooLarge { .. }
            | HookFault::InvalidUtf8
            | HookFault::InvalidOutput(_)
            | HookFault::Pool(_) => "invalid_output",
            HookFault::VmLost => "vm_lost",
        }
    }
}

impl fmt::Display for HookFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookFault::Runtime(fault) => fault.fmt(f),
            HookFault::Alloc(e) => write!(f, "hook_alloc failed: {}", guest_text(e)),
            HookFault::OutputOutOfBounds { ptr, len, memory } => write!(
                f,
                "output ({ptr:#x}, {len}) lies outside guest memory of {memory} bytes"
            ),
            HookFault::OutputTooLarge { len, max } => {
                write!(f, "output of {len} bytes exceeds the {max} byte cap")
            }
            HookFault::InvalidUtf8 => write!(f, "output is not UTF-8"),
            HookFault::InvalidOutput(e) => write!(f, "invalid output: {}", guest_text(e)),
            HookFault::Pool(e) => write!(f, "invalid output: {e}"),
            HookFault::VmLost => write!(
                f,
                "its VM faulted in another filter of this request (they share a vm_id)"
            ),
        }
    }
}

impl std::error::Error for HookFault {}

/// Text a guest wrote or caused (its output decode errors quote it), as
/// it may enter the log: escaped and capped.
pub(crate) fn guest_text(text: &str) -> String {
    wasm_runtime::guest_text::sanitize(text, wasm_runtime::guest_text::MAX_GUEST_TEXT)
}

impl From<RuntimeFault> for HookFault {
    fn from(fault: RuntimeFault) -> Self {
        HookFault::Runtime(fault)
    }
}

impl From<PoolError> for HookFault {
    fn from(error: PoolError) -> Self {
        HookFault::Pool(error)
    }
}

/// How an ABI's call ended without output: the wasm layer's
/// [`wasm_runtime::CallError`], or a fault in the guest's output.
#[derive(Debug)]
pub enum CallError {
    /// The guest faulted.
    Fault(HookFault),
    /// A direct call ran long and was stopped; run it again, sliced, in a
    /// fresh instance.
    NeedsSlicing,
}

impl CallError {
    /// The fault to report (see [`wasm_runtime::CallError::into_fault`]).
    pub fn into_fault(self) -> HookFault {
        match self {
            CallError::Fault(fault) => fault,
            CallError::NeedsSlicing => wasm_runtime::CallError::NeedsSlicing.into_fault().into(),
        }
    }
}

impl From<wasm_runtime::CallError> for CallError {
    fn from(error: wasm_runtime::CallError) -> Self {
        match error {
            wasm_runtime::CallError::Fault(fault) => CallError::Fault(fault.into()),
            wasm_runtime::CallError::NeedsSlicing => CallError::NeedsSlicing,
        }
    }
}

impl From<HookFault> for CallError {
    fn from(fault: HookFault) -> Self {
        CallError::Fault(fault)
    }
}

impl From<RuntimeFault> for CallError {
    fn from(fault: RuntimeFault) -> Self {
        CallError::Fault(fault.into())
    }
}

/// Why a hook gave no result.
#[derive(Debug)]
pub enum HookFailure {
    /// The guest misbehaved: 500, or skipped under fail-open.
    Fault(HookFault),
    /// The guest refused the request with its own status.
    Refused(Refusal),
    /// The guest was not called: its tenant's budget refused the call
    /// (the words say why: the breaker, the guest-time bucket, the calls
    /// in flight).
    Skipped(&'static str),
    /// The guest was not called: no new instance may be made for it, for
    /// the reason given (its tenant's `max_instances` or `max_memory_mib`
    /// are taken, or the engine's slots are). Not the guest's fault:
    /// answered 503 with Retry-After, as a budget refusal.
    Busy(Throttle),
    /// The host failed around the call (not the guest's fault, so not
    /// counted against it): 500.
    Host(String),
}

/// A guest's refusal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status the guest asked for; 400-599 is honoured, anything else
    /// is a fault.
    pub status: u16,
    /// Why, for the log.
    pub message: String,
}

impl HookFailure {
    /// No room for a new instance, as the quota or the engine said.
    pub fn no_room(room: NoRoom) -> Self {
        HookFailure::Busy(match room {
            NoRoom::Instances => Throttle::Instances,
            NoRoom::Memory => Throttle::Memory,
            NoRoom::EngineSlots => Throttle::EngineSlots,
        })
    }

    /// Whether it counts against the guest (its breaker and fault metrics).
    pub fn is_fault(&self) -> bool {
        matches!(self, HookFailure::Fault(_))
    }
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookFailure::Fault(fault) => fault.fmt(f),
            HookFailure::Refused(refusal) => {
                write!(
                    f,
                    "refused with {}: {}",
                    refusal.status,
                    guest_text(&refusal.message)
                )
            }
            HookFailure::Skipped(why) => write!(f, "not called, {why}"),
            HookFailure::Busy(throttle) => {
                write!(f, "not called, {}", throttle.skipped_because())
            }
            HookFailure::Host(error) => write!(f, "host error: {error}"),
        }
    }
}

impl From<RuntimeFault> for HookFailure {
    fn from(fault: RuntimeFault) -> Self {
        HookFault::from(fault).into()
    }
}

/// A fault, but for want of room for a new instance (the tenant's memory
/// bound, the engine's slots): that is a limit, not the guest's doing.
impl From<HookFault> for HookFailure {
    fn from(fault: HookFault) -> Self {
        match fault {
            HookFault::Runtime(RuntimeFault::NoRoom(room, _)) => HookFailure::no_room(room),
            fault => HookFailure::Fault(fault),
        }
    }
}
