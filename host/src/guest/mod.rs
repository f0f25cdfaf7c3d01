//! Calling guests on the request path and off it: the one guest-call
//! path (admission by the tenant's budget, accounting, the failure
//! policy), the proxy-wasm filter chain of a request, filter ticks and
//! the epoch ticker.

pub(crate) mod epoch_ticker;
pub(crate) mod filter_chain;
pub(crate) mod filter_ticks;
pub(crate) mod guest_call;
