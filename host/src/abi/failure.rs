//! How a hook call can fail to give its result, whatever the guest's ABI.

use std::fmt;

use crate::runtime::HookFault;

/// Why a hook gave no result.
#[derive(Debug)]
pub enum HookFailure {
    /// The guest misbehaved: 500, or skipped under fail-open.
    Fault(HookFault),
    /// The guest refused the request with its own status.
    Refused(Refusal),
    /// The guest was not called: its tenant's circuit breaker is open.
    Skipped,
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
                write!(f, "refused with {}: {}", refusal.status, refusal.message)
            }
            HookFailure::Skipped => f.write_str("not called, the circuit breaker is open"),
            HookFailure::Host(error) => write!(f, "host error: {error}"),
        }
    }
}

impl From<HookFault> for HookFailure {
    fn from(fault: HookFault) -> Self {
        HookFailure::Fault(fault)
    }
}
