//! proxy-wasm semantics a filter from Envoy relies on: shared queues.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn queues_carry_items_between_a_tenant_s_filters_and_not_across_tenants() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: jobs
    hosts: ["jobs.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_queue.wasm
        config: "producer:q:work"
      - module: GUESTS/pw_queue.wasm
        config: "consumer:work"
        vm_config: {{ vm_id: q }}
  - name: intruder
    hosts: ["intruder.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_queue.wasm
        config: "producer:q:work"
        vm_config: {{ vm_id: q }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();

    let request = |host: &'static str, path: &'static str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move {
            let response = client.get(url).header("host", host).send().await.unwrap();
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let last = header("x-queue-last");
            let count = header("x-queue-count");
            let echo: serde_json::Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, echoed_header(&echo, "x-queue"), last, count)
        }
    };
    let (status, queued, _, _) = request("jobs.example", "/first").await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(queued.as_deref(), Some("enqueued"));
    let (_, _, _, _) = request("jobs.example", "/second").await;
    // The consumer's proxy_on_queue_ready runs off the request path: poll.
    let started = std::time::Instant::now();
    loop {
        let (_, _, last, count) = request("jobs.example", "/poll").await;
        // Each poll enqueues too: the consumer has seen at least the two
        // items, in order.
        let count: u64 = count.as_deref().unwrap_or("-").parse().unwrap_or(0);
        if count >= 2 && last.as_deref() != Some("/first") {
            assert!(
                last.as_deref()
                    .is_some_and(|l| l == "/second" || l == "/poll"),
                "{last:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{last:?} {count}\n{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Another tenant names the same vm_id and queue: it is not there.
    let (status, queued, _, _) = request("intruder.example", "/steal").await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(queued.as_deref(), Some("not-found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_reload_filter_comes_back_with_a_fresh_vm_after_its_backoff() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: reloads
    hosts: ["reloads.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: panic, on_path: /boom }}
        on_error: fail_reload
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let host = [("host", "reloads.example")];
    let status = |path: &'static str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move {
            let response = client
                .get(url)
                .header("host", "reloads.example")
                .send()
                .await
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (response.status().as_u16(), retry_after)
        }
    };
    assert_eq!(get(&client, &proxy.url("/ok"), &host).await.0, 200);

    // The fault fails its request closed, and the VM is replaced: new
    // requests get 503 with Retry-After for the backoff, then a fresh
    // one serves. A fault that comes first doubles the next backoff.
    for (path, backoff_ms) in [("/boom", 1000), ("/boom", 2000)] {
        assert_eq!(status(path).await.0, 500, "{}", proxy.log());
        let line =
            format!("fail_reload: its VM is replaced; new requests get 503 for {backoff_ms} ms");
        let log = proxy.wait_for_log(&line);
        assert!(log.contains(&line), "{log}");
        assert_eq!(
            status("/ok").await,
            (503, Some("1".to_string())),
            "{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(backoff_ms + 300)).await;
    }
    assert_eq!(status("/ok").await.0, 200, "{}", proxy.log());
    // A success resets it: the next fault's backoff is 1 s again.
    assert_eq!(status("/boom").await.0, 500);
    let line = "new requests get 503 for 1000 ms";
    let started = std::time::Instant::now();
    while proxy.log().matches(line).count() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_context_calls_out_from_on_tick() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: ticks
    hosts: ["ticks.example"]
    upstream: "{u}"
    clusters:
      api: "{u}"
    filters:
      - module: GUESTS/pw_tick_call.wasm
        config: api
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let started = std::time::Instant::now();
    loop {
        let response = client
            .get(proxy.url("/"))
            .header("host", "ticks.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
        let (call, calls) = (header("x-tick-call"), header("x-tick-calls"));
        let calls: u64 = calls.parse().unwrap_or(0);
        if calls >= 2 {
            // The upstream answered the tick's call: 200 and its echo.
            let (status, size) = call.split_once(' ').unwrap();
            assert_eq!(status, "200", "{call}");
            assert!(size.parse::<usize>().unwrap() > 0, "{call}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{call} {calls}\n{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_close_stream_resets_the_request() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: closer
    hosts: ["closer.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: close, on_path: /close }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    // The stream is reset: no response at all, and nothing reached the
    // upstream.
    let reset = client
        .get(proxy.url("/close"))
        .header("host", "closer.example")
        .send()
        .await;
    assert!(reset.is_err(), "{reset:?}");
    assert_eq!(upstream.connections(), 0);
    let line = "filter pw_hostile.wasm (tenant closer): proxy_close_stream: the stream is reset";
    let log = proxy.wait_for_log(line);
    assert!(log.contains(line), "{log}");
    // Other requests go on.
    let (status, _) = get(&client, &proxy.url("/open"), &[("host", "closer.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_waits_for_a_call_made_from_its_headers_callback() {
    // pw_auth in `on_response` mode pauses the response in
    // proxy_on_response_headers for a callout; the answer becomes a
    // response header, and the response goes on with its body.
    let upstream = Upstream::plain().await;
    let (auth, _service) = auth_service().await;
    let yaml = format!(
        r#"
tenants:
  - name: late
    hosts: ["late.example"]
    upstream: "{u}"
    clusters:
      auth: "{auth}"
    filters:
      - module: GUESTS/pw_auth.wasm
        config: "auth on_response"
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    for (user, expected) in [
        ("ok1", "200 allow ok1"),
        ("bad2", "403 no"),
        ("slow", "unavailable"),
    ] {
        let response = client
            .get(proxy.url("/late"))
            .header("host", "late.example")
            .header("x-user", user)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
        let auth = response.headers().get("x-auth").cloned();
        let body = response.text().await.unwrap();
        assert_eq!(
            auth.as_ref().and_then(|v| v.to_str().ok()),
            Some(expected),
            "{user}: {}",
            proxy.log()
        );
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["uri"], "/late", "the upstream's body followed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_calls_ends_after_sixteen_answers() {
    // pw_auth `endless` dispatches another call from every answer and
    // never resumes: after 16 answers the host drops the rest and the
    // request (or the response) goes on.
    let upstream = Upstream::plain().await;
    let (auth, _service) = auth_service().await;
    let yaml = format!(
        r#"
tenants:
  - name: chain
    hosts: ["chain.example"]
    upstream: "{u}"
    clusters:
      auth: "{auth}"
    filters:
      - module: GUESTS/pw_auth.wasm
        config: "auth endless"
  - name: late
    hosts: ["late.example"]
    upstream: "{u}"
    clusters:
      auth: "{auth}"
    filters:
      - module: GUESTS/pw_auth.wasm
        config: "auth on_response endless"
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    for host in ["chain.example", "late.example"] {
        let response = client
            .get(proxy.url("/chained"))
            .header("host", host)
            .header("x-user", "ok1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{host}: {}", proxy.log());
        let echo: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(echo["uri"], "/chained");
    }
    let line = "calls dropped after 16 answers; the stream goes on";
    let log = proxy.wait_for_log_count(line, 2);
    assert_eq!(log.matches(line).count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_with_one_vm_id_share_a_vm_and_a_root_context_per_plugin() {
    let upstream = Upstream::plain().await;
    // `shared`: three entries in one VM; the third is the first's plugin
    // again (the same root_id and configuration). `apart`: two VMs.
    let yaml = format!(
        r#"
tenants:
  - name: shared
    hosts: ["shared.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_vm.wasm
        config: "a"
        vm_config: {{ vm_id: v }}
      - module: GUESTS/pw_vm.wasm
        config: "b"
        vm_config: {{ vm_id: v }}
      - module: GUESTS/pw_vm.wasm
        config: "a"
        vm_config: {{ vm_id: v }}
  - name: apart
    hosts: ["apart.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_vm.wasm
        config: "a"
        vm_config: {{ vm_id: one }}
      - module: GUESTS/pw_vm.wasm
        config: "b"
        vm_config: {{ vm_id: two }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let request = |host: &'static str| {
        let (client, url) = (client.clone(), proxy.url("/vm"));
        async move {
            let response = client.get(url).header("host", host).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let all = |name: &str| {
                response
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (all("x-vm-a"), all("x-vm-b"), all("x-roots"))
        }
    };
    // One VM counts the request three times, in chain order; response
    // callbacks run last entry first. Two plugins: two root contexts.
    let (a, b, roots) = request("shared.example").await;
    assert_eq!((a.as_str(), b.as_str()), ("3,1", "2"), "{}", proxy.log());
    assert_eq!(roots, "2");
    // The next request finds the same VM (its globals carry on).
    let (a, b, _) = request("shared.example").await;
    assert_eq!((a.as_str(), b.as_str()), ("6,4", "5"));
    // Two vm_ids: two VMs, each counting once, with a root context each.
    let (a, b, roots) = request("apart.example").await;
    assert_eq!((a.as_str(), b.as_str(), roots.as_str()), ("1", "1", "1"));
}
