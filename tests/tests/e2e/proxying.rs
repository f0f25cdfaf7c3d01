//! Requests routed and rewritten by guests, to plain and TLS upstreams.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn first_proxy_sends_the_host_header_it_chose_to_a_plain_upstream() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": false, "host": "guest.example"}),
    ));
    let (status, body) = get(
        &client(),
        &proxy.url("/some/path?q=1"),
        &[("host", "client.example")],
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed_header(&echo, "host").as_deref(),
        Some("guest.example")
    );
    assert_eq!(echo["uri"], "/some/path?q=1");
    assert_eq!(echo["tls"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_proxy_speaks_tls_to_an_upstream_trusted_through_ca_file() {
    let ca = TestCa::new();
    let upstream = Upstream::tls(&ca).await;
    let mut options = ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": true, "sni": "localhost"}),
    );
    options.ca_file = Some(ca.ca_pem_path.clone());
    let proxy = Proxy::start(options);
    let (status, body) = get(&client(), &proxy.url("/tls"), &[]).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["tls"], true);
    assert_eq!(echoed_header(&echo, "host").as_deref(), Some("localhost"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_with_a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let upstream = Upstream::tls(&ca).await;
    let mut options = ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": true, "sni": "not-localhost.example"}),
    );
    options.ca_file = Some(ca.ca_pem_path.clone());
    let proxy = Proxy::start(options);
    let (status, _) = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(status, 502, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn ctx_set_in_upstream_peer_is_seen_by_upstream_request_filter() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "ctx_relay",
        json!({"upstream": upstream.addr.to_string()}),
    ));
    let client = client();
    for (i, stamp, status, body) in stamped_requests(&client, &proxy, 20, "/item/").await {
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed_header(&echo, "x-ctx-stamp"), Some(stamp.clone()));
        assert_eq!(
            echoed_header(&echo, "x-filter-saw-stamp"),
            Some(stamp),
            "the filter reads the upstream request"
        );
        assert_eq!(
            echoed_header(&echo, "x-ctx-path"),
            Some(format!("/item/{i}"))
        );
        assert_eq!(
            echoed_header(&echo, "x-ctx-peer-calls").as_deref(),
            Some("1")
        );
        assert_eq!(
            echoed_header(&echo, "x-stamp"),
            None,
            "the filter removed it"
        );
    }
    // A request without a stamp starts from a fresh ctx, not a previous one.
    let (_, body) = get(&client, &proxy.url("/fresh"), &[]).await;
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "x-ctx-stamp").as_deref(), Some("none"));
    assert_eq!(
        echoed_header(&echo, "x-filter-saw-stamp").as_deref(),
        Some("none")
    );
    assert_eq!(
        echoed_header(&echo, "x-ctx-peer-calls").as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_reuse_upstream_connections() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": false}),
    ));
    let client = client();
    const REQUESTS: usize = 20;
    for _ in 0..REQUESTS {
        let (status, _) = get(&client, &proxy.url("/"), &[]).await;
        assert_eq!(status, 200);
    }
    let opened = upstream.connections();
    assert!(
        opened < REQUESTS / 2,
        "{REQUESTS} sequential requests opened {opened} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listen_address_serves() {
    let upstream = Upstream::plain().await;
    let second = format!("127.0.0.1:{}", free_port());
    let mut options = ProxyOptions::new(
        "first_proxy",
        json!({"upstream": upstream.addr.to_string(), "tls": false}),
    );
    options.extra_args = vec!["--listen".into(), second.clone()];
    let proxy = Proxy::start(options);
    let client = client();
    assert_eq!(get(&client, &proxy.url("/"), &[]).await.0, 200);
    assert_eq!(get(&client, &format!("http://{second}/"), &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctx_travels_through_the_host_even_with_a_fresh_instance_per_call() {
    let upstream = Upstream::plain().await;
    let mut options =
        ProxyOptions::new("ctx_relay", json!({"upstream": upstream.addr.to_string()}));
    options.extra_args = vec!["--instance-reuse".into(), "1".into()];
    let proxy = Proxy::start(options);
    let client = client();
    for i in 0..5 {
        let stamp = format!("fresh-{i}");
        let (status, body) = get(&client, &proxy.url("/f"), &[("x-stamp", &stamp)]).await;
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed_header(&echo, "x-ctx-stamp"), Some(stamp));
    }
}
