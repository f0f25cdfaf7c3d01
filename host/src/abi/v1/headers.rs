//! Header operations from a guest (`insert`, `append`, `remove`), checked
//! all before any is applied, on a request or a response alike.

use guest_sdk::wire::HeaderOp;
use http::{HeaderName, HeaderValue};

use crate::abi::framing::{check_edit, Edit, Message};
use crate::abi::HookFault;
use crate::abi::{header_name, header_refused, header_value, HeaderTarget};

/// Refuses operations on `message` that edit its framing
/// ([`check_edit`]), as invalid output.
pub(super) fn check_framing(ops: &[HeaderOp], message: Message) -> Result<(), HookFault> {
    for op in ops {
        let (edit, name) = match op {
            HeaderOp::Insert(name, _) => (Edit::Set, name),
            HeaderOp::Append(name, _) => (Edit::Add, name),
            HeaderOp::Remove(name) => (Edit::Remove, name),
        };
        check_edit(message, edit, name).map_err(HookFault::InvalidOutput)?;
    }
    Ok(())
}

/// A guest's header operations, each name and value checked.
pub(super) struct CheckedOps(Vec<(HeaderOp, HeaderName, Option<HeaderValue>)>);

/// The most header operations one output may carry.
pub(super) const MAX_HEADER_OPS: usize = 1000;

impl CheckedOps {
    /// Checks every operation; the first invalid name or value is a fault,
    /// and so are more than [`MAX_HEADER_OPS`] (a map past its capacity
    /// would panic, and no real message needs as many fields).
    pub(super) fn new(ops: Vec<HeaderOp>) -> Result<Self, HookFault> {
        if ops.len() > MAX_HEADER_OPS {
            return Err(HookFault::InvalidOutput(format!(
                "{} header operations: at most {MAX_HEADER_OPS}",
                ops.len()
            )));
        }
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
            result.map_err(header_refused)?;
        }
        Ok(())
    }
}
