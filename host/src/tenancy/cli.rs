//! The command line: our flags plus Pingora's own (`-c -d -t -u`).

use std::path::PathBuf;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use pingora::server::configuration::Opt;

use crate::tenancy::budget::{
    BudgetLimits, MAX_BREAKER_MIN_CALLS, MAX_BREAKER_MS, MAX_CONCURRENT_CALLS, MAX_CPU_MS_PER_S,
};
use wasm_runtime::{GuestLimits, MAX_HOOK_TIMEOUT_MS, MAX_MEMORY_LIMIT_MIB};

/// A Pingora reverse proxy whose hooks run in sandboxed WebAssembly: a
/// routing module of this host's ABI, proxy-wasm filters, or both.
#[derive(Parser, Debug)]
#[command(name = "host", version)]
pub struct Cli {
    /// The guest module (a core wasm module speaking hook ABI v1) that
    /// serves every request: a path, or oci://, https://, http:// or
    /// file:// URL. Give this, --filter, or --tenants.
    #[arg(value_name = "MODULE.wasm", required_unless_present_any = ["tenants", "filter"])]
    pub module: Option<PathBuf>,

    /// The hex sha256 of MODULE's bytes: checked; required when MODULE is
    /// an http(s):// URL.
    #[arg(
        long,
        value_name = "HEX",
        requires = "module",
        conflicts_with = "tenants"
    )]
    pub sha256: Option<String>,

    /// An OCI registry (HOST:PORT, as in oci:// references) reached by
    /// plain http:// instead of https://; repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub plain_http_registry: Vec<String>,

    /// A proxy-wasm filter (ABI 0.2.1) in front of the module or the
    /// static upstream; repeat for a chain, run in the order given.
    #[arg(long, value_name = "FILE.wasm", conflicts_with = "tenants")]
    pub filter: Vec<PathBuf>,

    /// The plugin configuration of the --filter before it: a string, or
    /// @FILE to read it from a file.
    #[arg(long, value_name = "STRING|@FILE", conflicts_with = "tenants")]
    pub filter_config: Vec<String>,

    /// Where guests may send traffic they address themselves (an
    /// upstream_peer address, a proxy_http_call ip:port): an IP or CIDR
    /// with an optional :PORT, or NAME:PORT; repeatable. The default
    /// egress of every tenant (a tenants file's `egress:` replaces it).
    #[arg(long = "egress-allow", value_name = "ENTRY")]
    pub egress_allow: Vec<String>,

    /// A cluster filters may dispatch HTTP calls to, NAME=ip:port;
    /// repeatable. (A tenants file has `clusters:`.)
    #[arg(long, value_name = "NAME=ADDR", conflicts_with = "tenants")]
    pub cluster: Vec<String>,

    /// A pool of backends the module may name as `{"pool": NAME}`:
    /// NAME=ip:port,ip:port,... (or name:port), plain HTTP, round robin,
    /// a TCP health check every second; repeatable. (A tenants file has
    /// `pools:`.)
    #[arg(long, value_name = "NAME=ADDR,...", conflicts_with = "tenants")]
    pub pool: Vec<String>,

    /// Each --filter's configuration, paired by position (set by
    /// [`Cli::parse_args`]), or why they do not pair: a --filter-config
    /// that follows no --filter, or two that follow the same one.
    #[arg(skip)]
    pub filter_configs: FilterConfigs,

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

    /// Address to listen on with TLS (HTTP/2 and HTTP/1.1 by ALPN);
    /// repeat for several. Needs a certificate: --cert/--key, or tenants'
    /// `tls:`.
    #[arg(long = "tls-listen", value_name = "ADDR")]
    pub tls_listen: Vec<String>,

    /// The default certificate (PEM, leaf then intermediates) for TLS
    /// listeners: served to names no tenant's certificate serves.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners.
    #[arg(long)]
    pub h2c: bool,

    /// Do not add X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host
    /// to upstream requests.
    #[arg(long)]
    pub no_forwarded_headers: bool,

    /// A static upstream, `ip:port` over plain HTTP: where requests go if
    /// the module exports no `upstream_peer`. (A tenants file gives each
    /// tenant its own `upstream:`.)
    #[arg(long, value_name = "ADDR", conflicts_with = "tenants")]
    pub upstream: Option<String>,

    /// The HTTP version spoken to --upstream: http1, h2c (HTTP/2 with
    /// prior knowledge over plain TCP), or h2 (needs TLS, which only a
    /// tenants file's `upstream:` gives).
    #[arg(
        long,
        value_name = "PROTOCOL",
        requires = "upstream",
        default_value = "http1"
    )]
    pub upstream_protocol: String,

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

    /// Guest calls within --breaker-window-ms below which a tenant's
    /// circuit breaker does not judge (0: it never opens). When at least
    /// this many calls saw at least --breaker-fault-percent faults, it
    /// opens: its requests get 503 (or go to the fail-open fallback)
    /// without calling the guest.
    #[arg(long, value_name = "N", default_value_t = BudgetLimits::default().breaker_min_calls,
          value_parser = clap::value_parser!(u32).range(0..=MAX_BREAKER_MIN_CALLS as i64))]
    pub breaker_min_calls: u32,

    /// The share of faulted calls, in percent, that opens the breaker.
    #[arg(long, value_name = "PERCENT", default_value_t = BudgetLimits::default().breaker_fault_percent,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub breaker_fault_percent: u32,

    /// The sliding window the breaker counts calls and faults in, in ms.
    #[arg(long, value_name = "MS", default_value_t = BudgetLimits::default().breaker_window_ms,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BREAKER_MS))]
    pub breaker_window_ms: u64,

    /// How long an open breaker fails fast before one probe call is let
    /// through (success closes it, a fault opens it again), in ms.
    #[arg(long, value_name = "MS", default_value_t = BudgetLimits::default().breaker_cooldown_ms,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BREAKER_MS))]
    pub breaker_cooldown_ms: u64,

    /// Directory caching modules between starts: those pulled from
    /// registries and URLs (by digest), and every module compiled (under
    /// compiled/). Default: $XDG_CACHE_HOME/wasm-proxy/modules (or
    /// ~/.cache/wasm-proxy/modules).
    #[arg(long, value_name = "DIR")]
    pub module_cache: Option<PathBuf>,

    /// Compile modules at every start instead of using the cache.
    #[arg(long, conflicts_with = "module_cache")]
    pub no_module_cache: bool,

    /// Pingora's options.
    #[command(flatten)]
    pub pingora: Opt,
}

/// The --filter-config of each --filter, by position.
#[derive(Debug, Clone)]
pub struct FilterConfigs(pub Result<Vec<Option<String>>, String>);

impl Default for FilterConfigs {
    fn default() -> Self {
        FilterConfigs(Ok(Vec::new()))
    }
}

impl Cli {
    /// Parses the process's arguments, pairing each --filter-config with
    /// the --filter before it. Exits with clap's message on a bad flag.
    pub fn parse_args() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.filter_configs = FilterConfigs(pair_filter_configs(&matches, &cli.filter_config));
        cli
    }
}

/// Each filter's configuration: the --filter-config that follows it on
/// the command line (before the next --filter), if any.
fn pair_filter_configs(
    matches: &ArgMatches,
    configs: &[String],
) -> Result<Vec<Option<String>>, String> {
    let filters: Vec<usize> = matches
        .indices_of("filter")
        .map(Iterator::collect)
        .unwrap_or_default();
    let mut paired = vec![None; filters.len()];
    let config_indices = matches.indices_of("filter_config").into_iter().flatten();
    for (config, index) in configs.iter().zip(config_indices) {
        let Some(filter) = filters.iter().rposition(|&at| at < index) else {
            return Err(format!("--filter-config {config:?} follows no --filter"));
        };
        if paired[filter].replace(config.clone()).is_some() {
            return Err(format!(
                "two --filter-config for --filter number {}",
                filter + 1
            ));
        }
    }
    Ok(paired)
}
