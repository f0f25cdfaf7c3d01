//! The header rules both guest ABIs share: how a name, a value and a
//! final status from a guest are checked (with the same messages for
//! either ABI), and what they change in Pingora's request and response
//! headers.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::abi::HookFault;

/// A header name from a guest, or the fault that names it.
pub fn header_name(name: &str) -> Result<HeaderName, HookFault> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HookFault::InvalidOutput(format!("invalid header name {name:?}")))
}

/// A header value from a guest, or the fault that names its header as
/// `name`.
pub fn header_value(name: &str, value: &str) -> Result<HeaderValue, HookFault> {
    HeaderValue::from_str(value)
        .map_err(|_| HookFault::InvalidOutput(format!("invalid value for header {name}")))
}

/// Pingora's refusal of a checked header field.
pub fn header_refused(error: Box<pingora::Error>) -> HookFault {
    HookFault::InvalidOutput(format!("header: {error}"))
}

/// Whether a guest may give `status` as a response's: 200-599 (an
/// informational status is not a final answer).
pub fn is_final_status(status: u16) -> bool {
    (200..=599).contains(&status)
}

/// A status a guest gives a response, or the fault that names it.
pub fn final_status(status: u16) -> Result<u16, HookFault> {
    if is_final_status(status) {
        Ok(status)
    } else {
        Err(HookFault::InvalidOutput(format!(
            "status {status} is not 200-599"
        )))
    }
}

/// A header that operations can change: Pingora's request and response
/// headers.
pub trait HeaderTarget {
    /// Replaces every field called `name` with one `name: value`.
    fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Adds `name: value`.
    fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Removes every field called `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Its fields.
    fn fields(&self) -> &http::HeaderMap;

    /// Removes every field.
    fn clear_fields(&mut self) {
        let names: Vec<HeaderName> = self.fields().keys().cloned().collect();
        for name in names {
            self.remove(&name);
        }
    }
}

/// Pingora's request and response headers have the same three methods.
macro_rules! header_target {
    ($($header:ty),*) => {$(
        impl HeaderTarget for $header {
            fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(drop)
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn fields(&self) -> &http::HeaderMap {
                &self.headers
            }
        }
    )*};
}

header_target!(RequestHeader, ResponseHeader);

/// Trailers are a bare map. A map at its capacity refuses the field (the
/// `http` crate's `insert` and `append` would panic).
impl HeaderTarget for http::HeaderMap {
    fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
        let invalid = |e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "", e);
        let name = HeaderName::try_from(name).map_err(invalid)?;
        self.try_insert(name, value)
            .map(drop)
            .map_err(|e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "", e))
    }
    fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
        let invalid = |e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "", e);
        let name = HeaderName::try_from(name).map_err(invalid)?;
        self.try_append(name, value)
            .map(drop)
            .map_err(|e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "", e))
    }
    fn remove(&mut self, name: &HeaderName) {
        http::HeaderMap::remove(self, name);
    }
    fn fields(&self) -> &http::HeaderMap {
        self
    }
}

#[cfg(test)]
mod tests {
    use guest_sdk::wire;

    use super::*;
    use crate::abi::proxy_wasm::HeaderPairs;
    use crate::abi::{v1, LocalReply};

    fn message(fault: HookFault) -> String {
        match fault {
            HookFault::InvalidOutput(message) => message,
            other => panic!("not invalid output: {other}"),
        }
    }

    /// Every way a guest of either ABI can set a header (v1's header
    /// operations and answers, proxy-wasm's map edits and local replies)
    /// refuses a bad one with the same message.
    #[test]
    fn both_abis_refuse_a_bad_header_with_the_same_message() {
        let cases = [
            ("bad name", "v", "invalid header name \"bad name\""),
            ("", "v", "invalid header name \"\""),
            ("x-bad", "a\r\nb", "invalid value for header x-bad"),
            ("x-nul", "a\0b", "invalid value for header x-nul"),
        ];
        for (name, value, expected) in cases {
            let pair = vec![(name.to_string(), value.to_string())];
            let mut response = ResponseHeader::build(200, None).unwrap();

            let op = wire::HeaderOp::Insert(name.into(), value.into());
            let changes = wire::ResponseChanges {
                status: None,
                headers: vec![op],
            };
            let v1_edit = v1::apply_response_changes(&mut response, changes).unwrap_err();
            let answer = wire::LocalResponse {
                status: 200,
                headers: pair.clone(),
                body: String::new(),
            };
            let v1_answer = v1::local_response(answer).unwrap_err();

            let mut map = HeaderPairs::of_response(&response);
            map.add(name, value);
            let pw_edit = map.apply_to_response(&mut response).unwrap_err();
            let reply = LocalReply {
                status: 200,
                headers: pair,
                body: Default::default(),
                grpc_status: None,
            };
            let pw_reply = reply.checked("local response").unwrap_err();

            for (abi, fault) in [
                ("v1 header op", v1_edit),
                ("v1 answer", v1_answer),
                ("proxy-wasm map", pw_edit),
                ("proxy-wasm local response", pw_reply),
            ] {
                assert_eq!(message(fault), expected, "{abi}");
            }
            assert_eq!(response.headers.len(), 0, "nothing was applied");
        }
    }

    #[test]
    fn a_final_status_is_200_to_599() {
        for status in [200, 404, 599] {
            assert_eq!(final_status(status).ok(), Some(status));
        }
        for status in [0, 101, 199, 600, u16::MAX] {
            let expected = format!("status {status} is not 200-599");
            assert_eq!(message(final_status(status).unwrap_err()), expected);
        }
    }
}
