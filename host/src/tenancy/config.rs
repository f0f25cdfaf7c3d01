//! Start-up configuration derived from the command line, checked before
//! anything listens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::config_model::{
    file_name, FilterConfig, JsonText, Located, Naming, PluginConfig, PoolConfig, TenantConfig,
    TenantsConfig, UpstreamConfig, UpstreamFields, UpstreamProtocol,
};
use crate::edge::tls::DefaultCertificate;
use crate::tenancy::budget::BudgetLimits;
use crate::tenancy::cli::Cli;
use crate::tenancy::tenants::{GuestErrorPolicy, TenantDefaults, TenantSource};
use crate::upstream::pools::pool_flag;
use crate::upstream::StaticUpstream;
use wasm_runtime::GuestLimits;

/// The module configuration as JSON text: `--module-config` inline or
/// `@FILE`, `{}` when absent. It must be valid JSON.
pub fn module_config(cli: &Cli) -> anyhow::Result<String> {
    let text = match cli.module_config.as_deref() {
        None => return Ok("{}".into()),
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--module-config: reading {path}"))?,
            None => arg.to_string(),
        },
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .context("--module-config is not valid JSON")?;
    Ok(text)
}

/// The per-instance limits and the per-tenant budget from the flags.
pub fn limits(cli: &Cli) -> TenantDefaults {
    TenantDefaults {
        limits: GuestLimits {
            hook_timeout_ms: cli.hook_timeout_ms,
            memory_limit_mib: cli.memory_limit_mib,
            instance_reuse: cli.instance_reuse,
        },
        budget: BudgetLimits {
            max_concurrent_calls: cli.max_concurrent_calls,
            cpu_ms_per_s: cli.cpu_ms_per_s,
            breaker_min_calls: cli.breaker_min_calls,
            breaker_fault_percent: cli.breaker_fault_percent,
            breaker_window_ms: cli.breaker_window_ms,
            breaker_cooldown_ms: cli.breaker_cooldown_ms,
        },
        egress: (!cli.egress_allow.is_empty()).then(|| cli.egress_allow.clone()),
        own: Default::default(),
    }
}

/// The compiled-module cache directory, unless disabled or no home is
/// known.
pub fn module_cache_dir(cli: &Cli) -> Option<PathBuf> {
    if cli.no_module_cache {
        return None;
    }
    if let Some(dir) = &cli.module_cache {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasm-proxy").join("modules"))
}

/// Where compiled modules are cached: `compiled/` in the module cache.
pub fn compiled_cache_dir(cli: &Cli) -> Option<PathBuf> {
    module_cache_dir(cli).map(|dir| dir.join("compiled"))
}

/// The listen addresses, each checked to be `ip:port`.
pub fn listen_addrs(cli: &Cli) -> anyhow::Result<Vec<String>> {
    checked_addrs("--listen", &cli.listen)
}

/// The `--tls-listen` addresses, each checked to be `ip:port`.
pub fn tls_listen_addrs(cli: &Cli) -> anyhow::Result<Vec<String>> {
    checked_addrs("--tls-listen", &cli.tls_listen)
}

/// `addrs` of `flag`, each checked to be `ip:port`.
fn checked_addrs(flag: &str, addrs: &[String]) -> anyhow::Result<Vec<String>> {
    if let Some(bad) = addrs.iter().find(|a| a.parse::<SocketAddr>().is_err()) {
        bail!("{flag} {bad:?} is not an ip:port address");
    }
    Ok(addrs.to_vec())
}

/// The default certificate of TLS listeners (`--cert`, `--key`), loaded
/// and checked.
pub fn default_certificate(cli: &Cli) -> anyhow::Result<Option<DefaultCertificate>> {
    match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => DefaultCertificate::load(cert.clone(), key.clone())
            .context("--cert/--key")
            .map(Some),
        (None, None) => Ok(None),
        _ => bail!("--cert and --key go together"),
    }
}

/// The `--metrics` address, checked to be `ip:port`.
pub fn metrics_addr(cli: &Cli) -> anyhow::Result<Option<String>> {
    match &cli.metrics {
        Some(addr) if addr.parse::<SocketAddr>().is_err() => {
            bail!("--metrics {addr:?} is not an ip:port address")
        }
        other => Ok(other.clone()),
    }
}

/// Where the tenants come from: a tenants file, or the command line (a
/// module, filters, or both) as the same configuration a one-tenant file
/// gives: named after the module (or the first filter) file, serving
/// every Host, failing closed.
pub fn tenant_source(cli: &Cli) -> anyhow::Result<TenantSource> {
    if let Some(file) = &cli.tenants {
        return Ok(TenantSource::File(file.clone()));
    }
    let name = match (&cli.module, cli.filter.first()) {
        (Some(path), _) | (None, Some(path)) => file_name(path),
        (None, None) => bail!("give a MODULE.wasm, a --filter FILE.wasm, or --tenants FILE"),
    };
    let mut configs = cli.filter_configs.0.clone().map_err(anyhow::Error::msg)?;
    // Parsed without `parse_args` (a library caller): no pairing known.
    configs.resize(cli.filter.len(), None);
    let mut filters = Vec::new();
    for (path, config) in cli.filter.iter().zip(configs) {
        let config = match config {
            Some(config) => match config.strip_prefix('@') {
                Some(file) => std::fs::read(file)
                    .with_context(|| format!("--filter-config: reading {file}"))?,
                None => config.into_bytes(),
            },
            None => Vec::new(),
        };
        filters.push(Located::new(FilterConfig {
            sha256: None,
            module: Located::new(path.clone()),
            config: Some(PluginConfig::Bytes(config)),
            vm_config: None,
            root_id: None,
            on_error: GuestErrorPolicy::FailClosed,
        }));
    }
    let module_config = JsonText(module_config(cli)?);
    let upstream = match &cli.upstream {
        Some(addr) => {
            let protocol =
                UpstreamProtocol::named(&cli.upstream_protocol).context("--upstream-protocol")?;
            let config = UpstreamConfig::Fields(UpstreamFields {
                address: addr.clone(),
                tls: false,
                sni: String::new(),
                protocol,
            });
            StaticUpstream::from_config(&config).context("--upstream")?;
            Some(Located::flag(config, "--upstream"))
        }
        None => None,
    };
    let clusters = clusters(cli)?;
    let tenant = TenantConfig {
        name: name.clone(),
        module: cli.module.clone().map(Located::new),
        sha256: cli.sha256.clone().map(|hex| Located::flag(hex, "--sha256")),
        filters,
        config: Some(module_config),
        upstream,
        pools: pools(cli)?,
        ..TenantConfig::default()
    };
    Ok(TenantSource::CommandLine(TenantsConfig {
        // --plain-http-registry reaches the fetches directly.
        registries: BTreeMap::new(),
        clusters,
        // --egress-allow reaches the tenant through its defaults.
        egress: None,
        pools: BTreeMap::new(),
        tenants: vec![Located::new(tenant)],
        default_tenant: Some(Located::new(name)),
        base: PathBuf::new(),
        naming: Naming::CommandLine,
    }))
}

/// The pools given with --pool NAME=ADDR,..., each name once; their
/// backends are resolved when the tenant is built.
pub fn pools(cli: &Cli) -> anyhow::Result<BTreeMap<String, Located<PoolConfig>>> {
    let mut pools = BTreeMap::new();
    for flag in &cli.pool {
        let (name, pool) = pool_flag(flag)?;
        if pools.contains_key(&name) {
            bail!("--pool {name:?} is given twice");
        }
        pools.insert(name, Located::flag(pool, format!("--pool {flag:?}")));
    }
    Ok(pools)
}

/// The clusters given with --cluster NAME=ADDR, each checked.
pub fn clusters(cli: &Cli) -> anyhow::Result<BTreeMap<String, Located<UpstreamConfig>>> {
    cli.cluster
        .iter()
        .map(|pair| {
            let (name, addr) = pair
                .split_once('=')
                .with_context(|| format!("--cluster {pair:?} is not NAME=ip:port"))?;
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--cluster {pair:?}: {addr:?} is not ip:port"))?;
            let addr = Located::flag(
                UpstreamConfig::Address(addr.to_string()),
                format!("--cluster {pair:?}"),
            );
            Ok((name.to_string(), addr))
        })
        .collect()
}
