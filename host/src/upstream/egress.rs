//! Where a tenant's guests may send traffic they address themselves: an
//! address or name from ABI v1's `upstream_peer`, an `ip:port` given to
//! `proxy_http_call`. Destinations the operator declared (upstreams,
//! pools, clusters) never come here: they are allowed by being declared.
//!
//! An `egress.allow` entry is an IP or CIDR with an optional `:port`
//! (`10.1.0.0/16`, `192.0.2.7:443`, `127.0.0.1/32:18080`,
//! `[2001:db8::/32]:443`), or `name:port` (`api.example.com:443`), which
//! allows a guest that names that host; the address it resolves to is
//! still checked against what is never allowed. Never allowed, whatever
//! the lists say: the proxy's own listeners and metrics address, and
//! link-local addresses (`169.254.0.0/16`, `fe80::/10`, where cloud
//! metadata services live) unless an entry names the address exactly.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::{bail, Context};
use ipnet::IpNet;

/// One `egress.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Addresses in `net`, on `port` or any port.
    Net { net: IpNet, port: Option<u16> },
    /// A host name a guest may give, on `port`.
    Name { host: String, port: u16 },
}

impl Entry {
    /// Parses `10.1.0.0/16`, `192.0.2.7:443`, `[::1]:443`,
    /// `[fd00::/8]:443`, `fd00::/8` or `api.example.com:443`.
    fn parse(text: &str) -> anyhow::Result<Entry> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .with_context(|| format!("{text:?}: `[` without `]`"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .with_context(|| format!("{text:?}: only `:PORT` may follow `]`"))?,
                ),
            };
            (inside, port)
        } else if text.matches(':').count() > 1 {
            // An IPv6 address or network without a port.
            (text, None)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .with_context(|| format!("{text:?}: port {port:?} is not 1-65535"))?,
            ),
            None => None,
        };
        if let Ok(net) = host.parse::<IpNet>() {
            return Ok(Entry::Net {
                net: net.trunc(),
                port,
            });
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Entry::Net {
                net: IpNet::from(ip),
                port,
            });
        }
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid_name || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            bail!("{text:?} is neither an IP, a CIDR nor a host name");
        }
        let Some(port) = port else {
            bail!("{text:?}: a host name needs a port (name:port)");
        };
        Ok(Entry::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the entry allows a connection to `address`, which the
    /// guest named `name` (None: it gave the address itself).
    fn allows(&self, name: Option<(&str, u16)>, address: SocketAddr) -> bool {
        match self {
            Entry::Net { net, port } => {
                net.contains(&address.ip()) && port.is_none_or(|p| p == address.port())
            }
            Entry::Name { host, port } => name.is_some_and(|(given, given_port)| {
                given_port == *port && given.eq_ignore_ascii_case(host)
            }),
        }
    }

    /// Whether the entry names exactly `ip`, as link-local needs.
    fn names_exactly(&self, ip: IpAddr) -> bool {
        matches!(self, Entry::Net { net, .. } if net.prefix_len() == net.max_prefix_len() && net.addr() == ip)
    }
}

/// What no guest may reach: the proxy's own listening addresses.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    listeners: Vec<SocketAddr>,
}

impl OwnAddresses {
    /// The listeners and the metrics address, as given on the command
    /// line (each `ip:port`; names are refused elsewhere).
    pub fn new(addresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        OwnAddresses {
            listeners: addresses.into_iter().collect(),
        }
    }

    /// Whether `address` reaches one of the proxy's listeners: the same
    /// port on the bound address or, for a listener bound to every
    /// address, on any address of this machine.
    fn contains(&self, address: SocketAddr) -> bool {
        self.listeners.iter().any(|own| {
            own.port() == address.port()
                && (own.ip() == address.ip()
                    || (own.ip().is_unspecified() && is_local(address.ip())))
        })
    }
}

/// Whether `ip` is one of this machine's addresses. Only asked for a
/// destination on a port the proxy listens on, so the bind (which
/// succeeds only for a local address) is rare.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether `ip` is link-local (IPv4 `169.254.0.0/16`, IPv6 `fe80::/10`,
/// also as an IPv4-mapped address).
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => v6.is_unicast_link_local(),
        },
    }
}

/// A tenant's egress rules.
#[derive(Debug, Clone)]
pub struct Egress {
    /// The `allow` entries; None: no `egress:` was given anywhere.
    allow: Option<Vec<Entry>>,
    own: Arc<OwnAddresses>,
}

/// Why a destination was refused, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the tenant's `egress.allow` (or no list, for a callout).
    NotAllowed,
    /// One of the proxy's own listeners.
    OwnListener,
    /// Link-local, not named exactly.
    LinkLocal,
}

impl Default for Egress {
    /// No `egress:` and no own addresses: only link-local is refused.
    fn default() -> Self {
        Egress {
            allow: None,
            own: Arc::default(),
        }
    }
}

impl Egress {
    /// Rules from `allow` (None: no `egress:` given), never reaching
    /// `own`.
    pub fn new(allow: Option<&[String]>, own: Arc<OwnAddresses>) -> anyhow::Result<Self> {
        let allow = match allow {
            Some(entries) => Some(
                entries
                    .iter()
                    .enumerate()
                    .map(|(at, entry)| Entry::parse(entry).with_context(|| format!("allow[{at}]")))
                    .collect::<anyhow::Result<_>>()?,
            ),
            None => None,
        };
        Ok(Egress { allow, own })
    }

    /// Whether any `egress:` was given.
    pub fn is_configured(&self) -> bool {
        self.allow.is_some()
    }

    /// Checks a connection to `address` that the guest chose, naming it
    /// `name` if it gave a host name. `open_by_default`: without any
    /// `egress:`, everything not forbidden is allowed (ABI v1's
    /// `upstream_peer`); otherwise nothing is (callouts).
    pub fn check(
        &self,
        name: Option<(&str, u16)>,
        address: SocketAddr,
        open_by_default: bool,
    ) -> Result<(), Refusal> {
        if self.own.contains(address) {
            return Err(Refusal::OwnListener);
        }
        let entries = self.allow.as_deref().unwrap_or_default();
        if is_link_local(address.ip()) && !entries.iter().any(|e| e.names_exactly(address.ip())) {
            return Err(Refusal::LinkLocal);
        }
        match &self.allow {
            None if open_by_default => Ok(()),
            None => Err(Refusal::NotAllowed),
            Some(entries) if entries.iter().any(|e| e.allows(name, address)) => Ok(()),
            Some(_) => Err(Refusal::NotAllowed),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotAllowed => "not in egress.allow",
            Refusal::OwnListener => "the proxy's own listener",
            Refusal::LinkLocal => "link-local, not named exactly in egress.allow",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: Option<&[&str]>, own: &[&str]) -> Egress {
        let allow: Option<Vec<String>> = allow.map(|a| a.iter().map(|s| s.to_string()).collect());
        let own = OwnAddresses::new(own.iter().map(|a| a.parse().unwrap()));
        Egress::new(allow.as_deref(), Arc::new(own)).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn entries_parse_as_written() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        assert_eq!(
            Entry::parse("10.1.0.0/16").unwrap(),
            Entry::Net {
                net: net("10.1.0.0/16"),
                port: None
            }
        );
        assert_eq!(
            Entry::parse("127.0.0.1/32:18080").unwrap(),
            Entry::Net {
                net: net("127.0.0.1/32"),
                port: Some(18080)
            }
        );
        assert_eq!(
            Entry::parse("[2001:db8::/32]:443").unwrap(),
            Entry::Net {
                net: net("2001:db8::/32"),
                port: Some(443)
            }
        );
        assert_eq!(
            Entry::parse("fd00::/8").unwrap(),
            Entry::Net {
                net: net("fd00::/8"),
                port: None
            }
        );
        assert_eq!(
            Entry::parse("API.example.com:443").unwrap(),
            Entry::Name {
                host: "api.example.com".into(),
                port: 443
            }
        );
        for bad in [
            "",
            "api.example.com",
            "10.0.0.0/40",
            "1.2.3.4:0",
            "1.2.3.4:99999",
            "[::1",
            "[::1]x",
            "a b:80",
            "999.1.1.1:80",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn without_a_list_peers_are_open_and_callouts_closed() {
        let rules = egress(None, &[]);
        assert_eq!(rules.check(None, addr("10.0.0.1:80"), true), Ok(()));
        assert_eq!(
            rules.check(None, addr("10.0.0.1:80"), false),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn a_list_allows_what_it_names_and_nothing_else() {
        let rules = egress(
            Some(&["10.1.0.0/16", "192.0.2.7:443", "api.example.com:443"]),
            &[],
        );
        for open in [true, false] {
            assert_eq!(rules.check(None, addr("10.1.2.3:9"), open), Ok(()));
            assert_eq!(rules.check(None, addr("192.0.2.7:443"), open), Ok(()));
            assert_eq!(
                rules.check(None, addr("192.0.2.7:444"), open),
                Err(Refusal::NotAllowed)
            );
            assert_eq!(
                rules.check(None, addr("10.2.0.1:80"), open),
                Err(Refusal::NotAllowed)
            );
            let api = Some(("api.example.com", 443));
            assert_eq!(rules.check(api, addr("203.0.113.9:443"), open), Ok(()));
            // The name is allowed, not the address it happens to have.
            assert_eq!(
                rules.check(None, addr("203.0.113.9:443"), open),
                Err(Refusal::NotAllowed)
            );
        }
    }

    #[test]
    fn own_listeners_and_link_local_are_never_reached() {
        let rules = egress(
            Some(&["0.0.0.0/0", "::/0", "169.254.169.254:80"]),
            &["127.0.0.1:8080", "0.0.0.0:9100"],
        );
        assert_eq!(
            rules.check(None, addr("127.0.0.1:8080"), true),
            Err(Refusal::OwnListener)
        );
        assert_eq!(
            rules.check(None, addr("127.0.0.2:9100"), true),
            Err(Refusal::OwnListener)
        );
        assert_eq!(
            rules.check(None, addr("0.0.0.0:9100"), true),
            Err(Refusal::OwnListener)
        );
        assert_eq!(rules.check(None, addr("127.0.0.1:8081"), true), Ok(()));
        assert_eq!(
            rules.check(None, addr("169.254.169.254:80"), true),
            Ok(()),
            "named exactly"
        );
        assert_eq!(
            rules.check(None, addr("169.254.1.1:80"), true),
            Err(Refusal::LinkLocal)
        );
        assert_eq!(
            rules.check(None, addr("[fe80::1]:80"), true),
            Err(Refusal::LinkLocal)
        );
        assert_eq!(
            rules.check(None, addr("[::ffff:169.254.1.1]:80"), true),
            Err(Refusal::LinkLocal)
        );
        let open = egress(None, &[]);
        assert_eq!(
            open.check(None, addr("169.254.169.254:80"), true),
            Err(Refusal::LinkLocal)
        );
    }
}
