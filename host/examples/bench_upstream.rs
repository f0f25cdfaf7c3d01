//! A fast local upstream for benchmarks: Pingora serving a fixed 200 with
//! keep-alive, so the proxies under test, not the origin, are the limit.
//!
//! `cargo run --release -p host --example bench_upstream -- --listen 127.0.0.1:8080 -c conf.yaml`

use async_trait::async_trait;
use clap::Parser;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::listening::Service;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(short, long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    pingora: Opt,
}

struct Hello;

#[async_trait]
impl ServeHttp for Hello {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let body = b"hello from the bench upstream\n".to_vec();
        http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", body.len())
            .body(body)
            .expect("a static response is valid")
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let mut server = Server::new(Some(args.pingora)).unwrap();
    server.bootstrap();
    let mut service = Service::new("bench upstream".to_string(), Hello);
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.run_forever();
}
