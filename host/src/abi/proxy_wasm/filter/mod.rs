//! A proxy-wasm filter entry on the request path: the instance of its VM
//! a request holds for its whole life ([`VmLease`]), where each of the
//! VM's entries opens an HTTP context of its own, and the callbacks of
//! that context. The VM itself (loading, starting instances, reloading)
//! is in `vm.rs`; its root contexts' work outside requests in `root.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::abi::{HookFailure, HookFault};
use wasm_runtime::{guest_text::LogRate, InstanceQuota, SliceMeter};

mod root;
mod vm;

pub use root::{HeldRoot, RootClaim};
use vm::{call_in, module_digest, FilterInstance, FilterVm, PickCallback};

use super::answers::LiveStream;
use super::callout::{CallFailed, CallKind, CallResponse, StreamEvent, StreamOp};
use super::grpc::GrpcAnswer;
use super::stream::CallView;
use super::types::{BufferType, MapType};
use super::{HeaderPairs, Plugin, PwState, Stream};
use crate::abi::CallError;
use wasm_runtime::WasmInstance;

/// The answer to a call, or an event of a gRPC stream, as the filter is
/// told it: by which callback, with what the filter may read during it.
#[derive(Debug)]
pub enum Delivery {
    /// `proxy_on_http_call_response`: the response's headers and body
    /// (none for a failed call).
    Http(HeaderPairs, Vec<u8>),
    /// `proxy_on_grpc_receive_initial_metadata`: a gRPC stream's
    /// response headers (map 4).
    GrpcInitialMetadata(HeaderPairs),
    /// `proxy_on_grpc_receive`: a gRPC message (buffer 5).
    GrpcMessage(Vec<u8>),
    /// `proxy_on_grpc_receive_trailing_metadata`: a gRPC stream's
    /// trailers (map 5).
    GrpcTrailingMetadata(HeaderPairs),
    /// `proxy_on_grpc_close`: the call's or the stream's status, and its
    /// message (`proxy_get_status`).
    GrpcClose(u32, String),
}

impl Delivery {
    /// How the answer to a call of `kind` is delivered (a unary call's:
    /// its message if OK, else its close).
    pub fn of(kind: CallKind, result: Result<CallResponse, CallFailed>) -> Self {
        match kind {
            CallKind::Http => match result {
                Ok(response) => {
                    Delivery::Http(HeaderPairs::from_pairs(response.headers), response.body)
                }
                Err(_) => Delivery::Http(HeaderPairs::default(), Vec::new()),
            },
            CallKind::Grpc | CallKind::GrpcStream => match super::grpc::answer(&result) {
                GrpcAnswer::Message(message) => Delivery::GrpcMessage(message),
                GrpcAnswer::Closed { status, message } => Delivery::GrpcClose(status, message),
            },
        }
    }

    /// How an event of a gRPC stream is delivered.
    pub fn of_event(event: StreamEvent) -> Self {
        match event {
            StreamEvent::InitialMetadata(pairs) => {
                Delivery::GrpcInitialMetadata(HeaderPairs::from_pairs(pairs))
            }
            StreamEvent::Message(message) => Delivery::GrpcMessage(message),
            StreamEvent::TrailingMetadata(pairs) => {
                Delivery::GrpcTrailingMetadata(HeaderPairs::from_pairs(pairs))
            }
            StreamEvent::Closed(status, message) => Delivery::GrpcClose(status, message),
        }
    }

    /// The callback that delivers it, as metrics and logs name it.
    pub fn callback(&self) -> &'static str {
        match self {
            Delivery::Http(..) => "proxy_on_http_call_response",
            Delivery::GrpcInitialMetadata(_) => "proxy_on_grpc_receive_initial_metadata",
            Delivery::GrpcMessage(_) => "proxy_on_grpc_receive",
            Delivery::GrpcTrailingMetadata(_) => "proxy_on_grpc_receive_trailing_metadata",
            Delivery::GrpcClose(..) => "proxy_on_grpc_close",
        }
    }

    /// What the filter reads during the callback, and the callback that
    /// delivers it.
    fn into_view(self) -> (CallView, AnswerCallback) {
        let grpc = |pick: GrpcPick, n: usize| AnswerCallback::Grpc(pick, n as i32);
        let mut view = CallView::default();
        let callback = match self {
            Delivery::Http(headers, body) => {
                let callback =
                    AnswerCallback::HttpCallResponse(headers.len() as i32, body.len() as i32);
                view.map = Some((MapType::HttpCallResponseHeaders, headers));
                view.buffer = Some((BufferType::HttpCallResponseBody, body));
                callback
            }
            Delivery::GrpcInitialMetadata(map) => {
                let callback = grpc(|c| c.on_grpc_receive_initial_metadata.as_ref(), map.len());
                view.map = Some((MapType::GrpcReceiveInitialMetadata, map));
                callback
            }
            Delivery::GrpcMessage(message) => {
                let callback = grpc(|c| c.on_grpc_receive.as_ref(), message.len());
                view.buffer = Some((BufferType::GrpcReceiveBuffer, message));
                callback
            }
            Delivery::GrpcTrailingMetadata(map) => {
                let callback = grpc(|c| c.on_grpc_receive_trailing_metadata.as_ref(), map.len());
                view.map = Some((MapType::GrpcReceiveTrailingMetadata, map));
                callback
            }
            Delivery::GrpcClose(status, message) => {
                view.status = Some((status, message));
                AnswerCallback::Grpc(|c| c.on_grpc_close.as_ref(), status as i32)
            }
        };
        (view, callback)
    }
}

/// The callback a [`Delivery`] is made by, with its last arguments.
#[derive(Clone, Copy)]
enum AnswerCallback {
    /// `proxy_on_http_call_response(root, token, headers, body size, 0)`.
    HttpCallResponse(i32, i32),
    /// A gRPC callback `(root, token, n)`: `n` is the metadata count, the
    /// message's size, or the status.
    Grpc(GrpcPick, i32),
}

/// Which gRPC callback to call.
type GrpcPick = fn(&vm::Callbacks) -> Option<&wasmtime::TypedFunc<(i32, i32, i32), ()>>;

impl AnswerCallback {
    /// Calls it on root context `root` for `token`, if the filter exports
    /// it.
    fn call(
        self,
        wasm: &mut WasmInstance<PwState>,
        callbacks: &vm::Callbacks,
        (root, token): (i32, u32),
        meter: &dyn SliceMeter,
    ) -> Option<Result<(), CallError>> {
        let token = token as i32;
        match self {
            AnswerCallback::HttpCallResponse(count, size) => {
                let callback = callbacks.on_http_call_response.as_ref()?;
                Some(call_in(
                    wasm,
                    callback,
                    (root, token, count, size, 0),
                    meter,
                ))
            }
            AnswerCallback::Grpc(pick, n) => {
                Some(call_in(wasm, pick(callbacks)?, (root, token, n), meter))
            }
        }
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
        let count = filter.stream.request.len() as i32;
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

    /// Delivers `delivery`, for call or stream `token`, to the filter, on
    /// the plugin's root context as the SDKs expect, and applies the
    /// filter's edits to the message it paused. While the event of a
    /// stream still open (`live`) is delivered, the filter may send on it,
    /// end its side or cancel it: what it did is returned, for the caller
    /// to do.
    pub async fn on_call_answer(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        (token, delivery, live): (u32, Delivery, Option<LiveStream>),
        paused: &mut Paused<'_>,
        meter: &dyn SliceMeter,
    ) -> Result<(RequestOutcome, Vec<StreamOp>), HookFault> {
        match paused {
            Paused::Request(request) => filter.stream.read_request(request),
            Paused::Response(response) => {
                filter.stream.response = Some(HeaderPairs::of_response(response));
            }
        }
        let callback;
        (filter.stream.call_view, callback) = delivery.into_view();
        let root = self.root();
        let called = self.in_context(lease, filter, |wasm, callbacks, _| {
            wasm.abi_mut().live_stream = live.map(|live| (token, live.ended));
            let called = callback.call(wasm, callbacks, (root, token), meter);
            let state = wasm.abi_mut();
            state.live_stream = None;
            state.stream_sent = 0;
            let ops = std::mem::take(&mut state.stream_ops);
            called.map(|result| result.map(|()| ops))
        });
        filter.stream.call_view = CallView::default();
        let Some(ops) = called? else {
            return Ok((RequestOutcome::Continue, Vec::new()));
        };
        // Still paused only while it waits for another call.
        let waits = !filter.stream.calls.is_empty();
        let outcome = match paused {
            Paused::Request(request) => Self::request_outcome(filter, request, waits),
            Paused::Response(response) => Self::response_outcome(filter, response, waits),
        };
        lose_on_fault(outcome, lease, filter).map(|outcome| (outcome, ops))
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
        let count = filter.stream.response.as_ref().map_or(0, HeaderPairs::len) as i32;
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

    /// `proxy_on_response_trailers` on `trailers`, and the filter's edits
    /// applied to them. Trailers cannot wait: a pause, a call or a local
    /// response from this callback is not honoured.
    pub async fn on_response_trailers(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        trailers: &mut http::HeaderMap,
        meter: &dyn SliceMeter,
    ) -> Result<(), HookFault> {
        let called = self.in_context(lease, filter, |wasm, callbacks, context| {
            let callback = callbacks.on_response_trailers.as_ref()?;
            let stream = wasm.abi_mut().stream.as_mut()?;
            stream.response_trailers = Some(HeaderPairs::of_trailers(trailers));
            let args = (context, trailers.len() as i32);
            Some(call_in(wasm, callback, args, meter))
        });
        let map = filter.stream.response_trailers.take();
        filter.stream.local_reply = None;
        filter.stream.calls.clear();
        if called?.is_none() {
            return Ok(());
        }
        let applied = match map.filter(HeaderPairs::changed) {
            Some(map) => map.apply_to_trailers(trailers),
            None => Ok(()),
        };
        lose_on_fault(applied, lease, filter)
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
        let called = self.in_context(lease, filter, |wasm, callbacks, context| {
            let callback = pick(callbacks)?;
            Some(call_in(
                wasm,
                callback,
                (context, count, end_of_stream),
                meter,
            ))
        });
        Ok(called?.unwrap_or(0))
    }

    /// Runs `call` in the instance holding `filter`'s HTTP context (given
    /// its id), with the context's stream in the instance's state for the
    /// hostcalls, and takes the stream back after. `Ok(None)` when the
    /// filter is out of the request or `call` called nothing (the export
    /// is absent); a fault loses the instance (its state is suspect).
    fn in_context<R>(
        &self,
        lease: &mut VmLease,
        filter: &mut FilterStream,
        call: impl FnOnce(
            &mut WasmInstance<PwState>,
            &vm::Callbacks,
            i32,
        ) -> Option<Result<R, CallError>>,
    ) -> Result<Option<R>, HookFault> {
        let Some(instance) = seated(lease, filter)? else {
            return Ok(None);
        };
        let FilterInstance {
            wasm, callbacks, ..
        } = instance;
        let state = wasm.abi_mut();
        state.stream = Some(std::mem::take(&mut filter.stream));
        state.current = self.index;
        let called = call(wasm, callbacks, filter.context);
        filter.stream = wasm.abi_mut().stream.take().unwrap_or_default();
        match called {
            None => Ok(None),
            Some(Ok(result)) => Ok(Some(result)),
            Some(Err(e)) => {
                lease.lose();
                filter.live = false;
                Err(e.into_fault())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_runtime::{block_on, EngineOptions, GuestEngine, GuestLimits, Unmetered};

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
