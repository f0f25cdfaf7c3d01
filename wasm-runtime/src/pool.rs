//! Idle instances of one module, kept for reuse.

use std::sync::Mutex;

/// Idle instances kept per module; more are dropped when returned. Fast
/// calls finish within one poll, so a module rarely has more live instances
/// than worker threads; only calls that yield add more.
const MAX_IDLE_INSTANCES: usize = 16;

/// A module's idle instances, last returned first out (the warmest).
/// Boxed, so that taking and returning one moves a pointer, not the
/// instance.
pub struct IdleInstances<I> {
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<I>>>,
}

impl<I> IdleInstances<I> {
    /// An empty pool.
    pub fn new() -> Self {
        IdleInstances {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently returned instance, if any.
    pub fn take(&self) -> Option<Box<I>> {
        // A poisoned lock only means another thread panicked while pushing
        // or popping; the Vec itself is intact.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Drops every idle instance.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Returns a healthy instance for reuse, or drops it if the pool is
    /// full.
    pub fn put(&self, instance: Box<I>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(instance);
        }
    }
}

impl<I> Default for IdleInstances<I> {
    fn default() -> Self {
        Self::new()
    }
}
