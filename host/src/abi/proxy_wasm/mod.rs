//! Guest ABI proxy-wasm v0.2.1 (with v0.2.0 where it is the same): run
//! unmodified Envoy/Kong filters, written with the proxy-wasm SDKs, in
//! front of a tenant's routing.
//!
//! Unlike our own ABI, a filter keeps per-request state inside the guest:
//! one instance owns a request for its whole life (an HTTP context, made
//! with `proxy_on_context_create`), and its callbacks reach the request
//! through hostcalls on header maps, buffers and properties. Each
//! callback runs sliced on the wasm layer under the filter's deadline and
//! memory cap, like a hook; an instance that trapped is dropped, never
//! called again (the SDKs' state is poisoned after a trap).
//!
//! `docs/PROXY_WASM.md` lists every hostcall and callback and how far it
//! is supported.

pub(crate) mod answers;
mod callout;
mod filter;
mod grpc;
mod hostcalls;
mod properties;
mod queues;
mod state;
mod stream;
mod types;
mod wasi;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge, IntGaugeVec};
use wasmtime::{Linker, Module};

use crate::abi::GuestAbi;
use crate::upstream::egress::{self, Egress};
use crate::upstream::StaticUpstream;
use wasm_runtime::Sandbox;

pub use answers::CallAnswers;
pub use callout::{
    init_connector as init_callout_connector, perform as perform_call, CallFailed, CallKind,
    CallResponse, GrpcStream, PendingCall, StreamEvent, StreamOp, MAX_CHAINED_ANSWERS,
};
pub use filter::{
    vm_key, BodyError, BodyOutcome, Delivery, Direction, FilterEntry, FilterModule, FilterSpec,
    FilterStream, HeldRoot, Paused, RequestOutcome, RootClaim, VmKey, VmLease,
};
pub use queues::{wait_for_enqueues, wake_deliveries, QueueReady};
pub use state::PwState;
pub use stream::{ConnectionFacts, HeaderPairs, RequestFacts, Stream, TlsFacts};

/// The largest body a filter may buffer or make, per request and
/// direction.
pub const MAX_BODY: usize = 1 << 20;

/// The proxy-wasm ABI, for [`GuestAbi`].
pub struct ProxyWasm;

/// One configured filter, shared by its instances.
pub struct Plugin {
    /// Its name in logs: module file and tenant.
    pub name: Arc<str>,
    /// `plugin_name`: the module's file name.
    pub plugin_name: String,
    /// `root_id` from the configuration (`plugin_root_id`).
    pub root_id: String,
    /// `plugin_vm_id`.
    pub vm_id: String,
    /// The plugin configuration (`on_configure`).
    pub config: Vec<u8>,
    /// The VM configuration (`on_vm_start`).
    pub vm_config: Vec<u8>,
    /// Its namespace in its tenant's shared data: `vm_id`, else the
    /// module's digest.
    pub shared_namespace: Arc<str>,
    /// What its tenant's filters share and are bounded by.
    pub scope: Arc<TenantScope>,
    /// Metrics the filter defined: its VM's, shared by the plugins that
    /// VM runs (as in Envoy, a metric id is the VM's).
    pub metrics: Arc<FilterMetrics>,
    /// The tick period the filter asked for, in milliseconds; 0: none.
    pub tick_period_ms: AtomicU64,
    /// Enqueues on the queues it registered, for its
    /// `proxy_on_queue_ready`.
    pub queue_ready: Arc<QueueReady>,
    /// Its ticks and queue deliveries: one plugin's, however many filter
    /// entries share its root context.
    pub(super) root_work: RootWork,
}

/// When a plugin's root context is next due a tick, and which of its
/// root callbacks are running.
pub(super) struct RootWork {
    /// When the next tick is due, in milliseconds since `origin`.
    pub(super) next_tick_ms: AtomicU64,
    /// A tick is running ([`RootClaim`]).
    pub(super) ticking: Arc<std::sync::atomic::AtomicBool>,
    /// `proxy_on_queue_ready` calls are being made ([`RootClaim`]).
    pub(super) delivering: Arc<std::sync::atomic::AtomicBool>,
    pub(super) origin: std::time::Instant,
}

impl Default for RootWork {
    fn default() -> Self {
        RootWork {
            next_tick_ms: AtomicU64::new(0),
            ticking: Arc::default(),
            delivering: Arc::default(),
            origin: std::time::Instant::now(),
        }
    }
}

/// What a tenant's filters share and are held to: its shared data, the
/// clusters and addresses its callouts may reach, and its bounds on
/// callouts and metrics.
pub struct TenantScope {
    /// The tenant's name, for log lines.
    pub tenant: String,
    /// The tenant's shared data.
    pub shared: Arc<SharedData>,
    /// Clusters its filters may call by name: the shared ones and the
    /// tenant's own (which win).
    pub clusters: HashMap<String, StaticUpstream>,
    /// Where a callout to an `ip:port` may go.
    pub egress: Egress,
    /// What it counts of its filters' traffic.
    pub counters: ScopeCounters,
    /// The tenant's callout and metric bounds.
    pub limits: FilterLimits,
    /// Callouts dispatched and not yet answered, over the tenant's filters.
    pending_calls: AtomicU32,
    /// At most one line a second per tenant about refused destinations.
    refusal_logged: OncePerSecond,
    /// At most one line a second per tenant about failed callouts.
    failure_logged: OncePerSecond,
}

/// What a tenant counts of its filters' traffic.
#[derive(Clone)]
pub struct ScopeCounters {
    /// Refused destinations (`wasm_proxy_egress_refused_total`).
    pub egress_refused: IntCounter,
    /// Callouts that failed or timed out
    /// (`wasm_proxy_callout_failures_total`).
    pub callouts_failed: IntCounter,
}

impl ScopeCounters {
    /// Counters kept in memory only, for a filter outside any tenant.
    pub fn unexported() -> Self {
        let counter = |name| IntCounter::new(name, "kept in memory").expect("a valid metric name");
        ScopeCounters {
            egress_refused: counter("egress_refused"),
            callouts_failed: counter("callouts_failed"),
        }
    }
}

/// Lets one log line through per second: a tenant's guests choose how
/// often the event happens, not how much the proxy logs.
struct OncePerSecond(AtomicU64);

impl OncePerSecond {
    fn new() -> Self {
        OncePerSecond(AtomicU64::new(u64::MAX))
    }

    /// Whether no line went out yet this second (since the process began).
    fn due(&self) -> bool {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let second = ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs();
        self.0.swap(second, Ordering::Relaxed) != second
    }
}

/// A tenant's bounds on what its filters do outside their instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Callouts in flight at once (`max_pending_calls`).
    pub max_pending_calls: u32,
    /// The longest callout timeout a filter may ask for
    /// (`max_call_timeout_ms`); a longer one is cut to it.
    pub max_call_timeout_ms: u32,
    /// Metrics each filter may define (`max_metrics`).
    pub max_metrics: u32,
    /// Bytes of keys and values in the tenant's shared data
    /// (`shared_data_bytes`).
    pub shared_data_bytes: u64,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_pending_calls: 32,
            max_call_timeout_ms: 30_000,
            max_metrics: 1000,
            shared_data_bytes: 16 << 20,
        }
    }
}

/// Largest `max_pending_calls`, `max_metrics` accepted.
const MAX_COUNT_LIMIT: u32 = 100_000;

/// Largest `max_call_timeout_ms` accepted: ten minutes.
const MAX_CALL_TIMEOUT_MS: u32 = 600_000;

/// Largest `shared_data_bytes` accepted: 1 GiB.
pub(super) const MAX_SHARED_DATA_BYTES: u64 = 1 << 30;

impl FilterLimits {
    /// Refuses bounds out of range.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_COUNT_LIMIT).contains(&self.max_pending_calls) {
            anyhow::bail!("max_pending_calls must be 1-{MAX_COUNT_LIMIT}");
        }
        if !(1..=MAX_CALL_TIMEOUT_MS).contains(&self.max_call_timeout_ms) {
            anyhow::bail!("max_call_timeout_ms must be 1-{MAX_CALL_TIMEOUT_MS}");
        }
        if self.max_metrics > MAX_COUNT_LIMIT {
            anyhow::bail!("max_metrics must be 0-{MAX_COUNT_LIMIT}");
        }
        if self.shared_data_bytes > MAX_SHARED_DATA_BYTES {
            anyhow::bail!("shared_data_bytes must be 0-{MAX_SHARED_DATA_BYTES}");
        }
        Ok(())
    }
}

impl TenantScope {
    /// The scope of tenant `tenant`.
    pub fn new(
        tenant: &str,
        clusters: HashMap<String, StaticUpstream>,
        egress: Egress,
        counters: ScopeCounters,
        limits: FilterLimits,
    ) -> Self {
        TenantScope {
            tenant: tenant.to_string(),
            shared: SharedData::of_tenant(tenant),
            clusters,
            egress,
            counters,
            limits,
            pending_calls: AtomicU32::new(0),
            refusal_logged: OncePerSecond::new(),
            failure_logged: OncePerSecond::new(),
        }
    }

    /// Where a callout to `upstream` goes: a cluster by name, or an
    /// `ip:port` the tenant's egress allows (plain HTTP/1.1). A refusal is
    /// counted and logged (at most once a second).
    pub fn callout_target(&self, upstream: &str) -> Option<StaticUpstream> {
        if let Some(cluster) = self.clusters.get(upstream) {
            return Some(cluster.clone());
        }
        let address: SocketAddr = upstream.parse().ok()?;
        match self.egress.check(None, address, false) {
            Ok(()) => Some(StaticUpstream::at(address)),
            Err(why) => {
                self.refused(&address.to_string(), why);
                None
            }
        }
    }

    /// Counts and logs a refused destination.
    pub fn refused(&self, address: &str, why: egress::Refusal) {
        self.counters.egress_refused.inc();
        if self.refusal_logged.due() {
            log::warn!(
                "tenant {}: egress to {address} refused ({why})",
                self.tenant
            );
        }
    }

    /// Counts a callout of filter `filter` to `address` that failed or
    /// timed out, and logs it (at most once a second).
    pub fn callout_failed(&self, filter: &str, address: SocketAddr) {
        self.counters.callouts_failed.inc();
        if self.failure_logged.due() {
            log::info!(
                "tenant {}: filter {filter}: HTTP call to {address} failed or timed out \
                 (one line a second at most; wasm_proxy_callout_failures_total counts them)",
                self.tenant
            );
        }
    }

    /// Takes one of the tenant's callout slots; None when
    /// `max_pending_calls` are in flight. The slot is given back when the
    /// returned guard is dropped.
    pub fn take_call_slot(self: &Arc<Self>) -> Option<CallSlot> {
        let taken = self.pending_calls.fetch_add(1, Ordering::AcqRel);
        let slot = CallSlot(self.clone());
        (taken < self.limits.max_pending_calls).then_some(slot)
    }
}

impl Default for TenantScope {
    /// A scope of its own (its own shared data, no clusters, no egress),
    /// for a filter loaded outside any tenant (benches, tests).
    fn default() -> Self {
        let limits = FilterLimits::default();
        TenantScope {
            shared: Arc::new(SharedData::default()),
            ..TenantScope::new(
                "",
                HashMap::new(),
                Egress::new(None, Arc::default()).expect("no entries to refuse"),
                ScopeCounters::unexported(),
                limits,
            )
        }
    }
}

impl std::fmt::Debug for TenantScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantScope")
            .field("tenant", &self.tenant)
            .field("clusters", &self.clusters)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One of a tenant's callout slots, given back on drop.
pub struct CallSlot(Arc<TenantScope>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.pending_calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for CallSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallSlot")
    }
}

/// A tenant's shared data (`proxy_get/set_shared_data`), with CAS: one
/// store per tenant, so two tenants never share whatever their bytes, and
/// within it one namespace per VM (`vm_config.vm_id`, else the module's
/// digest), as Envoy shares data between the filters of one VM. Keys and
/// values together are held to the tenant's `shared_data_bytes`, which
/// each set names (a reload's new version and the old one draining may
/// differ, and a version refused at reload must not change the live one);
/// they live on the host heap, outside every instance's memory cap.
#[derive(Default)]
pub struct SharedData {
    entries: Mutex<SharedEntries>,
    queues: Mutex<queues::Queues>,
}

#[derive(Default)]
struct SharedEntries {
    /// `(namespace, key)` -> (value, CAS token).
    values: HashMap<(Arc<str>, String), (Vec<u8>, u32)>,
    /// Bytes of keys and values held.
    bytes: usize,
}

/// Why a set was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetRefused {
    /// The CAS token did not match.
    CasMismatch,
    /// The tenant's `shared_data_bytes` would be passed.
    Full,
}

impl SharedData {
    /// The shared data of tenant `tenant`: the same store for as long as
    /// a tenant of that name is loaded, so a reload keeps its data.
    pub fn of_tenant(tenant: &str) -> Arc<SharedData> {
        type Registry = Vec<(String, std::sync::Weak<SharedData>)>;
        static TENANTS: Mutex<Registry> = Mutex::new(Vec::new());
        let mut tenants = TENANTS.lock().unwrap_or_else(|p| p.into_inner());
        tenants.retain(|(_, data)| data.strong_count() > 0);
        if let Some(data) = tenants
            .iter()
            .find(|(name, _)| name == tenant)
            .and_then(|(_, data)| data.upgrade())
        {
            return data;
        }
        let data = Arc::new(SharedData::default());
        tenants.push((tenant.to_string(), Arc::downgrade(&data)));
        data
    }

    /// The tenant's shared queues.
    fn queues(&self) -> std::sync::MutexGuard<'_, queues::Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key` in `namespace` and its CAS token, if set.
    pub fn get(&self, namespace: &Arc<str>, key: &str) -> Option<(Vec<u8>, u32)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values
            .get(&(namespace.clone(), key.to_string()))
            .cloned()
    }

    /// Sets `key` in `namespace` if `cas` is 0 or matches, and the
    /// tenant's bytes stay within `limit`.
    pub fn set(
        &self,
        namespace: &Arc<str>,
        (key, value): (&str, Vec<u8>),
        cas: u32,
        limit: usize,
    ) -> Result<(), SetRefused> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let id = (namespace.clone(), key.to_string());
        let (current, old_size) = entries
            .values
            .get(&id)
            .map_or((0, 0), |(value, cas)| (*cas, key.len() + value.len()));
        if cas != 0 && cas != current {
            return Err(SetRefused::CasMismatch);
        }
        let bytes = entries.bytes - old_size + key.len() + value.len();
        if bytes > limit {
            return Err(SetRefused::Full);
        }
        let next = current.wrapping_add(1).max(1);
        entries.bytes = bytes;
        entries.values.insert(id, (value, next));
        Ok(())
    }
}

/// Metrics a filter defined, by id, each a gauge of the proxy's
/// `--metrics` family `wasm_proxy_filter_metric{tenant, filter, metric}`
/// (a histogram shows the last value recorded).
pub struct FilterMetrics {
    /// The family and the tenant and filter labels; None: not exported.
    family: Option<(IntGaugeVec, String, String)>,
    metrics: Mutex<Vec<(String, IntGauge)>>,
    /// The most metrics the filter may define (its tenant's
    /// `max_metrics`).
    limit: usize,
}

impl FilterMetrics {
    /// Metrics exported in `family` under `tenant` and `filter`, or kept
    /// only in memory.
    /// At most `limit` of them.
    pub fn new(family: Option<(IntGaugeVec, String, String)>, limit: usize) -> Self {
        FilterMetrics {
            family,
            metrics: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// The id of metric `name`, defined now if new; None once `limit`
    /// metrics are defined.
    pub fn define(&self, name: &str) -> Option<u32> {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = metrics.iter().position(|(n, _)| n == name) {
            return Some(id as u32);
        }
        if metrics.len() >= self.limit {
            return None;
        }
        let gauge = match &self.family {
            Some((family, tenant, filter)) => family.with_label_values(&[tenant, filter, name]),
            // A fixed, valid name: creating it cannot fail.
            None => IntGauge::new("filter_metric", "kept in memory").expect("a valid metric name"),
        };
        metrics.push((name.to_string(), gauge));
        Some((metrics.len() - 1) as u32)
    }

    /// Removes the filter's series from the family but those `keep`
    /// names (when its tenant is gone, or its next version does not
    /// define them).
    pub fn remove_series(&self, keep: impl Fn(&str) -> bool) {
        let Some((family, tenant, filter)) = &self.family else {
            return;
        };
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        for (name, _) in metrics.iter().filter(|(name, _)| !keep(name)) {
            let _ = family.remove_label_values(&[tenant, filter, name]);
        }
    }

    /// The names of the metrics defined.
    pub fn names(&self) -> Vec<String> {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Metric `id`, if defined.
    pub fn get(&self, id: u32) -> Option<IntGauge> {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.get(id as usize).map(|(_, gauge)| gauge.clone())
    }
}

impl GuestAbi for ProxyWasm {
    type State = PwState;

    fn check_imports(module: &Module) -> anyhow::Result<()> {
        for import in module.imports() {
            let known = match import.module() {
                "env" => hostcalls::provides(import.name()),
                other => wasi::provides(other, import.name()),
            };
            if !known {
                anyhow::bail!(
                    "imports `{}.{}`, which this host does not provide to proxy-wasm filters",
                    import.module(),
                    import.name()
                );
            }
        }
        Ok(())
    }

    fn add_imports(linker: &mut Linker<Sandbox<PwState>>, module: &Module) -> wasmtime::Result<()> {
        hostcalls::add(linker, module)?;
        wasi::add(linker, module)
    }
}
