//! Hot reload: on SIGHUP, or when the tenants file, a module file or a
//! certificate changes, build a new tenant set (and load the default
//! certificate again) off the request path and swap it in.
//! In-flight requests finish on the set they started with. A tenant whose
//! inputs did not change is carried over whole; one whose new
//! configuration fails to load keeps its previous version (see
//! [`TenantSet::load`]); a set that fails to load as a whole (the file
//! does not parse, a shared part is wrong) is refused with a log line and
//! the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::edge::tls::{Certificate, DefaultCertificate};
use crate::metrics::Metrics;
use crate::modules::ModuleSources;
use crate::tenancy::sni::check_listeners_have_a_certificate;
use crate::tenancy::tenants::{TenantDefaults, TenantSet, TenantSource};
use crate::upstream::pools::HealthRegistries;
use wasm_runtime::{release_freed_memory, GuestEngine};

/// How often watched files are checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Rebuilds and swaps the live tenant set.
pub(crate) struct TenantReloader {
    /// Where the set comes from.
    pub source: TenantSource,
    /// The engine new modules are compiled with.
    pub engine: Arc<GuestEngine>,
    /// Limits of tenants that set none.
    pub defaults: TenantDefaults,
    /// The set requests are routed with.
    pub live: Arc<ArcSwap<TenantSet>>,
    /// Where reloads are counted.
    pub metrics: Arc<Metrics>,
    /// Pools' health state, kept for the pools a reload keeps.
    pub registries: Arc<HealthRegistries>,
    /// Where modules named by URL come from.
    pub modules: Arc<ModuleSources>,
    /// `--cert`/`--key`, loaded again with each reload.
    pub default_certificate: Option<Arc<DefaultCertificate>>,
    /// Whether there are TLS listeners, which a set must leave a
    /// certificate to.
    pub tls_listeners: bool,
}

impl TenantReloader {
    /// Loads the set again; swaps it in if it loads, keeps the old one if
    /// not. Returns whether the new set took effect.
    pub(crate) fn reload(&self, why: &str) -> bool {
        match self.load() {
            Ok((set, default_certificate)) => {
                let names: Vec<&str> = set.tenants().map(|t| t.name.as_str()).collect();
                let failed = match set.failed() {
                    [] => String::new(),
                    failed => format!(" (failed to load: {})", failed.join(", ")),
                };
                log::info!("reloaded tenants ({why}): {}{failed}", names.join(", "));
                set.report(&self.metrics);
                let set = Arc::new(set);
                let previous = self.live.swap(set.clone());
                previous.retire(&set, &self.metrics);
                if let (Some(default), Some(loaded)) =
                    (&self.default_certificate, default_certificate)
                {
                    default.replace(loaded);
                }
                self.metrics.reload(true);
                release_freed_memory();
                true
            }
            Err(e) => {
                let error = format!("{e:#}").replace('\n', " ");
                log::error!("reload refused ({why}), the previous tenants keep serving: {error}");
                self.metrics.reload(false);
                false
            }
        }
    }

    /// The new set and default certificate, checked, not yet serving.
    fn load(&self) -> anyhow::Result<(TenantSet, Option<Arc<Certificate>>)> {
        let default_certificate = match &self.default_certificate {
            Some(default) => Some(default.load_again().context("--cert/--key")?),
            None => None,
        };
        let previous = self.live.load();
        let set = TenantSet::load(
            &self.engine,
            &self.source,
            self.defaults.clone(),
            &self.metrics,
            &self.registries,
            &self.modules,
            Some(&previous),
        )?;
        check_listeners_have_a_certificate(
            self.tls_listeners,
            default_certificate.is_some(),
            &set,
        )?;
        Ok((set, default_certificate))
    }

    fn stamps(&self) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
        let live = self.live.load();
        let mut files: Vec<PathBuf> = live.watched_files().to_vec();
        if let Some(default) = &self.default_certificate {
            files.extend(default.files().map(Path::to_path_buf));
        }
        if let TenantSource::File(path) = &self.source {
            if !files.contains(path) {
                files.push(path.clone());
            }
        }
        files
            .into_iter()
            .map(|path| {
                let stamp = std::fs::metadata(&path)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                (path, stamp)
            })
            .collect()
    }
}

#[async_trait]
impl BackgroundService for TenantReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                log::warn!("no reload on SIGHUP: {e}");
                None
            }
        };
        let mut seen = self.stamps();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        loop {
            let why = tokio::select! {
                _ = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => "SIGHUP",
                _ = poll.tick() => {
                    if self.stamps() == seen {
                        continue;
                    }
                    "file changed"
                }
                _ = shutdown.changed() => return,
            };
            // Compiling blocks this background thread, never a worker.
            self.reload(why);
            seen = self.stamps();
        }
    }
}
