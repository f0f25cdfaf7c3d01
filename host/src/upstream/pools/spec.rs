//! A pool as configured ([`PoolConfig`]: the tenants file's `pools:`
//! entries and `--pool NAME=ADDR,...`), checked and with every backend
//! resolved.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use pingora::upstreams::peer::PeerOptions;

pub use crate::config_model::Selection;
use crate::config_model::{CheckKindConfig, HealthCheckConfig, PoolConfig, UpstreamProtocol};

/// How often `--pool` pools, and pools whose `health_check` gives no
/// `interval_ms`, are checked.
pub(super) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(1000);

/// How long one check may take (connect, and for HTTP the response
/// header) unless `timeout_ms` says otherwise; Pingora's default.
pub(super) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long connecting to a backend may take unless the pool's
/// `connection_timeout_ms` or the guest says otherwise (Envoy's default):
/// a backend that drops connection attempts costs a request this long
/// before it is retried on another.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of `interval_ms`, `timeout_ms` and `connection_timeout_ms`.
const MIN_MS: u64 = 10;
const MAX_MS: u64 = 3_600_000;

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// No checks: every backend is always taken as healthy.
    None,
    /// A TCP (and, for a TLS pool, TLS) connection must be established.
    Tcp,
    /// `GET path` must answer `expect_status`.
    Http {
        /// The path and query asked for.
        path: String,
        /// The status a healthy backend answers.
        expect_status: u16,
        /// The `Host` header sent: `host:`, else the pool's `sni`, else
        /// `localhost`.
        host: String,
    },
}

/// A pool's health check. Two pools with equal checks (and the same
/// owner and name) share health state across a reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    /// What is checked.
    pub kind: CheckKind,
    /// From the start of one pass over the backends to the next.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
}

/// TLS to a pool's backends, as for a single peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolTls {
    /// The server name sent, and the name certificates are checked against.
    pub sni: String,
    /// Verify the certificate chain.
    pub verify_cert: bool,
    /// Verify the certificate matches `sni`.
    pub verify_hostname: bool,
}

impl PoolTls {
    /// Verifies backends' certificates as this pool says, in requests and
    /// health checks alike.
    pub fn verify_with(&self, options: &mut PeerOptions) {
        options.verify_cert = self.verify_cert;
        options.verify_hostname = self.verify_hostname;
    }
}

/// One pool, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The name a guest gives as `{"pool": NAME}`.
    pub name: String,
    /// Every backend, names resolved, without duplicates.
    pub backends: BTreeSet<SocketAddr>,
    /// TLS to the backends, if they speak it.
    pub tls: Option<PoolTls>,
    /// How a backend is picked.
    pub selection: Selection,
    /// How backends are checked.
    pub health_check: HealthCheckSpec,
    /// How long connecting to a backend may take, unless the guest gives
    /// its own `connection_timeout_ms`.
    pub connection_timeout: Duration,
    /// The HTTP version spoken to the backends.
    pub protocol: UpstreamProtocol,
}

impl PoolSpec {
    /// The pool `name` as configured, checked, its backends resolved.
    pub fn from_config(name: &str, config: &PoolConfig) -> anyhow::Result<Self> {
        check_name(name)?;
        let tls = match (config.tls, config.sni.is_empty()) {
            (true, true) => bail!(
                "tls: true needs an sni, the name the backends' certificates are checked against"
            ),
            (true, false) => Some(PoolTls {
                sni: config.sni.clone(),
                verify_cert: config.verify_cert,
                verify_hostname: config.verify_hostname,
            }),
            (false, _) => None,
        };
        config.protocol.check_tls(config.tls)?;
        let connection_timeout = millis(
            "connection_timeout_ms",
            config.connection_timeout_ms,
            DEFAULT_CONNECTION_TIMEOUT,
        )?;
        let health_check = match &config.health_check {
            Some(check) => checked(check, tls.as_ref()).context("health_check")?,
            None => HealthCheckSpec::tcp(),
        };
        Ok(PoolSpec {
            name: name.to_string(),
            backends: resolve_backends(&config.backends)?,
            tls,
            selection: config.selection,
            health_check,
            connection_timeout,
            protocol: config.protocol,
        })
    }
}

/// The pool of `--pool NAME=ADDR,ADDR,...`: its name and configuration
/// (plain HTTP, round robin, a TCP check every second), checked but not
/// resolved yet.
pub fn pool_flag(flag: &str) -> anyhow::Result<(String, PoolConfig)> {
    let (name, backends) = flag
        .split_once('=')
        .with_context(|| format!("--pool {flag:?} is not NAME=ADDR,ADDR,..."))?;
    check_name(name).with_context(|| format!("--pool {flag:?}"))?;
    let backends: Vec<String> = backends.split(',').map(|b| b.trim().to_string()).collect();
    check_backends(&backends).with_context(|| format!("--pool {flag:?}"))?;
    Ok((name.to_string(), PoolConfig::plain(backends)))
}

impl HealthCheckSpec {
    /// A TCP check every [`DEFAULT_CHECK_INTERVAL`].
    pub fn tcp() -> Self {
        HealthCheckSpec {
            kind: CheckKind::Tcp,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }
}

/// A `health_check:` checked, for a pool with `tls`.
fn checked(check: &HealthCheckConfig, tls: Option<&PoolTls>) -> anyhow::Result<HealthCheckSpec> {
    let interval = millis("interval_ms", check.interval_ms, DEFAULT_CHECK_INTERVAL)?;
    let timeout = millis("timeout_ms", check.timeout_ms, DEFAULT_CHECK_TIMEOUT)?;
    let http_only = [
        ("path", check.path.is_some()),
        ("expect_status", check.expect_status.is_some()),
        ("host", check.host.is_some()),
    ];
    if check.kind != CheckKindConfig::Http {
        if let Some((field, _)) = http_only.iter().find(|(_, given)| *given) {
            bail!("{field} is only for kind: http");
        }
    }
    let kind = match check.kind {
        CheckKindConfig::None => CheckKind::None,
        CheckKindConfig::Tcp => CheckKind::Tcp,
        CheckKindConfig::Http => {
            let path = check.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                bail!("path {path:?} is not an absolute path");
            }
            let expect_status = check.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                bail!("expect_status {expect_status} is not 100-599");
            }
            let host = check
                .host
                .clone()
                .or_else(|| tls.map(|tls| tls.sni.clone()))
                .unwrap_or_else(|| "localhost".into());
            if http::HeaderValue::from_str(&host).is_err() || host.is_empty() {
                bail!("host {host:?} is not a header value");
            }
            CheckKind::Http {
                path,
                expect_status,
                host,
            }
        }
    };
    Ok(HealthCheckSpec {
        kind,
        interval,
        timeout,
    })
}

/// A duration given in milliseconds, `default` if not given.
fn millis(field: &str, value: Option<u64>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(ms) if (MIN_MS..=MAX_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => bail!("{field} {ms} is not {MIN_MS}-{MAX_MS}"),
    }
}

/// Pool names are what guests write: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let fine = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if name.is_empty() || name.len() > 128 || !name.bytes().all(fine) {
        bail!("pool name {name:?} must be 1-128 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// Refuses an empty list and any backend that is not `ip:port` or
/// `name:port`, without resolving names.
fn check_backends(backends: &[String]) -> anyhow::Result<()> {
    if backends.is_empty() || backends.iter().all(|b| b.is_empty()) {
        bail!("a pool needs at least one backend");
    }
    for backend in backends {
        match backend.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => bail!("backend {backend:?}: port 0 ({addr})"),
            Ok(_) => {}
            Err(_) => {
                let (host, port) = backend
                    .rsplit_once(':')
                    .with_context(|| format!("backend {backend:?} is not ip:port or name:port"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    bail!("backend {backend:?} is not ip:port or name:port");
                }
            }
        }
    }
    Ok(())
}

/// Every backend's addresses: `ip:port` as it is, `name:port` resolved
/// (here, at load, off the request path) to all its addresses.
fn resolve_backends(backends: &[String]) -> anyhow::Result<BTreeSet<SocketAddr>> {
    check_backends(backends)?;
    let mut resolved = BTreeSet::new();
    for backend in backends {
        let addrs: Vec<SocketAddr> = match backend.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => backend
                .to_socket_addrs()
                .with_context(|| format!("backend {backend:?}: resolving it"))?
                .collect(),
        };
        if addrs.is_empty() {
            bail!("backend {backend:?} resolves to no address");
        }
        if let Some(addr) = addrs.iter().find(|a| a.port() == 0) {
            bail!("backend {backend:?}: port 0 ({addr})");
        }
        resolved.extend(addrs);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> anyhow::Result<PoolSpec> {
        PoolSpec::from_config("api", &crate::config_model::from_yaml(text)?)
    }

    #[test]
    fn the_issue_s_example_parses() {
        let spec = pool(
            r#"
            backends: ["127.0.0.1:8081", "127.0.0.1:8082", "localhost:8083"]
            tls: false
            selection: consistent
            health_check: { kind: http, path: /healthz, interval_ms: 1000, expect_status: 200 }
            "#,
        )
        .unwrap();
        assert!(spec.backends.len() >= 3);
        assert_eq!(spec.selection, Selection::Consistent);
        assert_eq!(spec.health_check.interval, Duration::from_secs(1));
        assert_eq!(
            spec.health_check.kind,
            CheckKind::Http {
                path: "/healthz".into(),
                expect_status: 200,
                host: "localhost".into()
            }
        );
        let defaults = pool(r#"{backends: ["127.0.0.1:1"]}"#).unwrap();
        assert_eq!(defaults.selection, Selection::RoundRobin);
        assert_eq!(defaults.health_check, HealthCheckSpec::tcp());
        assert_eq!(defaults.connection_timeout, DEFAULT_CONNECTION_TIMEOUT);
        let quick = pool(r#"{backends: ["127.0.0.1:1"], connection_timeout_ms: 250}"#).unwrap();
        assert_eq!(quick.connection_timeout, Duration::from_millis(250));
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, says) in [
            ("{backends: []}", "at least one backend"),
            (r#"{backends: ["nope"]}"#, "not ip:port or name:port"),
            (r#"{backends: ["127.0.0.1:0"]}"#, "port 0"),
            (
                r#"{backends: ["127.0.0.1:1"], selection: fastest}"#,
                "selection: unknown variant `fastest`",
            ),
            (r#"{backends: ["127.0.0.1:1"], tls: true}"#, "needs an sni"),
            (r#"{backends: ["127.0.0.1:1"], weight: 2}"#, "unknown field"),
            (
                r#"{backends: ["127.0.0.1:1"], connection_timeout_ms: 0}"#,
                "connection_timeout_ms 0",
            ),
            (
                r#"{backends: ["127.0.0.1:1"], health_check: {kind: tcp, path: /}}"#,
                "only for kind: http",
            ),
            (
                r#"{backends: ["127.0.0.1:1"], health_check: {kind: http, path: x}}"#,
                "absolute path",
            ),
            (
                r#"{backends: ["127.0.0.1:1"], health_check: {kind: tcp, interval_ms: 0}}"#,
                "interval_ms 0",
            ),
            (
                r#"{backends: ["127.0.0.1:1"], health_check: {kind: http, expect_status: 42}}"#,
                "expect_status 42",
            ),
        ] {
            let error = format!("{:#}", pool(bad).unwrap_err());
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn flags_parse_and_mistakes_are_named() {
        let (name, config) = pool_flag("api=127.0.0.1:8081,127.0.0.1:8082").unwrap();
        let spec = PoolSpec::from_config(&name, &config).unwrap();
        assert_eq!(spec.name, "api");
        assert_eq!(spec.backends.len(), 2);
        assert_eq!(spec.health_check, HealthCheckSpec::tcp());
        assert_eq!(spec.connection_timeout, DEFAULT_CONNECTION_TIMEOUT);
        for bad in ["api", "=127.0.0.1:1", "api=", "api=nope", "a b=127.0.0.1:1"] {
            let error = format!("{:#}", pool_flag(bad).unwrap_err());
            assert!(error.contains("--pool"), "{bad}: {error}");
        }
    }
}
