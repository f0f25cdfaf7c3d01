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
//! Each guest call is first admitted by the tenant's budget (calls in
//! flight, guest time per second, circuit breaker), and yields its worker
//! while it runs long.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::proxy::{ProxyHttp, Session};

use crate::abi::proxy_wasm::{
    perform_call, BodyError, BodyOutcome, Direction, FilterStream, PendingCall, RequestOutcome,
};
use crate::abi::v1::{self, DownstreamRequest, GuestCtx, Outcome, PeerTarget, RequestVerdict};
use crate::abi::HookFailure;
use crate::budget::{CallPermit, Throttle};
use crate::drain::Draining;
use crate::forwarded::{add_forwarded_headers, authority_as_host};
use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::tenants::{GuestErrorPolicy, Tenant, TenantSet};
use crate::upstream_pools::{PeerTimeouts, PoolRoute};

/// A Pingora proxy whose hooks are tenants' guest modules and filters.
pub struct WasmProxy {
    tenants: Arc<ArcSwap<TenantSet>>,
    metrics: Arc<Metrics>,
    /// Add X-Forwarded-For, -Proto and -Host to requests as they arrive.
    forwarded_headers: bool,
    /// Set once the process is to stop or hand over: connections close
    /// after their current response.
    draining: Draining,
}

/// Per-request state.
pub struct RequestCtx {
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
    /// Each proxy-wasm filter's HTTP context, by the tenant's filter
    /// order; None where a filter was skipped or has faulted.
    filters: Vec<Option<FilterStream>>,
    /// The pool `upstream_peer` chose, its backend and those that failed
    /// to connect, for a retry.
    pool_route: Option<PoolRoute>,
}

impl WasmProxy {
    /// A proxy routing with the live tenant set; `forwarded_headers`
    /// adds the X-Forwarded-* headers to requests as they arrive; once
    /// `draining`, connections are not kept alive.
    pub fn new(
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

    /// Asks the tenant's budget for leave to call `hook`. `Ok(None)`: the
    /// breaker is open and the tenant fails open, so the hook is skipped
    /// as if it had faulted. A refusal is answered here, with why in the
    /// body and when to retry in `Retry-After` (Pingora's own error page
    /// then sees a response already sent), and logged at most once a
    /// second per tenant.
    async fn admit<'t>(
        session: &mut Session,
        tenant: &'t Tenant,
        hook: &str,
        refused: &mut bool,
    ) -> Result<Option<CallPermit<'t>>> {
        match tenant.budget.admit() {
            Ok(permit) => Ok(Some(permit)),
            Err(Throttle::BreakerOpen) if tenant.on_guest_error == GuestErrorPolicy::FailOpen => {
                Ok(None)
            }
            // Boxed: writing the refusal is a large future, and every
            // phase's future (allocated per request) would carry it.
            Err(throttle) => Err(Box::pin(Self::refuse(session, tenant, hook, throttle)).await),
        }
        .inspect_err(|_| *refused = true)
    }

    /// Answers a request the tenant's budget refused; returns the error
    /// that ends it.
    async fn refuse(
        session: &mut Session,
        tenant: &Tenant,
        hook: &str,
        throttle: Throttle,
    ) -> Box<Error> {
        let why = throttle.explain(tenant.budget.limits());
        let status = throttle.status();
        if tenant.budget.log_throttle_now() {
            log::warn!(
                "module {}: {hook} not called, answered {status}: {why} \
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
            response.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
            response.set_content_length(body.len())?;
            session.write_error_response(response, body).await
        };
        match written.await {
            Ok(()) => Error::explain(HTTPStatus(status), why),
            Err(e) => e,
        }
    }

    /// The tenant's filters on the request headers, in order: each gets
    /// an HTTP context (an instance of its own until the request ends).
    /// `Ok(true)` when a filter answered the request itself; its answer
    /// has passed back through the response callbacks of the filters
    /// before it and been sent.
    async fn filter_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<bool> {
        const CALLBACK: &str = "proxy_on_request_headers";
        ctx.filters = (0..tenant.filters.len()).map(|_| None).collect();
        for (index, filter) in tenant.filters.iter().enumerate() {
            let Some(permit) = Self::admit(session, tenant, CALLBACK, &mut ctx.refused).await?
            else {
                self.filter_failed(tenant, index, CALLBACK, HookFailure::Skipped)?;
                continue;
            };
            let client = session.client_addr().and_then(|a| a.as_inet()).copied();
            let server = session.server_addr().and_then(|a| a.as_inet()).copied();
            let end_of_stream = !has_body(session.req_header());
            let module = &filter.module;
            let result = match module
                .begin(session.req_header(), (client, server), &permit)
                .await
            {
                Ok(mut stream) => {
                    let request = session.req_header_mut();
                    let result = module
                        .on_request_headers(&mut stream, request, end_of_stream, &permit)
                        .await;
                    ctx.filters[index] = Some(stream).filter(FilterStream::active);
                    result
                }
                Err(fault) => Err(fault),
            };
            let result = result.map_err(HookFailure::Fault);
            Self::finish_callback(tenant, CALLBACK, permit, &result);
            let (outcome, callback) = match result {
                Ok(RequestOutcome::Calls(calls)) => (
                    self.filter_calls(session, ctx, tenant, index, calls).await,
                    "proxy_on_http_call_response",
                ),
                other => (other, CALLBACK),
            };
            match outcome {
                Ok(RequestOutcome::Continue | RequestOutcome::Calls(_)) => {}
                Ok(RequestOutcome::Answer(mut response, body)) => {
                    log::info!(
                        "filter {}: answered the request with {}",
                        module.name(),
                        response.status.as_u16()
                    );
                    self.filter_response(session, ctx, tenant, &mut response, index + 1)
                        .await?;
                    write_answer(session, response, body).await?;
                    return Ok(true);
                }
                Err(failure) => {
                    ctx.filters[index] = None;
                    self.filter_failed(tenant, index, callback, failure)?;
                }
            }
        }
        Ok(false)
    }

    /// Makes the HTTP calls filter `index` paused the request for, one
    /// after another, each from this request's task with no guest slot
    /// held while it waits, and delivers each response; until the filter
    /// answers, goes on, or faults.
    async fn filter_calls(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        index: usize,
        mut calls: Vec<PendingCall>,
    ) -> Result<RequestOutcome, HookFailure> {
        const CALLBACK: &str = "proxy_on_http_call_response";
        let module = &tenant.filters[index].module;
        while !calls.is_empty() {
            let call = calls.remove(0);
            let response = perform_call(&call).await;
            if response.is_none() {
                log::info!(
                    "filter {}: HTTP call to {} failed or timed out",
                    module.name(),
                    call.address
                );
            }
            let Ok(permit) = tenant.budget.admit() else {
                return Err(HookFailure::Skipped);
            };
            let Some(stream) = ctx.filters[index].as_mut() else {
                return Ok(RequestOutcome::Continue);
            };
            let request = session.req_header_mut();
            let result = module
                .on_http_call_response(stream, call.token, response, request, &permit)
                .await
                .map_err(HookFailure::Fault);
            Self::finish_callback(tenant, CALLBACK, permit, &result);
            match result? {
                RequestOutcome::Calls(more) => calls.extend(more),
                outcome if calls.is_empty() => return Ok(outcome),
                RequestOutcome::Continue => {}
                answer @ RequestOutcome::Answer(..) => return Ok(answer),
            }
        }
        Ok(RequestOutcome::Continue)
    }

    /// The response callbacks of the first `count` filters, last first.
    async fn filter_response(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        response: &mut ResponseHeader,
        count: usize,
    ) -> Result<()> {
        const CALLBACK: &str = "proxy_on_response_headers";
        for index in (0..count.min(ctx.filters.len())).rev() {
            if ctx.filters[index].is_none() {
                continue;
            }
            let Some(permit) = Self::admit(session, tenant, CALLBACK, &mut ctx.refused).await?
            else {
                ctx.filters[index] = None;
                self.filter_failed(tenant, index, CALLBACK, HookFailure::Skipped)?;
                continue;
            };
            let Some(stream) = ctx.filters[index].as_mut() else {
                continue;
            };
            let module = &tenant.filters[index].module;
            let end_of_stream = !response_has_body(response);
            let result = module
                .on_response_headers(stream, response, end_of_stream, &permit)
                .await
                .map_err(HookFailure::Fault);
            Self::finish_callback(tenant, CALLBACK, permit, &result);
            if let Err(failure) = result {
                ctx.filters[index] = None;
                self.filter_failed(tenant, index, CALLBACK, failure)?;
            }
        }
        Ok(())
    }

    /// Ends every filter's HTTP context, returning healthy instances.
    async fn end_filters(&self, session: &Session, ctx: &mut RequestCtx, tenant: &Tenant) {
        const CALLBACK: &str = "proxy_on_log";
        for (index, stream) in std::mem::take(&mut ctx.filters).into_iter().enumerate() {
            let Some(stream) = stream else {
                continue;
            };
            // Over budget, the context is dropped with its instance.
            let Ok(permit) = tenant.budget.admit() else {
                continue;
            };
            let module = &tenant.filters[index].module;
            let result = module
                .end(stream, session.response_written(), &permit)
                .await
                .map_err(HookFailure::Fault);
            Self::finish_callback(tenant, CALLBACK, permit, &result);
            if let Err(failure) = result {
                log::error!("filter {}: {CALLBACK} failed: {failure}", module.name());
            }
        }
    }

    /// Runs a piece of a body through the live filters that read
    /// `direction`'s bodies: in filter order for the request, last first
    /// for the response. What the last one releases replaces the piece; a
    /// filter that buffers stops it (nothing goes on yet). Past the buffer
    /// cap a request gets 413; a response fails (500, or cut if its
    /// headers have left).
    async fn filter_body(
        &self,
        ctx: &mut RequestCtx,
        direction: Direction,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let callback = match direction {
            Direction::Request => "proxy_on_request_body",
            Direction::Response => "proxy_on_response_body",
        };
        let tenant = routed(ctx)?;
        if !reads_bodies(&tenant, ctx, direction) {
            return Ok(());
        }
        let mut chunk = body.take().map(|b| b.to_vec()).unwrap_or_default();
        let mut order: Vec<usize> = (0..ctx.filters.len()).collect();
        if direction == Direction::Response {
            order.reverse();
        }
        for index in order {
            let module = &tenant.filters[index].module;
            let Some(stream) = ctx.filters[index].as_mut() else {
                continue;
            };
            if !module.reads_body(direction) {
                continue;
            }
            let permit = tenant.budget.admit().map_err(|throttle| match direction {
                Direction::Request => Error::explain(
                    HTTPStatus(throttle.status()),
                    "tenant over its guest budget",
                ),
                Direction::Response => {
                    Error::explain(InternalError, "tenant over its guest budget mid-response")
                }
            })?;
            let result = module
                .on_body(stream, direction, &chunk, end_of_stream, &permit)
                .await;
            permit.finish(matches!(result, Err(BodyError::Fault(_))));
            match result {
                Ok(BodyOutcome::Release(released)) => chunk = released,
                Ok(BodyOutcome::Buffer) => return Ok(()),
                Err(BodyError::TooLarge) => {
                    let status = match direction {
                        Direction::Request => 413,
                        Direction::Response => 500,
                    };
                    return Error::e_explain(
                        HTTPStatus(status),
                        format!("filter {}: body over the buffer cap", module.name()),
                    );
                }
                Err(BodyError::Fault(fault)) => {
                    ctx.filters[index] = None;
                    tenant.metrics.callback_fault(callback, &fault);
                    self.filter_failed(&tenant, index, callback, HookFailure::Fault(fault))?;
                }
            }
        }
        if !chunk.is_empty() {
            *body = Some(Bytes::from(chunk));
        }
        Ok(())
    }

    /// Ends an admitted filter callback: counts a fault and frees its slot.
    fn finish_callback<T>(
        tenant: &Tenant,
        callback: &str,
        permit: CallPermit<'_>,
        result: &Result<T, HookFailure>,
    ) {
        let fault = match result {
            Err(HookFailure::Fault(fault)) => Some(fault),
            _ => None,
        };
        if let Some(fault) = fault {
            tenant.metrics.callback_fault(callback, fault);
        }
        permit.finish(fault.is_some());
    }

    /// A filter failed (or was skipped): under its `fail_open` the request
    /// goes on without it; otherwise it fails with 500.
    fn filter_failed(
        &self,
        tenant: &Tenant,
        index: usize,
        callback: &str,
        failure: HookFailure,
    ) -> Result<()> {
        let filter = &tenant.filters[index];
        let name = filter.module.name();
        let goes_on = filter.on_error == GuestErrorPolicy::FailOpen
            && matches!(failure, HookFailure::Fault(_) | HookFailure::Skipped);
        if goes_on {
            if Self::worth_logging(tenant, &failure) {
                log::warn!(
                    "filter {name}: {callback} failed: {failure}; fail-open, filter skipped"
                );
            }
            return Ok(());
        }
        log::error!("filter {name}: {callback} failed: {failure}");
        Err(Error::explain(
            InternalError,
            format!("filter {name}: {callback}: {failure}"),
        ))
    }

    /// The guest's `request_filter`: `Ok(true)` when it answered the
    /// request itself (the answer has passed through `response_filter`
    /// and been sent).
    async fn guest_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<bool> {
        let hook = Hook::RequestFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(false);
        };
        let result = match Self::admit(session, tenant, hook.export(), &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let call = v1::request_filter(module, &request, &mut ctx.guest_ctx, &permit);
                let result = call.await;
                Self::finish(tenant, hook, permit, &result);
                result
            }
            None => Err(HookFailure::Skipped),
        };
        match result {
            Ok(RequestVerdict::Continue(None)) => Ok(false),
            Ok(RequestVerdict::Continue(Some(changes))) => {
                match v1::apply_request_changes(session.req_header_mut(), changes) {
                    Ok(()) => {
                        // Later hooks see the request as changed.
                        ctx.request_json = OnceLock::new();
                        Ok(false)
                    }
                    Err(fault) => {
                        tenant.metrics.fault(hook, &fault);
                        self.skip_or_fail(tenant, hook, HookFailure::Fault(fault))
                            .map(|()| false)
                    }
                }
            }
            Ok(RequestVerdict::Answer(response, body)) => {
                Box::pin(self.answer(session, ctx, tenant, response, body)).await?;
                Ok(true)
            }
            Err(failure) => self.skip_or_fail(tenant, hook, failure).map(|()| false),
        }
    }

    /// Sends the guest's own answer to a request. As Envoy does for local
    /// replies, it passes through the response hooks first.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        mut response: Box<ResponseHeader>,
        body: Bytes,
    ) -> Result<()> {
        self.guest_response_filter(session, ctx, tenant, &mut response)
            .await?;
        self.filter_response(session, ctx, tenant, &mut response, tenant.filters.len())
            .await?;
        write_answer(session, response, body).await
    }

    /// The guest's `response_filter` on `response`, from the upstream or
    /// from the guest's own answer.
    async fn guest_response_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
        response: &mut ResponseHeader,
    ) -> Result<()> {
        let hook = Hook::ResponseFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(());
        };
        let result = match Self::admit(session, tenant, hook.export(), &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result =
                    v1::response_filter(module, &request, response, &mut ctx.guest_ctx, &permit)
                        .await;
                Self::finish(tenant, hook, permit, &result);
                result
            }
            None => Err(HookFailure::Skipped),
        };
        match result {
            Ok(()) => Ok(()),
            Err(failure) => self.skip_or_fail(tenant, hook, failure),
        }
    }

    /// Ends an admitted call: counts it (its guest running time, its
    /// fault) and frees its slot, telling the breaker whether it faulted.
    fn finish<T>(
        tenant: &Tenant,
        hook: Hook,
        permit: CallPermit<'_>,
        result: &Result<T, HookFailure>,
    ) {
        let fault = match result {
            Err(HookFailure::Fault(fault)) => Some(fault),
            _ => None,
        };
        tenant.metrics.hook_call(hook, permit.running(), fault);
        permit.finish(fault.is_some());
    }

    /// Whether a fail-open failure gets its log line: every fault does; a
    /// call skipped because the breaker is open does at most once a
    /// second per tenant (the breaker's own lines say when it opened).
    fn worth_logging(tenant: &Tenant, failure: &HookFailure) -> bool {
        !matches!(failure, HookFailure::Skipped) || tenant.budget.log_throttle_now()
    }

    /// Whether the tenant's policy lets the request go on past `failure`
    /// (a fault, or a call skipped while the breaker is open, under
    /// fail-open); refusals and host errors never do.
    fn goes_on(tenant: &Tenant, failure: &HookFailure) -> bool {
        tenant.on_guest_error == GuestErrorPolicy::FailOpen
            && matches!(failure, HookFailure::Fault(_) | HookFailure::Skipped)
    }

    /// Handles a failed hook that changes something: under fail-open the
    /// request goes on unchanged (`Ok`), otherwise it fails with the
    /// failure's status.
    fn skip_or_fail(&self, tenant: &Tenant, hook: Hook, failure: HookFailure) -> Result<()> {
        if !Self::goes_on(tenant, &failure) {
            return Err(self.failed(tenant, hook, failure));
        }
        if Self::worth_logging(tenant, &failure) {
            log::warn!(
                "module {}: {hook} failed: {failure}; fail-open, {hook} skipped",
                tenant.label
            );
        }
        Ok(())
    }

    /// Logs a failed hook with module, hook and reason, and turns it into
    /// the error whose type gives the client's status.
    fn failed(&self, tenant: &Tenant, hook: Hook, failure: HookFailure) -> Box<Error> {
        let module = &tenant.label;
        match failure {
            HookFailure::Fault(fault) => {
                log::error!("module {module}: {hook} failed: {fault}");
                Error::explain(InternalError, format!("module {module}: {hook}: {fault}"))
            }
            HookFailure::Refused(refusal) if (400..=599).contains(&refusal.status) => {
                log::info!(
                    "module {module}: {hook} refused the request with {}: {}",
                    refusal.status,
                    refusal.message
                );
                Error::explain(HTTPStatus(refusal.status), refusal.message)
            }
            HookFailure::Skipped => Error::explain(InternalError, "guest call skipped"),
            HookFailure::Host(error) => {
                log::error!("module {module}: {hook}: host error: {error}");
                Error::explain(InternalError, format!("module {module}: {hook}: {error}"))
            }
            HookFailure::Refused(refusal) => {
                log::error!(
                    "module {module}: {hook} failed: refusal status {} is not 400-599 ({})",
                    refusal.status,
                    refusal.message
                );
                Error::explain(InternalError, "guest refusal with a non-error status")
            }
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

/// Whether the request has a body to follow its headers.
fn has_body(request: &RequestHeader) -> bool {
    let headers = &request.headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// Whether one of the request's live filters reads `direction`'s bodies.
fn reads_bodies(tenant: &Tenant, ctx: &RequestCtx, direction: Direction) -> bool {
    ctx.filters.iter().enumerate().any(|(index, stream)| {
        stream.is_some() && tenant.filters[index].module.reads_body(direction)
    })
}

/// Whether a body follows the response's header.
fn response_has_body(response: &ResponseHeader) -> bool {
    let status = response.status.as_u16();
    if status == 204 || status == 304 || status < 200 {
        return false;
    }
    response
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_none_or(|length| length > 0)
}

/// Sends an answer a guest gave instead of proxying.
async fn write_answer(
    session: &mut Session,
    response: Box<ResponseHeader>,
    body: Bytes,
) -> Result<()> {
    if body.is_empty() {
        session.write_response_header(response, true).await
    } else {
        session.write_response_header(response, false).await?;
        session.write_response_body(Some(body), true).await
    }
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
            filters: Vec::new(),
            pool_route: None,
        }
    }

    /// Routing by Host (an HTTP/2 request's `:authority`): exact name,
    /// wildcard, default tenant; else 404. Then the X-Forwarded-* headers,
    /// the tenant's proxy-wasm filters (`proxy_on_request_headers`), in
    /// order, then its module's export `request_filter`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.draining.now() {
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
                && Box::pin(self.filter_request(session, ctx, &tenant)).await?
            {
                return Ok(true);
            }
            return self.guest_request_filter(session, ctx, &tenant).await;
        }
        let host = host();
        self.metrics.unrouted_request();
        let body = format!("no tenant serves host {:?}\n", host.unwrap_or_default());
        // Boxed: a rare path, kept out of every request's future.
        Box::pin(session.respond_error_with_body(404, Bytes::from(body))).await?;
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
        let chosen = match Self::admit(session, &tenant, hook.export(), &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let call = v1::call_upstream_peer(module, &request, &mut ctx.guest_ctx, &permit);
                let result = call.await.and_then(|peer| {
                    let target = v1::peer_target(&peer)?;
                    Ok((peer, target))
                });
                // The call is over: its slot is free before any name lookup.
                Self::finish(&tenant, hook, permit, &result);
                result
            }
            None => Err(HookFailure::Skipped),
        };
        let peer = match chosen {
            Ok((peer, target)) => {
                let resolved = match target {
                    PeerTarget::Address(address) => v1::build_peer(address, &peer).await,
                    PeerTarget::Pool => {
                        let timeouts = PeerTimeouts {
                            connection: peer
                                .options
                                .connection_timeout_ms
                                .map(Duration::from_millis),
                            read: peer.options.read_timeout_ms.map(Duration::from_millis),
                        };
                        let name = peer.pool.as_deref().unwrap_or_default();
                        match tenant.pools.route(name, peer.key, timeouts) {
                            // A pool without a healthy backend is not the
                            // guest's failure: 502, never the fail-open
                            // fallback.
                            Ok(route) => return ctx.pool_route.insert(route).next_peer(),
                            Err(fault) => Err(fault),
                        }
                    }
                };
                resolved.map_err(|fault| {
                    tenant.metrics.fault(hook, &fault);
                    HookFailure::Fault(fault)
                })
            }
            Err(failure) => Err(failure),
        };
        match (peer, tenant.fallback_upstream) {
            (Ok(peer), _) => Ok(peer),
            (Err(failure), Some(fallback)) if Self::goes_on(&tenant, &failure) => {
                if Self::worth_logging(&tenant, &failure) {
                    log::warn!(
                        "module {}: {hook} failed: {failure}; fail-open to {fallback}",
                        tenant.label
                    );
                }
                Ok(Box::new(HttpPeer::new(fallback, false, String::new())))
            }
            (Err(failure), _) => Err(self.failed(&tenant, hook, failure)),
        }
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
        if has_body(session.req_header()) && reads_bodies(&tenant, ctx, Direction::Request) {
            // A filter may change the body's length: frame it by chunks.
            upstream_request.remove_header(&http::header::CONTENT_LENGTH);
            upstream_request.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        let hook = Hook::UpstreamRequestFilter;
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return Ok(());
        };
        let result = match Self::admit(session, &tenant, hook.export(), &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::filter_upstream_request(
                    module,
                    &request,
                    upstream_request,
                    &mut ctx.guest_ctx,
                    &permit,
                )
                .await;
                Self::finish(&tenant, hook, permit, &result);
                result
            }
            None => Err(HookFailure::Skipped),
        };
        match result {
            Ok(()) => Ok(()),
            Err(failure) => self.skip_or_fail(&tenant, hook, failure),
        }
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
        self.guest_response_filter(session, ctx, &tenant, upstream_response)
            .await?;
        if !ctx.filters.is_empty() {
            let filters = tenant.filters.len();
            Box::pin(self.filter_response(session, ctx, &tenant, upstream_response, filters))
                .await?;
        }
        if response_has_body(upstream_response) && reads_bodies(&tenant, ctx, Direction::Response) {
            // A filter may change the body's length: frame it by chunks.
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
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
        self.filter_body(ctx, Direction::Request, body, end_of_stream)
            .await
    }

    /// The filters' `proxy_on_response_body`, last first, on each piece of
    /// the response body. Pingora calls this synchronously: each callback
    /// runs to its end on this worker (bounded by its deadline) instead of
    /// yielding.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if body.as_ref().is_none_or(Bytes::is_empty) && !end_of_stream {
            return Ok(None);
        }
        crate::runtime::block_on(self.filter_body(ctx, Direction::Response, body, end_of_stream))?;
        Ok(None)
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
            Box::pin(self.end_filters(session, ctx, &tenant)).await;
        }
        let Some(module) = tenant.module.as_deref().filter(|m| m.exports(hook)) else {
            return;
        };
        // Over budget, the call is not made; the budget counts it, and no
        // line is logged, as the request itself has already been answered.
        let Ok(permit) = tenant.budget.admit() else {
            return;
        };
        let request = downstream_request(session, &ctx.request_json);
        let outcome = Outcome {
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
        Self::finish(&tenant, hook, permit, &result);
        if let Err(failure) = result {
            if Self::worth_logging(&tenant, &failure) {
                log::error!("module {}: {hook} failed: {failure}", tenant.label);
            }
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

    /// A budget's refusal is logged by [`Self::admit`], at most once a
    /// second per tenant: a flood of refused requests must not flood the
    /// log.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.refused
    }
}
