//! The Pingora tutorial's `MyProxy` ("Quick start: load balancer" without
//! the load balancer), as a guest: every request goes to 1.1.1.1:443 over
//! TLS with SNI and Host `one.one.one.one`.
//!
//! Module config (all optional) points it elsewhere:
//! `{"upstream": "127.0.0.1:8080", "tls": false, "sni": "...", "host": "..."}`.

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: "1.1.1.1:443".into(),
            tls: true,
            sni: "one.one.one.one".into(),
            host: None,
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

    fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let config = &self.config;
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
