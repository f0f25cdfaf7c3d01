//! The typed configuration of the tenants: the shape of a tenants file,
//! deserialised straight from its YAML. The command line builds the same
//! model (a one-tenant file in memory), and
//! [`TenantSet::load`](crate::tenancy::tenants::TenantSet::load) builds the tenants
//! from it in one function for both.
//!
//! Each value a later check can refuse keeps where it came from
//! ([`Located`]), so that every configuration error names the line and
//! column and the key path (`line 12 column 5: tenants[2].upstream: ...`),
//! or the flag that gave the value.
//!
//! YAML is read with `serde-saphyr`: pure Rust, maintained (`serde_yaml` is
//! archived), strict YAML 1.2 booleans on request, and every error and
//! [`serde_saphyr::Spanned`] value carries a line and column. It reports
//! key paths only for its validation features, so `serde_path_to_error`
//! wraps its deserializer to name the key of a parse error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_path_to_error::Segment;
use serde_saphyr::{MessageFormatter, Spanned};

/// How a pool picks a backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// Ketama consistent hashing of the guest's `key`: a key keeps its
    /// backend while that backend is healthy, and removing a backend moves
    /// only its own keys.
    Consistent,
    /// A backend at random.
    Random,
}

/// What to do when a tenant's guest fails (a fault, not its own refusal).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorPolicy {
    /// Answer 500.
    #[default]
    FailClosed,
    /// Proxy anyway: to `fallback_upstream` if `upstream_peer` failed,
    /// with the request unchanged if `upstream_request_filter` failed.
    FailOpen,
    /// A filter's only, as Envoy's `failure_policy: FAIL_RELOAD`: answer
    /// 500 for the fault, then replace the filter's VM (every instance)
    /// after a backoff of 1 s doubling with each fault in a row, answering
    /// 503 meanwhile.
    FailReload,
}

/// A tenants file, or the command line's one tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConfig {
    /// How to reach each OCI registry modules are pulled from, by
    /// `host[:port]`.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub registries: BTreeMap<String, Located<RegistryConfig>>,
    /// Names a filter may dispatch HTTP and gRPC calls to: `name:
    /// "ip:port"` or `name: {address, tls, sni, protocol}`.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub clusters: BTreeMap<String, Located<UpstreamConfig>>,
    /// Where guests may send traffic they address themselves, for every
    /// tenant without its own `egress:`.
    #[serde(default)]
    pub egress: Option<Located<EgressConfig>>,
    /// Pools every tenant may name (a tenant's own of the same name wins).
    #[serde(default, deserialize_with = "blank_as_default")]
    pub pools: BTreeMap<String, Located<PoolConfig>>,
    /// The tenants, in order.
    #[serde(deserialize_with = "blank_as_default")]
    pub tenants: Vec<Located<TenantConfig>>,
    /// The tenant of requests whose Host no tenant serves.
    #[serde(default)]
    pub default_tenant: Option<Located<String>>,
    /// Where relative paths start: the tenants file's directory (empty:
    /// the working directory).
    #[serde(skip)]
    pub base: PathBuf,
    /// How guests and errors are named.
    #[serde(skip)]
    pub naming: Naming,
}

/// One tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its name, as in logs and metrics.
    pub name: String,
    /// The Host names it serves: `name`, or `*.name` for every subdomain.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub hosts: Vec<Located<String>>,
    /// Its routing module (this host's ABI).
    #[serde(default)]
    pub module: Option<Located<PathBuf>>,
    /// The hex sha256 of the module's bytes: checked; required for an
    /// `http(s)://` module.
    #[serde(default)]
    pub sha256: Option<Located<String>>,
    /// Its proxy-wasm filters, run in this order.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub filters: Vec<Located<FilterConfig>>,
    /// The routing module's configuration, as JSON; `{}` when absent.
    #[serde(default)]
    pub config: Option<JsonText>,
    /// Per-instance limits and the budget; flags' values where absent.
    #[serde(default)]
    pub limits: Located<LimitsConfig>,
    /// Fail closed or open when the routing module fails.
    #[serde(default)]
    pub on_guest_error: Located<GuestErrorPolicy>,
    /// Where fail-open requests go when `upstream_peer` failed: `ip:port`
    /// or `{address, tls, sni, protocol}`.
    #[serde(default)]
    pub fallback_upstream: Option<Located<UpstreamConfig>>,
    /// Where requests go when the module exports no `upstream_peer`.
    #[serde(default)]
    pub upstream: Option<Located<UpstreamConfig>>,
    /// Its own pools.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub pools: BTreeMap<String, Located<PoolConfig>>,
    /// Its own clusters: only its filters may call them.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub clusters: BTreeMap<String, Located<UpstreamConfig>>,
    /// Where its guests may send traffic they address themselves
    /// (replaces the file's `egress:`).
    #[serde(default)]
    pub egress: Option<Located<EgressConfig>>,
    /// Its certificate.
    #[serde(default)]
    pub tls: Option<Located<TlsConfig>>,
    /// Its circuit breaker; flags' values where absent.
    #[serde(default)]
    pub breaker: Located<BreakerConfig>,
}

/// A proxy-wasm filter of a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The hex sha256 of the filter's bytes: checked; required for an
    /// `http(s)://` module.
    #[serde(default)]
    pub sha256: Option<Located<String>>,
    /// Its `.wasm`.
    pub module: Located<PathBuf>,
    /// Its plugin configuration; empty when absent.
    #[serde(default)]
    pub config: Option<PluginConfig>,
    /// Its VM: the configuration text, or `{vm_id, configuration}` as in
    /// Envoy; empty when absent.
    #[serde(default, deserialize_with = "vm_config_form")]
    pub vm_config: Option<VmConfig>,
    /// Its root context id; empty when absent.
    #[serde(default)]
    pub root_id: Option<String>,
    /// `fail_closed`: a fault answers 500; `fail_open`: the filter is
    /// skipped for the rest of the request.
    #[serde(default)]
    pub on_error: GuestErrorPolicy,
}

/// A filter's `vm_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Filters of one tenant with the same `vm_id` share their shared
    /// data (and `plugin_vm_id` reads it); empty: the module's digest.
    #[serde(default)]
    pub vm_id: String,
    /// The VM configuration (`on_vm_start`).
    #[serde(default)]
    pub configuration: String,
}

impl VmConfig {
    /// The text form: the configuration alone.
    fn text(configuration: &str) -> Self {
        VmConfig {
            vm_id: String::new(),
            configuration: configuration.to_string(),
        }
    }
}

/// A filter's plugin configuration: the bytes the filter reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginConfig {
    /// A string, passed as its bytes (also `--filter-config`).
    Bytes(Vec<u8>),
    /// Any other value (a mapping, a list, a number), passed as its JSON
    /// text.
    Json(String),
}

/// A value given as JSON text: a YAML value of any shape is written as
/// JSON, its mappings' keys in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub String);

/// A static upstream, a cluster or a fallback upstream: `"ip:port"`, or
/// `{address, tls, sni, protocol}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamConfig {
    /// `"ip:port"`, plain HTTP.
    Address(String),
    /// The long form.
    Fields(UpstreamFields),
}

/// The long form of a static upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFields {
    /// `ip:port`.
    pub address: String,
    /// Speak TLS to it.
    #[serde(default)]
    pub tls: bool,
    /// The TLS server name, and the name its certificate must carry.
    #[serde(default)]
    pub sni: String,
    /// The HTTP version spoken to it.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// The HTTP version spoken to an upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 over TLS, chosen by ALPN (needs `tls: true`).
    H2,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
}

impl UpstreamProtocol {
    /// The protocol named `name` (`http1`, `h2`, `h2c`), as a flag gives it.
    pub fn named(name: &str) -> anyhow::Result<Self> {
        match name {
            "http1" => Ok(UpstreamProtocol::Http1),
            "h2" => Ok(UpstreamProtocol::H2),
            "h2c" => Ok(UpstreamProtocol::H2c),
            other => anyhow::bail!("{other:?} is not a protocol: http1, h2 or h2c"),
        }
    }

    /// Whether `tls` suits it: h2 is TLS only, h2c plain only.
    pub fn check_tls(self, tls: bool) -> anyhow::Result<()> {
        match (self, tls) {
            (UpstreamProtocol::H2, false) => {
                anyhow::bail!("protocol: h2 needs tls: true (h2c is HTTP/2 over plain TCP)")
            }
            (UpstreamProtocol::H2c, true) => {
                anyhow::bail!("protocol: h2c is plain TCP; with tls: true use h2")
            }
            _ => Ok(()),
        }
    }
}

/// How to reach one OCI registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// By `http://` instead of `https://` (a registry on loopback).
    #[serde(default)]
    pub plain_http: bool,
    /// The user for HTTP basic auth (and the registry's token auth).
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password, relative to the tenants file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// A tenant's certificate: PEM files, relative to the tenants file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A tenant's limits; each absent one is the flag's of the same name.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub hook_timeout_ms: Option<u64>,
    pub memory_limit_mib: Option<u64>,
    pub instance_reuse: Option<u64>,
    pub max_concurrent_calls: Option<u32>,
    pub cpu_ms_per_s: Option<u32>,
    pub max_instances: Option<u32>,
    pub max_memory_mib: Option<u64>,
    pub max_pending_calls: Option<u32>,
    pub max_call_timeout_ms: Option<u32>,
    pub shared_data_bytes: Option<u64>,
    pub max_metrics: Option<u32>,
    pub log_lines_per_s: Option<u32>,
}

/// A tenant's circuit breaker; each absent value is its `--breaker-*`
/// flag's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Replaced by `min_calls` and `fault_percent`: refused with a
    /// message that says so.
    pub faults: Option<serde::de::IgnoredAny>,
    pub min_calls: Option<u32>,
    pub fault_percent: Option<u32>,
    pub window_ms: Option<u64>,
    pub cooldown_ms: Option<u64>,
}

/// A pool as written: `pools:` entries, and what `--pool` gives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `ip:port` or `name:port`, each.
    pub backends: Vec<String>,
    /// Speak TLS to the backends.
    #[serde(default)]
    pub tls: bool,
    /// The TLS server name, and the name certificates are checked against.
    #[serde(default)]
    pub sni: String,
    /// Verify the certificate chain.
    #[serde(default = "yes")]
    pub verify_cert: bool,
    /// Verify the certificate matches `sni`.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
    /// How a backend is picked.
    #[serde(default)]
    pub selection: Selection,
    /// How backends are checked; a TCP check every second when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// How long connecting to a backend may take.
    #[serde(default)]
    pub connection_timeout_ms: Option<u64>,
    /// The HTTP version spoken to the backends.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// A pool's `health_check:` (README's pools section says what each
/// field is).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub kind: CheckKindConfig,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A health check's `kind:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKindConfig {
    Http,
    Tcp,
    None,
}

fn yes() -> bool {
    true
}

impl PoolConfig {
    /// A plain-HTTP, round-robin pool over `backends` with a TCP check
    /// every second: what `--pool` gives.
    pub fn plain(backends: Vec<String>) -> Self {
        PoolConfig {
            backends,
            tls: false,
            sni: String::new(),
            verify_cert: true,
            verify_hostname: true,
            selection: Selection::RoundRobin,
            health_check: None,
            connection_timeout_ms: None,
            protocol: UpstreamProtocol::Http1,
        }
    }
}

/// How guests and tenants are named in logs and errors: a file names
/// tenants, the command line names its one tenant after a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Naming {
    /// A tenants file: `policy.wasm (tenant acme)`; errors say which
    /// tenant; a static upstream is `upstream:`.
    #[default]
    File,
    /// The command line: `policy.wasm`; the tenant goes unsaid; a static
    /// upstream is `--upstream ADDR`.
    CommandLine,
}

impl Naming {
    /// The name of the guest loaded from `file` for `tenant`.
    pub fn guest(self, file: &Path, tenant: &str) -> Arc<str> {
        match self {
            Naming::File => format!(
                "{} (tenant {tenant})",
                file.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
            )
            .into(),
            Naming::CommandLine => file_name(file).into(),
        }
    }

    /// How the tenant's guests are named when the fault is not one
    /// guest's: its module's name, or the tenant's.
    pub fn tenant(self, tenant: &TenantConfig) -> Arc<str> {
        match (self, &tenant.module) {
            (Naming::CommandLine, _) => tenant.name.as_str().into(),
            (Naming::File, Some(module)) => self.guest(&module.value, &tenant.name),
            (Naming::File, None) => format!("tenant {}", tenant.name).into(),
        }
    }

    /// What errors about `tenant` say first, if anything.
    pub fn error_context(self, tenant: &str) -> Option<String> {
        match self {
            Naming::File => Some(format!("tenant {tenant:?}")),
            Naming::CommandLine => None,
        }
    }

    /// How a static upstream is given.
    pub fn upstream_hint(self) -> &'static str {
        match self {
            Naming::File => "`upstream:`",
            Naming::CommandLine => "--upstream ADDR",
        }
    }
}

/// A file's name, or its whole path if it has none.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Where a configured value came from.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// Not known, or not worth saying (the command line's own defaults).
    #[default]
    Unknown,
    /// A line and column of the tenants file, both from 1.
    Line {
        /// The line.
        line: u64,
        /// The column.
        column: u64,
    },
    /// A command-line flag, as the error should name it:
    /// `--pool "api=127.0.0.1:1"`.
    Flag(String),
}

thread_local! {
    /// Whether `Origin`'s `Debug` writes nothing on this thread now: see
    /// [`debug_without_origins`].
    static HIDE_ORIGINS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if HIDE_ORIGINS.get() {
            return f.write_str("_");
        }
        match self {
            Origin::Unknown => f.write_str("Unknown"),
            Origin::Line { line, column } => f
                .debug_struct("Line")
                .field("line", line)
                .field("column", column)
                .finish(),
            Origin::Flag(flag) => f.debug_tuple("Flag").field(flag).finish(),
        }
    }
}

/// `value`'s `{:?}` with every origin written `_`: what a configuration
/// says, not where, so that moving an entry's lines changes nothing.
pub fn debug_without_origins(value: &impl std::fmt::Debug) -> String {
    HIDE_ORIGINS.set(true);
    let debug = format!("{value:?}");
    HIDE_ORIGINS.set(false);
    debug
}

impl Origin {
    /// `self` if known, else `outer` (the entry the value belongs to).
    pub fn or<'a>(&'a self, outer: &'a Origin) -> &'a Origin {
        match self {
            Origin::Unknown => outer,
            known => known,
        }
    }

    /// `error`, saying where it comes from: `line 3 column 5: {key}` for
    /// the file, the flag for the command line, nothing if unknown.
    pub fn locate(&self, error: anyhow::Error, key: impl FnOnce() -> String) -> anyhow::Error {
        match self {
            Origin::Unknown => error,
            Origin::Line { line, column } => {
                error.context(format!("line {line} column {column}: {}", key()))
            }
            Origin::Flag(flag) => error.context(flag.clone()),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub origin: Origin,
}

impl<T> Located<T> {
    /// A value whose origin goes unsaid.
    pub fn new(value: T) -> Self {
        Located {
            value,
            origin: Origin::Unknown,
        }
    }

    /// A value given by a flag, which errors about it name.
    pub fn flag(value: T, flag: impl Into<String>) -> Self {
        Located {
            value,
            origin: Origin::Flag(flag.into()),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        let at = spanned.referenced;
        let origin = match at.line() {
            0 => Origin::Unknown,
            line => Origin::Line {
                line,
                column: at.column(),
            },
        };
        Ok(Located {
            value: spanned.value,
            origin,
        })
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Straight to JSON text, not through serde_json::Value, whose maps
        // sort their keys: guests see the mapping as written.
        let mut json = Vec::new();
        serde_transcode::transcode(deserializer, &mut serde_json::Serializer::new(&mut json))
            .map_err(de::Error::custom)?;
        String::from_utf8(json)
            .map(JsonText)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let JsonText(json) = JsonText::deserialize(deserializer)?;
        Ok(match serde_json::from_str::<String>(&json) {
            Ok(text) => PluginConfig::Bytes(text.into_bytes()),
            Err(_) => PluginConfig::Json(json),
        })
    }
}

impl PluginConfig {
    /// The bytes the filter reads.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            PluginConfig::Bytes(bytes) => bytes,
            PluginConfig::Json(json) => json.into_bytes(),
        }
    }
}

impl<'de> Deserialize<'de> for UpstreamConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // By hand rather than `untagged`, which would hide which field of
        // the long form is wrong behind "did not match any variant".
        struct Forms;
        const BOTH: &str = "must be \"ip:port\" or {address, tls, sni, protocol}";
        impl<'de> Visitor<'de> for Forms {
            type Value = UpstreamConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ip:port\" or {address, tls, sni, protocol}")
            }
            fn visit_str<E: de::Error>(self, address: &str) -> Result<Self::Value, E> {
                Ok(UpstreamConfig::Address(address.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                UpstreamFields::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamConfig::Fields)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(format!("{BOTH}, not a list")))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("{BOTH}, not a boolean")))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!("{BOTH}, not a number")))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!("{BOTH}, not a number")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!("{BOTH}, not a number")))
            }
        }
        deserializer.deserialize_any(Forms)
    }
}

impl<'de> Deserialize<'de> for VmConfigForm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Forms;
        impl<'de> Visitor<'de> for Forms {
            type Value = VmConfigForm;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the VM configuration text, or {vm_id, configuration}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(VmConfigForm(VmConfig::text(text)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                VmConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(VmConfigForm)
            }
        }
        deserializer.deserialize_any(Forms)
    }
}

/// `vm_config:` as written: text or a map.
struct VmConfigForm(VmConfig);

fn vm_config_form<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<VmConfig>, D::Error> {
    Option::<VmConfigForm>::deserialize(deserializer).map(|form| form.map(|f| f.0))
}

/// A tenant's (or the file's) `egress:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// IP, CIDR (each with an optional `:port`) or `name:port` entries.
    #[serde(default, deserialize_with = "blank_as_default")]
    pub allow: Vec<String>,
}

impl TenantsConfig {
    /// Reads and parses the tenants file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).context("reading it")?;
        let mut config: TenantsConfig = from_yaml(&text).context("parsing it")?;
        config.base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(config)
    }
}

/// A list or mapping left blank (`hosts:` with every entry commented
/// out) as the empty one.
fn blank_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `T` from YAML `text`; an error names the line, column and key path:
/// `line 4 column 19: tenants[1].on_guest_error: unknown variant ...`.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        // YAML 1.2, as before: `yes` is a string, not a boolean.
        strict_booleans: true,
        // `<<` is an ordinary (and so an unknown) key, as before.
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        // A guest's `config:` becomes the JSON it always did: `02134` and
        // `1_000` stay strings, `.inf` and `.nan` become null, and a blank
        // or `~` where text is expected is that text.
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        null_as_string: true,
    };
    let mut failed_at = None;
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |yaml| {
        let mut track = serde_path_to_error::Track::new();
        let value = T::deserialize(serde_path_to_error::Deserializer::new(yaml, &mut track));
        if value.is_err() {
            failed_at = Some(track.path());
        }
        value
    });
    parsed.map_err(|error| {
        let at = error.location();
        let message = serde_saphyr::DefaultMessageFormatter.format_message(error.without_snippet());
        // One line, whatever the file holds.
        let message: String = message
            .chars()
            .flat_map(|c| match c.is_control() {
                true => c.escape_default().collect::<Vec<_>>(),
                false => vec![c],
            })
            .collect();
        let key = failed_at.as_ref().map(key_path).unwrap_or_default();
        let error = match key.is_empty() {
            true => anyhow::anyhow!("{message}"),
            false => anyhow::anyhow!("{key}: {message}"),
        };
        match at {
            Some(at) if at.line() > 0 => {
                error.context(format!("line {} column {}", at.line(), at.column()))
            }
            _ => error,
        }
    })
}

/// A parse error's key path as written in the file: `tenants[2].upstream`.
///
/// [`Located`] values are read through [`Spanned`], which shows the path
/// tracker one more mapping key, `value`; those keys are left out. A
/// `value` right under `pools` or `clusters` is a name, and stays.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let mut key = String::new();
    let mut parent: Option<&str> = None;
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                parent = None;
            }
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                let spanned = name == "value" && !matches!(parent, Some("pools" | "clusters"));
                if spanned {
                    parent = None;
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                parent = Some(name);
            }
            Segment::Unknown => {}
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(yaml: &str) -> TenantConfig {
        from_yaml(yaml).unwrap()
    }

    #[test]
    fn configs_become_json_text_as_written() {
        let spec = tenant(
            "name: a\nconfig: {z: 1, a: [2, x], m: {q: true}}\nfilters:\n  \
             - {module: f.wasm, config: \"plain text\"}\n  - {module: g.wasm, config: {b: 1, a: 2}}\n",
        );
        assert_eq!(
            spec.config,
            Some(JsonText(r#"{"z":1,"a":[2,"x"],"m":{"q":true}}"#.into()))
        );
        let configs: Vec<_> = spec
            .filters
            .iter()
            .map(|f| f.value.config.clone())
            .collect();
        assert_eq!(
            configs,
            [
                Some(PluginConfig::Bytes(b"plain text".to_vec())),
                Some(PluginConfig::Json(r#"{"b":1,"a":2}"#.into())),
            ]
        );
    }

    #[test]
    fn configs_read_numbers_and_blanks_as_serde_yaml_did() {
        let spec = tenant(
            "name: a\nconfig: {zip: 02134, big: 1_000, inf: .inf, nan: .nan, n: 7, s: ~, t: x}\n",
        );
        assert_eq!(
            spec.config,
            Some(JsonText(
                r#"{"zip":"02134","big":"1_000","inf":null,"nan":null,"n":7,"s":null,"t":"x"}"#
                    .into()
            ))
        );
        let spec = tenant("name: ~\nupstream: {address: 127.0.0.1:1, sni: }\n");
        assert_eq!(spec.name, "~");
        let Some(UpstreamConfig::Fields(fields)) = spec.upstream.map(|u| u.value) else {
            panic!("the map form");
        };
        assert_eq!(fields.sni, "");
    }

    #[test]
    fn blank_lists_and_maps_are_empty() {
        let spec = tenant("name: a\nhosts:\n#  - a.example\nfilters:\npools:\n");
        assert!(spec.hosts.is_empty() && spec.filters.is_empty() && spec.pools.is_empty());
        let file: TenantsConfig = from_yaml("clusters:\npools:\ntenants:\n").unwrap();
        assert!(file.clusters.is_empty() && file.pools.is_empty() && file.tenants.is_empty());
    }

    #[test]
    fn both_upstream_forms_and_locations_are_kept() {
        let spec = tenant("name: a\nhosts:\n  - a.example\nupstream: 127.0.0.1:1\n");
        let upstream = spec.upstream.unwrap();
        assert_eq!(
            upstream.value,
            UpstreamConfig::Address("127.0.0.1:1".into())
        );
        assert_eq!(
            upstream.origin,
            Origin::Line {
                line: 4,
                column: 11
            }
        );
        assert_eq!(spec.hosts[0].origin, Origin::Line { line: 3, column: 5 });
        let spec = tenant("name: a\nupstream: {address: 127.0.0.1:1, tls: true, sni: x}\n");
        assert!(matches!(
            spec.upstream.unwrap().value,
            UpstreamConfig::Fields(UpstreamFields { tls: true, .. })
        ));
    }

    #[test]
    fn yaml_1_2_as_before() {
        for (yaml, says) in [
            (
                "name: a\nupstream: {address: x, tls: yes}\n",
                "line 2 column 29: upstream.tls: invalid boolean",
            ),
            (
                "name: a\n<<: {hosts: [x]}\n",
                "line 2 column 1: <<: unknown field `<<`",
            ),
            ("name: a\nname: b\n", "line 2 column 1"),
        ] {
            let error = format!("{:#}", from_yaml::<TenantConfig>(yaml).unwrap_err());
            assert!(error.starts_with(says), "{yaml}: {error}");
        }
    }
}
