//! What the wasm hooks cost per request, without network: both hooks and
//! the ctx round trip through the host's own call path (encode, call,
//! decode, validate, apply), against the same logic compiled in natively.
//!
//! `cargo bench -p host --bench hooks`

use std::path::Path;
use std::sync::{Arc, OnceLock};

use std::future::Future;
use std::task::{Context, Poll, Waker};

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use host::abi::v1::{self as abi, GuestModule, InputParts};
use host::budget::{Budget, BudgetLimits, MAX_CPU_MS_PER_S};
use host::hooks::Hook;
use host::metrics::Metrics;
use host::runtime::{EngineOptions, GuestEngine, GuestLimits, SliceMeter, Unmetered};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// A request as curl sends it, plus a few headers a browser would add.
fn client_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/items?page=2&sort=name", None).unwrap();
    for (name, value) in [
        ("Host", "shop.example"),
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "*/*"),
        ("Accept-Encoding", "gzip, br"),
        ("X-Request-Id", "6f1c2a9e-5d1b-4f53-9b7e-0d7a1f0c3b21"),
        ("Cookie", "session=abcdef0123456789; theme=dark"),
    ] {
        req.append_header(name, value).unwrap();
    }
    req
}

fn load(guest: &str, config: &str, instance_reuse: u64) -> GuestModule {
    let limits = GuestLimits {
        instance_reuse,
        ..GuestLimits::default()
    };
    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: limits.memory_limit_bytes(),
        cache_dir: None,
    })
    .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/{guest}.wasm"));
    GuestModule::load(&engine, guest.into(), &path, config, limits).unwrap()
}

/// Runs a hook call that finishes within one poll, as a fast call does on
/// a Pingora worker.
fn ready<F: Future>(call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a bench call yielded"),
    }
}

/// A tenant budget with the default limits, except a guest-time rate no
/// bench loop reaches (it calls the guest all the time).
fn budget() -> Budget {
    let limits = BudgetLimits {
        cpu_ms_per_s: MAX_CPU_MS_PER_S,
        ..BudgetLimits::default()
    };
    Budget::new(limits, Metrics::new().tenant("bench"))
}

/// One request's worth of hook work, as `WasmProxy` does it: each call
/// admitted by the tenant's budget and its guest time charged to it (or,
/// with no budget, neither: the cost of the budget alone is the
/// difference).
fn wasm_request(
    module: &GuestModule,
    budget: Option<&Budget>,
    req: &RequestHeader,
) -> Box<HttpPeer> {
    let request_json = OnceLock::new();
    let request = abi::DownstreamRequest::new(req, None, &request_json);
    let mut ctx = abi::GuestCtx::default();

    let permit = budget.map(|budget| budget.admit().unwrap());
    let meter: &dyn SliceMeter = match &permit {
        Some(permit) => permit,
        None => &Unmetered,
    };
    let peer = ready(abi::call_upstream_peer(module, &request, &mut ctx, meter)).unwrap();
    if let Some(permit) = permit {
        permit.finish(false);
    }
    let abi::PeerAddress::Ip(addr) = abi::peer_address(&peer.address).unwrap() else {
        panic!("bench peers are IP addresses");
    };
    let http_peer = abi::http_peer(addr, &peer).unwrap();

    let mut upstream = req.clone();
    let permit = budget.map(|budget| budget.admit().unwrap());
    let meter: &dyn SliceMeter = match &permit {
        Some(permit) => permit,
        None => &Unmetered,
    };
    ready(abi::filter_upstream_request(
        module,
        &request,
        &mut upstream,
        &mut ctx,
        meter,
    ))
    .unwrap();
    if let Some(permit) = permit {
        permit.finish(false);
    }
    black_box((ctx, upstream));
    http_peer
}

/// The tutorial's MyProxy compiled in: the baseline.
fn native_request(req: &RequestHeader) -> Box<HttpPeer> {
    let peer = Box::new(HttpPeer::new(
        ("1.1.1.1", 443),
        true,
        "one.one.one.one".to_string(),
    ));
    let mut upstream = req.clone();
    upstream.insert_header("Host", "one.one.one.one").unwrap();
    black_box(upstream);
    peer
}

/// Input parts encoded ahead, so that only the guest's work is timed.
struct EncodedParts {
    request: String,
    upstream_request: String,
}

impl InputParts for EncodedParts {
    fn part(&self, part: i32) -> Option<&str> {
        match part {
            guest_sdk::wire::PART_REQUEST => Some(&self.request),
            guest_sdk::wire::PART_UPSTREAM_REQUEST => Some(&self.upstream_request),
            guest_sdk::wire::PART_CTX => Some("null"),
            _ => None,
        }
    }
}

fn hooks(c: &mut Criterion) {
    let req = client_request();
    let first_proxy = "{}";
    let ctx_relay = r#"{"upstream": "127.0.0.1:8080"}"#;

    let budget = budget();
    let mut group = c.benchmark_group("request");
    group.bench_function("native MyProxy", |b| {
        b.iter(|| native_request(black_box(&req)))
    });
    let reused = Arc::new(load("first_proxy", first_proxy, 1000));
    group.bench_function("first_proxy, reused instance", |b| {
        b.iter(|| wasm_request(&reused, Some(&budget), black_box(&req)))
    });
    group.bench_function("first_proxy, reused instance, no budget", |b| {
        b.iter(|| wasm_request(&reused, None, black_box(&req)))
    });
    let fresh = load("first_proxy", first_proxy, 1);
    group.bench_function("first_proxy, fresh instance per call", |b| {
        b.iter(|| wasm_request(&fresh, Some(&budget), black_box(&req)))
    });
    let typed_ctx = load("ctx_relay", ctx_relay, 1000);
    group.bench_function("ctx_relay (typed ctx), reused instance", |b| {
        b.iter(|| wasm_request(&typed_ctx, Some(&budget), black_box(&req)))
    });
    group.finish();

    // The same with cold caches, as between two hooks of a proxy under
    // load: before each request (untimed), 8 MiB of other memory is
    // written, evicting the guest's code and data from L1, L2 and most of
    // L3.
    let mut group = c.benchmark_group("request, cold caches");
    let mut other = vec![0u8; 8 << 20];
    let mut evict = move || {
        for line in other.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        black_box(&other);
    };
    group.bench_function("native MyProxy", |b| {
        b.iter_batched(
            &mut evict,
            |_| native_request(black_box(&req)),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("first_proxy, reused instance", |b| {
        b.iter_batched(
            &mut evict,
            |_| wasm_request(&reused, Some(&budget), black_box(&req)),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // Where the time goes: the guest's share, from the call (no input: the
    // SDK fetches its ctx) to the output bytes, without the host's decoding.
    let mut group = c.benchmark_group("guest call only");
    let parts = EncodedParts {
        request: abi::RequestJson {
            header: &req,
            client_addr: None,
        }
        .to_json(),
        upstream_request: abi::UpstreamRequestJson(&req).to_json(),
    };
    for (name, hook) in [
        ("upstream_peer", Hook::UpstreamPeer),
        ("upstream_request_filter", Hook::UpstreamRequestFilter),
    ] {
        group.bench_function(format!("first_proxy {name}"), |b| {
            b.iter(|| {
                ready(reused.call(hook, &[], &parts, &Unmetered, |out| Ok(out.len()))).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
