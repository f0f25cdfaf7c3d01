//! Why a tenant's guest call was refused, and the states of its circuit
//! breaker: the words both the budget and the metrics speak.

/// Why a guest call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// `max_concurrent_calls` calls already in flight.
    Concurrency,
    /// The guest-time bucket is empty.
    Cpu,
    /// The circuit breaker is open (or half-open with its probe in flight).
    BreakerOpen,
    /// The tenant's `max_instances` instances are all alive.
    Instances,
    /// The tenant's live instances hold its `max_memory_mib`.
    Memory,
    /// The engine's instance slots are all in use (by every tenant).
    EngineSlots,
    /// A filter under `on_error: fail_reload` is having its VM replaced
    /// after a fault (its backoff).
    FilterReloading,
}

impl Throttle {
    /// Every reason, as the metrics label them.
    pub const ALL: [Throttle; 7] = [
        Throttle::Concurrency,
        Throttle::Cpu,
        Throttle::BreakerOpen,
        Throttle::Instances,
        Throttle::Memory,
        Throttle::EngineSlots,
        Throttle::FilterReloading,
    ];

    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::Concurrency => "concurrency",
            Throttle::Cpu => "cpu",
            Throttle::BreakerOpen => "breaker_open",
            Throttle::Instances => "instances",
            Throttle::Memory => "memory",
            Throttle::EngineSlots => "engine_slots",
            Throttle::FilterReloading => "filter_reloading",
        }
    }

    /// Why a call refused for it was skipped, for the log.
    pub fn skipped_because(self) -> &'static str {
        match self {
            Throttle::Concurrency => {
                "the tenant's guest calls in flight are at max_concurrent_calls"
            }
            Throttle::Cpu => "the tenant's guest time budget is spent",
            Throttle::BreakerOpen => "the circuit breaker is open",
            Throttle::Instances => "the tenant's instances are all alive (max_instances)",
            Throttle::Memory => "the tenant's instances hold all its memory (max_memory_mib)",
            Throttle::EngineSlots => {
                "the engine's instance slots are all in use (a host limit, not the tenant's)"
            }
            Throttle::FilterReloading => {
                "the filter's VM is being replaced after a fault (on_error: fail_reload)"
            }
        }
    }

    /// The client's status: 429 for a rate, 503 otherwise.
    pub fn status(self) -> u16 {
        match self {
            Throttle::Cpu => 429,
            Throttle::Concurrency
            | Throttle::BreakerOpen
            | Throttle::Instances
            | Throttle::Memory
            | Throttle::EngineSlots
            | Throttle::FilterReloading => 503,
        }
    }
}

/// The breaker's states, as the gauge shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// Calls fail fast until the cool-down has passed.
    Open = 1,
    /// One probe call is in flight; the others fail fast.
    HalfOpen = 2,
}

impl BreakerState {
    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}
