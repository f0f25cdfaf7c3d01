//! The guest-visible part of the per-request ctx: the JSON a guest
//! returned, carried from one hook to the next.

use serde_json::value::RawValue;

/// The ctx JSON of one request; `null` until a guest returns something
/// else. `null` takes no allocation, and an unchanged ctx is not copied.
#[derive(Debug, Default)]
pub struct GuestCtx(Option<Box<RawValue>>);

/// What a hook's output does to the ctx.
#[derive(Debug)]
pub enum CtxUpdate {
    /// The guest left `ctx` out, or returned it as it was.
    Unchanged,
    /// The guest returned a new value (None: `null`).
    Set(Option<Box<RawValue>>),
}

impl PartialEq for CtxUpdate {
    /// Equal when they leave the same JSON text.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CtxUpdate::Unchanged, CtxUpdate::Unchanged) => true,
            (CtxUpdate::Set(a), CtxUpdate::Set(b)) => {
                a.as_deref().map(RawValue::get) == b.as_deref().map(RawValue::get)
            }
            _ => false,
        }
    }
}

impl GuestCtx {
    /// The JSON text handed to the next hook.
    pub fn json(&self) -> &str {
        self.0.as_deref().map_or("null", RawValue::get)
    }

    /// The update a hook's returned `ctx` (None: left out) amounts to.
    pub fn update_to(&self, returned: Option<&RawValue>) -> CtxUpdate {
        match returned {
            None => CtxUpdate::Unchanged,
            Some(raw) if raw.get() == self.json() => CtxUpdate::Unchanged,
            Some(raw) if raw.get() == "null" => CtxUpdate::Set(None),
            Some(raw) => CtxUpdate::Set(Some(raw.to_owned())),
        }
    }

    /// Applies a hook's update.
    pub fn apply(&mut self, update: CtxUpdate) {
        if let CtxUpdate::Set(value) = update {
            self.0 = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).unwrap()
    }

    #[test]
    fn starts_null_and_only_real_changes_are_kept() {
        let mut ctx = GuestCtx::default();
        assert_eq!(ctx.json(), "null");
        assert_eq!(ctx.update_to(None), CtxUpdate::Unchanged);
        assert_eq!(ctx.update_to(Some(&raw("null"))), CtxUpdate::Unchanged);

        let update = ctx.update_to(Some(&raw(r#"{"a":1}"#)));
        assert!(matches!(update, CtxUpdate::Set(Some(_))));
        ctx.apply(update);
        assert_eq!(ctx.json(), r#"{"a":1}"#);
        assert_eq!(
            ctx.update_to(Some(&raw(r#"{"a":1}"#))),
            CtxUpdate::Unchanged
        );

        let update = ctx.update_to(Some(&raw("null")));
        assert_eq!(update, CtxUpdate::Set(None));
        ctx.apply(update);
        assert_eq!(ctx.json(), "null");
    }
}
