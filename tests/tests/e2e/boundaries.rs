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

/// A hog tenant under `limits` holds `count` requests open (its upstream
/// answers after 2 s; each pins a filter instance until it ends) while a
/// neighbour sends a burst of 16: every neighbour request must be served
/// untroubled. Returns how many of the hog's requests were held and the
/// proxy's log; the rest were refused 503 with Retry-After 1.
async fn hog_beside_a_neighbour(limits: &str, count: usize) -> (usize, String) {
    let (slow, _service) = auth_service().await;
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: hog
    hosts: ["hog.example"]
    upstream: "{slow}"
    limits: {limits}
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

    let mut hogs = tokio::task::JoinSet::new();
    for _ in 0..count {
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
    assert_eq!(held + refused, count);
    let log = proxy.log();
    let troubled = log
        .lines()
        .filter(|l| l.contains("neighbour") && (l.contains("WARN") || l.contains("ERROR")));
    assert_eq!(troubled.count(), 0, "{log}");
    (held, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holding_requests_open_cannot_take_its_neighbours_instances() {
    let (held, log) = hog_beside_a_neighbour("{ max_instances: 10 }", 30).await;
    // At most its 10 instances (one made at load is outside the quota).
    assert!((10..=11).contains(&held), "{held} held\n{log}");
    assert!(
        log.contains("tenant hog: proxy_on_request_headers not called, answered 503: the tenant's instances are all alive (max_instances)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eleven_hundred_held_requests_leave_the_neighbour_its_instances() {
    // The attack as it was found: 1,100 requests held open took the
    // engine's 1,000 slots, and a neighbour's burst of 16 got 500s and
    // then its own breaker's 503s. With the defaults (max_instances 100)
    // the hog keeps 100 and the rest are refused. Its other budgets are
    // opened wide so that only the instance quota binds, and its deadline
    // is generous: 1,100 instantiations at once on two cores are not what
    // is tested.
    let limits = "{ hook_timeout_ms: 2000, max_concurrent_calls: 1000, cpu_ms_per_s: 64000 }";
    let (held, log) = hog_beside_a_neighbour(limits, 1100).await;
    assert!((100..=101).contains(&held), "{held} held\n{log}");
    assert!(
        log.contains("the tenant's instances are all alive (max_instances)"),
        "{log}"
    );
    assert!(!log.contains("concurrent limit"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holding_requests_open_cannot_take_its_neighbours_memory() {
    // pw_headers' instances hold a little over 1 MiB of linear memory
    // each, so 4 MiB is a few of them, far below max_instances.
    let (held, log) = hog_beside_a_neighbour("{ max_memory_mib: 4 }", 30).await;
    assert!((1..=4).contains(&held), "{held} held\n{log}");
    assert!(
        log.contains("tenant hog: proxy_on_request_headers not called, answered 503: the tenant's instances hold all its memory (max_memory_mib)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_log_lines_cannot_forge_lines_or_flood_the_log() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
tenants:
  - name: noisy
    hosts: ["noisy.example"]
    upstream: "{u}"
    limits: {{ log_lines_per_s: 100, hook_timeout_ms: 2000 }}
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: forge }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &["--metrics", &metrics]);
    let client = client();
    let (status, _) = as_tenant(&client, &proxy, "noisy.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());

    let log = proxy.wait_for_log("pw_hostile: forged");
    // One guest line stays one log line, its tricks escaped.
    assert!(
        !log.lines().any(|l| l.starts_with("[2026-01-01T00:00:00Z")),
        "{log}"
    );
    let forged = log
        .lines()
        .find(|l| l.contains("pw_hostile: forged"))
        .unwrap();
    assert!(
        forged.contains(r"forged\n[2026-01-01T00:00:00Z ERROR"),
        "{forged}"
    );
    assert!(
        forged.contains(r"FORGED\u{2028}FORGED2 \u{202e}desrever"),
        "{forged}"
    );
    assert!(!log.contains('\u{2028}') && !log.contains('\u{202e}'));
    // 100 lines a second: the 3,000-line flood is dropped and counted.
    let flood = log.matches("pw_hostile: flood").count();
    assert!(flood <= 200, "{flood} flood lines logged");
    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metric_value(
        &text,
        r#"wasm_proxy_guest_log_dropped_total{tenant="noisy"}"#,
    );
    assert!(dropped >= 2800, "{dropped} dropped\n{text}");
}

/// Reads one whole response from `stream` (one request's answer: nothing
/// follows it until the next request is sent).
fn read_response(stream: &mut std::net::TcpStream) -> crate::clients::Reply {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buf).unwrap();
        raw.extend_from_slice(&buf[..read]);
        if let Some(reply) = crate::clients::complete_response(&raw, read == 0) {
            return reply;
        }
        assert!(
            read > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_cannot_edit_framing_and_a_smuggled_request_stays_a_body() {
    use std::io::Write;
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: edgy
    hosts: ["edgy.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: framing }}
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let addr = proxy.addr;
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // Were the filter's `Content-Length: 0` applied, the body would be
        // read as a second request on this keep-alive connection.
        let inner = "GET /admin HTTP/1.1\r\nHost: edgy.example\r\n\r\n";
        let smuggle = format!(
            "POST /smuggle HTTP/1.1\r\nHost: edgy.example\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        stream.write_all(smuggle.as_bytes()).unwrap();
        let first = read_response(&mut stream);
        let after = "GET /after HTTP/1.1\r\nHost: edgy.example\r\nConnection: close\r\n\r\n";
        stream.write_all(after.as_bytes()).unwrap();
        (first, read_response(&mut stream))
    })
    .await
    .unwrap();

    assert_eq!(first.status, 200, "{}", proxy.log());
    let echo = first.echo();
    assert_eq!(echo["uri"], "/smuggle");
    assert_eq!(
        echo["body"], "GET /admin HTTP/1.1\r\nHost: edgy.example\r\n\r\n",
        "the body went upstream as a body"
    );
    let statuses = echoed_header(&echo, "x-framing").expect("the filter's report");
    // BAD_ARGUMENT (2) for every framing edit but removing Content-Length
    // (Envoy's pattern before a body rewrite: the body then goes upstream
    // by chunks, and the downstream request keeps its length, so the body
    // is still read as a body), for a second Host or none, and for a POST
    // made HEAD; a new Host and an ordinary edit are OK (0).
    assert_eq!(
        statuses,
        "set:content-length=2 add:transfer-encoding=2 remove:content-length=0 \
         set:connection=2 add:upgrade=2 set:te=2 add:keep-alive=2 \
         add:proxy-connection=2 add:host=2 remove::authority=2 remove:host=2 \
         set::method=2 set:host=0 set:x-allowed=0"
    );
    assert_eq!(echoed_header(&echo, "x-allowed").as_deref(), Some("1"));
    let hosts: Vec<_> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "host")
        .map(|h| h[1].clone())
        .collect();
    assert_eq!(hosts, ["renamed.example"], "one Host, the filter's");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echoed_header(&echo, "content-length"), None);
    assert_eq!(
        echoed_header(&echo, "transfer-encoding").as_deref(),
        Some("chunked"),
        "the removed Content-Length reframed the upstream body"
    );
    // On the response a filter may remove Content-Length, and only that.
    assert_eq!(
        first.header("x-framing"),
        Some(
            "set:content-length=2 add:transfer-encoding=2 set:connection=2 remove:content-length=0"
        )
    );
    assert_eq!(second.status, 200);
    assert_eq!(second.echo()["uri"], "/after", "no /admin was answered");
    let log = proxy.log();
    assert!(
        log.contains(
            "proxy_replace_header_map_value refused: content-length on the downstream request \
             is the host's (a filter may only remove content-length)"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v1_guest_cannot_edit_framing() {
    let upstream = Upstream::plain().await;
    let tenant = |hook: &str| {
        format!(
            "  - name: {hook}\n    hosts: [\"{hook}.example\"]\n    module: GUESTS/hostile.wasm\n    \
             config: {{ upstream: \"{}\", misbehave: framing, hook: {hook} }}\n",
            upstream.addr
        )
    };
    let yaml = format!(
        "tenants:\n{}{}{}  - name: method\n    hosts: [\"method.example\"]\n    \
         module: GUESTS/hostile.wasm\n    config: {{ upstream: \"{}\", misbehave: method, \
         hook: request_filter }}\n",
        tenant("request_filter"),
        tenant("upstream_request_filter"),
        tenant("response_filter"),
        upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();

    for (hook, line) in [
        (
            "request_filter",
            "invalid output: content-length on the downstream request is the host's (it frames \
             the body)",
        ),
        (
            "response_filter",
            "invalid output: transfer-encoding on the response is the host's (a filter may only \
             remove content-length)",
        ),
    ] {
        let (status, _) = as_tenant(&client, &proxy, &format!("{hook}.example"), &[]).await;
        assert_eq!(status, 500, "{hook}: {}", proxy.log());
        let log = proxy.wait_for_log(line);
        assert!(log.contains(line), "{log}");
    }

    // On the upstream request the host frames the body it sends, after
    // the guest: its `Content-Length: 5` and `Connection: close` are
    // undone.
    let response = client
        .post(proxy.url("/upload"))
        .header("host", "upstream_request_filter.example")
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(echo["body"], "hello world");
    assert_eq!(
        echoed_header(&echo, "content-length").as_deref(),
        Some("11")
    );
    assert_ne!(echoed_header(&echo, "connection").as_deref(), Some("close"));

    // A HEAD made GET would get a GET's body on a connection whose client
    // reads none: refused. The same change to a GET is no change.
    let head = client
        .head(proxy.url("/"))
        .header("host", "method.example")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 500, "{}", proxy.log());
    let line = "invalid output: changing the downstream request's method from HEAD to GET \
                (the response is framed by it)";
    let log = proxy.wait_for_log(line);
    assert!(log.contains(line), "{log}");
    let (status, _) = as_tenant(&client, &proxy, "method.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_s_bad_deploy_is_its_own() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    // `shaky`'s filter configuration is its version: `{}` loads, one with
    // an unknown field makes its `on_configure` return false.
    let yaml = |shaky: &str, extra: &str| {
        format!(
            r#"
tenants:
  - name: steady
    hosts: ["steady.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
  - name: shaky
    hosts: ["shaky.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {shaky}
{extra}"#,
            u = upstream.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = tenants_proxy(&dir, &yaml("{}", ""), &["--metrics", &metrics]);
    let client = client();
    let count = |body: &str| {
        let echo: Value = serde_json::from_str(body).unwrap();
        echoed_header(&echo, "x-pw-count")
    };
    for expected in 1..=3 {
        let (status, body) = as_tenant(&client, &proxy, "steady.example", &[]).await;
        assert_eq!(status, 200, "{}", proxy.log());
        assert_eq!(count(&body), Some(expected.to_string()));
    }

    // shaky's new version fails to configure; a new tenant fails too; a
    // third is added.
    let extra = format!(
        r#"  - name: newcomer
    hosts: ["newcomer.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ colour: red }}
  - name: added
    hosts: ["added.example"]
    upstream: "{u}"
"#,
        u = upstream.addr
    );
    write_tenants(&path, &yaml("{ colour: red }", &extra));
    proxy.hangup();
    let line = "reloaded tenants (";
    let log = proxy.wait_for_log(line);
    assert!(log.contains("(failed to load: shaky, newcomer)"), "{log}");
    assert!(
        log.contains(
            "tenant shaky: its new configuration failed to load, its previous version keeps serving"
        ),
        "{log}"
    );
    assert!(
        log.contains("tenant newcomer: failed to load, not added"),
        "{log}"
    );

    // steady was not touched: its filter's state goes on from 3.
    let (status, body) = as_tenant(&client, &proxy, "steady.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert_eq!(count(&body), Some("4".to_string()), "steady was rebuilt");
    // shaky serves its previous version; newcomer is not there; added is.
    let (status, _) = as_tenant(&client, &proxy, "shaky.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let (status, body) = as_tenant(&client, &proxy, "newcomer.example", &[]).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = as_tenant(&client, &proxy, "added.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let text = scrape(&client, &metrics).await;
    for (tenant, ok) in [("steady", 1), ("shaky", 0), ("newcomer", 0), ("added", 1)] {
        let series = format!(r#"wasm_proxy_tenant_config_ok{{tenant="{tenant}"}}"#);
        assert_eq!(metric_value(&text, &series), ok, "{tenant}\n{text}");
    }
    // Built once, at start-up: the reload carried it over.
    let loads = r#"wasm_proxy_module_loads_total{tenant="steady"}"#;
    assert_eq!(metric_value(&text, loads), 1, "{text}");

    // Fixed: shaky takes its new version.
    write_tenants(&path, &yaml("{ misbehave: none }", ""));
    proxy.hangup();
    let started = std::time::Instant::now();
    loop {
        let text = scrape(&client, &metrics).await;
        if metric_value(&text, r#"wasm_proxy_tenant_config_ok{tenant="shaky"}"#) == 1 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = as_tenant(&client, &proxy, "steady.example", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(count(&body), Some("5".to_string()), "steady was rebuilt");
    let text = scrape(&client, &metrics).await;
    assert_eq!(metric_value(&text, loads), 1, "{text}");

    // A broken deploy cannot keep a grant the operator takes away: shaky's
    // new filter fails while its limits change, so its previous version
    // (with the old limits) goes out of service.
    // It is also the default tenant: its hosts and the others' unknown
    // ones get 404, never a neighbour, and the reload still applies.
    let tightened = yaml("{ colour: red }", "")
        .replace(
            "  - name: shaky\n",
            "  - name: shaky\n    limits: { max_instances: 5 }\n",
        )
        .replace("tenants:\n", "default_tenant: shaky\ntenants:\n");
    write_tenants(&path, &tightened);
    proxy.hangup();
    let line = "tenant shaky: its new configuration failed to load and changes what it is granted";
    let log = proxy.wait_for_log(line);
    assert!(log.contains(line), "{log}");
    let (status, body) = as_tenant(&client, &proxy, "shaky.example", &[]).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = as_tenant(&client, &proxy, "unknown.example", &[]).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = as_tenant(&client, &proxy, "steady.example", &[]).await;
    assert_eq!(status, 200);
    assert!(!proxy.log().contains("reload refused"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_callback_does_not_hold_its_worker() {
    // Callbacks run on the worker's stack (no fiber); one that runs past
    // its first slice hands its worker's other requests to another thread.
    for callback in ["request_headers", "response_body"] {
        a_long_callback_leaves_the_neighbour_served(callback).await;
    }
}

async fn a_long_callback_leaves_the_neighbour_served(callback: &str) {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: slow
    hosts: ["slow.example"]
    upstream: "{u}"
    limits: {{ hook_timeout_ms: 4000, cpu_ms_per_s: 64000 }}
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: loop, in: {callback} }}
  - name: neighbour
    hosts: ["neighbour.example"]
    upstream: "{u}"
"#,
        u = upstream.addr,
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();

    // Two callbacks that spin to their deadline, one per Pingora worker
    // thread (the proxy runs two).
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, url) = (client.clone(), proxy.url("/"));
        slow.spawn(async move {
            let _ = client.get(&url).header("host", "slow.example").send().await;
        });
    }
    let started = std::time::Instant::now();
    let line = format!("pw_hostile: loop in {callback}");
    while proxy.log().matches(&line).count() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // While both spin, the neighbour is served: the workers' other
    // requests went to other threads.
    let (status, _) = as_tenant(&client, &proxy, "neighbour.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    // Both slow requests are still running when the neighbour is
    // answered (a finished task would be joined here).
    assert!(slow.try_join_next().is_none(), "{}", proxy.log());
    while slow.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_s_spinning_ticks_do_not_delay_another_s() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: spinner
    hosts: ["spinner.example"]
    upstream: "{u}"
    limits: {{ hook_timeout_ms: 3000, cpu_ms_per_s: 64000 }}
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: loop, in: tick }}
  - name: ticker
    hosts: ["ticker.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
        config: "20"
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let started = std::time::Instant::now();
    while !proxy.log().contains("pw_hostile: loop in tick") {
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The spinner's tick runs for 3 s; meanwhile the ticker's come every
    // 20 ms (run one after another, it would get one per spin).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let (_, headers, _) =
        get_response(&client, &proxy.url("/"), &[("host", "ticker.example")]).await;
    let ticks: u64 = headers["x-pw-ticks"].to_str().unwrap().parse().unwrap();
    assert!(ticks >= 10, "{ticks} ticks\n{}", proxy.log());
    assert_eq!(
        proxy.log().matches("pw_hostile: loop in tick").count(),
        1,
        "the spinner's ticks do not overlap"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_cannot_flood_what_the_host_keeps_for_it() {
    let upstream = Upstream::plain().await;
    let yaml = format!(
        r#"
tenants:
  - name: flooder
    hosts: ["flooder.example"]
    upstream: "{u}"
    limits: {{ shared_data_bytes: 1048576, max_metrics: 10, hook_timeout_ms: 5000 }}
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {{ misbehave: flood }}
  - name: neighbour
    hosts: ["neighbour.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
"#,
        u = upstream.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let (status, body) = as_tenant(&client, &proxy, "flooder.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    let report = echoed_header(&echo, "x-flood").expect("the filter's report");
    // BAD_ARGUMENT (2) for a copy past the host's bound or a map past its
    // count; INTERNAL_FAILURE (10) past a tenant limit. Sixteen 64 KiB
    // values with their keys pass 1 MiB: fifteen fit.
    assert_eq!(
        report,
        "big-property=2 properties=256+2 big-header=2 headers-stopped=2 shared=15+10 \
         metrics=10+10 big-metric-name=2 big-callout=2"
    );
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        headers.iter().all(|h| {
            let name = h[0].as_str().unwrap();
            name.strip_prefix("x-f")
                .is_none_or(|n| n.parse::<u32>().is_err())
        }),
        "the flood's headers were removed"
    );
    let log = proxy.log();
    for line in [
        "hostcall refused: a body of 1048577 bytes (the host copies at most 1048576)",
        "hostcall refused: a header map of 1025 fields (the host keeps at most 1024)",
        "hostcall refused: a name of 16385 bytes (the host copies at most 16384)",
    ] {
        assert!(log.contains(line), "{line}\n{log}");
    }
    // The neighbour, with the same kinds of state, is untouched.
    let (status, body) = as_tenant(&client, &proxy, "neighbour.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-pw-count").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_s_metric_series_go_with_the_version_that_defined_them() {
    let upstream = Upstream::plain().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let yaml = |flooder: &str, ticks: &str| {
        format!(
            r#"
tenants:
  - name: flooder
    hosts: ["flooder.example"]
    upstream: "{u}"
    # The flood is slow in a debug build on a loaded machine: this test
    # is about metric series, not the guest-time budget.
    limits: {{ max_metrics: 10, hook_timeout_ms: 5000, cpu_ms_per_s: 1000 }}
    filters:
      - module: GUESTS/pw_hostile.wasm
        config: {flooder}
  - name: counter
    hosts: ["counter.example"]
    upstream: "{u}"
    filters:
      - module: GUESTS/pw_counter.wasm
        config: "{ticks}"
"#,
            u = upstream.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = tenants_proxy(
        &dir,
        &yaml("{ misbehave: flood }", ""),
        &["--metrics", &metrics],
    );
    let client = client();
    for host in ["flooder.example", "counter.example"] {
        let (status, _) = as_tenant(&client, &proxy, host, &[]).await;
        assert_eq!(status, 200, "{}", proxy.log());
    }
    let flood =
        r#"wasm_proxy_filter_metric{filter="pw_hostile.wasm",metric="flood_0",tenant="flooder"}"#;
    let requests = r#"wasm_proxy_filter_metric{filter="pw_counter.wasm",metric="pw_counter_requests",tenant="counter"}"#;
    let text = scrape(&client, &metrics).await;
    assert!(text.contains(flood), "{text}");
    assert_eq!(metric_value(&text, requests), 1);

    // Both rebuilt: the flooder's new version defines no metric, the
    // counter's new version the same ones as before.
    write_tenants(&path, &yaml("{}", "5000"));
    proxy.hangup();
    proxy.wait_for_log("reloaded tenants (");
    let (status, _) = as_tenant(&client, &proxy, "counter.example", &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let text = scrape(&client, &metrics).await;
    assert!(
        !text.contains(flood),
        "the old version's series stayed:\n{text}"
    );
    // The series goes on, written by the new version.
    assert!(metric_value(&text, requests) >= 1, "{text}");
}
