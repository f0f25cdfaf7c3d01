//! Downstream TLS certificates: the default one from `--cert`/`--key`
//! and tenants' own from the tenants file, checked when loaded. Which one
//! a handshake gets is `sni.rs`'s choice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use openssl::asn1::Asn1Time;
use pingora::tls::error::ErrorStack;
use pingora::tls::ext::{ssl_add_chain_cert, ssl_use_certificate, ssl_use_private_key};
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslRef;
use pingora::tls::x509::X509;

/// A certificate chain (leaf first) and its private key, checked to
/// match.
pub struct Certificate {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl Certificate {
    /// Loads a PEM certificate file (the leaf, then any intermediates)
    /// and a PEM private key, refusing a key that does not match the
    /// leaf. An expired or not yet valid leaf is loaded with a warning:
    /// clients will refuse it, but the proxy serves the others.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let (cert_name, key_name) = (cert.display(), key.display());
        let pem = std::fs::read(cert).with_context(|| format!("certificate {cert_name}"))?;
        let chain = X509::stack_from_pem(&pem)
            .with_context(|| format!("certificate {cert_name}: not PEM certificates"))?;
        let Some(leaf) = chain.first() else {
            bail!("certificate {cert_name}: no PEM certificate in it");
        };
        let pem = std::fs::read(key).with_context(|| format!("key {key_name}"))?;
        let key = PKey::private_key_from_pem(&pem)
            .with_context(|| format!("key {key_name}: not a PEM private key"))?;
        let leaf_key = leaf
            .public_key()
            .with_context(|| format!("certificate {cert_name}: its public key"))?;
        if !leaf_key.public_eq(&key) {
            bail!("key {key_name} does not match certificate {cert_name}");
        }
        let now = Asn1Time::days_from_now(0).context("reading the clock")?;
        if leaf.not_after() < now {
            log::warn!(
                "certificate {cert_name} expired on {}: clients will refuse it",
                leaf.not_after()
            );
        } else if leaf.not_before() > now {
            log::warn!(
                "certificate {cert_name} is not valid before {}: clients will refuse it until then",
                leaf.not_before()
            );
        }
        Ok(Certificate { chain, key })
    }

    /// Presents this certificate in the handshake of `ssl`.
    pub(crate) fn use_in(&self, ssl: &mut SslRef) -> Result<(), ErrorStack> {
        let (leaf, intermediates) = self.chain.split_first().ok_or_else(ErrorStack::get)?;
        ssl_use_certificate(ssl, leaf)?;
        ssl_use_private_key(ssl, &self.key)?;
        for intermediate in intermediates {
            ssl_add_chain_cert(ssl, intermediate)?;
        }
        Ok(())
    }
}

/// The default certificate (`--cert`, `--key`): loaded at start and again
/// at each reload, with the tenants file.
pub struct DefaultCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<Certificate>,
}

impl DefaultCertificate {
    /// Loads it from `cert` and `key`.
    pub fn load(cert: PathBuf, key: PathBuf) -> anyhow::Result<Self> {
        let current = ArcSwap::from_pointee(Certificate::load(&cert, &key)?);
        Ok(DefaultCertificate { cert, key, current })
    }

    /// Loads it again from its files, without serving it yet.
    pub fn load_again(&self) -> anyhow::Result<Arc<Certificate>> {
        Certificate::load(&self.cert, &self.key).map(Arc::new)
    }

    /// Serves `certificate` from now on.
    pub fn replace(&self, certificate: Arc<Certificate>) {
        self.current.store(certificate);
    }

    /// The certificate served now.
    pub(crate) fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }

    /// Its files, watched for changes.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }
}
