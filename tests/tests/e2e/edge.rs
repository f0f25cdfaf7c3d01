//! The edge: downstream TLS with the certificate chosen by SNI (tenants'
//! own, a default one, or none), HTTP/2 by ALPN and h2c, X-Forwarded-*
//! headers, certificate refusals and reloads, and a zero-downtime upgrade
//! (Pingora's `-u`) under load.
//!
//! TLS clients (`clients.rs`): openssl (a real handshake with SNI,
//! verified against the test CA and a name, the served leaf inspected)
//! speaking HTTP/1.1 by hand, and the `curl` binary for HTTP/2.

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clients::*;
use crate::support::*;

/// What every hook of the lifecycle guest adds to `x-ctx-seen`: the
/// upstream request's (at `upstream_request_filter`) and the response's.
const SEEN_UPSTREAM: &str = "request_filter,upstream_peer,upstream_request_filter";
const SEEN_RESPONSE: &str = "request_filter,upstream_peer,upstream_request_filter,response_filter";

/// A runtime for the upstreams of a test whose clients block.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

// ---------------------------------------------------------------------
// Proxies

/// A proxy serving the tenants file `yaml` (written into `dir`, where
/// its relative certificate paths point) with a TLS listener too.
fn tls_tenants_proxy(dir: &Path, yaml: &str, extra_args: &[&str]) -> (Proxy, std::path::PathBuf) {
    let path = dir.join("tenants.yaml");
    write_tenants(&path, yaml);
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.tenants = Some(path.clone());
    options.tls_listen = true;
    options.extra_args = strings(extra_args);
    (Proxy::start(options), path)
}

/// The lifecycle guest in front of `upstream`, logging each request.
fn lifecycle_options(upstream: &Upstream, extra_args: &[&str]) -> ProxyOptions {
    let config = json!({
        "upstream": upstream.addr.to_string(),
        "log": true,
        "redirects": {"/old": "/new"},
        "refuse_path": "/forbidden",
    });
    let mut options = ProxyOptions::new("lifecycle", config);
    options.extra_args = strings(extra_args);
    options
}

/// Two tenants with their own certificates: `a` for `a.example` and `b`
/// for `*.b.example`, first_proxy to `ua` (Host `a-upstream`) and `ub`
/// (Host `b-upstream`); the certificates are `a.pem`/`a.key` and
/// `b.pem`/`b.key` next to the tenants file.
fn two_tls_tenants(ua: &Upstream, ub: &Upstream) -> String {
    format!(
        r#"
tenants:
  - name: a
    hosts: ["a.example"]
    module: GUESTS/first_proxy.wasm
    config: {{ upstream: "{ua}", tls: false, host: "a-upstream" }}
    tls: {{ cert: a.pem, key: a.key }}
  - name: b
    hosts: ["*.b.example"]
    module: GUESTS/first_proxy.wasm
    config: {{ upstream: "{ub}", tls: false, host: "b-upstream" }}
    tls: {{ cert: b.pem, key: b.key }}
"#,
        ua = ua.addr,
        ub = ub.addr
    )
}

// ---------------------------------------------------------------------
// 1. Certificates by SNI

#[test]
fn certificates_are_chosen_by_sni_and_requests_reach_their_tenant() {
    let rt = runtime();
    let (ua, ub) = rt.block_on(async { (Upstream::plain().await, Upstream::plain().await) });
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "a", &["a.example"], VALID);
    ca.issue(dir.path(), "b", &["*.b.example"], VALID);
    let yaml = two_tls_tenants(&ua, &ub);
    let (mut proxy, _) = tls_tenants_proxy(dir.path(), &yaml, &[]);
    let tls = proxy.tls_addr();

    // Each tenant's certificate, verified against the name asked for.
    assert_eq!(
        served_names(tls, &ca, Some("a.example"), Some("a.example")),
        ["a.example"]
    );
    assert_eq!(
        served_names(tls, &ca, Some("x.b.example"), Some("x.b.example")),
        ["*.b.example"]
    );
    assert_eq!(
        served_names(tls, &ca, Some("deep.x.b.example"), None),
        ["*.b.example"],
        "the wildcard tenant's hosts match deeper names too"
    );

    // Requests reach the tenant, marked as having come over TLS.
    for (host, upstream) in [("a.example", "a-upstream"), ("x.b.example", "b-upstream")] {
        let reply = https_get(tls, &ca, host, "/over-tls");
        assert_eq!(reply.status, 200, "{reply:?}\n{}", proxy.log());
        let echo = reply.echo();
        assert_eq!(echoed_header(&echo, "host").as_deref(), Some(upstream));
        assert_eq!(
            echoed_header(&echo, "x-forwarded-proto").as_deref(),
            Some("https"),
            "{echo}"
        );
        assert_eq!(
            echoed_header(&echo, "x-forwarded-host").as_deref(),
            Some(host),
            "{echo}"
        );
        assert_eq!(echo["uri"], "/over-tls");
    }
    assert_eq!(ua.connections(), 1);
    assert_eq!(ub.connections(), 1);

    // No certificate for an unknown name (or none) and no --cert: the
    // handshake fails, even without verification on the client's side.
    for sni in [Some("c.example"), Some("b.example"), None] {
        let refused = handshake(tls, &ca, sni, None, &[]);
        assert!(
            refused.is_err(),
            "a handshake with SNI {sni:?} got a certificate: {:?}",
            refused.map(|s| dns_names(&peer_leaf(&s)))
        );
    }
    assert!(proxy.is_running());
    drop(proxy);

    // With --cert, the default certificate for every other name.
    let default = ca.issue(dir.path(), "default", &["default.example"], VALID);
    let (proxy, _) = tls_tenants_proxy(
        dir.path(),
        &yaml,
        &[
            "--cert",
            path_str(&default.cert_path),
            "--key",
            path_str(&default.key_path),
        ],
    );
    let tls = proxy.tls_addr();
    for sni in [Some("c.example"), None] {
        assert_eq!(
            served_names(tls, &ca, sni, Some("default.example")),
            ["default.example"],
            "SNI {sni:?}"
        );
    }
    assert_eq!(
        served_names(tls, &ca, Some("a.example"), Some("a.example")),
        ["a.example"]
    );
    assert_eq!(
        served_names(tls, &ca, Some("x.b.example"), Some("x.b.example")),
        ["*.b.example"]
    );
    let reply = https_get(tls, &ca, "a.example", "/");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        echoed_header(&reply.echo(), "host").as_deref(),
        Some("a-upstream")
    );
}

// ---------------------------------------------------------------------
// 2. HTTP/2 by ALPN

#[test]
fn http2_by_alpn_runs_every_hook_as_http1_does() {
    let rt = runtime();
    let upstream = rt.block_on(Upstream::plain());
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.issue(dir.path(), "localhost", &["localhost"], VALID);
    let mut options = lifecycle_options(
        &upstream,
        &[
            "--cert",
            path_str(&leaf.cert_path),
            "--key",
            path_str(&leaf.key_path),
        ],
    );
    options.tls_listen = true;
    let proxy = Proxy::start(options);
    let tls = proxy.tls_addr();
    let port = tls.port();

    // The listener offers h2 and http/1.1.
    let h2 = handshake(
        tls,
        &ca,
        Some("localhost"),
        Some("localhost"),
        &["h2", "http/1.1"],
    )
    .unwrap();
    assert_eq!(h2.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let h1 = handshake(
        tls,
        &ca,
        Some("localhost"),
        Some("localhost"),
        &["http/1.1"],
    )
    .unwrap();
    assert_eq!(h1.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    drop((h1, h2));

    let ca_file = path_str(&ca.ca_pem_path);
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let https = |flag: &str, path: &str, extra: &[&str]| {
        let url = url(path);
        let mut args = vec![flag, "--cacert", ca_file, "--resolve", &resolve, &url];
        args.extend_from_slice(extra);
        curl(&args).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()))
    };

    let authority = format!("localhost:{port}");
    let mut seen = Vec::new();
    for (flag, version, request_version, user) in [
        ("--http2", "2", "HTTP/2.0", "h2user"),
        ("--http1.1", "1.1", "HTTP/1.1", "h1user"),
    ] {
        let body = format!("body-of-{user}");
        let user_header = format!("x-user: {user}");
        let (used, reply) = https(flag, "/v?q=1", &["-H", &user_header, "--data", &body]);
        assert_eq!(used, version, "{reply:?}");
        assert_eq!(reply.status, 200, "{reply:?}\n{}", proxy.log());
        let echo = reply.echo();
        let header = |name: &str| echoed_header(&echo, name);
        assert_eq!(
            header("x-request-version").as_deref(),
            Some(request_version),
            "{echo}"
        );
        // request_filter: the ctx's user; upstream_peer: the echo
        // answered; upstream_request_filter: these headers.
        assert_eq!(header("x-ctx-user").as_deref(), Some(user), "{echo}");
        assert_eq!(header("x-ctx-seen").as_deref(), Some(SEEN_UPSTREAM));
        assert_eq!(echo["uri"], "/v?q=1", "{echo}");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["body"], body.as_str());
        // The upstream (HTTP/1.1) gets the :authority of h2 as Host, and
        // the guest read it as Host too.
        assert_eq!(header("host"), Some(authority.clone()), "{echo}");
        assert_eq!(header("x-request-host"), Some(authority.clone()), "{echo}");
        assert_eq!(
            header("x-forwarded-proto").as_deref(),
            Some("https"),
            "{echo}"
        );
        assert_eq!(
            header("x-forwarded-host"),
            Some(authority.clone()),
            "{echo}"
        );
        // response_filter.
        assert_eq!(reply.header("x-ctx-seen"), Some(SEEN_RESPONSE), "{reply:?}");
        seen.push((
            header("x-ctx-seen"),
            reply.header("x-ctx-seen").map(str::to_string),
        ));
        // logging.
        let line = format!("user={user} seen={SEEN_RESPONSE} error=-");
        let log = proxy.wait_for_log(&line);
        assert!(
            log.lines()
                .any(|l| l.contains("lifecycle: status=200") && l.contains(&line)),
            "no logging line {line:?}:\n{log}"
        );

        // Answers the guest writes itself, over each version.
        let (used, redirect) = https(flag, "/old", &[]);
        assert_eq!(used, version);
        assert_eq!(redirect.status, 301, "{redirect:?}");
        assert_eq!(redirect.header("location"), Some("/new"));
        let (used, refused) = https(flag, "/forbidden", &[]);
        assert_eq!(used, version);
        assert_eq!(refused.status, 403, "{refused:?}");

        // request_filter rewriting the path: the request keeps its Host.
        let (used, rewritten) = https(flag, "/v", &["-H", "x-rewrite-to: /rewritten"]);
        assert_eq!((used.as_str(), rewritten.status), (version, 200));
        let echo = rewritten.echo();
        assert_eq!(echo["uri"], "/rewritten", "{echo}");
        assert_eq!(echoed_header(&echo, "x-rewritten").as_deref(), Some("1"));
        assert_eq!(
            [
                echoed_header(&echo, "host"),
                echoed_header(&echo, "x-forwarded-host")
            ],
            [Some(authority.clone()), Some(authority.clone())],
            "HTTP/{used}: the Host and X-Forwarded-Host the upstream got after a rewrite: {echo}"
        );
    }
    assert_eq!(
        seen[0], seen[1],
        "the hooks that ran differ over h2 and h1.1"
    );
}

// ---------------------------------------------------------------------
// 3. h2c

#[test]
fn h2c_with_prior_knowledge_only_with_the_flag() {
    let rt = runtime();
    let upstream = rt.block_on(Upstream::plain());

    let proxy = Proxy::start(lifecycle_options(&upstream, &["--h2c"]));
    let url = proxy.url("/c");
    let (used, reply) =
        curl(&["--http2-prior-knowledge", &url]).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(used, "2", "{reply:?}");
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.echo();
    assert_eq!(
        echoed_header(&echo, "x-request-version").as_deref(),
        Some("HTTP/2.0")
    );
    assert_eq!(
        echoed_header(&echo, "x-ctx-seen").as_deref(),
        Some(SEEN_UPSTREAM)
    );
    assert_eq!(reply.header("x-ctx-seen"), Some(SEEN_RESPONSE));
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto").as_deref(),
        Some("http"),
        "{echo}"
    );
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(proxy.addr.to_string()),
        "{echo}"
    );
    // HTTP/1.1 on the same listener still works.
    let (used, reply) = curl(&["--http1.1", &url]).unwrap();
    assert_eq!((used.as_str(), reply.status), ("1.1", 200));
    assert_eq!(
        echoed_header(&reply.echo(), "x-request-version").as_deref(),
        Some("HTTP/1.1")
    );
    drop(proxy);

    // Without --h2c, prior knowledge gets no HTTP/2.
    let proxy = Proxy::start(lifecycle_options(&upstream, &[]));
    let url = proxy.url("/c");
    match curl(&["--http2-prior-knowledge", &url]) {
        Err(e) => println!("h2c without --h2c: {e}"),
        Ok((used, reply)) => {
            assert_ne!(used, "2", "served h2c without --h2c: {reply:?}");
            println!("h2c without --h2c: HTTP/{used} {}", reply.status);
        }
    }
    let (used, reply) = curl(&["--http1.1", &url]).unwrap();
    assert_eq!((used.as_str(), reply.status), ("1.1", 200));
}

// ---------------------------------------------------------------------
// 4. X-Forwarded-*

/// Every value of header `name` in an echo.
fn echoed_all(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str() == Some(name))
        .filter_map(|h| h[1].as_str().map(str::to_string))
        .collect()
}

fn forwarded(echo: &Value) -> [Vec<String>; 3] {
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].map(|n| echoed_all(echo, n))
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_by_default_and_none_with_the_flag() {
    let upstream = Upstream::plain().await;
    let client = client();
    let incoming = [
        ("host", "shop.example"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ];
    let proxy = Proxy::start(lifecycle_options(&upstream, &[]));
    let url = proxy.url("/f");
    let host = proxy.addr.to_string();
    // None incoming: the client's address, http, the request's Host.
    assert_eq!(
        forwarded_to(&client, &url, &[]).await,
        values(&["127.0.0.1"], &["http"], &[&host])
    );
    // Incoming ones: For appended to, Proto and Host replaced.
    assert_eq!(
        forwarded_to(&client, &url, &incoming).await,
        values(&["203.0.113.7, 127.0.0.1"], &["http"], &["shop.example"])
    );
    drop(proxy);

    let proxy = Proxy::start(lifecycle_options(&upstream, &["--no-forwarded-headers"]));
    let url = proxy.url("/f");
    assert_eq!(
        forwarded_to(&client, &url, &[]).await,
        values(&[], &[], &[])
    );
    // Incoming ones pass through untouched.
    assert_eq!(
        forwarded_to(&client, &url, &incoming).await,
        values(&["203.0.113.7"], &["https"], &["evil.example"])
    );
    drop(proxy);

    // A guest sees what the host added, and may remove it.
    let mut options = lifecycle_options(&upstream, &[]);
    options.module_config = Some(json!({
        "upstream": upstream.addr.to_string(),
        "remove_header": "x-forwarded-for",
    }));
    let proxy = Proxy::start(options);
    let host = proxy.addr.to_string();
    assert_eq!(
        forwarded_to(&client, &proxy.url("/f"), &[]).await,
        values(&[], &["http"], &[&host])
    );
}

/// The X-Forwarded-For, -Proto and -Host values the upstream got for a
/// GET of `url` with `headers` (which must answer 200).
async fn forwarded_to(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> [Vec<String>; 3] {
    let (status, body) = get(client, url, headers).await;
    assert_eq!(status, 200, "{body}");
    forwarded(&serde_json::from_str(&body).unwrap())
}

/// Expected X-Forwarded-For, -Proto and -Host values.
fn values(for_: &[&str], proto: &[&str], host: &[&str]) -> [Vec<String>; 3] {
    [for_, proto, host].map(|v| v.iter().map(|s| s.to_string()).collect())
}

// ---------------------------------------------------------------------
// 5. Zero-downtime upgrade

/// Pingora's conf `grace_period_seconds` and
/// `graceful_shutdown_timeout_seconds` in the upgrade test.
const GRACE_SECONDS: u64 = 1;
/// How long after SIGQUIT an old Pingora process keeps serving before its
/// graceful shutdown starts (pingora-core's fixed CLOSE_TIMEOUT).
const CLOSE_TIMEOUT_SECONDS: u64 = 5;

/// Client tasks of the upgrade load, each sending a GET every
/// millisecond or so (as soon as the previous one is answered).
const LOAD_TASKS: usize = 4;
/// Attempts of one GET of the upgrade load.
const ATTEMPTS: usize = 3;

/// One request of the upgrade load: when it started and ended (since the
/// load began), the Host the upstream saw (`old` or `new`) or what went
/// wrong, and the attempts retried before (when, why).
struct Outcome {
    started: Duration,
    ended: Duration,
    result: Result<String, String>,
    retried: Vec<(Duration, String)>,
}

/// One GET of the upgrade load. A GET that got no response at all (its
/// keep-alive connection was closed or reset under it) is tried again on
/// another connection, as browsers retry idempotent requests, up to
/// [`ATTEMPTS`] times; each retry is recorded.
async fn upgrade_get(client: &reqwest::Client, url: &str, t0: Instant) -> Outcome {
    let started = t0.elapsed();
    let mut retried = Vec::new();
    let result = loop {
        match client.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let host = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|echo| echoed_header(&echo, "host"));
                break match (status, host) {
                    (200, Some(host)) => Ok(host),
                    _ => Err(format!("{status} {body}")),
                };
            }
            Err(e) if !e.is_timeout() && retried.len() + 1 < ATTEMPTS => {
                retried.push((t0.elapsed(), format!("{e:?}")));
            }
            Err(e) => break Err(format!("{e:?}")),
        }
    };
    Outcome {
        started,
        ended: t0.elapsed(),
        result,
        retried,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_under_load_hands_over_without_failing_a_request() {
    let upstream = Upstream::plain().await;
    let conf_dir = tempfile::tempdir().unwrap();
    let options = |host: &str| {
        let config = json!({"upstream": upstream.addr.to_string(), "tls": false, "host": host});
        let mut options = ProxyOptions::new("first_proxy", config);
        options.conf_dir = Some(conf_dir.path().to_path_buf());
        options.grace_seconds = GRACE_SECONDS;
        // The deadline is wall-clock: with both processes and the load on
        // two cores, a hook was seen to pass 20 ms. This test is about the
        // hand-over, not deadlines (sandbox.rs holds those).
        options.extra_args = vec!["--hook-timeout-ms".into(), "1000".into()];
        options
    };
    let mut old = Proxy::start(options("old"));

    // Keep-alive HTTP/1.1 clients, back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut load = tokio::task::JoinSet::new();
    let client = client();
    for _ in 0..LOAD_TASKS {
        let (client, url, stop) = (client.clone(), old.url("/upgrade"), stop.clone());
        load.spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                outcomes.push(upgrade_get(&client, &url, t0).await);
                // Steady, not flat out: other tests share the machine.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            outcomes
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process waits on the upgrade socket for the listeners.
    let mut new = Proxy::upgrade(options("new"), old.addr);
    let socket = Proxy::upgrade_socket(conf_dir.path());
    let waited = Instant::now();
    while !socket.exists() {
        assert!(new.is_running(), "the new process exited:\n{}", new.log());
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no upgrade socket:\n{}",
            new.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let quit_at = t0.elapsed();
    old.quit();
    let exit_within = Duration::from_secs(CLOSE_TIMEOUT_SECONDS + 2 * GRACE_SECONDS + 4);
    let (old, exit_status) = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit(exit_within);
        (old, status)
    })
    .await
    .unwrap();
    let exited_at = t0.elapsed();
    // The new process alone now; some more load on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    while let Some(done) = load.join_next().await {
        outcomes.extend(done.expect("load task"));
    }

    let failures: Vec<(Duration, &String)> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| (o.started, e)))
        .collect();
    let retries: Vec<&(Duration, String)> = outcomes.iter().flat_map(|o| &o.retried).collect();
    let by = |host: &'static str| {
        outcomes
            .iter()
            .filter(move |o| o.result.as_deref() == Ok(host))
    };
    let first_new = by("new").map(|o| o.ended).min();
    let last_old = by("old").map(|o| o.ended).max();
    let since_quit = |at: Duration| at.saturating_sub(quit_at);
    eprintln!(
        "upgrade under load ({LOAD_TASKS} keep-alive clients): {} requests sent, {} attempts \
         got no response and were retried, {} failed; {} answered by old, {} by new; first \
         response from new {:?} after SIGQUIT, last from old {:?} after; old exited {:?} after \
         SIGQUIT ({exit_status:?})",
        outcomes.len(),
        retries.len(),
        failures.len(),
        by("old").count(),
        by("new").count(),
        first_new.map(since_quit),
        last_old.map(since_quit),
        since_quit(exited_at),
    );
    for (at, error) in &retries {
        eprintln!(
            "  retried an attempt that failed {:?} after SIGQUIT: {error}",
            since_quit(*at)
        );
    }
    for (started, error) in failures.iter().take(5) {
        eprintln!(
            "  failed request started {:?} after SIGQUIT: {error}",
            since_quit(*started)
        );
    }

    assert!(
        exit_status.is_some(),
        "the old process still runs {exit_within:?} after SIGQUIT:\n{}",
        old.log()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade, the first: {:?}\nold:\n{}\nnew:\n{}",
        failures.len(),
        outcomes.len(),
        failures.first(),
        old.log(),
        new.log()
    );
    // Once SIGQUIT arrives the old process closes each connection after
    // its response (`Connection: close`): no request is sent down a
    // keep-alive connection it then closes, so no attempt goes unanswered.
    assert!(
        retries.is_empty(),
        "{} attempts got no response, the first {:?} after SIGQUIT",
        retries.len(),
        retries.first().map(|(at, _)| since_quit(*at))
    );
    assert!(
        first_new.is_some(),
        "the new process answered nothing:\n{}",
        new.log()
    );
    let late_old = outcomes
        .iter()
        .filter(|o| o.started > exited_at && o.result.as_deref() != Ok("new"))
        .count();
    assert_eq!(late_old, 0, "requests after the old process exited");
    assert!(new.is_running(), "{}", new.log());
    // A fresh client (new connections) reaches the new process.
    let (status, body) = get(&crate::support::client(), &new.url("/after"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed_header(&echo, "host").as_deref(), Some("new"));
}

// ---------------------------------------------------------------------
// 6. Start-up refusals and an expired certificate

/// Runs the proxy with `args` after `--listen` and `--tls-listen` on
/// free ports; asserts it exited non-zero with one `error:` line, that
/// `message` is in that line (or, with `anywhere`, in stderr: clap's
/// usage errors continue on the next lines), and that nothing listened.
fn assert_refused(options: ProxyOptions, args: &[&str], message: &str, anywhere: bool) {
    let (plain, tls) = (free_port(), free_port());
    let mut all = strings(&[
        "--listen",
        &format!("127.0.0.1:{plain}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls}"),
    ]);
    all.extend(strings(args));
    let (status, log) = run_to_exit(options, &all);
    assert!(!status.success(), "exited 0 for {message:?}:\n{log}");
    let error_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(error_lines.len(), 1, "one error line expected:\n{log}");
    let found = if anywhere {
        log.contains(message)
    } else {
        error_lines[0].contains(message)
    };
    assert!(found, "expected {message:?} in:\n{log}");
    for port in [plain, tls] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something listened on {port}"
        );
    }
}

fn module_options() -> ProxyOptions {
    ProxyOptions::new(
        "first_proxy",
        json!({"upstream": "127.0.0.1:9", "tls": false}),
    )
}

#[test]
fn bad_certificates_and_flags_are_refused_at_start() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let a = ca.issue(dir.path(), "a", &["a.example"], VALID);
    let b = ca.issue(dir.path(), "b", &["b.example"], VALID);
    let (a_cert, a_key) = (path_str(&a.cert_path), path_str(&a.key_path));
    let b_key = path_str(&b.key_path);

    let cases: [(&[&str], &str, bool); 6] = [
        (
            &["--cert", "/nonexistent/cert.pem", "--key", a_key],
            "/nonexistent/cert.pem",
            false,
        ),
        (
            &["--cert", a_cert, "--key", "/nonexistent/key.pem"],
            "/nonexistent/key.pem",
            false,
        ),
        (&["--cert", a_cert, "--key", b_key], "does not match", false),
        (&["--cert", a_cert], "--key", true),
        (&["--key", a_key], "--cert", true),
        // --tls-listen without any certificate.
        (&[], "--cert", false),
    ];
    for (args, message, anywhere) in cases {
        assert_refused(module_options(), args, message, anywhere);
    }

    // The same from a tenants file: a missing certificate, a mismatched
    // key, and no tenant with a certificate.
    let tenant = |tls: &str| {
        format!(
            "tenants:\n  - name: a\n    hosts: [a.example]\n    module: GUESTS/first_proxy.wasm\n\
             \x20   config: {{upstream: \"127.0.0.1:9\", tls: false}}\n{tls}"
        )
    };
    for (yaml, message) in [
        (
            tenant("    tls: {cert: missing.pem, key: a.key}\n"),
            "missing.pem",
        ),
        (
            tenant("    tls: {cert: a.pem, key: missing.key}\n"),
            "missing.key",
        ),
        (
            tenant("    tls: {cert: a.pem, key: b.key}\n"),
            "does not match",
        ),
        (tenant(""), "--cert"),
        (
            // A certificate no SNI name could reach.
            "tenants:\n  - name: d\n    module: GUESTS/first_proxy.wasm\n\
             \x20   config: {upstream: \"127.0.0.1:9\", tls: false}\n\
             \x20   tls: {cert: a.pem, key: a.key}\ndefault_tenant: d\n"
                .to_string(),
            "it has none",
        ),
    ] {
        let path = dir.path().join("tenants.yaml");
        write_tenants(&path, &yaml);
        let mut options = module_options();
        options.tenants = Some(path);
        assert_refused(options, &[], message, false);
    }
}

#[test]
fn an_expired_certificate_is_served_with_a_warning() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let expired = ca.issue(dir.path(), "expired", &["old.example"], EXPIRED);
    let mut options = module_options();
    options.tls_listen = true;
    options.extra_args = strings(&[
        "--cert",
        path_str(&expired.cert_path),
        "--key",
        path_str(&expired.key_path),
    ]);
    let proxy = Proxy::start(options);
    let log = proxy.wait_for_log("expired");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("expired")),
        "no warning about the expired certificate:\n{log}"
    );
    let tls = proxy.tls_addr();
    let stream = handshake(tls, &ca, Some("old.example"), None, &[]).unwrap();
    assert_eq!(fingerprint(&peer_leaf(&stream)), fingerprint(&expired.cert));
    // A verifying client refuses it (the certificate is what it says).
    assert!(handshake(tls, &ca, Some("old.example"), Some("old.example"), &[]).is_err());
}

// ---------------------------------------------------------------------
// 7. Reloads

/// Lines of the proxy's log containing `needle`.
fn log_count(proxy: &Proxy, needle: &str) -> usize {
    proxy.log().matches(needle).count()
}

/// Waits (bounded) until the log has more than `before` `needle`s.
fn wait_log_count(proxy: &Proxy, needle: &str, before: usize) {
    let started = Instant::now();
    while log_count(proxy, needle) <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no new {needle:?}:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn certificates_reload_with_the_tenants_file_and_bad_ones_are_refused() {
    let rt = runtime();
    let upstream = rt.block_on(Upstream::plain());
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "first", &["a.example"], VALID);
    let second = ca.issue(dir.path(), "second", &["a.example"], VALID);
    let other = ca.issue(dir.path(), "other", &["a.example"], VALID);
    let yaml = |cert: &str, key: &str| {
        format!(
            r#"
tenants:
  - name: a
    hosts: ["a.example"]
    module: GUESTS/first_proxy.wasm
    config: {{ upstream: "{u}", tls: false, host: "a-upstream" }}
    tls: {{ cert: {cert}, key: {key} }}
"#,
            u = upstream.addr
        )
    };
    let (mut proxy, path) = tls_tenants_proxy(dir.path(), &yaml("first.pem", "first.key"), &[]);
    let tls = proxy.tls_addr();
    let served = || {
        let stream = handshake(tls, &ca, Some("a.example"), Some("a.example"), &[])
            .unwrap_or_else(|e| panic!("handshake: {e}\n{}", proxy.log()));
        fingerprint(&peer_leaf(&stream))
    };
    assert_eq!(served(), fingerprint(&first.cert));

    // Another valid certificate: served once reloaded.
    let before = log_count(&proxy, "reloaded tenants");
    write_tenants(&path, &yaml("second.pem", "second.key"));
    proxy.hangup();
    wait_log_count(&proxy, "reloaded tenants", before);
    let started = Instant::now();
    while served() != fingerprint(&second.cert) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still the first certificate after the reload:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A mismatched pair, then a missing file: the tenant's new version is
    // refused, its previous one (the second certificate) serves on.
    for (cert, key) in [("other.pem", "second.key"), ("missing.pem", "second.key")] {
        // Only a refusal names the file (it never loads): the file poll
        // and SIGHUP may each refuse it, and an earlier case's second
        // refusal must not stand for this one's.
        let before = log_count(&proxy, cert);
        write_tenants(&path, &yaml(cert, key));
        proxy.hangup();
        wait_log_count(&proxy, cert, before);
        let kept = "tenant a: its new configuration failed to load, its previous version keeps \
                    serving";
        assert!(proxy.log().contains(kept), "{}", proxy.log());
        for _ in 0..5 {
            assert_eq!(
                served(),
                fingerprint(&second.cert),
                "{cert} with {key}:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_ne!(fingerprint(&other.cert), fingerprint(&second.cert));
    }
    // A set with no certificate left for the TLS listener: refused too.
    let before = log_count(&proxy, "left without a certificate");
    let no_tls = yaml("second.pem", "second.key")
        .replace("    tls: { cert: second.pem, key: second.key }\n", "");
    assert!(!no_tls.contains("tls: {"), "{no_tls}");
    write_tenants(&path, &no_tls);
    proxy.hangup();
    wait_log_count(&proxy, "left without a certificate", before);
    assert_eq!(served(), fingerprint(&second.cert));

    let reply = https_get(tls, &ca, "a.example", "/");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        echoed_header(&reply.echo(), "host").as_deref(),
        Some("a-upstream")
    );
    assert!(proxy.is_running());
}

#[test]
fn the_default_certificate_reloads_when_its_files_change() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "default", &["localhost"], VALID);
    let next = ca.issue(dir.path(), "next", &["localhost"], VALID);
    let mut options = module_options();
    options.tls_listen = true;
    options.extra_args = strings(&[
        "--cert",
        path_str(&first.cert_path),
        "--key",
        path_str(&first.key_path),
    ]);
    let proxy = Proxy::start(options);
    let tls = proxy.tls_addr();
    let served = || {
        let stream = handshake(tls, &ca, Some("localhost"), Some("localhost"), &[])
            .unwrap_or_else(|e| panic!("handshake: {e}\n{}", proxy.log()));
        fingerprint(&peer_leaf(&stream))
    };
    assert_eq!(served(), fingerprint(&first.cert));

    // Renewed in place (key first, then certificate, each replaced whole):
    // the watcher reloads it, and the proxy serves the new one.
    let before = log_count(&proxy, "reloaded tenants");
    for (from, to) in [
        (&next.key_path, &first.key_path),
        (&next.cert_path, &first.cert_path),
    ] {
        let partial = to.with_extension("partial");
        std::fs::copy(from, &partial).unwrap();
        std::fs::rename(&partial, to).unwrap();
    }
    wait_log_count(&proxy, "reloaded tenants", before);
    let started = Instant::now();
    while served() != fingerprint(&next.cert) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still the first certificate:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------
// Properties a filter reads, over TLS

#[test]
fn a_filter_reads_envoy_s_attributes_back() {
    let rt = runtime();
    let upstream = rt.block_on(Upstream::plain());
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "a", &["a.example"], VALID);
    let paths = [
        "request.path",
        "request.url_path",
        "request.query",
        "request.host",
        "request.method",
        "request.protocol",
        "request.headers.x-probe",
        "request.headers:map",
        "request.time:int",
        "response.code:int",
        "source.port:int",
        "destination.port:int",
        "upstream.address",
        "upstream.port:int",
        "connection.mtls:bool",
        "connection.tls_version",
        "connection.requested_server_name",
        "plugin_name",
        "plugin_root_id",
        "no.such.thing",
    ];
    let yaml = format!(
        r#"
tenants:
  - name: a
    hosts: ["a.example"]
    upstream: "{u}"
    tls: {{ cert: a.pem, key: a.key }}
    filters:
      - module: GUESTS/pw_props.wasm
        root_id: props
        config: "{paths}"
"#,
        u = upstream.addr,
        paths = paths.join(",")
    );
    let (proxy, _) = tls_tenants_proxy(dir.path(), &yaml, &[]);
    let tls = proxy.tls_addr();
    let mut stream = handshake(tls, &ca, Some("a.example"), Some("a.example"), &[]).unwrap();
    let reply = http1_get(
        &mut stream,
        "a.example",
        "/p/q?x=1",
        &[("x-probe", "hello")],
    );
    assert_eq!(reply.status, 200, "{reply:?}\n{}", proxy.log());
    let prop = |name: &str| {
        reply
            .header(&format!("x-prop-{name}"))
            .unwrap_or_else(|| panic!("no x-prop-{name}: {reply:?}"))
            .to_string()
    };
    assert_eq!(prop("request-path"), "/p/q?x=1");
    assert_eq!(prop("request-url_path"), "/p/q");
    assert_eq!(prop("request-query"), "x=1");
    assert_eq!(prop("request-host"), "a.example");
    assert_eq!(prop("request-method"), "GET");
    assert_eq!(prop("request-protocol"), "HTTP/1.1");
    assert_eq!(prop("request-headers-x-probe"), "hello");
    assert_eq!(prop("request-headers"), "hello", "the map's x-probe entry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let time: i64 = prop("request-time").parse().unwrap();
    assert!(
        (now - 60_000_000_000..=now).contains(&time),
        "{time} vs {now}"
    );
    assert_eq!(prop("response-code"), "200");
    assert_eq!(prop("destination-port"), tls.port().to_string());
    assert!(prop("source-port").parse::<u16>().unwrap() > 0);
    assert_eq!(prop("upstream-address"), upstream.addr.to_string());
    assert_eq!(prop("upstream-port"), upstream.addr.port().to_string());
    assert_eq!(prop("connection-mtls"), "false");
    assert!(
        prop("connection-tls_version").starts_with("TLSv1."),
        "{reply:?}"
    );
    assert_eq!(prop("connection-requested_server_name"), "a.example");
    assert_eq!(prop("plugin_name"), "pw_props.wasm");
    assert_eq!(prop("plugin_root_id"), "props");
    assert_eq!(prop("no-such-thing"), "<absent>");
}
