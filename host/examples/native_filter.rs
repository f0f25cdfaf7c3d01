//! The baseline for the proxy-wasm benchmark: what `guests/pw_bench` does,
//! compiled into Pingora: read the path, add one request header and one
//! response header, send every request to a fixed upstream.
//!
//! `cargo run --release -p host --example native_filter -- --upstream 127.0.0.1:8080 --listen 127.0.0.1:6190 -c conf.yaml`

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

pub struct Filter {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Filter {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        session.req_header_mut().append_header("x-pw-path", path)?;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_response.append_header("x-pw", "1").map(drop)
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let mut server = Server::new(Some(args.pingora)).unwrap();
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        Filter {
            upstream: args.upstream,
        },
    );
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.run_forever();
}
