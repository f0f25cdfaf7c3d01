//! [`HttpPeer`]: where a request goes, and how to connect there.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire;

/// Anything that names an upstream address: `("1.1.1.1", 443)`,
/// `"1.1.1.1:443"`, a `SocketAddr`.
pub trait ToPeerAddress {
    /// The address as `host:port` (`[v6]:port` for IPv6).
    fn to_peer_address(&self) -> String;
}

impl ToPeerAddress for (&str, u16) {
    fn to_peer_address(&self) -> String {
        if self.0.contains(':') && !self.0.starts_with('[') {
            format!("[{}]:{}", self.0, self.1)
        } else {
            format!("{}:{}", self.0, self.1)
        }
    }
}

impl ToPeerAddress for (String, u16) {
    fn to_peer_address(&self) -> String {
        (self.0.as_str(), self.1).to_peer_address()
    }
}

impl ToPeerAddress for &str {
    fn to_peer_address(&self) -> String {
        self.to_string()
    }
}

impl ToPeerAddress for String {
    fn to_peer_address(&self) -> String {
        self.clone()
    }
}

impl ToPeerAddress for &String {
    fn to_peer_address(&self) -> String {
        (*self).clone()
    }
}

impl ToPeerAddress for SocketAddr {
    fn to_peer_address(&self) -> String {
        self.to_string()
    }
}

/// The HTTP versions a peer may speak (Pingora's `ALPN`). Over plain TCP,
/// [`ALPN::H2`] is HTTP/2 with prior knowledge (h2c), and [`ALPN::H2H1`]
/// is HTTP/1.1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum ALPN {
    /// HTTP/1.1 only.
    #[default]
    H1,
    /// HTTP/2 only.
    H2,
    /// HTTP/2 preferred, HTTP/1.1 accepted.
    H2H1,
}

/// Connection options of an [`HttpPeer`] (Pingora's `PeerOptions`, the
/// fields the host honours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOptions {
    /// Timeout to establish the connection, TLS included.
    pub connection_timeout: Option<Duration>,
    /// Timeout for each read from the upstream.
    pub read_timeout: Option<Duration>,
    /// Verify the upstream certificate chain.
    pub verify_cert: bool,
    /// Verify the certificate matches the SNI.
    pub verify_hostname: bool,
    /// The HTTP versions offered (ignored for a pool: its `protocol`
    /// applies).
    pub alpn: ALPN,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connection_timeout: None,
            read_timeout: None,
            verify_cert: true,
            verify_hostname: true,
            alpn: ALPN::H1,
        }
    }
}

/// The upstream to connect to (Pingora's `HttpPeer`): an address, or one
/// of the tenant's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPeer {
    /// `ip:port` (or `name:port`, resolved by the host without blocking);
    /// empty for a pool.
    pub address: String,
    /// The pool the host picks a healthy backend from, instead of
    /// `address` (see [`HttpPeer::pool`]).
    pub pool: Option<String>,
    /// The consistent-hashing key for a pool (see [`HttpPeer::with_key`]).
    pub key: Option<String>,
    /// Speak TLS to the upstream (for a pool, the pool's setting applies).
    pub tls: bool,
    /// TLS server name (for a pool, the pool's setting applies).
    pub sni: String,
    /// Connection options (for a pool, its timeouts apply).
    pub options: PeerOptions,
}

impl HttpPeer {
    /// A peer at `address`, with TLS if `tls`, using `sni` as server name.
    pub fn new(address: impl ToPeerAddress, tls: bool, sni: String) -> Self {
        HttpPeer {
            address: address.to_peer_address(),
            pool: None,
            key: None,
            tls,
            sni,
            options: PeerOptions::default(),
        }
    }

    /// The tenant's pool `name` (a `pools:` entry of the tenants file, or
    /// `--pool`): the host picks a healthy backend of it by the pool's
    /// selection, and TLS is as the pool says. A name the tenant does not
    /// have fails the request (a guest fault); a pool with no healthy
    /// backend answers 502.
    ///
    /// ```
    /// # use guest_sdk::prelude::*;
    /// let beta = true;
    /// let peer = HttpPeer::pool(if beta { "api-v2" } else { "api-v1" });
    /// # assert_eq!(peer.pool.as_deref(), Some("api-v2"));
    /// ```
    pub fn pool(name: impl Into<String>) -> Self {
        HttpPeer {
            address: String::new(),
            pool: Some(name.into()),
            key: None,
            tls: false,
            sni: String::new(),
            options: PeerOptions::default(),
        }
    }

    /// The key a `consistent` pool hashes (a user id, a session cookie):
    /// requests with the same key reach the same backend while it is
    /// healthy. Other selections ignore it.
    ///
    /// ```
    /// # use guest_sdk::prelude::*;
    /// let peer = HttpPeer::pool("carts").with_key("user-42");
    /// # assert_eq!(peer.key.as_deref(), Some("user-42"));
    /// ```
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub(crate) fn into_wire(self) -> wire::Peer {
        let millis = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        wire::Peer {
            address: self.address,
            pool: self.pool,
            key: self.key,
            tls: self.tls,
            sni: self.sni,
            options: wire::PeerOptions {
                connection_timeout_ms: self.options.connection_timeout.map(millis),
                read_timeout_ms: self.options.read_timeout.map(millis),
                verify_cert: self.options.verify_cert,
                verify_hostname: self.options.verify_hostname,
                alpn: match self.options.alpn {
                    ALPN::H1 => wire::Alpn::H1,
                    ALPN::H2 => wire::Alpn::H2,
                    ALPN::H2H1 => wire::Alpn::H2h1,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_addresses_bracket_ipv6() {
        assert_eq!(("::1", 80).to_peer_address(), "[::1]:80");
        assert_eq!(("1.1.1.1", 443).to_peer_address(), "1.1.1.1:443");
    }
}
