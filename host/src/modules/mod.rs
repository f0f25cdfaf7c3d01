//! Modules from registries, as Istio's `WasmPlugin` takes them: a
//! tenant's `module` or a filter's is a path, or a URL (`oci://`,
//! `https://`, `http://`, `file://`). A URL's module is fetched into the
//! module cache (content-addressed by digest, beside the compiled-module
//! cache, so a pulled module compiles once) and loaded from there like
//! any file.
//!
//! - `oci://REGISTRY/REPO:TAG` is resolved at each load (start and
//!   reload); if the registry cannot be reached, the digest the tag last
//!   resolved to is used with a warning (Istio's `IfNotPresent`), and a
//!   tag never resolved fails its tenant. `oci://REGISTRY/REPO@sha256:..`
//!   found in the cache is not fetched again.
//! - `http(s)://` needs the module's `sha256`, which also names it in the
//!   cache.
//! - A `sha256` is checked against the module's bytes, a digest reference
//!   against the manifest: a mismatch refuses the module with both
//!   digests.
//!
//! Fetches run on a thread of their own, never on a proxy worker, each
//! bounded in time and size.

mod cache;
mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use prometheus::IntCounterVec;

use crate::config_model::{Located, RegistryConfig};
use crate::metrics::Metrics;
use cache::ModuleCache;

pub(crate) use cache::digest;

/// How long one module's fetch may take, everything included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting to a registry or server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long resolving a tag may take before the registry counts as
/// unreachable (and the tag's last resolution stands in).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a registry found unreachable is not asked again: the other
/// tenants of the same load go straight to their cache instead of
/// waiting out the timeouts one after another.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

/// The largest module (or layer) fetched: 64 MiB, far above any filter
/// published (a Rust filter is about 1-3 MiB), far below a memory worry.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// A fetch's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: FETCH_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            max_bytes: MAX_MODULE_BYTES,
        }
    }
}

/// A module as found: where its bytes are, and their digest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file to load: a path as written (relative to the tenants
    /// file), or the cached fetch (absolute).
    pub path: PathBuf,
    /// `sha256:<hex>` of the module's bytes; empty for a local file that
    /// could not be read (its load says why).
    pub digest: String,
}

/// A digest that does not match: counted apart from other failures.
#[derive(Debug)]
struct DigestMismatch(String);

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DigestMismatch {}

/// A module named by URL that could not be had (not found, unreachable,
/// refused, over a bound, or not matching its digest): the failure of
/// its tenant alone, where a missing local file is the configuration's.
#[derive(Debug)]
pub struct Unfetched;

impl std::fmt::Display for Unfetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the module could not be fetched")
    }
}

impl Unfetched {
    /// Whether `error` is a module that could not be fetched.
    pub fn caused(error: &anyhow::Error) -> bool {
        error.downcast_ref::<Unfetched>().is_some()
    }
}

/// Where modules come from: the cache, the registries reached by plain
/// HTTP (`--plain-http-registry`), and what fetches are counted in.
pub struct ModuleSources {
    cache: ModuleCache,
    plain_http: Vec<String>,
    limits: Limits,
    fetches: IntCounterVec,
    /// Registries found unreachable, and when.
    unreachable: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// One HTTP client for every fetch (its TLS set up once), with no
    /// idle connections kept: each fetch runs on a runtime of its own.
    http: std::sync::OnceLock<reqwest::Client>,
    /// A registry client per registry, protocol and credentials (it keeps
    /// the registry's tokens); new credentials get a new one.
    registry_clients: std::sync::Mutex<std::collections::HashMap<String, oci_client::Client>>,
    /// The directory of a cache that lasts as long as the process.
    _own_dir: Option<tempfile::TempDir>,
}

/// What a module reference names.
enum Source {
    /// A path relative to the tenants file.
    File(PathBuf),
    Oci(Reference),
    Http(String),
}

impl ModuleSources {
    /// Modules cached in `cache_dir`; `plain_http` registries are reached
    /// by `http://`.
    pub fn new(cache_dir: PathBuf, plain_http: Vec<String>, metrics: &Metrics) -> Self {
        // Absolute: a cached module's path replaces a path the tenants
        // file's directory is joined to.
        let cache_dir = std::path::absolute(&cache_dir).unwrap_or(cache_dir);
        ModuleSources {
            cache: ModuleCache::new(cache_dir),
            plain_http,
            limits: Limits::default(),
            fetches: metrics.module_fetches(),
            unreachable: Default::default(),
            http: std::sync::OnceLock::new(),
            registry_clients: Default::default(),
            _own_dir: None,
        }
    }

    /// Modules kept in a new private directory (mode 0700, a random
    /// name), removed when this is dropped: without a module cache.
    pub fn private(plain_http: Vec<String>, metrics: &Metrics) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wasm-proxy-modules-")
            .tempdir()
            .context("a private directory for pulled modules")?;
        let mut sources = Self::new(dir.path().to_path_buf(), plain_http, metrics);
        sources._own_dir = Some(dir);
        Ok(sources)
    }

    /// The module `written` names (a path relative to `base`, or a URL),
    /// fetched if it is a URL, checked against `sha256` if given;
    /// `registries` says how to reach each registry.
    pub fn resolve(
        &self,
        written: &Path,
        base: &Path,
        sha256: Option<&str>,
        registries: &BTreeMap<String, Located<RegistryConfig>>,
    ) -> anyhow::Result<Resolved> {
        let expected = sha256.map(expected_digest).transpose()?;
        match source(written)? {
            Source::File(path) => {
                let bytes = match std::fs::read(base.join(&path)) {
                    Ok(bytes) => bytes,
                    // Loading the module reports it, where the rest of
                    // the tenant's configuration is checked first.
                    Err(_) if expected.is_none() => {
                        let digest = String::new();
                        return Ok(Resolved { path, digest });
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                let digest = digest(&bytes);
                check(expected.as_deref(), &digest)?;
                Ok(Resolved { path, digest })
            }
            Source::Oci(reference) => {
                let registry = self.registry(&reference, registries, base)?;
                let fetch = self.fetch_oci(&reference, &registry, expected.as_deref());
                let fetched = run_apart(self.limits.timeout, fetch);
                self.count(&fetched);
                fetched.map(|(resolved, _)| resolved).context(Unfetched)
            }
            Source::Http(url) => {
                let Some(expected) = expected else {
                    bail!(
                        "{}: an http(s):// module needs its `sha256` (the hex sha256 of its \
                         bytes), as Envoy's remote code source does",
                        shown(Path::new(&url))
                    );
                };
                let fetched = run_apart(self.limits.timeout, self.fetch_http(&url, &expected));
                self.count(&fetched);
                fetched.map(|(resolved, _)| resolved).context(Unfetched)
            }
        }
    }

    /// The HTTP client of every fetch.
    fn http(&self) -> anyhow::Result<&reqwest::Client> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(self.limits.connect_timeout)
            .timeout(self.limits.timeout)
            .pool_max_idle_per_host(0)
            .build()
            .context("an HTTP client")?;
        Ok(self.http.get_or_init(|| client))
    }

    /// The registry client for `reference`'s registry reached as
    /// `registry` says.
    fn registry_client(
        &self,
        reference: &Reference,
        registry: &oci::Registry,
    ) -> anyhow::Result<oci_client::Client> {
        let who = match &registry.auth {
            RegistryAuth::Basic(user, password) => digest(format!("{user}\0{password}").as_bytes()),
            RegistryAuth::Bearer(token) => digest(token.as_bytes()),
            RegistryAuth::Anonymous => String::new(),
        };
        let key = format!(
            "{} {} {who}",
            reference.resolve_registry(),
            registry.plain_http
        );
        let mut clients = self
            .registry_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = oci::client(reference, registry, &self.limits)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Why `host` was found unreachable lately, if it was.
    fn found_unreachable(&self, host: &str) -> Option<String> {
        let found = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        let at = found.get(host)?;
        (at.elapsed() < UNREACHABLE_FOR).then(|| {
            format!(
                "unreachable {} s ago, not asked again yet",
                at.elapsed().as_secs()
            )
        })
    }

    fn note_unreachable(&self, host: &str, _why: &str) {
        let mut found = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        found
            .entry(host.to_string())
            .or_insert_with(std::time::Instant::now);
    }

    /// Counts a fetch in `wasm_proxy_module_fetch_total{result}`.
    fn count(&self, fetched: &anyhow::Result<(Resolved, &'static str)>) {
        let result = match fetched {
            Ok((_, result)) => result,
            Err(e) if e.chain().any(|e| e.is::<DigestMismatch>()) => "digest_mismatch",
            Err(_) => "download_failure",
        };
        self.fetches.with_label_values(&[result]).inc();
    }

    /// How to reach `reference`'s registry: by `http://` if the tenants
    /// file or the command line says so, with the credentials the file
    /// gives.
    fn registry(
        &self,
        reference: &Reference,
        registries: &BTreeMap<String, Located<RegistryConfig>>,
        base: &Path,
    ) -> anyhow::Result<oci::Registry> {
        let host = reference.resolve_registry();
        let config = registries.get(host).map(|c| &c.value);
        let auth = match config {
            Some(RegistryConfig {
                username: Some(username),
                password_file: Some(file),
                ..
            }) => {
                let file = base.join(file);
                let password = std::fs::read_to_string(&file)
                    .with_context(|| format!("registries.{host}: reading {}", file.display()))?;
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                RegistryAuth::Basic(username.clone(), password)
            }
            Some(RegistryConfig {
                username: Some(_), ..
            })
            | Some(RegistryConfig {
                password_file: Some(_),
                ..
            }) => bail!("registries.{host}: username and password_file go together"),
            _ => RegistryAuth::Anonymous,
        };
        Ok(oci::Registry {
            plain_http: config.is_some_and(|c| c.plain_http)
                || self.plain_http.iter().any(|h| h == host),
            auth,
        })
    }

    /// An `oci://` module: from the cache when its digest is pinned and
    /// pulled before, else its manifest resolved and its layer pulled;
    /// with the way it was found, for the fetch counter.
    async fn fetch_oci(
        &self,
        reference: &Reference,
        registry: &oci::Registry,
        expected: Option<&str>,
    ) -> anyhow::Result<(Resolved, &'static str)> {
        let whole = reference.whole();
        let name = module_name(reference.repository());
        let cached = |manifest: &str| {
            let module = self.cache.manifest(manifest)?;
            let path = self.cache.module(&module, name)?;
            Some(Resolved {
                path,
                digest: module,
            })
        };
        if let Some(pinned) = reference.digest() {
            if cache::hex_of(pinned).is_none() {
                bail!("oci://{whole}: only sha256 digests are taken, not {pinned}");
            }
        }
        if let Some(found) = reference.digest().and_then(cached) {
            check(expected, &found.digest)?;
            return Ok((found, "cache_hit"));
        }
        let client = self.registry_client(reference, registry)?;
        let http = self.http()?;
        let host = reference.resolve_registry().to_string();
        let resolved = match self.found_unreachable(&host) {
            Some(why) => Err(oci::Unreachable(why).into()),
            None => tokio::time::timeout(
                RESOLVE_TIMEOUT,
                oci::resolve(&client, http, reference, registry),
            )
            .await
            .unwrap_or_else(|_| {
                let why = format!("no manifest within {RESOLVE_TIMEOUT:?}");
                Err(oci::Unreachable(why).into())
            }),
        };
        if let Err(e) = &resolved {
            if let Some(unreachable) = e.chain().find_map(|e| e.downcast_ref::<oci::Unreachable>())
            {
                self.note_unreachable(&host, &unreachable.0);
            }
        }
        let (manifest, manifest_digest) = match resolved {
            Ok(resolved) => resolved,
            Err(e) if !e.chain().any(|e| e.is::<oci::Unreachable>()) => {
                return Err(e.context(format!("oci://{whole}")))
            }
            Err(e) => {
                // Unreachable: a tag keeps what it last resolved to.
                let last = (reference.digest().is_none())
                    .then(|| self.cache.tag(&whole))
                    .flatten();
                if let Some(found) = last.as_deref().and_then(cached) {
                    log::warn!(
                        "module oci://{whole}: the registry could not be reached ({e:#}); \
                         using {} as the tag last resolved ({})",
                        last.as_deref().unwrap_or_default(),
                        found.digest
                    );
                    check(expected, &found.digest)?;
                    // Served, but the fetch failed: counted so.
                    return Ok((found, "download_failure"));
                }
                let why = match reference.digest() {
                    Some(_) => "and the cache does not hold it",
                    None => "and the cache holds no earlier resolution of this tag",
                };
                return Err(e.context(format!(
                    "oci://{whole}: the registry could not be reached, {why}"
                )));
            }
        };
        if let Some(found) = cached(&manifest_digest) {
            check(expected, &found.digest)?;
            if reference.digest().is_none() {
                self.cache.put_tag(&whole, &manifest_digest)?;
            }
            return Ok((found, "cache_hit"));
        }
        let pulled = oci::pull(&client, reference, &self.limits, &manifest, manifest_digest)
            .await
            .with_context(|| format!("oci://{whole}"))?;
        let module = digest(&pulled.bytes);
        check(expected, &module).with_context(|| format!("oci://{whole}"))?;
        let path = self.cache.put_module(&module, name, &pulled.bytes)?;
        self.cache.put_manifest(&pulled.manifest, &module)?;
        if reference.digest().is_none() {
            self.cache.put_tag(&whole, &pulled.manifest)?;
        }
        Ok((
            Resolved {
                path,
                digest: module,
            },
            "success",
        ))
    }

    /// An `http(s)://` module of digest `expected`: from the cache, else
    /// downloaded within the bounds and checked.
    async fn fetch_http(
        &self,
        url: &str,
        expected: &str,
    ) -> anyhow::Result<(Resolved, &'static str)> {
        let shown_url = shown(Path::new(url));
        let name = module_name(url.split(['?', '#']).next().unwrap_or(url));
        if let Some(path) = self.cache.module(expected, name) {
            let digest = expected.to_string();
            return Ok((Resolved { path, digest }, "cache_hit"));
        }
        let download = async {
            let response = self
                .http()?
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(reqwest::Error::without_url)?;
            let max = self.limits.max_bytes;
            if response.content_length().is_some_and(|length| length > max) {
                bail!("the module is over the {max} byte cap");
            }
            let mut stream = response.bytes_stream();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(reqwest::Error::without_url)?;
                if (bytes.len() + chunk.len()) as u64 > max {
                    bail!("the module is over the {max} byte cap");
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(self.limits.timeout, download)
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {:?}", self.limits.timeout)))
            .with_context(|| format!("fetching {shown_url}"))?;
        let module = digest(&bytes);
        check(Some(expected), &module).with_context(|| shown_url.clone())?;
        let path = self.cache.put_module(&module, name, &bytes)?;
        Ok((
            Resolved {
                path,
                digest: module,
            },
            "success",
        ))
    }
}

/// How a module reference is shown in logs, errors and labels: an
/// `http(s)://` URL without its user information, query and fragment
/// (where tokens and signatures travel).
pub fn shown(written: &Path) -> String {
    let text = written.display().to_string();
    let Some((scheme, rest)) = text.split_once("://") else {
        return text;
    };
    if scheme != "https" && scheme != "http" {
        return text;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    format!("{scheme}://{host}{path}")
}

/// Whether `written` is a URL fetched over the network (`oci://`,
/// `https://`, `http://`), not a path.
pub fn is_url(written: &Path) -> bool {
    written.to_str().is_some_and(|text| {
        ["oci://", "https://", "http://"]
            .iter()
            .any(|scheme| text.starts_with(scheme))
    })
}

/// What `written` names: a URL's scheme decides, else it is a path.
fn source(written: &Path) -> anyhow::Result<Source> {
    let Some(text) = written.to_str() else {
        return Ok(Source::File(written.to_path_buf()));
    };
    if let Some(rest) = text.strip_prefix("oci://") {
        let reference =
            Reference::try_from(rest).map_err(|e| anyhow!("{text}: not an OCI reference: {e}"))?;
        return Ok(Source::Oci(reference));
    }
    if text.starts_with("https://") || text.starts_with("http://") {
        return Ok(Source::Http(text.to_string()));
    }
    if let Some(path) = text.strip_prefix("file://") {
        return Ok(Source::File(path.into()));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        bail!("{text}: modules come from a path, file://, oci://, https:// or http://, not {scheme}://");
    }
    Ok(Source::File(written.to_path_buf()))
}

/// A module's name in the cache and in labels: the last segment of its
/// repository or URL path, without `.wasm`.
fn module_name(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    let name = last.strip_suffix(".wasm").unwrap_or(last);
    if name.is_empty() || name.starts_with('.') {
        "module"
    } else {
        name
    }
}

/// A `sha256` as given (hex, with or without `sha256:`) as a digest.
fn expected_digest(given: &str) -> anyhow::Result<String> {
    let hex = given
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    let digest = format!("sha256:{hex}");
    cache::hex_of(&digest)
        .map(|_| digest.clone())
        .with_context(|| format!("sha256 {given:?} is not 64 hex digits"))
}

/// Refuses a module whose digest is not the one expected.
fn check(expected: Option<&str>, got: &str) -> anyhow::Result<()> {
    match expected {
        Some(expected) if expected != got => Err(DigestMismatch(format!(
            "sha256 mismatch: the configuration says {expected}, the module's bytes are {got}"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Runs `future` to its end, or for `deadline` at most, on a thread and
/// runtime of its own, so that a fetch blocks no proxy worker, whatever
/// thread asks for it.
fn run_apart<F, T>(deadline: Duration, future: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let fetch = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for a module fetch")?;
            let result = runtime
                .block_on(async { tokio::time::timeout(deadline, future).await })
                .unwrap_or_else(|_| Err(anyhow!("no module within {deadline:?}")));
            // A DNS lookup still running is left behind, not waited for.
            runtime.shutdown_background();
            result
        });
        fetch
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the module fetch panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_or_queries() {
        let shown = |text: &str| shown(Path::new(text));
        assert_eq!(
            shown("https://user:tok@modules.example/p/policy.wasm?X-Amz-Signature=s#f"),
            "https://modules.example/p/policy.wasm"
        );
        assert_eq!(
            shown("oci://r.example/team/p:v1"),
            "oci://r.example/team/p:v1"
        );
        assert_eq!(shown("guests/a.wasm"), "guests/a.wasm");
    }

    #[test]
    fn references_name_their_source_and_sha256s_are_checked() {
        assert!(matches!(
            source(Path::new("oci://127.0.0.1:5000/t/p:v1")),
            Ok(Source::Oci(_))
        ));
        assert!(matches!(
            source(Path::new("https://x/p.wasm")),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            source(Path::new("file://a/b.wasm")),
            Ok(Source::File(_))
        ));
        assert!(matches!(source(Path::new("a/b.wasm")), Ok(Source::File(_))));
        assert!(source(Path::new("ftp://x/p.wasm")).is_err());
        assert!(source(Path::new("oci://r.example/Bad Repo:v1")).is_err());
        let hex = "ab".repeat(32);
        assert_eq!(expected_digest(&hex).unwrap(), format!("sha256:{hex}"));
        assert!(expected_digest("abc").is_err());
        assert!(check(Some("sha256:aa"), "sha256:bb")
            .unwrap_err()
            .is::<DigestMismatch>());
        assert_eq!(module_name("team/auth-filter"), "auth-filter");
        assert_eq!(module_name("/x/policy.wasm"), "policy");
        assert_eq!(module_name("/x/.."), "module");
    }
}
