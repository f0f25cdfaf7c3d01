//! The module cache on disk, content-addressed: a pulled module's bytes
//! under `sha256/<hex>/<name>.wasm`, what a manifest digest pulled under
//! `manifests/<hex>`, and the manifest a tag last resolved to under
//! `tags/<reference>`. Files are written whole (a temporary file renamed),
//! so a crash never leaves a half-written module where a later start
//! would find it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The hex of a `sha256:<hex>` digest, if it is one (64 lower-case hex
/// digits: nothing else may become a file name).
pub(crate) fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// The cache in a directory.
#[derive(Debug, Clone)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ModuleCache { dir }
    }

    /// Where the module of digest `digest` named `name` is kept.
    pub(crate) fn module_path(&self, digest: &str, name: &str) -> Option<PathBuf> {
        Some(
            self.dir
                .join("sha256")
                .join(hex_of(digest)?)
                .join(format!("{name}.wasm")),
        )
    }

    /// The module of `digest` named `name`, if the cache holds it (its
    /// bytes checked against the digest: a file changed on disk is not
    /// served).
    pub(crate) fn module(&self, digest: &str, name: &str) -> Option<PathBuf> {
        let path = self.module_path(digest, name)?;
        let bytes = std::fs::read(&path).ok()?;
        (self::digest(&bytes) == digest).then_some(path)
    }

    /// Keeps `bytes` (of digest `digest`) as module `name`.
    pub(crate) fn put_module(
        &self,
        digest: &str,
        name: &str,
        bytes: &[u8],
    ) -> anyhow::Result<PathBuf> {
        let path = self
            .module_path(digest, name)
            .context("not a sha256 digest")?;
        write_whole(&path, bytes)?;
        Ok(path)
    }

    /// The module digest a manifest of digest `manifest` held, if pulled
    /// before.
    pub(crate) fn manifest(&self, manifest: &str) -> Option<String> {
        let path = self.dir.join("manifests").join(hex_of(manifest)?);
        let text = std::fs::read_to_string(path).ok()?;
        let module = text.trim();
        hex_of(module).map(|_| module.to_string())
    }

    /// Records that manifest `manifest` holds module `module`.
    pub(crate) fn put_manifest(&self, manifest: &str, module: &str) -> anyhow::Result<()> {
        let hex = hex_of(manifest).context("not a sha256 digest")?;
        write_whole(&self.dir.join("manifests").join(hex), module.as_bytes())
    }

    /// The manifest digest `reference` (a tag) last resolved to.
    pub(crate) fn tag(&self, reference: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_path(reference)).ok()?;
        let manifest = text.trim();
        hex_of(manifest).map(|_| manifest.to_string())
    }

    /// Records that `reference` (a tag) resolved to `manifest`.
    pub(crate) fn put_tag(&self, reference: &str, manifest: &str) -> anyhow::Result<()> {
        write_whole(&self.tag_path(reference), manifest.as_bytes())
    }

    /// A tag's file: its reference with every byte but `[A-Za-z0-9._-]`
    /// escaped, so no reference names a path outside `tags/`.
    fn tag_path(&self, reference: &str) -> PathBuf {
        let name: String = reference
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        self.dir.join("tags").join(name)
    }
}

/// Writes `bytes` to `path` whole: to a temporary file beside it, then
/// renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a cache path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut temporary = tempfile_in(dir)?;
    temporary
        .1
        .write_all(bytes)
        .and_then(|()| temporary.1.sync_all())
        .with_context(|| format!("writing {}", temporary.0.display()))?;
    std::fs::rename(&temporary.0, path)
        .with_context(|| format!("renaming {} to {}", temporary.0.display(), path.display()))
}

/// A new file in `dir` with a name no other writer uses.
fn tempfile_in(dir: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_manifests_and_tags_come_back_as_kept_and_checked() {
        let dir = std::env::temp_dir().join(format!("module-cache-test-{}", std::process::id()));
        let cache = ModuleCache::new(dir.clone());
        let bytes = b"\0asm\x01\0\0\0";
        let module = digest(bytes);
        assert_eq!(cache.module(&module, "policy"), None);
        let path = cache.put_module(&module, "policy", bytes).unwrap();
        assert_eq!(cache.module(&module, "policy"), Some(path.clone()));
        // Bytes changed on disk are not served.
        std::fs::write(&path, b"other").unwrap();
        assert_eq!(cache.module(&module, "policy"), None);
        let manifest = digest(b"manifest");
        cache.put_manifest(&manifest, &module).unwrap();
        assert_eq!(cache.manifest(&manifest), Some(module.clone()));
        cache
            .put_tag("127.0.0.1:5000/team/../x:v1", &manifest)
            .unwrap();
        assert_eq!(cache.tag("127.0.0.1:5000/team/../x:v1"), Some(manifest));
        assert!(std::fs::read_dir(dir.join("tags")).unwrap().count() == 1);
        assert_eq!(hex_of("sha256:../../etc"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
