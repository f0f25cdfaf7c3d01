//! Ticks for proxy-wasm filters (`proxy_set_tick_period_milliseconds` →
//! `proxy_on_tick`), run by a background service off the request path,
//! each tick admitted by its tenant's budget like any guest call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::tenancy::tenants::TenantSet;

/// How long the service sleeps when no filter wants ticks.
const IDLE: Duration = Duration::from_secs(1);

/// Runs the live tenants' filters' ticks when due.
pub(crate) struct FilterTicker {
    /// The live tenant set; a reload's filters tick from their first due
    /// time.
    pub tenants: Arc<ArcSwap<TenantSet>>,
}

impl FilterTicker {
    /// Runs every tick that is due; returns when the next one is.
    async fn run_due(&self) -> Instant {
        let tenants = self.tenants.load_full();
        let now = Instant::now();
        let mut next = now + IDLE;
        for tenant in tenants.tenants() {
            for filter in &tenant.filters {
                let Some(due) = filter.module.next_tick() else {
                    continue;
                };
                if due > now {
                    next = next.min(due);
                    continue;
                }
                let Ok(permit) = tenant.budget.admit() else {
                    // Over budget: this tick is skipped, the next one comes.
                    continue;
                };
                let result = filter.module.tick(&permit).await;
                if let Err(fault) = &result {
                    log::error!(
                        "filter {}: proxy_on_tick failed: {fault}",
                        filter.module.name()
                    );
                    tenant.metrics.callback_fault("proxy_on_tick", fault);
                }
                permit.finish(result.is_err());
                if let Some(due) = filter.module.next_tick() {
                    next = next.min(due);
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
            let next = self.run_due().await;
            let sleep = tokio::time::sleep_until(next.into());
            tokio::select! {
                _ = sleep => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
