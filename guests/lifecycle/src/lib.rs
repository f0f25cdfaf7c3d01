//! Test guest: all five hooks, each behaviour the host's tests check
//! turned on by the module config, and a ctx that records which hooks ran.
//!
//! Module config (every field optional; these are the defaults but
//! `redirects` and `status_map`, empty by default):
//!
//! `{"upstream": "127.0.0.1:8080", "auth": false, "redirects": {"/old": "/new"},
//!   "hsts": false, "strip_server": false, "status_map": {"201": 203}, "log": false,
//!   "refuse_path": "/forbidden", "remove_header": "x-forwarded-for"}`
//!
//! - `request_filter` records itself and `x-user` in the ctx; then, with
//!   `auth`, answers a request without `Authorization` with 401
//!   (`WWW-Authenticate: Basic realm="lifecycle"`, `Content-Type:
//!   text/plain`, body `authorization required\n`); refuses a request
//!   to `refuse_path` with 403 (Pingora's error page); answers a request
//!   whose path is a key of `redirects` with 301 to its value (empty body);
//!   else, if the request has `x-rewrite-to`, sets the request's uri to it
//!   (400 if it is not a `/path`) and adds `x-rewritten: 1` to it; with
//!   `remove_header`, removes that header from the request.
//! - `upstream_peer` sends every request to `upstream` (plain HTTP).
//! - `upstream_request_filter` adds `x-ctx-seen` (the hooks so far, joined
//!   by `,`), `x-request-version` (the downstream request's `version`,
//!   e.g. `HTTP/2.0`), `x-request-host` (its Host, as the guest sees it)
//!   and `x-ctx-user` (if `x-user` was given) to the upstream request.
//! - `response_filter` adds `x-ctx-seen` to the response; with `hsts`,
//!   `Strict-Transport-Security: max-age=31536000`; with `strip_server`,
//!   removes `Server`; changes the status as `status_map` says.
//! - `logging`, with `log`, writes one info line:
//!   `lifecycle: status=200 duration_us=1234 user=alice seen=request_filter,upstream_peer,... error=-`.

use std::collections::BTreeMap;

use guest_sdk::info;
use guest_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    upstream: String,
    auth: bool,
    /// Path to redirect from, to where.
    redirects: BTreeMap<String, String>,
    hsts: bool,
    strip_server: bool,
    /// Upstream status to the status the client gets.
    status_map: BTreeMap<u16, u16>,
    log: bool,
    /// Requests to this path (exactly) are refused with 403.
    refuse_path: Option<String>,
    /// A request header `request_filter` removes (e.g. one the host added).
    remove_header: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "127.0.0.1:8080".into(),
            auth: false,
            redirects: BTreeMap::new(),
            hsts: false,
            strip_server: false,
            status_map: BTreeMap::new(),
            log: false,
            refuse_path: None,
            remove_header: None,
        }
    }
}

/// What travels from hook to hook.
#[derive(Serialize, Deserialize, Default)]
pub struct Ctx {
    /// `x-user`, as `request_filter` saw it.
    user: Option<String>,
    /// The hooks that ran, in order.
    seen: Vec<String>,
}

pub struct Lifecycle {
    config: Config,
}

impl Lifecycle {
    /// Refuses a config whose answers the host would refuse: a redirect
    /// target that is not a valid header value, a status not 200-599.
    pub fn new(config: Config) -> Result<Self> {
        let mut probe = ResponseHeader::build(301, None)?;
        for target in config.redirects.values() {
            probe.insert_header("Location", target.as_str())?;
        }
        for &status in config.status_map.values() {
            probe.set_status(status)?;
        }
        Ok(Lifecycle { config })
    }
}

impl ProxyHttp for Lifecycle {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.seen.push("request_filter".into());
        ctx.user = session.get_header("x-user").map(str::to_string);

        if self.config.auth && session.get_header("Authorization").is_none() {
            let mut response = ResponseHeader::build(401, Some(2))?;
            response.insert_header("WWW-Authenticate", r#"Basic realm="lifecycle""#)?;
            response.insert_header("Content-Type", "text/plain")?;
            session.write_response_header(Box::new(response), false)?;
            session
                .write_response_body(Some(Bytes::from_static(b"authorization required\n")), true)?;
            return Ok(true);
        }

        let path = session.req_header().uri.path();
        if self.config.refuse_path.as_deref() == Some(path) {
            return Error::e_explain(HTTPStatus(403), "refused by refuse_path");
        }

        let redirect = self.config.redirects.get(session.req_header().uri.path());
        if let Some(target) = redirect {
            let mut response = ResponseHeader::build(301, Some(1))?;
            response.insert_header("Location", target.as_str())?;
            session.write_response_header(Box::new(response), true)?;
            return Ok(true);
        }

        if let Some(target) = session.get_header("x-rewrite-to").map(str::to_string) {
            let request = session.req_header_mut();
            // The client's value: a bad one is the client's fault.
            if request.set_uri(&target).is_err() {
                return Error::e_explain(HTTPStatus(400), "x-rewrite-to is not a /path");
            }
            request.insert_header("x-rewritten", "1")?;
        }
        if let Some(name) = &self.config.remove_header {
            session.req_header_mut().remove_header(name.as_str());
        }
        Ok(false)
    }

    fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.seen.push("upstream_peer".into());
        Ok(Box::new(HttpPeer::new(
            &self.config.upstream,
            false,
            String::new(),
        )))
    }

    fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.seen.push("upstream_request_filter".into());
        upstream_request.insert_header("x-ctx-seen", ctx.seen.join(","))?;
        let version = session.req_header().version.clone();
        upstream_request.insert_header("x-request-version", version)?;
        if let Some(host) = session.get_header("host").map(str::to_string) {
            upstream_request.insert_header("x-request-host", host)?;
        }
        if let Some(user) = &ctx.user {
            upstream_request.insert_header("x-ctx-user", user.as_str())?;
        }
        Ok(())
    }

    fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.seen.push("response_filter".into());
        upstream_response.insert_header("x-ctx-seen", ctx.seen.join(","))?;
        if self.config.hsts {
            upstream_response.insert_header("Strict-Transport-Security", "max-age=31536000")?;
        }
        if self.config.strip_server {
            upstream_response.remove_header("Server");
        }
        if !self.config.status_map.is_empty() {
            let status = upstream_response.status.as_u16();
            if let Some(&to) = self.config.status_map.get(&status) {
                upstream_response.set_status(to)?;
            }
        }
        Ok(())
    }

    fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if !self.config.log {
            return;
        }
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        info!(
            "lifecycle: status={status} duration_us={} user={} seen={} error={}",
            session.elapsed().as_micros(),
            ctx.user.as_deref().unwrap_or("-"),
            ctx.seen.join(","),
            e.map_or("-", |e| e.etype().as_str()),
        );
    }
}

guest_sdk::export_proxy!(
    Lifecycle,
    Lifecycle::new,
    hooks = [
        request_filter,
        upstream_peer,
        upstream_request_filter,
        response_filter,
        logging
    ]
);
