//! Test fixtures: upstream servers (plain and TLS) that echo what they
//! received, a test CA, and the proxy binary as a child process.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// How long a proxy may take to start listening (cold wasm compilation in
/// a debug build included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A guest module built by the host's build script.
pub(crate) fn guest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guests")
        .join(format!("{name}.wasm"))
}

/// A loopback port nothing listens on (right now).
pub(crate) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// An HTTP/1.1 upstream on loopback that answers every request with a JSON
/// echo of it (its body included, and its own port) and counts the
/// connections it accepted.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// A path answered 503 instead of the echo (a failing health check).
    failing_path: Arc<Mutex<Option<String>>>,
    /// Tells the accept loop to close the listener and every open
    /// connection, then end.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The accept loop; it owns every connection's task, so aborting it
    /// also closes the listener and all open connections.
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// A plain-text upstream.
    pub(crate) async fn plain() -> Upstream {
        Self::start(0, None).await
    }

    /// A plain-text upstream on `port` (for instance one a killed upstream
    /// listened on).
    pub(crate) async fn plain_at(port: u16) -> Upstream {
        Self::start(port, None).await
    }

    /// A TLS upstream presenting a certificate for `localhost` from `ca`.
    pub(crate) async fn tls(ca: &TestCa) -> Upstream {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_private_key(&ca.leaf_key).unwrap();
        acceptor.set_certificate(&ca.leaf_cert).unwrap();
        Self::start(0, Some(Arc::new(acceptor.build()))).await
    }

    async fn start(port: u16, tls: Option<Arc<SslAcceptor>>) -> Upstream {
        // tokio sets SO_REUSEADDR: a port whose connections were just
        // closed can be bound again at once.
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let failing_path = Arc::new(Mutex::new(None));
        let counter = connections.clone();
        let failing = failing_path.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Dropped with this task: aborts every connection's task.
            let mut open = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => accepted,
                    // Reap finished connections as they end.
                    Some(_) = open.join_next(), if !open.is_empty() => continue,
                };
                let Ok((stream, _)) = accepted else { break };
                counter.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                let failing = failing.clone();
                open.spawn(async move {
                    match tls {
                        None => serve(stream, false, addr.port(), failing).await,
                        Some(acceptor) => {
                            let ssl = Ssl::new(acceptor.context()).unwrap();
                            let mut stream = tokio_openssl::SslStream::new(ssl, stream).unwrap();
                            if std::pin::Pin::new(&mut stream).accept().await.is_ok() {
                                serve(stream, true, addr.port(), failing).await;
                            }
                        }
                    }
                });
            }
            drop(listener);
            // Aborts every connection's task and waits until they are gone
            // (their sockets closed).
            open.shutdown().await;
        });
        Upstream {
            addr,
            connections,
            failing_path,
            stop: Some(stop),
            task,
        }
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Answers `path` (exactly, query string excluded) with 503 from now
    /// on; `None` answers every path with the echo again.
    pub(crate) fn fail_path(&self, path: Option<&str>) {
        *self.failing_path.lock().unwrap() = path.map(str::to_string);
    }

    /// Stops listening and closes every open connection; returns once the
    /// port is free to bind again (`Upstream::plain_at(port)`).
    pub(crate) async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(stream: S, tls: bool, port: u16, failing_path: Arc<Mutex<Option<String>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let failing = failing_path.lock().unwrap().clone();
        async move {
            if failing.as_deref() == Some(req.uri().path()) {
                let mut response = Response::new(Full::new(Bytes::from_static(b"failing")));
                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(response);
            }
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            let req = Request::from_parts(parts, ());
            let headers: Vec<Value> = req
                .headers()
                .iter()
                .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
                .collect();
            // `x-echo-status` sets the answer's status, for response hooks.
            let status = req
                .headers()
                .get("x-echo-status")
                .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                .unwrap_or(200);
            let echo = json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
                "tls": tls,
                "port": port,
                "body": String::from_utf8_lossy(&body),
            });
            let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
            response.headers_mut().insert(
                "server",
                hyper::header::HeaderValue::from_static("echo-upstream"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The first value of header `name` in an upstream's echo.
pub(crate) fn echoed_header(echo: &Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str() == Some(name))
        .and_then(|h| h[1].as_str())
        .map(str::to_string)
}

/// A throwaway CA and a `localhost` certificate it signed.
pub(crate) struct TestCa {
    pub ca_pem_path: PathBuf,
    ca_key: PKey<Private>,
    ca_cert: X509,
    leaf_key: PKey<Private>,
    leaf_cert: X509,
    _dir: TempDir,
}

/// A leaf certificate `TestCa::issue` wrote: `cert_path` holds the leaf
/// then the CA (a chain), `key_path` its private key.
pub(crate) struct Leaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert: X509,
}

/// How long a leaf from `TestCa::issue` is valid: from `.0` to `.1` days
/// from now (negative: in the past).
pub(crate) const VALID: (i64, i64) = (-1, 2);
/// An expired leaf: valid from 10 days ago until yesterday.
pub(crate) const EXPIRED: (i64, i64) = (-10, -1);

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let ca_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let ca_cert = certificate("wasm-proxy test CA", &ca_key, None, &[], (0, 2));
        let leaf_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let leaf_cert = certificate(
            "localhost",
            &leaf_key,
            Some((&ca_cert, &ca_key)),
            &["localhost", "127.0.0.1"],
            (0, 2),
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_pem_path = dir.path().join("ca.pem");
        std::fs::write(&ca_pem_path, ca_cert.to_pem().unwrap()).unwrap();
        TestCa {
            ca_pem_path,
            ca_key,
            ca_cert,
            leaf_key,
            leaf_cert,
            _dir: dir,
        }
    }

    /// Issues a leaf for `sans` (DNS names, `*.` wildcards or IP
    /// addresses; the first is also the CN) valid for `valid_days` (see
    /// [`VALID`], [`EXPIRED`]) with a fresh key, and writes it as
    /// `{dir}/{name}.pem` (leaf then CA) and `{dir}/{name}.key`.
    pub(crate) fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        valid_days: (i64, i64),
    ) -> Leaf {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let cert = certificate(
            sans.first().copied().unwrap_or(name),
            &key,
            Some((&self.ca_cert, &self.ca_key)),
            sans,
            valid_days,
        );
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let mut chain = cert.to_pem().unwrap();
        chain.extend(self.ca_cert.to_pem().unwrap());
        std::fs::write(&cert_path, chain).unwrap();
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        Leaf {
            cert_path,
            key_path,
            cert,
        }
    }
}

/// A certificate for `common_name`; a CA if `issuer` is `None` (self
/// signed), else a leaf with `sans` as its subject alternative names.
/// Valid from `valid_days.0` to `valid_days.1` days from now.
fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    sans: &[&str],
    valid_days: (i64, i64),
) -> X509 {
    let is_ca = issuer.is_none();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_pubkey(key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = |days: i64| Asn1Time::from_unix((now + days * 86_400) as _).unwrap();
    builder.set_not_before(&at(valid_days.0)).unwrap();
    builder.set_not_after(&at(valid_days.1)).unwrap();
    if is_ca {
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        let usage = KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap();
        builder.append_extension(usage).unwrap();
    } else {
        let context = builder.x509v3_context(issuer.map(|(cert, _)| &**cert), None);
        let mut san = SubjectAlternativeName::new();
        for name in sans {
            if name.parse::<std::net::IpAddr>().is_ok() {
                san.ip(name);
            } else {
                san.dns(name);
            }
        }
        let san = san.build(&context).unwrap();
        builder.append_extension(san).unwrap();
    }
    let (issuer_name, signing_key) = match issuer {
        Some((cert, key)) => (cert.subject_name().to_owned().unwrap(), key),
        None => (name, key),
    };
    builder.set_issuer_name(&issuer_name).unwrap();
    builder.sign(signing_key, MessageDigest::sha256()).unwrap();
    builder.build()
}

/// How to start the proxy.
pub(crate) struct ProxyOptions {
    pub module: PathBuf,
    /// Serve a tenants file instead of `module`.
    pub tenants: Option<PathBuf>,
    pub module_config: Option<Value>,
    pub ca_file: Option<PathBuf>,
    pub extra_args: Vec<String>,
    /// Start without a module (filters and a static upstream only).
    pub no_module: bool,
    /// Also listen with TLS (`--tls-listen`) on a free port
    /// ([`Proxy::tls_addr`]); the certificate comes from `extra_args` or
    /// the tenants file.
    pub tls_listen: bool,
    /// Where Pingora's conf, pid file and upgrade socket go; two proxies
    /// given the same directory share them (a `-u` upgrade). Default: a
    /// fresh temporary directory per process.
    pub conf_dir: Option<PathBuf>,
    /// Pingora's `grace_period_seconds` and
    /// `graceful_shutdown_timeout_seconds`.
    pub grace_seconds: u64,
    /// Environment variables for the proxy process.
    pub env: Vec<(String, String)>,
}

impl ProxyOptions {
    pub(crate) fn new(guest_name: &str, module_config: Value) -> Self {
        ProxyOptions {
            module: guest(guest_name),
            tenants: None,
            module_config: Some(module_config),
            ca_file: None,
            extra_args: Vec::new(),
            no_module: false,
            tls_listen: false,
            conf_dir: None,
            grace_seconds: 0,
            env: Vec::new(),
        }
    }
}

/// The proxy binary running as a child process; killed on drop.
pub(crate) struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    /// The `--tls-listen` address, with `ProxyOptions::tls_listen`.
    pub tls_addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl Proxy {
    /// Starts the proxy on a free loopback port and waits until it accepts
    /// connections.
    pub(crate) fn start(options: ProxyOptions) -> Proxy {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args = vec!["--listen".to_string(), addr.to_string()];
        let tls_addr = options.tls_listen.then(|| {
            let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            args.extend(["--tls-listen".to_string(), tls_addr.to_string()]);
            tls_addr
        });
        let (child, log, dir) = spawn(&options, &args);
        let mut proxy = Proxy {
            child,
            addr,
            tls_addr,
            log,
            _dir: dir,
        };
        proxy.wait_ready();
        proxy
    }

    /// Starts a new proxy process taking over `addr` from a running one
    /// (Pingora's `-u`): give `options` the old process's `conf_dir`. It
    /// does not wait: the new process waits on the upgrade socket
    /// ([`Proxy::upgrade_socket`]) until the old one gets SIGQUIT
    /// ([`Proxy::quit`]).
    pub(crate) fn upgrade(options: ProxyOptions, addr: SocketAddr) -> Proxy {
        assert!(options.conf_dir.is_some(), "an upgrade shares the conf_dir");
        let args = ["--listen".to_string(), addr.to_string(), "-u".to_string()];
        let (child, log, dir) = spawn(&options, &args);
        Proxy {
            child,
            addr,
            tls_addr: None,
            log,
            _dir: dir,
        }
    }

    /// The upgrade socket of the conf in `conf_dir`: it exists while a
    /// process started with `-u` waits for the listening sockets.
    pub(crate) fn upgrade_socket(conf_dir: &Path) -> PathBuf {
        conf_dir.join("upgrade.sock")
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        let mut waiting = vec![self.addr];
        waiting.extend(self.tls_addr);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited ({status}) before listening:\n{}", self.log());
            }
            waiting.retain(|addr| {
                TcpStream::connect_timeout(addr, Duration::from_millis(100)).is_err()
            });
            if waiting.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "proxy not listening after {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the proxy process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends SIGHUP (reload).
    pub(crate) fn hangup(&self) {
        self.signal("-HUP");
    }

    /// Sends SIGQUIT (Pingora's graceful upgrade: hand the listening
    /// sockets to the process waiting on the upgrade socket, then finish
    /// and exit).
    pub(crate) fn quit(&self) {
        self.signal("-QUIT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most `within`) for the process to exit; its status, or
    /// `None` if it still runs.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `--tls-listen` address (panics without `tls_listen`).
    pub(crate) fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
            .expect("started with ProxyOptions::tls_listen")
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `http://addr{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the proxy wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_count(needle, 1)
    }

    /// The log once `needle` is in it `count` times (or after 10 s): the
    /// log is read from the process's pipe by another thread, so a line
    /// written before a response may reach it after.
    pub(crate) fn wait_for_log_count(&self, needle: &str, count: usize) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count || started.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the proxy expecting it to stop by itself; returns its exit status
/// and stderr. Fails the test if it is still running after a minute.
pub(crate) fn run_to_exit(options: ProxyOptions, args: &[String]) -> (ExitStatus, String) {
    let (mut child, log, _dir) = spawn(&options, args);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Give the reader thread a moment to drain the pipe.
            std::thread::sleep(Duration::from_millis(50));
            let log = log.lock().unwrap().clone();
            return (status, log);
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            panic!(
                "proxy still running after {START_TIMEOUT:?}: {}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(options: &ProxyOptions, args: &[String]) -> (Child, Arc<Mutex<String>>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = options.conf_dir.as_deref().unwrap_or(dir.path());
    let mut conf = format!(
        "---\nversion: 1\nthreads: 2\npid_file: {0}/proxy.pid\nupgrade_sock: {0}/upgrade.sock\n\
         grace_period_seconds: {1}\ngraceful_shutdown_timeout_seconds: {1}\n",
        conf_dir.display(),
        options.grace_seconds,
    );
    if let Some(ca_file) = &options.ca_file {
        conf.push_str(&format!("ca_file: {}\n", ca_file.display()));
    }
    let conf_path = conf_dir.join("conf.yaml");
    std::fs::write(&conf_path, conf).unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_proxy-under-test"));
    match &options.tenants {
        Some(tenants) => {
            command.arg("--tenants").arg(tenants);
        }
        None if options.no_module => {}
        None => {
            command.arg(&options.module);
        }
    }
    command.arg("-c").arg(&conf_path);
    if let (Some(config), None) = (&options.module_config, &options.tenants) {
        command.arg("--module-config").arg(config.to_string());
    }
    // A hook's deadline is wall-clock time of its slices: on two cores
    // under the whole suite a good hook was seen to pass 20 ms. Tests
    // about deadlines name theirs (`--hook-timeout-ms` or a tenant's
    // `limits`); the others get slack.
    if !options.extra_args.iter().any(|a| a == "--hook-timeout-ms") {
        command.args(["--hook-timeout-ms", "200"]);
    }
    command
        .args(&options.extra_args)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting the proxy binary");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log, dir)
}

/// A reqwest client that never goes through an environment proxy.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A tenants file for the proxy: guests' paths are absolute.
pub(crate) fn write_tenants(path: &Path, yaml: &str) {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let yaml = yaml
        .replace("GUESTS", &guests.display().to_string())
        .replace("FIXTURES", &fixtures.display().to_string());
    // Write then rename: the proxy never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, yaml).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// A proxy serving `yaml` (GUESTS stands for the guests directory,
/// FIXTURES for tests/fixtures).
pub(crate) fn tenants_proxy(
    dir: &tempfile::TempDir,
    yaml: &str,
    extra_args: &[&str],
) -> (Proxy, PathBuf) {
    let path = dir.path().join("tenants.yaml");
    write_tenants(&path, yaml);
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.tenants = Some(path.clone());
    options.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    (Proxy::start(options), path)
}

/// Sends `count` GETs at once to `{path_prefix}{i}`, each with header
/// `x-stamp: stamp-{i}`; returns `(i, stamp, status, body)` per request.
pub(crate) async fn stamped_requests(
    client: &reqwest::Client,
    proxy: &Proxy,
    count: usize,
    path_prefix: &str,
) -> Vec<(usize, String, u16, String)> {
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..count {
        let (client, url) = (client.clone(), proxy.url(&format!("{path_prefix}{i}")));
        requests.spawn(async move {
            let stamp = format!("stamp-{i}");
            let (status, body) = get(&client, &url, &[("x-stamp", &stamp)]).await;
            (i, stamp, status, body)
        });
    }
    let mut results = Vec::with_capacity(count);
    while let Some(result) = requests.join_next().await {
        results.push(result.expect("request task"));
    }
    results
}

/// A client that does not follow redirects, to see them.
pub(crate) fn client_no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GETs `url` with `headers`; returns status, response headers and body.
pub(crate) async fn get_response(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request to the proxy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

/// GETs `url` with `headers`; returns status and body.
pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request to the proxy");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The text exposition served by a `--metrics` address.
pub(crate) async fn scrape(client: &reqwest::Client, metrics: &str) -> String {
    let (status, text) = get(client, &format!("http://{metrics}/metrics"), &[]).await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of the series `series` (`name{labels}`, exactly as exposed)
/// in the exposition `text`.
pub(crate) fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// An auth service on loopback: `/check?user=NAME` answers `allow NAME`
/// for a user starting with `ok`, 403 otherwise, and for `slow` answers
/// only after 2 s.
pub(crate) async fn auth_service() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let query = req.uri().query().unwrap_or("").to_string();
                    let user = query.strip_prefix("user=").unwrap_or("").to_string();
                    if user == "slow" {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    let (status, body) = if user.starts_with("ok") {
                        (200, format!("allow {user}"))
                    } else {
                        (403, "no".to_string())
                    };
                    let mut response = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A path as the `&str` a command line takes.
pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}
