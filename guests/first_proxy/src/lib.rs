//! The Pingora tutorial's `MyProxy` ("Quick start: load balancer" without
//! the load balancer), as a guest: every request goes to 1.1.1.1:443 over
//! TLS with SNI and Host `one.one.one.one`.
//!
//! Module config (all optional) points it elsewhere:
//! `{"upstream": "127.0.0.1:8080", "tls": false, "sni": "...", "host": "..."}`,
//! or to one of the tenant's pools instead of an address:
//! `{"pool": "api", "host": "..."}`, with `"key_header": "x-user"` to hash
//! that request header's value in a `consistent` pool.

use guest_sdk::prelude::*;
use serde::Deserialize;

/// Where MyProxy sends requests; the defaults are the tutorial's.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    upstream: String,
    tls: bool,
    sni: String,
    /// Host header sent upstream; defaults to `sni`.
    host: Option<String>,
    /// A pool to send requests to instead of `upstream` (the pool's TLS
    /// settings then apply).
    pool: Option<String>,
    /// The request header whose value is the pool's hashing key.
    key_header: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "1.1.1.1:443".into(),
            tls: true,
            sni: "one.one.one.one".into(),
            host: None,
            pool: None,
            key_header: None,
        }
    }
}

pub struct MyProxy {
    config: Config,
}

impl MyProxy {
    pub fn new(config: Config) -> Result<Self> {
        Ok(MyProxy { config })
    }
}

impl ProxyHttp for MyProxy {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let config = &self.config;
        if let Some(pool) = &config.pool {
            let mut peer = HttpPeer::pool(pool.as_str());
            if let Some(name) = &config.key_header {
                peer = peer.with_key(session.get_header(name).unwrap_or_default());
            }
            return Ok(Box::new(peer));
        }
        let peer = Box::new(HttpPeer::new(
            &config.upstream,
            config.tls,
            config.sni.clone(),
        ));
        Ok(peer)
    }

    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        let host = self.config.host.as_ref().unwrap_or(&self.config.sni);
        upstream_request.insert_header("Host", host.as_str())?;
        Ok(())
    }
}

guest_sdk::export_proxy!(MyProxy, MyProxy::new);
