//! The baseline for the policy benchmark: `guests/policy` compiled in. It
//! reads `x-api-key` and `user-agent`, refuses a request without a key
//! (403), keeps the caller's tier in its ctx, sends `x-tier` upstream and
//! `x-policy: ok` downstream.
//!
//! `cargo run --release -p host --example native_policy -- --upstream 127.0.0.1:8080 --listen 127.0.0.1:6190 -c conf.yaml`

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::Opt;

#[derive(Parser)]
struct Args {
    /// Where every request goes.
    #[arg(long)]
    upstream: SocketAddr,
    /// Address to listen on.
    #[arg(short, long, default_value = "0.0.0.0:6188")]
    listen: String,
    #[command(flatten)]
    pingora: Opt,
}

pub struct Policy {
    upstream: SocketAddr,
}

/// What the policy keeps per request.
#[derive(Default)]
pub struct Ctx {
    tier: u8,
}

#[async_trait]
impl ProxyHttp for Policy {
    type CTX = Ctx;
    fn new_ctx(&self) -> Self::CTX {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let Some(key) = req.headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
            return Error::e_explain(HTTPStatus(403), "missing x-api-key");
        };
        let curl = req
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|agent| agent.starts_with("curl"));
        ctx.tier = if key.starts_with("gold-") && !curl {
            2
        } else {
            1
        };
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_request.insert_header("x-tier", ctx.tier.to_string())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.insert_header("x-policy", "ok")
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let mut server = Server::new(Some(args.pingora)).unwrap();
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        Policy {
            upstream: args.upstream,
        },
    );
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.run_forever();
}
