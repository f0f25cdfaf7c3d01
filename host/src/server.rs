//! Putting it together: load the module (failing before anything
//! listens), then build Pingora's server around [`WasmProxy`].

use std::sync::Arc;

use anyhow::Context;
use pingora::proxy::http_proxy_service;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::cli::Cli;
use crate::config;
use crate::proxy::WasmProxy;
use crate::runtime::{EngineOptions, EpochTicker, GuestEngine, GuestModule};

/// Checks every input, loads the module and returns a server ready to run.
/// With `-t`, Pingora's bootstrap exits here after the checks.
pub fn build(cli: Cli) -> anyhow::Result<Server> {
    let module_config = config::module_config(&cli)?;
    let listen = config::listen_addrs(&cli)?;
    let limits = config::limits(&cli);

    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: limits.memory_limit_bytes(),
        cache_dir: config::module_cache_dir(&cli),
    })?;
    let module = GuestModule::load(&engine, &cli.module, &module_config, limits)?;
    log::info!(
        "loaded {} (hook timeout {} ms, memory limit {} MiB, instance reuse {})",
        cli.module.display(),
        limits.hook_timeout_ms,
        limits.memory_limit_mib,
        limits.instance_reuse
    );

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
    server.bootstrap();

    let mut proxy = http_proxy_service(&server.configuration, WasmProxy::new(Arc::new(module)));
    for addr in &listen {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);
    server.add_service(background_service("wasm epoch", EpochTicker(engine)));
    Ok(server)
}

/// The `host` binary: parse, build, serve. Start-up errors print one line
/// and exit non-zero.
pub fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = <Cli as clap::Parser>::parse();
    match build(cli).context("cannot start") {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
