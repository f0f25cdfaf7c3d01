//! The limits every instance runs under, as configured per tenant.

use std::time::Duration;

use anyhow::bail;

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Deadline of one hook call, in the call's own running time (time
    /// spent waiting for a worker between its slices does not count).
    pub hook_timeout_ms: u64,
    /// Linear memory cap of one instance.
    pub memory_limit_mib: u64,
    /// Hook calls an instance serves before it is replaced; 1 means a fresh
    /// instance for every call.
    pub instance_reuse: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            hook_timeout_ms: 20,
            memory_limit_mib: 64,
            instance_reuse: 1000,
        }
    }
}

/// Largest `hook_timeout_ms` accepted.
pub const MAX_HOOK_TIMEOUT_MS: u64 = 10_000;

/// Largest `memory_limit_mib` accepted.
pub const MAX_MEMORY_LIMIT_MIB: u64 = 4096;

impl GuestLimits {
    /// Refuses limits out of range (the flags' ranges).
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_HOOK_TIMEOUT_MS).contains(&self.hook_timeout_ms) {
            bail!("hook_timeout_ms must be 1-{MAX_HOOK_TIMEOUT_MS}");
        }
        if !(1..=MAX_MEMORY_LIMIT_MIB).contains(&self.memory_limit_mib) {
            bail!("memory_limit_mib must be 1-{MAX_MEMORY_LIMIT_MIB}");
        }
        if self.instance_reuse == 0 {
            bail!("instance_reuse must be at least 1");
        }
        Ok(())
    }

    /// The deadline of one call, in running time.
    #[inline]
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_millis(self.hook_timeout_ms)
    }

    /// The memory cap in bytes.
    #[inline]
    pub fn memory_limit_bytes(&self) -> usize {
        (self.memory_limit_mib as usize).saturating_mul(1 << 20)
    }
}
