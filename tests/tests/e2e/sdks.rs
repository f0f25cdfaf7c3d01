//! proxy-wasm filters written with SDKs other than Rust's, run unmodified:
//! the AssemblyScript SDK (`@solo-io/proxy-runtime` 0.1.8, ABI 0.2.0,
//! allocating through `malloc`, initialised by the wasm start section,
//! aborting through `wasi_unstable.proc_exit`). Their sources and build
//! are in tests/fixtures/assemblyscript.

use serde_json::Value;

use crate::support::*;

/// A tenants file with one tenant running `filter` (built from
/// tests/fixtures/assemblyscript) with `config`, its root context named
/// as the filter registers it. The SDK needs a configuration that is not
/// empty (docs/PROXY_WASM.md, "Other SDKs").
fn as_tenant(upstream: &Upstream, filter: &str, config: &str) -> String {
    format!(
        r#"
tenants:
  - name: as
    hosts: ["as.example"]
    upstream: "{u}"
    filters:
      - module: FIXTURES/assemblyscript/{filter}.wasm
        root_id: {filter}
        config: "{config}"
"#,
        u = upstream.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assemblyscript_header_filter_reads_its_configuration() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = as_tenant(&upstream, "as_headers", "from the tenants file");
    let (proxy, _) = tenants_proxy(&dir, &yaml, &[]);
    let client = client();
    let response = client
        .get(proxy.url("/some/path?q=1"))
        .header("host", "as.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", proxy.log());
    assert_eq!(response.headers()["x-as-path"], "/some/path?q=1");
    let echo: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        echoed_header(&echo, "x-as-config").as_deref(),
        Some("from the tenants file")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assemblyscript_filter_answers_403_with_a_body_and_a_header() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &as_tenant(&upstream, "as_deny", "on"), &[]);
    let client = client();
    let response = client
        .get(proxy.url("/deny/this"))
        .header("host", "as.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "{}", proxy.log());
    assert_eq!(response.headers()["x-denied-by"], "as_deny");
    assert_eq!(response.text().await.unwrap(), "denied by as_deny\n");
    let (status, _) = get(&client, &proxy.url("/allowed"), &[("host", "as.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assemblyscript_filter_logs_an_info_line() {
    let upstream = Upstream::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = tenants_proxy(&dir, &as_tenant(&upstream, "as_log", "on"), &[]);
    let client = client();
    let (status, _) = get(&client, &proxy.url("/logged"), &[("host", "as.example")]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    let line = "as_log: GET /logged";
    let log = proxy.wait_for_log(line);
    let logged = log.lines().find(|l| l.contains(line)).unwrap();
    assert!(logged.contains("INFO"), "{logged}");
}
