//! A tenant's static upstream: where its requests go when its module does
//! not choose (exports no `upstream_peer`).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use pingora::upstreams::peer::HttpPeer;

use crate::config_model::UpstreamConfig;

/// A fixed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticUpstream {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Speak TLS to it.
    pub tls: bool,
    /// The TLS server name, and the name its certificate must carry.
    pub sni: String,
}

impl StaticUpstream {
    /// A plain-HTTP upstream at `address` (`ip:port`), as `--upstream`
    /// gives it.
    pub fn plain(address: &str) -> anyhow::Result<Self> {
        Ok(StaticUpstream {
            address: parse_address(address)?,
            tls: false,
            sni: String::new(),
        })
    }

    /// An upstream as configured: `"ip:port"` or `{address, tls, sni}`.
    pub fn from_config(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let fields = match config {
            UpstreamConfig::Address(address) => return Self::plain(address),
            UpstreamConfig::Fields(fields) => fields,
        };
        if fields.tls && fields.sni.is_empty() {
            bail!("tls: true needs an sni, the name the upstream's certificate is checked against");
        }
        Ok(StaticUpstream {
            address: parse_address(&fields.address)?,
            tls: fields.tls,
            sni: fields.sni.clone(),
        })
    }

    /// A peer for one request.
    pub fn peer(&self) -> HttpPeer {
        HttpPeer::new(self.address, self.tls, self.sni.clone())
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

        for (bad, says) in [
            (r#""localhost:80""#, "not an ip:port"),
            ("{address: \"10.0.0.1:443\", tls: true}", "needs an sni"),
            ("{address: \"10.0.0.1:443\", port: 1}", "unknown field"),
            ("[1, 2]", "must be"),
        ] {
            let error = format!("{:#}", upstream(bad).unwrap_err());
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
