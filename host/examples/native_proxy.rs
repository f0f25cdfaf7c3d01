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
    /// Add X-Forwarded-For, -Proto and -Host in `upstream_request_filter`,
    /// as the host adds them by default: the like-for-like baseline of
    /// the host's default configuration.
    #[arg(long)]
    forwarded_headers: bool,
    #[command(flatten)]
    pingora: Opt,
}

pub struct MyProxy {
    upstream: SocketAddr,
    tls: bool,
    sni: String,
    h2c: bool,
    forwarded_headers: bool,
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
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if self.forwarded_headers {
            add_forwarded_headers(session, upstream_request)?;
        }
        upstream_request
            .insert_header("Host", self.sni.clone())
            .unwrap();
        Ok(())
    }
}

/// X-Forwarded-For (the client's address appended to the request's own
/// chain), X-Forwarded-Proto and X-Forwarded-Host, as a Pingora user adds
/// them: what the host does by default, by the same rules.
fn add_forwarded_headers(session: &Session, upstream_request: &mut RequestHeader) -> Result<()> {
    if let Some(client) = session.client_addr().and_then(|addr| addr.as_inet()) {
        let mut chain = Vec::new();
        for earlier in session.req_header().headers.get_all("x-forwarded-for") {
            chain.extend_from_slice(earlier.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client.ip().to_string().as_bytes());
        let chain =
            http::HeaderValue::from_bytes(&chain).or_err(InvalidHTTPHeader, "X-Forwarded-For")?;
        upstream_request.insert_header("x-forwarded-for", chain)?;
    }
    let tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    match session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned()
    {
        Some(host) => upstream_request.insert_header("x-forwarded-host", host)?,
        None => {
            upstream_request.remove_header("x-forwarded-host");
        }
    }
    Ok(())
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
        forwarded_headers: args.forwarded_headers,
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
