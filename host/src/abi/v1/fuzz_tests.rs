//! Property tests: whatever bytes a guest returns, decoding them, building
//! the peer and applying the upstream request never panic, and a refused
//! upstream request leaves Pingora's request untouched.

use guest_sdk::wire;
use pingora::http::RequestHeader;
use proptest::prelude::*;
use serde_json::json;

use super::peer::{http_peer, peer_address};
use super::*;

/// Strings biased towards what breaks parsers: separators, control bytes,
/// non-ASCII, brackets and digits.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9.:\\[\\]\\-_ /?#%\r\n\t\u{0}\u{7f}\u{fffd}é]{0,40}",
        Just(String::new()),
        Just("1.1.1.1:443".to_string()),
        Just("[::1]:8080".to_string()),
        Just("localhost:0".to_string()),
    ]
}

fn peer_json() -> impl Strategy<Value = serde_json::Value> {
    (
        nasty_string(),
        any::<bool>(),
        nasty_string(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(address, tls, sni, connect, read, verify)| {
            json!({"address": address, "tls": tls, "sni": sni,
                   "options": {"connection_timeout_ms": connect, "read_timeout_ms": read,
                               "verify_cert": verify, "verify_hostname": !verify}})
        })
}

fn upstream_request_json() -> impl Strategy<Value = wire::UpstreamRequest> {
    (
        nasty_string(),
        nasty_string(),
        proptest::collection::vec((nasty_string(), nasty_string()), 0..6),
    )
        .prop_map(|(method, uri, headers)| wire::UpstreamRequest {
            method,
            uri,
            headers,
        })
}

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/start?x=1", None).unwrap();
    req.append_header("Host", "example.com").unwrap();
    req.append_header("X-Two", "2").unwrap();
    req
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_peer_output(&bytes, &GuestCtx::default());
        let _ = decode_filter_output(&bytes, &GuestCtx::default());
    }

    #[test]
    fn arbitrary_peers_never_panic(peer in peer_json(), ctx in nasty_string(), status in any::<u16>()) {
        let outputs = [
            json!({"peer": peer, "ctx": ctx}),
            json!({"peer": peer, "error": {"status": status, "message": ctx}}),
            json!({"ctx": {"nested": [ctx]}}),
        ];
        for output in outputs {
            let bytes = output.to_string().into_bytes();
            if let Ok((peer, _ctx)) = decode_peer_output(&bytes, &GuestCtx::default()) {
                if let Ok(PeerAddress::Ip(addr)) = peer_address(&peer.address) {
                    let _ = http_peer(addr, &peer);
                }
                let _ = PeerChoice::of(peer);
            }
        }
    }

    #[test]
    fn arbitrary_upstream_requests_never_panic_and_failures_change_nothing(
        new in upstream_request_json(),
    ) {
        let bytes = json!({"upstream_request": new}).to_string().into_bytes();
        let Ok((UpstreamEdit::Whole(new), _)) = decode_filter_output(&bytes, &GuestCtx::default()) else {
            return Ok(());
        };
        let mut target = request();
        let sent = upstream_request(&target).unwrap();
        if apply_upstream_request(&mut target, &sent, &new).is_err() {
            prop_assert_eq!(target.raw_path(), b"/start?x=1");
            prop_assert_eq!(target.method.as_str(), "GET");
            prop_assert_eq!(target.headers.len(), 2);
        }
    }
}

fn header_op() -> impl Strategy<Value = wire::HeaderOp> {
    prop_oneof![
        (nasty_string(), nasty_string()).prop_map(|(n, v)| wire::HeaderOp::Insert(n, v)),
        (nasty_string(), nasty_string()).prop_map(|(n, v)| wire::HeaderOp::Append(n, v)),
        nasty_string().prop_map(wire::HeaderOp::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_changes_never_panic_and_failures_change_nothing(
        method in proptest::option::of(nasty_string()),
        uri in proptest::option::of(nasty_string()),
        headers in proptest::collection::vec(header_op(), 0..6),
    ) {
        let changes = wire::RequestChanges { method, uri, headers };
        let bytes = json!({"upstream_changes": changes}).to_string().into_bytes();
        let Ok((UpstreamEdit::Changes(changes), _)) = decode_filter_output(&bytes, &GuestCtx::default()) else {
            return Ok(());
        };
        let mut target = request();
        if apply_request_changes(&mut target, changes).is_err() {
            prop_assert_eq!(target.raw_path(), b"/start?x=1");
            prop_assert_eq!(target.method.as_str(), "GET");
            prop_assert_eq!(target.headers.len(), 2);
        }
    }
}
