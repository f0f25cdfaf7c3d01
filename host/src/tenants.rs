//! Tenants: which guest module serves which Host, under which limits.
//!
//! A [`TenantSet`] is immutable; a reload builds a new one and swaps it in,
//! so a request keeps the tenant (and module) it was routed to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::abi::proxy_wasm::{FilterModule, FilterSpec};
use crate::abi::v1::GuestModule;
use crate::budget::{Budget, BudgetLimits};
use crate::hooks::Hook;
use crate::metrics::{Metrics, TenantMetrics};
use crate::runtime::{GuestEngine, GuestLimits};
use crate::tls::Certificate;
use crate::upstream::StaticUpstream;
use crate::upstream_pools::{HealthRegistries, Pool, PoolSpec, Pools, SHARED};

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
}

/// The limits and budget of a tenant that sets none of its own (from the
/// command line flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantDefaults {
    /// Per-instance limits.
    pub limits: GuestLimits,
    /// Per-tenant budget and breaker.
    pub budget: BudgetLimits,
}

/// One tenant: a name, its routing module and filters, its budget and
/// what to do when a guest fails.
pub struct Tenant {
    /// The tenant's name, as in logs and metrics.
    pub name: String,
    /// Its routing module (this host's ABI), if it has one.
    pub module: Option<Arc<GuestModule>>,
    /// Its proxy-wasm filters, run in this order.
    pub filters: Vec<TenantFilter>,
    /// How its guests are named in logs: the module's name, or the
    /// tenant's.
    pub label: Arc<str>,
    /// Fail closed or open.
    pub on_guest_error: GuestErrorPolicy,
    /// Where fail-open requests go when `upstream_peer` failed.
    pub fallback_upstream: Option<SocketAddr>,
    /// Where requests go when the module exports no `upstream_peer`.
    pub upstream: Option<StaticUpstream>,
    /// The pools its module may send requests to.
    pub pools: Pools,
    /// Its certificate, served on TLS listeners to the names of its hosts.
    pub certificate: Option<Arc<Certificate>>,
    /// Its guest budget and circuit breaker.
    pub budget: Budget,
    /// Its request and hook metrics.
    pub metrics: TenantMetrics,
}

/// A proxy-wasm filter of a tenant, and what its faults do.
#[derive(Clone)]
pub struct TenantFilter {
    /// The loaded filter.
    pub module: Arc<FilterModule>,
    /// `fail_closed`: a fault answers 500; `fail_open`: the filter is
    /// skipped for the rest of the request.
    pub on_error: GuestErrorPolicy,
}

impl Tenant {
    /// Whether the tenant's routing module exports `hook`.
    pub fn exports(&self, hook: Hook) -> bool {
        self.module
            .as_ref()
            .is_some_and(|module| module.exports(hook))
    }
}

/// A filter as the command line gives it.
#[derive(Debug, Clone)]
pub struct FilterSource {
    /// The filter's `.wasm`.
    pub path: PathBuf,
    /// Its plugin configuration.
    pub config: Vec<u8>,
}

/// Where the tenant set comes from, so it can be loaded again.
#[derive(Debug, Clone)]
pub enum TenantSource {
    /// One tenant serving every Host, from the command line: a module
    /// (`host MODULE.wasm`), filters (`--filter`), or both.
    CommandLine {
        /// The module file, if any.
        module: Option<PathBuf>,
        /// Its configuration JSON.
        config_json: String,
        /// The static upstream (`--upstream`).
        upstream: Option<StaticUpstream>,
        /// The filters (`--filter`, `--filter-config`), in order.
        filters: Vec<FilterSource>,
        /// Clusters filters may call (`--cluster NAME=ADDR`).
        clusters: HashMap<String, SocketAddr>,
        /// The module's pools (`--pool NAME=ADDR,...`).
        pools: Vec<PoolSpec>,
    },
    /// A tenants file (`host --tenants FILE`).
    File(PathBuf),
}

/// The tenants and the Host routing table.
pub struct TenantSet {
    tenants: Vec<Arc<Tenant>>,
    exact: HashMap<String, usize>,
    /// `(".acme.example", tenant)`, longest suffix first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
    /// Files whose change triggers a reload.
    watched: Vec<PathBuf>,
    /// Clusters filters may call, by name.
    clusters: HashMap<String, SocketAddr>,
    /// Every pool: the shared ones, then each tenant's own.
    pools: Vec<Arc<Pool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    /// Names a filter may dispatch HTTP calls to: `name: "ip:port"`.
    #[serde(default)]
    clusters: HashMap<String, String>,
    /// Pools every tenant may name (a tenant's own of the same name wins).
    #[serde(default)]
    pools: BTreeMap<String, serde_yaml::Value>,
    tenants: Vec<TenantSpec>,
    #[serde(default)]
    default_tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterYaml {
    module: PathBuf,
    #[serde(default)]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    vm_config: Option<String>,
    #[serde(default)]
    root_id: Option<String>,
    #[serde(default)]
    on_error: GuestErrorPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSpec {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    module: Option<PathBuf>,
    #[serde(default)]
    filters: Vec<FilterYaml>,
    #[serde(default)]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    on_guest_error: GuestErrorPolicy,
    #[serde(default)]
    fallback_upstream: Option<String>,
    #[serde(default)]
    upstream: Option<serde_yaml::Value>,
    #[serde(default)]
    pools: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    tls: Option<TlsSpec>,
    #[serde(default)]
    breaker: BreakerSpec,
}

/// A tenant's certificate: PEM files, relative to the tenants file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    hook_timeout_ms: Option<u64>,
    memory_limit_mib: Option<u64>,
    instance_reuse: Option<u64>,
    max_concurrent_calls: Option<u32>,
    cpu_ms_per_s: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerSpec {
    faults: Option<u32>,
    window_ms: Option<u64>,
    cooldown_ms: Option<u64>,
}

impl TenantSet {
    /// Loads every tenant of `source`; any problem refuses the whole set.
    /// `defaults` are the limits of tenants that do not set their own;
    /// pools that stay keep their health state from `registries`.
    pub fn load(
        engine: &GuestEngine,
        source: &TenantSource,
        defaults: TenantDefaults,
        metrics: &Metrics,
        registries: &HealthRegistries,
    ) -> anyhow::Result<Self> {
        match source {
            TenantSource::CommandLine {
                module,
                config_json,
                upstream,
                filters,
                clusters,
                pools,
            } => {
                let file_name = |path: &Path| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.display().to_string())
                };
                let name = match (module, filters.first()) {
                    (Some(path), _) => file_name(path),
                    (None, Some(filter)) => file_name(&filter.path),
                    (None, None) => bail!("give a MODULE.wasm, a --filter or --tenants FILE"),
                };
                let mut watched: Vec<PathBuf> = module.iter().cloned().collect();
                let module = match module {
                    Some(path) => Some(Arc::new(GuestModule::load(
                        engine,
                        name.as_str().into(),
                        path,
                        config_json,
                        defaults.limits,
                    )?)),
                    None => None,
                };
                check_routing(module.as_deref(), upstream.as_ref(), "--upstream ADDR")?;
                let mut loaded = Vec::new();
                for filter in filters {
                    let spec = FilterSpec {
                        config: filter.config.clone(),
                        metrics: Some((metrics.filter_family(), name.clone())),
                        clusters: clusters.clone(),
                        ..FilterSpec::default()
                    };
                    let label = file_name(&filter.path);
                    let filter_module = FilterModule::load(
                        engine,
                        label.into(),
                        &filter.path,
                        spec,
                        defaults.limits,
                    )?;
                    watched.push(filter.path.clone());
                    loaded.push(TenantFilter {
                        module: Arc::new(filter_module),
                        on_error: GuestErrorPolicy::FailClosed,
                    });
                }
                let pools = pools
                    .iter()
                    .map(|spec| Pool::new(&name, spec, registries).map(Arc::new))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                metrics.module_load(&name);
                let tenant = Tenant {
                    budget: Budget::new(defaults.budget, metrics.tenant(&name)),
                    metrics: metrics.tenant(&name),
                    label: name.as_str().into(),
                    name,
                    module,
                    filters: loaded,
                    on_guest_error: GuestErrorPolicy::FailClosed,
                    fallback_upstream: None,
                    upstream: upstream.clone(),
                    pools: Pools::new(&pools, &[]),
                    certificate: None,
                };
                Ok(TenantSet {
                    tenants: vec![Arc::new(tenant)],
                    exact: HashMap::new(),
                    wildcards: Vec::new(),
                    default: Some(0),
                    watched,
                    clusters: clusters.clone(),
                    pools,
                })
            }
            TenantSource::File(path) => {
                Self::load_file(engine, path, defaults, metrics, registries)
                    .with_context(|| format!("tenants file {}", path.display()))
            }
        }
    }

    fn load_file(
        engine: &GuestEngine,
        path: &Path,
        defaults: TenantDefaults,
        metrics: &Metrics,
        registries: &HealthRegistries,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).context("reading it")?;
        let file: TenantsFile = serde_yaml::from_str(&text).context("parsing it")?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut set = TenantSet {
            tenants: Vec::new(),
            exact: HashMap::new(),
            wildcards: Vec::new(),
            default: None,
            watched: vec![path.to_path_buf()],
            clusters: HashMap::new(),
            pools: Vec::new(),
        };
        for (name, addr) in &file.clusters {
            let addr = addr
                .parse::<SocketAddr>()
                .with_context(|| format!("cluster {name:?}: {addr:?} is not ip:port"))?;
            set.clusters.insert(name.clone(), addr);
        }
        let shared = build_pools(SHARED, &file.pools, registries).context("pools")?;
        set.pools.extend(shared.iter().cloned());
        let mut names = HashSet::new();
        for spec in file.tenants {
            let name = spec.name.clone();
            if !names.insert(name.clone()) {
                bail!("tenant {name:?} appears twice");
            }
            let index = set.tenants.len();
            for host in &spec.hosts {
                set.add_host(host, index)
                    .with_context(|| format!("tenant {name:?}"))?;
            }
            let own = build_pools(&name, &spec.pools, registries)
                .with_context(|| format!("tenant {name:?}: pools"))?;
            let loading = TenantLoad {
                engine,
                base,
                defaults,
                metrics,
                clusters: &set.clusters,
                pools: Pools::new(&own, &shared),
            };
            let (tenant, files) =
                build_tenant(loading, spec).with_context(|| format!("tenant {name:?}"))?;
            metrics.module_load(&name);
            set.pools.extend(own);
            set.watched.extend(files);
            set.tenants.push(Arc::new(tenant));
        }
        if let Some(default) = &file.default_tenant {
            let index = set
                .tenants
                .iter()
                .position(|t| &t.name == default)
                .with_context(|| format!("default_tenant {default:?} is not a tenant"))?;
            set.default = Some(index);
        }
        set.wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(set)
    }

    fn add_host(&mut self, host: &str, index: usize) -> anyhow::Result<()> {
        let host = host.trim().to_ascii_lowercase();
        let taken = |host: &str| bail!("host {host:?} is already served by another tenant");
        match host.strip_prefix('*') {
            Some(suffix) => {
                if !suffix.starts_with('.') || suffix.len() < 2 || suffix[1..].contains('*') {
                    bail!("host pattern {host:?}: a wildcard must be `*.name`");
                }
                if self.wildcards.iter().any(|(s, _)| s == suffix) {
                    return taken(&host);
                }
                self.wildcards.push((suffix.to_string(), index));
            }
            None => {
                if host.is_empty() || host.contains('*') {
                    bail!("host {host:?} is not a host name");
                }
                if self.exact.insert(host.clone(), index).is_some() {
                    return taken(&host);
                }
            }
        }
        Ok(())
    }

    /// The tenant for a request's Host: exact name, then the longest
    /// matching wildcard, then the default tenant.
    pub fn route(&self, host: Option<&str>) -> Option<&Arc<Tenant>> {
        if !self.routes_by_host() {
            return self.default.and_then(|index| self.tenants.get(index));
        }
        let index = host
            .and_then(|host| self.host_index(host))
            .or(self.default)?;
        self.tenants.get(index)
    }

    /// The certificate for a TLS server name: that of the tenant whose
    /// hosts match it (exact, then the longest wildcard), if it has one.
    pub fn certificate_for(&self, server_name: &str) -> Option<&Arc<Certificate>> {
        let index = self.host_index(server_name)?;
        self.tenants.get(index)?.certificate.as_ref()
    }

    /// Whether any tenant has a certificate.
    pub fn has_certificates(&self) -> bool {
        self.tenants.iter().any(|t| t.certificate.is_some())
    }

    /// The tenant whose hosts match `host`: its exact name, then the
    /// longest matching wildcard.
    fn host_index(&self, host: &str) -> Option<usize> {
        let host = normalise_host(host);
        self.exact.get(&host).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, index)| *index)
        })
    }

    /// Whether any tenant is chosen by Host; if not, every request goes to
    /// the default tenant and the Host need not be looked at.
    pub fn routes_by_host(&self) -> bool {
        !self.exact.is_empty() || !self.wildcards.is_empty()
    }

    /// The tenants, in file order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// Files whose change should trigger a reload.
    pub fn watched_files(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Every pool: the shared ones, then each tenant's own.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}

/// `owner`'s pools from a tenants file's `pools:` mapping.
fn build_pools(
    owner: &str,
    specs: &BTreeMap<String, serde_yaml::Value>,
    registries: &HealthRegistries,
) -> anyhow::Result<Vec<Arc<Pool>>> {
    specs
        .iter()
        .map(|(name, value)| {
            let spec =
                PoolSpec::from_yaml(name, value).with_context(|| format!("pool {name:?}"))?;
            Ok(Arc::new(Pool::new(owner, &spec, registries)?))
        })
        .collect()
}

/// What building one tenant of a tenants file needs besides its entry.
struct TenantLoad<'a> {
    engine: &'a GuestEngine,
    /// The tenants file's directory, which relative paths start from.
    base: &'a Path,
    defaults: TenantDefaults,
    metrics: &'a Metrics,
    clusters: &'a HashMap<String, SocketAddr>,
    /// The tenant's pools, built already.
    pools: Pools,
}

/// Builds one tenant; returns it and the files it was loaded from.
fn build_tenant(load: TenantLoad, spec: TenantSpec) -> anyhow::Result<(Tenant, Vec<PathBuf>)> {
    let TenantLoad {
        engine,
        base,
        defaults,
        metrics,
        clusters,
        pools,
    } = load;
    let (given, guest) = (&spec.limits, defaults.limits);
    let limits = GuestLimits {
        hook_timeout_ms: given.hook_timeout_ms.unwrap_or(guest.hook_timeout_ms),
        memory_limit_mib: given.memory_limit_mib.unwrap_or(guest.memory_limit_mib),
        instance_reuse: given.instance_reuse.unwrap_or(guest.instance_reuse),
    };
    limits.check().context("limits")?;
    let (breaker, budget) = (&spec.breaker, defaults.budget);
    let budget = BudgetLimits {
        max_concurrent_calls: given
            .max_concurrent_calls
            .unwrap_or(budget.max_concurrent_calls),
        cpu_ms_per_s: given.cpu_ms_per_s.unwrap_or(budget.cpu_ms_per_s),
        breaker_faults: breaker.faults.unwrap_or(budget.breaker_faults),
        breaker_window_ms: breaker.window_ms.unwrap_or(budget.breaker_window_ms),
        breaker_cooldown_ms: breaker.cooldown_ms.unwrap_or(budget.breaker_cooldown_ms),
    };
    budget.check().context("limits")?;
    let fallback_upstream = match &spec.fallback_upstream {
        Some(addr) => Some(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("fallback_upstream {addr:?} is not ip:port"))?,
        ),
        None => None,
    };
    let upstream = match &spec.upstream {
        Some(value) => Some(StaticUpstream::from_yaml(value).context("upstream")?),
        None => None,
    };
    let config_json = match &spec.config {
        Some(config) => serde_json::to_string(config).context("config is not JSON-compatible")?,
        None => "{}".to_string(),
    };
    let label = |file: &Path| -> Arc<str> {
        format!(
            "{} (tenant {})",
            file.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            spec.name
        )
        .into()
    };
    let mut files = Vec::new();
    let certificate = match &spec.tls {
        Some(_) if spec.hosts.is_empty() => bail!(
            "tls: a tenant's certificate is served to the names of its hosts, and it has none \
             (names no tenant serves get --cert)"
        ),
        Some(tls) => {
            let (cert, key) = (base.join(&tls.cert), base.join(&tls.key));
            let certificate = Certificate::load(&cert, &key).context("tls")?;
            files.extend([cert, key]);
            Some(Arc::new(certificate))
        }
        None => None,
    };
    let module = match &spec.module {
        Some(path) => {
            let module_path = base.join(path);
            files.push(module_path.clone());
            Some(Arc::new(GuestModule::load(
                engine,
                label(path),
                &module_path,
                &config_json,
                limits,
            )?))
        }
        None => None,
    };
    check_routing(module.as_deref(), upstream.as_ref(), "`upstream:`")?;
    if spec.on_guest_error == GuestErrorPolicy::FailOpen
        && module
            .as_ref()
            .is_some_and(|m| m.exports(Hook::UpstreamPeer))
        && fallback_upstream.is_none()
    {
        bail!("on_guest_error: fail_open needs a fallback_upstream for when upstream_peer fails");
    }
    let mut filters = Vec::new();
    for (index, filter) in spec.filters.iter().enumerate() {
        let path = base.join(&filter.module);
        let config = match &filter.config {
            None => Vec::new(),
            Some(serde_yaml::Value::String(text)) => text.clone().into_bytes(),
            // A mapping (or any other value) is passed as its JSON text.
            Some(other) => serde_json::to_vec(other)
                .with_context(|| format!("filters[{index}].config is not JSON-compatible"))?,
        };
        let filter_spec = FilterSpec {
            config,
            vm_config: filter.vm_config.clone().unwrap_or_default().into_bytes(),
            root_id: filter.root_id.clone().unwrap_or_default(),
            metrics: Some((metrics.filter_family(), spec.name.clone())),
            clusters: clusters.clone(),
        };
        let loaded = FilterModule::load(engine, label(&filter.module), &path, filter_spec, limits)
            .with_context(|| format!("filters[{index}]"))?;
        files.push(path);
        filters.push(TenantFilter {
            module: Arc::new(loaded),
            on_error: filter.on_error,
        });
    }
    let tenant_label: Arc<str> = match (&spec.module, spec.filters.first()) {
        (Some(path), _) => label(path),
        _ => format!("tenant {}", spec.name).into(),
    };
    let tenant = Tenant {
        budget: Budget::new(budget, metrics.tenant(&spec.name)),
        metrics: metrics.tenant(&spec.name),
        name: spec.name,
        label: tenant_label,
        module,
        filters,
        on_guest_error: spec.on_guest_error,
        fallback_upstream,
        upstream,
        pools,
        certificate,
    };
    Ok((tenant, files))
}

/// Refuses a module that cannot say where requests go: it exports no
/// `upstream_peer` and its tenant has no static upstream (`how` says how
/// to give one).
fn check_routing(
    module: Option<&GuestModule>,
    upstream: Option<&StaticUpstream>,
    how: &str,
) -> anyhow::Result<()> {
    if upstream.is_some() {
        return Ok(());
    }
    match module {
        Some(module) if !module.exports(Hook::UpstreamPeer) => bail!(
            "module {} exports no `upstream_peer` and has no static upstream: \
             give one with {how}, or export upstream_peer",
            module.name()
        ),
        Some(_) => Ok(()),
        None => bail!("no module chooses an upstream: give a static one with {how}"),
    }
}

/// Lower case, no port, no trailing dot: `Acme.Example.:8080` -> `acme.example`.
fn normalise_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(hosts: &[(&str, usize)], default: Option<usize>) -> TenantSet {
        let mut set = TenantSet {
            tenants: Vec::new(),
            exact: HashMap::new(),
            wildcards: Vec::new(),
            default,
            watched: Vec::new(),
            clusters: HashMap::new(),
            pools: Vec::new(),
        };
        for (host, index) in hosts {
            set.add_host(host, *index).unwrap();
        }
        set.wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        set
    }

    fn index(set: &TenantSet, host: &str) -> Option<usize> {
        set.host_index(host).or(set.default)
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let set = set(
            &[
                ("acme.example", 0),
                ("*.acme.example", 1),
                ("*.eu.acme.example", 2),
            ],
            Some(3),
        );
        assert_eq!(index(&set, "ACME.example:8080"), Some(0));
        assert_eq!(index(&set, "shop.acme.example"), Some(1));
        assert_eq!(index(&set, "a.eu.acme.example."), Some(2));
        assert_eq!(index(&set, "other.example"), Some(3));
        assert_eq!(index(&set, "[::1]:80"), Some(3));
    }

    #[test]
    fn bad_and_duplicate_hosts_are_refused() {
        let mut set = set(&[("a.example", 0)], None);
        assert!(set.add_host("a.example", 1).is_err());
        assert!(set.add_host("*example", 1).is_err());
        assert!(set.add_host("*.*.example", 1).is_err());
        assert!(set.add_host("", 1).is_err());
        assert_eq!(index(&set, "b.example"), None);
    }
}
