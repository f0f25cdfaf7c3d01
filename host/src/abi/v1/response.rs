//! Responses between Pingora and the wire: the response header a guest
//! reads (`RESP`), the changes it makes to it, and the answer a guest
//! gives in `request_filter` (`LOCAL`).

use bytes::Bytes;
use guest_sdk::wire;
use pingora::http::ResponseHeader;

use super::headers::{check_framing, CheckedOps};
use crate::abi::framing::Message;
use crate::abi::HookFault;
use crate::abi::{final_status, LocalReply};

// `local_response` counts on it: an answer's body fits in the output.
const _: () = assert!(super::instance::MAX_OUTPUT_BYTES <= crate::abi::MAX_LOCAL_REPLY_BODY);

/// `response` as a guest is shown it (`RESP`); values that are not UTF-8
/// come with U+FFFD in place of the bad bytes.
pub fn response_json(response: &ResponseHeader) -> String {
    let wire = wire::Response {
        status: response.status.as_u16(),
        headers: response
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
    };
    // A struct of a number and strings always serialises.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// Applies `response_filter`'s changes. Everything is checked before
/// anything is changed.
pub fn apply_response_changes(
    target: &mut ResponseHeader,
    changes: wire::ResponseChanges,
) -> Result<(), HookFault> {
    let status = changes.status.map(final_status).transpose()?;
    check_framing(&changes.headers, Message::Response)?;
    let headers = CheckedOps::new(changes.headers)?;
    if let Some(status) = status {
        target
            .set_status(status)
            .map_err(|e| HookFault::InvalidOutput(format!("status {status}: {e}")))?;
    }
    headers.apply(target)
}

/// Applies a guest's `response_trailer_filter` changes to `trailers`:
/// header operations as in `response_filter` (framing fields refused as
/// there); trailers have no status to change.
pub(super) fn apply_trailer_changes(
    trailers: &mut http::HeaderMap,
    changes: wire::ResponseChanges,
) -> Result<(), HookFault> {
    if let Some(status) = changes.status {
        return Err(HookFault::InvalidOutput(format!(
            "status {status} in response_trailer_filter: trailers have no status"
        )));
    }
    check_framing(&changes.headers, Message::Response)?;
    CheckedOps::new(changes.headers)?.apply(trailers)
}

/// The response a guest answered with in `request_filter`, checked as
/// every guest's local reply is ([`LocalReply::checked`]). Its body
/// cannot pass the cap: the whole output is capped no higher.
pub fn local_response(answer: wire::LocalResponse) -> Result<(ResponseHeader, Bytes), HookFault> {
    LocalReply {
        status: answer.status,
        headers: answer.headers,
        body: Bytes::from(answer.body),
        grpc_status: None,
    }
    .checked("answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> wire::LocalResponse {
        wire::LocalResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    #[test]
    fn an_answer_gets_its_headers_and_the_hosts_content_length() {
        let (response, body) = local_response(answer(
            401,
            &[("WWW-Authenticate", "Basic"), ("Content-Length", "99")],
            "no\n",
        ))
        .unwrap();
        assert_eq!(response.status.as_u16(), 401);
        assert_eq!(response.headers["www-authenticate"], "Basic");
        assert_eq!(response.headers["content-length"], "3");
        assert_eq!(response.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(&body[..], b"no\n");
    }

    #[test]
    fn bad_answers_are_faults() {
        for bad in [
            answer(700, &[], ""),
            answer(101, &[], ""),
            answer(200, &[("bad name", "v")], ""),
            answer(200, &[("x", "a\r\nb")], ""),
            answer(200, &[], &"x".repeat(crate::abi::MAX_LOCAL_REPLY_BODY + 1)),
        ] {
            let fault = local_response(bad).unwrap_err();
            assert!(matches!(fault, HookFault::InvalidOutput(_)), "{fault}");
        }
    }

    #[test]
    fn response_changes_are_all_or_nothing() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response.insert_header("Server", "origin").unwrap();
        let changes = wire::ResponseChanges {
            status: Some(203),
            headers: vec![
                wire::HeaderOp::Remove("server".into()),
                wire::HeaderOp::Insert("x".into(), "bad\u{0}".into()),
            ],
        };
        assert!(apply_response_changes(&mut response, changes).is_err());
        assert_eq!(response.status.as_u16(), 200);
        assert_eq!(response.headers["server"], "origin");

        let changes = wire::ResponseChanges {
            status: Some(203),
            headers: vec![
                wire::HeaderOp::Remove("server".into()),
                wire::HeaderOp::Insert("Strict-Transport-Security".into(), "max-age=1".into()),
            ],
        };
        apply_response_changes(&mut response, changes).unwrap();
        assert_eq!(response.status.as_u16(), 203);
        assert!(response.headers.get("server").is_none());
        assert_eq!(response.headers["strict-transport-security"], "max-age=1");
    }
}
