//! `proxy_get_property`: Envoy's attributes where this proxy has them,
//! serialised as Envoy serialises them (strings as their bytes, integers
//! and times as 8-byte little-endian `i64`, booleans as one byte, maps as
//! a header map's serialised pairs), and a path into a map (`request`,
//! `headers`, `x-user`) reading one entry, as Envoy walks paths.

use std::net::SocketAddr;

use super::stream::{serialize_pairs, Stream};

/// An attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attribute {
    Text(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(String, String)>),
}

impl Attribute {
    /// Its bytes, as Envoy gives them to a filter.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        match self {
            Attribute::Text(text) => text.into_bytes(),
            Attribute::Int(value) => value.to_le_bytes().to_vec(),
            Attribute::Bool(value) => vec![u8::from(value)],
            Attribute::Map(pairs) => {
                serialize_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            }
        }
    }
}

/// What a filter instance knows of its plugin, for `plugin_*`.
pub(super) struct PluginNames<'a> {
    pub name: &'a str,
    pub root_id: &'a str,
    pub vm_id: &'a str,
}

/// The attribute at `path` (segments joined by NUL): the plugin's names
/// in any callback; the rest only in an HTTP context (`stream`).
pub(super) fn attribute(
    plugin: &PluginNames<'_>,
    stream: Option<&Stream>,
    path: &str,
) -> Option<Attribute> {
    match path {
        "plugin_name" => return Some(Attribute::Text(plugin.name.to_string())),
        "plugin_root_id" => return Some(Attribute::Text(plugin.root_id.to_string())),
        "plugin_vm_id" => return Some(Attribute::Text(plugin.vm_id.to_string())),
        _ => {}
    }
    let stream = stream?;
    let request = &stream.request;
    let facts = &stream.facts;
    let text = |value: &str| Some(Attribute::Text(value.to_string()));
    let path_and_query = request.get(":path").unwrap_or("");
    let (url_path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut segments = path.split('\0');
    let attribute = match (segments.next()?, segments.next(), segments.next()) {
        ("request", Some("path"), None) => text(path_and_query),
        ("request", Some("url_path"), None) => text(url_path),
        ("request", Some("query"), None) => text(query),
        ("request", Some("host"), None) => text(request.get(":authority")?),
        ("request", Some("scheme"), None) => text(request.get(":scheme")?),
        ("request", Some("method"), None) => text(request.get(":method")?),
        ("request", Some("referer"), None) => text(request.get("referer")?),
        ("request", Some("useragent"), None) => text(request.get("user-agent")?),
        ("request", Some("protocol"), None) => text(&format!("{:?}", facts.protocol)),
        ("request", Some("id"), None) => text(&facts.id.to_string()),
        ("request", Some("time"), None) => Some(Attribute::Int(facts.started_unix_ns)),
        ("request", Some("headers"), None) => Some(Attribute::Map(request.to_pairs())),
        ("request", Some("headers"), Some(name)) => text(request.get(name)?),
        ("response", Some("code"), None) => {
            let status = stream.response.as_ref()?.get(":status")?;
            Some(Attribute::Int(status.parse().ok()?))
        }
        ("response", Some("headers"), None) => {
            Some(Attribute::Map(stream.response.as_ref()?.to_pairs()))
        }
        ("response", Some("headers"), Some(name)) => text(stream.response.as_ref()?.get(name)?),
        ("source", Some("address"), None) => address(facts.connection.client?),
        ("source", Some("port"), None) => port(facts.connection.client?),
        ("destination", Some("address"), None) => address(facts.connection.server?),
        ("destination", Some("port"), None) => port(facts.connection.server?),
        ("upstream", Some("address"), None) => address(facts.upstream?),
        ("upstream", Some("port"), None) => port(facts.upstream?),
        ("connection", Some("mtls"), None) => Some(Attribute::Bool(false)),
        ("connection", Some("tls_version"), None) => text(&facts.connection.tls.as_ref()?.version),
        ("connection", Some("requested_server_name"), None) => {
            text(facts.connection.tls.as_ref()?.server_name.as_deref()?)
        }
        _ => None,
    };
    // A path longer than the attribute's is not one.
    match segments.next() {
        Some(_) => None,
        None => attribute,
    }
}

fn address(addr: SocketAddr) -> Option<Attribute> {
    Some(Attribute::Text(addr.to_string()))
}

fn port(addr: SocketAddr) -> Option<Attribute> {
    Some(Attribute::Int(i64::from(addr.port())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::proxy_wasm::{ConnectionFacts, HeaderPairs, RequestFacts, TlsFacts};

    fn stream() -> Stream {
        let request = HeaderPairs::from_pairs(
            [
                (":method", "GET"),
                (":path", "/a/b?x=1"),
                (":authority", "h.example"),
                (":scheme", "https"),
                ("user-agent", "curl/8"),
                ("x-user", "ada"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        );
        Stream {
            request,
            response: Some(HeaderPairs::from_pairs(vec![(
                ":status".to_string(),
                "201".to_string(),
            )])),
            facts: RequestFacts {
                id: 7,
                protocol: http::Version::HTTP_11,
                started_unix_ns: 1_700_000_000_000_000_000,
                connection: ConnectionFacts {
                    client: Some("10.0.0.1:5000".parse().unwrap()),
                    server: Some("10.0.0.2:443".parse().unwrap()),
                    tls: Some(TlsFacts {
                        version: "TLSv1.3".to_string(),
                        server_name: Some("h.example".to_string()),
                    }),
                },
                upstream: Some("127.0.0.1:8080".parse().unwrap()),
            },
            ..Stream::default()
        }
    }

    #[test]
    fn attributes_are_serialised_as_envoy_serialises_them() {
        let plugin = PluginNames {
            name: "f.wasm",
            root_id: "r",
            vm_id: "",
        };
        let stream = stream();
        let get = |path: &str| {
            attribute(&plugin, Some(&stream), &path.replace('.', "\0")).map(Attribute::into_bytes)
        };
        assert_eq!(get("request.url_path").unwrap(), b"/a/b");
        assert_eq!(get("request.query").unwrap(), b"x=1");
        assert_eq!(get("request.useragent").unwrap(), b"curl/8");
        assert_eq!(
            get("request.time").unwrap(),
            1_700_000_000_000_000_000i64.to_le_bytes()
        );
        assert_eq!(get("response.code").unwrap(), 201i64.to_le_bytes());
        assert_eq!(get("source.port").unwrap(), 5000i64.to_le_bytes());
        assert_eq!(get("source.address").unwrap(), b"10.0.0.1:5000");
        assert_eq!(get("upstream.address").unwrap(), b"127.0.0.1:8080");
        assert_eq!(get("connection.tls_version").unwrap(), b"TLSv1.3");
        assert_eq!(
            get("connection.requested_server_name").unwrap(),
            b"h.example"
        );
        assert_eq!(get("connection.mtls").unwrap(), [0]);
        assert_eq!(get("request.headers.x-user").unwrap(), b"ada");
        let headers = HeaderPairs::deserialize(&get("request.headers").unwrap()).unwrap();
        assert!(headers.contains(&("x-user".to_string(), "ada".to_string())));
        assert_eq!(get("plugin_root_id").unwrap(), b"r");
        assert_eq!(get("request.path.more"), None);
        assert_eq!(get("request.referer"), None);
        assert_eq!(get("nothing"), None);
        assert_eq!(
            attribute(&plugin, None, "request\0path"),
            None,
            "outside an HTTP context only plugin_* exist"
        );
    }
}
