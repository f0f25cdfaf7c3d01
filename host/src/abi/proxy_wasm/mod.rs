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

mod callout;
mod filter;
mod hostcalls;
mod state;
mod stream;
mod types;
mod wasi;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus::{IntGauge, IntGaugeVec};
use wasmtime::{Linker, Module};

use crate::abi::GuestAbi;
use wasm_runtime::Sandbox;

pub use callout::{perform as perform_call, CallResponse, PendingCall};
pub use filter::{
    BodyError, BodyOutcome, Direction, FilterModule, FilterSpec, FilterStream, RequestOutcome,
};
pub use state::PwState;
pub use stream::{HeaderPairs, RequestFacts, Stream};

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
    /// Shared data, shared by every instance of this filter's module in
    /// the process (see [`SharedData::of_module`]).
    pub shared: Arc<SharedData>,
    /// Metrics the filter defined.
    pub metrics: FilterMetrics,
    /// The tick period the filter asked for, in milliseconds; 0: none.
    pub tick_period_ms: AtomicU64,
    /// Where the filter's HTTP calls may go, by cluster name.
    pub clusters: HashMap<String, std::net::SocketAddr>,
}

/// Key-value data shared by a filter's instances, with CAS.
#[derive(Default)]
pub struct SharedData {
    entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl SharedData {
    /// The shared data of the module whose bytes are `module`: every
    /// filter loaded from the same module shares it, while any is loaded
    /// (a reload that keeps the module keeps its data).
    pub fn of_module(module: &[u8]) -> Arc<SharedData> {
        use std::hash::{Hash, Hasher};
        /// Modules (by length and hash) and their shared data.
        type Registry = Vec<((usize, u64), std::sync::Weak<SharedData>)>;
        static MODULES: Mutex<Registry> = Mutex::new(Vec::new());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        module.hash(&mut hasher);
        let key = (module.len(), hasher.finish());
        let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
        modules.retain(|(_, data)| data.strong_count() > 0);
        if let Some(data) = modules
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, data)| data.upgrade())
        {
            return data;
        }
        let data = Arc::new(SharedData::default());
        modules.push((key, Arc::downgrade(&data)));
        data
    }

    /// The value and its CAS token, if set.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).cloned()
    }

    /// Sets `key` if `cas` is 0 or matches; false on a CAS mismatch.
    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let current = entries.get(key).map_or(0, |(_, cas)| *cas);
        if cas != 0 && cas != current {
            return false;
        }
        let next = current.wrapping_add(1).max(1);
        entries.insert(key.to_string(), (value, next));
        true
    }
}

/// Metrics a filter defined, by id, each a gauge of the proxy's
/// `--metrics` family `wasm_proxy_filter_metric{tenant, filter, metric}`
/// (a histogram shows the last value recorded).
pub struct FilterMetrics {
    /// The family and the tenant and filter labels; None: not exported.
    family: Option<(IntGaugeVec, String, String)>,
    metrics: Mutex<Vec<(String, IntGauge)>>,
}

impl FilterMetrics {
    /// Metrics exported in `family` under `tenant` and `filter`, or kept
    /// only in memory.
    pub fn new(family: Option<(IntGaugeVec, String, String)>) -> Self {
        FilterMetrics {
            family,
            metrics: Mutex::new(Vec::new()),
        }
    }

    /// The id of metric `name`, defined now if new.
    pub fn define(&self, name: &str) -> u32 {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = metrics.iter().position(|(n, _)| n == name) {
            return id as u32;
        }
        let gauge = match &self.family {
            Some((family, tenant, filter)) => family.with_label_values(&[tenant, filter, name]),
            // A fixed, valid name: creating it cannot fail.
            None => IntGauge::new("filter_metric", "kept in memory").expect("a valid metric name"),
        };
        metrics.push((name.to_string(), gauge));
        (metrics.len() - 1) as u32
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
                "wasi_snapshot_preview1" => wasi::provides(import.name()),
                _ => false,
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
