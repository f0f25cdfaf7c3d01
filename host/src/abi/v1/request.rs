//! Requests between Pingora and the wire: the downstream request a guest
//! reads, the upstream request it may change, and applying its changes.

use std::str::FromStr;

use guest_sdk::wire;
use http::{HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use super::headers::CheckedOps;
use crate::abi::HookFault;

/// The upstream request exactly as a guest is shown it, decoded. An error
/// here is the host's own (its encoding does not decode).
pub fn upstream_request(req: &RequestHeader) -> Result<wire::UpstreamRequest, String> {
    serde_json::from_str(&UpstreamRequestJson(req).to_json())
        .map_err(|e| format!("re-reading the upstream request shown to the guest: {e}"))
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The downstream request encoded straight from Pingora's header, without
/// building a [`wire::Request`] first; same JSON.
pub struct RequestJson<'a> {
    /// The request.
    pub header: &'a RequestHeader,
    /// The client's address.
    pub client_addr: Option<&'a pingora::protocols::l4::socket::SocketAddr>,
}

impl RequestJson<'_> {
    /// The JSON text, in a buffer sized for it up front.
    pub fn to_json(&self) -> String {
        encode(self.header, self)
    }
}

/// `value`, a view of `req`, as JSON in a buffer sized for it up front.
fn encode(req: &RequestHeader, value: &impl Serialize) -> String {
    let headers: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 6)
        .sum();
    let mut json = Vec::with_capacity(req.raw_path().len() + headers + 128);
    // Writing into a Vec cannot fail, nor can these string-keyed values.
    if serde_json::to_writer(&mut json, value).is_err() {
        return "null".into();
    }
    String::from_utf8(json).unwrap_or_else(|_| "null".into())
}

impl Serialize for RequestJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let req = self.header;
        let mut out = serializer.serialize_struct("Request", 5)?;
        out.serialize_field("method", req.method.as_str())?;
        out.serialize_field("uri", &String::from_utf8_lossy(req.raw_path()))?;
        out.serialize_field("version", &VersionStr(req.version))?;
        out.serialize_field(
            "headers",
            &HeadersJson {
                req,
                keep_case: false,
            },
        )?;
        if let Some(addr) = self.client_addr {
            out.serialize_field("client_addr", &DisplayStr(addr))?;
        }
        out.end()
    }
}

/// The upstream request encoded straight from Pingora's header, in the
/// shape of [`wire::UpstreamRequest`], names in the case they will be sent.
pub struct UpstreamRequestJson<'a>(pub &'a RequestHeader);

impl UpstreamRequestJson<'_> {
    /// The JSON text, in a buffer sized for it up front.
    pub fn to_json(&self) -> String {
        encode(self.0, self)
    }
}

impl Serialize for UpstreamRequestJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let req = self.0;
        let mut out = serializer.serialize_struct("UpstreamRequest", 3)?;
        out.serialize_field("method", req.method.as_str())?;
        out.serialize_field("uri", &String::from_utf8_lossy(req.raw_path()))?;
        out.serialize_field(
            "headers",
            &HeadersJson {
                req,
                keep_case: true,
            },
        )?;
        out.end()
    }
}

struct HeadersJson<'a> {
    req: &'a RequestHeader,
    keep_case: bool,
}

impl Serialize for HeadersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let req = self.req;
        let mut seq = serializer.serialize_seq(Some(req.headers.len()))?;
        if self.keep_case && req.has_case() {
            for (name, value) in req.case_header_iter() {
                let name = String::from_utf8_lossy(name.as_slice());
                match value.to_str() {
                    Ok(value) => seq.serialize_element(&(name, value))?,
                    Err(_) => seq.serialize_element(&(name, lossy(value)))?,
                }
            }
        } else {
            for (name, value) in req.headers.iter() {
                match value.to_str() {
                    Ok(value) => seq.serialize_element(&(name.as_str(), value))?,
                    Err(_) => seq.serialize_element(&(name.as_str(), lossy(value)))?,
                }
            }
        }
        seq.end()
    }
}

/// An HTTP version as `"HTTP/1.1"`.
struct VersionStr(http::Version);

impl Serialize for VersionStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let known = match self.0 {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            other => return serializer.collect_str(&format_args!("{other:?}")),
        };
        serializer.serialize_str(known)
    }
}

struct DisplayStr<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for DisplayStr<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A new method and/or request target from a guest, checked before the
/// request is touched.
struct RequestLine<'a> {
    method: Option<Method>,
    uri: Option<&'a str>,
}

impl<'a> RequestLine<'a> {
    fn checked(method: Option<&str>, uri: Option<&'a str>) -> Result<Self, HookFault> {
        let method = match method {
            Some(method) => Some(
                Method::from_str(method)
                    .map_err(|_| HookFault::InvalidOutput(format!("invalid method {method:?}")))?,
            ),
            None => None,
        };
        if let Some(uri) = uri {
            if !(uri.starts_with('/') || uri == "*") {
                return Err(HookFault::InvalidOutput(format!(
                    "uri {uri:?} is not a path"
                )));
            }
        }
        Ok(RequestLine { method, uri })
    }

    fn apply(self, target: &mut RequestHeader) -> Result<(), HookFault> {
        if let Some(uri) = self.uri {
            let before = target.uri.clone().into_parts();
            target
                .set_raw_path(uri.as_bytes())
                .map_err(|e| HookFault::InvalidOutput(format!("uri {uri:?}: {e}")))?;
            // An HTTP/2 request (or an absolute-form one) names its host
            // in the URI, not in a Host header: a new path keeps it.
            if let (Some(scheme), Some(authority)) = (before.scheme, before.authority) {
                let mut parts = target.uri.clone().into_parts();
                parts.scheme = Some(scheme);
                parts.authority = Some(authority);
                let with_host = http::Uri::from_parts(parts)
                    .map_err(|e| HookFault::InvalidOutput(format!("uri {uri:?}: {e}")))?;
                target.set_uri(with_host);
            }
        }
        if let Some(method) = self.method {
            target.set_method(method);
        }
        Ok(())
    }
}

/// Applies a guest's list of changes. Everything is checked before
/// anything is changed.
pub fn apply_request_changes(
    target: &mut RequestHeader,
    changes: wire::RequestChanges,
) -> Result<(), HookFault> {
    let wire::RequestChanges {
        method,
        uri,
        headers,
    } = changes;
    let line = RequestLine::checked(method.as_deref(), uri.as_deref())?;
    let headers = CheckedOps::new(headers)?;
    line.apply(target)?;
    headers.apply(target)
}

/// Makes `target` what the guest returned. `sent` is what the guest was
/// given: unchanged parts are left alone, so header values that were not
/// UTF-8 survive a guest that did not touch them. Everything is checked
/// before anything is changed.
pub fn apply_upstream_request(
    target: &mut RequestHeader,
    sent: &wire::UpstreamRequest,
    new: &wire::UpstreamRequest,
) -> Result<(), HookFault> {
    let invalid = |what: String| HookFault::InvalidOutput(what);

    let line = RequestLine::checked(
        Some(new.method.as_str()).filter(|method| *method != sent.method),
        Some(new.uri.as_str()).filter(|uri| *uri != sent.uri),
    )?;

    let headers = if new.headers != sent.headers {
        let mut headers = Vec::with_capacity(new.headers.len());
        for (name, value) in &new.headers {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
            let value = original_bytes(target, sent, name, value)
                .map_or_else(|| HeaderValue::from_str(value), Ok);
            let value = value.map_err(|_| invalid(format!("invalid value for header {name}")))?;
            headers.push((name.clone(), value));
        }
        Some(headers)
    } else {
        None
    };

    line.apply(target)?;
    if let Some(headers) = headers {
        let names: Vec<HeaderName> = target.headers.keys().cloned().collect();
        for name in names {
            target.remove_header(&name);
        }
        for (name, value) in headers {
            target
                .append_header(name, value)
                .map_err(|e| invalid(format!("header: {e}")))?;
        }
    }
    Ok(())
}

/// The original bytes of a header the guest handed back unchanged whose
/// value was not UTF-8 (and so reached the guest with U+FFFD in it).
fn original_bytes(
    target: &RequestHeader,
    sent: &wire::UpstreamRequest,
    name: &str,
    value: &str,
) -> Option<HeaderValue> {
    if !value.contains('\u{FFFD}') {
        return None;
    }
    let position = sent
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .position(|(_, v)| v == value)?;
    target
        .headers
        .get_all(name)
        .iter()
        .nth(position)
        .filter(|raw| std::str::from_utf8(raw.as_bytes()).is_err())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("Host", "example.com").unwrap();
        req.append_header("X-Raw", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .unwrap();
        req
    }

    #[test]
    fn a_new_path_keeps_the_host_an_http2_request_names_in_its_uri() {
        let mut req = RequestHeader::build("GET", b"/old", None).unwrap();
        req.set_uri("https://a.example:8443/old".parse().unwrap());
        let changes = wire::RequestChanges {
            uri: Some("/new?x=1".into()),
            ..Default::default()
        };
        apply_request_changes(&mut req, changes).unwrap();
        assert_eq!(req.uri.to_string(), "https://a.example:8443/new?x=1");

        let mut plain = request();
        let changes = wire::RequestChanges {
            uri: Some("/new".into()),
            ..Default::default()
        };
        apply_request_changes(&mut plain, changes).unwrap();
        assert_eq!(plain.uri.to_string(), "/new");
    }

    #[test]
    fn direct_encodings_match_the_wire_types() {
        let req = request();
        let direct: wire::Request = serde_json::from_str(
            &serde_json::to_string(&RequestJson {
                header: &req,
                client_addr: None,
            })
            .unwrap(),
        )
        .unwrap();
        let expected = wire::Request {
            method: "GET".into(),
            uri: "/a?b=1".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("host".into(), "example.com".into()),
                ("x-raw".into(), "caf\u{FFFD}".into()),
            ],
            client_addr: None,
        };
        assert_eq!(direct, expected);
        let expected = wire::UpstreamRequest {
            method: "GET".into(),
            uri: "/a?b=1".into(),
            headers: vec![
                ("Host".into(), "example.com".into()),
                ("X-Raw".into(), "caf\u{FFFD}".into()),
            ],
        };
        assert_eq!(upstream_request(&req).unwrap(), expected);
    }

    #[test]
    fn changes_apply_in_order_and_invalid_ones_change_nothing() {
        let mut req = request();
        let changes = wire::RequestChanges {
            method: Some("PUT".into()),
            uri: Some("/new".into()),
            headers: vec![
                wire::HeaderOp::Insert("Host".into(), "b.example".into()),
                wire::HeaderOp::Append("X-A".into(), "1".into()),
                wire::HeaderOp::Append("X-A".into(), "2".into()),
                wire::HeaderOp::Remove("x-raw".into()),
            ],
        };
        apply_request_changes(&mut req, changes).unwrap();
        assert_eq!(req.headers.get("host").unwrap(), "b.example");
        assert_eq!(req.headers.get_all("x-a").iter().count(), 2);
        assert!(req.headers.get("x-raw").is_none());
        assert_eq!((req.method.as_str(), req.raw_path()), ("PUT", &b"/new"[..]));

        let mut req = request();
        let bad = wire::RequestChanges {
            headers: vec![
                wire::HeaderOp::Remove("host".into()),
                wire::HeaderOp::Insert("x".into(), "a\nb".into()),
            ],
            ..Default::default()
        };
        assert!(apply_request_changes(&mut req, bad).is_err());
        assert_eq!(req.headers.len(), 2);
    }

    #[test]
    fn unchanged_output_changes_nothing() {
        let mut req = request();
        let sent = upstream_request(&req).unwrap();
        apply_upstream_request(&mut req, &sent, &sent.clone()).unwrap();
        assert_eq!(req.headers.get("x-raw").unwrap().as_bytes(), b"caf\xe9");
        assert_eq!(req.raw_path(), b"/a?b=1");
    }

    #[test]
    fn changed_headers_replace_all_and_keep_untouched_raw_bytes() {
        let mut req = request();
        let sent = upstream_request(&req).unwrap();
        let mut new = sent.clone();
        new.headers[0].1 = "other.example".into();
        new.headers.push(("X-New".into(), "1".into()));
        new.uri = "/b".into();
        new.method = "POST".into();
        apply_upstream_request(&mut req, &sent, &new).unwrap();
        assert_eq!(req.headers.get("host").unwrap(), "other.example");
        assert_eq!(req.headers.get("x-new").unwrap(), "1");
        assert_eq!(req.headers.get("x-raw").unwrap().as_bytes(), b"caf\xe9");
        assert_eq!(req.raw_path(), b"/b");
        assert_eq!(req.method, Method::POST);
    }

    #[test]
    fn invalid_output_is_refused_and_leaves_the_request_intact() {
        for (field, bad) in [
            ("name", "bad name"),
            ("value", "a\r\nb"),
            ("uri", "http:x"),
            ("method", "G ET"),
        ] {
            let mut req = request();
            let sent = upstream_request(&req).unwrap();
            let mut new = sent.clone();
            match field {
                "name" => new.headers.push((bad.into(), "v".into())),
                "value" => new.headers.push(("x".into(), bad.into())),
                "uri" => new.uri = bad.into(),
                _ => new.method = bad.into(),
            }
            let err = apply_upstream_request(&mut req, &sent, &new).unwrap_err();
            assert!(matches!(err, HookFault::InvalidOutput(_)), "{field}: {err}");
            assert_eq!(req.raw_path(), b"/a?b=1");
            assert_eq!(req.headers.len(), 2);
        }
    }
}
