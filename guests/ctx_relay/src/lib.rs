//! Test guest: a typed `CTX` filled in `upstream_peer` and read back in
//! `upstream_request_filter`, which copies it into request headers; and a
//! refusal with the guest's own status.
//!
//! Module config: `{"upstream": "127.0.0.1:8080", "tls": false, "sni": "",
//! "deny_path": "/deny", "deny_status": 403}`.

use guest_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
pub struct Config {
    upstream: String,
    tls: bool,
    sni: String,
    deny_path: String,
    deny_status: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "127.0.0.1:8080".into(),
            tls: false,
            sni: String::new(),
            deny_path: "/deny".into(),
            deny_status: 403,
        }
    }
}

/// What `upstream_peer` learns and `upstream_request_filter` reports.
#[derive(Default, Serialize, Deserialize)]
pub struct RelayCtx {
    path: String,
    stamp: Option<String>,
    peer_calls: u32,
}

pub struct CtxRelay {
    config: Config,
}

impl ProxyHttp for CtxRelay {
    type CTX = RelayCtx;

    fn new_ctx(&self) -> RelayCtx {
        RelayCtx::default()
    }

    fn upstream_peer(&self, session: &mut Session, ctx: &mut RelayCtx) -> Result<Box<HttpPeer>> {
        let request = session.req_header();
        if request.path().starts_with(&self.config.deny_path) {
            return Error::e_explain(HTTPStatus(self.config.deny_status), "denied by ctx_relay");
        }
        ctx.path = request.path().to_string();
        ctx.stamp = request.header("x-stamp").map(str::to_string);
        ctx.peer_calls += 1;
        let config = &self.config;
        Ok(Box::new(HttpPeer::new(
            &config.upstream,
            config.tls,
            config.sni.clone(),
        )))
    }

    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RelayCtx,
    ) -> Result<()> {
        upstream_request.insert_header("x-ctx-path", ctx.path.as_str())?;
        upstream_request.insert_header("x-ctx-stamp", ctx.stamp.as_deref().unwrap_or("none"))?;
        upstream_request.insert_header("x-ctx-peer-calls", ctx.peer_calls.to_string())?;
        // Read from the upstream request itself, before it is removed.
        let saw = upstream_request
            .get_header("x-stamp")
            .unwrap_or("none")
            .to_string();
        upstream_request.insert_header("x-filter-saw-stamp", saw)?;
        upstream_request.remove_header("x-stamp");
        Ok(())
    }
}

guest_sdk::export_proxy!(CtxRelay, |config: Config| Ok(CtxRelay { config }));
