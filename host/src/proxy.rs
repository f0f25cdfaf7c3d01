//! The `ProxyHttp` implementation. Pingora calls it for every request:
//! `request_filter` picks the tenant by Host, and then each phase calls the
//! tenant module's export of the same name, if it has one (see
//! `hooks.rs`), with the per-request ctx carried as JSON from hook to hook:
//!
//! | phase | guest export | what the guest may do |
//! |---|---|---|
//! | `request_filter` | `request_filter` | change the request, answer it, refuse it |
//! | `upstream_peer` | `upstream_peer` | choose the upstream (else the static one) |
//! | `upstream_request_filter` | `upstream_request_filter` | change the upstream request |
//! | `response_filter` | `response_filter` | change the response's status and headers |
//! | `logging` | `logging` | log; changes nothing |
//!
//! A tenant's proxy-wasm filters run around that: their
//! `proxy_on_request_headers` (and any HTTP calls they wait for) before the
//! module's `request_filter`, `proxy_on_request_body` on the request body,
//! `proxy_on_response_headers` and `proxy_on_response_body` after the
//! module's `response_filter` (last filter first), and `proxy_on_done`,
//! `proxy_on_log`, `proxy_on_delete` before its `logging`.
//!
//! Each guest call goes through `guest_call.rs` (the tenant's budget
//! admits it, it is accounted, a failure meets the guest's policy) and
//! yields its worker while it runs long; the filters' callbacks are made
//! by the request's `FilterChain` (`filter_chain.rs`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::protocols::http::HttpTask;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::abi::framing::{framing_of, keep_framing};
use crate::abi::grpc::{self, is_grpc_request};
use crate::abi::hook_table::Hook;
use crate::abi::proxy_wasm::{ConnectionFacts, Direction, TlsFacts};
use crate::abi::v1::{
    self, DownstreamRequest, GuestCtx, PeerChoice, RequestEnd, RequestVerdict, V1Module,
};
use crate::abi::HookFailure;
use crate::edge::drain::Draining;
use crate::edge::forwarded::{add_forwarded_headers, authority_as_host};
use crate::guest::filter_chain::{
    declared_length, has_body, response_has_body, ChainVerdict, FilterChain,
};
use crate::guest::guest_call::{CallFailure, CallName, GuestCall, Stage, Stop};
use crate::metrics::Metrics;
use crate::tenancy::budget::Throttle;
use crate::tenancy::sni::RequestedServerName;
use crate::tenancy::tenants::{Tenant, TenantSet};
use crate::upstream::pools::{PeerTimeouts, PoolRoute};

/// A Pingora proxy whose hooks are tenants' guest modules and filters.
pub(crate) struct WasmProxy {
    tenants: Arc<ArcSwap<TenantSet>>,
    metrics: Arc<Metrics>,
    /// Add X-Forwarded-For, -Proto and -Host to requests as they arrive.
    forwarded_headers: bool,
    /// Set once the process is to stop or hand over: connections close
    /// after their current response.
    draining: Draining,
}

/// Per-request state.
pub(crate) struct RequestCtx {
    /// The tenant this request was routed to; it keeps its module alive
    /// even if a reload replaces the tenant set meanwhile.
    tenant: Option<Arc<Tenant>>,
    /// The guest-visible ctx, kept as the JSON the guest returned.
    guest_ctx: GuestCtx,
    /// The downstream request's JSON, encoded once for every hook if a
    /// guest asks for it.
    request_json: OnceLock<String>,
    /// The tenant's budget refused a guest call: logged by us, at most
    /// once a second, not by Pingora for every request.
    refused: bool,
    /// When the request arrived, for `logging`'s duration.
    started: Instant,
    /// The tenant's proxy-wasm filters, each with its HTTP context.
    filters: FilterChain,
    /// The pool `upstream_peer` chose, its backend and those that failed
    /// to connect, for a retry.
    pool_route: Option<PoolRoute>,
}

impl WasmProxy {
    /// A proxy routing with the live tenant set; `forwarded_headers`
    /// adds the X-Forwarded-* headers to requests as they arrive; once
    /// `draining`, connections are not kept alive.
    pub(crate) fn new(
        tenants: Arc<ArcSwap<TenantSet>>,
        metrics: Arc<Metrics>,
        forwarded_headers: bool,
        draining: Draining,
    ) -> Self {
        WasmProxy {
            tenants,
            metrics,
            forwarded_headers,
            draining,
        }
    }

    /// What the request does after `call` failed: goes on (`Ok`) or ends
    /// with the error [`Self::stopped`] gives.
    async fn settle(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        call: &GuestCall<'_>,
        failure: CallFailure,
    ) -> Result<()> {
        match call.settle(failure) {
            Ok(()) => Ok(()),
            Err(stop) => Err(Self::stopped(session, ctx, tenant, stop).await),
        }
    }

    /// The error that ends a request at `stop`. A refusal by the budget is
    /// answered here, with why in the body and when to retry in
    /// `Retry-After` (Pingora's own error page then sees a response
    /// already sent), and logged at most once a second per tenant.
    async fn stopped(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        stop: Stop,
    ) -> Box<Error> {
        match stop {
            Stop::Failed(error) => error,
            Stop::Refused { throttle, call } => {
                ctx.refused = true;
                // Boxed: writing the refusal is a large future, and every
                // phase's future (allocated per request) would carry it.
                Box::pin(Self::refuse(session, tenant, call, throttle)).await
            }
        }
    }

    /// Answers a request the tenant's budget refused; returns the error
    /// that ends it.
    async fn refuse(
        session: &mut Session,
        tenant: &Tenant,
        call: CallName,
        throttle: Throttle,
    ) -> Box<Error> {
        let why = tenant.budget.limits().explain(throttle);
        let status = throttle.status();
        if tenant.budget.log_throttle_now() {
            log::warn!(
                "module {}: {call} not called, answered {status}: {why} \
                 (at most one such line per second; all are counted in \
                 wasm_proxy_tenant_throttled_total)",
                tenant.label
            );
        }
        let why = format!("tenant {}: {why}", tenant.name);
        let body = Bytes::from(format!("{why}\n"));
        let mut response = gen_error_response(status);
        let written = async {
            response.insert_header(
                http::header::RETRY_AFTER,
                tenant.budget.retry_after(throttle),
            )?;
            if is_grpc_request(session.req_header()) {
                session.set_keepalive(None);
                return write_grpc_status(session, Box::new(response), &why).await;
            }
            response.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
            response.set_content_length(body.len())?;
            session.write_error_response(response, body).await
        };
        match written.await {
            Ok(()) => Error::explain(HTTPStatus(status), why),
            Err(e) => e,
        }
    }

    /// The tenant's filters on the request headers (`proxy_on_request_headers`),
    /// in order. `Ok(true)` when a filter answered the request itself and
    /// its answer was sent.
    async fn filter_request(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<bool> {
        let connection = connection_facts(session);
        let verdict = ctx
            .filters
            .on_request_headers(tenant, session.req_header_mut(), &connection)
            .await;
        match verdict {
            Ok(ChainVerdict::Continue) => Ok(false),
            Ok(ChainVerdict::Answer(response, body)) => {
                write_answer(session, response, body).await?;
                Ok(true)
            }
            Err(stop) => Err(Self::stopped(session, ctx, tenant, stop).await),
        }
    }

    /// The filters' `proxy_on_response_headers` on `response`, last first.
    async fn filter_response(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        response: &mut ResponseHeader,
    ) -> Result<()> {
        let count = tenant.filters.len();
        match ctx
            .filters
            .on_response_headers(tenant, response, count)
            .await
        {
            Ok(()) => Ok(()),
            Err(stop) => Err(Self::stopped(session, ctx, tenant, stop).await),
        }
    }

    /// The guest's `request_filter`: `Ok(true)` when it answered the
    /// request itself (the answer has passed through `response_filter`
    /// and been sent).
    async fn guest_request_filter(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<bool> {
        let hook = Hook::RequestFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(false);
        };
        let call = GuestCall::hook(tenant, hook, Stage::Headers);
        let result = match call.admit() {
            Ok(permit) => {
                let client = session.client_addr().cloned();
                let result = v1::request_filter(
                    module,
                    session.req_header_mut(),
                    client.as_ref(),
                    &mut ctx.request_json,
                    &mut ctx.guest_ctx,
                    &permit,
                )
                .await;
                call.finish(result, permit)
            }
            Err(failure) => Err(failure),
        };
        match result {
            Ok(RequestVerdict::Continue) => Ok(false),
            Ok(RequestVerdict::Answer(response, body)) => {
                Box::pin(Self::answer(session, ctx, tenant, response, body)).await?;
                Ok(true)
            }
            Err(failure) => Self::settle(session, ctx, tenant, &call, failure)
                .await
                .map(|()| false),
        }
    }
    /// The module's `upstream_request_filter`, through the guest-call
    /// path.
    async fn guest_upstream_request_filter(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Arc<Tenant>,
        module: &V1Module,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        let call = GuestCall::hook(tenant, Hook::UpstreamRequestFilter, Stage::Headers);
        let result = match call.admit() {
            Ok(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::upstream_request_filter(
                    module,
                    &request,
                    upstream_request,
                    &mut ctx.guest_ctx,
                    &permit,
                )
                .await;
                call.finish(result, permit)
            }
            Err(failure) => Err(failure),
        };
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Self::settle(session, ctx, tenant, &call, failure).await,
        }
    }

    /// Sends the guest's own answer to a request. As Envoy does for local
    /// replies, it passes through the response hooks first.
    async fn answer(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        mut response: Box<ResponseHeader>,
        body: Bytes,
    ) -> Result<()> {
        Self::guest_response_filter(session, ctx, tenant, &mut response).await?;
        Self::filter_response(session, ctx, tenant, &mut response).await?;
        write_answer(session, response, body).await
    }

    /// The guest's `response_filter` on `response`, from the upstream or
    /// from the guest's own answer.
    async fn guest_response_filter(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        response: &mut ResponseHeader,
    ) -> Result<()> {
        let hook = Hook::ResponseFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(());
        };
        let call = GuestCall::hook(tenant, hook, Stage::Headers);
        let result = match call.admit() {
            Ok(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result =
                    v1::response_filter(module, &request, response, &mut ctx.guest_ctx, &permit)
                        .await;
                call.finish(result, permit)
            }
            Err(failure) => Err(failure),
        };
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Self::settle(session, ctx, tenant, &call, failure).await,
        }
    }

    /// The guest's `response_trailer_filter` on `trailers`.
    async fn guest_response_trailer_filter(
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        trailers: &mut http::HeaderMap,
    ) -> Result<()> {
        let hook = Hook::ResponseTrailerFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(());
        };
        let status = session
            .response_written()
            .map_or(200, |response| response.status.as_u16());
        let call = GuestCall::hook(tenant, hook, Stage::Headers);
        let result = match call.admit() {
            Ok(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::response_trailer_filter(
                    module,
                    &request,
                    status,
                    trailers,
                    &mut ctx.guest_ctx,
                    &permit,
                )
                .await;
                call.finish(result, permit)
            }
            Err(failure) => Err(failure),
        };
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Self::settle(session, ctx, tenant, &call, failure).await,
        }
    }

    /// `upstream_peer` failed: under fail-open the request goes to the
    /// tenant's fallback upstream; otherwise it fails.
    fn fall_back(
        &self,
        tenant: &Tenant,
        call: &GuestCall<'_>,
        failure: HookFailure,
    ) -> Result<Box<HttpPeer>> {
        match &tenant.fallback_upstream {
            Some(fallback) if call.fails_open(&failure) => {
                if call.worth_logging(&failure) {
                    log::warn!(
                        "module {}: {} failed: {failure}; fail-open to {}",
                        tenant.label,
                        Hook::UpstreamPeer,
                        fallback.address
                    );
                }
                Ok(Box::new(fallback.peer()))
            }
            _ => Err(call.failed(failure)),
        }
    }
}

/// The downstream request as the hooks show it, its JSON cached in
/// `json` for every hook of the request.
fn downstream_request<'a>(
    session: &'a Session,
    json: &'a OnceLock<String>,
) -> DownstreamRequest<'a> {
    DownstreamRequest::new(session.req_header(), session.client_addr(), json)
}

/// Sends an answer a guest gave instead of proxying; to a gRPC client, as
/// a gRPC status with the body as its message.
async fn write_answer(
    session: &mut Session,
    response: Box<ResponseHeader>,
    body: Bytes,
) -> Result<()> {
    if is_grpc_request(session.req_header()) {
        return write_grpc_status(session, response, &String::from_utf8_lossy(&body)).await;
    }
    if body.is_empty() {
        session.write_response_header(response, true).await
    } else {
        session.write_response_header(response, false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Sends `response`, which the proxy made itself, to a gRPC client as a
/// gRPC status: trailers-only, with `message` as its `grpc-message` unless
/// it carries one (HTTP/1 gets `Content-Length: 0`, as it has no
/// trailers-only form). Not once a response has begun: that one ends as
/// it can.
async fn write_grpc_status(
    session: &mut Session,
    mut response: Box<ResponseHeader>,
    message: &str,
) -> Result<()> {
    if session.response_written().is_some() {
        return Error::e_explain(InternalError, "a response was already under way");
    }
    grpc::trailers_only(&mut response, message);
    if !session.is_http2() {
        response.insert_header(http::header::CONTENT_LENGTH, 0)?;
    }
    // As a task that ends the stream: HTTP/2 sends the header with
    // END_STREAM, which makes it the trailers (`write_response_header`
    // would leave the stream open).
    session
        .write_response_tasks(vec![HttpTask::Header(response, true)])
        .await
        .map(|_| ())
}

/// The tenant a request was routed to in `request_filter`.
fn routed(ctx: &RequestCtx) -> Result<Arc<Tenant>> {
    ctx.tenant
        .clone()
        .ok_or_else(|| Error::explain(InternalError, "request reached a hook without a tenant"))
}

#[async_trait]
impl ProxyHttp for WasmProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            tenant: None,
            guest_ctx: GuestCtx::default(),
            request_json: OnceLock::new(),
            refused: false,
            started: Instant::now(),
            filters: FilterChain::default(),
            pool_route: None,
        }
    }

    /// Routing by Host (an HTTP/2 request's `:authority`): exact name,
    /// wildcard, default tenant; else 404. Then the X-Forwarded-* headers,
    /// the tenant's proxy-wasm filters (`proxy_on_request_headers`), in
    /// order, then its module's export `request_filter`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.draining.has_begun() {
            session.set_keepalive(None);
        }
        authority_as_host(session.req_header_mut());
        let req = session.req_header();
        let host = || {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.host())
        };
        let tenants = self.tenants.load();
        // A single module (or only a default tenant): no Host lookup.
        let routed = if tenants.routes_by_host() {
            tenants.route(host())
        } else {
            tenants.route(None)
        };
        if let Some(tenant) = routed {
            tenant.metrics.request();
            let tenant = tenant.clone();
            ctx.tenant = Some(tenant.clone());
            if self.forwarded_headers {
                add_forwarded_headers(session)?;
            }
            // The filter chain's future is large: boxed, so that a tenant
            // without filters does not allocate it for every request.
            if !tenant.filters.is_empty()
                && Box::pin(Self::filter_request(session, ctx, &tenant)).await?
            {
                return Ok(true);
            }
            return Self::guest_request_filter(session, ctx, &tenant).await;
        }
        let host = host();
        self.metrics.unrouted_request();
        let body = format!("no tenant serves host {:?}\n", host.unwrap_or_default());
        // Boxed: a rare path, kept out of every request's future.
        if is_grpc_request(session.req_header()) {
            let response = Box::new(gen_error_response(404));
            session.set_keepalive(None);
            Box::pin(write_grpc_status(session, response, &body)).await?;
        } else {
            Box::pin(session.respond_error_with_body(404, Bytes::from(body))).await?;
        }
        Ok(true)
    }

    /// Guest export `upstream_peer`: where the request goes (an address,
    /// or a pool's healthy backend); the tenant's static upstream if the
    /// module has no such export. On a retry after a failed connection to
    /// a pool's backend: the pool's next backend, without asking again.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(route) = &mut ctx.pool_route {
            return route.next_peer();
        }
        let tenant = routed(ctx)?;
        let hook = Hook::UpstreamPeer;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            // Checked at load: a tenant whose module does not route has a
            // static upstream.
            return match &tenant.upstream {
                Some(upstream) => Ok(Box::new(upstream.peer())),
                None => Err(Error::explain(InternalError, "tenant has no upstream")),
            };
        };
        let call = GuestCall::hook(&tenant, hook, Stage::Headers);
        let chosen = match call.admit() {
            Ok(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::upstream_peer(module, &request, &mut ctx.guest_ctx, &permit).await;
                // The call is over: its slot is free before any name lookup.
                call.finish(result, permit)
            }
            Err(failure) => Err(failure),
        };
        let fault = match chosen {
            Ok(PeerChoice::Address(address)) => match address.build(&tenant.scope.egress).await {
                Ok(Ok(peer)) => return Ok(peer),
                // Not the guest's fault (it is not counted, and never goes
                // to the fail-open fallback): the operator's rules say no.
                Ok(Err(refused)) => {
                    tenant.scope.refused(&refused.address, refused.why);
                    return Err(Error::explain(
                        HTTPStatus(502),
                        format!(
                            "tenant {}: egress to {} refused ({})",
                            tenant.name, refused.address, refused.why
                        ),
                    ));
                }
                Err(fault) => fault,
            },
            Ok(PeerChoice::Pool(pick)) => {
                let timeouts = PeerTimeouts {
                    connection: pick.connection_timeout,
                    read: pick.read_timeout,
                };
                match tenant.pools.route(&pick.name, pick.key, timeouts) {
                    // A pool without a healthy backend is not the guest's
                    // failure: 502, never the fail-open fallback.
                    Ok(route) => return ctx.pool_route.insert(route).next_peer(),
                    Err(error) => error.into(),
                }
            }
            Err(CallFailure::Hook(failure)) => return self.fall_back(&tenant, &call, failure),
            Err(CallFailure::Refused(throttle)) => {
                let call = CallName::Hook(hook);
                let refused = Stop::Refused { throttle, call };
                return Err(Self::stopped(session, ctx, &tenant, refused).await);
            }
        };
        call.fault_after(&fault);
        self.fall_back(&tenant, &call, HookFailure::Fault(fault))
    }

    /// Guest export `upstream_request_filter`: changes to the request sent
    /// upstream.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tenant = routed(ctx)?;
        let hook = Hook::UpstreamRequestFilter;
        if let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) {
            // Framing is the host's: what the guest does to it is undone.
            let framing = framing_of(&upstream_request.headers);
            Self::guest_upstream_request_filter(session, ctx, &tenant, module, upstream_request)
                .await?;
            keep_framing(&framing, upstream_request);
        }
        if has_body(session.req_header()) && ctx.filters.reads_bodies(Direction::Request) {
            if ctx.filters.request_reframed() {
                // A filter removed Content-Length to change the body's
                // length, as Envoy's filters do: frame it by chunks.
                upstream_request.remove_header(&http::header::CONTENT_LENGTH);
                upstream_request.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
            let length = declared_length(&upstream_request.headers);
            ctx.filters.expect_body(Direction::Request, length);
        }
        Ok(())
    }

    /// Guest export `response_filter`: changes to the response's status
    /// and headers; then the filters' `proxy_on_response_headers`, in
    /// reverse order (the response travels back through the chain).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tenant = routed(ctx)?;
        Self::guest_response_filter(session, ctx, &tenant, upstream_response).await?;
        if !ctx.filters.is_empty() {
            Box::pin(Self::filter_response(
                session,
                ctx,
                &tenant,
                upstream_response,
            ))
            .await?;
        }
        let head = session.req_header().method == http::Method::HEAD;
        if !ctx.filters.reads_bodies(Direction::Response) {
            return Ok(());
        }
        if head || !response_has_body(upstream_response) {
            // No body may follow (HEAD, 1xx, 204, 304, Content-Length: 0):
            // a filter that makes one fails the request.
            ctx.filters.expect_body(Direction::Response, Some(0));
        } else {
            let headers = &upstream_response.headers;
            let framed = headers.contains_key(http::header::CONTENT_LENGTH)
                || headers.contains_key(http::header::TRANSFER_ENCODING);
            if !framed {
                // A filter removed Content-Length to change the body's
                // length, as Envoy's filters do (or the upstream ends it
                // with the connection): frame it by chunks.
                upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
            let length = declared_length(&upstream_response.headers);
            ctx.filters.expect_body(Direction::Response, length);
        }
        Ok(())
    }

    /// The filters' `proxy_on_request_body`, in order, on each piece of the
    /// request body; a filter that pauses holds the body until its end.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !has_body(session.req_header()) {
            // Pingora ends a bodiless request with an empty piece: no
            // body callback for it.
            return Ok(());
        }
        let tenant = routed(ctx)?;
        ctx.filters
            .on_body(&tenant, Direction::Request, body, end_of_stream)
            .await
    }

    /// The filters' `proxy_on_response_body`, last first, on each piece of
    /// the response body. Pingora calls this synchronously, so a callback
    /// cannot yield: it runs to its end (bounded by its deadline, charged
    /// to its tenant's budget), and one still running after its first
    /// slice hands this worker's other requests to another thread.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if body.as_ref().is_none_or(Bytes::is_empty) && !end_of_stream {
            return Ok(None);
        }
        let tenant = routed(ctx)?;
        wasm_runtime::run_to_end(ctx.filters.on_body(
            &tenant,
            Direction::Response,
            body,
            end_of_stream,
        ))?;
        Ok(None)
    }

    /// The response's trailers (an HTTP/2 upstream's: a gRPC call's
    /// `grpc-status`, `grpc-message` and trailing metadata): guest export
    /// `response_trailer_filter`, then the filters'
    /// `proxy_on_response_trailers`, last first; each may change them.
    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        let tenant = routed(ctx)?;
        let exports = tenant
            .module
            .as_deref()
            .is_some_and(|m| m.exports(Hook::ResponseTrailerFilter));
        if !exports && ctx.filters.is_empty() {
            return Ok(None);
        }
        // Edited as a copy, which replaces them only if every hook went
        // through: Pingora sends the trailers it has even when this phase
        // fails, so a failure must not leave them half edited.
        let mut edited = upstream_trailers.clone();
        let mut result =
            Self::guest_response_trailer_filter(session, ctx, &tenant, &mut edited).await;
        if result.is_ok() && !ctx.filters.is_empty() {
            if let Err(stop) =
                Box::pin(ctx.filters.on_response_trailers(&tenant, &mut edited)).await
            {
                result = Err(Self::stopped(session, ctx, &tenant, stop).await);
            }
        }
        match result {
            Ok(()) => *upstream_trailers = edited,
            Err(e) => {
                // The response is under way and cannot be refused any more:
                // it ends failed. A gRPC client reads INTERNAL; any other
                // gets no trailers.
                upstream_trailers.clear();
                if is_grpc_request(session.req_header()) {
                    upstream_trailers.insert("grpc-status", grpc::INTERNAL.into());
                    upstream_trailers.insert(
                        "grpc-message",
                        http::HeaderValue::from_static("the proxy failed on the trailers"),
                    );
                }
                return Err(e);
            }
        }
        Ok(None)
    }

    /// No guest export: the address connected to is the filters'
    /// `upstream.address`.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(address) = pingora::upstreams::peer::Peer::address(peer).as_inet() {
            ctx.filters.connected_to(*address);
        }
        Ok(())
    }

    /// The filters' `proxy_on_done`, `proxy_on_log` and `proxy_on_delete`,
    /// then guest export `logging`, on every path a routed request ends
    /// by. A failure is logged and counted; nothing that was sent changes.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let hook = Hook::Logging;
        let Some(tenant) = ctx.tenant.clone() else {
            return;
        };
        if !ctx.filters.is_empty() {
            Box::pin(ctx.filters.end(&tenant, session.response_written())).await;
        }
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return;
        };
        // Over budget, the call is not made; the budget counts it, and no
        // line is logged, as the request itself has already been answered.
        let call = GuestCall::hook(&tenant, hook, Stage::End);
        let Ok(permit) = call.admit() else {
            return;
        };
        let request = downstream_request(session, &ctx.request_json);
        let outcome = RequestEnd {
            error: e,
            duration: ctx.started.elapsed(),
        };
        let result = v1::logging(
            module,
            &request,
            session.response_written(),
            outcome,
            &ctx.guest_ctx,
            &permit,
        )
        .await;
        if let Err(failure) = call.finish(result, permit) {
            // At the end a failure only gets its log line.
            let _ = call.settle(failure);
        }
    }

    /// A connection to a pool's backend failed: retried with another of
    /// the pool's healthy backends (each at most once), if one is left and
    /// the request can be sent again.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = &mut ctx.pool_route else {
            return e;
        };
        route.connect_failed();
        let resendable = !session.as_ref().retry_buffer_truncated();
        if resendable && route.can_retry() {
            e.set_retry(true);
            return e;
        }
        // The error line names the pool.
        let why = if resendable {
            "every backend failed to connect"
        } else {
            "a backend failed to connect and the request body cannot be sent again"
        };
        e.more_context(format!("{}: {why}", route.pool().describe()))
    }

    /// The error page of a request that failed, with Pingora's status for
    /// the error; for a gRPC client the same status as a gRPC status
    /// (trailers-only, HTTP 200), as Envoy answers (docs/ABI.md has the
    /// table).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0 {
            let written =
                if is_grpc_request(session.req_header()) && session.response_written().is_none() {
                    // What the HTML page says, no more: a status's reason,
                    // or the kind of failure ("ConnectRefused"); why in
                    // detail (a guest's message, a pool's name) is the log's.
                    let why = match e.etype() {
                        HTTPStatus(_) => http::StatusCode::from_u16(code)
                            .ok()
                            .and_then(|status| status.canonical_reason())
                            .unwrap_or_default(),
                        other => other.as_str(),
                    };
                    session.set_keepalive(None);
                    write_grpc_status(session, Box::new(gen_error_response(code)), why).await
                } else {
                    session.respond_error(code).await
                };
            if let Err(error) = written {
                log::error!("failed to send error response to downstream: {error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A budget's refusal is logged by [`Self::stopped`], at most once a
    /// second per tenant: a flood of refused requests must not flood the
    /// log.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.refused
    }
}

/// The status Pingora answers a failed request with: the error's own, 502
/// for an upstream's failure, 400 for a bad request, 500 for the rest, 0
/// when the client's connection is gone.
fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// What the filters' properties say of the client's connection: its
/// addresses, and for TLS its version and the name the client asked for
/// (which `edge::sni` keeps with the handshake).
fn connection_facts(session: &Session) -> ConnectionFacts {
    let tls = session
        .digest()
        .and_then(|digest| digest.ssl_digest.as_ref())
        .map(|ssl| TlsFacts {
            version: ssl.version.to_string(),
            server_name: ssl
                .extension
                .get::<RequestedServerName>()
                .map(|name| name.0.clone()),
        });
    ConnectionFacts {
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        server: session.server_addr().and_then(|a| a.as_inet()).copied(),
        tls,
    }
}
