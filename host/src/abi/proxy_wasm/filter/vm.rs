//! A filter VM: its module compiled and checked once, its plugins, its
//! instances started as Envoy starts a VM, kept idle between requests, and
//! replaced under `on_error: fail_reload`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::{InstancePre, TypedFunc, WasmParams, WasmResults};

use super::{FilterEntry, FilterModule, FilterSpec, ROOT_CONTEXT};
use crate::abi::proxy_wasm::{FilterMetrics, Plugin, ProxyWasm, PwState};
use crate::abi::{self, CallError, HookFault, ModuleKind};
use wasm_runtime::{
    block_on, guest_text::LogRate, GuestEngine, GuestLimits, IdleInstances, InstanceQuota,
    LongCallSignal, RuntimeFault, Sandbox, SliceMeter, Unmetered, WasmInstance,
};

/// The first backoff of `on_error: fail_reload`, in ms (Envoy's).
const FIRST_RELOAD_BACKOFF_MS: u64 = 1000;

/// The longest backoff of `on_error: fail_reload`, in ms.
const MAX_RELOAD_BACKOFF_MS: u64 = 60_000;

/// `proxy_on_http_call_response(root, token, headers, body, trailers)`.
pub(super) type CallResponseFunc = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Which of an HTTP context's `(context, count, end_of_stream) -> action`
/// callbacks to call.
pub(super) type PickCallback = fn(&Callbacks) -> Option<&TypedFunc<(i32, i32, i32), i32>>;

/// The callbacks the host makes.
pub(super) struct Callbacks {
    pub(super) on_context_create: TypedFunc<(i32, i32), ()>,
    pub(super) on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(super) on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(super) on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub(super) on_done: Option<TypedFunc<i32, i32>>,
    pub(super) on_log: Option<TypedFunc<i32, ()>>,
    pub(super) on_delete: Option<TypedFunc<i32, ()>>,
    pub(super) on_tick: Option<TypedFunc<i32, ()>>,
    pub(super) on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub(super) on_http_call_response: Option<CallResponseFunc>,
    pub(super) on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(super) on_grpc_receive_initial_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(super) on_grpc_receive_trailing_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(super) on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(super) on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(super) on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
}

/// A started instance of a filter.
pub(super) struct FilterInstance {
    pub(super) wasm: WasmInstance<PwState>,
    pub(super) callbacks: Callbacks,
    /// The next HTTP context id: unique within the instance.
    pub(super) next_context: i32,
    /// HTTP contexts served, for the reuse bound.
    pub(super) streams: u64,
    /// The filter's VM generation it was started in (see
    /// [`FilterModule::fail_for_reload`]).
    pub(super) generation: u64,
}

/// A loaded filter VM and its idle, started instances: the module
/// compiled once, with the root context of every plugin that runs in it.
/// Filter entries of one tenant with the same `vm_id`, VM configuration
/// and module share one (Envoy's VM key), each entry a plugin in it.
pub(super) struct FilterVm {
    pub(super) name: Arc<str>,
    pub(super) pre: InstancePre<Sandbox<PwState>>,
    /// Its plugins, root context `k + 1` for `plugins[k]`; an HTTP
    /// context's id comes after them.
    pub(super) plugins: Arc<[Arc<Plugin>]>,
    pub(super) limits: GuestLimits,
    pub(super) long_calls: LongCallSignal,
    pub(super) idle: IdleInstances<FilterInstance>,
    /// Its tenant's bound on live instances; every instance made after
    /// load holds a slot of it.
    pub(super) quota: Arc<InstanceQuota>,
    pub(super) log_rate: Option<Arc<LogRate>>,
    /// Under `on_error: fail_reload`: until when (ms after `origin`; 0:
    /// not) the VM is being replaced after a fault.
    pub(super) reload_until_ms: AtomicU64,
    /// The next backoff, in ms: 1 s, doubled by each fault in a row.
    pub(super) reload_backoff_ms: AtomicU64,
    /// Bumped by each reload: an instance of an older generation is not
    /// kept once its request ends.
    pub(super) generation: AtomicU64,
    /// Makes a reload's state change one at a time.
    pub(super) reload_lock: std::sync::Mutex<()>,
    /// Whether it exports the body callbacks, by [`Direction`].
    pub(super) reads_bodies: [bool; 2],
    pub(super) origin: Instant,
}

impl FilterModule {
    /// Reads, compiles and checks the filter at `path`, and starts a first
    /// instance, whose `on_vm_start` and `on_configure` must accept `spec`.
    /// `name` labels its log lines.
    pub fn load(
        engine: &GuestEngine,
        name: Arc<str>,
        path: &Path,
        spec: FilterSpec,
        limits: GuestLimits,
    ) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let plugin_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_bytes(engine, name, plugin_name, &bytes, spec, limits)
            .with_context(|| format!("loading filter {}", path.display()))
    }

    /// As [`load`](Self::load), from bytes already read.
    pub fn from_bytes(
        engine: &GuestEngine,
        name: Arc<str>,
        plugin_name: String,
        bytes: &[u8],
        spec: FilterSpec,
        limits: GuestLimits,
    ) -> anyhow::Result<Self> {
        let entry = FilterEntry {
            name,
            plugin_name,
            spec,
        };
        let mut loaded = Self::load_vm(engine, bytes, vec![entry], limits).map_err(|(_, e)| e)?;
        Ok(loaded.remove(0))
    }

    /// Filter entries that share one VM (the same [`vm_key`]): `bytes`
    /// compiled and checked once, and a first instance started with a
    /// root context per plugin, whose `on_vm_start` and `on_configure`
    /// must accept their configurations. Entries with the same `root_id`
    /// and plugin configuration are one plugin (Envoy's plugin key): they
    /// share its root context, its ticks and its queues. The VM's own
    /// settings (its configuration, `vm_id`, tenant) are the first
    /// entry's. An error names the entry it is about, by index.
    pub fn load_vm(
        engine: &GuestEngine,
        bytes: &[u8],
        entries: Vec<FilterEntry>,
        limits: GuestLimits,
    ) -> Result<Vec<Self>, (usize, anyhow::Error)> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let vm_error = |e: anyhow::Error| (0, e);
        let name = first.name.clone();
        let module = abi::compile(engine, &name, bytes).map_err(vm_error)?;
        if module.get_export("proxy_abi_version_0_1_0").is_some() {
            return Err(vm_error(anyhow::anyhow!(
                "speaks proxy-wasm ABI 0.1.0; this host runs 0.2.1 (and 0.2.0) filters"
            )));
        }
        if ModuleKind::of(&module).map_err(vm_error)? != ModuleKind::ProxyWasm {
            return Err(vm_error(anyhow::anyhow!(
                "speaks this host's own guest ABI, not proxy-wasm: use it as a tenant's \
                 `module`, not as a filter"
            )));
        }
        let pre = abi::link::<ProxyWasm>(engine, &module).map_err(vm_error)?;
        let spec = &first.spec;
        let metrics = Arc::new(FilterMetrics::new(
            spec.metrics
                .clone()
                .map(|(family, tenant)| (family, tenant, first.plugin_name.clone())),
            spec.scope.limits.max_metrics as usize,
        ));
        let shared_namespace: Arc<str> = if spec.vm_id.is_empty() {
            module_digest(bytes).into()
        } else {
            format!("vm_id {}", spec.vm_id).into()
        };
        // Each entry's plugin, by index into `plugins`.
        let mut plugins: Vec<Arc<Plugin>> = Vec::new();
        let mut entry_plugins = Vec::with_capacity(entries.len());
        for entry in &entries {
            let same = |plugin: &&Arc<Plugin>| {
                plugin.root_id == entry.spec.root_id && plugin.config == entry.spec.config
            };
            let index = match plugins.iter().position(|p| same(&p)) {
                Some(index) => index,
                None => {
                    plugins.push(Arc::new(Plugin {
                        name: entry.name.clone(),
                        plugin_name: entry.plugin_name.clone(),
                        root_id: entry.spec.root_id.clone(),
                        vm_id: spec.vm_id.clone(),
                        config: entry.spec.config.clone(),
                        vm_config: spec.vm_config.clone(),
                        shared_namespace: shared_namespace.clone(),
                        scope: spec.scope.clone(),
                        metrics: metrics.clone(),
                        tick_period_ms: AtomicU64::new(0),
                        queue_ready: Arc::default(),
                        root_work: Default::default(),
                    }));
                    plugins.len() - 1
                }
            };
            entry_plugins.push(index);
        }
        let vm = Arc::new(FilterVm {
            name,
            pre,
            plugins: plugins.into(),
            limits,
            long_calls: engine.long_calls().clone(),
            idle: IdleInstances::new(),
            quota: spec.quota.clone(),
            log_rate: spec.log_rate.clone(),
            reload_until_ms: AtomicU64::new(0),
            reload_backoff_ms: AtomicU64::new(FIRST_RELOAD_BACKOFF_MS),
            generation: AtomicU64::new(0),
            reload_lock: std::sync::Mutex::new(()),
            reads_bodies: ["proxy_on_request_body", "proxy_on_response_body"]
                .map(|callback| module.get_export(callback).is_some()),
            origin: Instant::now(),
        });
        let first = block_on(vm.start(&Unmetered)).map_err(|(plugin, e)| {
            let entry = plugin.map_or(0, |plugin| {
                entry_plugins.iter().position(|&p| p == plugin).unwrap_or(0)
            });
            (entry, anyhow::anyhow!("{e}"))
        })?;
        vm.idle.put(first);
        Ok(entries
            .into_iter()
            .zip(entry_plugins)
            .map(|(entry, index)| FilterModule {
                name: entry.name,
                plugin: vm.plugins[index].clone(),
                vm: vm.clone(),
                index,
            })
            .collect())
    }
}

impl FilterModule {
    /// Under `on_error: fail_reload`, after a fault: drops every idle
    /// instance of its VM (a fresh VM for what comes next, as Envoy
    /// reloads the plugin's VM) and refuses new calls for a backoff of
    /// 1 s, doubled by each fault in a row up to
    /// [`MAX_RELOAD_BACKOFF_MS`]. The backoff. Faults during a backoff
    /// (requests that were already in the filter, on the old instances)
    /// neither extend nor double it: None then.
    pub fn fail_for_reload(&self) -> Option<Duration> {
        let vm = &self.vm;
        let _one_at_a_time = vm.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.reloading_for().is_some() {
            return None;
        }
        vm.generation.fetch_add(1, Ordering::Relaxed);
        vm.idle.clear();
        let backoff = vm.reload_backoff_ms.load(Ordering::Relaxed);
        let now = vm.origin.elapsed().as_millis() as u64;
        vm.reload_until_ms.store(now + backoff, Ordering::Relaxed);
        let next = (backoff * 2).min(MAX_RELOAD_BACKOFF_MS);
        vm.reload_backoff_ms.store(next, Ordering::Relaxed);
        Some(Duration::from_millis(backoff))
    }

    /// How long the filter's VM is still being replaced after a fault
    /// under `on_error: fail_reload`; None when it serves.
    pub fn reloading_for(&self) -> Option<Duration> {
        let vm = &self.vm;
        let until = vm.reload_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = vm.origin.elapsed().as_millis() as u64;
        (now < until).then(|| Duration::from_millis(until - now))
    }

    /// A call served once a backoff has ended: the next fault's backoff is
    /// 1 s again. (Calls served during the backoff, by requests already in
    /// the filter, change nothing.)
    pub fn served_after_reload(&self) {
        let vm = &self.vm;
        if vm.reload_until_ms.load(Ordering::Relaxed) != 0 && self.reloading_for().is_none() {
            let _one_at_a_time = vm.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.reloading_for().is_none() {
                vm.reload_until_ms.store(0, Ordering::Relaxed);
                vm.reload_backoff_ms
                    .store(FIRST_RELOAD_BACKOFF_MS, Ordering::Relaxed);
            }
        }
    }
}

impl FilterVm {
    /// An idle instance of the current generation, if any (an older one
    /// that slipped back during a reload is dropped).
    pub(super) fn take_idle(&self) -> Option<Box<FilterInstance>> {
        while let Some(instance) = self.idle.take() {
            if instance.generation == self.generation.load(Ordering::Relaxed) {
                return Some(instance);
            }
        }
        None
    }

    /// Keeps `instance` for reuse, unless the VM was replaced since it
    /// started.
    pub(super) fn keep(&self, instance: Box<FilterInstance>) {
        if instance.generation == self.generation.load(Ordering::Relaxed) {
            self.idle.put(instance);
        }
    }

    /// A new instance, started, on the request path.
    pub(super) async fn start_metered(
        &self,
        meter: &dyn SliceMeter,
    ) -> Result<Box<FilterInstance>, HookFault> {
        self.start(meter).await.map_err(|(_, fault)| fault)
    }

    /// A new instance, started: `_initialize`, then each plugin's root
    /// context, the VM and the plugin configured. An error names the
    /// plugin it is about (by index), if one.
    pub(super) async fn start(
        &self,
        meter: &dyn SliceMeter,
    ) -> Result<Box<FilterInstance>, (Option<usize>, HookFault)> {
        let state = PwState::new(self.plugins.clone());
        let mut prepared = WasmInstance::prepare(
            &self.pre,
            self.name.clone(),
            self.limits,
            self.long_calls.clone(),
            state,
        )
        .with_memory_quota(self.quota.clone());
        if let Some(rate) = &self.log_rate {
            prepared = prepared.with_log_rate(rate.clone());
        }
        let wasm = prepared
            .start_held(meter)
            .map_err(|e| (None, HookFault::Runtime(RuntimeFault::of_instantiation(&e))))?;
        self.set_up(wasm, meter)
            .await
            .map_err(|(plugin, why)| (plugin, HookFault::instantiate(why)))
    }

    /// A started instance's exports found and its contexts made: the
    /// module initialised as Envoy starts a VM, then each plugin's root
    /// context created, its `on_vm_start` and its `on_configure` called
    /// (as Envoy starts each plugin of a VM on its own root context).
    async fn set_up(
        &self,
        mut wasm: WasmInstance<PwState>,
        meter: &dyn SliceMeter,
    ) -> Result<Box<FilterInstance>, (Option<usize>, String)> {
        let (callbacks, starts) = find_exports(&mut wasm).map_err(|why| (None, why))?;
        let mut instance = Box::new(FilterInstance {
            wasm,
            callbacks,
            next_context: self.plugins.len() as i32 + ROOT_CONTEXT,
            streams: 0,
            generation: self.generation.load(Ordering::Relaxed),
        });
        let failed = |what: &str, e: CallError| format!("{what}: {}", e.into_fault());
        // As Envoy starts a VM: a WASI reactor gets `_initialize`, then
        // `main(0, 0)` if it has one (an SDK may set itself up there); a
        // WASI command (older TinyGo builds) gets `_start` instead.
        if let Some(initialize) = &starts.initialize {
            instance
                .call(initialize, (), meter)
                .map_err(|e| (None, failed("_initialize", e)))?;
            if let Some(main) = &starts.main {
                instance
                    .call(main, (0, 0), meter)
                    .map_err(|e| (None, failed("main", e)))?;
            }
        } else if let Some(command) = &starts.command {
            instance
                .call(command, (), meter)
                .map_err(|e| (None, failed("_start", e)))?;
        }
        for (index, plugin) in self.plugins.iter().enumerate() {
            let root = index as i32 + ROOT_CONTEXT;
            let refused = |why: String| match self.plugins.len() {
                1 => (Some(index), why),
                _ => (Some(index), format!("plugin {}: {why}", plugin.name)),
            };
            instance.wasm.abi_mut().current = index;
            let create = instance.callbacks.on_context_create.clone();
            instance
                .call(&create, (root, 0), meter)
                .map_err(|e| refused(failed("proxy_on_context_create", e)))?;
            // Each takes the size of its configuration and may refuse it.
            let configures = [
                (
                    &starts.on_vm_start,
                    plugin.vm_config.len(),
                    "proxy_on_vm_start",
                    "VM",
                ),
                (
                    &starts.on_configure,
                    plugin.config.len(),
                    "proxy_on_configure",
                    "plugin",
                ),
            ];
            for (export, size, name, which) in configures {
                let Some(func) = export else { continue };
                let accepted = instance
                    .call(func, (root, size as i32), meter)
                    .map_err(|e| refused(failed(name, e)))?;
                if accepted == 0 {
                    return Err(refused(format!(
                        "{name} returned false: the {which} configuration was refused"
                    )));
                }
            }
        }
        Ok(instance)
    }
}

/// The exports the host calls to start a VM.
struct Starts {
    initialize: Option<TypedFunc<(), ()>>,
    main: Option<TypedFunc<(i32, i32), i32>>,
    command: Option<TypedFunc<(), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
}

/// The callbacks and start functions a started instance exports, each
/// checked for its type; its allocator given to its hostcalls.
fn find_exports(wasm: &mut WasmInstance<PwState>) -> Result<(Callbacks, Starts), String> {
    let alloc = match export(wasm, "proxy_on_memory_allocate", "(i32) -> i32")? {
        Some(alloc) => Some(alloc),
        None => export(wasm, "malloc", "(i32) -> i32")?,
    };
    if alloc.is_none() {
        return Err("exports neither `proxy_on_memory_allocate` nor `malloc`".into());
    }
    wasm.abi_mut().alloc = alloc.map(Arc::new);
    let starts = Starts {
        initialize: export(wasm, "_initialize", "() -> ()")?,
        main: export(wasm, "main", "(i32, i32) -> i32")?,
        command: export(wasm, "_start", "() -> ()")?,
        on_vm_start: export(wasm, "proxy_on_vm_start", "(i32, i32) -> i32")?,
        on_configure: export(wasm, "proxy_on_configure", "(i32, i32) -> i32")?,
    };
    let callbacks = Callbacks {
        on_context_create: export(wasm, "proxy_on_context_create", "(i32, i32) -> ()")?
            .ok_or("missing export `proxy_on_context_create`")?,
        on_request_headers: export(wasm, "proxy_on_request_headers", "(i32, i32, i32) -> i32")?,
        on_response_headers: export(wasm, "proxy_on_response_headers", "(i32, i32, i32) -> i32")?,
        on_response_trailers: export(wasm, "proxy_on_response_trailers", "(i32, i32) -> i32")?,
        on_done: export(wasm, "proxy_on_done", "(i32) -> i32")?,
        on_log: export(wasm, "proxy_on_log", "(i32) -> ()")?,
        on_delete: export(wasm, "proxy_on_delete", "(i32) -> ()")?,
        on_tick: export(wasm, "proxy_on_tick", "(i32) -> ()")?,
        on_queue_ready: export(wasm, "proxy_on_queue_ready", "(i32, i32) -> ()")?,
        on_http_call_response: export(
            wasm,
            "proxy_on_http_call_response",
            "(i32, i32, i32, i32, i32) -> ()",
        )?,
        on_grpc_receive: export(wasm, "proxy_on_grpc_receive", "(i32, i32, i32) -> ()")?,
        on_grpc_receive_initial_metadata: export(
            wasm,
            "proxy_on_grpc_receive_initial_metadata",
            "(i32, i32, i32) -> ()",
        )?,
        on_grpc_receive_trailing_metadata: export(
            wasm,
            "proxy_on_grpc_receive_trailing_metadata",
            "(i32, i32, i32) -> ()",
        )?,
        on_grpc_close: export(wasm, "proxy_on_grpc_close", "(i32, i32, i32) -> ()")?,
        on_request_body: export(wasm, "proxy_on_request_body", "(i32, i32, i32) -> i32")?,
        on_response_body: export(wasm, "proxy_on_response_body", "(i32, i32, i32) -> i32")?,
    };
    Ok((callbacks, starts))
}

impl FilterInstance {
    /// Calls `func` held (no fiber), as one deadline-bound call.
    pub(super) fn call<P, R>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
        meter: &dyn SliceMeter,
    ) -> Result<R, CallError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        call_in(&mut self.wasm, func, params, meter)
    }

    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` for `context`.
    pub(super) fn finish(&mut self, context: i32, meter: &dyn SliceMeter) -> Result<(), CallError> {
        let FilterInstance {
            wasm, callbacks, ..
        } = self;
        if let Some(on_done) = &callbacks.on_done {
            call_in(wasm, on_done, context, meter)?;
        }
        if let Some(on_log) = &callbacks.on_log {
            call_in(wasm, on_log, context, meter)?;
        }
        if let Some(on_delete) = &callbacks.on_delete {
            call_in(wasm, on_delete, context, meter)?;
        }
        Ok(())
    }
}

/// Calls `func` of the instance `wasm` held (no fiber), as one
/// deadline-bound call. Borrowing the callback beside the instance keeps a
/// `TypedFunc` clone (its type's registration) off every call.
pub(super) fn call_in<P, R>(
    wasm: &mut WasmInstance<PwState>,
    func: &TypedFunc<P, R>,
    params: P,
    meter: &dyn SliceMeter,
) -> Result<R, CallError>
where
    P: WasmParams,
    R: WasmResults,
{
    wasm.begin(Duration::ZERO);
    let result = wasm.call_held(func, params, meter);
    // A trap in the allocator a hostcall called is the callback's fault,
    // whatever the guest made of the status it got.
    if let Some(trap) = wasm.abi_mut().allocator_failed.take() {
        return Err(CallError::Fault(HookFault::Runtime(RuntimeFault::Trap {
            trap: format!("the filter's allocator, called by a hostcall: {trap}"),
            guest_said: None,
        })));
    }
    Ok(result?)
}

/// The export `name` as a function of type `(P) -> R`, if there is one.
fn export<P: WasmParams, R: WasmResults>(
    wasm: &mut WasmInstance<PwState>,
    name: &str,
    signature: &str,
) -> Result<Option<TypedFunc<P, R>>, String> {
    wasm.func(name, signature).map_err(|e| format!("{e:#}"))
}

/// `sha256:<hex>` of a module's bytes: its name in its tenant's shared
/// data when the filter gives no `vm_id`.
pub(super) fn module_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
