//! Pulling a module from an OCI registry with `oci-client`: the manifest
//! by tag or digest, then the one layer that holds the module, in either
//! layout proxy-wasm filters are published in: the CNCF wasm artifact
//! (config `application/vnd.wasm.config.v0+json`, one `application/wasm`
//! layer) or Istio's compat variant (one `tar+gzip` layer holding
//! `plugin.wasm`).

use std::io::Read;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use oci_client::errors::OciDistributionError;

use super::{cache, DigestMismatch, Limits};

/// The CNCF wasm artifact's config media type.
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF wasm artifact's layer media type.
const WASM_LAYER: &str = "application/wasm";
/// The file a compat layer holds the module in.
const COMPAT_FILE: &str = "plugin.wasm";

/// Where and how to reach a registry.
pub(super) struct Registry {
    /// `http://`, not `https://`.
    pub(super) plain_http: bool,
    pub(super) auth: RegistryAuth,
}

/// A manifest as pulled: its digest and the module layer it names.
pub(super) struct Pulled {
    pub(super) manifest: String,
    pub(super) bytes: Vec<u8>,
}

/// Why a manifest could not be had: the registry was not reached (the
/// cache may stand in for a tag), or it answered no.
#[derive(Debug)]
pub(super) struct Unreachable(pub(super) String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A client for `reference`'s registry, for one module's resolution and
/// pull (it keeps the registry's token between them).
pub(super) fn client(reference: &Reference, registry: &Registry, limits: &Limits) -> Client {
    let protocol = if registry.plain_http {
        ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        read_timeout: Some(limits.timeout),
        connect_timeout: Some(limits.connect_timeout),
        ..ClientConfig::default()
    })
}

/// The digest `reference` (a tag, or a digest) names now.
pub(super) async fn resolve(
    client: &Client,
    reference: &Reference,
    registry: &Registry,
) -> anyhow::Result<(OciImageManifest, String)> {
    let (manifest, digest) = client
        .pull_image_manifest(reference, &registry.auth)
        .await
        .map_err(|e| match &e {
            OciDistributionError::RequestError(request)
                if request.is_connect() || request.is_timeout() =>
            {
                anyhow::Error::new(Unreachable(format!("{e}")))
            }
            _ => anyhow::anyhow!("{e}"),
        })
        .context("pulling the manifest")?;
    if let Some(pinned) = reference.digest() {
        if pinned != digest {
            return Err(DigestMismatch(format!(
                "digest mismatch: the reference pins manifest {pinned}, the registry sent {digest}"
            ))
            .into());
        }
    }
    Ok((manifest, digest))
}

/// The module `manifest` (of `reference`) holds, pulled within the size
/// cap and checked against its layer digest.
pub(super) async fn pull(
    client: &Client,
    reference: &Reference,
    limits: &Limits,
    manifest: &OciImageManifest,
    digest: String,
) -> anyhow::Result<Pulled> {
    let layer = module_layer(manifest)?;
    let blob = pull_blob(client, reference, layer, limits).await?;
    let bytes = if layer.media_type == WASM_LAYER {
        blob
    } else {
        plugin_wasm(&blob, limits.max_bytes)?
    };
    Ok(Pulled {
        manifest: digest,
        bytes,
    })
}

/// The layer that holds the module: the one `application/wasm` layer of
/// a wasm artifact, else the one `tar+gzip` layer of Istio's compat
/// variant.
fn module_layer(manifest: &OciImageManifest) -> anyhow::Result<&OciDescriptor> {
    let wasm: Vec<_> = manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type == WASM_LAYER)
        .collect();
    if manifest.config.media_type == WASM_CONFIG || !wasm.is_empty() {
        return match wasm[..] {
            [layer] => Ok(layer),
            _ => bail!(
                "a wasm artifact has one `{WASM_LAYER}` layer; this one has {}",
                wasm.len()
            ),
        };
    }
    let compat: Vec<_> = manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type.ends_with("tar+gzip"))
        .collect();
    match compat[..] {
        [layer] => Ok(layer),
        _ => bail!(
            "neither a wasm artifact (config {WASM_CONFIG}, one {WASM_LAYER} layer) nor Istio's \
             compat layout (one tar+gzip layer holding {COMPAT_FILE}): config {}, layers {:?}",
            manifest.config.media_type,
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
        ),
    }
}

/// A layer's bytes, refused past the size cap (as declared, then as
/// sent) and checked against its digest.
async fn pull_blob(
    client: &Client,
    reference: &Reference,
    layer: &OciDescriptor,
    limits: &Limits,
) -> anyhow::Result<Vec<u8>> {
    if u64::try_from(layer.size).map_or(true, |size| size > limits.max_bytes) {
        bail!(
            "layer {} is {} bytes, over the {} byte cap",
            layer.digest,
            layer.size,
            limits.max_bytes
        );
    }
    let mut stream = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("pulling layer {}", layer.digest))?
        .stream;
    let mut bytes = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("pulling layer {}", layer.digest))?;
        if (bytes.len() + chunk.len()) as u64 > limits.max_bytes {
            bail!(
                "layer {} is over the {} byte cap",
                layer.digest,
                limits.max_bytes
            );
        }
        bytes.extend_from_slice(&chunk);
    }
    let got = cache::digest(&bytes);
    if got != layer.digest {
        return Err(DigestMismatch(format!(
            "digest mismatch: layer {} arrived as {got}",
            layer.digest
        ))
        .into());
    }
    Ok(bytes)
}

/// `plugin.wasm` from a compat layer (a gzipped tar), within `max_bytes`.
fn plugin_wasm(layer: &[u8], max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    let gunzip = flate2::read::GzDecoder::new(layer);
    let mut archive = tar::Archive::new(gunzip.take(max_bytes.saturating_mul(2)));
    for entry in archive.entries().context("reading the compat layer")? {
        let mut entry = entry.context("reading the compat layer")?;
        let path = entry.path().context("reading the compat layer")?;
        let named = path.file_name().is_some_and(|name| name == COMPAT_FILE)
            && path.components().count() <= 2;
        if !named {
            continue;
        }
        if entry.size() > max_bytes {
            bail!(
                "{COMPAT_FILE} is {} bytes, over the {max_bytes} byte cap",
                entry.size()
            );
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .context("reading the compat layer")?;
        return Ok(bytes);
    }
    bail!("the compat layer holds no {COMPAT_FILE}")
}
