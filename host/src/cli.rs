//! The command line: our flags plus Pingora's own (`-c -d -t -u`).

use std::path::PathBuf;

use clap::Parser;
use pingora::server::configuration::Opt;

use crate::budget::{
    BudgetLimits, MAX_BREAKER_FAULTS, MAX_BREAKER_MS, MAX_CONCURRENT_CALLS, MAX_CPU_MS_PER_S,
};
use crate::runtime::{GuestLimits, MAX_HOOK_TIMEOUT_MS, MAX_MEMORY_LIMIT_MIB};

/// A Pingora reverse proxy whose `upstream_peer` and
/// `upstream_request_filter` hooks run in a sandboxed WebAssembly module.
#[derive(Parser, Debug)]
#[command(name = "host", version)]
pub struct Cli {
    /// The guest module (a core wasm module speaking hook ABI v1) that
    /// serves every request. Give either this or --tenants.
    #[arg(value_name = "MODULE.wasm", required_unless_present = "tenants")]
    pub module: Option<PathBuf>,

    /// A tenants file (YAML): one module per tenant, routed by Host.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["module", "module_config"])]
    pub tenants: Option<PathBuf>,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Address to listen on; repeat for several.
    #[arg(
        short,
        long = "listen",
        value_name = "ADDR",
        default_value = "0.0.0.0:6188"
    )]
    pub listen: Vec<String>,

    /// A static upstream, `ip:port` over plain HTTP: where requests go if
    /// the module exports no `upstream_peer`. (A tenants file gives each
    /// tenant its own `upstream:`.)
    #[arg(long, value_name = "ADDR", conflicts_with = "tenants")]
    pub upstream: Option<String>,

    /// Configuration handed to the guest's hook_init: inline JSON, or
    /// @FILE to read it from a file. Default: {}.
    #[arg(long, value_name = "JSON|@FILE")]
    pub module_config: Option<String>,

    /// Deadline of one guest hook call, in milliseconds of the call's own
    /// running time (1-10000); a call past it is stopped within 5 ms.
    #[arg(long, value_name = "MS", default_value_t = GuestLimits::default().hook_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=MAX_HOOK_TIMEOUT_MS))]
    pub hook_timeout_ms: u64,

    /// Linear-memory cap of one guest instance, in MiB (1-4096).
    #[arg(long, value_name = "MIB", default_value_t = GuestLimits::default().memory_limit_mib,
          value_parser = clap::value_parser!(u64).range(1..=MAX_MEMORY_LIMIT_MIB))]
    pub memory_limit_mib: u64,

    /// Hook calls one guest instance serves before it is replaced by a
    /// fresh one; 1 = a fresh instance for every call (most isolated,
    /// slowest). A faulted instance is always replaced.
    #[arg(long, value_name = "N", default_value_t = GuestLimits::default().instance_reuse,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub instance_reuse: u64,

    /// Guest calls of one tenant in flight at once (1-1000; default 4 per
    /// core, at least 8); past it a request gets 503 without calling the
    /// guest.
    #[arg(long, value_name = "N", default_value_t = BudgetLimits::default().max_concurrent_calls,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENT_CALLS as i64))]
    pub max_concurrent_calls: u32,

    /// Guest running time one tenant may spend per second, in ms
    /// (1-64000; a bucket holding one second's worth); once spent, requests
    /// get 429 without calling the guest until it refills.
    #[arg(long, value_name = "MS", default_value_t = BudgetLimits::default().cpu_ms_per_s,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CPU_MS_PER_S as i64))]
    pub cpu_ms_per_s: u32,

    /// Guest faults within --breaker-window-ms that open a tenant's circuit
    /// breaker (0: never); while open, its requests get 503 (or go to the
    /// fail-open fallback) without calling the guest.
    #[arg(long, value_name = "N", default_value_t = BudgetLimits::default().breaker_faults,
          value_parser = clap::value_parser!(u32).range(0..=MAX_BREAKER_FAULTS as i64))]
    pub breaker_faults: u32,

    /// The window in which --breaker-faults faults open the breaker, in ms.
    #[arg(long, value_name = "MS", default_value_t = BudgetLimits::default().breaker_window_ms,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BREAKER_MS))]
    pub breaker_window_ms: u64,

    /// How long an open breaker fails fast before one probe call is let
    /// through (success closes it, a fault opens it again), in ms.
    #[arg(long, value_name = "MS", default_value_t = BudgetLimits::default().breaker_cooldown_ms,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BREAKER_MS))]
    pub breaker_cooldown_ms: u64,

    /// Directory caching compiled modules between starts. Default:
    /// $XDG_CACHE_HOME/wasm-pingora-host (or ~/.cache/wasm-pingora-host).
    #[arg(long, value_name = "DIR")]
    pub module_cache: Option<PathBuf>,

    /// Compile modules at every start instead of using the cache.
    #[arg(long, conflicts_with = "module_cache")]
    pub no_module_cache: bool,

    /// Pingora's options.
    #[command(flatten)]
    pub pingora: Opt,
}
