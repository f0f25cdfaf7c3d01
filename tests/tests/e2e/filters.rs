//! Unmodified proxy-wasm filters (written with the `proxy-wasm` crate from
//! crates.io) in front of a static upstream or a routing module: header
//! edits, a local response, the plugin configuration, a chain, and what a
//! filter's faults give.

use serde_json::{json, Value};

use crate::support::*;

/// A proxy running only filters (`--filter`, `--filter-config`, in order)
/// in front of `upstream`.
fn filters_proxy(upstream: &Upstream, filters: &[(&str, &str)], extra: &[&str]) -> Proxy {
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.tenants = None;
    options.module_config = None;
    let mut args = vec!["--upstream".to_string(), upstream.addr.to_string()];
    for (filter, config) in filters {
        args.push("--filter".into());
        args.push(guest(filter).display().to_string());
        args.push("--filter-config".into());
        args.push(config.to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    options.extra_args = args;
    options.no_module = true;
    Proxy::start(options)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_edits_request_and_response_headers_and_reads_its_configuration() {
    let upstream = Upstream::plain().await;
    let proxy = filters_proxy(&upstream, &[("pw_headers", "hello")], &[]);
    let (status, headers, body) =
        get_response(&client(), &proxy.url("/a?b=1"), &[("x-remove-me", "1")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-pw-path").as_deref(), Some("/a?b=1"));
    assert_eq!(echoed_header(&echo, "x-pw-method").as_deref(), Some("GET"));
    assert_eq!(echoed_header(&echo, "x-remove-me"), None);
    assert_eq!(
        echoed_header(&echo, "host"),
        Some(proxy.addr.to_string()),
        "one Host, the client's"
    );
    assert_eq!(headers["x-pw-config"], "hello");
    assert_eq!(headers["server"], "pw_headers");
    assert_eq!(headers["x-pw-status"], "200");
    let log = proxy.wait_for_log("pw_headers: done 200");
    assert!(
        log.contains("module pw_headers.wasm: pw_headers: request GET /a?b=1"),
        "the filter's own line, verbatim, prefixed with its name: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_answers_locally_and_the_answer_passes_its_response_callback() {
    let upstream = Upstream::plain().await;
    let proxy = filters_proxy(&upstream, &[("pw_headers", "hello")], &[]);
    let client = client();
    let (status, headers, body) = get_response(&client, &proxy.url("/deny/x"), &[]).await;
    assert_eq!(status, 403, "{}", proxy.log());
    assert_eq!(body, "denied by pw_headers\n");
    assert_eq!(headers["x-pw-denied"], "1");
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(headers["x-pw-config"], "hello", "on_response_headers ran");
    assert_eq!(upstream.connections(), 0);
    // The same keep-alive client goes on.
    assert_eq!(get(&client, &proxy.url("/ok"), &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_filters_chain_in_front_of_a_routing_module() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
clusters:
  auth: "127.0.0.1:9"
tenants:
  - name: acme
    hosts: ["acme.example"]
    module: GUESTS/first_proxy.wasm
    config: {{upstream: "{addr}", tls: false, host: "acme.example"}}
    filters:
      - module: GUESTS/pw_chain.wasm
        config: "a"
      - module: GUESTS/pw_chain.wasm
        config: "b"
        root_id: "second"
        on_error: fail_closed
  - name: mapped
    hosts: ["mapped.example"]
    upstream: "{addr}"
    filters:
      - module: GUESTS/pw_headers.wasm
        config: {{greeting: hi}}
default_tenant: acme
"#,
        addr = upstream.addr
    );
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let (status, headers, body) =
        get_response(&client, &proxy.url("/"), &[("Host", "acme.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-pw-chain").as_deref(), Some("a,b"));
    assert_eq!(
        echoed_header(&echo, "host").as_deref(),
        Some("acme.example")
    );
    assert_eq!(headers["x-pw-chain-a"], "1");
    assert_eq!(headers["x-pw-chain-b"], "1");

    // A YAML mapping reaches the filter as its JSON text.
    let (status, headers, _) =
        get_response(&client, &proxy.url("/"), &[("Host", "mapped.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(headers["x-pw-config"], r#"{"greeting":"hi"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_modules_and_refused_configurations_stop_the_start() {
    let upstream = Upstream::plain().await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["--filter", "GUEST:first_proxy", "--upstream", "UP"],
            "speaks this host's own guest ABI, not proxy-wasm",
        ),
        (
            &[
                "--filter",
                "GUEST:pw_headers",
                "--filter-config",
                "refuse",
                "--upstream",
                "UP",
            ],
            "proxy_on_configure returned false",
        ),
        (
            &[
                "--filter-config",
                "x",
                "--filter",
                "GUEST:pw_headers",
                "--upstream",
                "UP",
            ],
            "follows no --filter",
        ),
        (
            &["--filter", "GUEST:pw_headers"],
            "no module chooses an upstream",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|arg| match arg.strip_prefix("GUEST:") {
                Some(name) => guest(name).display().to_string(),
                None if *arg == "UP" => upstream.addr.to_string(),
                None => arg.to_string(),
            })
            .collect();
        let mut options = ProxyOptions::new("first_proxy", json!({}));
        options.no_module = true;
        options.module_config = None;
        let (status, log) = run_to_exit(options, &args);
        assert!(!status.success(), "{args:?}");
        assert!(log.contains(says), "{args:?}: {log}");
    }
    // A filter of proxy-wasm ABI 0.1.0.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.wasm");
    let wat = r#"(module
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_1_0"))
        (func (export "malloc") (param i32) (result i32) i32.const 0))"#;
    std::fs::write(&old, wat::parse_str(wat).unwrap()).unwrap();
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.no_module = true;
    options.module_config = None;
    let args = [
        "--filter".to_string(),
        old.display().to_string(),
        "--upstream".into(),
        upstream.addr.to_string(),
    ];
    let (status, log) = run_to_exit(options, &args);
    assert!(!status.success());
    assert!(log.contains("speaks proxy-wasm ABI 0.1.0"), "{log}");

    // A filter given as the routing module.
    let options = ProxyOptions::new("pw_headers", json!({}));
    let (status, log) = run_to_exit(options, &[]);
    assert!(!status.success());
    assert!(log.contains("is a proxy-wasm filter"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_faulting_filter_gives_500_or_is_skipped_and_the_next_request_succeeds() {
    let upstream = Upstream::plain().await;
    let client = client();
    for callback in [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ] {
        for misbehave in ["panic", "loop", "alloc"] {
            let config = json!({"misbehave": misbehave, "in": callback, "on_path": "/bad"});
            let proxy = filters_proxy(
                &upstream,
                &[("pw_hostile", &config.to_string())],
                &["--hook-timeout-ms", "50", "--memory-limit-mib", "16"],
            );
            // A body, so that the body callbacks run.
            let post = |path: &str| {
                let request = client.post(proxy.url(path)).body("some body");
                async move { request.send().await.map(|r| r.status().as_u16()) }
            };
            let status = post("/bad").await;
            if callback == "response_body" {
                // 500 if the response's headers have not left yet (Pingora
                // holds them until the body starts); else it is cut.
                assert!(
                    status.as_ref().map_or(true, |status| *status == 500),
                    "{misbehave}: {status:?}"
                );
            } else {
                assert_eq!(
                    status.ok(),
                    Some(500),
                    "{callback} {misbehave}: {}",
                    proxy.log()
                );
            }
            let status = post("/good").await.ok();
            assert_eq!(status, Some(200), "{callback} {misbehave}: {}", proxy.log());
            proxy.wait_for_log("filter pw_hostile.wasm: proxy_on_");
        }
    }
    // A filter that faults while it is configured stops the start.
    let config = json!({"misbehave": "panic", "in": "configure"});
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.no_module = true;
    options.module_config = None;
    let args: Vec<String> = [
        "--filter".to_string(),
        guest("pw_hostile").display().to_string(),
        "--filter-config".into(),
        config.to_string(),
        "--upstream".into(),
        upstream.addr.to_string(),
    ]
    .into();
    let (status, log) = run_to_exit(options, &args);
    assert!(!status.success());
    assert!(log.contains("proxy_on_configure"), "{log}");
    // A fault in on_log changes nothing that was sent.
    let config = json!({"misbehave": "panic", "in": "log"});
    let proxy = filters_proxy(&upstream, &[("pw_hostile", &config.to_string())], &[]);
    for _ in 0..2 {
        assert_eq!(get(&client, &proxy.url("/"), &[]).await.0, 200);
    }
    proxy.wait_for_log("filter pw_hostile.wasm: proxy_on_log failed");

    // fail_open: the faulting filter is skipped.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
tenants:
  - name: open
    hosts: ["open.example"]
    upstream: "{addr}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{misbehave: panic, in: request_headers}}
        on_error: fail_open
      - module: GUESTS/pw_chain.wasm
        config: "after"
"#,
        addr = upstream.addr
    );
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let (status, _, body) =
        get_response(&client, &proxy.url("/"), &[("Host", "open.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed_header(&echo, "x-pw-chain").as_deref(),
        Some("after"),
        "the next filter still ran"
    );

    // fail_open in a body callback: the filter buffered the body and
    // faults on its last piece; it is skipped, and the whole body goes on
    // with its Content-Length, as it came.
    let yaml = format!(
        r#"
tenants:
  - name: open
    hosts: ["open.example"]
    upstream: "{addr}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{misbehave: panic, in: request_body}}
        on_error: fail_open
"#,
        addr = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let sent: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let response = client
        .post(proxy.url("/big"))
        .header("Host", "open.example")
        .body(sent.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", proxy.log()));
    assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(echo["body"].as_str().map(str::len), Some(sent.len()));
    assert_eq!(echo["body"], sent.as_str(), "the whole body, as it came");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_shared_data_and_ticks_work_across_instances() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = filters_proxy(&upstream, &[("pw_counter", "50")], &["--metrics", &metrics]);
    let client = client();
    // The first request sets the shared counter; then 20 at once, each
    // in an instance of its own as they overlap.
    assert_eq!(get(&client, &proxy.url("/"), &[]).await.0, 200);
    let results = stamped_requests(&client, &proxy, 20, "/c").await;
    let mut counts: Vec<u64> = results
        .iter()
        .map(|(_, _, status, body)| {
            assert_eq!(*status, 200, "{}", proxy.log());
            let echo: Value = serde_json::from_str(body).unwrap();
            echoed_header(&echo, "x-pw-count").unwrap().parse().unwrap()
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (2..=21).collect::<Vec<u64>>(),
        "no update lost, none twice"
    );

    // Ticks run off the request path, every 50 ms.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (_, headers, _) = get_response(&client, &proxy.url("/"), &[]).await;
    let ticks: u64 = headers["x-pw-ticks"].to_str().unwrap().parse().unwrap();
    assert!(ticks >= 3, "{ticks} ticks");

    let exposition = scrape(&client, &metrics).await;
    let value = |metric: &str| {
        let series = format!(
            r#"wasm_proxy_filter_metric{{filter="pw_counter.wasm",metric="{metric}",tenant="pw_counter.wasm"}}"#
        );
        metric_value(&exposition, &series)
    };
    assert_eq!(value("pw_counter_requests"), 22);
    assert!(value("pw_counter_ticks") >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_filter_grants_or_refuses_on_its_callout_under_concurrency() {
    let upstream = Upstream::plain().await;
    let (auth, _service) = auth_service().await;
    let proxy = filters_proxy(
        &upstream,
        &[("pw_auth", "auth")],
        &["--cluster", &format!("auth={auth}")],
    );
    let client = client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (client, url) = (client.clone(), proxy.url("/"));
        // Every fourth user is refused, every tenth is slow.
        let user = match i {
            _ if i % 10 == 9 => "slow".to_string(),
            _ if i % 4 == 3 => format!("bad{i}"),
            _ => format!("ok{i}"),
        };
        requests.spawn(async move {
            let started = std::time::Instant::now();
            let (status, body) = get(&client, &url, &[("x-user", &user)]).await;
            (user, status, body, started.elapsed())
        });
    }
    let mut seen = 0;
    while let Some(result) = requests.join_next().await {
        let (user, status, body, took) = result.unwrap();
        seen += 1;
        if user == "slow" {
            assert_eq!(
                (status, body.as_str()),
                (503, "auth unavailable\n"),
                "{user}"
            );
            assert!(
                took < std::time::Duration::from_millis(1500),
                "{user}: {took:?}"
            );
        } else if user.starts_with("bad") {
            assert_eq!((status, body.as_str()), (403, "denied\n"), "{user}");
        } else {
            assert_eq!(status, 200, "{user}: {body} {}", proxy.log());
            let echo: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                echoed_header(&echo, "x-auth"),
                Some(format!("allow {user}")),
                "the callout's answer reached the upstream request"
            );
        }
    }
    assert_eq!(seen, 20);
    // Refused and failed requests never reached the upstream.
    assert!(upstream.connections() <= 14, "{}", upstream.connections());

    // An ip:port instead of a cluster: refused without egress (clusters
    // only, as Envoy), called once --egress-allow grants it.
    let target = auth.to_string();
    let proxy = filters_proxy(&upstream, &[("pw_auth", &target)], &[]);
    let (status, body) = get(&client, &proxy.url("/"), &[("x-user", "ok-direct")]).await;
    assert_eq!((status, body.as_str()), (500, "auth call not made\n"));
    let granted = format!("{}/32:{}", auth.ip(), auth.port());
    let proxy = filters_proxy(
        &upstream,
        &[("pw_auth", &target)],
        &["--egress-allow", &granted],
    );
    let (status, _) = get(&client, &proxy.url("/"), &[("x-user", "ok-direct")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_rewrites_both_bodies_to_other_lengths_and_keep_alive_holds() {
    let upstream = Upstream::plain().await;
    let proxy = filters_proxy(&upstream, &[("pw_body", "")], &[]);
    let client = client();
    for round in 0..2 {
        let response = client
            .post(proxy.url("/b"))
            .body(format!("hello {round}"))
            .send()
            .await
            .expect("request to the proxy");
        assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
        // The filter removed Content-Length: the host frames by chunks.
        assert_eq!(response.headers().get("content-length"), None);
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let text = response.text().await.unwrap();
        let (prefix, echo) = text.split_once(':').expect("a wrapped body");
        let echo: Value = serde_json::from_str(echo).unwrap();
        assert_eq!(prefix, format!("wrapped({})", echo.to_string().len()));
        assert_eq!(
            echo["body"],
            format!("HELLO {round}!!"),
            "the request body, rewritten"
        );
        assert_eq!(echo["method"], "POST");
        assert_eq!(echoed_header(&echo, "content-length"), None);
        assert_eq!(
            echoed_header(&echo, "transfer-encoding").as_deref(),
            Some("chunked")
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one keep-alive connection upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_that_leaves_bodies_alone_keeps_content_length_both_ways() {
    // pw_bench exports the body callbacks (as every Rust SDK filter does)
    // and never touches a body: framing stays as it came, as in Envoy.
    let upstream = Upstream::plain().await;
    let proxy = filters_proxy(&upstream, &[("pw_bench", "")], &[]);
    let client = client();
    for round in 0..2 {
        let sent = format!("hello {round}");
        let response = client
            .post(proxy.url("/kept"))
            .body(sent.clone())
            .send()
            .await
            .expect("request to the proxy");
        assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
        assert_eq!(response.headers().get("transfer-encoding"), None);
        let length = response.headers()["content-length"].clone();
        let text = response.text().await.unwrap();
        assert_eq!(length, text.len().to_string());
        let echo: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(echo["body"], sent.as_str());
        assert_eq!(
            echoed_header(&echo, "content-length"),
            Some(sent.len().to_string())
        );
        assert_eq!(echoed_header(&echo, "transfer-encoding"), None);
    }
    assert_eq!(upstream.connections(), 1, "keep-alive upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_that_changes_a_length_it_kept_fails_the_request_by_name() {
    // pw_body rewrites both bodies to other lengths but, told
    // `keep_length`, leaves Content-Length: the request fails (500) with
    // a line naming the filter, rather than leave mis-framed.
    let upstream = Upstream::plain().await;
    let proxy = filters_proxy(&upstream, &[("pw_body", "keep_length")], &[]);
    let client = client();
    let response = client
        .post(proxy.url("/b"))
        .body("hello")
        .send()
        .await
        .expect("request to the proxy");
    assert_eq!(response.status().as_u16(), 500, "{}", proxy.log());
    let line = "filter pw_body.wasm changed the request body's length without removing its \
                Content-Length in proxy_on_request_headers (Content-Length: 5; 7 bytes in all)";
    assert!(proxy.wait_for_log(line).contains(line), "{}", proxy.log());
    // A GET has no request body; its response is rewritten to another
    // length while its Content-Length stays: never sent mis-framed.
    let response = client.get(proxy.url("/b")).send().await;
    match response {
        Ok(response) => {
            assert_eq!(response.status().as_u16(), 500, "{}", proxy.log());
        }
        // The headers had left: the connection is cut.
        Err(error) => assert!(!error.is_status(), "{error}"),
    }
    let line = "filter pw_body.wasm changed the response body's length without removing its \
                Content-Length in proxy_on_response_headers";
    assert!(proxy.wait_for_log(line).contains(line), "{}", proxy.log());
    // The proxy serves on.
    let proxy_ok = filters_proxy(&upstream, &[("pw_body", "")], &[]);
    let response = client.get(proxy_ok.url("/b")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}
