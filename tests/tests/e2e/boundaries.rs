//! Tenant boundaries, tried as a hostile tenant would: another tenant's
//! shared data, another tenant's cluster, addresses nobody granted, the
//! proxy's own listeners, link-local. Each must fail the way
//! docs/SECURITY.md says, and the neighbour's traffic must be untouched.

use serde_json::Value;

use crate::support::*;

/// GET / with a Host (and more headers); the status and body.
async fn as_tenant(
    client: &reqwest::Client,
    proxy: &Proxy,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    get(client, &proxy.url("/"), &all).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_with_the_same_module_never_share_data() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: a
    hosts: ["a.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
  - name: b
    hosts: ["b.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let count = |body: &str| {
        let echo: Value = serde_json::from_str(body).unwrap();
        echoed_header(&echo, "x-pw-count")
    };
    for expected in 1..=3 {
        let (status, body) = as_tenant(&client, &proxy, "a.example", &[]).await;
        assert_eq!(status, 200, "{}", proxy.log());
        assert_eq!(count(&body), Some(expected.to_string()));
    }
    // Tenant b's counter starts at its own zero, whatever a counted.
    let (status, body) = as_tenant(&client, &proxy, "b.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(count(&body), Some("1".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn callouts_reach_granted_clusters_and_addresses_only() {
    let upstream = Upstream::plain().await;
    let (auth, _service) = auth_service().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let filter = |target: &str| {
        format!("    filters:\n      - module: GUESTS/pw_auth.wasm\n        config: \"{target}\"\n")
    };
    let yaml = format!(
        r#"
tenants:
  - name: owner
    hosts: ["owner.example"]
    upstream: "{u}"
    clusters:
      auth: "{auth}"
{owner}
  - name: thief
    hosts: ["thief.example"]
    upstream: "{u}"
{thief}
  - name: direct
    hosts: ["direct.example"]
    upstream: "{u}"
{direct}
  - name: granted
    hosts: ["granted.example"]
    upstream: "{u}"
    egress:
      allow: ["127.0.0.1/32:{port}"]
{granted}
  - name: loop
    hosts: ["loop.example"]
    upstream: "{u}"
    egress:
      allow: ["127.0.0.0/8"]
{looping}
"#,
        u = upstream.addr,
        port = auth.port(),
        owner = filter("auth"),
        thief = filter("auth"),
        direct = filter(&auth.to_string()),
        granted = filter(&auth.to_string()),
        looping = filter(&metrics),
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();
    let user = [("x-user", "ok1")];

    // The owner reaches its own cluster; so does an address granted by
    // the tenant's egress.
    for host in ["owner.example", "granted.example"] {
        let (status, body) = as_tenant(&client, &proxy, host, &user).await;
        assert_eq!(status, 200, "{host}: {body}\n{}", proxy.log());
    }
    // Another tenant's cluster name is unknown to the thief; an ip:port
    // without egress is refused (clusters only, as Envoy); the proxy's
    // own metrics address is refused whatever the list says. The filter
    // sees its dispatch fail and answers as it chooses.
    for host in ["thief.example", "direct.example", "loop.example"] {
        let (status, body) = as_tenant(&client, &proxy, host, &user).await;
        assert_eq!(
            (status, body.as_str()),
            (500, "auth call not made\n"),
            "{host}"
        );
    }
    let log = proxy.wait_for_log("tenant loop: egress to");
    assert!(
        log.contains(&format!("tenant direct: egress to {auth} refused")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "tenant loop: egress to {metrics} refused (the proxy's own listener)"
        )),
        "{log}"
    );
    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for tenant in ["direct", "loop"] {
        let series = format!(r#"wasm_proxy_egress_refused_total{{tenant="{tenant}"}}"#);
        assert_eq!(metric_value(&text, &series), 1, "{text}");
    }
    // The owner is untouched by its neighbours' attempts.
    let (status, _) = as_tenant(&client, &proxy, "owner.example", &user).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v1_guest_reaches_only_what_egress_allows() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let tenant = |name: &str, target: &str, egress: &str| {
        format!(
            "  - name: {name}\n    hosts: [\"{name}.example\"]\n    module: GUESTS/first_proxy.wasm\n    \
             config: {{ upstream: \"{target}\", tls: false }}\n{egress}"
        )
    };
    let yaml = format!(
        "tenants:\n{}{}{}{}",
        tenant("open", &upstream.addr.to_string(), ""),
        tenant("metadata", "169.254.169.254:80", ""),
        tenant("selfie", &metrics, ""),
        tenant(
            "fenced",
            &upstream.addr.to_string(),
            "    egress:\n      allow: [\"10.0.0.0/8\"]\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();

    // Without any egress: any address but the forbidden ones.
    let (status, _) = as_tenant(&client, &proxy, "open.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    for (host, refused, why) in [
        (
            "metadata",
            "169.254.169.254:80".to_string(),
            "link-local, not named exactly in egress.allow",
        ),
        ("selfie", metrics.clone(), "the proxy's own listener"),
        ("fenced", upstream.addr.to_string(), "not in egress.allow"),
    ] {
        let (status, _) = as_tenant(&client, &proxy, &format!("{host}.example"), &[]).await;
        assert_eq!(status, 502, "{host}: {}", proxy.log());
        let line = format!("tenant {host}: egress to {refused} refused ({why})");
        let log = proxy.wait_for_log(&line);
        assert!(log.contains(&line), "{log}");
    }
    // Refusals are the operator's rules, not guest faults: no fault is
    // counted and no breaker moves.
    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains(r#"wasm_proxy_hook_faults_total{hook="upstream_peer""#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holding_requests_open_cannot_take_its_neighbours_instances() {
    let (slow, _service) = auth_service().await;
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: hog
    hosts: ["hog.example"]
    upstream: "{slow}"
    limits: {{ max_instances: 10 }}
    filters:
      - module: GUESTS/pw_headers.wasm
  - name: neighbour
    hosts: ["neighbour.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_headers.wasm
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();

    // The hog holds 30 requests open (its upstream answers after 2 s):
    // each pins a filter instance until it ends.
    let mut hogs = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (client, url) = (client.clone(), proxy.url("/check?user=slow"));
        hogs.spawn(async move {
            let response = client
                .get(&url)
                .header("host", "hog.example")
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            (response.status().as_u16(), retry_after)
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // The neighbour's burst meanwhile: every request served.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url) = (client.clone(), proxy.url("/"));
        burst.spawn(async move { get(&client, &url, &[("host", "neighbour.example")]).await.0 });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200, "{}", proxy.log());
    }
    let (mut held, mut refused) = (0, 0);
    while let Some(result) = hogs.join_next().await {
        match result.unwrap() {
            (403, _) => held += 1,
            (503, Some(retry_after)) => {
                assert_eq!(retry_after, "1");
                refused += 1;
            }
            other => panic!("hog got {other:?}:\n{}", proxy.log()),
        }
    }
    // At most its 10 instances (one made at load is outside the quota).
    assert!((10..=11).contains(&held), "{held} held, {refused} refused");
    assert_eq!(held + refused, 30);
    let log = proxy.log();
    assert!(
        log.contains("tenant hog: proxy_on_request_headers not called, answered 503: the tenant's instances are all alive (max_instances)"),
        "{log}"
    );
    let troubled = log
        .lines()
        .filter(|l| l.contains("neighbour") && (l.contains("WARN") || l.contains("ERROR")));
    assert_eq!(troubled.count(), 0, "{log}");
}
