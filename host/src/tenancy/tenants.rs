//! Tenants: which guest module serves which Host, under which limits.
//!
//! A [`TenantSet`] is immutable; a reload builds a new one and swaps it in,
//! so a request keeps the tenant (and module) it was routed to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

use crate::abi::hook_table::Hook;
use crate::abi::proxy_wasm::{
    vm_key, FilterEntry, FilterLimits, FilterModule, FilterSpec, ScopeCounters, TenantScope, VmKey,
};
use crate::abi::v1::V1Module;
pub use crate::config_model::GuestErrorPolicy;
use crate::config_model::{
    debug_without_origins, EgressConfig, JsonText, Located, Naming, Origin, PluginConfig,
    PoolConfig, TenantConfig, TenantsConfig,
};
use crate::edge::tls::Certificate;
use crate::metrics::{Metrics, TenantMetrics};
use crate::modules::{self, ModuleSources, Unfetched};
use crate::tenancy::budget::{Budget, BudgetLimits};
use crate::upstream::egress::{Egress, OwnAddresses};
use crate::upstream::pools::{HealthRegistries, LivePools, Pool, PoolSpec, Pools, SHARED};
use crate::upstream::StaticUpstream;
use wasm_runtime::{guest_text::LogRate, GuestEngine, GuestLimits, InstanceQuota};

/// The limits and budget of a tenant that sets none of its own (from the
/// command line flags).
#[derive(Debug, Clone, Default)]
pub struct TenantDefaults {
    /// Per-instance limits.
    pub limits: GuestLimits,
    /// Per-tenant budget and breaker.
    pub budget: BudgetLimits,
    /// `--egress-allow` entries: the egress of tenants when the tenants
    /// file has none (None: the flag was not given).
    pub egress: Option<Vec<String>>,
    /// The proxy's own listeners and metrics address, which no guest may
    /// reach.
    pub own: Arc<OwnAddresses>,
}

/// One tenant: a name, its routing module and filters, its budget and
/// what to do when a guest fails.
pub struct Tenant {
    /// The tenant's name, as in logs and metrics.
    pub name: String,
    /// Its routing module (this host's ABI), if it has one.
    pub module: Option<Arc<V1Module>>,
    /// Its proxy-wasm filters, run in this order.
    pub filters: Vec<TenantFilter>,
    /// How its guests are named in logs: the module's name, or the
    /// tenant's.
    pub label: Arc<str>,
    /// Fail closed or open.
    pub on_guest_error: GuestErrorPolicy,
    /// Where fail-open requests go when `upstream_peer` failed.
    pub fallback_upstream: Option<StaticUpstream>,
    /// Where requests go when the module exports no `upstream_peer`.
    pub upstream: Option<StaticUpstream>,
    /// The pools its module may send requests to.
    pub pools: Pools,
    /// Its certificate, served on TLS listeners to the names of its hosts.
    pub certificate: Option<Arc<Certificate>>,
    /// Its guest budget and circuit breaker.
    pub budget: Budget,
    /// What its guests share and may reach: shared data, clusters,
    /// egress, callout and metric bounds.
    pub scope: Arc<TenantScope>,
    /// Its request and hook metrics.
    pub metrics: TenantMetrics,
    /// What it was built from, for a reload to tell whether it changed.
    pub loaded: LoadedFrom,
}

/// What a tenant was built from. A reload whose inputs for a tenant are
/// the same keeps that tenant whole: its instances, budget, breaker and
/// filter root contexts go on as if nothing happened.
#[derive(Default)]
pub struct LoadedFrom {
    /// Digests of what it was built from.
    inputs: TenantInputs,
    /// Its own pools.
    own_pools: Vec<Arc<Pool>>,
    /// The files it was loaded from, watched for changes.
    files: Vec<PathBuf>,
    /// Its module and filters as named (a path or a URL), each with the
    /// digest of its bytes.
    modules: Vec<(String, String)>,
}

/// A proxy-wasm filter of a tenant, and what its faults do.
#[derive(Clone)]
pub struct TenantFilter {
    /// The loaded filter.
    pub module: Arc<FilterModule>,
    /// Its VM among its tenant's (0, 1, ...): entries of one VM share an
    /// instance within a request.
    pub vm: usize,
    /// `fail_closed`: a fault answers 500; `fail_open`: the filter is
    /// skipped for the rest of the request.
    pub on_error: GuestErrorPolicy,
}

/// Where the tenant set comes from, so it can be loaded again.
#[derive(Debug, Clone)]
pub enum TenantSource {
    /// One tenant serving every Host, from the command line: a module
    /// (`host MODULE.wasm`), filters (`--filter`), or both; built again
    /// from the same configuration at each reload.
    CommandLine(TenantsConfig),
    /// A tenants file (`host --tenants FILE`), read again at each reload.
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
    clusters: HashMap<String, StaticUpstream>,
    /// Every pool: the shared ones, then each tenant's own.
    pools: Vec<Arc<Pool>>,
    /// Tenants whose new configuration failed to load on a reload: each
    /// kept its previous version, or was not added if new.
    failed: Vec<String>,
    /// Indexes of tenants kept only to hold their hosts, certificate and
    /// place as `default_tenant`, out of service: their new configuration
    /// failed to load while it changed their grants. Their requests get
    /// 404; none of their guests runs.
    withheld: HashSet<usize>,
}

impl TenantSet {
    /// Loads every tenant of `source`. `defaults` are the limits of
    /// tenants that do not set their own; pools that stay keep their
    /// health state from `registries`.
    ///
    /// At start-up (`previous` is None) any problem refuses the whole set.
    /// On a reload, a tenant whose inputs did not change is kept as it is
    /// in `previous`, and one whose module, filters or limits fail to load
    /// keeps its previous version (a new one is left out); problems
    /// outside the tenants' own entries still refuse the whole set.
    pub fn load(
        engine: &GuestEngine,
        source: &TenantSource,
        defaults: TenantDefaults,
        metrics: &Metrics,
        registries: &HealthRegistries,
        modules: &ModuleSources,
        previous: Option<&TenantSet>,
    ) -> anyhow::Result<Self> {
        let loading = SetLoad {
            engine,
            defaults,
            metrics,
            registries,
            modules,
            previous,
        };
        match source {
            TenantSource::CommandLine(config) => Self::build(loading, config),
            TenantSource::File(path) => {
                let mut set = TenantsConfig::read(path)
                    .and_then(|config| Self::build(loading, &config))
                    .with_context(|| format!("tenants file {}", path.display()))?;
                set.watched.insert(0, path.clone());
                Ok(set)
            }
        }
    }

    /// The tenants of `config`, whether a file or the command line gave it.
    fn build(load: SetLoad, config: &TenantsConfig) -> anyhow::Result<Self> {
        let SetLoad {
            engine,
            defaults,
            metrics,
            registries,
            modules,
            previous,
        } = load;
        let mut set = TenantSet {
            tenants: Vec::new(),
            exact: HashMap::new(),
            wildcards: Vec::new(),
            default: None,
            watched: Vec::new(),
            clusters: HashMap::new(),
            pools: Vec::new(),
            failed: Vec::new(),
            withheld: HashSet::new(),
        };
        for (name, cluster) in &config.clusters {
            let parsed = StaticUpstream::from_config(&cluster.value)
                .with_context(|| format!("cluster {name:?}"))
                .map_err(|e| cluster.origin.locate(e, || format!("clusters.{name}")))?;
            set.clusters.insert(name.clone(), parsed);
        }
        let shared = build_pools(SHARED, &config.pools, registries, |e, name, origin| {
            origin.locate(e, || format!("pools.{name}"))
        })?;
        set.pools.extend(shared.iter().cloned());
        let mut names = HashSet::new();
        for (index, entry) in config.tenants.iter().enumerate() {
            let spec = &entry.value;
            let place = EntryPlace {
                origin: &entry.origin,
                key: format!("tenants[{index}]"),
                context: config.naming.error_context(&spec.name),
            };
            let name = spec.name.clone();
            if !names.insert(name.clone()) {
                let error = anyhow!("tenant {name:?} appears twice");
                return Err(place.error("name", &Origin::Unknown, error));
            }
            // Modules named by URL are fetched first: what a tag names
            // now is part of what the tenant is built from.
            let resolution = resolve_modules(modules, config, spec, &place);
            // Code from a registry or a URL that cannot be had, or does
            // not load, is its tenant's failure, at start-up too: a
            // registry's trouble (or a broken push) is not the process's.
            let fatal_at_start = match &resolution {
                Err(e) => !Unfetched::caused(e),
                Ok(_) => !spec_names_urls(spec),
            };
            let inputs = match &resolution {
                Ok((resolved, _)) => TenantInputs::of(config, resolved, &defaults),
                Err(_) => TenantInputs::of(config, spec, &defaults),
            };
            let before = previous.and_then(|set| set.tenant(&name));
            let unchanged = before
                .filter(|tenant| resolution.is_ok() && tenant.loaded.inputs.all == inputs.all);
            let tenant = match unchanged {
                Some(unchanged) => unchanged.clone(),
                None => {
                    let built = resolution.and_then(|(resolved, digests)| {
                        let spec = &resolved;
                        let own =
                            build_pools(&name, &spec.pools, registries, |e, pool, origin| {
                                place.error(&format!("pools.{pool}"), origin, e)
                            })?;
                        let loading = TenantLoad {
                            engine,
                            base: &config.base,
                            naming: config.naming,
                            defaults: defaults.clone(),
                            file_egress: config.egress.as_ref(),
                            metrics,
                            clusters: &set.clusters,
                            pools: Pools::new(&own, &shared),
                        };
                        let mut tenant = build_tenant(loading, spec, &place, inputs, own)?;
                        for (module, digest) in &digests {
                            log::info!("tenant {name}: module {module} is {digest}");
                        }
                        tenant.loaded.modules = digests;
                        Ok(tenant)
                    });
                    match (built, before) {
                        (Ok(tenant), _) => {
                            metrics.module_load(&name);
                            Arc::new(tenant)
                        }
                        // A module that cannot be fetched fails its tenant
                        // only, at start-up too: a registry's trouble is
                        // not the process's (but the command line's one
                        // tenant is the whole configuration).
                        (Err(e), _)
                            if previous.is_none()
                                && (fatal_at_start || config.naming == Naming::CommandLine) =>
                        {
                            return Err(e)
                        }
                        (Err(e), before) => {
                            let error = format!("{e:#}").replace('\n', " ");
                            // Its new files are watched: fixing them
                            // reloads.
                            set.watched.extend(tenant_files(config, spec));
                            set.failed.push(name.clone());
                            match before {
                                Some(before) if before.loaded.inputs.grants == inputs.grants => {
                                    log::error!(
                                        "tenant {name}: its new configuration failed to load, \
                                         its previous version keeps serving: {error}"
                                    );
                                    before.clone()
                                }
                                Some(before) => {
                                    log::error!(
                                        "tenant {name}: its new configuration failed to load and \
                                         changes what it is granted (limits, egress, clusters, \
                                         pools, upstreams), so its previous version is taken out \
                                         of service (its hosts get 404): {error}"
                                    );
                                    // Kept for its hosts, certificate and
                                    // default_tenant, but not served: its
                                    // hosts never fall to another tenant.
                                    set.withheld.insert(set.tenants.len());
                                    before.clone()
                                }
                                None => {
                                    log::error!(
                                        "tenant {name}: failed to load, not added: {error}"
                                    );
                                    continue;
                                }
                            }
                        }
                    }
                }
            };
            let at = set.tenants.len();
            for (number, host) in spec.hosts.iter().enumerate() {
                set.add_host(&host.value, at)
                    .map_err(|e| place.error(&format!("hosts[{number}]"), &host.origin, e))?;
            }
            set.pools.extend(tenant.loaded.own_pools.iter().cloned());
            set.watched.extend(tenant.loaded.files.iter().cloned());
            set.tenants.push(tenant);
        }
        if let Some(default) = &config.default_tenant {
            let index = set
                .tenants
                .iter()
                .position(|t| t.name == default.value)
                .with_context(|| format!("default_tenant {:?} is not a tenant", default.value))
                .map_err(|e| default.origin.locate(e, || "default_tenant".into()))?;
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
    /// A tenant out of service (see `withheld`) is routed to but not
    /// given: None, as for no tenant.
    pub fn route(&self, host: Option<&str>) -> Option<&Arc<Tenant>> {
        let index = if self.routes_by_host() {
            host.and_then(|host| self.host_index(host))
                .or(self.default)?
        } else {
            self.default?
        };
        if self.withheld.contains(&index) {
            return None;
        }
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

    /// The tenants in service, in file order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        let withheld = &self.withheld;
        self.tenants
            .iter()
            .enumerate()
            .filter(move |(index, _)| !withheld.contains(index))
            .map(|(_, tenant)| tenant)
    }

    /// Files whose change should trigger a reload.
    pub fn watched_files(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Every pool: the shared ones, then each tenant's own.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The tenant called `name`.
    fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|tenant| tenant.name == name)
    }

    /// Tenants whose new configuration failed to load on the reload that
    /// made this set.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// Removes the metric series of this set's filters that `next` does
    /// not carry on (same tenant and plugin name), and the configuration
    /// state of tenants `next` does not name: a tenant or filter that goes
    /// takes its series with it.
    pub fn retire(&self, next: &TenantSet, metrics: &Metrics) {
        let names = self.tenants.iter().map(|t| &t.name).chain(&self.failed);
        for name in names {
            if next.tenant(name).is_none() && !next.failed.contains(name) {
                metrics.forget_tenant_config(name);
            }
        }
        // A series goes unless the next set's filter of the same tenant
        // and plugin name defines it too (then the two share it).
        let defined: HashSet<(String, String, String)> = next
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant.filters.iter().flat_map(move |filter| {
                    let plugin = filter.module.plugin_name().to_string();
                    let tenant = tenant.name.clone();
                    filter
                        .module
                        .metric_names()
                        .into_iter()
                        .map(move |name| (tenant.clone(), plugin.clone(), name))
                })
            })
            .collect();
        for tenant in &self.tenants {
            for filter in &tenant.filters {
                let plugin = filter.module.plugin_name();
                filter.module.remove_metric_series(|name| {
                    defined.contains(&(tenant.name.clone(), plugin.to_string(), name.to_string()))
                });
            }
        }
    }

    /// Sets `wasm_proxy_tenant_config_ok` for every tenant of the set and
    /// every one that failed to load.
    pub fn report(&self, metrics: &Metrics) {
        for tenant in &self.tenants {
            metrics.tenant_config_ok(&tenant.name, !self.failed.contains(&tenant.name));
        }
        for name in &self.failed {
            metrics.tenant_config_ok(name, false);
        }
        metrics.module_info(self.tenants.iter().flat_map(|tenant| {
            tenant
                .loaded
                .modules
                .iter()
                .map(|(module, digest)| (tenant.name.as_str(), module.as_str(), digest.as_str()))
        }));
    }
}

/// What a tenant is built from, as digests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TenantInputs {
    /// Everything: its entry (without where it was written: editing
    /// another tenant moves its lines), the bytes of its module, filters
    /// and certificate, the file's shared clusters, egress and pools, and
    /// the defaults. Unchanged: the tenant is carried over whole.
    all: [u8; 32],
    /// What the operator grants it: the same but for its code (module,
    /// filters, their configurations) and certificate. A tenant whose new
    /// code fails to load keeps its previous version only while these are
    /// the same, so a broken deploy never keeps a grant the operator took
    /// away.
    grants: [u8; 32],
}

impl TenantInputs {
    fn of(config: &TenantsConfig, spec: &TenantConfig, defaults: &TenantDefaults) -> Self {
        use sha2::{Digest, Sha256};
        let shared = debug_without_origins(&(
            &config.clusters,
            &config.egress,
            &config.pools,
            &config.base,
            config.naming,
            defaults,
        ));
        let granted = TenantConfig {
            module: None,
            sha256: None,
            filters: Vec::new(),
            config: None,
            tls: None,
            ..spec.clone()
        };
        let grants = Sha256::new()
            .chain_update(debug_without_origins(&granted))
            .chain_update(&shared)
            .finalize()
            .into();
        let mut all = Sha256::new()
            .chain_update(debug_without_origins(spec))
            .chain_update(&shared);
        for path in tenant_files(config, spec) {
            all.update(path.as_os_str().as_encoded_bytes());
            match std::fs::read(&path) {
                Ok(bytes) => all.update(Sha256::digest(&bytes)),
                Err(e) => all.update(e.to_string()),
            }
        }
        TenantInputs {
            all: all.finalize().into(),
            grants,
        }
    }
}

/// Whether `spec` names a module or filter by URL.
fn spec_names_urls(spec: &TenantConfig) -> bool {
    spec.module
        .iter()
        .chain(spec.filters.iter().map(|filter| &filter.value.module))
        .any(|module| modules::is_url(&module.value))
}

/// `spec` with every module it names found: one named by URL fetched
/// (or found in the cache) and named by its cached file instead; with
/// each module as named and the digest of its bytes.
fn resolve_modules(
    modules: &ModuleSources,
    config: &TenantsConfig,
    spec: &TenantConfig,
    place: &EntryPlace,
) -> anyhow::Result<(TenantConfig, Vec<(String, String)>)> {
    let mut resolved = spec.clone();
    let mut digests = Vec::new();
    let mut find =
        |module: &mut Located<PathBuf>, sha256: Option<&Located<String>>, key: String| {
            let named = modules::shown(&module.value);
            let sha256 = sha256.map(|s| s.value.as_str());
            let found = modules
                .resolve(&module.value, &config.base, sha256, &config.registries)
                .map_err(|e| place.error(&key, &module.origin, e))?;
            module.value = found.path;
            if !found.digest.is_empty() {
                digests.push((named, found.digest));
            }
            anyhow::Ok(())
        };
    if let Some(module) = &mut resolved.module {
        find(module, spec.sha256.as_ref(), "module".into())?;
    }
    for (index, filter) in resolved.filters.iter_mut().enumerate() {
        let sha256 = filter.value.sha256.clone();
        let key = format!("filters[{index}].module");
        find(&mut filter.value.module, sha256.as_ref(), key)?;
    }
    Ok((resolved, digests))
}

/// The files tenant `spec` reads: its module, filters and certificate.
fn tenant_files(config: &TenantsConfig, spec: &TenantConfig) -> Vec<PathBuf> {
    spec.module
        .iter()
        .map(|module| &module.value)
        .chain(spec.filters.iter().map(|filter| &filter.value.module.value))
        .chain(
            spec.tls
                .iter()
                .flat_map(|tls| [&tls.value.cert, &tls.value.key]),
        )
        // A `file://` module is its path; other URLs name no file here
        // (a fetched module is a cache path by the time it is built).
        .filter(|file| !modules::is_url(file))
        .map(
            |file| match file.to_str().and_then(|f| f.strip_prefix("file://")) {
                Some(path) => config.base.join(path),
                None => config.base.join(file),
            },
        )
        .collect()
}

impl LivePools for TenantSet {
    fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}

/// `owner`'s pools; `place` says where a pool's error comes from.
fn build_pools(
    owner: &str,
    configs: &BTreeMap<String, Located<PoolConfig>>,
    registries: &HealthRegistries,
    place: impl Fn(anyhow::Error, &str, &Origin) -> anyhow::Error,
) -> anyhow::Result<Vec<Arc<Pool>>> {
    configs
        .iter()
        .map(|(name, config)| {
            PoolSpec::from_config(name, &config.value)
                .and_then(|spec| Ok(Arc::new(Pool::new(owner, &spec, registries)?)))
                .map_err(|e| place(e, name, &config.origin))
        })
        .collect()
}

/// What building a tenant set needs besides its configuration.
struct SetLoad<'a> {
    engine: &'a GuestEngine,
    defaults: TenantDefaults,
    metrics: &'a Metrics,
    registries: &'a HealthRegistries,
    modules: &'a ModuleSources,
    /// The set a reload replaces; None at start-up.
    previous: Option<&'a TenantSet>,
}

/// What building one tenant needs besides its entry.
struct TenantLoad<'a> {
    engine: &'a GuestEngine,
    /// The directory relative paths start from.
    base: &'a Path,
    naming: Naming,
    defaults: TenantDefaults,
    /// The file's own `egress:`, for tenants without one.
    file_egress: Option<&'a Located<EgressConfig>>,
    metrics: &'a Metrics,
    clusters: &'a HashMap<String, StaticUpstream>,
    /// The tenant's pools, built already.
    pools: Pools,
}

/// Where a tenant's entry is, so that its errors say so.
struct EntryPlace<'a> {
    /// The entry's own origin, for fields without one.
    origin: &'a Origin,
    /// Its key path: `tenants[2]`.
    key: String,
    /// What its errors say first: which tenant.
    context: Option<String>,
}

impl EntryPlace<'_> {
    /// `error` caused by the entry's `field` (its key under the entry,
    /// written at `origin` if known): `line 7 column 15:
    /// tenants[2].upstream: tenant "acme": ...`.
    fn error(&self, field: &str, origin: &Origin, error: anyhow::Error) -> anyhow::Error {
        let error = match &self.context {
            Some(context) => error.context(context.clone()),
            None => error,
        };
        origin.or(self.origin).locate(error, || match field {
            "" => self.key.clone(),
            field => format!("{}.{field}", self.key),
        })
    }
}

/// Builds one tenant from its entry, whose `inputs` digest it keeps, with
/// its `own_pools`, built already.
fn build_tenant(
    load: TenantLoad,
    spec: &TenantConfig,
    place: &EntryPlace,
    inputs: TenantInputs,
    own_pools: Vec<Arc<Pool>>,
) -> anyhow::Result<Tenant> {
    let TenantLoad {
        engine,
        base,
        naming,
        defaults,
        file_egress,
        metrics,
        clusters,
        pools,
    } = load;
    let (given, guest) = (&spec.limits.value, defaults.limits);
    let limits = GuestLimits {
        hook_timeout_ms: given.hook_timeout_ms.unwrap_or(guest.hook_timeout_ms),
        memory_limit_mib: given.memory_limit_mib.unwrap_or(guest.memory_limit_mib),
        instance_reuse: given.instance_reuse.unwrap_or(guest.instance_reuse),
    };
    let at_limits = |e: anyhow::Error| place.error("limits", &spec.limits.origin, e);
    limits.check().context("limits").map_err(at_limits)?;
    // The limits first, then the breaker, so the error points at the
    // right one (the flags' values pass).
    let budget = BudgetLimits {
        max_concurrent_calls: given
            .max_concurrent_calls
            .unwrap_or(defaults.budget.max_concurrent_calls),
        cpu_ms_per_s: given.cpu_ms_per_s.unwrap_or(defaults.budget.cpu_ms_per_s),
        ..defaults.budget
    };
    budget.check().context("limits").map_err(at_limits)?;
    let breaker = &spec.breaker.value;
    if breaker.faults.is_some() {
        let error = anyhow!(
            "breaker.faults was replaced by min_calls and fault_percent: the breaker opens \
             when at least min_calls calls in window_ms saw at least fault_percent% faults \
             (defaults 20 and 50)"
        );
        return Err(place.error("breaker", &spec.breaker.origin, error));
    }
    let budget = BudgetLimits {
        breaker_min_calls: breaker.min_calls.unwrap_or(budget.breaker_min_calls),
        breaker_fault_percent: breaker
            .fault_percent
            .unwrap_or(budget.breaker_fault_percent),
        breaker_window_ms: breaker.window_ms.unwrap_or(budget.breaker_window_ms),
        breaker_cooldown_ms: breaker.cooldown_ms.unwrap_or(budget.breaker_cooldown_ms),
        ..budget
    };
    budget
        .check()
        .map_err(|e| place.error("breaker", &spec.breaker.origin, e))?;
    let max_instances = given.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
    if !(1..=MAX_INSTANCES).contains(&max_instances) {
        let error = anyhow!("limits: max_instances must be 1-{MAX_INSTANCES}");
        return Err(place.error("limits", &spec.limits.origin, error));
    }
    let max_memory_mib = given.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB);
    if !(1..=MAX_MEMORY_MIB).contains(&max_memory_mib) {
        let error = anyhow!("limits: max_memory_mib must be 1-{MAX_MEMORY_MIB}");
        return Err(place.error("limits", &spec.limits.origin, error));
    }
    let quota = InstanceQuota::with_memory(max_instances, max_memory_mib << 20);
    let log_lines_per_s = given.log_lines_per_s.unwrap_or(DEFAULT_LOG_LINES_PER_S);
    let dropped = metrics.guest_log_dropped(&spec.name);
    let log_rate = Arc::new(LogRate::new(log_lines_per_s, move || dropped.inc()));
    let fallback_upstream = match &spec.fallback_upstream {
        Some(config) => Some(
            StaticUpstream::from_config(&config.value)
                .context("fallback_upstream")
                .map_err(|e| place.error("fallback_upstream", &config.origin, e))?,
        ),
        None => None,
    };
    let upstream = match &spec.upstream {
        Some(config) => Some(
            StaticUpstream::from_config(&config.value)
                .map_err(|e| place.error("upstream", &config.origin, e))?,
        ),
        None => None,
    };
    let config_json = match &spec.config {
        Some(JsonText(json)) => json.as_str(),
        None => "{}",
    };
    let mut files = Vec::new();
    let certificate = match &spec.tls {
        Some(tls) => {
            let at_tls = |e: anyhow::Error| place.error("tls", &tls.origin, e);
            if spec.hosts.is_empty() {
                return Err(at_tls(anyhow!(
                    "tls: a tenant's certificate is served to the names of its hosts, and it \
                     has none (names no tenant serves get --cert)"
                )));
            }
            let (cert, key) = (base.join(&tls.value.cert), base.join(&tls.value.key));
            let certificate = Certificate::load(&cert, &key)
                .context("tls")
                .map_err(at_tls)?;
            files.extend([cert, key]);
            Some(Arc::new(certificate))
        }
        None => None,
    };
    let module = match &spec.module {
        Some(path) => {
            let module_path = base.join(&path.value);
            files.push(module_path.clone());
            let module = V1Module::load(
                engine,
                naming.guest(&path.value, &spec.name),
                &module_path,
                config_json,
                limits,
            )
            .map_err(|e| place.error("module", &path.origin, e))?;
            Some(Arc::new(
                module
                    .with_quota(quota.clone())
                    .with_log_rate(log_rate.clone()),
            ))
        }
        None => None,
    };
    check_routing(module.as_deref(), upstream.as_ref(), naming.upstream_hint()).map_err(|e| {
        match &spec.module {
            Some(path) => place.error("module", &path.origin, e),
            None => place.error("", &Origin::Unknown, e),
        }
    })?;
    if spec.on_guest_error.value == GuestErrorPolicy::FailReload {
        let error = anyhow!(
            "on_guest_error: fail_reload is a filter's on_error (a routing module's instances \
             are replaced after each fault already)"
        );
        return Err(place.error("on_guest_error", &spec.on_guest_error.origin, error));
    }
    if spec.on_guest_error.value == GuestErrorPolicy::FailOpen
        && module
            .as_ref()
            .is_some_and(|m| m.exports(Hook::UpstreamPeer))
        && fallback_upstream.is_none()
    {
        let error = anyhow!(
            "on_guest_error: fail_open needs a fallback_upstream for when upstream_peer fails"
        );
        return Err(place.error("on_guest_error", &spec.on_guest_error.origin, error));
    }
    let scope = Arc::new(build_scope(
        spec,
        place,
        &defaults,
        file_egress,
        clusters,
        metrics,
    )?);
    // Entries with the same VM key share a VM, loaded once with a plugin
    // per entry (Envoy's VM sharing).
    /// The entries of one VM, by their index in the tenant's filters.
    struct VmGroup {
        key: (VmKey, String),
        bytes: Vec<u8>,
        entries: Vec<(usize, FilterEntry)>,
    }
    let mut vms: Vec<VmGroup> = Vec::new();
    for (index, entry) in spec.filters.iter().enumerate() {
        let filter = &entry.value;
        let path = base.join(&filter.module.value);
        let at = format!("filters[{index}]");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(|e| place.error(&at, &entry.origin, e))?;
        let filter_spec = FilterSpec {
            config: filter
                .config
                .clone()
                .map(PluginConfig::into_bytes)
                .unwrap_or_default(),
            vm_config: filter
                .vm_config
                .as_ref()
                .map(|vm| vm.configuration.clone().into_bytes())
                .unwrap_or_default(),
            vm_id: filter
                .vm_config
                .as_ref()
                .map(|vm| vm.vm_id.clone())
                .unwrap_or_default(),
            root_id: filter.root_id.clone().unwrap_or_default(),
            metrics: Some((metrics.filter_family(), spec.name.clone())),
            scope: scope.clone(),
            quota: quota.clone(),
            log_rate: Some(log_rate.clone()),
        };
        let plugin_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The file name too: a VM's metrics are labelled with it.
        let key = (vm_key(&filter_spec, &bytes), plugin_name.clone());
        let loaded = FilterEntry {
            name: naming.guest(&filter.module.value, &spec.name),
            plugin_name,
            spec: filter_spec,
        };
        files.push(path);
        match vms.iter_mut().find(|vm| vm.key == key) {
            Some(vm) => vm.entries.push((index, loaded)),
            None => vms.push(VmGroup {
                key,
                bytes,
                entries: vec![(index, loaded)],
            }),
        }
    }
    let mut filters = Vec::new();
    for (vm, VmGroup { bytes, entries, .. }) in vms.into_iter().enumerate() {
        let (indexes, entries): (Vec<usize>, Vec<FilterEntry>) = entries.into_iter().unzip();
        let loaded = FilterModule::load_vm(engine, &bytes, entries, limits).map_err(|(i, e)| {
            let index = indexes[i];
            let entry = &spec.filters[index];
            let path = base.join(&entry.value.module.value);
            let e = e.context(format!("loading filter {}", path.display()));
            place.error(&format!("filters[{index}]"), &entry.origin, e)
        })?;
        for (index, module) in indexes.into_iter().zip(loaded) {
            filters.push((
                index,
                TenantFilter {
                    module: Arc::new(module),
                    vm,
                    on_error: spec.filters[index].value.on_error,
                },
            ));
        }
    }
    filters.sort_by_key(|(index, _)| *index);
    let filters = filters.into_iter().map(|(_, filter)| filter).collect();
    let tenant = Tenant {
        budget: Budget::new(budget, metrics.tenant(&spec.name)),
        scope,
        metrics: metrics.tenant(&spec.name),
        name: spec.name.clone(),
        label: naming.tenant(spec),
        module,
        filters,
        on_guest_error: spec.on_guest_error.value,
        fallback_upstream,
        upstream,
        pools,
        certificate,
        loaded: LoadedFrom {
            inputs,
            own_pools,
            files,
            modules: Vec::new(),
        },
    };
    Ok(tenant)
}

/// Instances a tenant may keep alive at once unless it says otherwise.
/// The engine's pool has 1,000 slots: eight tenants at this bound take
/// 800, which leaves room for a reload's second set and for tenants below
/// their bound; a tenant's calls in flight (`max_concurrent_calls`,
/// default 8) and the requests its filters hold rarely need more.
pub const DEFAULT_MAX_INSTANCES: u32 = 100;

/// Linear memory a tenant's live instances may hold together unless it
/// says otherwise, in MiB. An honest instance holds one to a few MiB, so
/// the default instances fit many times over; a guest that grows each
/// instance to its 64 MiB cap gets 16 of them. Eight tenants at this
/// bound hold 8 GiB, a third of a 24 GiB machine.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 1024;

/// Largest `max_memory_mib` accepted: 1 TiB.
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Guest log lines a tenant may write per second unless it says
/// otherwise: ample for request logging at moderate rates, while a flood
/// of lines cannot fill the disk.
pub const DEFAULT_LOG_LINES_PER_S: u32 = 1000;

/// Largest `max_instances` accepted: the engine's pool.
const MAX_INSTANCES: u32 = 1000;

/// The tenant's scope: its clusters (the shared ones, then its own, which
/// win), its egress (its own `egress:`, else the file's, else
/// `--egress-allow`), its filter bounds and its shared data.
fn build_scope(
    spec: &TenantConfig,
    place: &EntryPlace,
    defaults: &TenantDefaults,
    file_egress: Option<&Located<EgressConfig>>,
    shared_clusters: &HashMap<String, StaticUpstream>,
    metrics: &Metrics,
) -> anyhow::Result<TenantScope> {
    let mut clusters = shared_clusters.clone();
    for (name, cluster) in &spec.clusters {
        let parsed = StaticUpstream::from_config(&cluster.value)
            .with_context(|| format!("cluster {name:?}"))
            .map_err(|e| place.error(&format!("clusters.{name}"), &cluster.origin, e))?;
        clusters.insert(name.clone(), parsed);
    }
    let egress = match spec.egress.as_ref().or(file_egress) {
        Some(config) => Egress::new(Some(&config.value.allow), defaults.own.clone())
            .context("egress")
            .map_err(|e| place.error("egress", &config.origin, e))?,
        None => Egress::new(defaults.egress.as_deref(), defaults.own.clone())
            .context("--egress-allow")?,
    };
    let given = &spec.limits.value;
    let standard = FilterLimits::default();
    let limits = FilterLimits {
        max_pending_calls: given
            .max_pending_calls
            .unwrap_or(standard.max_pending_calls),
        max_call_timeout_ms: given
            .max_call_timeout_ms
            .unwrap_or(standard.max_call_timeout_ms),
        shared_data_bytes: given
            .shared_data_bytes
            .unwrap_or(standard.shared_data_bytes),
        max_metrics: given.max_metrics.unwrap_or(standard.max_metrics),
    };
    limits
        .check()
        .context("limits")
        .map_err(|e| place.error("limits", &spec.limits.origin, e))?;
    Ok(TenantScope::new(
        &spec.name,
        clusters,
        egress,
        ScopeCounters {
            egress_refused: metrics.egress_refused(&spec.name),
            callouts_failed: metrics.callouts_failed(&spec.name),
        },
        limits,
    ))
}

/// Refuses a module that cannot say where requests go: it exports no
/// `upstream_peer` and its tenant has no static upstream (`how` says how
/// to give one).
fn check_routing(
    module: Option<&V1Module>,
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
            failed: Vec::new(),
            withheld: HashSet::new(),
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

    /// Loads a tenants file holding `yaml`; returns its path and the
    /// error that refused it.
    fn refusal(yaml: &str) -> (PathBuf, String) {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("host-tenants-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tenants.yaml");
        std::fs::write(&path, yaml).unwrap();
        let engine = GuestEngine::new(&wasm_runtime::EngineOptions {
            max_memory_bytes: 64 << 20,
            cache_dir: None,
            fresh_instances: false,
        })
        .unwrap();
        let loaded = TenantSet::load(
            &engine,
            &TenantSource::File(path.clone()),
            TenantDefaults::default(),
            &Metrics::new(),
            &HealthRegistries::new(None),
            &ModuleSources::new(dir.join("modules"), Vec::new(), &Metrics::new()),
            None,
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let error = format!("{:#}", loaded.err().expect("the file is refused"));
        (path, error)
    }

    /// Two tenants, then `tail` (more of the second tenant's entry); the
    /// first loads no module, so the second's errors come first.
    fn two_tenants(tail: &str) -> String {
        format!(
            "tenants:\n  - name: a\n    upstream: 127.0.0.1:1\n  - name: b\n    module: b.wasm\n{tail}"
        )
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        for (tail, says) in [
            (
                "    filters:\n      - module: f.wasm\n        on_error: fail_sometimes\n",
                "parsing it: line 8 column 19: tenants[1].filters[0].on_error: \
                 unknown variant `fail_sometimes`",
            ),
            (
                "    colour: red\n",
                "parsing it: line 6 column 5: tenants[1].colour: unknown field `colour`",
            ),
            (
                "    limits:\n      cpu_ms_per_s: lots\n",
                "parsing it: line 7 column 21: tenants[1].limits.cpu_ms_per_s: invalid u32",
            ),
            (
                "    upstream: \"localhost:80\"\n",
                "line 6 column 15: tenants[1].upstream: tenant \"b\": \
                 \"localhost:80\" is not an ip:port address",
            ),
            (
                "    fallback_upstream: nope\n",
                "line 6 column 24: tenants[1].fallback_upstream: tenant \"b\": \
                 fallback_upstream: \"nope\" is not an ip:port address",
            ),
            (
                "    limits: {cpu_ms_per_s: 0}\n",
                "line 6 column 13: tenants[1].limits: tenant \"b\": limits: cpu_ms_per_s must be",
            ),
            (
                "    pools:\n      api: {backends: []}\n",
                "line 7 column 12: tenants[1].pools.api: tenant \"b\": \
                 a pool needs at least one backend",
            ),
        ] {
            let (path, error) = refusal(&two_tenants(tail));
            let expected = format!("tenants file {}: {says}", path.display());
            assert!(
                error.starts_with(&expected),
                "{tail}:\n{error}\nnot {expected}"
            );
        }
    }

    #[test]
    fn errors_outside_tenants_name_the_line_and_the_key() {
        for (yaml, says) in [
            (
                "clusters:\n  auth: \"localhost:1\"\ntenants: []\n",
                "line 2 column 9: clusters.auth: cluster \"auth\": \"localhost:1\" is not an ip:port address",
            ),
            (
                "pools:\n  value: {backends: [\"127.0.0.1:1\"], selection: fastest}\ntenants: []\n",
                "parsing it: line 2 column 49: pools.value.selection: unknown variant `fastest`",
            ),
            (
                "tenants: []\ndefault_tenant: z\n",
                "line 2 column 17: default_tenant: default_tenant \"z\" is not a tenant",
            ),
            (
                "tenants: [ {name: x",
                "parsing it: line 1 column 12: tenants: unclosed bracket",
            ),
        ] {
            let (path, error) = refusal(yaml);
            let expected = format!("tenants file {}: {says}", path.display());
            assert!(
                error.starts_with(&expected),
                "{yaml}:\n{error}\nnot {expected}"
            );
        }
    }
}
