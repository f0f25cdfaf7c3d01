//! gRPC as the host speaks it: which requests are gRPC, the status a
//! response the proxy makes itself carries for a gRPC client (a
//! trailers-only answer, HTTP 200, as Envoy sends), the HTTP to gRPC status
//! table Envoy uses, and the message framing of gRPC calls filters make.

use pingora::http::{RequestHeader, ResponseHeader};

/// `OK`.
pub const OK: u32 = 0;
/// `UNKNOWN`.
pub const UNKNOWN: u32 = 2;
/// `DEADLINE_EXCEEDED`.
pub const DEADLINE_EXCEEDED: u32 = 4;
/// `PERMISSION_DENIED`.
pub const PERMISSION_DENIED: u32 = 7;
/// `RESOURCE_EXHAUSTED`.
pub const RESOURCE_EXHAUSTED: u32 = 8;
/// `UNIMPLEMENTED`.
pub const UNIMPLEMENTED: u32 = 12;
/// `INTERNAL`.
pub const INTERNAL: u32 = 13;
/// `UNAVAILABLE`.
pub const UNAVAILABLE: u32 = 14;
/// `UNAUTHENTICATED`.
pub const UNAUTHENTICATED: u32 = 16;

/// The largest gRPC status code.
pub const MAX_STATUS: u32 = 16;

/// The gRPC status of an HTTP status, as Envoy maps it
/// (`Grpc::Utility::httpToGrpcStatus`, after gRPC's own
/// http-grpc-status-mapping): docs/ABI.md has the table.
pub fn status_of_http(status: u16) -> u32 {
    match status {
        200 => OK,
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The gRPC status a guest's answer gives a gRPC client, kept with the
/// answer's header (proxy-wasm's `send_grpc_response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GivenGrpcStatus(pub u32);

/// Whether a request is gRPC: a POST whose `content-type` is
/// `application/grpc`, alone or with a suffix (`+proto`, `+json`), as
/// Envoy tells them (gRPC is always POST: a GET with that type is not).
pub fn is_grpc_request(request: &RequestHeader) -> bool {
    request.method == http::Method::POST
        && request
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| is_grpc_content_type(value.as_bytes()))
}

/// The longest `grpc-message` sent, in bytes before encoding: gRPC
/// clients cap metadata at 8-16 KiB, and a longer message would turn the
/// status into a metadata error.
pub const MAX_MESSAGE: usize = 1024;

fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// Turns `response`, which the proxy made itself (an error page, a
/// budget's refusal, a guest's answer), into the answer a gRPC client
/// reads: HTTP 200, `content-type: application/grpc`, and `grpc-status`
/// and `grpc-message` in the headers, which end the stream (a
/// trailers-only response). `grpc-status` is the one the response already
/// carries (a filter's `send_grpc_response`, or a `grpc-status` field),
/// else the HTTP status's mapping; `grpc-message` is the one it carries, else `message` (the
/// body, or why). The response's other fields stay, as custom metadata;
/// framing fields go, as there is no body.
pub fn trailers_only(response: &mut ResponseHeader, message: &str) {
    let field = response
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|status| *status <= MAX_STATUS);
    let given = match response.extensions.get::<GivenGrpcStatus>() {
        Some(GivenGrpcStatus(status)) => Some(*status),
        None => field,
    };
    let status = given.unwrap_or_else(|| status_of_http(response.status.as_u16()));
    let _ = response.set_status(200);
    for framing in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_ENCODING,
    ] {
        response.remove_header(&framing);
    }
    // Each value below is valid header text, so these cannot fail.
    let _ = response.insert_header(http::header::CONTENT_TYPE, "application/grpc");
    let _ = response.insert_header("grpc-status", status.to_string());
    if !response.headers.contains_key("grpc-message") && !message.is_empty() {
        let message = truncated(message.trim_end(), MAX_MESSAGE);
        let _ = response.insert_header("grpc-message", percent_encode(message));
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`,
/// percent-encoded (gRPC's PROTOCOL-HTTP2).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `grpc-message` decoding; a malformed escape stays as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `message` as one length-prefixed gRPC message, uncompressed.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The messages of a gRPC body; None if it is cut short or a message is
/// compressed (this host asks for none).
pub fn unframe(mut body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let (head, rest) = body.split_at_checked(5)?;
        if head[0] != 0 {
            return None;
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let (message, rest) = rest.split_at_checked(length)?;
        messages.push(message.to_vec());
        body = rest;
    }
    Some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_as_envoy_maps_them() {
        for (http, grpc) in [
            (200, OK),
            (400, INTERNAL),
            (401, UNAUTHENTICATED),
            (403, PERMISSION_DENIED),
            (404, UNIMPLEMENTED),
            (429, UNAVAILABLE),
            (502, UNAVAILABLE),
            (503, UNAVAILABLE),
            (504, UNAVAILABLE),
            (500, UNKNOWN),
            (418, UNKNOWN),
        ] {
            assert_eq!(status_of_http(http), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_requests_are_told_by_content_type() {
        let request = |method: &str, value: Option<&str>| {
            let mut request = RequestHeader::build(method, b"/s/M", None).unwrap();
            if let Some(value) = value {
                request.insert_header("content-type", value).unwrap();
            }
            is_grpc_request(&request)
        };
        let with = |value: &str| request("POST", Some(value));
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!request("POST", None));
        assert!(!request("GET", Some("application/grpc")), "gRPC is POST");
    }

    #[test]
    fn an_answer_becomes_trailers_only_and_keeps_a_given_status() {
        let mut response = ResponseHeader::build(503, None).unwrap();
        response.insert_header("content-length", "10").unwrap();
        response.insert_header("x-custom", "kept").unwrap();
        trailers_only(&mut response, "no healthy backend: 100%\n");
        assert_eq!(response.status.as_u16(), 200);
        assert_eq!(response.headers["grpc-status"], "14");
        assert_eq!(
            response.headers["grpc-message"],
            "no healthy backend: 100%25"
        );
        assert_eq!(response.headers["content-type"], "application/grpc");
        assert_eq!(response.headers["x-custom"], "kept");
        assert!(response.headers.get("content-length").is_none());

        let mut long = ResponseHeader::build(403, None).unwrap();
        trailers_only(&mut long, &"é".repeat(MAX_MESSAGE));
        let sent = percent_decode(long.headers["grpc-message"].to_str().unwrap());
        assert_eq!(
            sent,
            "é".repeat(MAX_MESSAGE / 2),
            "cut on a character boundary"
        );

        let mut given = ResponseHeader::build(200, None).unwrap();
        given.extensions_mut().insert(GivenGrpcStatus(10));
        given.insert_header("grpc-message", "Aborted").unwrap();
        trailers_only(&mut given, "body text");
        assert_eq!(given.headers["grpc-status"], "10");
        assert_eq!(given.headers["grpc-message"], "Aborted");
    }

    #[test]
    fn messages_frame_and_unframe() {
        let mut body = frame(b"one");
        body.extend(frame(b""));
        assert_eq!(unframe(&body).unwrap(), vec![b"one".to_vec(), vec![]]);
        assert!(unframe(&body[..4]).is_none());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_none(), "compressed");
        assert_eq!(percent_decode(&percent_encode("a%b\né")), "a%b\né");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
