//! Putting it together: load the tenants' modules (failing before
//! anything listens), then build Pingora's server around [`WasmProxy`],
//! plus the epoch ticker, the reloader and the metrics endpoint.

use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::http_proxy_service;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::edge::drain::{DrainOnSignal, Draining};
use crate::guest::epoch_ticker::EpochTicker;
use crate::guest::filter_ticks::FilterTicker;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::modules::ModuleSources;
use crate::proxy::WasmProxy;
use crate::tenancy::cli::Cli;
use crate::tenancy::config;
use crate::tenancy::reload::TenantReloader;
use crate::tenancy::sni::{check_listeners_have_a_certificate, CertificateSelector};
use crate::tenancy::tenants::TenantSet;
use crate::upstream::egress::OwnAddresses;
use crate::upstream::pools::{HealthRegistries, PoolHealthChecks};
use wasm_runtime::{
    release_freed_memory, EngineOptions, GuestEngine, FEW_CALLS, MAX_MEMORY_LIMIT_MIB,
};

/// The pooling allocator's per-instance memory ceiling: the largest
/// per-tenant cap allowed. Each tenant's own cap is enforced per store.
const MAX_MEMORY_LIMIT_BYTES: usize = (MAX_MEMORY_LIMIT_MIB as usize) << 20;

/// Checks every input, loads the tenants' modules and returns a server
/// ready to run. With `-t`, Pingora's bootstrap exits here after the checks.
pub fn build(cli: Cli) -> anyhow::Result<Server> {
    let source = config::tenant_source(&cli)?;
    let listen = config::listen_addrs(&cli)?;
    let tls_listen = config::tls_listen_addrs(&cli)?;
    let default_certificate = config::default_certificate(&cli)?.map(Arc::new);
    if tls_listen.is_empty() && default_certificate.is_some() {
        bail!("--cert and --key are for TLS listeners: add --tls-listen ADDR");
    }
    let metrics_addr = config::metrics_addr(&cli)?;
    let (h2c, forwarded_headers) = (cli.h2c, !cli.no_forwarded_headers);
    let mut limits = config::limits(&cli);
    limits.own = Arc::new(OwnAddresses::new(
        listen
            .iter()
            .chain(&tls_listen)
            .chain(&metrics_addr)
            .filter_map(|addr| addr.parse().ok()),
    ));

    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: MAX_MEMORY_LIMIT_BYTES,
        cache_dir: config::compiled_cache_dir(&cli),
        fresh_instances: limits.limits.instance_reuse <= FEW_CALLS,
    })?;
    let metrics = Arc::new(Metrics::new());
    let modules = Arc::new(match config::module_cache_dir(&cli) {
        Some(dir) => ModuleSources::new(dir, cli.plain_http_registry.clone(), &metrics),
        None => ModuleSources::private(cli.plain_http_registry.clone(), &metrics)?,
    });

    let conf_path = cli.pingora.conf.clone();
    let mut server = Server::new(Some(cli.pingora)).map_err(|e| {
        anyhow::anyhow!("{e}").context(match conf_path {
            Some(path) => format!("loading Pingora conf {path}"),
            None => "configuring Pingora".to_string(),
        })
    })?;
    // Pingora unwraps loading ca_file when it builds the upstream connector.
    if let Some(ca_file) = &server.configuration.ca_file {
        std::fs::metadata(ca_file).with_context(|| format!("ca_file {ca_file}"))?;
    }
    // Filters' calls to TLS clusters, and TLS health checks, trust what
    // proxied requests trust.
    crate::abi::proxy_wasm::init_callout_connector(server.configuration.ca_file.clone());
    let registries = Arc::new(HealthRegistries::new(server.configuration.ca_file.clone()));
    let tenants = TenantSet::load(
        &engine,
        &source,
        limits.clone(),
        &metrics,
        &registries,
        &modules,
        None,
    )?;
    tenants.report(&metrics);
    release_freed_memory();
    if tls_listen.is_empty() && tenants.has_certificates() {
        log::warn!("tenants have certificates, but there is no --tls-listen to serve them on");
    }
    check_listeners_have_a_certificate(
        !tls_listen.is_empty(),
        default_certificate.is_some(),
        &tenants,
    )?;
    for tenant in tenants.tenants() {
        let budget = tenant.budget.limits();
        let filters: Vec<&str> = tenant.filters.iter().map(|f| f.module.name()).collect();
        if !filters.is_empty() {
            log::info!("{}: filters {}", tenant.label, filters.join(", "));
        }
        let Some(module) = &tenant.module else {
            continue;
        };
        let limits = module.limits();
        log::info!(
            "serving module {} (hook timeout {} ms, memory limit {} MiB, instance reuse {}, \
             {} calls in flight, {} ms guest time per s, breaker at {}% of {} calls in {} ms)",
            module.name(),
            limits.hook_timeout_ms,
            limits.memory_limit_mib,
            limits.instance_reuse,
            budget.max_concurrent_calls,
            budget.cpu_ms_per_s,
            budget.breaker_fault_percent,
            budget.breaker_min_calls,
            budget.breaker_window_ms
        );
    }
    for pool in tenants.pools() {
        let backends: Vec<String> = pool.backends().iter().map(|b| b.to_string()).collect();
        log::info!("{}: backends {}", pool.describe(), backends.join(", "));
    }
    let live = Arc::new(ArcSwap::from_pointee(tenants));
    server.bootstrap();

    let draining = Draining::default();
    let proxy_logic = WasmProxy::new(
        live.clone(),
        metrics.clone(),
        forwarded_headers,
        draining.clone(),
    );
    let mut proxy = http_proxy_service(&server.configuration, proxy_logic);
    if h2c {
        if let Some(proxy) = proxy.app_logic_mut() {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            proxy.server_options = Some(options);
        }
    }
    for addr in &listen {
        proxy.add_tcp(addr);
        log::info!(
            "proxy listening on http://{addr}{}",
            if h2c { " (and h2c)" } else { "" }
        );
    }
    for addr in &tls_listen {
        let selector = CertificateSelector {
            tenants: live.clone(),
            default: default_certificate.clone(),
        };
        let mut settings = TlsSettings::with_callbacks(Box::new(selector))
            .map_err(|e| anyhow::anyhow!("TLS listener {addr}: {e}"))?;
        settings.enable_h2();
        proxy.add_tls_with_settings(addr, None, settings);
        log::info!("proxy listening on https://{addr} (h2, http/1.1)");
    }
    server.add_service(proxy);
    if let Some(addr) = metrics_addr {
        let mut endpoint = Service::new("metrics".to_string(), MetricsEndpoint(metrics.clone()));
        endpoint.add_tcp(&addr);
        log::info!("metrics on http://{addr}/metrics");
        server.add_service(endpoint);
    }
    server.add_service(background_service("drain", DrainOnSignal(draining)));
    server.add_service(background_service(
        "wasm epoch",
        EpochTicker(engine.clone()),
    ));
    server.add_service(background_service(
        "pool health checks",
        PoolHealthChecks {
            tenants: live.clone(),
            gauge: metrics.backend_health(),
        },
    ));
    server.add_service(background_service(
        "filter ticks",
        FilterTicker {
            tenants: live.clone(),
        },
    ));
    let reloader = TenantReloader {
        source,
        engine,
        defaults: limits,
        live,
        metrics,
        registries,
        modules,
        default_certificate,
        tls_listeners: !tls_listen.is_empty(),
    };
    server.add_service(background_service("tenant reload", reloader));
    Ok(server)
}

/// The `host` binary: parse, build, serve. Start-up errors print one line
/// and exit non-zero.
pub fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // The registry client logs token responses at debug level.
        .filter_module("oci_client", log::LevelFilter::Warn)
        .init();
    let cli = Cli::parse_args();
    match build(cli).context("cannot start") {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
