//! Turning a guest's `PEER` into Pingora's `HttpPeer`, safely: Pingora's
//! `HttpPeer::new` panics on an address it cannot parse and resolves host
//! names with a blocking call, so the address is parsed (or resolved on
//! tokio's blocking pool) here first.

use std::net::SocketAddr;
use std::time::Duration;

use guest_sdk::wire;
use pingora::upstreams::peer::{HttpPeer, ALPN};

use crate::abi::HookFault;
use crate::upstream::egress::{self, Egress};
use crate::upstream::static_upstream::set_alpn;

/// How long resolving a host name may take before the request fails.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `upstream_peer` sends the request, checked without resolving
/// anything: nothing above the ABI reads the guest's `PEER` itself.
#[derive(Debug)]
pub enum PeerChoice {
    /// To an address, with the guest's connection settings.
    Address(AddressPeer),
    /// To one of the tenant's pools.
    Pool(PoolPick),
}

/// An address a guest chose (a host name still to resolve) and how to
/// connect to it.
#[derive(Debug)]
pub struct AddressPeer {
    address: PeerAddress,
    peer: wire::Peer,
}

/// A destination the tenant's egress refused.
#[derive(Debug)]
pub struct Refused {
    /// What the guest gave, and where it resolved.
    pub address: String,
    /// Why.
    pub why: egress::Refusal,
}

/// A pool a guest named, with its key for consistent selection and its
/// own timeouts.
#[derive(Debug)]
pub struct PoolPick {
    /// The pool's name, one of the tenant's (checked by the pools).
    pub name: String,
    /// The selection key of a consistent pool.
    pub key: Option<String>,
    /// The guest's connection timeout for the pool's backends.
    pub connection_timeout: Option<Duration>,
    /// The guest's read timeout for the pool's backends.
    pub read_timeout: Option<Duration>,
}

impl PeerChoice {
    /// The choice a guest's `peer` makes: an address (parsed) or a pool,
    /// exactly one of them.
    pub fn of(peer: wire::Peer) -> Result<Self, HookFault> {
        match &peer.pool {
            None => Ok(PeerChoice::Address(AddressPeer {
                address: peer_address(&peer.address)?,
                peer,
            })),
            Some(pool) if !peer.address.is_empty() => Err(HookFault::InvalidOutput(format!(
                "peer gives both address {:?} and pool {pool:?}: give one",
                peer.address
            ))),
            Some(_) => {
                let options = &peer.options;
                Ok(PeerChoice::Pool(PoolPick {
                    connection_timeout: options.connection_timeout_ms.map(Duration::from_millis),
                    read_timeout: options.read_timeout_ms.map(Duration::from_millis),
                    name: peer.pool.unwrap_or_default(),
                    key: peer.key,
                }))
            }
        }
    }
}

impl AddressPeer {
    /// The `HttpPeer` Pingora connects to, a host name resolved first
    /// (on tokio's blocking pool, bounded in time): Pingora's own
    /// `HttpPeer::new` would panic on a bad address and block on a name.
    /// The tenant's `egress` is asked about the address actually
    /// connected to (and the name the guest gave): a refusal is
    /// `Ok(Err(refused))`, not the guest's fault.
    pub async fn build(self, egress: &Egress) -> Result<Result<Box<HttpPeer>, Refused>, HookFault> {
        let (addr, name) = match &self.address {
            PeerAddress::Ip(addr) => (*addr, None),
            PeerAddress::Name(name) => {
                let addr = resolve(name).await?;
                let host = name
                    .rsplit_once(':')
                    .map_or(name.as_str(), |(host, _)| host);
                (addr, Some((host, addr.port())))
            }
        };
        if let Err(why) = egress.check(name, addr, true) {
            let address = match name {
                Some(_) => format!("{} ({addr})", self.peer.address),
                None => addr.to_string(),
            };
            return Ok(Err(Refused { address, why }));
        }
        http_peer(addr, &self.peer).map(Ok)
    }
}

/// A peer address that parsed: an IP socket address, or `name:port` still
/// to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    /// `ip:port` or `[v6]:port`.
    Ip(SocketAddr),
    /// `name:port`, checked to be a plausible host name and port.
    Name(String),
}

/// Parses a guest's peer address without resolving anything.
pub(super) fn peer_address(address: &str) -> Result<PeerAddress, HookFault> {
    let invalid = |why: &str| HookFault::InvalidOutput(format!("peer address {address:?}: {why}"));
    if let Ok(addr) = address.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid("port 0"));
        }
        return Ok(PeerAddress::Ip(addr));
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    match port.parse::<u16>() {
        Ok(0) => return Err(invalid("port 0")),
        Ok(_) => {}
        Err(_) => return Err(invalid("bad port")),
    }
    if !is_host_name(host) {
        return Err(invalid("not an ip:port or host:port"));
    }
    Ok(PeerAddress::Name(address.to_string()))
}

/// Resolves `name:port` through tokio, whose resolver runs the blocking
/// lookup off the worker threads.
async fn resolve(address: &str) -> Result<SocketAddr, HookFault> {
    let invalid = |why: &str| HookFault::InvalidOutput(format!("peer address {address:?}: {why}"));
    let mut found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address))
        .await
        .map_err(|_| invalid("name lookup timed out"))?
        .map_err(|e| invalid(&format!("name lookup failed: {e}")))?;
    found.next().ok_or_else(|| invalid("name has no addresses"))
}

/// The `HttpPeer` for a resolved address, with the guest's TLS settings.
pub(super) fn http_peer(addr: SocketAddr, peer: &wire::Peer) -> Result<Box<HttpPeer>, HookFault> {
    if !peer.sni.is_empty() && !is_host_name(&peer.sni) {
        return Err(HookFault::InvalidOutput(format!(
            "invalid sni {:?}",
            peer.sni
        )));
    }
    // A SocketAddr converts without a lookup, so this cannot block or panic.
    let mut http_peer = HttpPeer::new(addr, peer.tls, peer.sni.clone());
    let options = &mut http_peer.options;
    options.connection_timeout = peer
        .options
        .connection_timeout_ms
        .map(Duration::from_millis);
    options.read_timeout = peer.options.read_timeout_ms.map(Duration::from_millis);
    options.verify_cert = peer.options.verify_cert;
    options.verify_hostname = peer.options.verify_hostname;
    let alpn = match peer.options.alpn {
        wire::Alpn::H1 => ALPN::H1,
        wire::Alpn::H2 => ALPN::H2,
        wire::Alpn::H2h1 => ALPN::H2H1,
    };
    set_alpn(&mut http_peer, alpn);
    Ok(Box::new(http_peer))
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the proxy does with a guest's peer: parse, then build.
    async fn parse_and_build(peer: &wire::Peer) -> Result<Box<HttpPeer>, HookFault> {
        match PeerChoice::of(peer.clone())? {
            PeerChoice::Address(address) => address
                .build(&Egress::default())
                .await
                .map(|built| built.expect("no egress rules refuse it")),
            PeerChoice::Pool(pick) => panic!("not an address: {pick:?}"),
        }
    }

    fn peer(address: &str) -> wire::Peer {
        wire::Peer {
            address: address.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn ip_addresses_build_and_keep_options() {
        let mut wire_peer = peer("127.0.0.1:8080");
        wire_peer.tls = true;
        wire_peer.sni = "example.com".into();
        wire_peer.options.connection_timeout_ms = Some(250);
        wire_peer.options.verify_hostname = false;
        let built = parse_and_build(&wire_peer).await.unwrap();
        assert_eq!(built.sni, "example.com");
        assert_eq!(
            built.options.connection_timeout,
            Some(Duration::from_millis(250))
        );
        assert!(!built.options.verify_hostname);
        assert_eq!(built.options.alpn, ALPN::H1);
        wire_peer.options.alpn = wire::Alpn::H2;
        wire_peer.tls = false;
        let h2c = parse_and_build(&wire_peer).await.unwrap();
        assert_eq!((h2c.options.alpn.clone(), h2c.is_tls()), (ALPN::H2, false));
        assert!(parse_and_build(&peer("[::1]:443")).await.is_ok());
        assert!(parse_and_build(&peer("localhost:80")).await.is_ok());
    }

    #[test]
    fn a_peer_gives_an_address_or_a_pool() {
        let mut pool = wire::Peer {
            pool: Some("api".into()),
            key: Some("k".into()),
            ..Default::default()
        };
        pool.options.read_timeout_ms = Some(7);
        let PeerChoice::Pool(pick) = PeerChoice::of(pool.clone()).unwrap() else {
            panic!("a pool");
        };
        assert_eq!(
            (pick.name.as_str(), pick.key.as_deref()),
            ("api", Some("k"))
        );
        assert_eq!(pick.read_timeout, Some(Duration::from_millis(7)));
        assert_eq!(pick.connection_timeout, None);
        let both = wire::Peer {
            address: "127.0.0.1:1".into(),
            ..pool
        };
        assert!(PeerChoice::of(both)
            .unwrap_err()
            .to_string()
            .contains("give one"));
        assert!(PeerChoice::of(peer("")).is_err());
    }

    #[tokio::test]
    async fn unusable_addresses_are_faults_not_panics() {
        for address in [
            "",
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:99999",
            "a b:80",
            ":80",
            "[::1]",
        ] {
            let err = parse_and_build(&peer(address)).await.unwrap_err();
            assert!(
                matches!(err, HookFault::InvalidOutput(_)),
                "{address}: {err}"
            );
        }
        let mut bad_sni = peer("127.0.0.1:443");
        bad_sni.sni = "evil\r\nname".into();
        assert!(parse_and_build(&bad_sni).await.is_err());
    }
}
