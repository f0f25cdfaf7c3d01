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
    /// without blocking a worker.
    pub address: String,
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
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connection_timeout_ms: None,
            read_timeout_ms: None,
            verify_cert: true,
            verify_hostname: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// A hook's refusal: the host answers the request with `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookError {
    /// HTTP status for the client; the host uses 500 if it is not 100-599.
    pub status: u16,
    /// Why; logged by the host, not sent to the client.
    #[serde(default)]
    pub message: String,
}

/// Input of `upstream_peer`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerInput<R, C> {
    /// The downstream request; absent for a guest that asked for
    /// [`InitOutput::lazy_input`] (it reads it through `hook.input_part`).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub request: Option<R>,
    /// The per-request context; `null` on the first hook of a request.
    pub ctx: C,
}

/// Output of `upstream_peer`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de>"))]
pub struct PeerOutput<C> {
    /// Where to send the request; required unless `error` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// The new context; absent means unchanged.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ctx: Option<C>,
    /// Set to refuse the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookError>,
}

/// Input of `upstream_request_filter`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FilterInput<R, U, C> {
    /// The downstream request; absent for a lazy-input guest.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub request: Option<R>,
    /// The request as it would go upstream now; absent for a lazy-input
    /// guest.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<U>,
    /// The context as `upstream_peer` left it.
    pub ctx: C,
}

/// One change to the upstream request's headers.
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

/// Changes to the upstream request, as an alternative to returning it
/// whole: only what changed crosses the boundary.
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

/// Output of `upstream_request_filter`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "U: Deserialize<'de>, C: Deserialize<'de>"))]
pub struct FilterOutput<U, C> {
    /// The request to send upstream, whole; absent means unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<U>,
    /// Or only the changes to it (ignored if `upstream_request` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_changes: Option<RequestChanges>,
    /// The new context; absent means unchanged.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ctx: Option<C>,
    /// Set to refuse the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookError>,
}

/// Output of `hook_init`: `{}` when the module accepted its configuration.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InitOutput {
    /// Set when the configuration was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookError>,
    /// The guest reads `request` and `upstream_request` on demand through
    /// the import `hook.input_part` instead of receiving them in every
    /// hook's input: a hook that never looks at them costs less.
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
        let out: PeerOutput<serde_json::Value> =
            serde_json::from_str(r#"{"peer":{"address":"1.2.3.4:80"},"ctx":null}"#).unwrap();
        assert_eq!(out.ctx, Some(serde_json::Value::Null));
        let out: PeerOutput<serde_json::Value> =
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
        let out: FilterOutput<UpstreamRequest, serde_json::Value> =
            serde_json::from_str(r#"{"future":1,"error":{"status":403,"message":"no","x":2}}"#)
                .unwrap();
        assert_eq!(out.error.unwrap().status, 403);
    }
}
