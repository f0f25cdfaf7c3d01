//! gRPC calls a filter dispatches (`proxy_grpc_call`): the HTTP/2 request
//! the host makes for one, and what the filter is told of its answer,
//! `proxy_on_grpc_receive` with the response message, or
//! `proxy_on_grpc_close` with a status that is not OK (then
//! `proxy_get_status` gives the status and its message), as Envoy
//! delivers a unary call.

use super::callout::{CallFailed, CallResponse};
use super::types::Status;
use crate::abi::grpc;
use crate::abi::header_name;
use crate::upstream::StaticUpstream;

/// Header pairs, in order.
type HeaderFields = Vec<(String, String)>;

/// What the filter is told of a gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GrpcAnswer {
    /// Status OK and the response message.
    Message(Vec<u8>),
    /// Any other status, with its message.
    Closed {
        /// The gRPC status code.
        status: u32,
        /// `grpc-message`, decoded.
        message: String,
    },
}

/// The header pairs and body of the unary call of `method` of `service`
/// to `target` (reached as `cluster`), with the caller's metadata and
/// `message`, within `timeout_ms`. `PARSE_FAILURE` for a service or method
/// name that cannot be a path segment, or metadata that cannot be a header
/// field, as Envoy answers a call it cannot make sense of.
pub(super) fn request(
    target: &StaticUpstream,
    cluster: &str,
    (service, method): (&str, &str),
    metadata: Vec<(String, String)>,
    message: &[u8],
    timeout_ms: u32,
) -> Result<(HeaderFields, Vec<u8>), Status> {
    let segment = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
    };
    if !segment(service) || !segment(method) {
        return Err(Status::ParseFailure);
    }
    // The cluster's name as the authority, as Envoy's gRPC client sends
    // it, unless TLS names the server.
    let authority = if target.sni.is_empty() {
        cluster
    } else {
        &target.sni
    };
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), format!("/{service}/{method}")),
        (":authority".to_string(), authority.to_string()),
        ("content-type".to_string(), "application/grpc".to_string()),
        ("te".to_string(), "trailers".to_string()),
        ("grpc-timeout".to_string(), format!("{timeout_ms}m")),
    ];
    for (name, value) in metadata {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(':')
            || header_name(&lower).is_err()
            || value.contains(['\r', '\n', '\0'])
        {
            return Err(Status::ParseFailure);
        }
        // The host's own fields stay the host's.
        if matches!(lower.as_str(), "content-type" | "te" | "grpc-timeout") {
            continue;
        }
        headers.push((lower, value));
    }
    Ok((headers, grpc::frame(message)))
}

/// What a call's exchange tells the filter: a failure to reach the
/// cluster is `UNAVAILABLE`, a timeout `DEADLINE_EXCEEDED`; an HTTP status
/// other than 200 maps as Envoy maps it; then `grpc-status` from the
/// trailers (or the headers of a trailers-only answer), and OK needs
/// exactly one message.
pub(super) fn answer(result: &Result<CallResponse, CallFailed>) -> GrpcAnswer {
    let closed = |status: u32, message: &str| GrpcAnswer::Closed {
        status,
        message: message.to_string(),
    };
    let response = match result {
        Ok(response) => response,
        Err(CallFailed::TimedOut) => return closed(grpc::DEADLINE_EXCEEDED, "deadline exceeded"),
        Err(CallFailed::Failed) => return closed(grpc::UNAVAILABLE, "upstream unavailable"),
    };
    let field = |name: &str| {
        response
            .trailers
            .iter()
            .chain(&response.headers)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let http_status = field(":status").and_then(|s| s.parse::<u16>().ok());
    if http_status != Some(200) {
        let status = http_status.map_or(grpc::UNKNOWN, grpc::status_of_http);
        return closed(status, "the cluster's answer is not HTTP 200");
    }
    let status = field("grpc-status")
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|code| *code <= grpc::MAX_STATUS)
        .unwrap_or(grpc::UNKNOWN);
    let message = field("grpc-message").map(grpc::percent_decode);
    if status != grpc::OK {
        return closed(status, message.as_deref().unwrap_or_default());
    }
    match grpc::unframe(&response.body).as_deref() {
        Some([message]) => GrpcAnswer::Message(message.clone()),
        _ => closed(
            grpc::INTERNAL,
            "a unary answer needs exactly one uncompressed message",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        headers: &[(&str, &str)],
        body: Vec<u8>,
        trailers: &[(&str, &str)],
    ) -> CallResponse {
        let pairs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        CallResponse {
            headers: pairs(headers),
            body,
            trailers: pairs(trailers),
        }
    }

    #[test]
    fn a_call_is_a_post_with_the_hosts_grpc_fields() {
        let target = StaticUpstream::at("127.0.0.1:9".parse().unwrap());
        let metadata = vec![
            ("X-Id".to_string(), "7".to_string()),
            ("te".to_string(), "gzip".to_string()),
        ];
        let (headers, body) =
            request(&target, "authz", ("pkg.Svc", "Check"), metadata, b"hi", 250).unwrap();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get(":path"), "/pkg.Svc/Check");
        assert_eq!(get(":authority"), "authz");
        assert_eq!(get("te"), "trailers");
        assert_eq!(get("grpc-timeout"), "250m");
        assert_eq!(get("x-id"), "7");
        assert_eq!(body, grpc::frame(b"hi"));
        for (service, method) in [("", "M"), ("a/b", "M"), ("S", "m thod"), ("S", "m?")] {
            let refused = request(&target, "c", (service, method), vec![], b"", 1);
            assert_eq!(refused, Err(Status::ParseFailure), "{service} {method}");
        }
        let bad = vec![(":path".to_string(), "/x".to_string())];
        assert_eq!(
            request(&target, "c", ("S", "M"), bad, b"", 1),
            Err(Status::ParseFailure)
        );
    }

    #[test]
    fn answers_are_told_as_envoy_tells_them() {
        let ok = response(
            &[(":status", "200")],
            grpc::frame(b"yes"),
            &[("grpc-status", "0")],
        );
        assert_eq!(answer(&Ok(ok)), GrpcAnswer::Message(b"yes".to_vec()));
        let trailers_only = response(
            &[
                (":status", "200"),
                ("grpc-status", "10"),
                ("grpc-message", "a%20b"),
            ],
            vec![],
            &[],
        );
        let closed = |status: u32, message: &str| GrpcAnswer::Closed {
            status,
            message: message.into(),
        };
        assert_eq!(answer(&Ok(trailers_only)), closed(10, "a b"));
        let refused = response(&[(":status", "503")], vec![], &[]);
        assert!(matches!(
            answer(&Ok(refused)),
            GrpcAnswer::Closed { status: 14, .. }
        ));
        let two = [grpc::frame(b"a"), grpc::frame(b"b")].concat();
        let two = response(&[(":status", "200")], two, &[("grpc-status", "0")]);
        assert!(matches!(
            answer(&Ok(two)),
            GrpcAnswer::Closed { status: 13, .. }
        ));
        assert!(matches!(
            answer(&Err(CallFailed::TimedOut)),
            GrpcAnswer::Closed { status: 4, .. }
        ));
        assert!(matches!(
            answer(&Err(CallFailed::Failed)),
            GrpcAnswer::Closed { status: 14, .. }
        ));
    }
}
