//! Turning a guest's `PEER` into Pingora's `HttpPeer`, safely: Pingora's
//! `HttpPeer::new` panics on an address it cannot parse and resolves host
//! names with a blocking call, so the address is parsed (or resolved on
//! tokio's blocking pool) here first.

use std::net::SocketAddr;
use std::time::Duration;

use guest_sdk::wire;
use pingora::upstreams::peer::HttpPeer;

use crate::runtime::HookFault;

/// How long resolving a host name may take before the request fails.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the `HttpPeer` Pingora connects to from `peer`, whose address
/// [`peer_address`] parsed, resolving a host name first.
pub async fn build_peer(
    address: PeerAddress,
    peer: &wire::Peer,
) -> Result<Box<HttpPeer>, HookFault> {
    let addr = match address {
        PeerAddress::Ip(addr) => addr,
        PeerAddress::Name(name) => resolve(&name).await?,
    };
    http_peer(addr, peer)
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

/// Where a guest's `PEER` sends the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTarget {
    /// Its `address`, parsed.
    Address(PeerAddress),
    /// The tenant's pool it names in `pool` (with `key`, if any).
    Pool,
}

/// Whether `peer` gives an address or a pool (exactly one of them), the
/// address parsed without resolving anything.
pub fn peer_target(peer: &wire::Peer) -> Result<PeerTarget, HookFault> {
    match &peer.pool {
        None => peer_address(&peer.address).map(PeerTarget::Address),
        Some(pool) if !peer.address.is_empty() => Err(HookFault::InvalidOutput(format!(
            "peer gives both address {:?} and pool {pool:?}: give one",
            peer.address
        ))),
        Some(_) => Ok(PeerTarget::Pool),
    }
}

/// Parses a guest's peer address without resolving anything.
pub fn peer_address(address: &str) -> Result<PeerAddress, HookFault> {
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
pub fn http_peer(addr: SocketAddr, peer: &wire::Peer) -> Result<Box<HttpPeer>, HookFault> {
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
        build_peer(peer_address(&peer.address)?, peer).await
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
        assert!(parse_and_build(&peer("[::1]:443")).await.is_ok());
        assert!(parse_and_build(&peer("localhost:80")).await.is_ok());
    }

    #[test]
    fn a_peer_gives_an_address_or_a_pool() {
        let pool = wire::Peer {
            pool: Some("api".into()),
            ..Default::default()
        };
        assert_eq!(peer_target(&pool).unwrap(), PeerTarget::Pool);
        let both = wire::Peer {
            address: "127.0.0.1:1".into(),
            ..pool
        };
        assert!(peer_target(&both)
            .unwrap_err()
            .to_string()
            .contains("give one"));
        assert!(peer_target(&peer("")).is_err());
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
