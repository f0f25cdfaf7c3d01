//! The common hook outputs written straight as JSON. Serialising the wire
//! types with serde_json gives the same values (a test checks), but serde's
//! generic serializer escapes every key and is slower in wasm; these
//! writers copy fixed keys and escape only what needs it.

use serde::Serialize;

use crate::wire;

/// `{"peer": PEER, "ctx": ctx}`; default peer options are left out, and
/// `ctx` when None (unchanged).
pub(crate) fn peer_output<C: Serialize>(
    out: &mut Vec<u8>,
    peer: &wire::Peer,
    ctx: Option<&C>,
) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"peer":{"#);
    if let Some(pool) = &peer.pool {
        out.extend_from_slice(br#""pool":"#);
        string(out, pool)?;
        if let Some(key) = &peer.key {
            out.extend_from_slice(br#","key":"#);
            string(out, key)?;
        }
        if !peer.address.is_empty() {
            out.extend_from_slice(br#","address":"#);
            string(out, &peer.address)?;
        }
    } else {
        out.extend_from_slice(br#""address":"#);
        string(out, &peer.address)?;
    }
    if peer.tls {
        out.extend_from_slice(br#","tls":true"#);
    }
    if !peer.sni.is_empty() {
        out.extend_from_slice(br#","sni":"#);
        string(out, &peer.sni)?;
    }
    if peer.options != wire::PeerOptions::default() {
        out.extend_from_slice(br#","options":"#);
        serde_json::to_writer(&mut *out, &peer.options)?;
    }
    out.push(b'}');
    if let Some(ctx) = ctx {
        out.extend_from_slice(br#","ctx":"#);
        serde_json::to_writer(&mut *out, ctx)?;
    }
    out.push(b'}');
    Ok(())
}

/// `{key: CHANGES, "ctx": ctx}`, the changes to a request under `key`
/// (`upstream_changes` or `request_changes`), without them when there are
/// none and without `ctx` when None (unchanged).
pub(crate) fn request_changes_output<C: Serialize>(
    out: &mut Vec<u8>,
    key: &str,
    changes: &wire::RequestChanges,
    ctx: Option<&C>,
) -> serde_json::Result<()> {
    changes_output(out, key, !changes.is_empty(), ctx, |out, fields| {
        if let Some(method) = &changes.method {
            fields.key(out, "method");
            string(out, method)?;
        }
        if let Some(uri) = &changes.uri {
            fields.key(out, "uri");
            string(out, uri)?;
        }
        header_ops(out, fields, &changes.headers)
    })
}

/// `{"response_changes": CHANGES, "ctx": ctx}`, without
/// `response_changes` when there are none and without `ctx` when None
/// (unchanged).
pub(crate) fn response_changes_output<C: Serialize>(
    out: &mut Vec<u8>,
    changes: &wire::ResponseChanges,
    ctx: Option<&C>,
) -> serde_json::Result<()> {
    changes_output(
        out,
        "response_changes",
        !changes.is_empty(),
        ctx,
        |out, fields| {
            if let Some(status) = changes.status {
                fields.key(out, "status");
                out.extend_from_slice(status.to_string().as_bytes());
            }
            header_ops(out, fields, &changes.headers)
        },
    )
}

/// `{key: {...}, "ctx": ctx}`: `fields` writes the object's fields if
/// `present`; `ctx` follows unless None.
fn changes_output<C: Serialize>(
    out: &mut Vec<u8>,
    key: &str,
    present: bool,
    ctx: Option<&C>,
    fields: impl FnOnce(&mut Vec<u8>, &mut Fields) -> serde_json::Result<()>,
) -> serde_json::Result<()> {
    let mut outer = Fields::default();
    out.push(b'{');
    if present {
        outer.key(out, key);
        out.push(b'{');
        fields(out, &mut Fields::default())?;
        out.push(b'}');
    }
    if let Some(ctx) = ctx {
        outer.key(out, "ctx");
        serde_json::to_writer(&mut *out, ctx)?;
    }
    out.push(b'}');
    Ok(())
}

/// The keys of one JSON object being written: commas between fields.
#[derive(Default)]
struct Fields {
    any: bool,
}

impl Fields {
    /// Writes `"key":`, after a comma unless it is the first. Keys are
    /// fixed names that need no escaping.
    fn key(&mut self, out: &mut Vec<u8>, key: &str) {
        if std::mem::replace(&mut self.any, true) {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    }
}

/// `"headers": [...]`, unless there are no operations.
fn header_ops(
    out: &mut Vec<u8>,
    fields: &mut Fields,
    ops: &[wire::HeaderOp],
) -> serde_json::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    fields.key(out, "headers");
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        header_op(out, op)?;
    }
    out.push(b']');
    Ok(())
}

/// `{"error": {"status": N, "message": "..."}}`, a hook's refusal.
pub(crate) fn error_output(out: &mut Vec<u8>, error: &wire::HookError) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"error":{"status":"#);
    out.extend_from_slice(error.status.to_string().as_bytes());
    out.extend_from_slice(br#","message":"#);
    string(out, &error.message)?;
    out.extend_from_slice(b"}}");
    Ok(())
}

fn header_op(out: &mut Vec<u8>, op: &wire::HeaderOp) -> serde_json::Result<()> {
    let (tag, name, value): (&[u8], _, _) = match op {
        wire::HeaderOp::Insert(name, value) => (br#"{"insert":["#, name, Some(value)),
        wire::HeaderOp::Append(name, value) => (br#"{"append":["#, name, Some(value)),
        wire::HeaderOp::Remove(name) => (br#"{"remove":"#, name, None),
    };
    out.extend_from_slice(tag);
    string(out, name)?;
    match value {
        Some(value) => {
            out.push(b',');
            string(out, value)?;
            out.extend_from_slice(b"]}");
        }
        None => out.push(b'}'),
    }
    Ok(())
}

/// A JSON string: copied as is when nothing in it needs escaping.
fn string(out: &mut Vec<u8>, value: &str) -> serde_json::Result<()> {
    if !needs_escape(value.as_bytes()) {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, value)
    }
}

/// Whether `bytes` holds a control character, `"` or a backslash. Scans
/// eight bytes at a time: every string of every output goes through here.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero iff some byte of `x` is zero (the classic bit trick: a
    // borrow can only mark bytes above a real zero byte).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // Nonzero iff some byte is below 0x20, by the same trick; `!word`
        // leaves out bytes above 0x7f (UTF-8 beyond ASCII).
        let control = word.wrapping_sub(0x20 * ONES) & !word & HIGHS;
        if control | has_zero(word ^ (b'"' as u64 * ONES)) | has_zero(word ^ (b'\\' as u64 * ONES))
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn peer(tls: bool, sni: &str, options: wire::PeerOptions) -> wire::Peer {
        wire::Peer {
            address: "10.0.0.1:8443".into(),
            pool: None,
            key: None,
            tls,
            sni: sni.into(),
            options,
        }
    }

    fn pool(name: &str, key: Option<&str>) -> wire::Peer {
        wire::Peer {
            address: String::new(),
            pool: Some(name.into()),
            key: key.map(Into::into),
            ..Default::default()
        }
    }

    /// What the output decodes to as the host decodes it.
    fn decoded<T: serde::de::DeserializeOwned>(json: &[u8]) -> T {
        serde_json::from_slice(json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)))
    }

    #[test]
    fn needs_escape_finds_every_byte_that_does() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{special:#x} at {at} of {len}");
                }
            }
        }
        for clean in [
            "",
            "one.one.one.one",
            "1.1.1.1:443",
            "caf\u{e9} \u{1F600} ~!#$%&'()*+,-./",
            "\u{7f}\u{80}\u{ff}",
        ] {
            assert!(!needs_escape(clean.as_bytes()), "{clean:?}");
        }
        // Every byte value, on every lane of a word.
        for b in 0..=255u8 {
            let escape = b < 0x20 || b == b'"' || b == b'\\';
            for at in 0..8 {
                let mut word = [b'x'; 8];
                word[at] = b;
                assert_eq!(needs_escape(&word), escape, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn peer_output_means_what_serde_would_write() {
        let options = wire::PeerOptions {
            connection_timeout_ms: Some(250),
            read_timeout_ms: None,
            verify_cert: false,
            verify_hostname: true,
            alpn: wire::Alpn::H2,
        };
        let ctx = serde_json::json!({"stamp": "a\"b\\c\n", "n": 1});
        for (peer, ctx) in [
            (
                peer(true, "one.one.one.one", wire::PeerOptions::default()),
                Some(&ctx),
            ),
            (peer(false, "", wire::PeerOptions::default()), None),
            (peer(true, "we\"ird\u{1}", options), Some(&ctx)),
            (pool("api", None), None),
            (pool("carts", Some("user \"42\"")), Some(&ctx)),
        ] {
            let mut out = Vec::new();
            peer_output(&mut out, &peer, ctx).unwrap();
            let serde = serde_json::to_vec(&wire::HookOutput {
                peer: Some(peer.clone()),
                ctx: ctx.cloned(),
                ..Default::default()
            })
            .unwrap();
            let ours: wire::HookOutput<Value> = decoded(&out);
            let theirs: wire::HookOutput<Value> = decoded(&serde);
            assert_eq!(ours.peer, theirs.peer);
            assert_eq!(ours.ctx, theirs.ctx);
            assert!(ours.error.is_none() && ours.upstream_changes.is_none());
        }
    }

    #[test]
    fn request_changes_output_means_what_serde_would_write() {
        let all = wire::RequestChanges {
            method: Some("POST".into()),
            uri: Some("/a?b=\"c\"".into()),
            headers: vec![
                wire::HeaderOp::Insert("Host".into(), "x.example".into()),
                wire::HeaderOp::Append("X-A".into(), "tab\there".into()),
                wire::HeaderOp::Remove("X-B".into()),
            ],
        };
        let only_headers = wire::RequestChanges {
            headers: vec![wire::HeaderOp::Remove("X-B".into())],
            ..Default::default()
        };
        let only_uri = wire::RequestChanges {
            uri: Some("/new".into()),
            ..Default::default()
        };
        for changes in [all, only_headers, only_uri, wire::RequestChanges::default()] {
            for ctx in [Some(Value::Null), Some(serde_json::json!([1, "two"])), None] {
                for upstream in [true, false] {
                    let key = if upstream {
                        "upstream_changes"
                    } else {
                        "request_changes"
                    };
                    let mut out = Vec::new();
                    request_changes_output(&mut out, key, &changes, ctx.as_ref()).unwrap();
                    let some = (!changes.is_empty()).then(|| Box::new(changes.clone()));
                    let serde = serde_json::to_vec(&wire::HookOutput {
                        upstream_changes: if upstream { some.clone() } else { None },
                        request_changes: if upstream { None } else { some },
                        ctx: ctx.clone(),
                        ..Default::default()
                    })
                    .unwrap();
                    let ours: wire::HookOutput<Value> = decoded(&out);
                    let theirs: wire::HookOutput<Value> = decoded(&serde);
                    assert_eq!(ours.upstream_changes, theirs.upstream_changes);
                    assert_eq!(ours.request_changes, theirs.request_changes);
                    assert_eq!(ours.ctx, theirs.ctx);
                    assert!(ours.upstream_request.is_none() && ours.error.is_none());
                    assert!(ours.peer.is_none() && ours.response_changes.is_none());
                }
            }
        }
    }

    #[test]
    fn response_changes_output_means_what_serde_would_write() {
        let all = wire::ResponseChanges {
            status: Some(203),
            headers: vec![
                wire::HeaderOp::Insert("Server".into(), "My\"Gateway\"".into()),
                wire::HeaderOp::Remove("alt-svc".into()),
            ],
        };
        let only_status = wire::ResponseChanges {
            status: Some(404),
            ..Default::default()
        };
        for changes in [all, only_status, wire::ResponseChanges::default()] {
            for ctx in [
                Some(Value::Null),
                Some(serde_json::json!({"seen": ["a"]})),
                None,
            ] {
                let mut out = Vec::new();
                response_changes_output(&mut out, &changes, ctx.as_ref()).unwrap();
                let serde = serde_json::to_vec(&wire::HookOutput {
                    response_changes: (!changes.is_empty()).then(|| Box::new(changes.clone())),
                    ctx: ctx.clone(),
                    ..Default::default()
                })
                .unwrap();
                let ours: wire::HookOutput<Value> = decoded(&out);
                let theirs: wire::HookOutput<Value> = decoded(&serde);
                assert_eq!(ours.response_changes, theirs.response_changes);
                assert_eq!(ours.ctx, theirs.ctx);
                assert!(ours.upstream_changes.is_none() && ours.error.is_none());
            }
        }
    }

    #[test]
    fn error_output_means_what_serde_would_write() {
        for message in ["", "denied", "a\"b\\c\u{1}\u{e9}"] {
            let error = wire::HookError {
                status: 403,
                message: message.into(),
            };
            let mut out = Vec::new();
            error_output(&mut out, &error).unwrap();
            let serde = serde_json::to_vec(&wire::HookOutput::<()> {
                error: Some(error.clone()),
                ..Default::default()
            })
            .unwrap();
            let ours: wire::HookOutput<Value> = decoded(&out);
            let theirs: wire::HookOutput<Value> = decoded(&serde);
            assert_eq!(ours.error, theirs.error);
            assert!(ours.ctx.is_none() && ours.peer.is_none());
        }
    }
}
