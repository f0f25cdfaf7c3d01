//! A response a guest sends instead of proxying the request (v1's
//! `LOCAL` answer, proxy-wasm's `proxy_send_local_response`), checked by
//! one rule for both ABIs.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::framing::is_framing;
use super::grpc::GivenGrpcStatus;
use super::headers::{final_status, header_name, header_value};
use crate::abi::HookFault;

/// The largest body a guest may answer with.
pub const MAX_LOCAL_REPLY_BODY: usize = 1 << 20;

/// A response a guest asked the host to send, as it gave it.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Its status.
    pub status: u16,
    /// Its header fields, names as the guest spelled them.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
    /// The gRPC status it gives a gRPC client (proxy-wasm's
    /// `send_grpc_response`); None: the HTTP status's mapping.
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// The response to send, checked: the size of its body, its status
    /// (200-599) and every header. `Content-Length` is the host's to set,
    /// so one from the guest is dropped. `noun` names the reply in the
    /// message about its body ("answer", "local response").
    pub fn checked(self, noun: &str) -> Result<(ResponseHeader, Bytes), HookFault> {
        if self.body.len() > MAX_LOCAL_REPLY_BODY {
            return Err(HookFault::InvalidOutput(format!(
                "{noun} body of {} bytes exceeds the {MAX_LOCAL_REPLY_BODY} byte cap",
                self.body.len()
            )));
        }
        let status = final_status(self.status)?;
        let invalid = |e: Box<pingora::Error>| HookFault::InvalidOutput(format!("answer: {e}"));
        let mut response =
            ResponseHeader::build(status, Some(self.headers.len() + 1)).map_err(invalid)?;
        for (name, value) in self.headers {
            let checked_name = header_name(&name)?;
            let value = header_value(&name, &value)?;
            if is_framing(checked_name.as_str()) {
                // The host frames the reply (the body's length below).
                continue;
            }
            response.append_header(name, value).map_err(invalid)?;
        }
        response
            .insert_header(http::header::CONTENT_LENGTH, self.body.len())
            .map_err(invalid)?;
        if let Some(status) = self.grpc_status {
            response.extensions_mut().insert(GivenGrpcStatus(status));
        }
        Ok((response, self.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> LocalReply {
        LocalReply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Bytes::copy_from_slice(body),
            grpc_status: None,
        }
    }

    fn message(fault: HookFault) -> String {
        match fault {
            HookFault::InvalidOutput(message) => message,
            other => panic!("not invalid output: {other}"),
        }
    }

    #[test]
    fn a_reply_keeps_its_spelling_and_gets_the_hosts_content_length() {
        let (response, body) = reply(
            401,
            &[
                ("WWW-Authenticate", "Basic"),
                ("content-length", "99"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "upgrade"),
                ("X-Two", "1"),
                ("X-Two", "2"),
            ],
            b"no\n",
        )
        .checked("answer")
        .unwrap();
        assert_eq!(response.status.as_u16(), 401);
        assert_eq!(response.headers["www-authenticate"], "Basic");
        assert_eq!(response.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(response.headers["content-length"], "3");
        assert_eq!(response.headers.get_all("content-length").iter().count(), 1);
        assert!(response.headers.get("transfer-encoding").is_none());
        assert!(response.headers.get("connection").is_none());
        assert_eq!(&body[..], b"no\n");
        let mut wire = Vec::new();
        response.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("WWW-Authenticate: Basic"), "{wire}");
    }

    #[test]
    fn bad_replies_are_named() {
        let big = vec![b'x'; MAX_LOCAL_REPLY_BODY + 1];
        let cases: &[(LocalReply, &str)] = &[
            (reply(700, &[], b""), "status 700 is not 200-599"),
            (reply(101, &[], b""), "status 101 is not 200-599"),
            (reply(0, &[], b""), "status 0 is not 200-599"),
            (
                reply(200, &[("bad name", "v")], b""),
                "invalid header name \"bad name\"",
            ),
            (
                reply(200, &[("X-Bad", "a\r\nb")], b""),
                "invalid value for header X-Bad",
            ),
            (
                reply(200, &[], &big),
                "local response body of 1048577 bytes exceeds the 1048576 byte cap",
            ),
            // The body is checked first.
            (
                reply(700, &[], &big),
                "local response body of 1048577 bytes exceeds the 1048576 byte cap",
            ),
        ];
        for (bad, expected) in cases {
            let fault = bad.clone().checked("local response").unwrap_err();
            assert_eq!(message(fault), *expected);
        }
        let fault = reply(200, &[], &big).checked("answer").unwrap_err();
        assert!(message(fault).starts_with("answer body of 1048577 bytes"));
    }
}
