//! The baseline for benchmarks: Pingora's tutorial `MyProxy` compiled in,
//! doing what `guests/first_proxy` does, with the same Pingora flags.
//!
//! `cargo run --release -p host --example native_proxy -- --upstream 127.0.0.1:8080 --listen 127.0.0.1:6190 -c conf.yaml`
//!
//! With `--tls-listen ADDR --cert FILE --key FILE` it also listens with
//! TLS as the host does (Mozilla intermediate, h2 and http/1.1 by ALPN),
//! for the edge benchmark (bench/edge.py). With `--h2c` its plain listener
//! takes HTTP/2 with prior knowledge, and with `--upstream-h2c` it speaks
//! HTTP/2 with prior knowledge to the upstream, as the host does for
//! `protocol: h2c` (100 streams per connection): the gRPC benchmark
//! (bench/grpc.py).

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::Opt;

#[derive(Parser)]
struct Args {
    /// Where every request goes.
    #[arg(long, default_value = "1.1.1.1:443")]
    upstream: SocketAddr,
    /// Speak TLS to the upstream.
    #[arg(long)]
    tls: bool,
    /// TLS server name, also sent as Host.
    #[arg(long, default_value = "one.one.one.one")]
    sni: String,
    /// Address to listen on.
    #[arg(short, long, default_value = "0.0.0.0:6188")]
    listen: String,
    /// Address to listen on with TLS.
    #[arg(long, requires_all = ["cert", "key"])]
    tls_listen: Option<String>,
    /// Certificate (PEM) of the TLS listener.
    #[arg(long)]
    cert: Option<String>,
    /// Private key (PEM) of the TLS listener.
    #[arg(long)]
    key: Option<String>,
    /// The plain listener also takes HTTP/2 with prior knowledge.
    #[arg(long)]
    h2c: bool,
    /// Speak HTTP/2 with prior knowledge to the upstream.
    #[arg(long)]
    upstream_h2c: bool,
    #[command(flatten)]
    pingora: Opt,
}

pub struct MyProxy {
    upstream: SocketAddr,
    tls: bool,
    sni: String,
    h2c: bool,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = Box::new(HttpPeer::new(self.upstream, self.tls, self.sni.clone()));
        if self.h2c {
            peer.options.alpn = pingora::protocols::ALPN::H2;
            peer.options.max_h2_streams = 100;
        }
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_request
            .insert_header("Host", self.sni.clone())
            .unwrap();
        Ok(())
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let mut server = Server::new(Some(args.pingora)).unwrap();
    server.bootstrap();
    let proxy = MyProxy {
        upstream: args.upstream,
        tls: args.tls,
        sni: args.sni,
        h2c: args.upstream_h2c,
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    if args.h2c {
        if let Some(proxy) = service.app_logic_mut() {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            proxy.server_options = Some(options);
        }
    }
    service.add_tcp(&args.listen);
    if let (Some(addr), Some(cert), Some(key)) = (&args.tls_listen, &args.cert, &args.key) {
        let mut settings = TlsSettings::intermediate(cert, key).unwrap();
        settings.enable_h2();
        service.add_tls_with_settings(addr, None, settings);
    }
    server.add_service(service);
    server.run_forever();
}
