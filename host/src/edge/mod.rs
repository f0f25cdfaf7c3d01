//! What faces clients: TLS listeners and certificates by SNI,
//! X-Forwarded-* on arrival, and draining before an upgrade or a stop.

pub(crate) mod drain;
pub(crate) mod forwarded;
pub(crate) mod sni;
pub(crate) mod tls;
