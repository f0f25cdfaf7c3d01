//! What [`RequestHeader`](super::RequestHeader) and
//! [`ResponseHeader`](super::ResponseHeader) share: an input part decoded
//! on first read, single headers read cheaply through `hook.get_header`
//! until then, header operations, and the checks on what a guest sets.

use std::cell::OnceCell;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::decode_part;
use crate::error::{Error, ErrorType, Result};
use crate::sys;
use crate::wire::HeaderOp;

/// An input part: its JSON if the input carried it, else fetched from the
/// host (`part`) when first read; or a value built by the guest.
#[derive(Debug, Clone)]
pub(crate) struct LazyPart<T> {
    raw: Option<Box<RawValue>>,
    part: i32,
    /// The decoded part with the owner's changes applied.
    pub(crate) current: OnceCell<T>,
    /// Header values read through `hook.get_header` before any decoding.
    fetched: Fetched,
}

impl<T: DeserializeOwned + Default> LazyPart<T> {
    /// The part `part` over its JSON, or fetched from the host if `raw` is
    /// None.
    pub(crate) fn new(raw: Option<Box<RawValue>>, part: i32) -> Self {
        LazyPart {
            raw,
            part,
            current: OnceCell::new(),
            fetched: Fetched::default(),
        }
    }

    /// A value the guest already has; nothing is fetched.
    pub(crate) fn decoded(value: T) -> Self {
        LazyPart {
            raw: None,
            part: -1,
            current: OnceCell::from(value),
            fetched: Fetched::default(),
        }
    }

    /// The part, decoded on first use and then `changed` by the owner's
    /// recorded changes.
    pub(crate) fn view(&self, changed: impl FnOnce(&mut T)) -> &T {
        self.current.get_or_init(|| {
            let mut value = decode_part(self.raw.as_deref(), self.part);
            changed(&mut value);
            value
        })
    }

    /// The first value of header `name`: from the decoded part if it has
    /// been decoded (or the input carried it whole, or `ops` change that
    /// header), else from the host through `hook.get_header`, remembered
    /// for the next read. `headers` reads a decoded part's fields.
    pub(crate) fn header<'a>(
        &'a self,
        name: &str,
        ops: &[HeaderOp],
        headers: impl FnOnce(&'a T) -> Option<&'a str>,
        changed: impl FnOnce(&mut T),
    ) -> Option<&'a str> {
        let cheap = self.current.get().is_none()
            && self.raw.is_none()
            && !ops.iter().any(|op| op_name(op).eq_ignore_ascii_case(name));
        if cheap {
            self.fetched
                .get_or_fetch(name, || sys::get_header(self.part, name))
        } else {
            headers(self.view(changed))
        }
    }
}

/// Header values fetched one by one, in a list that only grows, so a
/// value can be lent out for as long as the list lives (through `&self`).
#[derive(Debug, Clone, Default)]
struct Fetched(OnceCell<Box<FetchedHeader>>);

#[derive(Debug, Clone)]
struct FetchedHeader {
    name: String,
    value: Option<String>,
    next: Fetched,
}

impl Fetched {
    /// The value remembered for `name`, or else `fetch`'s, remembered.
    fn get_or_fetch(&self, name: &str, fetch: impl FnOnce() -> Option<String>) -> Option<&str> {
        let mut slot = &self.0;
        while let Some(node) = slot.get() {
            if node.name.eq_ignore_ascii_case(name) {
                return node.value.as_deref();
            }
            slot = &node.next.0;
        }
        let node = slot.get_or_init(|| {
            Box::new(FetchedHeader {
                name: name.to_string(),
                value: fetch(),
                next: Fetched::default(),
            })
        });
        node.value.as_deref()
    }
}

/// The header name an operation touches.
pub(crate) fn op_name(op: &HeaderOp) -> &str {
    match op {
        HeaderOp::Insert(name, _) | HeaderOp::Append(name, _) | HeaderOp::Remove(name) => name,
    }
}

/// Applies `op` to a header list as the host does: `Insert` replaces the
/// first field of that name in place and drops the others, `Append` adds
/// one at the end, `Remove` drops them all.
pub(crate) fn apply_op(headers: &mut Vec<(String, String)>, op: &HeaderOp) {
    match op {
        HeaderOp::Insert(name, value) => {
            match headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some(first) => {
                    headers[first] = (name.clone(), value.clone());
                    let mut index = 0;
                    headers.retain(|(n, _)| {
                        index += 1;
                        index - 1 <= first || !n.eq_ignore_ascii_case(name)
                    });
                }
                None => headers.push((name.clone(), value.clone())),
            }
        }
        HeaderOp::Append(name, value) => headers.push((name.clone(), value.clone())),
        HeaderOp::Remove(name) => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
    }
}

/// RFC 9110 `tchar`s: the bytes of a method or a header name.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

pub(crate) fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[b as usize]
}

/// Whether `name` is a valid header name (a non-empty token).
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_token_byte)
}

/// `name` and `value` if the host would accept them: the name a token, the
/// value free of control characters other than tab.
pub(crate) fn checked_header(name: String, value: String) -> Result<(String, String)> {
    if !is_header_name(&name) {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("invalid header name {name:?}"),
        );
    }
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("invalid value for header {name}"),
        );
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bytes_are_rfc_9110_tchars() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "byte {b:#x}");
        }
    }

    #[test]
    fn fetched_values_are_remembered_by_name() {
        let fetched = Fetched::default();
        let mut calls = 0;
        let mut fetch = |value: Option<&str>| {
            calls += 1;
            value.map(str::to_string)
        };
        assert_eq!(fetched.get_or_fetch("a", || fetch(Some("1"))), Some("1"));
        assert_eq!(fetched.get_or_fetch("b", || fetch(None)), None);
        assert_eq!(fetched.get_or_fetch("A", || fetch(Some("x"))), Some("1"));
        assert_eq!(fetched.get_or_fetch("B", || fetch(Some("x"))), None);
        assert_eq!(calls, 2);
    }
}
