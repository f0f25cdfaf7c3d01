//! Framing belongs to the host. The fields that say where a message ends
//! and what its connection does next are read by Pingora (on the
//! downstream request, before it reads the body) and written by the host
//! (on the upstream request, from the body it sends); a guest that could
//! set them could make the proxy and a backend disagree about where a
//! request ends (smuggling). Both ABIs check a guest's edits here, with
//! the same messages.
//!
//! - Downstream request: no framing field may be set, added or removed;
//!   `Host` may be replaced but not removed or added a second time; the
//!   method may not change to or from `HEAD` or `CONNECT` (Pingora frames
//!   the response to the client by the request's method).
//! - The request as a proxy-wasm filter sees it: as the downstream
//!   request, but a filter may remove `Content-Length` (Envoy's pattern
//!   before it rewrites a body). The downstream request keeps it, as
//!   Pingora reads the body by it; the host frames the upstream body by
//!   chunks instead.
//! - Response: a filter may remove `Content-Length` (Envoy's pattern
//!   before it rewrites a body: the host then frames it by chunks); every
//!   other framing edit is refused.
//! - Upstream request: the guest's edits to framing fields are not
//!   applied; the host sets framing after every hook ([`keep_framing`]).

use http::{HeaderMap, HeaderName};

/// The framing fields, lower case.
pub(crate) const FRAMING_FIELDS: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-connection",
];

/// Whether `name` (any case) is a framing field.
pub(crate) fn is_framing(name: &str) -> bool {
    FRAMING_FIELDS
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name))
}

/// The message a guest edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    /// The request as it arrived, before its body is read.
    DownstreamRequest,
    /// The request as a proxy-wasm filter's header map holds it: removing
    /// its `Content-Length` asks for the body to go upstream by chunks.
    FilterRequest,
    /// The response on its way to the client.
    Response,
}

impl Message {
    fn noun(self) -> &'static str {
        match self {
            Message::DownstreamRequest | Message::FilterRequest => "the downstream request",
            Message::Response => "the response",
        }
    }

    fn is_request(self) -> bool {
        self != Message::Response
    }

    /// Whether a guest may remove `Content-Length`: then the host frames
    /// the body by chunks.
    fn may_drop_length(self) -> bool {
        self != Message::DownstreamRequest
    }
}

/// A change to one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edit {
    /// Replaces every field of the name with one.
    Set,
    /// Adds a field.
    Add,
    /// Removes every field of the name.
    Remove,
}

/// Whether a guest may make `edit` to field `name` of `message`; the
/// refusal says why. `:authority` is the request's `Host`.
pub(crate) fn check_edit(message: Message, edit: Edit, name: &str) -> Result<(), String> {
    if is_framing(name) {
        let allowed = message.may_drop_length()
            && edit == Edit::Remove
            && name.eq_ignore_ascii_case("content-length");
        if allowed {
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        return Err(if message.may_drop_length() {
            format!(
                "{name} on {} is the host's (a filter may only remove content-length)",
                message.noun()
            )
        } else {
            format!(
                "{name} on {} is the host's (it frames the body)",
                message.noun()
            )
        });
    }
    let is_host = name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority");
    if message.is_request() && is_host && edit != Edit::Set {
        return Err(match edit {
            Edit::Add => "a second Host on the downstream request".to_string(),
            _ => "removing Host from the downstream request".to_string(),
        });
    }
    Ok(())
}

/// Checks a whole new field list that replaces `old` (a proxy-wasm
/// `set_header_map_pairs`, a v1 header list): every framing field keeps
/// its values, but for what [`check_edit`] lets go, and the request has at
/// most one `Host`.
pub(crate) fn check_replacement(
    message: Message,
    old: &[(String, String)],
    new: &[(String, String)],
) -> Result<(), String> {
    for field in FRAMING_FIELDS {
        let values = |pairs: &[(String, String)]| -> Vec<String> {
            pairs
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(field))
                .map(|(_, value)| value.clone())
                .collect()
        };
        let (before, after) = (values(old), values(new));
        if before == after {
            continue;
        }
        let edit = if after.is_empty() {
            Edit::Remove
        } else {
            Edit::Set
        };
        check_edit(message, edit, field)?;
    }
    if message.is_request() {
        let hosts = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .filter(|(name, _)| {
                    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
                })
                .count()
        };
        match (hosts(old), hosts(new)) {
            (_, 2..) => return check_edit(message, Edit::Add, "host"),
            (1.., 0) => return check_edit(message, Edit::Remove, "host"),
            _ => {}
        }
        let method = |pairs: &'_ [(String, String)]| -> Option<String> {
            pairs
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(":method"))
                .map(|(_, value)| value.clone())
        };
        if let (Some(old), Some(new)) = (method(old), method(new)) {
            check_method(&old, &new)?;
        }
    }
    Ok(())
}

/// Methods whose response Pingora frames apart: a `HEAD` response has no
/// body whatever its `Content-Length`, and a `CONNECT` one turns the
/// connection into a tunnel.
const FRAMING_METHODS: [&str; 2] = ["HEAD", "CONNECT"];

/// Whether a guest may change the downstream request's method from `old`
/// to `new`. Pingora writes the response to the client by the method the
/// request has when the response comes: a `HEAD` made `GET` would send the
/// client a body it does not read (the next response's bytes), a `GET`
/// made `HEAD` none where it waits for one. So a change to or from `HEAD`
/// or `CONNECT` is refused; others are the guest's to make.
pub(crate) fn check_method(old: &str, new: &str) -> Result<(), String> {
    let framed = |method: &str| FRAMING_METHODS.contains(&method);
    if old != new && (framed(old) || framed(new)) {
        return Err(format!(
            "changing the downstream request's method from {old} to {new} (the response is framed by it)"
        ));
    }
    Ok(())
}

/// Puts back on `target` the framing fields `host_set` had: whatever a
/// guest did to them, the upstream request is framed as the host framed
/// it.
pub(crate) fn keep_framing(host_set: &HeaderMap, target: &mut pingora::http::RequestHeader) {
    for field in FRAMING_FIELDS {
        let name = HeaderName::from_static(field);
        let ours = host_set.get_all(&name);
        let theirs = target.headers.get_all(&name);
        if ours.iter().eq(theirs.iter()) {
            continue;
        }
        target.remove_header(&name);
        for value in ours {
            // A field the host had before is valid; the append cannot fail.
            let _ = target.append_header(name.clone(), value.clone());
        }
    }
}

/// The framing fields of `headers`, to keep across a guest's hook.
pub(crate) fn framing_of(headers: &HeaderMap) -> HeaderMap {
    let mut framing = HeaderMap::new();
    for field in FRAMING_FIELDS {
        let name = HeaderName::from_static(field);
        for value in headers.get_all(&name) {
            framing.append(name.clone(), value.clone());
        }
    }
    framing
}

#[cfg(test)]
mod tests {
    use super::*;
    use Edit::*;
    use Message::*;

    #[test]
    fn framing_fields_are_the_host_s_on_the_downstream_request() {
        for field in FRAMING_FIELDS {
            for edit in [Set, Add, Remove] {
                let upper = field.to_ascii_uppercase();
                let refused = check_edit(DownstreamRequest, edit, &upper).unwrap_err();
                assert_eq!(
                    refused,
                    format!("{field} on the downstream request is the host's (it frames the body)")
                );
            }
        }
        assert!(check_edit(DownstreamRequest, Set, "x-user").is_ok());
        assert!(check_edit(DownstreamRequest, Set, "host").is_ok());
        assert!(check_edit(DownstreamRequest, Add, "Host").is_err());
        assert!(check_edit(DownstreamRequest, Add, ":authority").is_err());
        assert!(check_edit(DownstreamRequest, Add, ":Authority").is_err());
        assert!(check_edit(DownstreamRequest, Remove, ":AUTHORITY").is_err());
        assert!(check_edit(DownstreamRequest, Remove, "host").is_err());
    }

    #[test]
    fn a_response_may_lose_its_content_length_and_nothing_else() {
        assert!(check_edit(Response, Remove, "Content-Length").is_ok());
        assert!(check_edit(Response, Set, "content-length").is_err());
        assert!(check_edit(Response, Add, "transfer-encoding").is_err());
        assert!(check_edit(Response, Remove, "connection").is_err());
        assert!(
            check_edit(Response, Add, "host").is_ok(),
            "a response has no Host"
        );
    }

    #[test]
    fn a_filter_s_request_map_may_lose_its_content_length_and_nothing_else() {
        assert!(check_edit(FilterRequest, Remove, "Content-Length").is_ok());
        assert!(check_edit(DownstreamRequest, Remove, "content-length").is_err());
        assert!(check_edit(FilterRequest, Set, "content-length").is_err());
        assert!(check_edit(FilterRequest, Add, "content-length").is_err());
        assert!(check_edit(FilterRequest, Remove, "transfer-encoding").is_err());
        assert!(check_edit(FilterRequest, Remove, "host").is_err());
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let old = pairs(&[(":authority", "a"), ("content-length", "5")]);
        let without = pairs(&[(":authority", "a")]);
        assert!(check_replacement(FilterRequest, &old, &without).is_ok());
        assert!(check_replacement(DownstreamRequest, &old, &without).is_err());
        assert!(check_replacement(FilterRequest, &without, &old).is_err());
        assert!(
            check_replacement(FilterRequest, &old, &pairs(&[("content-length", "5")])).is_err()
        );
    }

    #[test]
    fn a_replacement_keeps_framing_and_one_host() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let old = pairs(&[(":authority", "a"), ("content-length", "5"), ("x", "1")]);
        let same = pairs(&[(":authority", "a"), ("x", "2"), ("Content-Length", "5")]);
        assert!(check_replacement(DownstreamRequest, &old, &same).is_ok());
        let longer = pairs(&[(":authority", "a"), ("content-length", "50")]);
        assert!(check_replacement(DownstreamRequest, &old, &longer).is_err());
        let chunked = pairs(&[(":authority", "a"), ("content-length", "5"), ("te", "x")]);
        assert!(check_replacement(DownstreamRequest, &old, &chunked).is_err());
        let two_hosts = pairs(&[
            (":authority", "a"),
            (":Authority", "b"),
            ("content-length", "5"),
        ]);
        assert!(check_replacement(DownstreamRequest, &old, &two_hosts).is_err());
        let without = pairs(&[("x", "1")]);
        assert!(check_replacement(Response, &old, &without).is_ok());
        let no_host = pairs(&[("content-length", "5"), ("x", "1")]);
        assert!(check_replacement(DownstreamRequest, &old, &no_host).is_err());
        let head = pairs(&[(":method", "HEAD"), (":authority", "a")]);
        let get = pairs(&[(":method", "GET"), (":authority", "a")]);
        assert!(check_replacement(DownstreamRequest, &head, &get).is_err());
        assert!(check_replacement(DownstreamRequest, &get, &head).is_err());
        assert!(check_replacement(DownstreamRequest, &head, &head).is_ok());
    }

    #[test]
    fn the_method_may_not_change_to_or_from_head_or_connect() {
        assert!(check_method("GET", "POST").is_ok());
        assert!(check_method("HEAD", "HEAD").is_ok());
        for (old, new) in [
            ("HEAD", "GET"),
            ("GET", "HEAD"),
            ("GET", "CONNECT"),
            ("CONNECT", "GET"),
        ] {
            let refused = check_method(old, new).unwrap_err();
            assert!(
                refused.contains(&format!("from {old} to {new}")),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_upstream_request_keeps_the_host_s_framing() {
        let mut request = pingora::http::RequestHeader::build("POST", b"/", None).unwrap();
        request
            .insert_header("Transfer-Encoding", "chunked")
            .unwrap();
        request.insert_header("X-A", "1").unwrap();
        let ours = framing_of(&request.headers);
        request.remove_header("transfer-encoding");
        request.insert_header("Content-Length", "3").unwrap();
        request.insert_header("Connection", "upgrade").unwrap();
        keep_framing(&ours, &mut request);
        assert_eq!(request.headers["transfer-encoding"], "chunked");
        assert!(request.headers.get("content-length").is_none());
        assert!(request.headers.get("connection").is_none());
        assert_eq!(request.headers["x-a"], "1");
    }
}
