//! A loaded proxy-wasm filter VM: compiled and checked once, its
//! instances started as the Rust SDK's dispatcher expects (`_initialize`,
//! a root context per plugin, `proxy_on_vm_start`, `proxy_on_configure`),
//! and one instance lent to each request for its whole life, where each
//! of the VM's filter entries opens an HTTP context of its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::{InstancePre, TypedFunc, WasmParams, WasmResults};

use super::{FilterMetrics, HeaderPairs, Plugin, ProxyWasm, PwState, Stream};
use crate::abi::{self, ModuleKind};
use crate::abi::{CallError, HookFailure, HookFault};
use wasm_runtime::{
    block_on, guest_text::LogRate, GuestEngine, GuestLimits, IdleInstances, InstanceQuota,
    LongCallSignal, RuntimeFault, Sandbox, SliceMeter, Unmetered, WasmInstance,
};

/// The first backoff of `on_error: fail_reload`, in ms (Envoy's).
const FIRST_RELOAD_BACKOFF_MS: u64 = 1000;

/// The longest backoff of `on_error: fail_reload`, in ms.
const MAX_RELOAD_BACKOFF_MS: u64 = 60_000;

/// An instance held, outside any request, for the HTTP calls its root
/// context dispatched: their responses go to it.
pub struct HeldRoot {
    instance: Box<FilterInstance>,
    calls: Vec<super::PendingCall>,
}

impl HeldRoot {
    /// The next call to make.
    pub fn next_call(&mut self) -> Option<super::PendingCall> {
        (!self.calls.is_empty()).then(|| self.calls.remove(0))
    }
}

/// A call's response as `proxy_on_http_call_response` gets it: its
/// headers and body (empty for a failed call), and their counts for the
/// callback's arguments.
type CallResponseParts = (Vec<(String, String)>, Vec<u8>, (i32, i32));

/// Splits a call's response into [`CallResponseParts`].
fn call_response_parts(response: Option<super::CallResponse>) -> CallResponseParts {
    let (headers, body) = match response {
        Some(response) => (response.headers, response.body),
        None => (Vec::new(), Vec::new()),
    };
    let sizes = (headers.len() as i32, body.len() as i32);
    (headers, body, sizes)
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

/// The root context's id; HTTP contexts count up from it.
const ROOT_CONTEXT: i32 = 1;

/// `proxy_action_t` PAUSE.
const PAUSE: i32 = 1;

/// How a filter is configured.
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// Plugin configuration, for `on_configure`.
    pub config: Vec<u8>,
    /// VM configuration, for `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// The plugin's root id.
    pub root_id: String,
    /// Where the metrics the filter defines are exported, and its
    /// tenant's name; None: kept in memory only.
    pub metrics: Option<(prometheus::IntGaugeVec, String)>,
    /// `vm_config.vm_id`: its namespace in the tenant's shared data (and
    /// `plugin_vm_id`); empty: the module's digest names it.
    pub vm_id: String,
    /// What its tenant's filters share and are bounded by.
    pub scope: Arc<super::TenantScope>,
    /// Its tenant's bound on live instances.
    pub quota: Arc<InstanceQuota>,
    /// Its tenant's bound on guest log lines; None: unbounded.
    pub log_rate: Option<Arc<LogRate>>,
}

/// A filter entry to load: its name in logs, its plugin name (the
/// module's file name) and its configuration.
pub struct FilterEntry {
    /// Its name in logs.
    pub name: Arc<str>,
    /// `plugin_name`, and the `filter` label of its metrics.
    pub plugin_name: String,
    /// How it is configured.
    pub spec: FilterSpec,
}

/// A VM's `vm_id`, configuration and module digest.
pub type VmKey = (String, Vec<u8>, String);

/// What decides whether filter entries share a VM, as Envoy's VM key:
/// the `vm_id`, the VM configuration and the module's bytes.
pub fn vm_key(spec: &FilterSpec, bytes: &[u8]) -> VmKey {
    (
        spec.vm_id.clone(),
        spec.vm_config.clone(),
        module_digest(bytes),
    )
}

/// What a request callback left the request to do next.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Go on to the next filter.
    Continue,
    /// The filter answered: send this instead of proxying.
    Answer(Box<ResponseHeader>, Bytes),
    /// The filter paused the request for these HTTP calls; deliver each
    /// one's response with [`FilterModule::on_http_call_response`].
    Calls(Vec<super::PendingCall>),
}

/// The message a filter paused for its HTTP calls: the request (in
/// `proxy_on_request_headers`) or the response (in
/// `proxy_on_response_headers`). A call's answer may edit it.
pub enum Paused<'a> {
    /// The request, before it goes upstream.
    Request(&'a mut RequestHeader),
    /// The response, before it goes to the client.
    Response(&'a mut ResponseHeader),
}

/// `proxy_on_http_call_response(root, token, headers, body, trailers)`.
type CallResponseFunc = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Which of an HTTP context's `(context, count, end_of_stream) -> action`
/// callbacks to call.
type PickCallback = fn(&Callbacks) -> Option<&TypedFunc<(i32, i32, i32), i32>>;

/// The callbacks the host makes.
struct Callbacks {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_http_call_response: Option<CallResponseFunc>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
}

/// Which body a body callback sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The request body, going upstream.
    Request,
    /// The response body, going to the client.
    Response,
}

/// What a body callback left the body to do.
#[derive(Debug)]
pub enum BodyOutcome {
    /// Keep buffering: nothing goes on yet.
    Buffer,
    /// Send on these bytes (all that was buffered, as the filter left it).
    Release(Vec<u8>),
}

/// A started instance of a filter.
pub(super) struct FilterInstance {
    wasm: WasmInstance<PwState>,
    callbacks: Callbacks,
    /// The next HTTP context id: unique within the instance.
    next_context: i32,
    /// HTTP contexts served, for the reuse bound.
    streams: u64,
    /// The filter's VM generation it was started in (see
    /// [`FilterModule::fail_for_reload`]).
    generation: u64,
}

/// A loaded filter VM and its idle, started instances: the module
/// compiled once, with the root context of every plugin that runs in it.
/// Filter entries of one tenant with the same `vm_id`, VM configuration
/// and module share one (Envoy's VM key), each entry a plugin in it.
struct FilterVm {
    name: Arc<str>,
    pre: InstancePre<Sandbox<PwState>>,
    /// Its plugins, root context `k + 1` for `plugins[k]`; an HTTP
    /// context's id comes after them.
    plugins: Arc<[Arc<Plugin>]>,
    limits: GuestLimits,
    long_calls: LongCallSignal,
    idle: IdleInstances<FilterInstance>,
    /// Its tenant's bound on live instances; every instance made after
    /// load holds a slot of it.
    quota: Arc<InstanceQuota>,
    log_rate: Option<Arc<LogRate>>,
    /// Under `on_error: fail_reload`: until when (ms after `origin`; 0:
    /// not) the VM is being replaced after a fault.
    reload_until_ms: AtomicU64,
    /// The next backoff, in ms: 1 s, doubled by each fault in a row.
    reload_backoff_ms: AtomicU64,
    /// Bumped by each reload: an instance of an older generation is not
    /// kept once its request ends.
    generation: AtomicU64,
    /// Makes a reload's state change one at a time.
    reload_lock: std::sync::Mutex<()>,
    /// Whether it exports the body callbacks, by [`Direction`].
    reads_bodies: [bool; 2],
    origin: Instant,
}

/// One filter entry: a plugin (a root context) in its VM.
pub struct FilterModule {
    name: Arc<str>,
    vm: Arc<FilterVm>,
    /// Its plugin, `vm.plugins[index]`.
    plugin: Arc<Plugin>,
    index: usize,
}

/// A request's hold on the instance of one filter VM: every entry of the
/// chain that runs in that VM opens its HTTP context in the same
/// instance, as Envoy runs a stream's plugins of one VM in one VM.
#[derive(Default)]
pub struct VmLease {
    instance: Option<Box<FilterInstance>>,
    /// Which instance this is, for the request: a context opened in an
    /// instance that faulted is not looked for in the next one.
    seat: u32,
    /// Contexts opened in the instance and not yet ended: one left open
    /// (its filter dropped from the chain, or its end refused by the
    /// budget) keeps the instance from being reused.
    open: u32,
}

impl VmLease {
    /// The instance faulted (or its state can no longer be trusted): it
    /// is dropped, with every context open in it.
    fn lose(&mut self) {
        self.instance = None;
        self.open = 0;
    }
}

/// One request's HTTP context in one filter, in the instance its
/// [`VmLease`] holds until the request ends, and the stream its callbacks
/// see.
pub struct FilterStream {
    context: i32,
    /// The [`VmLease::seat`] of the instance holding the context.
    seat: u32,
    /// The filter still serves this request (it has not faulted).
    live: bool,
    stream: Stream,
}

impl FilterStream {
    /// Whether the filter still serves this request (it has not faulted).
    pub fn active(&self) -> bool {
        self.live
    }

    /// Whether the filter reset the stream (`proxy_close_stream`).
    pub fn closed(&self) -> bool {
        self.stream.close
    }

    /// Whether the request's body goes upstream by chunks: this filter,
    /// or one before it, removed its `Content-Length`.
    pub fn request_reframed(&self) -> bool {
        self.stream.request_reframed
    }

    /// A filter before this one removed the request's `Content-Length`:
    /// this one does not see it either.
    pub fn reframe_request(&mut self) {
        self.stream.request_reframed = true;
    }

    /// What the filter buffered of `direction`'s body, taken.
    pub fn take_body(&mut self, direction: Direction) -> Vec<u8> {
        std::mem::take(self.stream.body_mut(direction))
    }

    /// The request went to `upstream` (`upstream.address`).
    pub fn connected_to(&mut self, upstream: std::net::SocketAddr) {
        self.stream.facts.upstream = Some(upstream);
    }
}

/// Why a body callback gave nothing to send.
#[derive(Debug)]
pub enum BodyError {
    /// The body buffered for the filter grew past the cap.
    TooLarge,
    /// The filter faulted.
    Fault(HookFault),
}

/// Request ids, unique in this process (`request.id`).
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

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

    /// The filter's name for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its plugin name, the `filter` label of its metrics.
    pub fn plugin_name(&self) -> &str {
        &self.plugin.plugin_name
    }

    /// Removes the series of the metrics its VM defined but those `keep`
    /// names (a filter of the same tenant and plugin name carries them
    /// on).
    pub fn remove_metric_series(&self, keep: impl Fn(&str) -> bool) {
        self.plugin.metrics.remove_series(keep);
    }

    /// The names of the metrics its VM defined.
    pub fn metric_names(&self) -> Vec<String> {
        self.plugin.metrics.names()
    }

    /// Whether it runs in the same VM as `other` (a shared `vm_id`).
    pub fn shares_vm_with(&self, other: &FilterModule) -> bool {
        Arc::ptr_eq(&self.vm, &other.vm)
    }

    /// Whether the filter reads `direction`'s bodies (exports its body
    /// callback).
    pub fn reads_body(&self, direction: Direction) -> bool {
        self.vm.reads_bodies[direction as usize]
    }

    /// Its root context's id in its VM's instances.
    fn root(&self) -> i32 {
        self.index as i32 + ROOT_CONTEXT
    }

    /// `proxy_on_request_body` or `proxy_on_response_body` with `chunk`
    /// added to the body buffered for `direction`. A filter that pauses
    /// before the end keeps buffering; past [`MAX_BODY`](super::MAX_BODY)
    /// buffered it is an error for the caller to answer (413 for a
    /// request).
    pub async fn on_body(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        direction: Direction,
        chunk: &[u8],
        end_of_stream: bool,
        meter: &dyn SliceMeter,
    ) -> Result<BodyOutcome, BodyError> {
        let buffer = filter.stream.body_mut(direction);
        buffer.extend_from_slice(chunk);
        if buffer.len() > super::MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        let size = buffer.len() as i32;
        let callback: PickCallback = match direction {
            Direction::Request => |callbacks| callbacks.on_request_body.as_ref(),
            Direction::Response => |callbacks| callbacks.on_response_body.as_ref(),
        };
        let action = self
            .run(lease, filter, callback, (size, end_of_stream as i32), meter)
            .map_err(BodyError::Fault)?;
        Ok(Self::body_outcome(
            filter.stream.body_mut(direction),
            action,
            end_of_stream,
        ))
    }

    /// Buffering goes on while the filter pauses before the end; else the
    /// buffer goes on.
    fn body_outcome(buffer: &mut Vec<u8>, action: i32, end_of_stream: bool) -> BodyOutcome {
        if action == PAUSE && !end_of_stream {
            BodyOutcome::Buffer
        } else {
            BodyOutcome::Release(std::mem::take(buffer))
        }
    }

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

    /// Delivers the response of root call `token` (None: it failed or
    /// timed out) to `proxy_on_http_call_response` on the plugin's root
    /// context in the held instance; calls it dispatches from there join
    /// `held`'s.
    pub async fn on_root_call_response(
        &self,
        held: &mut HeldRoot,
        token: u32,
        response: Option<super::CallResponse>,
        meter: &dyn SliceMeter,
    ) -> Result<(), HookFault> {
        let (headers, body, sizes) = call_response_parts(response);
        let FilterInstance {
            wasm, callbacks, ..
        } = &mut *held.instance;
        let Some(callback) = &callbacks.on_http_call_response else {
            return Ok(());
        };
        let state = wasm.abi_mut();
        state.root_call_response = Some((HeaderPairs::from_pairs(headers), body));
        state.in_root_callback = true;
        state.current = self.index;
        let args = (self.root(), token as i32, sizes.0, sizes.1, 0);
        let result = call_in(wasm, callback, args, meter);
        let state = wasm.abi_mut();
        state.root_call_response = None;
        state.in_root_callback = false;
        held.calls.append(&mut state.root_calls);
        result.map_err(CallError::into_fault)
    }

    /// Gives back an instance held for root calls, once they are answered.
    pub fn release(&self, held: HeldRoot) {
        self.vm.keep_after_root(held.instance);
    }

    /// Starts the filter's HTTP context for a request, in the instance
    /// `lease` holds for its VM: an idle (or new) one if it holds none
    /// yet, kept until the request ends ([`end_lease`](Self::end_lease)).
    pub async fn begin(
        &self,
        lease: &mut VmLease,
        request: &RequestHeader,
        connection: &super::ConnectionFacts,
        meter: &dyn SliceMeter,
    ) -> Result<FilterStream, HookFailure> {
        let vm = &self.vm;
        if lease.instance.is_none() {
            let instance = match vm.take_idle() {
                Some(instance) => instance,
                None => {
                    let slot = vm.quota.take().map_err(HookFailure::no_room)?;
                    let mut fresh = Box::pin(vm.start_metered(meter)).await?;
                    fresh.wasm.hold(slot);
                    fresh
                }
            };
            lease.instance = Some(instance);
            lease.seat = lease.seat.wrapping_add(1);
            lease.open = 0;
        }
        let Some(instance) = lease.instance.as_deref_mut() else {
            return Err(HookFailure::Fault(HookFault::VmLost));
        };
        let first_http = vm.plugins.len() as i32 + ROOT_CONTEXT;
        let context = instance.next_context;
        instance.next_context = instance.next_context.checked_add(1).unwrap_or(first_http);
        let FilterInstance {
            wasm, callbacks, ..
        } = instance;
        wasm.abi_mut().current = self.index;
        let create = &callbacks.on_context_create;
        if let Err(e) = call_in(wasm, create, (context, self.root()), meter) {
            lease.lose();
            return Err(HookFailure::Fault(e.into_fault()));
        }
        lease.open += 1;
        // The request's map is made when a callback first needs it.
        let stream = Stream {
            facts: super::RequestFacts {
                id: REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
                protocol: request.version,
                started_unix_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
                connection: connection.clone(),
                upstream: None,
            },
            ..Stream::default()
        };
        Ok(FilterStream {
            context,
            seat: lease.seat,
            live: true,
            stream,
        })
    }

    /// `proxy_on_request_headers`, and the filter's edits applied to
    /// `request`.
    pub async fn on_request_headers(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        request: &mut RequestHeader,
        end_of_stream: bool,
        meter: &dyn SliceMeter,
    ) -> Result<RequestOutcome, HookFault> {
        filter.stream.read_request(request);
        let count = filter.stream.request.pairs().len() as i32;
        let callback: PickCallback = |callbacks| callbacks.on_request_headers.as_ref();
        let action = self.run(
            lease,
            filter,
            callback,
            (count, end_of_stream as i32),
            meter,
        )?;
        let outcome = Self::request_outcome(filter, request, action == PAUSE);
        lose_on_fault(outcome, lease, filter)
    }

    /// Delivers the response of HTTP call `token` (None: it failed or
    /// timed out) to `proxy_on_http_call_response`, on the plugin's root
    /// context as the SDKs expect, and applies the filter's edits to the
    /// message it paused.
    pub async fn on_http_call_response(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        token: u32,
        response: Option<super::CallResponse>,
        paused: &mut Paused<'_>,
        meter: &dyn SliceMeter,
    ) -> Result<RequestOutcome, HookFault> {
        let (headers, body, sizes) = call_response_parts(response);
        match paused {
            Paused::Request(request) => filter.stream.read_request(request),
            Paused::Response(response) => {
                filter.stream.response = Some(HeaderPairs::of_response(response));
            }
        }
        filter.stream.call_response = Some((HeaderPairs::from_pairs(headers), body));
        let Some(instance) = seated(lease, filter)? else {
            return Ok(RequestOutcome::Continue);
        };
        let FilterInstance {
            wasm, callbacks, ..
        } = instance;
        let Some(callback) = &callbacks.on_http_call_response else {
            return Ok(RequestOutcome::Continue);
        };
        let state = wasm.abi_mut();
        state.stream = Some(std::mem::take(&mut filter.stream));
        state.current = self.index;
        let args = (self.root(), token as i32, sizes.0, sizes.1, 0);
        let result = call_in(wasm, callback, args, meter);
        filter.stream = wasm.abi_mut().stream.take().unwrap_or_default();
        filter.stream.call_response = None;
        if let Err(e) = result {
            lease.lose();
            filter.live = false;
            return Err(e.into_fault());
        }
        // Still paused only while it waits for another call.
        let waits = !filter.stream.calls.is_empty();
        let outcome = match paused {
            Paused::Request(request) => Self::request_outcome(filter, request, waits),
            Paused::Response(response) => Self::response_outcome(filter, response, waits),
        };
        lose_on_fault(outcome, lease, filter)
    }

    /// After a request callback: its edits applied, then its answer, the
    /// calls it waits for, or on. A filter that pauses without a call to
    /// wait for is resumed (this host does not hold requests for
    /// `proxy_continue_stream` from elsewhere).
    fn request_outcome(
        filter: &mut FilterStream,
        request: &mut RequestHeader,
        paused: bool,
    ) -> Result<RequestOutcome, HookFault> {
        if filter.stream.request.changed() {
            filter.stream.note_reframing(request);
            filter.stream.request.apply_to_request(request)?;
        }
        let calls = std::mem::take(&mut filter.stream.calls);
        if let Some(reply) = filter.stream.local_reply.take() {
            let (response, body) = reply.checked("local response")?;
            return Ok(RequestOutcome::Answer(Box::new(response), body));
        }
        if paused && !calls.is_empty() {
            return Ok(RequestOutcome::Calls(calls));
        }
        Ok(RequestOutcome::Continue)
    }

    /// `proxy_on_response_headers`, and the filter's edits applied to
    /// `response`; the HTTP calls it paused the response for, if any.
    pub async fn on_response_headers(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        response: &mut ResponseHeader,
        end_of_stream: bool,
        meter: &dyn SliceMeter,
    ) -> Result<RequestOutcome, HookFault> {
        filter.stream.response = Some(HeaderPairs::of_response(response));
        let count = filter
            .stream
            .response
            .as_ref()
            .map_or(0, |r| r.pairs().len()) as i32;
        let callback: PickCallback = |callbacks| callbacks.on_response_headers.as_ref();
        let action = self.run(
            lease,
            filter,
            callback,
            (count, end_of_stream as i32),
            meter,
        )?;
        let outcome = Self::response_outcome(filter, response, action == PAUSE);
        lose_on_fault(outcome, lease, filter)
    }

    /// After a response callback: its edits applied, then the calls it
    /// waits for, or on. A local response here would replace one already
    /// under way: not supported (docs/PROXY_WASM.md).
    fn response_outcome(
        filter: &mut FilterStream,
        response: &mut ResponseHeader,
        paused: bool,
    ) -> Result<RequestOutcome, HookFault> {
        filter.stream.local_reply = None;
        if let Some(map) = filter.stream.response.as_ref().filter(|m| m.changed()) {
            map.apply_to_response(response)?;
        }
        let calls = std::mem::take(&mut filter.stream.calls);
        if paused && !calls.is_empty() {
            return Ok(RequestOutcome::Calls(calls));
        }
        Ok(RequestOutcome::Continue)
    }

    /// Ends the request's HTTP context (`proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`) with `response` as the last response seen. The
    /// instance stays in `lease` for the VM's other entries;
    /// [`end_lease`](Self::end_lease) gives it back. A context whose
    /// instance another entry lost has nothing left to end.
    pub async fn end(
        &self,
        lease: &mut VmLease,
        mut filter: FilterStream,
        response: Option<&ResponseHeader>,
        meter: &dyn SliceMeter,
    ) -> Result<(), HookFault> {
        if let (Some(response), None) = (response, &filter.stream.response) {
            filter.stream.response = Some(HeaderPairs::of_response(response));
        }
        let context = filter.context;
        let Ok(Some(instance)) = seated(lease, &mut filter) else {
            return Ok(());
        };
        let state = instance.wasm.abi_mut();
        state.stream = Some(std::mem::take(&mut filter.stream));
        state.current = self.index;
        let result = instance.finish(context, meter);
        instance.wasm.abi_mut().stream = None;
        instance.streams += 1;
        if let Err(e) = result {
            lease.lose();
            return Err(e.into_fault());
        }
        lease.open -= 1;
        Ok(())
    }

    /// Gives back the instance `lease` holds, once every entry of its VM
    /// is done with it: kept for reuse if every context opened in it was
    /// ended, it is below its reuse bound and of the VM's current
    /// generation; else dropped.
    pub fn end_lease(&self, lease: &mut VmLease) {
        if let Some(instance) = lease.instance.take() {
            if lease.open == 0 && instance.streams < self.vm.limits.instance_reuse {
                self.vm.keep(instance);
            }
        }
        lease.open = 0;
    }

    /// Runs the callback `pick` chooses for the filter's context with
    /// `params` after the context id, the stream lent to the store. A
    /// fault drops the instance (for every entry of its VM).
    fn run(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        pick: PickCallback,
        (count, end_of_stream): (i32, i32),
        meter: &dyn SliceMeter,
    ) -> Result<i32, HookFault> {
        let Some(instance) = seated(lease, filter)? else {
            return Ok(0);
        };
        let FilterInstance {
            wasm, callbacks, ..
        } = instance;
        let Some(callback) = pick(callbacks) else {
            return Ok(0);
        };
        let state = wasm.abi_mut();
        state.stream = Some(std::mem::take(&mut filter.stream));
        state.current = self.index;
        let result = call_in(
            wasm,
            callback,
            (filter.context, count, end_of_stream),
            meter,
        );
        filter.stream = wasm.abi_mut().stream.take().unwrap_or_default();
        result.map_err(|e| {
            lease.lose();
            filter.live = false;
            e.into_fault()
        })
    }
}

/// A fault in what a callback left (an edit or a local reply that cannot
/// be applied) drops the instance as a trap does: its state is suspect.
fn lose_on_fault<T>(
    outcome: Result<T, HookFault>,
    lease: &mut VmLease,
    filter: &mut FilterStream,
) -> Result<T, HookFault> {
    if outcome.is_err() {
        lease.lose();
        filter.live = false;
    }
    outcome
}

/// The instance holding `filter`'s context, if the filter still serves
/// the request; [`HookFault::VmLost`] if that instance faulted in another
/// entry of its VM (the filter is then out).
fn seated<'l>(
    lease: &'l mut VmLease,
    filter: &mut FilterStream,
) -> Result<Option<&'l mut FilterInstance>, HookFault> {
    if !filter.live {
        return Ok(None);
    }
    match lease.instance.as_deref_mut() {
        Some(instance) if lease.seat == filter.seat => Ok(Some(instance)),
        _ => {
            filter.live = false;
            Err(HookFault::VmLost)
        }
    }
}

impl FilterVm {
    /// An idle instance of the current generation, if any (an older one
    /// that slipped back during a reload is dropped).
    fn take_idle(&self) -> Option<Box<FilterInstance>> {
        while let Some(instance) = self.idle.take() {
            if instance.generation == self.generation.load(Ordering::Relaxed) {
                return Some(instance);
            }
        }
        None
    }

    /// Keeps `instance` for reuse, unless the VM was replaced since it
    /// started.
    fn keep(&self, instance: Box<FilterInstance>) {
        if instance.generation == self.generation.load(Ordering::Relaxed) {
            self.idle.put(instance);
        }
    }

    /// The instance held for the root calls it dispatched, or kept for
    /// reuse if it dispatched none.
    fn held_or_kept(&self, mut instance: Box<FilterInstance>) -> Option<HeldRoot> {
        let calls = std::mem::take(&mut instance.wasm.abi_mut().root_calls);
        if calls.is_empty() {
            self.keep_after_root(instance);
            return None;
        }
        Some(HeldRoot { instance, calls })
    }

    /// Keeps an instance after a root callback, which counts towards its
    /// `instance_reuse` as a request does.
    fn keep_after_root(&self, mut instance: Box<FilterInstance>) {
        instance.streams += 1;
        if instance.streams < self.limits.instance_reuse {
            self.keep(instance);
        }
    }

    /// A new instance, started, on the request path.
    async fn start_metered(
        &self,
        meter: &dyn SliceMeter,
    ) -> Result<Box<FilterInstance>, HookFault> {
        self.start(meter).await.map_err(|(_, fault)| fault)
    }

    /// A new instance, started: `_initialize`, then each plugin's root
    /// context, the VM and the plugin configured. An error names the
    /// plugin it is about (by index), if one.
    async fn start(
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
            if let Some(on_vm_start) = &starts.on_vm_start {
                let size = plugin.vm_config.len() as i32;
                let started = instance
                    .call(on_vm_start, (root, size), meter)
                    .map_err(|e| refused(failed("proxy_on_vm_start", e)))?;
                if started == 0 {
                    return Err(refused(
                        "proxy_on_vm_start returned false: the VM configuration was refused".into(),
                    ));
                }
            }
            if let Some(on_configure) = &starts.on_configure {
                let size = plugin.config.len() as i32;
                let configured = instance
                    .call(on_configure, (root, size), meter)
                    .map_err(|e| refused(failed("proxy_on_configure", e)))?;
                if configured == 0 {
                    return Err(refused(
                        "proxy_on_configure returned false: the plugin configuration was refused"
                            .into(),
                    ));
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
        on_request_body: export(wasm, "proxy_on_request_body", "(i32, i32, i32) -> i32")?,
        on_response_body: export(wasm, "proxy_on_response_body", "(i32, i32, i32) -> i32")?,
    };
    Ok((callbacks, starts))
}

impl FilterInstance {
    /// Calls `func` held (no fiber), as one deadline-bound call.
    fn call<P, R>(
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
    fn finish(&mut self, context: i32, meter: &dyn SliceMeter) -> Result<(), CallError> {
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
fn call_in<P, R>(
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
fn module_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_runtime::EngineOptions;

    /// `wat` loaded as a filter named `name`.
    fn load_wat(name: &str, wat: &str) -> anyhow::Result<FilterModule> {
        let path = std::env::temp_dir().join(format!("{name}-{}.wasm", std::process::id()));
        std::fs::write(&path, wat::parse_str(wat)?)?;
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: GuestLimits::default().memory_limit_bytes(),
            cache_dir: None,
            fresh_instances: false,
        })?;
        let loaded = FilterModule::load(
            &engine,
            name.into(),
            &path,
            FilterSpec::default(),
            GuestLimits::default(),
        );
        let _ = std::fs::remove_file(&path);
        loaded
    }

    /// `wat` loaded as one VM with an entry per configuration.
    fn load_vm_wat(wat: &str, configs: &[&str]) -> Result<Vec<FilterModule>, (usize, String)> {
        let engine = GuestEngine::new(&EngineOptions {
            max_memory_bytes: GuestLimits::default().memory_limit_bytes(),
            cache_dir: None,
            fresh_instances: false,
        })
        .unwrap();
        let entries = configs
            .iter()
            .map(|config| FilterEntry {
                name: format!("entry {config}").into(),
                plugin_name: "vm.wasm".into(),
                spec: FilterSpec {
                    config: config.as_bytes().to_vec(),
                    ..FilterSpec::default()
                },
            })
            .collect();
        let bytes = wat::parse_str(wat).unwrap();
        FilterModule::load_vm(&engine, &bytes, entries, GuestLimits::default())
            .map_err(|(entry, e)| (entry, format!("{e:#}")))
    }

    /// A VM whose root context 2 refuses its configuration, and whose
    /// first HTTP context (3, after two root contexts) traps.
    const TWO_PLUGINS: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
            local.get 0 i32.const 2 i32.ne local.get 1 i32.const 2 i32.ne i32.or)
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            local.get 0 i32.const 3 i32.eq
            if unreachable end
            i32.const 0))"#;

    #[test]
    fn entries_of_one_vm_share_its_instance_and_lose_it_together() {
        // Plugins "a" and "b": "b"'s configuration is 1 byte, accepted.
        let entries = load_vm_wat(TWO_PLUGINS, &["a", "b", "a"]).unwrap();
        assert!(entries[0].shares_vm_with(&entries[1]));
        assert_eq!(
            entries.iter().map(|e| e.root()).collect::<Vec<_>>(),
            [1, 2, 1]
        );
        let request = RequestHeader::build("GET", b"/", None).unwrap();
        let facts = super::super::ConnectionFacts::default();
        let mut lease = VmLease::default();
        let mut opened: Vec<FilterStream> = entries
            .iter()
            .map(|entry| block_on(entry.begin(&mut lease, &request, &facts, &Unmetered)).unwrap())
            .collect();
        let contexts: Vec<i32> = opened.iter().map(|s| s.context).collect();
        assert_eq!(
            contexts,
            [3, 4, 5],
            "one instance, contexts after both roots"
        );
        // Context 3 traps: the instance is gone for the other entries too.
        let mut headers = request.clone();
        let first = block_on(entries[0].on_request_headers(
            &mut lease,
            &mut opened[0],
            &mut headers,
            true,
            &Unmetered,
        ));
        assert!(matches!(first, Err(HookFault::Runtime(_))), "{first:?}");
        let second = block_on(entries[1].on_request_headers(
            &mut lease,
            &mut opened[1],
            &mut headers,
            true,
            &Unmetered,
        ));
        assert!(matches!(second, Err(HookFault::VmLost)), "{second:?}");
        assert!(!opened[1].active());
        // A later entry opens its context in a fresh instance; the old
        // contexts are not looked for there, and have nothing to end.
        let fresh = block_on(entries[2].begin(&mut lease, &request, &facts, &Unmetered)).unwrap();
        assert_eq!(fresh.context, 3);
        let third = block_on(entries[2].end(&mut lease, opened.remove(2), None, &Unmetered));
        assert!(third.is_ok(), "{third:?}");
        // `fresh` was never ended: its instance is not kept for the next
        // request, which starts another (its first context is 3 again).
        entries[2].end_lease(&mut lease);
        let mut next = VmLease::default();
        let opened = block_on(entries[1].begin(&mut next, &request, &facts, &Unmetered)).unwrap();
        assert_eq!(opened.context, 3);
        block_on(entries[1].end(&mut next, opened, None, &Unmetered)).unwrap();
        entries[1].end_lease(&mut next);
        // Every context ended: that instance is kept, and serves again.
        let mut after = VmLease::default();
        let reused = block_on(entries[0].begin(&mut after, &request, &facts, &Unmetered)).unwrap();
        assert_eq!(reused.context, 4);
    }

    #[test]
    fn a_plugin_that_refuses_its_configuration_is_named_by_its_entry() {
        // "bb" is 2 bytes on root context 2: refused; the entry is the
        // second, whose plugin that is.
        let (entry, why) = load_vm_wat(TWO_PLUGINS, &["a", "a", "bb"]).err().unwrap();
        assert_eq!(entry, 2, "{why}");
        assert!(why.contains("proxy_on_configure returned false"), "{why}");
    }

    /// A filter whose start exports count into a global;
    /// `proxy_on_vm_start` accepts the VM only if they ran `expected`
    /// times.
    fn started_filter(starts: &str, expected: i32) -> Option<String> {
        let wat = format!(
            r#"(module
                (memory (export "memory") 1)
                (global $calls (mut i32) (i32.const 0))
                (func (export "proxy_abi_version_0_2_1"))
                (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
                (func (export "proxy_on_context_create") (param i32 i32))
                (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                    global.get $calls i32.const {expected} i32.eq)
                {starts})"#
        );
        let name = format!("start-{expected}-{}", starts.len());
        let loaded = load_wat(&name, &wat);
        loaded.err().map(|e| format!("{e:#}"))
    }

    #[test]
    fn a_vm_starts_as_envoy_starts_it() {
        let bump = "global.get $calls i32.const 1 i32.add global.set $calls";
        let reactor = format!(
            r#"(func (export "_initialize") {bump})
               (func (export "main") (param i32 i32) (result i32) {bump} i32.const 0)
               (func (export "_start") unreachable)"#
        );
        assert_eq!(started_filter(&reactor, 2), None, "_initialize, then main");
        let command = format!(r#"(func (export "_start") {bump})"#);
        assert_eq!(started_filter(&command, 1), None, "a WASI command: _start");
        let refused = started_filter(&command, 0).expect("refused");
        assert!(
            refused.contains("proxy_on_vm_start returned false"),
            "{refused}"
        );
        let bad_main = r#"(func (export "_initialize")) (func (export "main"))"#;
        assert!(
            started_filter(bad_main, 0).is_some(),
            "main of another type"
        );
    }

    #[test]
    fn a_trap_in_the_allocator_a_hostcall_calls_faults_the_callback() {
        // proxy_on_vm_start asks for a property, ignores the status its
        // trapping allocator earned it, and says yes: still a fault.
        let wat = r#"(module
            (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "plugin_name")
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) unreachable)
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                (drop (call $get (i32.const 0) (i32.const 11) (i32.const 64) (i32.const 68)))
                i32.const 1))"#;
        let loaded = load_wat("alloc-trap", wat);
        let refused = format!("{:#}", loaded.err().expect("refused"));
        assert!(
            refused.contains("proxy_on_vm_start")
                && refused.contains("allocator, called by a hostcall"),
            "{refused}"
        );
    }
}
