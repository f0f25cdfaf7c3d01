//! A fixed upstream: a tenant's static upstream (where its requests go
//! when its module does not choose), its fail-open fallback, or a cluster
//! its filters call.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use pingora::upstreams::peer::{HttpPeer, ALPN};

use crate::config_model::{UpstreamConfig, UpstreamProtocol};

/// Streams one HTTP/2 connection to an upstream carries at once before
/// another is opened (Pingora's default is one, which would make every
/// concurrent gRPC call its own connection).
pub(crate) const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Sets the HTTP version Pingora speaks to `peer`: ALPN `h2` only for h2
/// and h2c (over plain TCP, Pingora takes a minimum of HTTP/2 as prior
/// knowledge), and `http/1.1` only for http1.
pub(crate) fn set_protocol(peer: &mut HttpPeer, protocol: UpstreamProtocol) {
    set_alpn(peer, protocol_alpn(protocol));
}

/// Sets `alpn` on `peer`, with room for concurrent streams when it
/// allows HTTP/2.
pub(crate) fn set_alpn(peer: &mut HttpPeer, alpn: ALPN) {
    if alpn.get_max_http_version() == 2 {
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    peer.options.alpn = alpn;
}

fn protocol_alpn(protocol: UpstreamProtocol) -> ALPN {
    match protocol {
        UpstreamProtocol::Http1 => ALPN::H1,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => ALPN::H2,
    }
}

/// A fixed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticUpstream {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Speak TLS to it.
    pub tls: bool,
    /// The TLS server name, and the name its certificate must carry.
    pub sni: String,
    /// The HTTP version spoken to it.
    pub protocol: UpstreamProtocol,
}

impl StaticUpstream {
    /// A plain-HTTP upstream at `address` (`ip:port`), as `--upstream`
    /// gives it.
    pub fn plain(address: &str) -> anyhow::Result<Self> {
        Ok(Self::at(parse_address(address)?))
    }

    /// A plain HTTP/1.1 upstream at `address`.
    pub fn at(address: SocketAddr) -> Self {
        StaticUpstream {
            address,
            tls: false,
            sni: String::new(),
            protocol: UpstreamProtocol::Http1,
        }
    }

    /// An upstream as configured: `"ip:port"` or `{address, tls, sni,
    /// protocol}`.
    pub fn from_config(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let fields = match config {
            UpstreamConfig::Address(address) => return Self::plain(address),
            UpstreamConfig::Fields(fields) => fields,
        };
        if fields.tls && fields.sni.is_empty() {
            bail!("tls: true needs an sni, the name the upstream's certificate is checked against");
        }
        fields.protocol.check_tls(fields.tls)?;
        Ok(StaticUpstream {
            address: parse_address(&fields.address)?,
            tls: fields.tls,
            sni: fields.sni.clone(),
            protocol: fields.protocol,
        })
    }

    /// A peer for one request.
    pub fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.address, self.tls, self.sni.clone());
        set_protocol(&mut peer, self.protocol);
        peer
    }

    /// Whether it speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.protocol != UpstreamProtocol::Http1
    }
}

fn parse_address(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .parse()
        .with_context(|| format!("{address:?} is not an ip:port address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(text: &str) -> anyhow::Result<StaticUpstream> {
        StaticUpstream::from_config(&crate::config_model::from_yaml(text)?)
    }

    #[test]
    fn both_forms_parse_and_mistakes_are_named() {
        let plain = upstream(r#""127.0.0.1:8080""#).unwrap();
        assert_eq!(plain, StaticUpstream::plain("127.0.0.1:8080").unwrap());
        let tls = upstream("{address: \"10.0.0.1:443\", tls: true, sni: api.example}").unwrap();
        assert!(tls.tls && tls.sni == "api.example");
        assert_eq!(tls.protocol, UpstreamProtocol::Http1);
        assert_eq!(tls.peer().options.alpn, ALPN::H1);
        let h2c = upstream("{address: \"10.0.0.1:80\", protocol: h2c}").unwrap();
        let peer = h2c.peer();
        assert_eq!(
            (peer.options.alpn.clone(), peer.is_tls()),
            (ALPN::H2, false)
        );
        assert_eq!(peer.options.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        let h2 = upstream("{address: \"10.0.0.1:443\", tls: true, sni: a, protocol: h2}");
        assert_eq!(h2.unwrap().peer().options.alpn, ALPN::H2);

        for (bad, says) in [
            (r#""localhost:80""#, "not an ip:port"),
            ("{address: \"10.0.0.1:443\", tls: true}", "needs an sni"),
            ("{address: \"10.0.0.1:443\", port: 1}", "unknown field"),
            (
                "{address: \"10.0.0.1:443\", protocol: h2}",
                "h2 needs tls: true",
            ),
            (
                "{address: \"10.0.0.1:443\", tls: true, sni: a, protocol: h2c}",
                "h2c is plain TCP",
            ),
            (
                "{address: \"10.0.0.1:443\", protocol: h3}",
                "unknown variant",
            ),
            ("[1, 2]", "must be"),
        ] {
            let error = format!("{:#}", upstream(bad).unwrap_err());
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
