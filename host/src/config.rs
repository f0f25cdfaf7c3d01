//! Start-up configuration derived from the command line, checked before
//! anything listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::budget::BudgetLimits;
use crate::cli::Cli;
use crate::runtime::GuestLimits;
use crate::tenants::{FilterSource, TenantDefaults, TenantSource};
use crate::tls::DefaultCertificate;
use crate::upstream::StaticUpstream;
use crate::upstream_pools::PoolSpec;

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
            breaker_faults: cli.breaker_faults,
            breaker_window_ms: cli.breaker_window_ms,
            breaker_cooldown_ms: cli.breaker_cooldown_ms,
        },
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
    Some(base.join("wasm-pingora-host"))
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

/// Where the tenants come from: the command line (a module, filters, or
/// both), or a tenants file.
pub fn tenant_source(cli: &Cli) -> anyhow::Result<TenantSource> {
    if let Some(file) = &cli.tenants {
        return Ok(TenantSource::File(file.clone()));
    }
    if cli.module.is_none() && cli.filter.is_empty() {
        bail!("give a MODULE.wasm, a --filter FILE.wasm, or --tenants FILE");
    }
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
        filters.push(FilterSource {
            path: path.clone(),
            config,
        });
    }
    Ok(TenantSource::CommandLine {
        module: cli.module.clone(),
        config_json: module_config(cli)?,
        upstream: match &cli.upstream {
            Some(addr) => Some(StaticUpstream::plain(addr).context("--upstream")?),
            None => None,
        },
        filters,
        clusters: clusters(cli)?.into_iter().collect(),
        pools: pools(cli)?,
    })
}

/// The pools given with --pool NAME=ADDR,..., each name once.
pub fn pools(cli: &Cli) -> anyhow::Result<Vec<PoolSpec>> {
    let mut pools: Vec<PoolSpec> = Vec::new();
    for flag in &cli.pool {
        let pool = PoolSpec::from_flag(flag)?;
        if pools.iter().any(|p| p.name == pool.name) {
            bail!("--pool {:?} is given twice", pool.name);
        }
        pools.push(pool);
    }
    Ok(pools)
}

/// The clusters given with --cluster NAME=ADDR.
pub fn clusters(cli: &Cli) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    cli.cluster
        .iter()
        .map(|pair| {
            let (name, addr) = pair
                .split_once('=')
                .with_context(|| format!("--cluster {pair:?} is not NAME=ip:port"))?;
            let addr = addr
                .parse()
                .with_context(|| format!("--cluster {pair:?}: {addr:?} is not ip:port"))?;
            Ok((name.to_string(), addr))
        })
        .collect()
}
