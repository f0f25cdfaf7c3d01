//! Concurrency through one proxy.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_all_succeed() {
    let upstream = Upstream::plain().await;
    let mut options =
        ProxyOptions::new("ctx_relay", json!({"upstream": upstream.addr.to_string()}));
    // Under the whole suite on two cores a hook was seen to pass the
    // default 20 ms; this test is about concurrency, not deadlines.
    options.extra_args = vec!["--hook-timeout-ms".into(), "1000".into()];
    let proxy = Proxy::start(options);
    let client = client();
    let mut ok = 0;
    for (_, stamp, status, body) in stamped_requests(&client, &proxy, 200, "/load/").await {
        assert_eq!(status, 200, "{body}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed_header(&echo, "x-ctx-stamp"), Some(stamp));
        ok += 1;
    }
    assert_eq!(ok, 200);
}
