//! Concurrency through one proxy.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_all_succeed() {
    let upstream = Upstream::plain().await;
    let proxy = Proxy::start(ProxyOptions::new(
        "ctx_relay",
        json!({"upstream": upstream.addr.to_string()}),
    ));
    let client = client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, url) = (client.clone(), proxy.url(&format!("/load/{i}")));
        requests.spawn(async move {
            let stamp = i.to_string();
            let (status, body) = get(&client, &url, &[("x-stamp", &stamp)]).await;
            (stamp, status, body)
        });
    }
    let mut ok = 0;
    while let Some(result) = requests.join_next().await {
        let (stamp, status, body) = result.unwrap();
        assert_eq!(status, 200, "{body}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed_header(&echo, "x-ctx-stamp"), Some(stamp));
        ok += 1;
    }
    assert_eq!(ok, 200);
}
