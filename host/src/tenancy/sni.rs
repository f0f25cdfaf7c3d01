//! The certificate for each TLS handshake, chosen by SNI from the live
//! tenant set (so that certificates reload with it), and the check that
//! TLS listeners keep at least one certificate.

use std::sync::Arc;

use anyhow::bail;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ssl::NameType;

use crate::edge::tls::DefaultCertificate;
use crate::tenancy::tenants::TenantSet;

/// Refuses to serve TLS listeners with no certificate at all: neither a
/// default one nor any tenant's. Checked at start and at each reload.
pub(crate) fn check_listeners_have_a_certificate(
    tls_listeners: bool,
    default: bool,
    tenants: &TenantSet,
) -> anyhow::Result<()> {
    if tls_listeners && !default && !tenants.has_certificates() {
        bail!(
            "the TLS listeners (--tls-listen) would be left without a certificate: give \
             --cert FILE --key FILE, or tls: {{cert, key}} to tenants in the tenants file"
        );
    }
    Ok(())
}

/// Chooses each handshake's certificate by SNI: the tenant whose hosts
/// match the name (exact, then the longest wildcard), else the default
/// certificate, else none, which refuses the handshake.
pub(crate) struct CertificateSelector {
    /// The live tenant set, whose certificates reload with it.
    pub tenants: Arc<ArcSwap<TenantSet>>,
    /// `--cert`/`--key`, for names no tenant's certificate serves.
    pub default: Option<Arc<DefaultCertificate>>,
}

#[async_trait]
impl TlsAccept for CertificateSelector {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let tenants = self.tenants.load();
        let name = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let default = self.default.as_ref().map(|d| d.current());
        let chosen = name
            .as_deref()
            .and_then(|name| tenants.certificate_for(name))
            .or(default.as_ref());
        match chosen {
            Some(certificate) => {
                if let Err(e) = certificate.use_in(ssl) {
                    log::error!("TLS handshake for {name:?}: presenting the certificate: {e}");
                }
            }
            // Scanners send any name: not worth a line each.
            None => log::debug!("TLS handshake for {name:?} refused: no certificate serves it"),
        }
    }

    /// Keeps the name the client asked for with the connection's digest,
    /// for the filters' `connection.requested_server_name`.
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = ssl.servername(NameType::HOST_NAME)?;
        Some(Arc::new(RequestedServerName(name.to_string())))
    }
}

/// The SNI a TLS client sent, kept with its connection.
pub(crate) struct RequestedServerName(pub String);
