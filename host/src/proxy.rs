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
//! Each guest call is first admitted by the tenant's budget (calls in
//! flight, guest time per second, circuit breaker), and yields its worker
//! while it runs long.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::proxy::{ProxyHttp, Session};

use crate::abi::v1::{self, DownstreamRequest, GuestCtx, Outcome, RequestVerdict};
use crate::abi::HookFailure;
use crate::budget::{CallPermit, Throttle};
use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::tenants::{GuestErrorPolicy, Tenant, TenantSet};

/// A Pingora proxy whose routing is decided by tenants' guest modules.
pub struct WasmProxy {
    tenants: Arc<ArcSwap<TenantSet>>,
    metrics: Arc<Metrics>,
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
}

impl WasmProxy {
    /// A proxy routing with the live tenant set.
    pub fn new(tenants: Arc<ArcSwap<TenantSet>>, metrics: Arc<Metrics>) -> Self {
        WasmProxy { tenants, metrics }
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
        hook: Hook,
        refused: &mut bool,
    ) -> Result<Option<CallPermit<'t>>> {
        let throttle = match tenant.budget.admit() {
            Ok(permit) => return Ok(Some(permit)),
            Err(Throttle::BreakerOpen) if tenant.on_guest_error == GuestErrorPolicy::FailOpen => {
                return Ok(None)
            }
            Err(throttle) => throttle,
        };
        *refused = true;
        let why = throttle.explain(tenant.budget.limits());
        let status = throttle.status();
        if tenant.budget.log_throttle_now() {
            log::warn!(
                "module {}: {hook} not called, answered {status}: {why} \
                 (at most one such line per second; all are counted in \
                 wasm_proxy_tenant_throttled_total)",
                tenant.module.name()
            );
        }
        let why = format!("tenant {}: {why}", tenant.name);
        let body = Bytes::from(format!("{why}\n"));
        let mut response = gen_error_response(status);
        response.insert_header(
            http::header::RETRY_AFTER,
            tenant.budget.retry_after(throttle),
        )?;
        response.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
        response.set_content_length(body.len())?;
        session.write_error_response(response, body).await?;
        Err(Error::explain(HTTPStatus(status), why))
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
        if !tenant.module.exports(hook) {
            return Ok(false);
        }
        let result = match Self::admit(session, tenant, hook, &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let call =
                    v1::request_filter(&tenant.module, &request, &mut ctx.guest_ctx, &permit);
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
            Ok(RequestVerdict::Answer(mut response, body)) => {
                // As Envoy does for local replies: the answer passes
                // through the response hook too.
                self.guest_response_filter(session, ctx, tenant, &mut response)
                    .await?;
                if body.is_empty() {
                    session.write_response_header(response, true).await?;
                } else {
                    session.write_response_header(response, false).await?;
                    session.write_response_body(Some(body), true).await?;
                }
                Ok(true)
            }
            Err(failure) => self.skip_or_fail(tenant, hook, failure).map(|()| false),
        }
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
        if !tenant.module.exports(hook) {
            return Ok(());
        }
        let result = match Self::admit(session, tenant, hook, &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::response_filter(
                    &tenant.module,
                    &request,
                    response,
                    &mut ctx.guest_ctx,
                    &permit,
                )
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
                tenant.module.name()
            );
        }
        Ok(())
    }

    /// Logs a failed hook with module, hook and reason, and turns it into
    /// the error whose type gives the client's status.
    fn failed(&self, tenant: &Tenant, hook: Hook, failure: HookFailure) -> Box<Error> {
        let module = tenant.module.name();
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
        }
    }

    /// Routing by Host: exact name, wildcard, default tenant; else 404.
    /// Then the tenant's guest export `request_filter`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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
            return self.guest_request_filter(session, ctx, &tenant).await;
        }
        let host = host();
        self.metrics.unrouted_request();
        let body = format!("no tenant serves host {:?}\n", host.unwrap_or_default());
        session
            .respond_error_with_body(404, Bytes::from(body))
            .await?;
        Ok(true)
    }

    /// Guest export `upstream_peer`: where the request goes; the tenant's
    /// static upstream if the module has no such export.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let tenant = routed(ctx)?;
        let hook = Hook::UpstreamPeer;
        if !tenant.module.exports(hook) {
            // Checked at load: a module without upstream_peer has one.
            if let Some(upstream) = &tenant.upstream {
                return Ok(Box::new(upstream.peer()));
            }
        }
        let chosen = match Self::admit(session, &tenant, hook, &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let call =
                    v1::call_upstream_peer(&tenant.module, &request, &mut ctx.guest_ctx, &permit);
                let result = call.await.and_then(|peer| {
                    let address = v1::peer_address(&peer.address)?;
                    Ok((peer, address))
                });
                // The call is over: its slot is free before any name lookup.
                Self::finish(&tenant, hook, permit, &result);
                result
            }
            None => Err(HookFailure::Skipped),
        };
        let peer = match chosen {
            Ok((peer, address)) => v1::build_peer(address, &peer).await.map_err(|fault| {
                tenant.metrics.fault(hook, &fault);
                HookFailure::Fault(fault)
            }),
            Err(failure) => Err(failure),
        };
        match (peer, tenant.fallback_upstream) {
            (Ok(peer), _) => Ok(peer),
            (Err(failure), Some(fallback)) if Self::goes_on(&tenant, &failure) => {
                if Self::worth_logging(&tenant, &failure) {
                    log::warn!(
                        "module {}: {hook} failed: {failure}; fail-open to {fallback}",
                        tenant.module.name()
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
        let hook = Hook::UpstreamRequestFilter;
        if !tenant.module.exports(hook) {
            return Ok(());
        }
        let result = match Self::admit(session, &tenant, hook, &mut ctx.refused).await? {
            Some(permit) => {
                let request = downstream_request(session, &ctx.request_json);
                let result = v1::filter_upstream_request(
                    &tenant.module,
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
    /// and headers.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tenant = routed(ctx)?;
        self.guest_response_filter(session, ctx, &tenant, upstream_response)
            .await
    }

    /// Guest export `logging`, on every path a routed request ends by. A
    /// failure is logged and counted; nothing that was sent changes.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let hook = Hook::Logging;
        let Some(tenant) = ctx.tenant.clone() else {
            return;
        };
        if !tenant.module.exports(hook) {
            return;
        }
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
            &tenant.module,
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
                log::error!("module {}: {hook} failed: {failure}", tenant.module.name());
            }
        }
    }

    /// A budget's refusal is logged by [`Self::admit`], at most once a
    /// second per tenant: a flood of refused requests must not flood the
    /// log.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.refused
    }
}
