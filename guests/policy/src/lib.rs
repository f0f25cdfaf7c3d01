//! A representative tenant policy, for the benchmark and a test: an API key
//! check, a typed ctx, routing, one upstream header and one response
//! header, and no logging (so `logging` is not exported).
//!
//! Module config: `{"upstream": "127.0.0.1:8080"}` (the default), and
//! `"h2": true` to speak HTTP/2 to it (h2c, prior knowledge: a gRPC
//! upstream).
//!
//! - `request_filter` refuses a request without `x-api-key` with 403;
//!   otherwise its tier is 2 for a key starting with `gold-`, except from
//!   a `curl` user agent, and 1 for everything else. It reads the two
//!   headers alone, without decoding the request.
//! - `upstream_peer` sends every request to `upstream` (plain text).
//! - `upstream_request_filter` adds `x-tier: <tier>`.
//! - `response_filter` adds `x-policy: ok`.
//! - `response_trailer_filter` (a gRPC call's trailers) adds
//!   `x-policy-trailer: ok`.

use guest_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    upstream: String,
    h2: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "127.0.0.1:8080".into(),
            h2: false,
        }
    }
}

/// The request's tier, from `request_filter` to `upstream_request_filter`.
#[derive(Serialize, Deserialize, Default)]
pub struct Ctx {
    tier: u8,
}

pub struct Policy {
    config: Config,
}

impl ProxyHttp for Policy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(key) = session.get_header("x-api-key") else {
            return Err(Error::explain(HTTPStatus(403), "missing x-api-key"));
        };
        let curl = session
            .get_header("user-agent")
            .is_some_and(|agent| agent.starts_with("curl"));
        ctx.tier = if key.starts_with("gold-") && !curl {
            2
        } else {
            1
        };
        Ok(false)
    }

    fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(&self.config.upstream, false, String::new());
        if self.config.h2 {
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_request.insert_header("x-tier", ctx.tier.to_string())
    }

    fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.insert_header("x-policy", "ok")
    }

    fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_trailers.insert_header("x-policy-trailer", "ok")
    }
}

guest_sdk::export_proxy!(
    Policy,
    |config: Config| Ok(Policy { config }),
    hooks = [
        request_filter,
        upstream_peer,
        upstream_request_filter,
        response_filter,
        response_trailer_filter
    ]
);
