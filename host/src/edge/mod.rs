//! What faces clients: TLS listeners and certificates (chosen by SNI in
//! [`crate::tenancy::sni`]), X-Forwarded-* on arrival, and draining
//! before an upgrade or a stop.

pub(crate) mod drain;
pub(crate) mod forwarded;
pub(crate) mod tls;
