//! A bound on how many instances one owner (a tenant) keeps alive at
//! once, so that no owner can take every slot of the engine's pool.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Live instances of one owner, against its bound. Every instance the
/// owner creates holds a [`QuotaSlot`] for as long as it lives: in a
/// call, held by a request, or idle.
#[derive(Debug)]
pub struct InstanceQuota {
    live: AtomicU32,
    max: u32,
}

impl InstanceQuota {
    /// A quota of `max` live instances.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(InstanceQuota {
            live: AtomicU32::new(0),
            max,
        })
    }

    /// One slot, or None when `max` instances are alive.
    pub fn take(self: &Arc<Self>) -> Option<QuotaSlot> {
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            if live >= self.max {
                return None;
            }
            match self.live.compare_exchange_weak(
                live,
                live + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(QuotaSlot(self.clone())),
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
}

impl Default for InstanceQuota {
    /// No bound.
    fn default() -> Self {
        InstanceQuota {
            live: AtomicU32::new(0),
            max: u32::MAX,
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
        assert!(quota.take().is_none());
        drop(a);
        assert_eq!(quota.live(), 1);
        assert!(quota.take().is_some());
    }
}
