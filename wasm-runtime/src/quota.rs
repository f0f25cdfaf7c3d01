//! Bounds on what one owner (a tenant) keeps alive at once: how many
//! instances, and how much linear memory over them, so that no owner can
//! take every slot of the engine's pool or the machine's memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Why no new instance may be made, through no fault of its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The owner's `max` instances are all alive.
    Instances,
    /// The owner's live instances hold all the memory it may have.
    Memory,
    /// The engine's pool has no free slot (every owner's instances
    /// together): a host limit, not the owner's.
    EngineSlots,
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoRoom::Instances => "its owner's instances are all alive",
            NoRoom::Memory => "its owner's instances hold all the memory it may have",
            NoRoom::EngineSlots => "the engine's instance slots are all in use",
        })
    }
}

impl std::error::Error for NoRoom {}

/// Live instances of one owner, and their linear memory, against its
/// bounds. Every instance the owner creates holds a [`QuotaSlot`] for as
/// long as it lives (in a call, held by a request, or idle), and its
/// memory is charged as it grows ([`charge_memory`](Self::charge_memory)).
#[derive(Debug)]
pub struct InstanceQuota {
    live: AtomicU32,
    max: u32,
    memory: AtomicU64,
    max_memory: u64,
}

impl InstanceQuota {
    /// A quota of `max` live instances, their memory unbounded.
    pub fn new(max: u32) -> Arc<Self> {
        Self::with_memory(max, u64::MAX)
    }

    /// A quota of `max` live instances holding at most `max_memory` bytes
    /// of linear memory together.
    pub fn with_memory(max: u32, max_memory: u64) -> Arc<Self> {
        Arc::new(InstanceQuota {
            live: AtomicU32::new(0),
            max,
            memory: AtomicU64::new(0),
            max_memory,
        })
    }

    /// One slot; none when `max` instances are alive or their memory is
    /// all the owner may have.
    pub fn take(self: &Arc<Self>) -> Result<QuotaSlot, NoRoom> {
        if self.memory.load(Ordering::Relaxed) >= self.max_memory {
            return Err(NoRoom::Memory);
        }
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            if live >= self.max {
                return Err(NoRoom::Instances);
            }
            match self.live.compare_exchange_weak(
                live,
                live + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(QuotaSlot(self.clone())),
                Err(now) => live = now,
            }
        }
    }

    /// Instances alive now.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Charges `bytes` more of linear memory; false (nothing charged) if
    /// that would pass the owner's bound.
    pub fn charge_memory(&self, bytes: u64) -> bool {
        self.memory
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.max_memory)
            })
            .is_ok()
    }

    /// Gives back `bytes` charged before (an instance is gone).
    pub fn refund_memory(&self, bytes: u64) {
        self.memory.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Linear memory its live instances hold, in bytes.
    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }
}

impl Default for InstanceQuota {
    /// No bound.
    fn default() -> Self {
        InstanceQuota {
            live: AtomicU32::new(0),
            max: u32::MAX,
            memory: AtomicU64::new(0),
            max_memory: u64::MAX,
        }
    }
}

/// One live instance's place in its owner's quota, given back on drop.
#[derive(Debug)]
pub struct QuotaSlot(Arc<InstanceQuota>);

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_come_back() {
        let quota = InstanceQuota::new(2);
        let a = quota.take().unwrap();
        let _b = quota.take().unwrap();
        assert_eq!(quota.take().err(), Some(NoRoom::Instances));
        drop(a);
        assert_eq!(quota.live(), 1);
        assert!(quota.take().is_ok());
    }

    #[test]
    fn memory_is_bounded_over_the_owner_s_instances() {
        let quota = InstanceQuota::with_memory(10, 100);
        assert!(quota.charge_memory(60));
        assert!(!quota.charge_memory(41), "past the bound: nothing charged");
        assert!(quota.charge_memory(40));
        assert_eq!(quota.take().err(), Some(NoRoom::Memory));
        quota.refund_memory(60);
        assert_eq!(quota.memory(), 40);
        assert!(quota.take().is_ok());
    }
}
