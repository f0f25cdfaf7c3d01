//! The whole request lifecycle in wasm: `request_filter` (change, answer,
//! refuse), `response_filter`, `logging`, the ctx through every hook, the
//! static upstream, and what each hook's failures give.

use serde_json::{json, Value};

use crate::support::*;

/// The lifecycle guest in front of `upstream`, with `config` on top.
fn lifecycle(upstream: &Upstream, config: Value, extra_args: &[&str]) -> Proxy {
    let mut full = json!({"upstream": upstream.addr.to_string()});
    for (key, value) in config.as_object().expect("an object") {
        full[key] = value.clone();
    }
    let mut options = ProxyOptions::new("lifecycle", full);
    options.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    Proxy::start(options)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_guest_answers_401_itself_and_lets_authorised_requests_through() {
    let upstream = Upstream::plain().await;
    let proxy = lifecycle(&upstream, json!({"auth": true}), &[]);
    let client = client();

    let (status, headers, body) = get_response(&client, &proxy.url("/private"), &[]).await;
    assert_eq!(status, 401, "{}", proxy.log());
    assert_eq!(headers["www-authenticate"], r#"Basic realm="lifecycle""#);
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(body, "authorization required\n");
    assert_eq!(upstream.connections(), 0, "no upstream was contacted");

    let (status, _, body) = get_response(
        &client,
        &proxy.url("/private"),
        &[("Authorization", "Basic YTpi")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_guest_answers_301_with_location() {
    let upstream = Upstream::plain().await;
    let proxy = lifecycle(&upstream, json!({"redirects": {"/old": "/new"}}), &[]);
    let (status, headers, _) = get_response(&client_no_redirects(), &proxy.url("/old"), &[]).await;
    assert_eq!(status, 301, "{}", proxy.log());
    assert_eq!(headers["location"], "/new");
    assert_eq!(headers["content-length"], "0");
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_headers_guest_changes_the_upstreams_response() {
    let upstream = Upstream::plain().await;
    let proxy = lifecycle(
        &upstream,
        json!({"hsts": true, "strip_server": true, "status_map": {"201": 203}}),
        &[],
    );
    let client = client();
    let (status, headers, body) =
        get_response(&client, &proxy.url("/"), &[("x-echo-status", "201")]).await;
    assert_eq!(status, 203, "{}", proxy.log());
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert!(headers.get("server").is_none(), "{headers:?}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/", "the body is the upstream's");

    // The upstream does send Server; a status not in the map is kept.
    let (status, headers, _) = get_response(&client, &proxy.url("/"), &[]).await;
    assert_eq!(status, 200);
    assert!(headers.get("server").is_none());

    // The guest's own answers pass through response_filter too.
    let proxy = lifecycle(&upstream, json!({"auth": true, "hsts": true}), &[]);
    let (status, headers, _) = get_response(&client, &proxy.url("/"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-ctx-seen"], "request_filter,response_filter");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_filter_changes_the_request_before_routing_and_upstream() {
    let upstream = Upstream::plain().await;
    let proxy = lifecycle(&upstream, json!({}), &[]);
    let (status, _, body) = get_response(
        &client(),
        &proxy.url("/original?q=1"),
        &[("x-rewrite-to", "/rewritten?q=2")],
    )
    .await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/rewritten?q=2");
    assert_eq!(echoed_header(&echo, "x-rewritten").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ctx_set_in_request_filter_reaches_every_later_hook() {
    let upstream = Upstream::plain().await;
    let proxy = lifecycle(&upstream, json!({"log": true}), &[]);
    let (status, headers, body) =
        get_response(&client(), &proxy.url("/"), &[("x-user", "alice")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed_header(&echo, "x-ctx-seen").as_deref(),
        Some("request_filter,upstream_peer,upstream_request_filter"),
        "upstream_request_filter saw the ctx of the hooks before it"
    );
    assert_eq!(echoed_header(&echo, "x-ctx-user").as_deref(), Some("alice"));
    assert_eq!(
        headers["x-ctx-seen"],
        "request_filter,upstream_peer,upstream_request_filter,response_filter"
    );
    let log = proxy.wait_for_log("lifecycle: status=200");
    assert!(
        log.contains(
            "user=alice seen=request_filter,upstream_peer,upstream_request_filter,response_filter error=-"
        ),
        "{log}"
    );
}

/// The `duration_us` a lifecycle log line with `needle` gives.
fn logged_duration(log: &str, needle: &str) -> u64 {
    let line = log
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"));
    let value = line
        .split("duration_us=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    value.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_sees_every_ending_answered_refused_and_failed() {
    let upstream = Upstream::plain().await;
    let client = client();

    let proxy = lifecycle(&upstream, json!({"log": true, "auth": true}), &[]);
    get(&client, &proxy.url("/"), &[("x-user", "carol")]).await;
    let log = proxy.wait_for_log("lifecycle: status=401");
    assert!(
        log.contains("user=carol seen=request_filter,response_filter error=-"),
        "{log}"
    );
    get(&client, &proxy.url("/"), &[("Authorization", "Basic YTpi")]).await;
    let log = proxy.wait_for_log("lifecycle: status=200");
    assert!(logged_duration(&log, "lifecycle: status=200") > 0);

    // The upstream is dead: Pingora's 502, and the error's kind.
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(ProxyOptions::new(
        "lifecycle",
        json!({"upstream": dead, "log": true}),
    ));
    let (status, _) = get(&client, &proxy.url("/"), &[("x-user", "dan")]).await;
    assert_eq!(status, 502);
    let log = proxy.wait_for_log("lifecycle: status=502");
    assert!(log.contains("user=dan"), "{log}");
    assert!(log.contains("error=ConnectRefused"), "{log}");

    // Refused in request_filter: Pingora's error page, and logging runs.
    let proxy = lifecycle(
        &upstream,
        json!({"log": true, "refuse_path": "/forbidden"}),
        &[],
    );
    let (status, _) = get(&client, &proxy.url("/forbidden"), &[("x-user", "eve")]).await;
    assert_eq!(status, 403);
    let log = proxy.wait_for_log("lifecycle: status=403");
    // A refusal carries no ctx: the line shows the ctx as it was before.
    assert!(log.contains("user=- seen= error=HTTPStatus"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_in_request_filter_gets_its_status_and_no_upstream() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "policy",
        json!({"upstream": upstream.addr.to_string()}),
    ));
    let client = client();
    let (status, _) = get(&client, &proxy.url("/"), &[]).await;
    assert_eq!(status, 403, "{}", proxy.log());
    assert_eq!(upstream.connections(), 0);
    let (status, headers, body) =
        get_response(&client, &proxy.url("/"), &[("x-api-key", "gold-1")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(headers["x-policy"], "ok");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-tier").as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_built_before_the_new_hooks_run_unchanged() {
    let upstream = Upstream::plain().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/abi-v1");
    let client = client();
    for (guest, config) in [
        (
            "first_proxy",
            json!({"upstream": upstream.addr.to_string(), "tls": false, "host": "fixture"}),
        ),
        ("ctx_relay", json!({"upstream": upstream.addr.to_string()})),
    ] {
        let mut options = ProxyOptions::new(guest, config);
        options.module = fixtures.join(format!("{guest}.wasm"));
        let proxy = Proxy::start(options);
        let (status, body) = get(&client, &proxy.url("/a"), &[("x-stamp", "s1")]).await;
        assert_eq!(status, 200, "{guest}: {}", proxy.log());
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["uri"], "/a", "{guest}");
    }
}

/// A module with only `request_filter`, which adds `x-static: 1`: no
/// routing of its own.
const NO_ROUTING_GUEST: &str = r#"(module
    (memory (export "memory") 1)
    (data (i32.const 16) "{\"request_changes\":{\"headers\":[{\"insert\":[\"x-static\",\"1\"]}]}}")
    (func (export "hook_abi_version") (result i32) i32.const 1)
    (func (export "hook_alloc") (param i32) (result i32) i32.const 1024)
    (func (export "request_filter") (param i32 i32) (result i64) i64.const 0x100000003d))"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_module_that_does_not_route_uses_the_static_upstream_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("no_routing.wasm");
    std::fs::write(&module, wat::parse_str(NO_ROUTING_GUEST).unwrap()).unwrap();

    let upstream = Upstream::plain().await;
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = module.clone();
    options.module_config = None;
    options.extra_args = vec!["--upstream".into(), upstream.addr.to_string()];
    let proxy = Proxy::start(options);
    let (status, body) = get(&client(), &proxy.url("/s"), &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-static").as_deref(), Some("1"));

    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = module;
    options.module_config = None;
    let (status, log) = run_to_exit(options, &[]);
    assert!(!status.success());
    assert!(
        log.contains(
            "exports no `upstream_peer` and has no static upstream: give one with --upstream ADDR"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_gets_a_static_upstream_in_either_form() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("no_routing.wasm");
    std::fs::write(&module, wat::parse_str(NO_ROUTING_GUEST).unwrap()).unwrap();
    let yaml = format!(
        r#"
tenants:
  - name: short
    hosts: ["short.example"]
    module: {module}
    upstream: "{addr}"
  - name: long
    hosts: ["long.example"]
    module: {module}
    upstream: {{address: "{addr}", tls: false}}
"#,
        module = module.display(),
        addr = upstream.addr
    );
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    for host in ["short.example", "long.example"] {
        let (status, body) = get(&client, &proxy.url("/"), &[("Host", host)]).await;
        assert_eq!(status, 200, "{host}: {}", proxy.log());
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed_header(&echo, "x-static").as_deref(), Some("1"));
    }
}

/// Every misbehaviour the hostile guest has, that faults a hook.
const FAULTS: [&str; 6] = [
    "panic",
    "loop",
    "alloc",
    "invalid_json",
    "huge_output",
    "bad_header",
];

#[tokio::test(flavor = "multi_thread")]
async fn faults_in_request_and_response_filter_give_500_and_the_next_request_succeeds() {
    let upstream = Upstream::plain().await;
    let client = client();
    let addr = upstream.addr.to_string();
    for hook in ["request_filter", "response_filter"] {
        let misbehaviours = FAULTS.iter().copied().chain([
            "bad_answer_header",
            "huge_answer_body",
            "bad_answer_status",
        ]);
        for misbehave in misbehaviours {
            let is_answer = misbehave.starts_with("bad_answer") || misbehave == "huge_answer_body";
            if is_answer && hook != "request_filter" {
                continue;
            }
            let mut options = ProxyOptions::new(
                "hostile",
                json!({"upstream": addr, "misbehave": misbehave, "on_path": "/bad", "hook": hook}),
            );
            // The default deadline, 20 ms, is what these faults are held to.
            options.extra_args = vec!["--hook-timeout-ms".into(), "20".into()];
            let proxy = Proxy::start(options);
            let (status, _) = get(&client, &proxy.url("/bad"), &[]).await;
            assert_eq!(status, 500, "{hook} {misbehave}: {}", proxy.log());
            let (status, _) = get(&client, &proxy.url("/good"), &[]).await;
            assert_eq!(status, 200, "{hook} {misbehave}: {}", proxy.log());
            let log = proxy.wait_for_log(&format!("{hook} failed"));
            assert!(log.contains("module hostile.wasm"), "{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fault_in_logging_changes_nothing_that_was_sent() {
    let upstream = Upstream::plain().await;
    let client = client();
    // What logging returns is ignored, so only these can fault it.
    for misbehave in ["panic", "loop", "alloc", "huge_output"] {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut options = ProxyOptions::new(
            "hostile",
            json!({"upstream": upstream.addr.to_string(), "misbehave": misbehave, "hook": "logging"}),
        );
        // The default deadline, 20 ms, is what these faults are held to.
        options.extra_args = vec![
            "--metrics".into(),
            metrics.clone(),
            "--hook-timeout-ms".into(),
            "20".into(),
        ];
        let proxy = Proxy::start(options);
        for _ in 0..2 {
            let (status, _) = get(&client, &proxy.url("/"), &[]).await;
            assert_eq!(status, 200, "{misbehave}: {}", proxy.log());
        }
        proxy.wait_for_log("module hostile.wasm: logging failed");
        let (_, exposition) = get(&client, &format!("http://{metrics}/metrics"), &[]).await;
        assert!(
            exposition.contains(r#"wasm_proxy_hook_faults_total{hook="logging""#),
            "{misbehave}: {exposition}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_skips_a_faulting_filter_and_leaves_everything_unchanged() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    for hook in ["request_filter", "response_filter"] {
        let yaml = format!(
            r#"
tenants:
  - name: open
    hosts: ["open.example"]
    module: GUESTS/hostile.wasm
    config: {{upstream: "{addr}", misbehave: panic, hook: {hook}}}
    on_guest_error: fail_open
    fallback_upstream: "{addr}"
"#,
            addr = upstream.addr
        );
        let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
        let (status, headers, _) =
            get_response(&client, &proxy.url("/"), &[("Host", "open.example")]).await;
        assert_eq!(status, 200, "{hook}: {}", proxy.log());
        assert_eq!(
            headers["server"], "echo-upstream",
            "{hook}: response unchanged"
        );
        proxy.wait_for_log(&format!("{hook} failed"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_a_module_does_not_export_are_never_called() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut options = ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": false}),
    );
    options.extra_args = vec!["--metrics".into(), metrics.clone()];
    let proxy = Proxy::start(options);
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/"), &[]).await.0, 200);
    }
    let exposition = scrape(&client, &metrics).await;
    let calls = |hook: &str| {
        let series =
            format!(r#"wasm_proxy_hook_calls_total{{hook="{hook}",tenant="first_proxy.wasm"}}"#);
        metric_value(&exposition, &series)
    };
    assert_eq!(calls("upstream_peer"), 3);
    assert_eq!(calls("upstream_request_filter"), 3);
    for hook in ["request_filter", "response_filter", "logging"] {
        assert_eq!(calls(hook), 0, "{hook}");
    }
}
