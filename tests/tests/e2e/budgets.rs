//! Noisy neighbours: a tenant's looping guest under load leaves its
//! neighbour's latency alone; each budget answers with its own status
//! without calling the guest; the circuit breaker opens, probes and
//! closes, and fail-open tenants go to their fallback while it is open.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The upstream port that served `body` (the echo says it).
fn served_by(body: &str) -> Option<u16> {
    let echo: Value = serde_json::from_str(body).ok()?;
    echo["port"].as_u64().map(|p| p as u16)
}

/// `wasm_proxy_*` lines of the metrics text that mention `tenant`.
async fn metric_lines(client: &reqwest::Client, metrics: &str, tenant: &str) -> String {
    let text = scrape(client, metrics).await;
    text.lines()
        .filter(|l| l.contains(&format!("tenant=\"{tenant}\"")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_neighbour_under_load_leaves_a_good_tenants_latency_alone() {
    let upstream = Upstream::plain().await;
    // The loop tenant is let through every budget, so only yielding keeps
    // the workers free: 16 looping calls in flight at all times, each
    // running its full 20 ms deadline.
    let yaml = format!(
        r#"
tenants:
  - name: good
    hosts: ["good.example"]
    module: GUESTS/first_proxy.wasm
    config: {{ upstream: "{u}", tls: false }}
  - name: evil
    hosts: ["evil.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "loop" }}
    limits: {{ max_concurrent_calls: 1000, cpu_ms_per_s: 64000 }}
    breaker: {{ min_calls: 0 }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();

    // Bounded: 16 looping clients for at most 4 s.
    let stop = Instant::now() + Duration::from_secs(4);
    let mut evil = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url) = (client.clone(), proxy.url("/"));
        evil.spawn(async move {
            let mut answered = 0;
            while Instant::now() < stop {
                let (status, _) = get(&client, &url, &[("host", "evil.example")]).await;
                assert_eq!(status, 500);
                answered += 1;
            }
            answered
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut times = Vec::new();
    while Instant::now() + Duration::from_millis(500) < stop {
        let started = Instant::now();
        let (status, _) = get(&client, &proxy.url("/"), &[("host", "good.example")]).await;
        assert_eq!(status, 200, "a good request failed beside the loops");
        times.push(started.elapsed());
    }
    let mut looped = 0;
    while let Some(answered) = evil.join_next().await {
        looped += answered.unwrap();
    }
    times.sort();
    let (median, p90) = (times[times.len() / 2], times[times.len() * 9 / 10]);
    println!(
        "good tenant beside 16 looping clients ({looped} loops answered): {} requests, \
         median {median:?}, p90 {p90:?}, max {:?}",
        times.len(),
        times[times.len() - 1]
    );
    // Without yielding, each worker runs 20 ms loops back to back and a
    // good request waits behind several: a median of 100 ms or more. With
    // it, a good request waits at most a slice per turn.
    assert!(
        median < Duration::from_millis(40) && p90 < Duration::from_millis(100),
        "median {median:?}, p90 {p90:?}"
    );
    assert!(looped > 16, "the loops were not being served");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_budget_answers_with_its_status_without_calling_the_guest() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: narrow
    hosts: ["narrow.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "loop", on_path: "/slow" }}
    limits: {{ hook_timeout_ms: 300, max_concurrent_calls: 2, cpu_ms_per_s: 64000 }}
    breaker: {{ min_calls: 0 }}
  - name: frugal
    hosts: ["frugal.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "loop", on_path: "/slow" }}
    limits: {{ hook_timeout_ms: 50, cpu_ms_per_s: 10 }}
    breaker: {{ min_calls: 0 }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();

    // Concurrency: two 300 ms loops hold both slots; a third call is
    // answered 503 at once.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, url) = (client.clone(), proxy.url("/slow"));
        slow.spawn(async move { get(&client, &url, &[("host", "narrow.example")]).await.0 });
    }
    // Long enough for both to be past request_filter and looping in
    // upstream_peer on a loaded machine, well short of their 300 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let (status, _) = get(&client, &proxy.url("/"), &[("host", "narrow.example")]).await;
    let refused_in = started.elapsed();
    assert_eq!(status, 503, "{}", proxy.log());
    assert!(refused_in < Duration::from_millis(150), "{refused_in:?}");
    while let Some(status) = slow.join_next().await {
        assert_eq!(status.unwrap(), 500);
    }
    assert_eq!(
        get(&client, &proxy.url("/"), &[("host", "narrow.example")])
            .await
            .0,
        200,
        "the slots came back"
    );

    // Guest time: one 50 ms loop spends five seconds of a 10 ms/s budget;
    // the next request is answered 429 without calling the guest.
    let (status, _) = get(&client, &proxy.url("/slow"), &[("host", "frugal.example")]).await;
    assert_eq!(status, 500);
    let response = client
        .get(proxy.url("/"))
        .header("host", "frugal.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429, "{}", proxy.log());
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 50 ms of guest time at 10 ms per second: room again in about 4 s.
    assert!((3..=5).contains(&retry_after), "Retry-After: {retry_after}");
    let body = response.text().await.unwrap();
    assert_eq!(
        body,
        "tenant frugal: guest time budget of 10 ms per second spent (cpu_ms_per_s)\n"
    );

    for needle in [
        // The refused requests' first hook is request_filter.
        "module hostile.wasm (tenant narrow): request_filter not called, answered 503: 2 guest calls already in flight (max_concurrent_calls)",
        "module hostile.wasm (tenant frugal): request_filter not called, answered 429: guest time budget of 10 ms per second spent (cpu_ms_per_s)",
    ] {
        let log = proxy.wait_for_log(needle);
        assert!(log.contains(needle), "missing {needle:?} in:\n{log}");
    }
    // The refused request, and logging hooks that ran while the tenant
    // was over its budget (when, depends on how the requests interleave).
    let narrow = metric_lines(&client, &metrics, "narrow").await;
    let refused = metric_value(
        &narrow,
        r#"wasm_proxy_tenant_throttled_total{reason="concurrency",tenant="narrow"}"#,
    );
    assert!((1..=3).contains(&refused), "{narrow}");
    let frugal = metric_lines(&client, &metrics, "frugal").await;
    let refused = metric_value(
        &frugal,
        r#"wasm_proxy_tenant_throttled_total{reason="cpu",tenant="frugal"}"#,
    );
    assert!((1..=3).contains(&refused), "{frugal}");
    // The throttled requests never reached a guest.
    assert!(
        frugal.contains(r#"wasm_proxy_hook_calls_total{hook="upstream_peer",tenant="frugal"} 1"#),
        "{frugal}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_after_faults_probes_and_closes_again() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: shaky
    hosts: ["shaky.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "panic", on_path: "/bad", hook: request_filter }}
    breaker: {{ min_calls: 3, window_ms: 10000, cooldown_ms: 400 }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();
    let shaky = |path: &str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move { get(&client, &url, &[("host", "shaky.example")]).await.0 }
    };

    // Every call faults (request_filter) or not (the hooks after it):
    // the breaker opens once at least 3 calls in the window were at least
    // half faults, on the second or third bad request.
    let mut faulted = 0;
    while shaky("/bad").await == 500 {
        faulted += 1;
        assert!(faulted <= 3, "{}", proxy.log());
    }
    assert!(faulted >= 2, "{}", proxy.log());
    // Open: even a path the guest would serve fails fast.
    let started = Instant::now();
    assert_eq!(shaky("/").await, 503);
    assert!(started.elapsed() < Duration::from_millis(200));
    let gauge = r#"wasm_proxy_tenant_breaker_state{tenant="shaky"}"#;
    let lines = metric_lines(&client, &metrics, "shaky").await;
    assert!(lines.contains(&format!("{gauge} 1")), "{lines}");

    // After the cool-down a faulting probe opens it again at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shaky("/bad").await, 500);
    assert_eq!(shaky("/").await, 503);

    // And a good probe closes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shaky("/").await, 200);
    assert_eq!(shaky("/").await, 200);
    let lines = metric_lines(&client, &metrics, "shaky").await;
    assert!(lines.contains(&format!("{gauge} 0")), "{lines}");
    // The two requests refused while open, and logging hooks of requests
    // that ended while it was open (how many depends on when each ran).
    let skipped = metric_value(
        &lines,
        r#"wasm_proxy_tenant_throttled_total{reason="breaker_open",tenant="shaky"}"#,
    );
    assert!(skipped >= 2, "{lines}");
    for needle in [
        "tenant shaky: circuit breaker open: ",
        "calls in 10000 ms faulted (at least 50% of at least 3); calls fail fast for 400 ms",
        "tenant shaky: circuit breaker half-open, probing with one call",
        "tenant shaky: circuit breaker open again, the probe call faulted",
        "tenant shaky: circuit breaker closed, the probe call succeeded",
    ] {
        let log = proxy.wait_for_log(needle);
        assert!(log.contains(needle), "missing {needle:?} in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn six_faulting_requests_among_good_ones_do_not_open_the_breaker() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: steady
    hosts: ["steady.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "panic", on_path: "/bad", hook: request_filter }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    // Under the whole suite on two cores a good hook was seen to pass the
    // default 20 ms; this test is about the breaker's rate, not deadlines.
    let args = ["--metrics", &metrics, "--hook-timeout-ms", "1000"];
    let (proxy, _) = tenants_proxy(&dir, &yaml, &args);
    let client = client();
    let steady = |path: &str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move { get(&client, &url, &[("host", "steady.example")]).await.0 }
    };
    // The default breaker (50% of at least 20 calls): a client that finds
    // a fault path cannot take the tenant down with a handful of requests.
    for round in 0..36 {
        let (path, status) = if round % 6 == 5 {
            ("/bad", 500)
        } else {
            ("/", 200)
        };
        assert_eq!(steady(path).await, status, "round {round}: {}", proxy.log());
    }
    let lines = metric_lines(&client, &metrics, "steady").await;
    assert!(
        lines.contains(r#"wasm_proxy_tenant_breaker_state{tenant="steady"} 0"#),
        "{lines}"
    );
    assert!(
        !proxy.log().contains("circuit breaker open"),
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_open_tenant_goes_to_its_fallback_while_its_breaker_is_open() {
    let (upstream, fallback) = (Upstream::plain().await, Upstream::plain().await);
    let yaml = format!(
        r#"
tenants:
  - name: open
    hosts: ["open.example"]
    module: GUESTS/hostile.wasm
    config: {{ upstream: "{u}", misbehave: "panic", on_path: "/bad" }}
    on_guest_error: fail_open
    fallback_upstream: "{f}"
    breaker: {{ min_calls: 2, fault_percent: 15, cooldown_ms: 60000 }}
"#,
        u = upstream.addr,
        f = fallback.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();
    let open = |path: &str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move {
            let (status, body) = get(&client, &url, &[("host", "open.example")]).await;
            (status, served_by(&body))
        }
    };
    let (guest_choice, fallback) = (Some(upstream.addr.port()), Some(fallback.addr.port()));

    assert_eq!(open("/").await, (200, guest_choice));
    // Faults fail open to the fallback, and open the breaker: the first
    // is one fault in 7 calls (the good request's five hooks, this one's
    // request_filter and upstream_peer), 14%; the second one of at least
    // 11, over 15%.
    assert_eq!(open("/bad").await, (200, fallback));
    assert_eq!(open("/bad").await, (200, fallback));
    // Open: the guest is not called; every request goes to the fallback.
    for _ in 0..3 {
        assert_eq!(open("/").await, (200, fallback));
    }
    let lines = metric_lines(&client, &metrics, "open").await;
    for line in [
        r#"wasm_proxy_hook_calls_total{hook="upstream_peer",tenant="open"} 3"#,
        r#"wasm_proxy_tenant_breaker_state{tenant="open"} 1"#,
    ] {
        assert!(lines.contains(line), "missing {line:?} in:\n{lines}");
    }
    // Skipped while open: all five hooks of each of the three requests, and
    // the faulting request's later hooks (its logging hook may not have
    // run yet).
    let skipped = metric_value(
        &lines,
        r#"wasm_proxy_tenant_throttled_total{reason="breaker_open",tenant="open"}"#,
    );
    assert!((17..=18).contains(&skipped), "{lines}");
    let needle = "failed: not called, the circuit breaker is open; fail-open";
    let log = proxy.wait_for_log(needle);
    assert!(log.contains(needle), "{log}");
}
