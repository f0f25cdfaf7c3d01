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
use host::abi::hook_table::Hook;
use host::abi::proxy_wasm::{FilterModule, FilterSpec, RequestOutcome, VmLease};
use host::abi::v1::{self as abi, InputParts, RequestVerdict, V1Module};
use host::config_model::from_yaml;
use host::metrics::Metrics;
use host::tenancy::budget::{Budget, BudgetLimits, MAX_CPU_MS_PER_S};
use host::upstream::egress::{Egress, OwnAddresses};
use host::upstream::pools::{HealthRegistries, PeerTimeouts, Pool, PoolSpec, Pools};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use wasm_runtime::{
    EngineOptions, GuestEngine, GuestLimits, InstanceQuota, SliceMeter, Unmetered, FEW_CALLS,
};

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

fn load(guest: &str, config: &str, instance_reuse: u64) -> V1Module {
    let limits = GuestLimits {
        instance_reuse,
        ..GuestLimits::default()
    };
    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: limits.memory_limit_bytes(),
        cache_dir: None,
        fresh_instances: instance_reuse <= FEW_CALLS,
    })
    .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../guests/{guest}.wasm"));
    V1Module::load(&engine, guest.into(), &path, config, limits).unwrap()
}

/// Runs a hook call to its end. A fast call finishes within one poll, as
/// on a Pingora worker; one the scheduler held up past the first deadline
/// check yields, and is polled again at once.
fn ready<F: Future>(call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    loop {
        if let Poll::Ready(out) = call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return out;
        }
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
fn wasm_request(module: &V1Module, budget: Option<&Budget>, req: &RequestHeader) -> Box<HttpPeer> {
    wasm_request_to(module, budget, req, address_peer)
}

/// The peer for a choice of an IP address, as `WasmProxy` builds it: the
/// address checked against a tenant's egress rules (none given, as by
/// default), made once as the tenant's are.
fn address_peer(choice: abi::PeerChoice) -> Box<HttpPeer> {
    static NO_RULES: OnceLock<Egress> = OnceLock::new();
    let abi::PeerChoice::Address(address) = choice else {
        panic!("bench peers are addresses");
    };
    // An IP address builds without a lookup: the call never waits.
    ready(address.build(NO_RULES.get_or_init(Egress::default)))
        .unwrap()
        .unwrap()
}

/// The peer for a choice of a pool, as `WasmProxy` builds it.
fn pool_peer(pools: &Pools, choice: abi::PeerChoice) -> Box<HttpPeer> {
    let abi::PeerChoice::Pool(pick) = choice else {
        panic!("bench peers here are pools");
    };
    let timeouts = PeerTimeouts {
        connection: pick.connection_timeout,
        read: pick.read_timeout,
    };
    let mut route = pools.route(&pick.name, pick.key, timeouts).unwrap();
    route.next_peer().unwrap()
}

/// [`wasm_request`], the peer made by `to_peer`.
fn wasm_request_to(
    module: &V1Module,
    budget: Option<&Budget>,
    req: &RequestHeader,
    to_peer: impl FnOnce(abi::PeerChoice) -> Box<HttpPeer>,
) -> Box<HttpPeer> {
    let request_json = OnceLock::new();
    let request = abi::DownstreamRequest::new(req, None, &request_json);
    let mut ctx = abi::GuestCtx::default();

    let permit = budget.map(|budget| budget.admit().unwrap());
    let meter: &dyn SliceMeter = match &permit {
        Some(permit) => permit,
        None => &Unmetered,
    };
    let peer = ready(abi::upstream_peer(module, &request, &mut ctx, meter)).unwrap();
    if let Some(permit) = permit {
        permit.finish(false);
    }
    let http_peer = to_peer(peer);

    let mut upstream = req.clone();
    let permit = budget.map(|budget| budget.admit().unwrap());
    let meter: &dyn SliceMeter = match &permit {
        Some(permit) => permit,
        None => &Unmetered,
    };
    ready(abi::upstream_request_filter(
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

/// The upstream's response header, as `response_filter` sees it.
fn upstream_response() -> ResponseHeader {
    let mut response = ResponseHeader::build(200, None).unwrap();
    response
        .insert_header("Content-Type", "application/json")
        .unwrap();
    response.insert_header("Content-Length", "512").unwrap();
    response
}

/// One call of `hook`'s step, admitted by `budget` as `WasmProxy` does.
fn admitted<T>(budget: &Budget, call: impl FnOnce(&dyn SliceMeter) -> T) -> T {
    let permit = budget.admit().unwrap();
    let out = call(&permit);
    permit.finish(false);
    out
}

/// One request through every hook `guests/policy` exports (it does not
/// export `logging`), as `WasmProxy` calls them, each admitted by the
/// budget.
fn policy_request(module: &V1Module, budget: &Budget, req: &mut RequestHeader) -> Box<HttpPeer> {
    let mut request_json = OnceLock::new();
    let mut ctx = abi::GuestCtx::default();
    let verdict = admitted(budget, |meter| {
        let call = abi::request_filter(module, req, None, &mut request_json, &mut ctx, meter);
        ready(call).unwrap()
    });
    assert!(matches!(verdict, RequestVerdict::Continue));
    let req = &*req;
    let request = abi::DownstreamRequest::new(req, None, &request_json);
    let choice = admitted(budget, |meter| {
        ready(abi::upstream_peer(module, &request, &mut ctx, meter)).unwrap()
    });
    let http_peer = address_peer(choice);
    let mut upstream = req.clone();
    admitted(budget, |meter| {
        ready(abi::upstream_request_filter(
            module,
            &request,
            &mut upstream,
            &mut ctx,
            meter,
        ))
        .unwrap()
    });
    let mut response = upstream_response();
    admitted(budget, |meter| {
        ready(abi::response_filter(
            module,
            &request,
            &mut response,
            &mut ctx,
            meter,
        ))
        .unwrap()
    });
    black_box((ctx, upstream, response));
    http_peer
}

/// The same policy compiled in (host/examples/native_policy.rs).
fn native_policy_request(req: &RequestHeader) -> Box<HttpPeer> {
    let key = req.headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let Some(key) = key else {
        panic!("bench requests carry a key");
    };
    let curl = req
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with("curl"));
    let tier: u8 = if key.starts_with("gold-") && !curl {
        2
    } else {
        1
    };
    let peer = Box::new(HttpPeer::new(
        "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap(),
        false,
        String::new(),
    ));
    let mut upstream = req.clone();
    upstream.insert_header("x-tier", tier.to_string()).unwrap();
    let mut response = upstream_response();
    response.insert_header("x-policy", "ok").unwrap();
    black_box((upstream, response));
    peer
}

/// One request through the proxy-wasm filter `guests/pw_bench` as the
/// proxy runs it: an HTTP context, `on_request_headers` (reads `:path`,
/// adds a header), `on_response_headers` (adds a header), then `on_done`,
/// `on_log`, `on_delete` and the instance back to the pool; each callback
/// admitted by the budget.
fn filter_request(filter: &FilterModule, budget: &Budget, req: &RequestHeader) {
    let mut request = req.clone();
    let mut lease = VmLease::default();
    let lease = &mut lease;
    let mut stream = admitted(budget, |meter| {
        ready(filter.begin(lease, &request, &Default::default(), meter)).unwrap()
    });
    let outcome = admitted(budget, |meter| {
        ready(filter.on_request_headers(lease, &mut stream, &mut request, true, meter)).unwrap()
    });
    assert!(matches!(outcome, RequestOutcome::Continue));
    let mut response = upstream_response();
    admitted(budget, |meter| {
        ready(filter.on_response_headers(lease, &mut stream, &mut response, false, meter)).unwrap()
    });
    admitted(budget, |meter| {
        ready(filter.end(lease, stream, Some(&response), meter)).unwrap()
    });
    filter.end_lease(lease);
    black_box((request, response));
}

/// The same work compiled in (host/examples/native_filter.rs).
fn native_filter_request(req: &RequestHeader) {
    let mut request = req.clone();
    let path = String::from_utf8_lossy(request.raw_path()).into_owned();
    request.append_header("x-pw-path", path).unwrap();
    let mut response = upstream_response();
    response.append_header("x-pw", "1").unwrap();
    black_box((request, response));
}

/// Input parts encoded ahead, so that only the guest's work is timed.
struct EncodedParts<'a> {
    header: &'a RequestHeader,
    request: String,
    upstream_request: String,
}

impl InputParts for EncodedParts<'_> {
    fn header(&self, part: i32, name: &str) -> Option<&[u8]> {
        match part {
            guest_sdk::wire::PART_REQUEST | guest_sdk::wire::PART_UPSTREAM_REQUEST => {
                self.header.headers.get(name).map(|value| value.as_bytes())
            }
            _ => None,
        }
    }

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

    // What the tenant boundaries add to a request: the egress check of a
    // guest's address (with no rules, as above, and with a list), and
    // the quota a new instance takes.
    let mut group = c.benchmark_group("tenant boundaries");
    let own = Arc::new(OwnAddresses::new([
        "127.0.0.1:6188".parse().unwrap(),
        "127.0.0.1:9100".parse().unwrap(),
    ]));
    let listed = Egress::new(
        Some(&[
            "10.1.0.0/16".to_string(),
            "192.0.2.7:443".to_string(),
            "1.1.1.0/24:443".to_string(),
        ]),
        own.clone(),
    )
    .unwrap();
    let open = Egress::new(None, own).unwrap();
    let target: std::net::SocketAddr = "1.1.1.1:443".parse().unwrap();
    group.bench_function("egress check, no rules", |b| {
        b.iter(|| open.check(None, black_box(target), true))
    });
    group.bench_function("egress check, a 3-entry allow list", |b| {
        b.iter(|| listed.check(None, black_box(target), true))
    });
    group.bench_function("first_proxy, reused instance, a 3-entry allow list", |b| {
        b.iter(|| {
            wasm_request_to(&reused, Some(&budget), black_box(&req), |choice| {
                let abi::PeerChoice::Address(address) = choice else {
                    panic!("bench peers are addresses");
                };
                ready(address.build(&listed)).unwrap().unwrap()
            })
        })
    });
    let quota = InstanceQuota::with_memory(100, 1 << 30);
    group.bench_function("instance quota: a slot taken and given back", |b| {
        b.iter(|| drop(black_box(quota.take())))
    });
    group.finish();

    // The same guest to a plain address, and to pools of three.
    let mut group = c.benchmark_group("upstream pool");
    let pools = |selection: &str| {
        let registries = HealthRegistries::new(None);
        let yaml = format!(
            "{{backends: [127.0.0.1:8081, 127.0.0.1:8082, 127.0.0.1:8083], \
             selection: {selection}, health_check: {{kind: none}}}}"
        );
        let spec = PoolSpec::from_config("api", &from_yaml(&yaml).unwrap()).unwrap();
        Pools::new(
            &[Arc::new(Pool::new("bench", &spec, &registries).unwrap())],
            &[],
        )
    };
    let to_address = load(
        "first_proxy",
        r#"{"upstream": "127.0.0.1:8081", "tls": false}"#,
        1000,
    );
    group.bench_function("first_proxy to an address", |b| {
        b.iter(|| wasm_request(&to_address, Some(&budget), black_box(&req)))
    });
    let to_pool = load("first_proxy", r#"{"pool": "api"}"#, 1000);
    let round_robin = pools("round_robin");
    group.bench_function("first_proxy to a round_robin pool", |b| {
        b.iter(|| {
            wasm_request_to(&to_pool, Some(&budget), black_box(&req), |peer| {
                pool_peer(&round_robin, peer)
            })
        })
    });
    let keyed = load(
        "first_proxy",
        r#"{"pool": "api", "key_header": "x-request-id"}"#,
        1000,
    );
    let consistent = pools("consistent");
    group.bench_function("first_proxy to a consistent pool, keyed by a header", |b| {
        b.iter(|| {
            wasm_request_to(&keyed, Some(&budget), black_box(&req), |peer| {
                pool_peer(&consistent, peer)
            })
        })
    });
    // The host's part alone: from the decoded PEER to Pingora's HttpPeer.
    let address = guest_sdk::wire::Peer {
        address: "127.0.0.1:8081".into(),
        ..Default::default()
    };
    group.bench_function("PEER to HttpPeer: address", |b| {
        b.iter(|| address_peer(abi::PeerChoice::of(black_box(address.clone())).unwrap()))
    });
    let named = guest_sdk::wire::Peer {
        pool: Some("api".into()),
        ..Default::default()
    };
    group.bench_function("PEER to HttpPeer: round_robin pool", |b| {
        b.iter(|| {
            let choice = abi::PeerChoice::of(black_box(named.clone())).unwrap();
            pool_peer(&round_robin, choice)
        })
    });
    let named_key = guest_sdk::wire::Peer {
        key: Some("6f1c2a9e-5d1b-4f53-9b7e-0d7a1f0c3b21".into()),
        ..named.clone()
    };
    group.bench_function("PEER to HttpPeer: consistent pool", |b| {
        b.iter(|| {
            let choice = abi::PeerChoice::of(black_box(named_key.clone())).unwrap();
            pool_peer(&consistent, choice)
        })
    });
    group.finish();

    // A representative policy: every lifecycle hook but logging.
    let mut group = c.benchmark_group("policy request");
    let mut keyed = req.clone();
    keyed.insert_header("x-api-key", "gold-1234").unwrap();
    let policy = load("policy", r#"{"upstream": "127.0.0.1:8080"}"#, 1000);
    group.bench_function("native policy", |b| {
        b.iter(|| native_policy_request(black_box(&keyed)))
    });
    // The request is cloned outside the measure: the proxy's own request
    // belongs to its session.
    group.bench_function("wasm policy, reused instance", |b| {
        b.iter_batched_ref(
            || keyed.clone(),
            |req| policy_request(&policy, &budget, black_box(req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // A proxy-wasm filter, per request, beside native and first_proxy.
    let mut group = c.benchmark_group("proxy-wasm filter request");
    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: GuestLimits::default().memory_limit_bytes(),
        cache_dir: None,
        fresh_instances: false,
    })
    .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/pw_bench.wasm");
    let filter = FilterModule::load(
        &engine,
        "pw_bench".into(),
        &path,
        FilterSpec::default(),
        GuestLimits::default(),
    )
    .unwrap();
    group.bench_function("native (the filter's work compiled in)", |b| {
        b.iter(|| native_filter_request(black_box(&req)))
    });
    group.bench_function("pw_bench filter, reused instance", |b| {
        b.iter(|| filter_request(&filter, &budget, black_box(&req)))
    });
    group.finish();

    // Each hook alone, as the proxy calls it (input encoded, output
    // decoded and applied), the policy's hooks and lifecycle's logging.
    let mut group = c.benchmark_group("hook");
    // The request's JSON is encoded once, as for a request's later hooks.
    let mut request_json = OnceLock::new();
    let mut filtered = keyed.clone();
    let mut request_filter = |ctx: &mut abi::GuestCtx| {
        let call = abi::request_filter(
            &policy,
            &mut filtered,
            None,
            &mut request_json,
            ctx,
            &Unmetered,
        );
        ready(call).unwrap()
    };
    group.bench_function("policy request_filter", |b| {
        b.iter(|| request_filter(&mut abi::GuestCtx::default()))
    });
    // The ctx the later hooks see.
    let mut ctx = abi::GuestCtx::default();
    request_filter(&mut ctx);
    let request = abi::DownstreamRequest::new(&keyed, None, &request_json);
    group.bench_function("policy upstream_peer", |b| {
        b.iter(|| ready(abi::upstream_peer(&policy, &request, &mut ctx, &Unmetered)).unwrap())
    });
    group.bench_function("policy upstream_request_filter", |b| {
        b.iter_batched(
            || keyed.clone(),
            |mut upstream| {
                ready(abi::upstream_request_filter(
                    &policy,
                    &request,
                    &mut upstream,
                    &mut ctx,
                    &Unmetered,
                ))
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("policy response_filter", |b| {
        b.iter_batched(
            upstream_response,
            |mut response| {
                ready(abi::response_filter(
                    &policy,
                    &request,
                    &mut response,
                    &mut ctx,
                    &Unmetered,
                ))
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let lifecycle = load("lifecycle", r#"{"upstream": "127.0.0.1:8080"}"#, 1000);
    let response = upstream_response();
    group.bench_function("lifecycle logging (log off)", |b| {
        b.iter(|| {
            let outcome = abi::RequestEnd {
                error: None,
                duration: std::time::Duration::from_micros(900),
            };
            let ctx = abi::GuestCtx::default();
            ready(abi::logging(
                &lifecycle,
                &request,
                Some(&response),
                outcome,
                &ctx,
                &Unmetered,
            ))
            .unwrap()
        })
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
        header: &req,
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
