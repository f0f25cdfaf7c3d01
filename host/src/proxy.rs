//! The `ProxyHttp` implementation. Pingora calls it for every request; its
//! two routing hooks are delegated to the guest module's exports of the
//! same names, with the per-request ctx carried as JSON between them.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use serde_json::value::RawValue;

use crate::abi::{self, HookFailure};
use crate::runtime::{GuestModule, Hook};

/// A Pingora proxy whose routing is decided by one guest module.
pub struct WasmProxy {
    module: Arc<GuestModule>,
}

/// Per-request state.
pub struct RequestCtx {
    /// The guest-visible ctx, kept as the JSON the guest returned.
    guest_ctx: Box<RawValue>,
    /// The downstream request, encoded once for both hooks.
    request_json: Option<Arc<str>>,
}

impl WasmProxy {
    /// A proxy delegating to `module`.
    pub fn new(module: Arc<GuestModule>) -> Self {
        WasmProxy { module }
    }

    /// The downstream request as JSON, encoded on first use; the caller
    /// puts it back into the ctx for the next hook.
    fn take_request_json(session: &Session, ctx: &mut RequestCtx) -> Arc<str> {
        ctx.request_json.take().unwrap_or_else(|| {
            let request = abi::RequestJson {
                header: session.req_header(),
                client_addr: session.client_addr(),
            };
            request.to_json().into()
        })
    }

    /// Logs a failed hook with module, hook and reason, and turns it into
    /// the error whose type gives the client's status.
    fn failed(&self, hook: Hook, failure: HookFailure) -> Box<Error> {
        let module = self.module.name();
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

#[async_trait]
impl ProxyHttp for WasmProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            guest_ctx: RawValue::from_string("null".into()).expect("null is JSON"),
            request_json: None,
        }
    }

    /// Guest export `upstream_peer`: `{request, ctx}` -> `{peer, ctx}`.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let request = Self::take_request_json(session, ctx);
        let result = abi::call_upstream_peer(&self.module, &request, &ctx.guest_ctx);
        ctx.request_json = Some(request);
        let (peer, new_ctx) = result.map_err(|failure| self.failed(Hook::UpstreamPeer, failure))?;
        if let Some(new_ctx) = new_ctx {
            ctx.guest_ctx = new_ctx;
        }
        abi::build_peer(&peer)
            .await
            .map_err(|fault| self.failed(Hook::UpstreamPeer, fault.into()))
    }

    /// Guest export `upstream_request_filter`: `{request, upstream_request,
    /// ctx}` -> `{upstream_request, ctx}`, applied to the upstream request.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let request = Self::take_request_json(session, ctx);
        let result =
            abi::filter_upstream_request(&self.module, &request, upstream_request, &ctx.guest_ctx);
        ctx.request_json = Some(request);
        let new_ctx =
            result.map_err(|failure| self.failed(Hook::UpstreamRequestFilter, failure))?;
        if let Some(new_ctx) = new_ctx {
            ctx.guest_ctx = new_ctx;
        }
        Ok(())
    }
}
