//! Ticks for proxy-wasm filters (`proxy_set_tick_period_milliseconds` →
//! `proxy_on_tick`), started by a background service off the request
//! path, each tick admitted by its tenant's budget like any guest call.
//! Each tick runs as its own task: a tick that runs to its deadline delays
//! no other filter's, and a filter's next tick waits for its last. The
//! same service delivers `proxy_on_queue_ready` for items enqueued on a
//! filter's shared queues, one call per item, each admitted by the
//! budget (a refused one waits for the next pass).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::abi::proxy_wasm::{
    wait_for_enqueues, wake_deliveries, CallAnswers, FilterModule, HeldRoot, RootClaim,
    MAX_CHAINED_ANSWERS,
};
use crate::tenancy::tenants::{Tenant, TenantSet};

/// How long the service sleeps when no filter wants ticks.
const IDLE: Duration = Duration::from_secs(1);

/// The shortest sleep between two looks: a filter whose tick is still
/// running stays due, and must not make the service spin.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// One tick of `module`, a filter of `tenant`, admitted by its budget,
/// and the HTTP calls it dispatched.
async fn tick(tenant: &Tenant, module: &FilterModule, claim: RootClaim) {
    let Ok(permit) = tenant.budget.admit() else {
        // Over budget: this tick is skipped, the next one comes.
        return;
    };
    let result = module.tick(&claim, &permit).await;
    if let Err(fault) = &result {
        log::error!("filter {}: proxy_on_tick failed: {fault}", module.name());
        tenant.metrics.callback_fault("proxy_on_tick", fault);
    }
    permit.finish(result.is_err());
    if let Ok(Some(held)) = result {
        root_calls(tenant, module, held).await;
    }
}

/// Makes the calls a root context dispatched (from a tick, a queue
/// delivery, or a call's answer) and delivers each answer (each event of
/// a gRPC stream) to it, each delivery admitted by the tenant's budget;
/// then gives the instance back. No budget is held while a call is in
/// flight.
async fn root_calls(tenant: &Tenant, module: &FilterModule, mut held: HeldRoot) {
    for _ in 0..MAX_CHAINED_ANSWERS {
        let Some(pending) = held.next_call() else {
            break;
        };
        let mut answers = CallAnswers::start(&pending).await;
        while let Some((delivery, live)) = answers.next().await {
            let Ok(permit) = tenant.budget.admit() else {
                // Over budget: the answer is dropped, as a refused tick
                // is (and a stream with it).
                break;
            };
            let callback = delivery.callback();
            let result = module
                .on_root_call_answer(&mut held, (pending.token, delivery, live), &permit)
                .await;
            if let Err(fault) = &result {
                log::error!("filter {}: {callback} failed: {fault}", module.name());
                tenant.metrics.callback_fault(callback, fault);
            }
            permit.finish(result.is_err());
            match result {
                Ok(ops) => answers.apply(ops).await,
                // The instance faulted: it is not given back.
                Err(_) => return,
            }
        }
        if answers.failed() {
            tenant
                .scope
                .callout_failed(module.name(), pending.target.address);
        }
    }
    module.release(held);
}

/// The most `proxy_on_queue_ready` calls one delivery task makes before
/// it leaves the rest to the next pass.
const DELIVERIES_PER_PASS: usize = 64;

/// `proxy_on_queue_ready` for items waiting on `module`'s queues.
async fn deliver_queue_ready(tenant: &Tenant, module: &FilterModule, claim: RootClaim) {
    for _ in 0..DELIVERIES_PER_PASS {
        let Ok(permit) = tenant.budget.admit() else {
            return;
        };
        let result = module.queue_ready(&claim, &permit).await;
        if let Err(fault) = &result {
            log::error!(
                "filter {}: proxy_on_queue_ready failed: {fault}",
                module.name()
            );
            tenant.metrics.callback_fault("proxy_on_queue_ready", fault);
        }
        permit.finish(result.is_err());
        match result {
            Ok(Some(Some(held))) => root_calls(tenant, module, held).await,
            Ok(Some(None)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    // More are waiting: the next pass comes at once.
    wake_deliveries();
}

/// Runs the live tenants' filters' ticks when due.
pub(crate) struct FilterTicker {
    /// The live tenant set; a reload's filters tick from their first due
    /// time.
    pub tenants: Arc<ArcSwap<TenantSet>>,
}

impl FilterTicker {
    /// Starts every tick that is due; returns when the next one is.
    fn start_due(&self) -> Instant {
        let tenants = self.tenants.load_full();
        let now = Instant::now();
        let mut next = now + IDLE;
        for tenant in tenants.tenants() {
            for filter in &tenant.filters {
                if let Some(claim) = filter.module.claim_queue_ready() {
                    let (tenant, module) = (tenant.clone(), filter.module.clone());
                    tokio::spawn(async move { deliver_queue_ready(&tenant, &module, claim).await });
                }
                let Some(due) = filter.module.next_tick() else {
                    continue;
                };
                if due <= now {
                    if let Some(claim) = filter.module.claim_tick() {
                        let (tenant, module) = (tenant.clone(), filter.module.clone());
                        tokio::spawn(async move { tick(&tenant, &module, claim).await });
                    }
                }
                if let Some(due) = filter.module.next_tick() {
                    next = next.min(due.max(now + MIN_WAIT));
                }
            }
        }
        next
    }
}

#[async_trait]
impl BackgroundService for FilterTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let next = self.start_due();
            let sleep = tokio::time::sleep_until(next.into());
            tokio::select! {
                _ = sleep => {}
                _ = wait_for_enqueues() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
