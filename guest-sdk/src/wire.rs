//! The JSON wire types of ABI v1, shared by guests (which decode inputs and
//! encode outputs) and the host (which does the reverse).
//!
//! Unknown fields are ignored on both sides, so either side may add fields.
//! `ctx` is generic: the host carries it as raw JSON, a guest sees its own
//! typed `CTX`.

use serde::{Deserialize, Deserializer, Serialize};

/// The downstream request as the client sent it (`REQ` in docs/ABI.md).
///
/// Header values that are not valid UTF-8 are passed with the invalid bytes
/// replaced by U+FFFD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target as received: path and query, e.g. `/a?b=1`.
    pub uri: String,
    /// Protocol version, e.g. `HTTP/1.1`.
    #[serde(default)]
    pub version: String,
    /// Header fields in order, names in lower case, repeated names repeated.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The client's socket address, when known, e.g. `127.0.0.1:51234`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
}

/// The request the upstream will receive (`HDR` in docs/ABI.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRequest {
    /// Method sent upstream.
    pub method: String,
    /// Request target sent upstream: path and query.
    pub uri: String,
    /// Header fields sent upstream, in order; the names keep their case.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Where the request goes (`PEER` in docs/ABI.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `ip:port`; `[v6]:port` for IPv6. Host names are resolved by the host
    /// without blocking a worker. Empty when `pool` is given.
    #[serde(default)]
    pub address: String,
    /// Instead of `address`: one of the tenant's pools, from which the
    /// host picks a healthy backend (`tls` and `sni` are then the pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// With `pool`: the consistent-hashing key (a user id, a session);
    /// requests with the same key reach the same backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whether to speak TLS to the upstream.
    #[serde(default)]
    pub tls: bool,
    /// The TLS server name (and the name its certificate is checked against).
    #[serde(default)]
    pub sni: String,
    /// Connection options.
    #[serde(default)]
    pub options: PeerOptions,
}

/// Connection options of a [`Peer`]; every field is optional on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOptions {
    /// Timeout to establish the TCP (and TLS) connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout_ms: Option<u64>,
    /// Timeout for each read from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout_ms: Option<u64>,
    /// Verify the upstream's certificate chain (default true).
    #[serde(default = "yes")]
    pub verify_cert: bool,
    /// Verify that the certificate matches `sni` (default true).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
    /// The HTTP versions offered to the upstream (default `h1`).
    #[serde(default, skip_serializing_if = "is_h1")]
    pub alpn: Alpn,
}

/// The HTTP versions a peer may speak, as Pingora's `ALPN`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alpn {
    /// HTTP/1.1 only.
    #[default]
    H1,
    /// HTTP/2 only: by ALPN over TLS, with prior knowledge (h2c) over
    /// plain TCP.
    H2,
    /// HTTP/2 preferred, HTTP/1.1 accepted (over TLS; plain TCP speaks
    /// HTTP/1.1).
    H2h1,
}

fn is_h1(alpn: &Alpn) -> bool {
    *alpn == Alpn::H1
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connection_timeout_ms: None,
            read_timeout_ms: None,
            verify_cert: true,
            verify_hostname: true,
            alpn: Alpn::H1,
        }
    }
}

fn yes() -> bool {
    true
}

/// A hook's refusal: the host answers the request with `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookError {
    /// HTTP status for the client, 400-599; anything else is a guest fault
    /// (500).
    pub status: u16,
    /// Why; logged by the host, not sent to the client.
    #[serde(default)]
    pub message: String,
}

/// The input of every hook. Each hook gets the fields of its phase (see
/// docs/ABI.md); a lazy-input guest gets only `ctx`, or nothing, and
/// fetches each other field as an input part (`PART_*`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>, C: Deserialize<'de>"))]
pub struct HookInput<P, C> {
    /// The downstream request ([`Request`]).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub request: Option<P>,
    /// `upstream_request_filter`: the request as it would go upstream now
    /// ([`UpstreamRequest`]).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<P>,
    /// `response_filter`, `logging`: the response header ([`Response`]).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub response: Option<P>,
    /// `logging`: why the request failed, if it did ([`LoggedError`]).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub error: Option<P>,
    /// `logging`: microseconds from the request's arrival to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// The per-request context; `null` in a request's first hook.
    pub ctx: C,
}

/// The output of every hook; a hook reads the fields of its phase and
/// ignores the others. All but `peer` are boxed: the struct is decoded
/// and returned by value on every call, and inline it would be several
/// hundred bytes to move.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de>"))]
pub struct HookOutput<C> {
    /// `upstream_peer`: where to send the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// `request_filter`: changes to the downstream request, seen by the
    /// later hooks and sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_changes: Option<Box<RequestChanges>>,
    /// `request_filter`: answer the request here; no upstream is contacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<LocalResponse>>,
    /// `upstream_request_filter`: the request to send upstream, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<Box<UpstreamRequest>>,
    /// `upstream_request_filter`: or only the changes to it (ignored if
    /// `upstream_request` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_changes: Option<Box<RequestChanges>>,
    /// `response_filter`: changes to the response sent downstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_changes: Option<Box<ResponseChanges>>,
    /// The new context; absent means unchanged, `null` sets it to null.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ctx: Option<C>,
    /// Set to refuse the request (not in `logging`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookError>,
}

/// One change to a request's or a response's headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderOp {
    /// Replace every field of this name with one `name: value`.
    Insert(String, String),
    /// Add `name: value`, keeping existing fields of this name.
    Append(String, String),
    /// Remove every field of this name.
    Remove(String),
}

/// Changes to a request, as an alternative to returning it whole: only
/// what changed crosses the boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestChanges {
    /// New method, if changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// New request target, if changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Header changes, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderOp>,
}

impl RequestChanges {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.method.is_none() && self.uri.is_none() && self.headers.is_empty()
    }
}

/// A response header (`RESP` in docs/ABI.md): what the upstream answered
/// (or a local answer), as `response_filter` and `logging` see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header fields in order; the names keep their case.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Changes to the response sent downstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseChanges {
    /// New status, 200-599, if changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Header changes, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderOp>,
}

impl ResponseChanges {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.headers.is_empty()
    }
}

/// A response written by `request_filter` itself (`LOCAL` in docs/ABI.md).
/// The host sets `Content-Length`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    /// Status code, 200-599.
    pub status: u16,
    /// Header fields in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, at most 1 MiB.
    #[serde(default)]
    pub body: String,
}

/// Why a request failed, as `logging` sees it (`ERR` in docs/ABI.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedError {
    /// Pingora's error type, e.g. `ConnectRefused`, `HTTPStatus`.
    pub kind: String,
    /// The error in words.
    #[serde(default)]
    pub text: String,
}

/// Output of `hook_init`: `{}` when the module accepted its configuration.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InitOutput {
    /// Set when the configuration was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookError>,
    /// The guest reads every input field but `ctx` on demand through the
    /// import `hook.input_part` instead of receiving them in every hook's
    /// input: a hook that never looks at them costs less.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_input: bool,
    /// With `lazy_input`: the guest fetches the ctx on demand too
    /// ([`PART_CTX`]), so hooks are called with no input at all (pointer
    /// and length 0) and the host skips `hook_alloc`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_ctx: bool,
}

/// `hook.input_part` selector for the downstream request (`REQ`).
pub const PART_REQUEST: i32 = 0;
/// `hook.input_part` selector for the upstream request (`HDR`).
pub const PART_UPSTREAM_REQUEST: i32 = 1;
/// `hook.input_part` selector for the request's ctx (`lazy_ctx` guests).
pub const PART_CTX: i32 = 2;
/// `hook.input_part` selector for the response header (`RESP`).
pub const PART_RESPONSE: i32 = 3;
/// `hook.input_part` selector for the failure `logging` sees (`ERR`).
pub const PART_ERROR: i32 = 4;
/// `hook.input_part` selector for `logging`'s `duration_us`, a number.
pub const PART_DURATION_US: i32 = 5;

fn none<T>() -> Option<T> {
    None
}

/// A present field is `Some` even when it is `null`: `"ctx": null` sets the
/// context to null, only an absent `ctx` leaves it unchanged.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctx_null_is_present_and_absent_is_none() {
        let out: HookOutput<serde_json::Value> =
            serde_json::from_str(r#"{"peer":{"address":"1.2.3.4:80"},"ctx":null}"#).unwrap();
        assert_eq!(out.ctx, Some(serde_json::Value::Null));
        let out: HookOutput<serde_json::Value> =
            serde_json::from_str(r#"{"peer":{"address":"1.2.3.4:80"}}"#).unwrap();
        assert_eq!(out.ctx, None);
    }

    #[test]
    fn peer_options_default_to_verifying() {
        let peer: Peer = serde_json::from_str(r#"{"address":"1.2.3.4:443","tls":true}"#).unwrap();
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.sni, "");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let out: HookOutput<serde_json::Value> =
            serde_json::from_str(r#"{"future":1,"error":{"status":403,"message":"no","x":2}}"#)
                .unwrap();
        assert_eq!(out.error.unwrap().status, 403);
    }
}
