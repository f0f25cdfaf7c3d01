//! Start-up configuration derived from the command line, checked before
//! anything listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::cli::Cli;
use crate::runtime::GuestLimits;

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

/// The per-instance limits from the flags.
pub fn limits(cli: &Cli) -> GuestLimits {
    GuestLimits {
        hook_timeout_ms: cli.hook_timeout_ms,
        memory_limit_mib: cli.memory_limit_mib,
        instance_reuse: cli.instance_reuse,
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
    for addr in &cli.listen {
        if addr.parse::<SocketAddr>().is_err() {
            bail!("--listen {addr:?} is not an ip:port address");
        }
    }
    Ok(cli.listen.clone())
}
