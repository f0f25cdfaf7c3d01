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
