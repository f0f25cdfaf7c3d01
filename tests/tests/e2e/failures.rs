//! What clients get when the upstream or the guest fails.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_gives_502() {
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(ProxyOptions::new(
        "first_proxy",
        json!({"upstream": dead, "tls": false}),
    ));
    let (status, _) = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(status, 502, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_refusal_gets_the_guests_status() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "ctx_relay",
        json!({"upstream": upstream.addr.to_string(), "deny_path": "/deny", "deny_status": 451}),
    ));
    let client = client();
    assert_eq!(get(&client, &proxy.url("/deny/this"), &[]).await.0, 451);
    assert_eq!(get(&client, &proxy.url("/allowed"), &[]).await.0, 200);
    assert_eq!(
        upstream.connections(),
        1,
        "the refused request never went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trapping_guest_gives_500_and_the_next_request_succeeds() {
    let upstream = Upstream::plain().await;
    let client = client();
    for misbehave in ["panic", "unreachable"] {
        let proxy = Proxy::start(ProxyOptions::new(
            "hostile",
            json!({"upstream": upstream.addr.to_string(), "misbehave": misbehave, "on_path": "/bad"}),
        ));
        for _ in 0..3 {
            assert_eq!(
                get(&client, &proxy.url("/bad"), &[]).await.0,
                500,
                "{misbehave}"
            );
            assert_eq!(
                get(&client, &proxy.url("/good"), &[]).await.0,
                200,
                "{misbehave}"
            );
        }
        let log = proxy.wait_for_log("upstream_peer failed: trap");
        assert!(
            log.contains("module hostile.wasm: upstream_peer failed: trap: wasm `unreachable`"),
            "{misbehave}: {log}"
        );
        if misbehave == "panic" {
            assert!(log.contains("hostile guest panics on purpose"), "{log}");
        }
    }
}
