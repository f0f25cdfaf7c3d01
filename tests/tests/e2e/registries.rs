//! Modules from registries: tenants' modules and filters pulled from a
//! real OCI registry (Debian's `docker-registry`, distribution 2.8, on
//! loopback) by tag and by digest, in both layouts, pushed with
//! `oci-client`; checked by digest, cached, and served when the registry
//! is down.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::support::*;

/// A `docker-registry` on a free loopback port, storing in a temporary
/// directory; killed on drop.
struct Registry {
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
    auth: RegistryAuth,
}

impl Registry {
    /// A registry anyone may push to and pull from.
    fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry behind HTTP basic auth (htpasswd) for `user`:`password`.
    fn with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_with(Some((user, password)))
    }

    fn start_with(basic: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: test\n",
            dir.path().join("data").display()
        );
        let auth = match basic {
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils)");
                std::fs::write(&htpasswd, out.stdout).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    htpasswd.display()
                ));
                RegistryAuth::Basic(user.into(), password.into())
            }
            None => RegistryAuth::Anonymous,
        };
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's docker-registry package)");
        let registry = Registry {
            addr,
            child,
            dir,
            auth,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "registry start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    fn client() -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }

    fn reference(&self, name: &str) -> Reference {
        format!("{}/{name}", self.addr).parse().unwrap()
    }

    /// Pushes `bytes` as a CNCF wasm artifact `name` (`repo:tag`); the
    /// manifest's digest.
    async fn push_wasm(&self, name: &str, bytes: &[u8]) -> String {
        let layer = ImageLayer::new(bytes.to_vec(), "application/wasm".into(), None);
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.wasm.config.v0+json".into(),
            None,
        );
        self.push(name, vec![layer], config, None).await
    }

    /// Pushes `bytes` in Istio's compat layout: one tar+gzip layer
    /// holding `plugin.wasm`, annotated `module.wasm.image/variant=compat`.
    async fn push_compat(&self, name: &str, bytes: &[u8]) -> String {
        self.push_compat_as(name, bytes, "application/vnd.oci.image.layer.v1.tar+gzip")
            .await
    }

    /// As [`push_compat`](Self::push_compat), with the layer's media type.
    async fn push_compat_as(&self, name: &str, bytes: &[u8], media_type: &str) -> String {
        let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, "plugin.wasm", bytes)
            .unwrap();
        let layer = archive.into_inner().unwrap().finish().unwrap();
        let layer = ImageLayer::new(layer, media_type.into(), None);
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.oci.image.config.v1+json".into(),
            None,
        );
        let annotations = BTreeMap::from([(
            "module.wasm.image/variant".to_string(),
            "compat".to_string(),
        )]);
        self.push(name, vec![layer], config, Some(annotations))
            .await
    }

    async fn push(
        &self,
        name: &str,
        layers: Vec<ImageLayer>,
        config: Config,
        annotations: Option<BTreeMap<String, String>>,
    ) -> String {
        let client = Self::client();
        let reference = self.reference(name);
        let manifest = OciImageManifest::build(&layers, &config, annotations);
        client
            .push(&reference, &layers, config, &self.auth, Some(manifest))
            .await
            .unwrap();
        client
            .fetch_manifest_digest(&reference, &self.auth)
            .await
            .unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dir.path();
    }
}

/// The hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    let digest = openssl::sha::sha256(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// The proxy on `yaml`, with its module cache in `cache`.
fn proxy_with_cache(dir: &tempfile::TempDir, yaml: &str, cache: &Path) -> (Proxy, PathBuf) {
    let cache = cache.display().to_string();
    tenants_proxy(dir, yaml, &["--module-cache", &cache])
}

/// A tenant entry routing to `upstream` with first_proxy's config.
fn tenant(name: &str, module: &str, extra: &str, upstream: &Upstream) -> String {
    format!(
        "  - name: {name}\n    hosts: [\"{name}.example\"]\n    module: \"{module}\"\n{extra}    \
         config: {{ upstream: \"{}\", tls: false, host: \"{name}-upstream\" }}\n",
        upstream.addr
    )
}

async fn status(client: &reqwest::Client, proxy: &Proxy, host: &str) -> u16 {
    get(client, &proxy.url("/"), &[("host", host)]).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_pulled_by_tag_by_digest_and_in_istio_s_compat_layout() {
    let registry = Registry::start();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    let digest = registry.push_wasm("team/policy:v1", &module).await;
    registry.push_compat("team/policy-compat:v1", &module).await;
    // As `docker build` packages it: Docker's layer media type.
    registry
        .push_compat_as(
            "team/policy-docker:v1",
            &module,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
        .await;
    let filter = wasm("pw_bench");
    registry.push_wasm("team/auth-filter:v3", &filter).await;
    let r = &registry.addr;
    let yaml = format!(
        "registries:\n  \"{r}\": {{ plain_http: true }}\ntenants:\n{}{}{}{}",
        tenant("tag", &format!("oci://{r}/team/policy:v1"), "", &upstream)
            + &format!("    filters:\n      - module: \"oci://{r}/team/auth-filter:v3\"\n"),
        tenant(
            "docker",
            &format!("oci://{r}/team/policy-docker:v1"),
            "",
            &upstream
        ),
        tenant(
            "pinned",
            &format!("oci://{r}/team/policy@{digest}"),
            "",
            &upstream
        ),
        tenant(
            "checked",
            &format!("oci://{r}/team/policy-compat:v1"),
            &format!("    sha256: \"{}\"\n", sha256_hex(&module)),
            &upstream
        ),
    );
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (proxy, _) = proxy_with_cache(&dir, &yaml, cache.path());
    let client = client();
    for host in [
        "tag.example",
        "pinned.example",
        "checked.example",
        "docker.example",
    ] {
        assert_eq!(
            status(&client, &proxy, host).await,
            200,
            "{host}\n{}",
            proxy.log()
        );
    }
    // The filter pulled by tag runs: pw_bench adds x-pw to the response.
    let response = client
        .get(proxy.url("/"))
        .header("host", "tag.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-pw"], "1");
    let module_digest = format!("sha256:{}", sha256_hex(&module));
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "module oci://{r}/team/policy:v1 is {module_digest}"
        )),
        "{log}"
    );
    // Pulled into the cache by digest: first_proxy's bytes and pw_bench's.
    let kept = |bytes: &[u8]| cache.path().join("sha256").join(sha256_hex(bytes)).is_dir();
    assert!(kept(&module) && kept(&filter));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sha256_or_digest_fails_that_tenant_and_names_both_digests() {
    let registry = Registry::start();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    registry.push_wasm("team/policy:v1", &module).await;
    let r = &registry.addr;
    let wrong = sha256_hex(b"other bytes");
    let absent = format!("sha256:{}", sha256_hex(b"no such manifest"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "registries:\n  \"{r}\": {{ plain_http: true }}\ntenants:\n{}{}{}",
        tenant("good", &format!("oci://{r}/team/policy:v1"), "", &upstream),
        tenant(
            "checked",
            &format!("oci://{r}/team/policy:v1"),
            &format!("    sha256: \"{wrong}\"\n"),
            &upstream
        ),
        tenant(
            "pinned",
            &format!("oci://{r}/team/policy@{absent}"),
            "",
            &upstream
        ),
    );
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache_arg = cache.path().display().to_string();
    let (proxy, _) = tenants_proxy(
        &dir,
        &yaml,
        &["--module-cache", &cache_arg, "--metrics", &metrics],
    );
    let client = client();
    assert_eq!(
        status(&client, &proxy, "good.example").await,
        200,
        "{}",
        proxy.log()
    );
    assert_eq!(status(&client, &proxy, "checked.example").await, 404);
    assert_eq!(status(&client, &proxy, "pinned.example").await, 404);
    let log = proxy.log();
    let both = format!(
        "sha256 mismatch: the configuration says sha256:{wrong}, the module's bytes are sha256:{}",
        sha256_hex(&module)
    );
    assert!(log.contains(&both), "{log}");
    assert!(
        log.contains("tenant pinned: failed to load, not added"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "oci://{r}/team/policy@{absent}: pulling the manifest"
        )) && log.contains("the registry answered 404"),
        "{log}"
    );
    let text = scrape(&client, &metrics).await;
    let fetches = |result: &str| {
        let series = format!("wasm_proxy_module_fetch_total{{result=\"{result}\"}}");
        if text.contains(&series) {
            metric_value(&text, &series)
        } else {
            0
        }
    };
    assert_eq!(fetches("digest_mismatch"), 1, "{text}");
    assert_eq!(fetches("download_failure"), 1, "{text}");
    assert!(fetches("success") + fetches("cache_hit") >= 1, "{text}");
    let info = format!(
        "wasm_proxy_module_info{{digest=\"sha256:{}\",module=\"oci://{r}/team/policy:v1\",tenant=\"good\"}}",
        sha256_hex(&module)
    );
    assert_eq!(metric_value(&text, &info), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_down_at_start_serves_from_a_warm_cache_and_fails_a_cold_one() {
    let mut registry = Registry::start();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    let digest = registry.push_wasm("team/policy:v1", &module).await;
    let r = registry.addr.clone();
    let yaml = format!(
        "registries:\n  \"{r}\": {{ plain_http: true }}\ntenants:\n{}{}{}",
        tenant("tag", &format!("oci://{r}/team/policy:v1"), "", &upstream),
        tenant(
            "pinned",
            &format!("oci://{r}/team/policy@{digest}"),
            "",
            &upstream
        ),
        tenant(
            "local",
            &guest("first_proxy").display().to_string(),
            "",
            &upstream
        ),
    );
    let warm = tempfile::tempdir().unwrap();
    {
        let dir = tempfile::tempdir().unwrap();
        let (proxy, _) = proxy_with_cache(&dir, &yaml, warm.path());
        assert_eq!(status(&client(), &proxy, "tag.example").await, 200);
    }
    registry.stop();
    // Warm: the tag's last resolution serves, with a warning.
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = proxy_with_cache(&dir, &yaml, warm.path());
    let client = client();
    assert_eq!(
        status(&client, &proxy, "tag.example").await,
        200,
        "{}",
        proxy.log()
    );
    // Pinned and cached: served without asking the registry.
    assert_eq!(status(&client, &proxy, "pinned.example").await, 200);
    let log = proxy.log();
    assert_eq!(
        log.matches("the registry could not be reached").count(),
        1,
        "{log}"
    );
    drop(proxy);
    // Cold: that tenant fails, clearly; the other serves.
    let cold = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = proxy_with_cache(&dir, &yaml, cold.path());
    assert_eq!(
        status(&client, &proxy, "local.example").await,
        200,
        "{}",
        proxy.log()
    );
    assert_eq!(status(&client, &proxy, "tag.example").await, 404);
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "oci://{r}/team/policy:v1: the registry could not be reached, and the cache holds no \
             earlier resolution of this tag"
        )),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_moved_to_new_bytes_is_picked_up_by_a_reload() {
    let registry = Registry::start();
    let upstream = Upstream::plain().await;
    // The same module with a custom section more: other bytes, the same
    // behaviour.
    let first = wasm("first_proxy");
    let mut second = first.clone();
    second.extend_from_slice(&[0x00, 0x07, 0x01, b't', b'm', b'o', b'v', b'e', b'd']);
    registry.push_wasm("team/policy:v1", &first).await;
    let r = &registry.addr;
    let yaml = format!(
        "registries:\n  \"{r}\": {{ plain_http: true }}\ntenants:\n{}",
        tenant("tag", &format!("oci://{r}/team/policy:v1"), "", &upstream),
    );
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (proxy, _) = proxy_with_cache(&dir, &yaml, cache.path());
    let client = client();
    assert_eq!(status(&client, &proxy, "tag.example").await, 200);
    registry.push_wasm("team/policy:v1", &second).await;
    proxy.hangup();
    let moved = format!(
        "module oci://{r}/team/policy:v1 is sha256:{}",
        sha256_hex(&second)
    );
    let log = proxy.wait_for_log(&moved);
    assert!(log.contains(&moved), "{log}");
    // A reload where the tag names the same bytes rebuilds nothing.
    let reloads = log.matches("reloaded tenants (SIGHUP)").count();
    proxy.hangup();
    let started = Instant::now();
    while proxy.log().matches("reloaded tenants (SIGHUP)").count() == reloads {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.log().matches(&moved).count(), 1, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_basic_auth_takes_the_right_password_only() {
    let registry = Registry::with_basic_auth("bot", "s3cret");
    let upstream = Upstream::plain().await;
    registry
        .push_wasm("team/policy:v1", &wasm("first_proxy"))
        .await;
    let r = &registry.addr;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, password: &str| {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "{password}").unwrap();
    };
    write("right", "s3cret");
    // The same registry under another name (localhost), with a wrong
    // password: a registry's credentials are by host.
    write("wrong", "guess");
    let port = r.rsplit(':').next().unwrap();
    let other = format!("localhost:{port}");
    let yaml =
        format!(
        "registries:\n  \"{r}\": {{ plain_http: true, username: bot, password_file: right }}\n  \
         \"{other}\": {{ plain_http: true, username: bot, password_file: wrong }}\ntenants:\n{}{}",
        tenant("good", &format!("oci://{r}/team/policy:v1"), "", &upstream),
        tenant("bad", &format!("oci://{other}/team/policy:v1"), "", &upstream),
    );
    let cache = tempfile::tempdir().unwrap();
    let (proxy, _) = proxy_with_cache(&dir, &yaml, cache.path());
    let client = client();
    assert_eq!(
        status(&client, &proxy, "good.example").await,
        200,
        "{}",
        proxy.log()
    );
    assert_eq!(status(&client, &proxy, "bad.example").await, 404);
    let log = proxy.log();
    assert!(
        log.contains("tenant bad: failed to load, not added"),
        "{log}"
    );
    assert!(log.contains("401"), "{log}");
    assert!(!log.contains("s3cret") && !log.contains("guess"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_takes_the_same_urls() {
    let registry = Registry::start();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    registry.push_wasm("team/first_proxy:v1", &module).await;
    let r = &registry.addr;
    let cache = tempfile::tempdir().unwrap();
    let mut options = ProxyOptions::new(
        "first_proxy",
        serde_json::json!({ "upstream": upstream.addr.to_string(), "tls": false, "host": "cli" }),
    );
    options.module = format!("oci://{r}/team/first_proxy:v1").into();
    options.extra_args = [
        "--plain-http-registry",
        r,
        "--sha256",
        &sha256_hex(&module),
        "--module-cache",
        &cache.path().display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let proxy = Proxy::start(options);
    let (status, _) = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(status, 200, "{}", proxy.log());
    assert!(proxy
        .log()
        .contains(&format!("module oci://{r}/team/first_proxy:v1 is sha256:")));
    // A wrong --sha256 refuses the start, naming both digests.
    let mut options = ProxyOptions::new("first_proxy", serde_json::json!({}));
    options.module = format!("oci://{r}/team/first_proxy:v1").into();
    let wrong = sha256_hex(b"other");
    options.extra_args = ["--plain-http-registry", r, "--sha256", &wrong]
        .map(String::from)
        .to_vec();
    options
        .extra_args
        .extend(["--module-cache".into(), cache.path().display().to_string()]);
    let (exit, log) = run_to_exit(
        options,
        &["--listen".into(), format!("127.0.0.1:{}", free_port())],
    );
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains(&format!("the configuration says sha256:{wrong}")),
        "{log}"
    );
}

/// An HTTPS server on loopback answering `bytes` at `/policy.wasm` (404
/// elsewhere) with a certificate from `ca`; the requests it served.
async fn https_module_server(
    ca: &TestCa,
    dir: &Path,
    bytes: Vec<u8>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let leaf = ca.issue(dir, "modules", &["localhost", "127.0.0.1"], VALID);
    let mut acceptor =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls()).unwrap();
    acceptor
        .set_private_key_file(&leaf.key_path, openssl::ssl::SslFiletype::PEM)
        .unwrap();
    acceptor
        .set_certificate_chain_file(&leaf.cert_path)
        .unwrap();
    let acceptor = Arc::new(acceptor.build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let (count, bytes) = (served.clone(), bytes::Bytes::from(bytes));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count, bytes) = (acceptor.clone(), count.clone(), bytes.clone());
            tokio::spawn(async move {
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut stream = tokio_openssl::SslStream::new(ssl, stream).unwrap();
                if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                    return;
                }
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let found = request.uri().path() == "/policy.wasm";
                    let body = if found {
                        bytes.clone()
                    } else {
                        bytes::Bytes::new()
                    };
                    let mut response = hyper::Response::new(http_body_util::Full::new(body));
                    if !found {
                        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                    }
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_module_needs_its_sha256_and_is_fetched_once() {
    let ca = TestCa::new();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    let dir = tempfile::tempdir().unwrap();
    let (server, served) = https_module_server(&ca, dir.path(), module.clone()).await;
    let url = format!("https://localhost:{}/policy.wasm", server.port());
    let sha = sha256_hex(&module);
    let yaml = format!(
        "tenants:\n{}",
        tenant("web", &url, &format!("    sha256: \"{sha}\"\n"), &upstream),
    );
    let path = dir.path().join("tenants.yaml");
    let cache = tempfile::tempdir().unwrap();
    let options = |cache: &Path| {
        let mut options = ProxyOptions::new("first_proxy", serde_json::json!({}));
        options.tenants = Some(path.clone());
        options.extra_args = vec!["--module-cache".into(), cache.display().to_string()];
        // The test CA, as a deployment adds its own: OpenSSL reads it.
        options.env = vec![("SSL_CERT_FILE".into(), ca.ca_pem_path.display().to_string())];
        options
    };
    // Without its sha256 the file is refused, by file, line and key.
    write_tenants(
        &path,
        &format!("tenants:\n{}", tenant("web", &url, "", &upstream)),
    );
    let listen = vec!["--listen".to_string(), format!("127.0.0.1:{}", free_port())];
    let (exit, log) = run_to_exit(options(cache.path()), &listen);
    assert!(!exit.success());
    assert!(
        log.contains("tenants[0].module: tenant \"web\": ")
            && log.contains("an http(s):// module needs its `sha256`"),
        "{log}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    write_tenants(&path, &yaml);
    let proxy = Proxy::start(options(cache.path()));
    let client = client();
    assert_eq!(
        status(&client, &proxy, "web.example").await,
        200,
        "{}",
        proxy.log()
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(proxy);
    // Pinned by its digest and cached: a second start does not fetch it.
    let proxy = Proxy::start(options(cache.path()));
    assert_eq!(status(&client, &proxy, "web.example").await, 200);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_whose_fetch_fails_keeps_the_previous_module() {
    let registry = Registry::start();
    let upstream = Upstream::plain().await;
    let module = wasm("first_proxy");
    registry.push_wasm("team/policy:v1", &module).await;
    let r = &registry.addr;
    let yaml = |tag: &str| {
        format!(
            "registries:\n  \"{r}\": {{ plain_http: true }}\ntenants:\n{}",
            tenant(
                "tag",
                &format!("oci://{r}/team/policy:{tag}"),
                "",
                &upstream
            ),
        )
    };
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (proxy, path) = proxy_with_cache(&dir, &yaml("v1"), cache.path());
    let client = client();
    assert_eq!(status(&client, &proxy, "tag.example").await, 200);
    // A tag never pushed: the fetch fails, the tenant keeps serving v1.
    write_tenants(&path, &yaml("v2"));
    let log = proxy.wait_for_log("its previous version keeps serving");
    assert!(
        log.contains("team/policy:v2: pulling the manifest"),
        "{log}"
    );
    assert_eq!(status(&client, &proxy, "tag.example").await, 200);
}
