//! Upstream pools: named sets of backends a guest sends a request to by
//! name (`{"pool": "api"}` instead of an address). pingora-load-balancing
//! picks a healthy backend (round robin, consistent hashing of the
//! guest's key, or random); health checks run in the background
//! (`health.rs`); a backend that refuses the connection is left for
//! another of the same pool ([`PoolRoute`]).

mod health;
mod spec;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::*;

pub use health::{HealthRegistries, LivePools, PoolHealth, PoolHealthChecks};
pub use spec::{
    pool_flag, CheckKind, HealthCheckSpec, PoolSpec, PoolTls, Selection, DEFAULT_CONNECTION_TIMEOUT,
};

use crate::config_model::UpstreamProtocol;
use crate::upstream::static_upstream::set_protocol;
use wasm_runtime::block_on;

/// The owner of the tenants file's top-level pools, shared by every
/// tenant, in logs and in the `tenant` label.
pub const SHARED: &str = "*";

/// How many steps one selection may take along its algorithm's order per
/// backend before it gives up: random picks and the consistent-hash ring
/// (160 points per backend) revisit backends, and with this many steps
/// the chance of missing the one healthy backend left is about e^-16.
const SELECT_STEPS_PER_BACKEND: usize = 16;

/// One pool, ready for requests.
pub struct Pool {
    name: String,
    /// A tenant's name, or [`SHARED`].
    owner: String,
    balancer: Balancer,
    tls: Option<PoolTls>,
    backends: BTreeSet<SocketAddr>,
    health: Arc<PoolHealth>,
    check_interval: Duration,
    connection_timeout: Duration,
    protocol: UpstreamProtocol,
}

/// pingora-load-balancing's balancer, by selection.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

impl Pool {
    /// Builds `owner`'s pool `spec`, keeping the health state it had if a
    /// reload keeps it.
    pub fn new(
        owner: &str,
        spec: &PoolSpec,
        registries: &HealthRegistries,
    ) -> anyhow::Result<Self> {
        let health = registries.health_for(owner, spec);
        let backends = spec
            .backends
            .iter()
            .map(|addr| Backend::new(&addr.to_string()))
            .collect::<Result<BTreeSet<_>>>()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("pool {:?}", spec.name))?;
        let view = Backends::new_with_health_registry(
            Static::new(backends.clone()),
            health.registry.clone(),
        );
        let balancer = match spec.selection {
            Selection::RoundRobin => Balancer::RoundRobin(balancer(view)?),
            Selection::Random => Balancer::Random(balancer(view)?),
            Selection::Consistent => Balancer::Consistent(balancer(view)?),
        };
        Ok(Pool {
            name: spec.name.clone(),
            owner: owner.to_string(),
            balancer,
            tls: spec.tls.clone(),
            backends: spec.backends.clone(),
            health,
            check_interval: spec.health_check.interval,
            connection_timeout: spec.connection_timeout,
            protocol: spec.protocol,
        })
    }

    /// Its backends.
    pub fn backends(&self) -> &BTreeSet<SocketAddr> {
        &self.backends
    }

    /// Each backend's `(tenant, pool, backend)` labels in the health
    /// gauge, and whether it is healthy now.
    pub fn backend_health(&self) -> Vec<([String; 3], bool)> {
        let view = self.balancer.backends();
        let backends = view.get_backend();
        backends
            .iter()
            .map(|backend| {
                let labels = [
                    self.owner.clone(),
                    self.name.clone(),
                    backend.addr.to_string(),
                ];
                (labels, view.ready(backend))
            })
            .collect()
    }

    pub(crate) fn health(&self) -> &Arc<PoolHealth> {
        &self.health
    }

    /// How often its backends are checked.
    pub(crate) fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// A healthy backend for `key` that is not in `skip`.
    pub fn select(&self, key: &[u8], skip: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |backend: &Backend, healthy: bool| {
            healthy && backend.addr.as_inet().is_some_and(|a| !skip.contains(a))
        };
        let steps = SELECT_STEPS_PER_BACKEND * self.backends.len();
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, steps, accept),
            Balancer::Random(lb) => lb.select_with(key, steps, accept),
            Balancer::Consistent(lb) => lb.select_with(key, steps, accept),
        }?;
        chosen.addr.as_inet().copied()
    }

    /// `pool "api" of tenant a`, or `shared pool "api"`.
    pub fn describe(&self) -> String {
        match self.owner.as_str() {
            SHARED => format!("shared pool {:?}", self.name),
            tenant => format!("pool {:?} of tenant {tenant}", self.name),
        }
    }
}

impl Balancer {
    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
}

/// A balancer over `view`'s static backends.
fn balancer<S>(view: Backends) -> anyhow::Result<LoadBalancer<S>>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let balancer = LoadBalancer::from_backends(view);
    // Static discovery answers at once: nothing waits here.
    block_on(balancer.update()).map_err(|e| anyhow::anyhow!("building the balancer: {e}"))?;
    Ok(balancer)
}

/// The pools one tenant may name: its own, and the shared ones its own
/// do not shadow.
#[derive(Default)]
pub struct Pools {
    by_name: HashMap<String, Arc<Pool>>,
}

/// A guest's timeouts for a pool's backends (`options` of its `PEER`);
/// without one, the pool's connection timeout applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerTimeouts {
    /// To establish the connection, TLS included.
    pub connection: Option<Duration>,
    /// For each read.
    pub read: Option<Duration>,
}

impl Pools {
    /// `own` pools over `shared` ones of the same name.
    pub fn new(own: &[Arc<Pool>], shared: &[Arc<Pool>]) -> Self {
        let by_name = shared
            .iter()
            .chain(own)
            .map(|pool| (pool.name.clone(), pool.clone()))
            .collect();
        Pools { by_name }
    }

    /// The request's way through pool `name`; a fault if the tenant has
    /// no such pool, or if it hashes consistently and `key` is None.
    pub fn route(
        &self,
        name: &str,
        key: Option<String>,
        timeouts: PeerTimeouts,
    ) -> Result<PoolRoute, PoolError> {
        let Some(pool) = self.by_name.get(name) else {
            let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(PoolError(match names.as_slice() {
                [] => format!("pool {name:?}: the tenant has no pools"),
                names => format!(
                    "pool {name:?} is not one of the tenant's pools ({})",
                    names.join(", ")
                ),
            }));
        };
        if matches!(pool.balancer, Balancer::Consistent(_)) && key.is_none() {
            return Err(PoolError(format!(
                "pool {name:?} hashes consistently: give a key"
            )));
        }
        Ok(PoolRoute {
            pool: pool.clone(),
            key: key.unwrap_or_default(),
            timeouts,
            current: None,
            failed: Vec::new(),
        })
    }
}

/// Why a guest's pool choice cannot be routed: the tenant has no pool of
/// that name, or the pool hashes consistently and no key was given. It is
/// the guest's fault (its output named it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolError(String);

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One request's way through a pool: its backend, and those it failed
/// to connect to, so that a retry after a failed connection goes to
/// another backend, each at most once.
pub struct PoolRoute {
    pool: Arc<Pool>,
    key: String,
    timeouts: PeerTimeouts,
    /// The backend of the last attempt, unless it failed to connect.
    current: Option<SocketAddr>,
    /// Backends this request failed to connect to.
    failed: Vec<SocketAddr>,
}

impl PoolRoute {
    /// The peer for this attempt: the backend of the last one again if
    /// it connected (Pingora retries a request whose reused connection
    /// failed), else the next healthy backend not yet failed; an error
    /// answering 502, naming the pool, if there is none.
    pub fn next_peer(&mut self) -> Result<Box<HttpPeer>> {
        let pool = &self.pool;
        let chosen = match self.current {
            Some(addr) => Some(addr),
            None => pool.select(self.key.as_bytes(), &self.failed),
        };
        let Some(addr) = chosen else {
            let why = match self.failed.len() {
                0 => format!(
                    "{}: no healthy backend (of {})",
                    pool.describe(),
                    pool.backends.len()
                ),
                tried => format!(
                    "{}: no healthy backend left to try ({tried} of {} failed to connect)",
                    pool.describe(),
                    pool.backends.len()
                ),
            };
            return Err(Error::explain(HTTPStatus(502), why));
        };
        self.current = Some(addr);
        let mut peer = match &pool.tls {
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
                tls.verify_with(&mut peer.options);
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        let connection_timeout = self.timeouts.connection.or(Some(pool.connection_timeout));
        peer.options.connection_timeout = connection_timeout;
        peer.options.total_connection_timeout = connection_timeout;
        peer.options.read_timeout = self.timeouts.read;
        set_protocol(&mut peer, pool.protocol);
        Ok(Box::new(peer))
    }

    /// The last attempt's backend failed to connect: the next attempt
    /// goes to another.
    pub fn connect_failed(&mut self) {
        if let Some(addr) = self.current.take() {
            self.failed.push(addr);
        }
    }

    /// Whether a backend is left that this request has not failed to
    /// connect to.
    pub fn can_retry(&self) -> bool {
        self.failed.len() < self.pool.backends.len()
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(selection: &str, backends: &[String]) -> PoolSpec {
        let yaml = format!(
            "{{backends: [{}], selection: {selection}, health_check: {{kind: tcp, interval_ms: 100}}}}",
            backends.join(", ")
        );
        PoolSpec::from_config("api", &crate::config_model::from_yaml(&yaml).unwrap()).unwrap()
    }

    fn addrs(ports: &[u16]) -> Vec<String> {
        ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    fn port(peer: &HttpPeer) -> u16 {
        peer._address.as_inet().unwrap().port()
    }

    fn pools(spec: &PoolSpec, registries: &HealthRegistries) -> Pools {
        Pools::new(&[Arc::new(Pool::new("t", spec, registries).unwrap())], &[])
    }

    fn registries() -> HealthRegistries {
        HealthRegistries::new(None)
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_retries_skip_the_tried() {
        let pools = pools(&spec("round_robin", &addrs(&[1, 2, 3])), &registries());
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut route = pools.route("api", None, PeerTimeouts::default()).unwrap();
            seen.push(port(&route.next_peer().unwrap()));
        }
        seen.sort_unstable();
        assert_eq!(seen, [1, 1, 2, 2, 3, 3]);

        let guest_timeout = PeerTimeouts {
            connection: Some(Duration::from_millis(7)),
            read: None,
        };
        let mut route = pools.route("api", None, guest_timeout).unwrap();
        let peer = route.next_peer().unwrap();
        assert_eq!(peer.options.connection_timeout, guest_timeout.connection);
        let mut route = pools.route("api", None, PeerTimeouts::default()).unwrap();
        let peer = route.next_peer().unwrap();
        assert_eq!(
            peer.options.connection_timeout,
            Some(DEFAULT_CONNECTION_TIMEOUT),
            "the pool's own without the guest's"
        );

        let mut route = pools.route("api", None, PeerTimeouts::default()).unwrap();
        let first = port(&route.next_peer().unwrap());
        assert_eq!(
            port(&route.next_peer().unwrap()),
            first,
            "a retry after the backend connected keeps it"
        );
        let mut failed = vec![first];
        route.connect_failed();
        for _ in 0..2 {
            failed.push(port(&route.next_peer().unwrap()));
            route.connect_failed();
        }
        failed.sort_unstable();
        assert_eq!(failed, [1, 2, 3], "each backend once");
        assert!(!route.can_retry());
        let error = route.next_peer().unwrap_err();
        assert_eq!(error.etype, HTTPStatus(502));
        assert!(
            error.to_string().contains(r#"pool "api" of tenant t"#),
            "{error}"
        );
    }

    #[test]
    fn unknown_pools_and_missing_keys_are_faults() {
        let pools = pools(&spec("consistent", &addrs(&[1, 2])), &registries());
        let fault = pools
            .route("nope", None, PeerTimeouts::default())
            .err()
            .unwrap();
        assert!(fault
            .to_string()
            .contains(r#"pool "nope" is not one of the tenant's pools (api)"#));
        let fault = pools
            .route("api", None, PeerTimeouts::default())
            .err()
            .unwrap();
        assert!(fault.to_string().contains("give a key"), "{fault}");
        let empty = Pools::default();
        let fault = empty
            .route("api", None, PeerTimeouts::default())
            .err()
            .unwrap();
        assert!(fault.to_string().contains("has no pools"), "{fault}");
    }

    #[test]
    fn a_key_keeps_its_backend_and_removing_one_moves_only_its_keys() {
        let registries = registries();
        let key_ports = |pools: &Pools| -> Vec<u16> {
            (0..200)
                .map(|k| {
                    let key = Some(format!("user-{k}"));
                    let mut route = pools.route("api", key, PeerTimeouts::default()).unwrap();
                    port(&route.next_peer().unwrap())
                })
                .collect()
        };
        let three = pools(&spec("consistent", &addrs(&[1, 2, 3])), &registries);
        let before = key_ports(&three);
        assert_eq!(before, key_ports(&three), "the same key, the same backend");
        assert!([1, 2, 3].iter().all(|p| before.contains(p)));
        let two = pools(&spec("consistent", &addrs(&[1, 3])), &registries);
        for (before, after) in before.iter().zip(key_ports(&two)) {
            if *before != 2 {
                assert_eq!(*before, after, "a key not on the removed backend moved");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_keeps_the_health_of_backends_that_stay() {
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_port = live.local_addr().unwrap().port();
        let dead_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let registries = registries();
        let first = Pool::new(
            "t",
            &spec("round_robin", &addrs(&[live_port, dead_port])),
            &registries,
        )
        .unwrap();
        first.health().registry.run_health_check(true).await;
        let ready = |pool: &Pool, port: u16| {
            let backend = Backend::new(&format!("127.0.0.1:{port}")).unwrap();
            pool.balancer.backends().ready(&backend)
        };
        assert!(ready(&first, live_port) && !ready(&first, dead_port));

        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        let ports = [live_port, dead_port, other_port];
        let reloaded = Pool::new("t", &spec("round_robin", &addrs(&ports)), &registries).unwrap();
        drop(first);
        assert!(
            !ready(&reloaded, dead_port),
            "the dead backend is still skipped"
        );
        assert!(ready(&reloaded, live_port) && ready(&reloaded, other_port));
        let dead = format!("127.0.0.1:{dead_port}");
        let shown: Vec<(String, bool)> = reloaded
            .backend_health()
            .into_iter()
            .map(|([_, _, backend], healthy)| (backend, healthy))
            .collect();
        assert!(shown.contains(&(dead, false)), "{shown:?}");

        // A different check is a new pool: its backends start healthy.
        let mut http = spec("round_robin", &addrs(&ports));
        http.health_check.kind = CheckKind::None;
        let fresh = Pool::new("t", &http, &registries).unwrap();
        assert!(ready(&fresh, dead_port));
    }
}
