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
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

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
pub(super) fn client(
    reference: &Reference,
    registry: &Registry,
    limits: &Limits,
) -> anyhow::Result<Client> {
    let protocol = if registry.plain_http {
        ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        read_timeout: Some(limits.timeout),
        connect_timeout: Some(limits.connect_timeout),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| anyhow::anyhow!("a registry client: {e}"))
}

/// The largest manifest or index read, as containerd's limit: a
/// registry that sends more is refused before it fills memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The manifest media types asked for: images and indexes, OCI's and
/// Docker's.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest `reference` (a tag, or a digest) names now, and the
/// digest that names it: the reference's own (an image's, or an index's
/// whose entry was chosen). Read within [`MAX_MANIFEST_BYTES`] and checked
/// against a pinned digest.
pub(super) async fn resolve(
    client: &Client,
    http: &reqwest::Client,
    reference: &Reference,
    registry: &Registry,
) -> anyhow::Result<(OciImageManifest, String)> {
    // The registry's token (if it uses token auth); basic auth otherwise.
    let token = client
        .auth(reference, &registry.auth, RegistryOperation::Pull)
        .await
        .map_err(classify)
        .context("authenticating")?;
    let scheme = if registry.plain_http { "http" } else { "https" };
    let base = format!(
        "{scheme}://{}/v2/{}/manifests/",
        reference.resolve_registry(),
        reference.repository()
    );
    let get = |name: String| {
        let mut request = http
            .get(format!("{base}{name}"))
            .header("Accept", MANIFEST_TYPES);
        request = match (&token, &registry.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        read_manifest(request)
    };
    let name = reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_string();
    let body = get(name).await.context("pulling the manifest")?;
    let digest = cache::digest(&body);
    if let Some(pinned) = reference.digest() {
        if pinned != digest {
            return Err(DigestMismatch(format!(
                "digest mismatch: the reference pins manifest {pinned}, the registry sent {digest}"
            ))
            .into());
        }
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).context("the manifest is not JSON")?;
    if value.get("manifests").is_none() {
        let manifest = serde_json::from_value(value).context("reading the manifest")?;
        return Ok((manifest, digest));
    }
    // An index (a multi-platform push, or one with attestations): the
    // wasm entry, else the only one, else linux/amd64.
    let index: OciImageIndex = serde_json::from_value(value).context("reading the index")?;
    let entry = choose(&index.manifests).with_context(|| {
        format!(
            "index {digest}: no wasm, single or linux/amd64 entry among {} manifests",
            index.manifests.len()
        )
    })?;
    let child = get(entry.digest.clone())
        .await
        .with_context(|| format!("pulling manifest {} of index {digest}", entry.digest))?;
    let child_digest = cache::digest(&child);
    if child_digest != entry.digest {
        return Err(DigestMismatch(format!(
            "digest mismatch: index {digest} names manifest {}, the registry sent {child_digest}",
            entry.digest
        ))
        .into());
    }
    let manifest = serde_json::from_slice(&child).context("reading the manifest")?;
    Ok((manifest, digest))
}

/// The entry of an index to pull: one for `wasm`/`wasi`, else the only
/// one, else linux/amd64.
fn choose(entries: &[ImageIndexEntry]) -> Option<&ImageIndexEntry> {
    let platform = |entry: &&ImageIndexEntry, test: fn(&str, &str) -> bool| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| test(&p.os, &p.architecture))
    };
    entries
        .iter()
        .find(|e| {
            platform(e, |os, arch| {
                os == "wasip1" || os == "wasi" || arch == "wasm"
            })
        })
        .or_else(|| (entries.len() == 1).then(|| &entries[0]))
        .or_else(|| {
            entries
                .iter()
                .find(|e| platform(e, |os, arch| os == "linux" && arch == "amd64"))
        })
}

/// A manifest's bytes, within [`MAX_MANIFEST_BYTES`]; a server error or a
/// connection that fails is [`Unreachable`] (a tag's cache may stand
/// in), any other refusal is not.
async fn read_manifest(request: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
    let unreachable = |e: reqwest::Error| -> anyhow::Error {
        let e = e.without_url();
        if e.is_connect() || e.is_timeout() {
            Unreachable(format!("{e}")).into()
        } else {
            e.into()
        }
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Unreachable(format!("the registry answered {status}")).into());
    }
    if !status.is_success() {
        bail!("the registry answered {status}");
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_MANIFEST_BYTES as u64)
    {
        bail!("the manifest is over the {MAX_MANIFEST_BYTES} byte cap");
    }
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreachable)?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            bail!("the manifest is over the {MAX_MANIFEST_BYTES} byte cap");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error of the registry client: a connection that fails is
/// [`Unreachable`]; the rest keep their cause.
fn classify(e: OciDistributionError) -> anyhow::Error {
    match &e {
        OciDistributionError::RequestError(request)
            if request.is_connect() || request.is_timeout() =>
        {
            Unreachable(format!("{}", e)).into()
        }
        _ => anyhow::Error::new(e),
    }
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
        // OCI's `...tar+gzip`, or Docker's `...rootfs.diff.tar.gzip`
        // (images built with `docker build`), as Istio takes both.
        .filter(|layer| {
            layer.media_type.ends_with("tar+gzip") || layer.media_type.ends_with("tar.gzip")
        })
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
        .map_err(classify)
        .with_context(|| format!("pulling layer {}", layer.digest))?
        .stream;
    let mut bytes = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // The client's own check of the layer's digest, at its end.
            let mismatch = e.get_ref().map(|inner| inner.to_string());
            match mismatch {
                Some(why) if why.contains("digest") => {
                    anyhow::Error::new(DigestMismatch(format!("layer {}: {why}", layer.digest)))
                }
                _ => anyhow::Error::new(e).context(format!("pulling layer {}", layer.digest)),
            }
        })?;
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
