//! Pools' health: pingora-load-balancing's TCP and HTTP checks, each
//! pool's results in a `HealthRegistry` that outlives a reload, and one
//! Pingora background service that runs every live pool's checks off the
//! request path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{Backend, HealthRegistry};
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntGaugeVec;

use super::spec::{CheckKind, PoolSpec, PoolTls};
use crate::upstream::static_upstream::set_protocol;

/// How often the service looks for passes that are due (and for pools a
/// reload added).
const TICK: Duration = Duration::from_millis(20);

/// One pool's health state and when it is next checked. A reload that
/// keeps the pool (same owner, name, TLS and check) keeps this, so
/// backends that stay keep their health.
pub struct PoolHealth {
    /// The backends' health, shared by every view of the pool (the old
    /// tenant set's and the new one's during a reload).
    pub(super) registry: Arc<HealthRegistry>,
    /// When the next pass is due; None for `kind: none`.
    next_pass: Option<Mutex<Instant>>,
    /// A pass is running: the next waits for it.
    running: AtomicBool,
    /// A pass ended since the gauge was last brought up to date.
    passed: AtomicBool,
}

/// What decides whether a reloaded pool keeps its health state.
#[derive(Hash, PartialEq, Eq)]
struct HealthKey {
    owner: String,
    pool: String,
    tls: Option<PoolTls>,
    kind: CheckKind,
    timeout: Duration,
}

/// Every pool's health state, found again by the next load.
pub struct HealthRegistries {
    by_pool: Mutex<HashMap<HealthKey, Weak<PoolHealth>>>,
    /// The CA file TLS checks verify against (Pingora's `ca_file`).
    ca_file: Option<String>,
}

impl HealthRegistries {
    /// An empty set; TLS checks trust `ca_file` (else the system's roots).
    pub fn new(ca_file: Option<String>) -> Self {
        HealthRegistries {
            by_pool: Mutex::new(HashMap::new()),
            ca_file,
        }
    }

    /// The health state of `owner`'s pool `spec`: the one it had before
    /// this load if its TLS and check (all but the interval) are the
    /// same, else a new one whose backends start healthy and are checked
    /// at once. Nothing live changes here: the load may yet be refused.
    pub fn health_for(&self, owner: &str, spec: &PoolSpec) -> Arc<PoolHealth> {
        let key = HealthKey {
            owner: owner.to_string(),
            pool: spec.name.clone(),
            tls: spec.tls.clone(),
            kind: spec.health_check.kind.clone(),
            timeout: spec.health_check.timeout,
        };
        let mut by_pool = self.by_pool.lock().unwrap_or_else(|p| p.into_inner());
        by_pool.retain(|_, health| health.strong_count() > 0);
        if let Some(health) = by_pool.get(&key).and_then(Weak::upgrade) {
            return health;
        }
        let registry = Arc::new(HealthRegistry::new());
        let next_pass = match spec.health_check.kind {
            CheckKind::None => None,
            _ => {
                registry.set_health_check(Box::new(ReportingCheck {
                    inner: checker(spec, self.ca_file.clone()),
                    owner: owner.to_string(),
                    pool: spec.name.clone(),
                    timeout: spec.health_check.timeout,
                }));
                Some(Mutex::new(Instant::now()))
            }
        };
        let health = Arc::new(PoolHealth {
            registry,
            next_pass,
            running: AtomicBool::new(false),
            passed: AtomicBool::new(false),
        });
        by_pool.insert(key, Arc::downgrade(&health));
        health
    }
}

impl PoolHealth {
    /// Starts a pass if one is due (`interval`, the live pool's, after the
    /// last one began) and none is running.
    fn start_pass_if_due(self: &Arc<Self>, now: Instant, interval: Duration) {
        let Some(next_pass) = &self.next_pass else {
            return;
        };
        {
            let mut next_pass = next_pass.lock().unwrap_or_else(|p| p.into_inner());
            if *next_pass > now || self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *next_pass = now + interval;
        }
        let health = self.clone();
        tokio::spawn(async move {
            // Every backend at once: one slow backend delays no other.
            health.registry.run_health_check(true).await;
            health.passed.store(true, Ordering::Release);
            health.running.store(false, Ordering::Release);
        });
    }
}

/// The check pingora-load-balancing runs, bounded as a whole by the
/// pool's timeout and naming tenant, pool and backend in its log lines.
struct ReportingCheck {
    inner: Box<dyn HealthCheck + Send + Sync>,
    owner: String,
    pool: String,
    /// The whole check's bound: an HTTP check's own timeouts are per read,
    /// and a body that trickles would hold the pool's passes forever.
    timeout: Duration,
}

#[async_trait]
impl HealthCheck for ReportingCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.inner.check(target)).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ConnectTimedout,
                format!("health check took over {:?}", self.timeout),
            ),
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!(
            "tenant {}: pool {:?}: backend {}",
            self.owner, self.pool, target.addr
        )
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// pingora-load-balancing's check for `spec`: one failure marks a backend
/// down, one success brings it back.
fn checker(spec: &PoolSpec, ca_file: Option<String>) -> Box<dyn HealthCheck + Send + Sync> {
    let options = || {
        let mut options = ConnectorOptions::new(1);
        options.ca_file = ca_file.clone();
        Some(options)
    };
    let timeout = Some(spec.health_check.timeout);
    match &spec.health_check.kind {
        CheckKind::Http {
            path,
            expect_status,
            host,
        } => {
            let mut check = HttpHealthCheck::new(host, spec.tls.is_some());
            let peer = &mut check.peer_template;
            if let Some(tls) = &spec.tls {
                peer.sni = tls.sni.clone();
                tls.verify_with(&mut peer.options);
            }
            // The backends' protocol: an h2c-only backend refuses HTTP/1.1.
            set_protocol(peer, spec.protocol);
            peer.options.connection_timeout = timeout;
            peer.options.total_connection_timeout = timeout;
            peer.options.read_timeout = timeout;
            peer.options.write_timeout = timeout;
            // Checked to parse when the pool was loaded.
            if let Ok(uri) = path.parse() {
                check.req.set_uri(uri);
            }
            let expect = *expect_status;
            check.validator = Some(Box::new(move |response| {
                let status = response.status.as_u16();
                if status == expect {
                    Ok(())
                } else {
                    Error::e_explain(
                        CustomCode("unexpected status", status),
                        format!("health check answered {status}, expected {expect}"),
                    )
                }
            }));
            check.set_connector(HttpConnector::new(options()));
            Box::new(check)
        }
        CheckKind::Tcp | CheckKind::None => {
            let mut check = match &spec.tls {
                Some(tls) => {
                    let mut check = TcpHealthCheck::new_tls(&tls.sni);
                    tls.verify_with(&mut check.peer_template.options);
                    check
                }
                None => TcpHealthCheck::new(),
            };
            check.peer_template.options.connection_timeout = timeout;
            check.peer_template.options.total_connection_timeout = timeout;
            check.set_connector(TransportConnector::new(options()));
            check
        }
    }
}

/// The background service running every live pool's checks: each pool's
/// pass starts when its interval is up (or at once for a pool a reload
/// added), checks all its backends concurrently, and never overlaps the
/// pool's previous pass. It also keeps
/// `wasm_proxy_backend_healthy{tenant,pool,backend}` to the live set's
/// backends: set after each pass and each reload, a series removed when
/// its backend leaves.
pub struct PoolHealthChecks<S> {
    /// The live set (the tenant set), whose pools are checked.
    pub tenants: Arc<ArcSwap<S>>,
    /// `wasm_proxy_backend_healthy`.
    pub gauge: IntGaugeVec,
}

/// What holds the live pools: the tenant set, replaced whole at a reload.
pub trait LivePools: Send + Sync + 'static {
    /// Every pool to check.
    fn pools(&self) -> &[Arc<super::Pool>];
}

#[async_trait]
impl<S: LivePools> BackgroundService for PoolHealthChecks<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The set last shown (weak: a replaced set is not kept alive for
        // this), and the series shown for it.
        let mut shown_set = Weak::new();
        let mut shown = HashSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let tenants = self.tenants.load_full();
            let mut passed = false;
            for pool in tenants.pools() {
                passed |= pool.health().passed.swap(false, Ordering::AcqRel);
                pool.health().start_pass_if_due(now, pool.check_interval());
            }
            let reloaded = !std::ptr::eq(shown_set.as_ptr(), Arc::as_ptr(&tenants));
            if passed || reloaded {
                shown = self.show(&tenants, shown);
                shown_set = Arc::downgrade(&tenants);
            }
        }
    }
}

impl<S: LivePools> PoolHealthChecks<S> {
    /// Sets the gauge of every backend of `live`, removes the series of
    /// `shown` that `live` no longer has, and returns `live`'s series.
    fn show(&self, live: &S, shown: HashSet<[String; 3]>) -> HashSet<[String; 3]> {
        let mut kept = HashSet::new();
        for pool in live.pools() {
            for (labels, healthy) in pool.backend_health() {
                let values = labels.each_ref().map(String::as_str);
                self.gauge
                    .with_label_values(&values)
                    .set(i64::from(healthy));
                kept.insert(labels);
            }
        }
        for gone in shown.difference(&kept) {
            let values = gone.each_ref().map(String::as_str);
            let _ = self.gauge.remove_label_values(&values);
        }
        kept
    }
}
