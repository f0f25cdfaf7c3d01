//! A tenant's guest budget: how many of its guest calls may be in flight,
//! how much guest time it may spend per second, and a circuit breaker that
//! stops calling a module that keeps faulting. Each is checked before a
//! guest call, so a tenant over its budget is answered at once without
//! running its guest, and its neighbours keep the workers.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;

pub use crate::abi::throttle::{BreakerState, Throttle};
use crate::metrics::TenantMetrics;
use wasm_runtime::SliceMeter;

/// A tenant's budget settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Guest calls of the tenant in flight at once; past it, 503.
    pub max_concurrent_calls: u32,
    /// Guest running time per second, in ms (a token bucket holding one
    /// second's worth); once spent, 429 until it refills.
    pub cpu_ms_per_s: u32,
    /// Calls within `breaker_window_ms` below which the breaker does not
    /// judge (Hystrix's requestVolumeThreshold); 0 never opens it.
    pub breaker_min_calls: u32,
    /// The share of those calls, in percent, that must have faulted for
    /// the breaker to open (Hystrix's errorThresholdPercentage).
    pub breaker_fault_percent: u32,
    /// The sliding window the breaker counts calls and faults in.
    pub breaker_window_ms: u64,
    /// How long the breaker stays open before a probe call is let through.
    pub breaker_cooldown_ms: u64,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            max_concurrent_calls: default_max_concurrent_calls(),
            cpu_ms_per_s: 100,
            breaker_min_calls: 20,
            breaker_fault_percent: 50,
            breaker_window_ms: 10_000,
            breaker_cooldown_ms: 5_000,
        }
    }
}

/// Four calls in flight per core, at least 8. An honest hook never
/// yields, so its calls in flight are at most one per worker thread; only
/// long calls pile up, and each admitted one may run its whole deadline
/// whatever the guest-time bucket says, so this also bounds how far a
/// burst of them overshoots `cpu_ms_per_s`.
fn default_max_concurrent_calls() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    cores.saturating_mul(4).clamp(8, MAX_CONCURRENT_CALLS)
}

/// Largest `max_concurrent_calls` accepted: the pool's instance slots.
pub const MAX_CONCURRENT_CALLS: u32 = 1000;

/// Largest `cpu_ms_per_s` accepted: 64 cores' worth.
pub const MAX_CPU_MS_PER_S: u32 = 64_000;

/// Largest breaker `min_calls` accepted (0 turns the breaker off).
pub const MAX_BREAKER_MIN_CALLS: u32 = 1_000_000;

/// Largest breaker window or cool-down accepted: one hour.
pub const MAX_BREAKER_MS: u64 = 3_600_000;

impl BudgetLimits {
    /// Why `throttle` refused a call, in words for the log and the error.
    pub fn explain(&self, throttle: Throttle) -> String {
        let limits = self;
        match throttle {
            Throttle::Concurrency => format!(
                "{} guest calls already in flight (max_concurrent_calls)",
                limits.max_concurrent_calls
            ),
            Throttle::Cpu => format!(
                "guest time budget of {} ms per second spent (cpu_ms_per_s)",
                limits.cpu_ms_per_s
            ),
            Throttle::BreakerOpen => format!(
                "circuit breaker open: at least {}% of at least {} calls in {} ms faulted",
                limits.breaker_fault_percent, limits.breaker_min_calls, limits.breaker_window_ms
            ),
            throttle @ (Throttle::Instances
            | Throttle::Memory
            | Throttle::EngineSlots
            | Throttle::FilterReloading) => throttle.skipped_because().to_string(),
        }
    }

    /// Refuses settings out of range (the flags' ranges).
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_CONCURRENT_CALLS).contains(&self.max_concurrent_calls) {
            bail!("max_concurrent_calls must be 1-{MAX_CONCURRENT_CALLS}");
        }
        if !(1..=MAX_CPU_MS_PER_S).contains(&self.cpu_ms_per_s) {
            bail!("cpu_ms_per_s must be 1-{MAX_CPU_MS_PER_S}");
        }
        if self.breaker_min_calls > MAX_BREAKER_MIN_CALLS {
            bail!("breaker min_calls must be 0-{MAX_BREAKER_MIN_CALLS}");
        }
        if !(1..=100).contains(&self.breaker_fault_percent) {
            bail!("breaker fault_percent must be 1-100");
        }
        if !(1..=MAX_BREAKER_MS).contains(&self.breaker_window_ms) {
            bail!("breaker window_ms must be 1-{MAX_BREAKER_MS}");
        }
        if !(1..=MAX_BREAKER_MS).contains(&self.breaker_cooldown_ms) {
            bail!("breaker cooldown_ms must be 1-{MAX_BREAKER_MS}");
        }
        Ok(())
    }
}

/// One tenant's budget, shared by all its requests.
pub struct Budget {
    limits: BudgetLimits,
    origin: Instant,
    in_flight: AtomicU32,
    /// The guest-time bucket as a theoretical arrival time (GCRA): the
    /// instant, in ns since `origin`, at which all guest time charged so
    /// far is paid for at `cpu_ms_per_s`. The bucket is empty when that
    /// lies more than a second ahead.
    paid_until: AtomicU64,
    /// The latest time (ns since `origin`) a charge was made at: a clock
    /// that costs nothing to read and is never ahead of now, so admitting
    /// by it is never wrong; only a refusal reads the real clock.
    last_charge: AtomicU64,
    /// `BreakerState` as u8: read on every call, written on transitions.
    state: AtomicU8,
    /// Calls and faults in the breaker's sliding window.
    window: [WindowBucket; WINDOW_BUCKETS],
    breaker: Mutex<BreakerLog>,
    /// The second (since `origin`) of the last throttle log line.
    throttle_logged: AtomicU64,
    metrics: TenantMetrics,
}

/// What the breaker remembers; touched only on transitions.
struct BreakerLog {
    /// When it last opened.
    opened: Instant,
}

/// The breaker's window is this many buckets, each a tenth of it, as in
/// Hystrix's rolling statistics: a call costs two relaxed atomic adds.
const WINDOW_BUCKETS: usize = 10;

/// Calls and faults in one tenth of the breaker's window.
#[derive(Default)]
struct WindowBucket {
    /// The window slot (time / bucket width) the counts belong to.
    slot: AtomicU64,
    calls: AtomicU32,
    faults: AtomicU32,
}

/// How far behind now the bucket's clock may fall: idle credit beyond one
/// second's bucket is not kept, and the clock is pulled forward at most
/// once per this much idleness.
const IDLE_SLACK: Duration = Duration::from_millis(100);

/// The bucket holds one second's worth of guest time.
const BUCKET: Duration = Duration::from_secs(1);

impl Budget {
    /// A fresh budget (closed breaker, full bucket).
    pub fn new(limits: BudgetLimits, metrics: TenantMetrics) -> Self {
        let origin = Instant::now();
        metrics.breaker_state(BreakerState::Closed);
        Budget {
            limits,
            origin,
            in_flight: AtomicU32::new(0),
            paid_until: AtomicU64::new(0),
            last_charge: AtomicU64::new(0),
            state: AtomicU8::new(BreakerState::Closed as u8),
            window: Default::default(),
            breaker: Mutex::new(BreakerLog { opened: origin }),
            throttle_logged: AtomicU64::new(u64::MAX),
            metrics,
        }
    }

    /// The settings.
    pub fn limits(&self) -> &BudgetLimits {
        &self.limits
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to make one guest call. The permit holds a concurrency slot
    /// until dropped; report how the call went with [`CallPermit::finish`].
    /// A refusal is counted in the metrics; the caller logs and answers.
    pub fn admit(&self) -> Result<CallPermit<'_>, Throttle> {
        let admitted = self.try_admit();
        if let Err(throttle) = admitted {
            self.metrics.throttled(throttle);
        }
        admitted
    }

    /// Like [`admit`](Self::admit), for a call to an instance a request
    /// already holds: not refused for the calls in flight (it is counted
    /// in them while it runs).
    pub fn admit_held(&self) -> Result<CallPermit<'_>, Throttle> {
        let admitted = self.try_admit_with(false);
        if let Err(throttle) = admitted {
            self.metrics.throttled(throttle);
        }
        admitted
    }

    fn try_admit(&self) -> Result<CallPermit<'_>, Throttle> {
        self.try_admit_with(true)
    }

    fn try_admit_with(&self, capped: bool) -> Result<CallPermit<'_>, Throttle> {
        let wants_probe = match self.breaker_state() {
            BreakerState::Closed => false,
            BreakerState::HalfOpen => return Err(Throttle::BreakerOpen),
            BreakerState::Open if !self.cooldown_over() => return Err(Throttle::BreakerOpen),
            BreakerState::Open => true,
        };
        if !self.cpu_left() {
            return Err(Throttle::Cpu);
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // From here on the permit holds a slot: its drop gives it back.
        let mut permit = CallPermit {
            budget: self,
            probe: false,
            finished: false,
            running_ns: AtomicU64::new(0),
        };
        if capped && in_flight >= self.limits.max_concurrent_calls {
            return Err(Throttle::Concurrency);
        }
        // Only a call that will be made becomes the probe, so a probe is
        // never refused for another reason.
        if wants_probe {
            if !self.try_half_open() {
                return Err(Throttle::BreakerOpen);
            }
            permit.probe = true;
        }
        Ok(permit)
    }

    /// Whether the breaker has been open for its cool-down.
    fn cooldown_over(&self) -> bool {
        let log = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        log.opened.elapsed() >= Duration::from_millis(self.limits.breaker_cooldown_ms)
    }

    /// Seconds after which a call refused for `throttle` may succeed, for
    /// `Retry-After`: when the bucket has room again, when the breaker will
    /// let a probe through, or 1 for a full house.
    pub fn retry_after(&self, throttle: Throttle) -> u64 {
        let wait = match throttle {
            Throttle::Concurrency
            | Throttle::Instances
            | Throttle::Memory
            | Throttle::EngineSlots
            | Throttle::FilterReloading => Duration::ZERO,
            Throttle::Cpu => {
                let full_until = self.paid_until.load(Ordering::Relaxed);
                let room_at = full_until.saturating_sub(BUCKET.as_nanos() as u64);
                Duration::from_nanos(room_at.saturating_sub(self.now_ns()))
            }
            Throttle::BreakerOpen => {
                let log = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
                Duration::from_millis(self.limits.breaker_cooldown_ms)
                    .saturating_sub(log.opened.elapsed())
            }
        };
        // Whole seconds, rounded up, at least one.
        (wait.as_millis() as u64).div_ceil(1000).max(1)
    }

    /// Whether a throttled call should be logged: the first in each
    /// second, so a flood of refusals does not flood the log.
    pub fn log_throttle_now(&self) -> bool {
        let second = self.origin.elapsed().as_secs();
        self.throttle_logged.swap(second, Ordering::Relaxed) != second
    }

    /// Whether the bucket still holds guest time.
    fn cpu_left(&self) -> bool {
        // Judged first by the last charge's time (free to read, never ahead
        // of now): if the bucket has room then, it has room now.
        self.cpu_left_at(self.last_charge.load(Ordering::Relaxed))
            || self.cpu_left_at(self.now_ns())
    }

    fn cpu_left_at(&self, now: u64) -> bool {
        let paid_until = self.paid_until.load(Ordering::Relaxed);
        let slack = IDLE_SLACK.as_nanos() as u64;
        if paid_until.saturating_add(slack) < now {
            // Idle for a while: the bucket is full, no older credit kept.
            // A lost race means another call did the same.
            let _ = self.paid_until.compare_exchange(
                paid_until,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return true;
        }
        paid_until <= now + BUCKET.as_nanos() as u64
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Open -> half-open once the cool-down has passed; true for the one
    /// caller that made the move (it carries the probe).
    fn try_half_open(&self) -> bool {
        let log = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if log.opened.elapsed() < Duration::from_millis(self.limits.breaker_cooldown_ms) {
            return false;
        }
        let moved = self
            .state
            .compare_exchange(
                BreakerState::Open as u8,
                BreakerState::HalfOpen as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if moved {
            self.metrics.breaker_state(BreakerState::HalfOpen);
        }
        drop(log);
        if moved {
            log::info!(
                "tenant {}: circuit breaker half-open, probing with one call",
                self.metrics.tenant()
            );
        }
        moved
    }

    /// A call's outcome, for the breaker.
    fn record(&self, probe: bool, faulted: bool) {
        if probe {
            if faulted {
                self.set_state(BreakerState::Open, |log| log.opened = Instant::now());
                log::warn!(
                    "tenant {}: circuit breaker open again, the probe call faulted; next probe in {} ms",
                    self.metrics.tenant(),
                    self.limits.breaker_cooldown_ms
                );
            } else {
                self.clear_window();
                self.set_state(BreakerState::Closed, |_| {});
                log::info!(
                    "tenant {}: circuit breaker closed, the probe call succeeded",
                    self.metrics.tenant()
                );
            }
            return;
        }
        if self.limits.breaker_min_calls == 0 {
            return;
        }
        // The clock of the call's last charge: free, and at most a slice
        // behind now.
        let slot = self.last_charge.load(Ordering::Relaxed) / self.bucket_ns();
        let bucket = &self.window[slot as usize % WINDOW_BUCKETS];
        let seen = bucket.slot.load(Ordering::Relaxed);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The bucket is reused for a new tenth of the window. A call
            // counted by a racing thread in between may be lost: the
            // breaker judges a rate, and one call more or less is noise.
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.faults.store(0, Ordering::Relaxed);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if !faulted {
            return;
        }
        bucket.faults.fetch_add(1, Ordering::Relaxed);
        let (calls, faults) = self.window_counts(slot);
        let limits = &self.limits;
        let tripped = calls >= u64::from(limits.breaker_min_calls)
            && faults * 100 >= calls * u64::from(limits.breaker_fault_percent);
        if !tripped {
            return;
        }
        let log = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if self.breaker_state() != BreakerState::Closed {
            return;
        }
        drop(log);
        self.clear_window();
        self.set_state(BreakerState::Open, |log| log.opened = Instant::now());
        log::warn!(
            "tenant {}: circuit breaker open: {faults} of {calls} calls in {} ms faulted \
             (at least {}% of at least {}); calls fail fast for {} ms",
            self.metrics.tenant(),
            limits.breaker_window_ms,
            limits.breaker_fault_percent,
            limits.breaker_min_calls,
            limits.breaker_cooldown_ms
        );
    }

    /// The width of one bucket of the window, in ns (at least 1).
    fn bucket_ns(&self) -> u64 {
        (self.limits.breaker_window_ms * 1_000_000 / WINDOW_BUCKETS as u64).max(1)
    }

    /// Calls and faults in the window that ends with `slot`.
    fn window_counts(&self, slot: u64) -> (u64, u64) {
        let oldest = slot.saturating_sub(WINDOW_BUCKETS as u64 - 1);
        self.window
            .iter()
            .filter(|b| (oldest..=slot).contains(&b.slot.load(Ordering::Relaxed)))
            .fold((0, 0), |(calls, faults), b| {
                (
                    calls + u64::from(b.calls.load(Ordering::Relaxed)),
                    faults + u64::from(b.faults.load(Ordering::Relaxed)),
                )
            })
    }

    /// Forgets the window's counts (on opening and closing).
    fn clear_window(&self) {
        for bucket in &self.window {
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.faults.store(0, Ordering::Relaxed);
        }
    }

    fn set_state(&self, state: BreakerState, update: impl FnOnce(&mut BreakerLog)) {
        let mut log = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut log);
        self.state.store(state as u8, Ordering::Release);
        // Under the lock, so racing transitions leave the gauge right.
        self.metrics.breaker_state(state);
    }
}

/// Guest time is charged to the bucket slice by slice, so a long call
/// empties it while it runs.
impl SliceMeter for Budget {
    fn charge(&self, ran: Duration, ended: Instant) {
        // Paying `ran` at `cpu_ms_per_s` takes ran * 1000 / cpu_ms_per_s.
        let cost = (ran.as_nanos() as u64).saturating_mul(1000) / self.limits.cpu_ms_per_s as u64;
        self.paid_until.fetch_add(cost, Ordering::Relaxed);
        let at = ended.saturating_duration_since(self.origin).as_nanos() as u64;
        // A racing charge may leave it a little behind: still never ahead.
        if at > self.last_charge.load(Ordering::Relaxed) {
            self.last_charge.store(at, Ordering::Relaxed);
        }
    }
}

/// Leave to make one guest call; holds a concurrency slot until dropped.
/// It meters the call: each slice is charged to the budget and added up.
pub struct CallPermit<'a> {
    budget: &'a Budget,
    /// This call is the breaker's half-open probe.
    probe: bool,
    finished: bool,
    /// The call's guest time so far.
    running_ns: AtomicU64,
}

impl SliceMeter for CallPermit<'_> {
    fn charge(&self, ran: Duration, ended: Instant) {
        self.budget.charge(ran, ended);
        // Only the thread polling the call charges it: no read-modify-write.
        let running = self.running_ns.load(Ordering::Relaxed);
        self.running_ns
            .store(running + ran.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl CallPermit<'_> {
    /// The call's guest running time, as charged.
    pub fn running(&self) -> Duration {
        Duration::from_nanos(self.running_ns.load(Ordering::Relaxed))
    }

    /// The call ended; `faulted` says whether the guest faulted (its own
    /// refusal is not a fault).
    pub fn finish(mut self, faulted: bool) {
        self.finished = true;
        self.budget.record(self.probe, faulted);
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.probe && !self.finished {
            // The probe was abandoned (its request went away): back to
            // open with the cool-down already over, so the next call probes.
            let cooldown = Duration::from_millis(self.budget.limits.breaker_cooldown_ms);
            let past = Instant::now()
                .checked_sub(cooldown)
                .unwrap_or(self.budget.origin);
            self.budget
                .set_state(BreakerState::Open, |log| log.opened = past);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn budget(limits: BudgetLimits) -> Budget {
        Budget::new(limits, Metrics::new().tenant("t"))
    }

    #[test]
    fn concurrency_is_capped_and_slots_come_back() {
        let budget = budget(BudgetLimits {
            max_concurrent_calls: 2,
            ..BudgetLimits::default()
        });
        let a = budget.admit().unwrap();
        let b = budget.admit().unwrap();
        assert_eq!(budget.admit().err(), Some(Throttle::Concurrency));
        drop(a);
        let c = budget.admit().unwrap();
        b.finish(false);
        c.finish(false);
        assert_eq!(budget.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_bucket_holds_one_second_of_guest_time() {
        let budget = budget(BudgetLimits {
            cpu_ms_per_s: 100,
            ..BudgetLimits::default()
        });
        // 100 ms of guest time is a full second's budget: still admitted
        // (the bucket may reach empty), a little more is not.
        budget.charge(Duration::from_millis(100), Instant::now());
        assert!(budget.admit().is_ok());
        budget.charge(Duration::from_millis(5), Instant::now());
        assert_eq!(budget.admit().err(), Some(Throttle::Cpu));
        // At 100 ms per second, 5 ms of debt is repaid in 50 ms.
        std::thread::sleep(Duration::from_millis(80));
        assert!(budget.admit().is_ok());
    }

    /// One admitted call that ran now and `faulted` or not.
    fn call(budget: &Budget, faulted: bool) {
        let permit = budget.admit().unwrap();
        permit.charge(Duration::ZERO, Instant::now());
        permit.finish(faulted);
    }

    #[test]
    fn the_breaker_opens_on_a_rate_probes_and_closes() {
        let budget = budget(BudgetLimits {
            breaker_min_calls: 4,
            breaker_fault_percent: 50,
            breaker_window_ms: 10_000,
            breaker_cooldown_ms: 50,
            ..BudgetLimits::default()
        });
        // Three faults are too few calls to judge.
        for _ in 0..3 {
            call(&budget, true);
        }
        assert_eq!(budget.breaker_state(), BreakerState::Closed);
        call(&budget, true);
        assert_eq!(budget.breaker_state(), BreakerState::Open);
        assert_eq!(budget.admit().err(), Some(Throttle::BreakerOpen));

        std::thread::sleep(Duration::from_millis(60));
        let probe = budget.admit().unwrap();
        assert_eq!(budget.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(budget.admit().err(), Some(Throttle::BreakerOpen));
        probe.finish(true);
        assert_eq!(budget.breaker_state(), BreakerState::Open);

        std::thread::sleep(Duration::from_millis(60));
        call(&budget, false);
        assert_eq!(budget.breaker_state(), BreakerState::Closed);
        assert!(budget.admit().is_ok());
    }

    #[test]
    fn a_few_faults_among_good_calls_do_not_open_it() {
        let budget = budget(BudgetLimits::default());
        // Six faults among 100 good calls: 6%, far under 50%.
        for at in 0..106 {
            call(&budget, at % 17 == 0 && at < 102);
        }
        assert_eq!(budget.breaker_state(), BreakerState::Closed);
        // Six faults alone are under min_calls (20).
        let fresh = self::budget(BudgetLimits::default());
        for _ in 0..6 {
            call(&fresh, true);
        }
        assert_eq!(fresh.breaker_state(), BreakerState::Closed);
        // Half of twenty is enough: it opens at the first fault counted
        // once there are twenty calls (14 faults of 21).
        let mut calls = 6;
        while fresh.breaker_state() == BreakerState::Closed {
            call(&fresh, calls % 2 == 0);
            calls += 1;
            assert!(calls <= 21, "still closed after {calls} calls");
        }
        assert_eq!(calls, 21);
    }

    #[test]
    fn faults_spread_wider_than_the_window_do_not_open_it() {
        let budget = budget(BudgetLimits {
            breaker_min_calls: 2,
            breaker_window_ms: 20,
            ..BudgetLimits::default()
        });
        call(&budget, true);
        std::thread::sleep(Duration::from_millis(30));
        call(&budget, true);
        assert_eq!(budget.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn min_calls_zero_never_opens_it() {
        let budget = budget(BudgetLimits {
            breaker_min_calls: 0,
            ..BudgetLimits::default()
        });
        for _ in 0..50 {
            call(&budget, true);
        }
        assert_eq!(budget.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let budget = budget(BudgetLimits {
            breaker_min_calls: 1,
            breaker_cooldown_ms: 30,
            ..BudgetLimits::default()
        });
        call(&budget, true);
        std::thread::sleep(Duration::from_millis(40));
        drop(budget.admit().unwrap());
        assert_eq!(budget.breaker_state(), BreakerState::Open);
        assert!(budget.admit().is_ok(), "the next call probes at once");
    }
}
