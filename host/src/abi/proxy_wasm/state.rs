//! What a filter's instance keeps for its hostcalls, and the host logic
//! behind them: which buffer or map a number names, what a property's
//! value is, what a local reply or an HTTP call records. The hostcalls
//! themselves (`hostcalls.rs`) only move arguments and results across
//! guest memory; everything here is plain Rust, testable without wasm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use wasmtime::TypedFunc;

use super::callout::{CallKind, StreamOp};
use super::properties::{attribute, Attribute, PluginNames};
use super::stream::CallView;
use super::types::{BufferType, MapType, Status};
use super::{HeaderPairs, PendingCall, Plugin, SetRefused, Stream};

/// Properties a filter may set on one request.
pub(super) const MAX_PROPERTIES: usize = 256;

/// Bytes of paths and values a filter's properties may hold on one
/// request.
pub(super) const MAX_PROPERTY_BYTES: usize = 1 << 20;
use crate::abi::LocalReply;
use crate::config_model::UpstreamProtocol;
use crate::upstream::StaticUpstream;

/// What a filter's instance keeps in its store for the hostcalls.
pub struct PwState {
    /// The plugins this instance runs (one root context each, ids 1, 2,
    /// ... in this order): more than one when filter entries share a VM.
    plugins: Arc<[Arc<Plugin>]>,
    /// The plugin whose context the callback in progress is for.
    pub(super) current: usize,
    /// The guest's allocator (`proxy_on_memory_allocate` or `malloc`), for
    /// data the host returns.
    /// Shared, so that a hostcall holds it while it calls the guest
    /// without cloning the function (and its registered type) each time.
    pub(super) alloc: Option<Arc<TypedFunc<i32, i32>>>,
    /// The HTTP stream of the callback in progress, if any.
    pub(super) stream: Option<Stream>,
    /// The token of the next HTTP call: unique within the instance.
    next_call_token: u32,
    /// HTTP calls dispatched outside any stream (from `proxy_on_tick`,
    /// `proxy_on_queue_ready` or a root call's response), made once the
    /// callback returns and answered to the root context.
    pub(super) root_calls: Vec<PendingCall>,
    /// The response of the root call being delivered.
    pub(super) root_call_view: CallView,
    /// A root callback outside any request is running (a tick, a queue
    /// delivery, a root call's answer): only then may calls be
    /// dispatched outside a stream.
    pub(super) in_root_callback: bool,
    /// The filter's allocator trapped while a hostcall asked it for
    /// memory: the hostcall said `INVALID_MEMORY_ACCESS`, and the callback
    /// is a fault once it returns (the guest's state may be poisoned).
    pub(super) allocator_failed: Option<String>,
    /// The gRPC stream whose event is being delivered, and whether the
    /// filter ended its side: the filter may send on it (until it ends its
    /// side), end its side, or cancel it (`stream_ops`).
    pub(super) live_stream: Option<(u32, bool)>,
    /// What the filter did to the live stream in this callback.
    pub(super) stream_ops: Vec<StreamOp>,
    /// Bytes of the sends in `stream_ops`.
    pub(super) stream_sent: usize,
}

impl PwState {
    /// The state of a new instance running `plugins`, outside any stream.
    pub(super) fn new(plugins: Arc<[Arc<Plugin>]>) -> Self {
        PwState {
            plugins,
            current: 0,
            alloc: None,
            stream: None,
            next_call_token: 1,
            root_calls: Vec::new(),
            allocator_failed: None,
            root_call_view: CallView::default(),
            in_root_callback: false,
            live_stream: None,
            stream_ops: Vec::new(),
            stream_sent: 0,
        }
    }

    /// The plugin whose context the callback in progress is for: its
    /// configuration, names, ticks and queues.
    pub(super) fn plugin(&self) -> &Plugin {
        &self.plugins[self.current]
    }

    /// The HTTP stream in progress; `NOT_FOUND` outside one.
    fn stream(&self) -> Result<&Stream, Status> {
        self.stream.as_ref().ok_or(Status::NotFound)
    }

    /// Header map `map` of the stream in progress (or of the call answer
    /// a root context is given).
    pub(super) fn header_map(&self, map: MapType) -> Result<&HeaderPairs, Status> {
        match &self.stream {
            Some(stream) => stream.header_map(map),
            None => self.root_call_view.header_map(map).ok_or(Status::NotFound),
        }
    }

    /// Header map `map` of the stream in progress, to edit.
    pub(super) fn header_map_mut(&mut self, map: MapType) -> Result<&mut HeaderPairs, Status> {
        match &mut self.stream {
            Some(stream) => stream.header_map_mut(map),
            None => self
                .root_call_view
                .header_map_mut(map)
                .ok_or(Status::NotFound),
        }
    }

    /// The call answer being delivered, as the filter reads it.
    fn call_view(&self) -> &CallView {
        match &self.stream {
            Some(stream) => &stream.call_view,
            None => &self.root_call_view,
        }
    }

    /// The status of the gRPC call or stream being closed
    /// (`proxy_on_grpc_close`), for `proxy_get_status`; OK and no message
    /// anywhere else, as Envoy answers (the Rust SDK panics on any status
    /// but OK from this hostcall).
    pub(super) fn grpc_status(&self) -> (u32, String) {
        self.call_view()
            .status
            .clone()
            .unwrap_or((crate::abi::grpc::OK, String::new()))
    }

    /// The bytes of buffer `buffer`: the configurations from any
    /// callback, the others from the stream in progress.
    fn buffer(&self, buffer: BufferType) -> Result<&[u8], Status> {
        match buffer {
            BufferType::VmConfiguration => Ok(&self.plugin().vm_config),
            BufferType::PluginConfiguration => Ok(&self.plugin().config),
            BufferType::HttpCallResponseBody | BufferType::GrpcReceiveBuffer
                if self.stream.is_none() =>
            {
                self.root_call_view.buffer(buffer).ok_or(Status::NotFound)
            }
            _ => self.stream()?.buffer(buffer),
        }
    }

    /// At most `max_size` bytes of buffer `buffer` from `start`, clamped
    /// to what there is (the SDKs pass `u32::MAX` as `max_size`).
    pub(super) fn buffer_bytes(
        &self,
        buffer: BufferType,
        start: u32,
        max_size: u32,
    ) -> Result<&[u8], Status> {
        let whole = self.buffer(buffer)?;
        let start = (start as usize).min(whole.len());
        let end = start.saturating_add(max_size as usize).min(whole.len());
        Ok(&whole[start..end])
    }

    /// The size of buffer `buffer`. The call response's body is not
    /// reported (`NOT_FOUND`): the callback's `body_size` gives it, and
    /// the Rust SDK does not ask (docs/PROXY_WASM.md).
    pub(super) fn buffer_size(&self, buffer: BufferType) -> Result<usize, Status> {
        if buffer == BufferType::HttpCallResponseBody {
            return Err(Status::NotFound);
        }
        self.buffer(buffer).map(<[u8]>::len)
    }

    /// Replaces bytes of a body of the stream in progress (see
    /// [`Stream::set_body_bytes`]).
    pub(super) fn set_buffer_bytes(
        &mut self,
        buffer: BufferType,
        start: u32,
        size: u32,
        data: Vec<u8>,
    ) -> Result<(), Status> {
        self.stream
            .as_mut()
            .ok_or(Status::NotFound)?
            .set_body_bytes(buffer, start, size, data)
    }

    /// The value of property `path` (segments separated by NUL):
    /// `plugin_*` from any callback, then what the filter set, then the
    /// request's facts.
    pub(super) fn property(&self, path: &str) -> Result<Vec<u8>, Status> {
        self.lookup_property(path).ok_or(Status::NotFound)
    }

    fn lookup_property(&self, path: &str) -> Option<Vec<u8>> {
        let plugin = self.plugin();
        let set = self.stream.as_ref().and_then(|s| s.properties.get(path));
        if let Some(value) = set {
            return Some(value.clone());
        }
        let names = PluginNames {
            name: &plugin.plugin_name,
            root_id: &plugin.root_id,
            vm_id: &plugin.vm_id,
        };
        attribute(&names, self.stream.as_ref(), path).map(Attribute::into_bytes)
    }

    /// Sets property `path` for the rest of the stream in progress.
    /// Past [`MAX_PROPERTIES`] properties or [`MAX_PROPERTY_BYTES`] for
    /// the request: `BAD_ARGUMENT` (they live on the host heap until the
    /// request ends).
    pub(super) fn set_property(&mut self, path: String, value: Vec<u8>) -> Result<(), Status> {
        let stream = self.stream.as_mut().ok_or(Status::NotFound)?;
        let properties = &mut stream.properties;
        let replaced = properties
            .get(&path)
            .map_or(0, |old| path.len() + old.len());
        let held: usize = properties.iter().map(|(p, v)| p.len() + v.len()).sum();
        let count = properties.len() + usize::from(replaced == 0);
        if count > MAX_PROPERTIES || held - replaced + path.len() + value.len() > MAX_PROPERTY_BYTES
        {
            return Err(Status::BadArgument);
        }
        properties.insert(path, value);
        Ok(())
    }

    /// Asks for the stream in progress to be reset once the callback
    /// returns. `BAD_ARGUMENT` outside an HTTP stream.
    pub(super) fn close_stream(&mut self) -> Result<(), Status> {
        let stream = self.stream.as_mut().ok_or(Status::BadArgument)?;
        stream.close = true;
        Ok(())
    }

    /// Records the local reply the filter sent; it is checked once the
    /// callback returns. `BAD_ARGUMENT` outside an HTTP stream.
    pub(super) fn send_local_response(&mut self, reply: LocalReply) -> Result<(), Status> {
        let stream = self.stream.as_mut().ok_or(Status::BadArgument)?;
        stream.local_reply = Some(reply);
        Ok(())
    }

    /// Shared value `key` and its CAS token, in the filter's namespace of
    /// its tenant's shared data.
    pub(super) fn shared_data(&self, key: &str) -> Result<(Vec<u8>, u32), Status> {
        let plugin = self.plugin();
        plugin
            .scope
            .shared
            .get(&plugin.shared_namespace, key)
            .ok_or(Status::NotFound)
    }

    /// Registers the filter's queue `name` (of its `vm_id`): its token.
    pub(super) fn register_queue(&self, name: &str) -> Result<u32, Status> {
        let plugin = self.plugin();
        let mut queues = plugin.scope.shared.queues();
        queues.register(&plugin.vm_id, name, &plugin.queue_ready)
    }

    /// The token of the tenant's queue `name` of `vm_id`.
    pub(super) fn resolve_queue(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        let queues = self.plugin().scope.shared.queues();
        queues.resolve(vm_id, name).ok_or(Status::NotFound)
    }

    /// Adds `item` to the tenant's queue `token`; past its
    /// `shared_data_bytes` waiting: `INTERNAL_FAILURE`.
    pub(super) fn enqueue(&self, token: u32, item: Vec<u8>) -> Result<(), Status> {
        let limit = usize::try_from(self.shared_data_limit()).unwrap_or(usize::MAX);
        let enqueued = self
            .plugin()
            .scope
            .shared
            .queues()
            .enqueue(token, item, limit);
        if enqueued.is_ok() {
            super::queues::wake_deliveries();
        }
        enqueued
    }

    /// The oldest item of the tenant's queue `token`.
    pub(super) fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        self.plugin().scope.shared.queues().dequeue(token)
    }

    /// The tenant's `shared_data_bytes`.
    pub(super) fn shared_data_limit(&self) -> u64 {
        self.plugin().scope.limits.shared_data_bytes
    }

    /// Sets shared value `key` if `cas` is 0 or matches its token. Past
    /// the tenant's `shared_data_bytes`: `INTERNAL_FAILURE` (the Rust SDK
    /// panics on any status but `OK` and `CAS_MISMATCH`, so a filter that
    /// floods its store stops itself).
    pub(super) fn set_shared_data(
        &self,
        key: &str,
        value: Vec<u8>,
        cas: u32,
    ) -> Result<(), Status> {
        let plugin = self.plugin();
        let scope = &plugin.scope;
        let limit = usize::try_from(scope.limits.shared_data_bytes).unwrap_or(usize::MAX);
        match scope
            .shared
            .set(&plugin.shared_namespace, (key, value), cas, limit)
        {
            Ok(()) => Ok(()),
            Err(SetRefused::CasMismatch) => Err(Status::CasMismatch),
            Err(SetRefused::Full) => Err(Status::InternalFailure),
        }
    }

    /// The id of metric `name`, defined now if new. Every kind is kept as
    /// a gauge. Past the tenant's `max_metrics`: `INTERNAL_FAILURE`.
    pub(super) fn define_metric(&self, name: &str) -> Result<u32, Status> {
        self.plugin()
            .metrics
            .define(name)
            .ok_or(Status::InternalFailure)
    }

    /// Metric `id`.
    pub(super) fn metric(&self, id: u32) -> Result<IntGauge, Status> {
        self.plugin().metrics.get(id).ok_or(Status::NotFound)
    }

    /// Asks for `proxy_on_tick` every `period_ms` (0: never).
    pub(super) fn set_tick_period(&self, period_ms: u32) {
        self.plugin()
            .tick_period_ms
            .store(u64::from(period_ms), Ordering::Relaxed);
    }

    /// Records an HTTP call to `upstream` (one of the tenant's or the
    /// shared clusters, or an `ip:port` its egress allows), made once the
    /// callback returns, and gives its token. The headers must have
    /// `:method` and `:path`; the timeout is cut to the tenant's
    /// `max_call_timeout_ms`. `BAD_ARGUMENT` for a destination not
    /// granted (as Envoy answers an unknown cluster); `INTERNAL_FAILURE`
    /// when the tenant's `max_pending_calls` are in flight, and from the
    /// root context alone (no stream, not yet supported).
    pub(super) fn dispatch_http_call(
        &mut self,
        upstream: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        let has = |name: &str| headers.iter().any(|(n, _)| n == name);
        if !has(":method") || !has(":path") {
            return Err(Status::BadArgument);
        }
        let target = self
            .plugin()
            .scope
            .callout_target(upstream)
            .ok_or(Status::BadArgument)?;
        self.dispatch(target, CallKind::Http, headers, body, timeout_ms)
    }

    /// Records a unary gRPC call of `method` of `service` on `upstream`
    /// (a cluster, or an `ip:port` the tenant's egress allows, as for
    /// HTTP calls), spoken over HTTP/2 whatever the cluster's protocol
    /// (gRPC is HTTP/2): TLS clusters by ALPN, plain ones with prior
    /// knowledge. `PARSE_FAILURE` for a destination not granted or names
    /// that cannot be sent (the Rust SDK takes only that and
    /// `INTERNAL_FAILURE`).
    pub(super) fn dispatch_grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        metadata: Vec<(String, String)>,
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        let names = (upstream, service, method);
        self.dispatch_grpc(CallKind::Grpc, names, metadata, message, timeout_ms)
    }

    /// Opens a gRPC stream to `method` of `service` on `upstream`, granted
    /// as for [`dispatch_grpc_call`](Self::dispatch_grpc_call); it is
    /// opened once the callback returns, with what the filter sent on it
    /// by then, and lives at most the tenant's `max_call_timeout_ms`.
    pub(super) fn open_grpc_stream(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<u32, Status> {
        let names = (upstream, service, method);
        // Its lifetime: the longest timeout the tenant allows.
        self.dispatch_grpc(CallKind::GrpcStream, names, metadata, &[], u32::MAX)
    }

    /// Records a gRPC call or stream of `kind` to `(upstream, service,
    /// method)`, its timeout cut to the tenant's `max_call_timeout_ms`; a
    /// stream's messages are what the filter sends on it, not `message`.
    fn dispatch_grpc(
        &mut self,
        kind: CallKind,
        (upstream, service, method): (&str, &str, &str),
        metadata: Vec<(String, String)>,
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        let scope = &self.plugin().scope;
        let target = grpc_target(scope.callout_target(upstream).ok_or(Status::ParseFailure)?);
        let timeout_ms = timeout_ms.clamp(1, scope.limits.max_call_timeout_ms);
        let (headers, body) = super::grpc::request(
            &target,
            upstream,
            (service, method),
            metadata,
            message,
            timeout_ms,
        )?;
        let body = if kind == CallKind::GrpcStream {
            Vec::new()
        } else {
            body
        };
        self.dispatch(target, kind, headers, body, timeout_ms)
    }

    /// The calls dispatched in this callback, not made yet.
    fn pending_calls(&mut self) -> &mut Vec<PendingCall> {
        match self.stream.as_mut() {
            Some(stream) => &mut stream.calls,
            None => &mut self.root_calls,
        }
    }

    /// Sends `message` on gRPC stream `token`, ending the filter's side
    /// if `end`: a stream opened in this callback takes it with its
    /// opening; the stream whose event is being delivered takes it once
    /// the callback returns. `NOT_FOUND` for any other token, or a stream
    /// whose side is ended; `BAD_ARGUMENT` past [`MAX_STREAM_SENT`] bytes
    /// not yet sent.
    pub(super) fn send_grpc_message(
        &mut self,
        token: u32,
        message: &[u8],
        end: bool,
    ) -> Result<(), Status> {
        let frame = crate::abi::grpc::frame(message);
        if let Some(call) = self
            .pending_calls()
            .iter_mut()
            .find(|call| call.token == token && call.kind == CallKind::GrpcStream)
        {
            if call.ended {
                return Err(Status::NotFound);
            }
            if call.body.len() + frame.len() > MAX_STREAM_SENT {
                return Err(Status::BadArgument);
            }
            call.body.extend_from_slice(&frame);
            call.ended = end;
            return Ok(());
        }
        self.live_stream_op(token, StreamOp::Send(frame, end))
    }

    /// Ends the filter's side of gRPC stream `token` (or cancels gRPC call
    /// `token`, as Envoy does); `NOT_FOUND` for any other token.
    pub(super) fn close_grpc(&mut self, token: u32) -> Result<(), Status> {
        let calls = self.pending_calls();
        if let Some(at) = calls.iter().position(|call| call.token == token) {
            match calls[at].kind {
                CallKind::GrpcStream => calls[at].ended = true,
                CallKind::Grpc => drop(calls.remove(at)),
                CallKind::Http => return Err(Status::NotFound),
            }
            return Ok(());
        }
        self.live_stream_op(token, StreamOp::Send(Vec::new(), true))
    }

    /// Cancels gRPC call or stream `token`: one dispatched in this
    /// callback is dropped, the stream being delivered is reset; nothing
    /// more is delivered for it. `NOT_FOUND` for any other token.
    pub(super) fn cancel_grpc(&mut self, token: u32) -> Result<(), Status> {
        let calls = self.pending_calls();
        if let Some(at) = calls
            .iter()
            .position(|call| call.token == token && call.kind != CallKind::Http)
        {
            calls.remove(at);
            return Ok(());
        }
        self.live_stream_op(token, StreamOp::Cancel)
    }

    /// Records `op` on the stream being delivered, if it is `token`: a
    /// send once the filter ended its side is `NOT_FOUND` (ending it again
    /// is `OK` and does nothing); past [`MAX_STREAM_OPS`] ops or
    /// [`MAX_STREAM_SENT`] bytes in one callback, `BAD_ARGUMENT`.
    fn live_stream_op(&mut self, token: u32, op: StreamOp) -> Result<(), Status> {
        let Some((live, ended)) = self.live_stream.as_mut().filter(|(live, _)| *live == token)
        else {
            return Err(Status::NotFound);
        };
        debug_assert_eq!(*live, token);
        if let StreamOp::Send(frame, end) = &op {
            if *ended {
                return if frame.is_empty() && *end {
                    Ok(())
                } else {
                    Err(Status::NotFound)
                };
            }
            *ended = *end;
        }
        if self.stream_ops.len() >= MAX_STREAM_OPS {
            return Err(Status::BadArgument);
        }
        if let StreamOp::Send(frame, _) = &op {
            if self.stream_sent + frame.len() > MAX_STREAM_SENT {
                return Err(Status::BadArgument);
            }
            self.stream_sent += frame.len();
        }
        self.stream_ops.push(op);
        Ok(())
    }

    /// Records a call to `target` (granted), made once the callback
    /// returns, and gives its token; `INTERNAL_FAILURE` when the tenant's
    /// `max_pending_calls` are in flight, and outside any callback that
    /// could take the answer. The timeout is cut to the tenant's
    /// `max_call_timeout_ms`.
    pub(super) fn dispatch(
        &mut self,
        target: StaticUpstream,
        kind: CallKind,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        let scope = &self.plugin().scope;
        let slot = scope.take_call_slot().ok_or(Status::InternalFailure)?;
        let timeout_ms = timeout_ms.clamp(1, scope.limits.max_call_timeout_ms);
        let token = self.next_call_token;
        let calls = match self.stream.as_mut() {
            Some(stream) => &mut stream.calls,
            None if self.in_root_callback => &mut self.root_calls,
            // `proxy_on_configure` when an instance starts,
            // `proxy_on_context_create`: no one would take the answer.
            None => return Err(Status::InternalFailure),
        };
        calls.push(PendingCall {
            token,
            target,
            kind,
            ended: false,
            headers,
            body,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            slot,
        });
        self.next_call_token = token.wrapping_add(1).max(1);
        Ok(token)
    }
}

/// The most bytes a filter's sends on one gRPC stream may queue before
/// they go out (within one callback).
pub(super) const MAX_STREAM_SENT: usize = 1 << 20;

/// The most sends, closes and cancels a filter may queue on the stream
/// being delivered, within one callback.
pub(super) const MAX_STREAM_OPS: usize = 64;

/// `target` for gRPC, which is HTTP/2 whatever the cluster says: by ALPN
/// over TLS, with prior knowledge over plain TCP.
fn grpc_target(mut target: StaticUpstream) -> StaticUpstream {
    target.protocol = if target.tls {
        UpstreamProtocol::H2
    } else {
        UpstreamProtocol::H2c
    };
    target
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::abi::proxy_wasm::{
        FilterLimits, FilterMetrics, ScopeCounters, SharedData, TenantScope,
    };
    use crate::upstream::egress::{Egress, OwnAddresses};

    fn scope(allow: Option<&[String]>, limits: FilterLimits) -> Arc<TenantScope> {
        let own = Arc::new(OwnAddresses::new(["127.0.0.1:8080".parse().unwrap()]));
        Arc::new(TenantScope {
            shared: Arc::new(SharedData::default()),
            ..TenantScope::new(
                "t",
                HashMap::from([(
                    "auth".to_string(),
                    StaticUpstream::at("127.0.0.1:9".parse().unwrap()),
                )]),
                Egress::new(allow, own).unwrap(),
                ScopeCounters::unexported(),
                limits,
            )
        })
    }

    fn state_in(scope: Arc<TenantScope>, namespace: &str) -> PwState {
        PwState::new(Arc::new([Arc::new(Plugin {
            name: "test".into(),
            plugin_name: "f.wasm".into(),
            root_id: "root".into(),
            vm_id: String::new(),
            config: b"plugin".to_vec(),
            vm_config: b"vm".to_vec(),
            shared_namespace: namespace.into(),
            metrics: Arc::new(FilterMetrics::new(None, scope.limits.max_metrics as usize)),
            scope,
            tick_period_ms: AtomicU64::new(0),
            queue_ready: Arc::default(),
            root_work: Default::default(),
        })]))
    }

    fn state() -> PwState {
        state_in(scope(None, FilterLimits::default()), "vm")
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn outside_a_stream_only_the_plugins_own_data_is_there() {
        let mut state = state();
        assert_eq!(
            state.buffer_bytes(BufferType::PluginConfiguration, 0, u32::MAX),
            Ok(&b"plugin"[..])
        );
        assert_eq!(state.buffer_size(BufferType::VmConfiguration), Ok(2));
        assert_eq!(state.property("plugin_root_id"), Ok(b"root".to_vec()));
        assert_eq!(
            state.buffer_bytes(BufferType::HttpRequestBody, 0, 1),
            Err(Status::NotFound)
        );
        assert_eq!(
            state.header_map(MapType::HttpRequestHeaders).err(),
            Some(Status::NotFound)
        );
        assert_eq!(
            state.set_property("a".into(), vec![]),
            Err(Status::NotFound)
        );
        let reply = LocalReply {
            status: 200,
            headers: Vec::new(),
            body: Default::default(),
            grpc_status: None,
        };
        assert_eq!(state.send_local_response(reply), Err(Status::BadArgument));
        // A call from the root context outside a root callback has no
        // one to answer; in one, it waits for the root's answer.
        let call = pairs(&[(":method", "GET"), (":path", "/")]);
        assert_eq!(
            state.dispatch_http_call("auth", call.clone(), vec![], 10),
            Err(Status::InternalFailure)
        );
        state.in_root_callback = true;
        let token = state.dispatch_http_call("auth", call, vec![], 10).unwrap();
        assert_eq!(state.root_calls.len(), 1);
        assert_eq!(state.root_calls[0].token, token);
    }

    #[test]
    fn buffers_are_windows_and_bodies_are_spliced_under_the_cap() {
        let mut state = state();
        state.stream = Some(Stream::default());
        let body = BufferType::HttpRequestBody;
        state
            .set_buffer_bytes(body, 0, 0, b"hello".to_vec())
            .unwrap();
        state.set_buffer_bytes(body, 5, 0, b"!".to_vec()).unwrap();
        state.set_buffer_bytes(body, 0, 1, b"J".to_vec()).unwrap();
        assert_eq!(state.buffer_bytes(body, 0, u32::MAX), Ok(&b"Jello!"[..]));
        assert_eq!(state.buffer_bytes(body, 1, 3), Ok(&b"ell"[..]));
        assert_eq!(state.buffer_bytes(body, 99, 3), Ok(&b""[..]));
        let too_big = vec![0; super::super::MAX_BODY];
        assert_eq!(
            state.set_buffer_bytes(body, 0, 0, too_big),
            Err(Status::BadArgument)
        );
        for other in [BufferType::DownstreamData, BufferType::VmConfiguration] {
            assert_eq!(
                state.set_buffer_bytes(other, 0, 0, vec![]),
                Err(Status::NotFound)
            );
        }
        // The call response's body is readable during its callback only,
        // and its size is never reported.
        let call_body = BufferType::HttpCallResponseBody;
        assert_eq!(state.buffer_bytes(call_body, 0, 9), Err(Status::NotFound));
        state.stream.as_mut().unwrap().call_view.buffer = Some((call_body, b"ok".to_vec()));
        assert_eq!(state.buffer_bytes(call_body, 0, 9), Ok(&b"ok"[..]));
        assert_eq!(state.buffer_size(call_body), Err(Status::NotFound));
    }

    #[test]
    fn maps_are_there_while_the_stream_keeps_them() {
        let mut state = state();
        state.stream = Some(Stream::default());
        state
            .header_map_mut(MapType::HttpRequestHeaders)
            .unwrap()
            .add("X-A", "1");
        let request = state.header_map(MapType::HttpRequestHeaders).unwrap();
        assert_eq!(request.get("x-a"), Some("1"));
        for absent in [
            MapType::HttpResponseHeaders,
            MapType::HttpCallResponseHeaders,
            MapType::HttpRequestTrailers,
        ] {
            assert_eq!(state.header_map(absent).err(), Some(Status::NotFound));
        }
    }

    #[test]
    fn http_calls_go_to_clusters_and_granted_addresses_only() {
        let mut state = state();
        state.stream = Some(Stream::default());
        let call = pairs(&[(":method", "GET"), (":path", "/")]);
        assert_eq!(
            state.dispatch_http_call("auth", pairs(&[(":path", "/")]), vec![], 0),
            Err(Status::BadArgument)
        );
        assert_eq!(
            state.dispatch_http_call("nowhere", call.clone(), vec![], 0),
            Err(Status::BadArgument)
        );
        assert_eq!(
            state.dispatch_http_call("auth", call.clone(), vec![], 0),
            Ok(1)
        );
        // Without egress: clusters only, as Envoy.
        assert_eq!(
            state.dispatch_http_call("127.0.0.1:1", call.clone(), vec![], 5),
            Err(Status::BadArgument)
        );
        assert_eq!(state.plugin().scope.counters.egress_refused.get(), 1);

        let allow = ["127.0.0.1/32".to_string()];
        let limits = FilterLimits {
            max_pending_calls: 2,
            max_call_timeout_ms: 100,
            ..FilterLimits::default()
        };
        let mut state = state_in(scope(Some(&allow), limits), "vm");
        state.stream = Some(Stream::default());
        assert_eq!(
            state.dispatch_http_call("127.0.0.1:1", call.clone(), vec![], 5),
            Ok(1)
        );
        // The proxy's own listener, whatever the list says.
        assert_eq!(
            state.dispatch_http_call("127.0.0.1:8080", call.clone(), vec![], 5),
            Err(Status::BadArgument)
        );
        // A 49-day timeout is cut to the tenant's cap.
        assert_eq!(
            state.dispatch_http_call("auth", call.clone(), vec![], u32::MAX),
            Ok(2)
        );
        // Two in flight: the third is refused until one is answered.
        assert_eq!(
            state.dispatch_http_call("auth", call.clone(), vec![], 5),
            Err(Status::InternalFailure)
        );
        let calls = &mut state.stream.as_mut().unwrap().calls;
        assert_eq!(calls[0].timeout, Duration::from_millis(5));
        assert_eq!(calls[1].timeout, Duration::from_millis(100));
        calls.remove(0);
        assert_eq!(state.dispatch_http_call("auth", call, vec![], 5), Ok(3));
    }

    #[test]
    fn grpc_calls_and_streams_take_sends_closes_and_cancels_by_token() {
        let mut state = state();
        state.stream = Some(Stream::default());
        assert_eq!(
            state.dispatch_grpc_call("nowhere", "S", "M", vec![], b"", 5),
            Err(Status::ParseFailure)
        );
        let call = state.dispatch_grpc_call("auth", "pkg.S", "M", vec![], b"hi", 5);
        let stream = state.open_grpc_stream("auth", "pkg.S", "Chat", vec![]);
        let (call, stream) = (call.unwrap(), stream.unwrap());
        {
            let calls = &state.stream.as_ref().unwrap().calls;
            assert_eq!(calls[0].kind, CallKind::Grpc);
            // gRPC is HTTP/2 whatever the cluster says: plain, so h2c.
            assert_eq!(calls[0].target.protocol, UpstreamProtocol::H2c);
            assert_eq!(calls[1].kind, CallKind::GrpcStream);
            assert!(calls[1].body.is_empty());
        }
        // A stream opened in this callback takes what is sent with it.
        assert_eq!(state.send_grpc_message(stream, b"one", false), Ok(()));
        assert_eq!(
            state.send_grpc_message(call, b"x", false),
            Err(Status::NotFound)
        );
        assert_eq!(state.close_grpc(stream), Ok(()));
        assert_eq!(
            state.send_grpc_message(stream, b"two", false),
            Err(Status::NotFound)
        );
        {
            let calls = &state.stream.as_ref().unwrap().calls;
            assert_eq!(calls[1].body, crate::abi::grpc::frame(b"one"));
            assert!(calls[1].ended);
        }
        // Cancelled before they were made: gone, and a second cancel finds
        // nothing.
        assert_eq!(state.cancel_grpc(call), Ok(()));
        assert_eq!(state.cancel_grpc(stream), Ok(()));
        assert_eq!(state.cancel_grpc(stream), Err(Status::NotFound));
        assert!(state.stream.as_ref().unwrap().calls.is_empty());

        // The stream whose event is being delivered takes sends as ops,
        // bounded; no other token does.
        state.live_stream = Some((9, false));
        assert_eq!(state.send_grpc_message(9, b"three", false), Ok(()));
        assert_eq!(
            state.send_grpc_message(8, b"three", false),
            Err(Status::NotFound)
        );
        let big = vec![0; MAX_STREAM_SENT];
        assert_eq!(
            state.send_grpc_message(9, &big, false),
            Err(Status::BadArgument)
        );
        assert_eq!(state.close_grpc(9), Ok(()));
        // Its side ended: no more sends; closing again does nothing.
        assert_eq!(
            state.send_grpc_message(9, b"four", false),
            Err(Status::NotFound)
        );
        assert_eq!(state.close_grpc(9), Ok(()));
        assert_eq!(state.cancel_grpc(9), Ok(()));
        assert_eq!(
            std::mem::take(&mut state.stream_ops),
            vec![
                StreamOp::Send(crate::abi::grpc::frame(b"three"), false),
                StreamOp::Send(Vec::new(), true),
                StreamOp::Cancel,
            ]
        );
        // A filter that closes in a loop is stopped, not the log flooded.
        state.stream_ops.clear();
        state.live_stream = Some((9, false));
        for _ in 0..MAX_STREAM_OPS {
            assert_eq!(state.cancel_grpc(9), Ok(()));
        }
        assert_eq!(state.cancel_grpc(9), Err(Status::BadArgument));
        // Outside a close: OK and no message, as Envoy answers.
        assert_eq!(state.grpc_status(), (0, String::new()));
    }

    #[test]
    fn shared_data_is_namespaced_and_bounded() {
        let limits = FilterLimits {
            shared_data_bytes: 10,
            ..FilterLimits::default()
        };
        let scope = scope(None, limits);
        let (a, b) = (state_in(scope.clone(), "one"), state_in(scope, "two"));
        assert_eq!(a.set_shared_data("k", b"1234".to_vec(), 0), Ok(()));
        assert_eq!(a.shared_data("k"), Ok((b"1234".to_vec(), 1)));
        assert_eq!(b.shared_data("k"), Err(Status::NotFound));
        assert_eq!(
            a.set_shared_data("k", b"5".to_vec(), 7),
            Err(Status::CasMismatch)
        );
        // 1 + 4 held; 1 + 9 more would pass 10 bytes.
        assert_eq!(
            b.set_shared_data("k", b"123456789".to_vec(), 0),
            Err(Status::InternalFailure)
        );
        // Replacing a value counts the new size only.
        assert_eq!(a.set_shared_data("k", b"123456789".to_vec(), 1), Ok(()));
        assert_eq!(
            b.set_shared_data("x", vec![], 0),
            Err(Status::InternalFailure)
        );
    }

    #[test]
    fn metrics_are_bounded() {
        let limits = FilterLimits {
            max_metrics: 2,
            ..FilterLimits::default()
        };
        let state = state_in(scope(None, limits), "vm");
        assert_eq!(state.define_metric("a"), Ok(0));
        assert_eq!(state.define_metric("b"), Ok(1));
        assert_eq!(state.define_metric("a"), Ok(0));
        assert_eq!(state.define_metric("c"), Err(Status::InternalFailure));
    }

    #[test]
    fn two_tenants_never_share_data() {
        let a = SharedData::of_tenant("tenant-a");
        let b = SharedData::of_tenant("tenant-b");
        let namespace: Arc<str> = "same-module".into();
        a.set(&namespace, ("counter", b"3".to_vec()), 0, 100)
            .unwrap();
        assert_eq!(b.get(&namespace, "counter"), None);
        assert!(Arc::ptr_eq(&a, &SharedData::of_tenant("tenant-a")));
        // Each set names its version's limit.
        let big = ("big", vec![0u8; 50]);
        assert_eq!(a.set(&namespace, big.clone(), 0, 40), Err(SetRefused::Full));
        assert_eq!(a.set(&namespace, big, 0, 100), Ok(()));
    }
}
