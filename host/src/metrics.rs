//! Prometheus metrics, by tenant and hook, served on `--metrics ADDR`.

use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::abi::hook_table::Hook;
use crate::abi::throttle::{BreakerState, Throttle};
use crate::abi::HookFault;

/// Every metric the proxy exports, in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    hook_calls: IntCounterVec,
    hook_duration: HistogramVec,
    hook_faults: IntCounterVec,
    module_loads: IntCounterVec,
    throttled: IntCounterVec,
    breaker_state: IntGaugeVec,
    reloads: IntCounter,
    reload_failures: IntCounter,
    filter_metrics: IntGaugeVec,
    backend_healthy: IntGaugeVec,
    egress_refused: IntCounterVec,
    callouts_failed: IntCounterVec,
    guest_log_dropped: IntCounterVec,
    tenant_config_ok: IntGaugeVec,
    module_fetches: IntCounterVec,
    module_info: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique metric");
            vec
        };
        let requests = counter(
            "wasm_proxy_requests_total",
            "Requests routed to a tenant (tenant \"none\": no tenant matched).",
            &["tenant"],
        );
        let hook_calls = counter(
            "wasm_proxy_hook_calls_total",
            "Guest hook calls.",
            &["tenant", "hook"],
        );
        let hook_faults = counter(
            "wasm_proxy_hook_faults_total",
            "Guest hook calls that failed, by kind: trap, timeout, memory_limit, invalid_output, alloc, instantiate.",
            &["tenant", "hook", "kind"],
        );
        let module_loads = counter(
            "wasm_proxy_module_loads_total",
            "Guest modules compiled and checked.",
            &["tenant"],
        );
        let throttled = counter(
            "wasm_proxy_tenant_throttled_total",
            "Guest calls not made because the tenant was over a budget, by reason: concurrency, cpu, breaker_open.",
            &["tenant", "reason"],
        );
        let egress_refused = counter(
            "wasm_proxy_egress_refused_total",
            "Destinations a tenant's guest chose itself (an upstream_peer address, a \
             proxy_http_call ip:port) that its egress rules refused.",
            &["tenant"],
        );
        let callouts_failed = counter(
            "wasm_proxy_callout_failures_total",
            "HTTP callouts of a tenant's filters that failed or timed out.",
            &["tenant"],
        );
        let guest_log_dropped = counter(
            "wasm_proxy_guest_log_dropped_total",
            "Guest log lines dropped because the tenant wrote more than its log_lines_per_s.",
            &["tenant"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique metric");
            vec
        };
        let breaker_state = gauge(
            "wasm_proxy_tenant_breaker_state",
            "The tenant's circuit breaker: 0 closed, 1 open, 2 half-open.",
            &["tenant"],
        );
        let filter_metrics = gauge(
            "wasm_proxy_filter_metric",
            "Metrics proxy-wasm filters define (proxy_define_metric): counters and \
             gauges; a histogram shows the last value recorded.",
            &["tenant", "filter", "metric"],
        );
        let tenant_config_ok = gauge(
            "wasm_proxy_tenant_config_ok",
            "Whether the tenant's configuration as last loaded took effect (1), or failed \
             and its previous version keeps serving (0).",
            &["tenant"],
        );
        let module_fetches = counter(
            "wasm_proxy_module_fetch_total",
            "Modules named by URL, by how they were found: fetched (success), from the cache \
             (cache_hit), or refused (download_failure, digest_mismatch).",
            &["result"],
        );
        let module_info = gauge(
            "wasm_proxy_module_info",
            "1 for each module a loaded tenant runs: as named (a path or a URL), and the \
             sha256 of its bytes.",
            &["tenant", "module", "digest"],
        );
        let backend_healthy = gauge(
            "wasm_proxy_backend_healthy",
            "Whether a pool's backend passes its health checks (1) or not (0); \
             tenant \"*\" for the tenants file's shared pools.",
            &["tenant", "pool", "backend"],
        );
        let hook_duration = HistogramVec::new(
            HistogramOpts::new(
                "wasm_proxy_hook_duration_seconds",
                "Guest running time of a hook call: what its deadline and the tenant's cpu_ms_per_s count (not the time it waited for a worker).",
            )
            .buckets(vec![
                2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 2e-2, 0.1,
            ]),
            &["tenant", "hook"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(hook_duration.clone()))
            .expect("unique metric");
        let plain = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("unique metric");
            counter
        };
        let reloads = plain(
            "wasm_proxy_reloads_total",
            "Tenant set reloads that took effect.",
        );
        let reload_failures = plain(
            "wasm_proxy_reload_failures_total",
            "Tenant set reloads refused (the previous set kept serving).",
        );
        Metrics {
            registry,
            requests,
            hook_calls,
            hook_duration,
            hook_faults,
            module_loads,
            throttled,
            breaker_state,
            filter_metrics,
            backend_healthy,
            reloads,
            reload_failures,
            egress_refused,
            callouts_failed,
            guest_log_dropped,
            tenant_config_ok,
            module_fetches,
            module_info,
        }
    }

    /// `wasm_proxy_module_fetch_total{result}`.
    pub fn module_fetches(&self) -> IntCounterVec {
        self.module_fetches.clone()
    }

    /// Sets `wasm_proxy_module_info` to the modules `tenants` run, as
    /// `(tenant, module as named, digest)`, and nothing else.
    pub fn module_info<'a>(&self, modules: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        self.module_info.reset();
        for (tenant, module, digest) in modules {
            self.module_info
                .with_label_values(&[tenant, module, digest])
                .set(1);
        }
    }

    /// `wasm_proxy_guest_log_dropped_total{tenant}` of `tenant`.
    pub fn guest_log_dropped(&self, tenant: &str) -> IntCounter {
        self.guest_log_dropped.with_label_values(&[tenant])
    }

    /// `wasm_proxy_callout_failures_total{tenant}` of `tenant`.
    pub fn callouts_failed(&self, tenant: &str) -> IntCounter {
        self.callouts_failed.with_label_values(&[tenant])
    }

    /// Whether `tenant`'s configuration as last loaded took effect.
    pub fn tenant_config_ok(&self, tenant: &str, ok: bool) {
        self.tenant_config_ok
            .with_label_values(&[tenant])
            .set(i64::from(ok));
    }

    /// Removes `tenant`'s `wasm_proxy_tenant_config_ok`: it is gone.
    pub fn forget_tenant_config(&self, tenant: &str) {
        let _ = self.tenant_config_ok.remove_label_values(&[tenant]);
    }

    /// `wasm_proxy_egress_refused_total{tenant}` of `tenant`.
    pub fn egress_refused(&self, tenant: &str) -> IntCounter {
        self.egress_refused.with_label_values(&[tenant])
    }

    /// The family proxy-wasm filters' metrics are exported in.
    pub fn filter_family(&self) -> IntGaugeVec {
        self.filter_metrics.clone()
    }

    /// `wasm_proxy_backend_healthy{tenant,pool,backend}`.
    pub fn backend_health(&self) -> IntGaugeVec {
        self.backend_healthy.clone()
    }

    /// A request that matched no tenant.
    pub fn unrouted_request(&self) {
        self.requests.with_label_values(&["none"]).inc();
    }

    /// The per-request metrics of `tenant`, resolved once so the request
    /// path does no label lookups.
    pub fn tenant(&self, tenant: &str) -> TenantMetrics {
        let hook = |hook: Hook| HookMetrics {
            calls: self
                .hook_calls
                .with_label_values(&[tenant, &hook.to_string()]),
            duration: self
                .hook_duration
                .with_label_values(&[tenant, &hook.to_string()]),
        };
        TenantMetrics {
            name: tenant.to_string(),
            requests: self.requests.with_label_values(&[tenant]),
            hooks: Hook::ALL.map(hook),
            faults: self.hook_faults.clone(),
            throttled: Throttle::ALL
                .map(|reason| self.throttled.with_label_values(&[tenant, reason.reason()])),
            breaker_state: self.breaker_state.with_label_values(&[tenant]),
        }
    }

    /// A module compiled for `tenant`.
    pub fn module_load(&self, tenant: &str) {
        self.module_loads.with_label_values(&[tenant]).inc();
    }

    /// A reload that took effect, or one that was refused.
    pub fn reload(&self, succeeded: bool) {
        if succeeded {
            self.reloads.inc();
        } else {
            self.reload_failures.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // `new` cannot register.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One tenant's request and hook metrics.
pub struct TenantMetrics {
    name: String,
    requests: IntCounter,
    /// By [`Hook::index`].
    hooks: [HookMetrics; Hook::COUNT],
    faults: IntCounterVec,
    /// By `Throttle::ALL`'s order.
    throttled: [IntCounter; Throttle::ALL.len()],
    breaker_state: IntGauge,
}

struct HookMetrics {
    calls: IntCounter,
    duration: Histogram,
}

impl TenantMetrics {
    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.name
    }

    /// A guest call not made: the tenant was over a budget.
    pub fn throttled(&self, reason: Throttle) {
        self.throttled[reason as usize].inc();
    }

    /// The breaker moved to `state`.
    pub fn breaker_state(&self, state: BreakerState) {
        self.breaker_state.set(state as i64);
    }

    /// A request routed to this tenant.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// A hook call that took `elapsed`, and its fault if any.
    pub fn hook_call(&self, hook: Hook, elapsed: Duration, fault: Option<&HookFault>) {
        let metrics = &self.hooks[hook.index()];
        metrics.calls.inc();
        metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(fault) = fault {
            self.fault(hook, fault);
        }
    }

    /// A fault found in a hook's output after the call (e.g. a peer
    /// address that does not resolve).
    pub fn fault(&self, hook: Hook, fault: &HookFault) {
        self.callback_fault(hook.export(), fault);
    }

    /// A fault in a proxy-wasm filter's `callback`, labelled as a hook.
    pub fn callback_fault(&self, callback: &str, fault: &HookFault) {
        self.faults
            .with_label_values(&[&self.name, callback, fault.kind()])
            .inc();
    }
}

/// The `--metrics` endpoint: any path answers with the text exposition.
pub struct MetricsEndpoint(pub std::sync::Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let body = self.0.render();
        http::Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
