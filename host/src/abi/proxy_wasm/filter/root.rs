//! A plugin's root context outside any request: its ticks, its
//! `proxy_on_queue_ready` calls, and the HTTP calls it dispatches from
//! them, each on an idle instance of its VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::vm::{call_in, FilterInstance, FilterVm};
use super::{Delivery, FilterModule};
use crate::abi::proxy_wasm::answers::LiveStream;
use crate::abi::proxy_wasm::{PendingCall, StreamOp};
use crate::abi::{CallError, HookFault};
use wasm_runtime::{RuntimeFault, SliceMeter};

/// An instance held, outside any request, for the HTTP calls its root
/// context dispatched: their responses go to it.
pub struct HeldRoot {
    instance: Box<FilterInstance>,
    calls: Vec<PendingCall>,
}

impl HeldRoot {
    /// The next call to make.
    pub fn next_call(&mut self) -> Option<PendingCall> {
        (!self.calls.is_empty()).then(|| self.calls.remove(0))
    }
}

/// How a root callback went, if it did not fault.
enum RootRun {
    /// No instance could be had (the tenant's bounds, the engine's slots).
    NoRoom,
    /// It ran; the instance is held if it dispatched calls.
    Ran(Option<HeldRoot>),
}

/// A callback on an instance's root context, outside any request.
#[derive(Debug, Clone, Copy)]
enum RootCallback {
    /// `proxy_on_tick`.
    Tick,
    /// `proxy_on_queue_ready` for this queue.
    QueueReady(u32),
}

/// A filter's tick, or its queue deliveries, claimed: no other of the
/// kind starts until it is dropped.
pub struct RootClaim(Arc<AtomicBool>);

impl Drop for RootClaim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl FilterModule {
    /// When the filter's next tick is due, if it asked for ticks
    /// (`proxy_set_tick_period_milliseconds`).
    pub fn next_tick(&self) -> Option<Instant> {
        let period = self.plugin.tick_period_ms.load(Ordering::Relaxed);
        if period == 0 {
            return None;
        }
        let work = &self.plugin.root_work;
        let due = work.next_tick_ms.load(Ordering::Relaxed);
        Some(work.origin + Duration::from_millis(due))
    }

    /// Claims the tick that is due: the next is then one period away.
    /// None while the last tick is still running, so a plugin's ticks
    /// never overlap (however many entries share it); the claim ends when
    /// dropped.
    pub fn claim_tick(&self) -> Option<RootClaim> {
        let work = &self.plugin.root_work;
        if work.ticking.swap(true, Ordering::AcqRel) {
            return None;
        }
        let period = self.plugin.tick_period_ms.load(Ordering::Relaxed);
        let now = work.origin.elapsed().as_millis() as u64;
        work.next_tick_ms
            .store(now + period.max(1), Ordering::Relaxed);
        Some(RootClaim(work.ticking.clone()))
    }

    /// `proxy_on_tick` on the plugin's root context in an idle instance
    /// (ticks are the plugin's, not a request's), for a tick claimed
    /// ([`claim_tick`](Self::claim_tick)). A fault drops the instance.
    pub async fn tick(
        &self,
        _claim: &RootClaim,
        meter: &dyn SliceMeter,
    ) -> Result<Option<HeldRoot>, HookFault> {
        match self.on_root(RootCallback::Tick, meter).await? {
            RootRun::Ran(held) => Ok(held),
            RootRun::NoRoom => Ok(None),
        }
    }

    /// Claims the plugin's `proxy_on_queue_ready` calls, if items were
    /// enqueued on its queues that it was not yet called for and no other
    /// claim is delivering them.
    pub fn claim_queue_ready(&self) -> Option<RootClaim> {
        let work = &self.plugin.root_work;
        if !self.plugin.queue_ready.is_pending() || work.delivering.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(RootClaim(work.delivering.clone()))
    }

    /// `proxy_on_queue_ready` for the next item enqueued on one of the
    /// plugin's queues, on its root context in an idle instance (as a
    /// tick). None if none was waiting.
    pub async fn queue_ready(
        &self,
        _claim: &RootClaim,
        meter: &dyn SliceMeter,
    ) -> Result<Option<Option<HeldRoot>>, HookFault> {
        let Some(token) = self.plugin.queue_ready.next() else {
            return Ok(None);
        };
        match self.on_root(RootCallback::QueueReady(token), meter).await? {
            RootRun::Ran(held) => Ok(Some(held)),
            // No room for an instance: the call waits for the next pass.
            RootRun::NoRoom => {
                self.plugin.queue_ready.put_back(token);
                Ok(None)
            }
        }
    }

    /// `callback` (if the filter exports it) on the plugin's root context
    /// in an idle instance, or in a new one if the tenant has room (else
    /// it is skipped, as the tenant is at its bound; the next one tries
    /// again). A fault drops the instance. If the callback dispatched HTTP
    /// calls, the instance is held for their responses ([`HeldRoot`]).
    async fn on_root(
        &self,
        callback: RootCallback,
        meter: &dyn SliceMeter,
    ) -> Result<RootRun, HookFault> {
        let vm = &self.vm;
        let mut instance = match vm.take_idle() {
            Some(instance) => instance,
            None => {
                let Ok(slot) = vm.quota.take() else {
                    return Ok(RootRun::NoRoom);
                };
                // No room in the tenant's memory or the engine's slots is
                // not the guest's fault either.
                let mut fresh = match Box::pin(vm.start_metered(meter)).await {
                    Ok(fresh) => fresh,
                    Err(HookFault::Runtime(RuntimeFault::NoRoom(..))) => {
                        return Ok(RootRun::NoRoom)
                    }
                    Err(fault) => return Err(fault),
                };
                fresh.wasm.hold(slot);
                fresh
            }
        };
        let root = self.root();
        let state = instance.wasm.abi_mut();
        state.in_root_callback = true;
        state.current = self.index;
        let FilterInstance {
            wasm, callbacks, ..
        } = &mut *instance;
        let called = match callback {
            RootCallback::Tick => callbacks
                .on_tick
                .as_ref()
                .map(|on_tick| call_in(wasm, on_tick, root, meter)),
            RootCallback::QueueReady(token) => {
                let args = (root, token as i32);
                callbacks
                    .on_queue_ready
                    .as_ref()
                    .map(|on_ready| call_in(wasm, on_ready, args, meter))
            }
        };
        instance.wasm.abi_mut().in_root_callback = false;
        if let Some(result) = called {
            result.map_err(CallError::into_fault)?;
        }
        Ok(RootRun::Ran(vm.held_or_kept(instance)))
    }

    /// Delivers `delivery`, for root call or stream `token`, to the
    /// plugin's root context in the held instance, as
    /// [`FilterModule::on_call_answer`] does; calls it dispatches from
    /// there join `held`'s, and what it did to the stream (still open:
    /// `live`) is returned.
    pub async fn on_root_call_answer(
        &self,
        held: &mut HeldRoot,
        (token, delivery, live): (u32, Delivery, Option<LiveStream>),
        meter: &dyn SliceMeter,
    ) -> Result<Vec<StreamOp>, HookFault> {
        let FilterInstance {
            wasm, callbacks, ..
        } = &mut *held.instance;
        let state = wasm.abi_mut();
        let callback;
        (state.root_call_view, callback) = delivery.into_view();
        state.in_root_callback = true;
        state.current = self.index;
        state.live_stream = live.map(|live| (token, live.ended));
        let called = callback.call(wasm, callbacks, (self.root(), token), meter);
        let state = wasm.abi_mut();
        state.root_call_view = Default::default();
        state.in_root_callback = false;
        state.live_stream = None;
        state.stream_sent = 0;
        let ops = std::mem::take(&mut state.stream_ops);
        held.calls.append(&mut state.root_calls);
        match called {
            Some(result) => result.map_err(CallError::into_fault).map(|()| ops),
            None => Ok(ops),
        }
    }

    /// Gives back an instance held for root calls, once they are answered.
    pub fn release(&self, held: HeldRoot) {
        self.vm.keep_after_root(held.instance);
    }
}

impl FilterVm {
    /// The instance held for the root calls it dispatched, or kept for
    /// reuse if it dispatched none.
    pub(super) fn held_or_kept(&self, mut instance: Box<FilterInstance>) -> Option<HeldRoot> {
        let calls = std::mem::take(&mut instance.wasm.abi_mut().root_calls);
        if calls.is_empty() {
            self.keep_after_root(instance);
            return None;
        }
        Some(HeldRoot { instance, calls })
    }

    /// Keeps an instance after a root callback, which counts towards its
    /// `instance_reuse` as a request does.
    pub(super) fn keep_after_root(&self, mut instance: Box<FilterInstance>) {
        instance.streams += 1;
        if instance.streams < self.limits.instance_reuse {
            self.keep(instance);
        }
    }
}
