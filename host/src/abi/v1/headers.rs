//! Header operations from a guest (`insert`, `append`, `remove`), checked
//! all before any is applied, on a request or a response alike.

use guest_sdk::wire::HeaderOp;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::runtime::HookFault;

/// A header that operations can change: Pingora's request and response
/// headers.
pub(super) trait HeaderTarget {
    /// Replaces every field called `name` with one `name: value`.
    fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Adds `name: value`.
    fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    /// Removes every field called `name`.
    fn remove(&mut self, name: &HeaderName);
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
        }
    )*};
}

header_target!(RequestHeader, ResponseHeader);

/// A guest's header operations, each name and value checked.
pub(super) struct CheckedOps(Vec<(HeaderOp, HeaderName, Option<HeaderValue>)>);

/// A header name from a guest, or the fault that names it.
pub(super) fn header_name(name: &str) -> Result<HeaderName, HookFault> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HookFault::InvalidOutput(format!("invalid header name {name:?}")))
}

/// A header value from a guest, or the fault that names its header.
pub(super) fn header_value(name: &str, value: &str) -> Result<HeaderValue, HookFault> {
    HeaderValue::from_str(value)
        .map_err(|_| HookFault::InvalidOutput(format!("invalid value for header {name}")))
}

impl CheckedOps {
    /// Checks every operation; the first invalid name or value is a fault.
    pub(super) fn new(ops: Vec<HeaderOp>) -> Result<Self, HookFault> {
        let mut checked = Vec::with_capacity(ops.len());
        for op in ops {
            let (name, value) = match &op {
                HeaderOp::Insert(name, value) | HeaderOp::Append(name, value) => {
                    (header_name(name)?, Some(header_value(name, value)?))
                }
                HeaderOp::Remove(name) => (header_name(name)?, None),
            };
            checked.push((op, name, value));
        }
        Ok(CheckedOps(checked))
    }

    /// Applies them in order. The guest's own spelling of a name is sent.
    pub(super) fn apply(self, target: &mut impl HeaderTarget) -> Result<(), HookFault> {
        for (op, name, value) in self.0 {
            let result = match (op, value) {
                (HeaderOp::Insert(spelled, _), Some(value)) => target.insert(spelled, value),
                (HeaderOp::Append(spelled, _), Some(value)) => target.append(spelled, value),
                _ => {
                    target.remove(&name);
                    Ok(())
                }
            };
            result.map_err(|e| HookFault::InvalidOutput(format!("header: {e}")))?;
        }
        Ok(())
    }
}
