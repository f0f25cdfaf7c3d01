//! The `ProxyHttp` implementation. Pingora calls it for every request:
//! `request_filter` picks the tenant by Host, and the two routing hooks are
//! delegated to that tenant's guest module, to the exports of the same
//! names, with the per-request ctx carried as JSON between them. Each
//! guest call is first admitted by the tenant's budget (calls in flight,
//! guest time per second, circuit breaker), and yields its worker while it
//! runs long.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::proxy::{ProxyHttp, Session};

use crate::abi::{self, DownstreamRequest, GuestCtx, HookFailure};
use crate::budget::{CallPermit, Throttle};
use crate::metrics::Metrics;
use crate::runtime::Hook;
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
    /// The downstream request's JSON, encoded once for both hooks if a
    /// guest asks for it.
    request_json: OnceLock<String>,
    /// The tenant's budget refused a guest call: logged by us, at most
    /// once a second, not by Pingora for every request.
    refused: bool,
}

impl WasmProxy {
    /// A proxy routing with the live tenant set.
    pub fn new(tenants: Arc<ArcSwap<TenantSet>>, metrics: Arc<Metrics>) -> Self {
        WasmProxy { tenants, metrics }
    }

    /// Counts a finished hook call, which ran for `running` (guest time,
    /// as charged to the budget).
    fn observe<T>(tenant: &Tenant, hook: Hook, running: Duration, result: &Result<T, HookFailure>) {
        let fault = match result {
            Err(HookFailure::Fault(fault)) => Some(fault),
            _ => None,
        };
        tenant.metrics.hook_call(hook, running, fault);
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

    /// Whether a fail-open failure gets its log line: every fault does; a
    /// call skipped because the breaker is open does at most once a
    /// second per tenant (the breaker's own lines say when it opened).
    fn worth_logging(tenant: &Tenant, failure: &HookFailure) -> bool {
        !matches!(failure, HookFailure::Skipped) || tenant.budget.log_throttle_now()
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

/// The downstream request as the hooks show it, its JSON cached in `ctx`.
fn downstream_request<'a>(session: &'a Session, ctx: &'a RequestCtx) -> DownstreamRequest<'a> {
    DownstreamRequest::new(
        session.req_header(),
        session.client_addr(),
        &ctx.request_json,
    )
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
        }
    }

    /// Routing by Host: exact name, wildcard, default tenant; else 404.
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
            ctx.tenant = Some(tenant.clone());
            return Ok(false);
        }
        let host = host();
        self.metrics.unrouted_request();
        let body = format!("no tenant serves host {:?}\n", host.unwrap_or_default());
        session
            .respond_error_with_body(404, Bytes::from(body))
            .await?;
        Ok(true)
    }

    /// Guest export `upstream_peer`: `{request, ctx}` -> `{peer, ctx}`.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let tenant = routed(ctx)?;
        let peer = match Self::admit(session, &tenant, Hook::UpstreamPeer, &mut ctx.refused).await?
        {
            Some(permit) => {
                let request = downstream_request(session, ctx);
                let result =
                    abi::call_upstream_peer(&tenant.module, &request, &ctx.guest_ctx, &permit)
                        .await;
                Self::observe(&tenant, Hook::UpstreamPeer, permit.running(), &result);
                let peer_fault = |fault| {
                    tenant.metrics.fault(Hook::UpstreamPeer, &fault);
                    HookFailure::Fault(fault)
                };
                let checked = match result {
                    Ok((peer, update)) => {
                        ctx.guest_ctx.apply(update);
                        abi::peer_address(&peer.address)
                            .map(|address| (peer, address))
                            .map_err(peer_fault)
                    }
                    Err(failure) => Err(failure),
                };
                // The call is over: its slot is free before any name lookup.
                permit.finish(matches!(checked, Err(HookFailure::Fault(_))));
                match checked {
                    Ok((peer, address)) => {
                        abi::build_peer(address, &peer).await.map_err(peer_fault)
                    }
                    Err(failure) => Err(failure),
                }
            }
            None => Err(HookFailure::Skipped),
        };
        match (peer, tenant.on_guest_error, tenant.fallback_upstream) {
            (Ok(peer), _, _) => Ok(peer),
            (
                Err(failure @ (HookFailure::Fault(_) | HookFailure::Skipped)),
                GuestErrorPolicy::FailOpen,
                Some(fallback),
            ) => {
                if Self::worth_logging(&tenant, &failure) {
                    log::warn!(
                        "module {}: upstream_peer failed: {failure}; fail-open to {fallback}",
                        tenant.module.name()
                    );
                }
                Ok(Box::new(HttpPeer::new(fallback, false, String::new())))
            }
            (Err(failure), _, _) => Err(self.failed(&tenant, Hook::UpstreamPeer, failure)),
        }
    }

    /// Guest export `upstream_request_filter`: `{request, upstream_request,
    /// ctx}` -> `{upstream_changes | upstream_request, ctx}`, applied to the
    /// upstream request.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tenant = routed(ctx)?;
        let result = match Self::admit(
            session,
            &tenant,
            Hook::UpstreamRequestFilter,
            &mut ctx.refused,
        )
        .await?
        {
            Some(permit) => {
                let request = downstream_request(session, ctx);
                let result = abi::filter_upstream_request(
                    &tenant.module,
                    &request,
                    upstream_request,
                    &ctx.guest_ctx,
                    &permit,
                )
                .await;
                Self::observe(
                    &tenant,
                    Hook::UpstreamRequestFilter,
                    permit.running(),
                    &result,
                );
                permit.finish(matches!(result, Err(HookFailure::Fault(_))));
                result
            }
            None => Err(HookFailure::Skipped),
        };
        match (result, tenant.on_guest_error) {
            (Ok(update), _) => {
                ctx.guest_ctx.apply(update);
                Ok(())
            }
            (
                Err(failure @ (HookFailure::Fault(_) | HookFailure::Skipped)),
                GuestErrorPolicy::FailOpen,
            ) => {
                if Self::worth_logging(&tenant, &failure) {
                    log::warn!(
                        "module {}: upstream_request_filter failed: {failure}; fail-open, request unchanged",
                        tenant.module.name()
                    );
                }
                Ok(())
            }
            (Err(failure), _) => Err(self.failed(&tenant, Hook::UpstreamRequestFilter, failure)),
        }
    }

    /// A budget's refusal is logged by [`Self::admit`], at most once a
    /// second per tenant: a flood of refused requests must not flood the
    /// log.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.refused
    }
}
