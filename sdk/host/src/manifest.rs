//! The plugin manifest: `<name>.toml` next to `<name>.wasm`.
//!
//! ```toml
//! manifest_version = 1
//! name = "zstd"
//! version = "0.1.0"
//! kind = "codec"
//! wit = "lifeboat:plugins@0.1.0"
//! sha256 = "9f2c…"          # of the .wasm; detects corruption, is not trust
//! signature = "ab12…"       # optional ed25519 signature, see `trust`
//!
//! [capabilities]
//! memory_mib = 256          # linear memory limit
//! deadline_ms = 30000       # per call
//! directories = ["/target"] # guest paths it wants preopened
//! http_hosts = ["127.0.0.1:10000"]
//! commands = []             # quiescers: programs it runs
//! sockets = []              # quiescers: loopback/unix addresses it connects to
//! ```

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// Manifest versions this build reads.
pub const MANIFEST_VERSIONS: &[i64] = &[1];

/// WIT package versions this host implements. A plugin built against any of them loads.
pub const WIT_VERSIONS: &[&str] = &["lifeboat:plugins@0.1.0"];

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Compression.
    Codec,
    /// Encryption.
    Cipher,
    /// Replica storage.
    Target,
    /// App-consistency.
    Quiescer,
    /// A recovery plan's pre or post action.
    Action,
}

impl PluginKind {
    /// The export the component must provide, in `lifeboat:plugins/<iface>@<version>` form.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Codec => "codec",
            PluginKind::Cipher => "cipher",
            PluginKind::Target => "target",
            PluginKind::Quiescer => "quiescer",
            PluginKind::Action => "action",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// A plugin's description of itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Version of this manifest format (1).
    pub manifest_version: i64,
    /// Plugin name: what the configuration refers to. Letters, digits, `-`, `_`.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// The world it implements.
    pub kind: PluginKind,
    /// The WIT package version it was built against, e.g. `lifeboat:plugins@0.1.0`.
    pub wit: String,
    /// Lowercase hex sha256 of the `.wasm` file.
    pub sha256: String,
    /// Hex ed25519 signature of [`Manifest::signed_message`] by a publisher key.
    #[serde(default)]
    pub signature: Option<String>,
    /// What the plugin asks to be granted.
    #[serde(default)]
    pub capabilities: Requested,
}

/// Capabilities a plugin asks for. Nothing is granted unless the configuration grants it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    /// Linear memory limit in MiB (default 256).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Per-call deadline in milliseconds (default 30000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Guest paths of directories it wants preopened, e.g. `/target`.
    #[serde(default)]
    pub directories: Vec<String>,
    /// `host:port` authorities it sends HTTP requests to; `"*"` means "those the
    /// configuration grants" (for targets whose endpoints depend on the site).
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// Programs it runs through the `commands` import (quiescers); `"*"` means "those the
    /// configuration grants" (a script quiescer runs the site's own scripts).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Socket addresses (`127.0.0.1:5432`) it connects to (quiescers); `"*"` means
    /// "those the configuration grants" (a database's address belongs to the site).
    #[serde(default)]
    pub sockets: Vec<String>,
    /// Real wall and monotonic clocks (otherwise they read zero).
    #[serde(default)]
    pub clock: bool,
}

/// Why a manifest is unusable.
#[derive(Debug, thiserror::Error)]
#[error("plugin manifest {path}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |message: String| ManifestError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let m: Manifest = lifeboat_common::config::parse(path, &text, MANIFEST_VERSIONS)
            .map_err(|e| err(e.to_string()))?;
        m.validate().map_err(err)?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        if !MANIFEST_VERSIONS.contains(&self.manifest_version) {
            return Err(format!(
                "manifest_version {} is not supported (supported: {MANIFEST_VERSIONS:?})",
                self.manifest_version
            ));
        }
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "name {:?}: use 1-64 ASCII letters, digits, `-` or `_`",
                self.name
            ));
        }
        if !WIT_VERSIONS.contains(&self.wit.as_str()) {
            return Err(format!(
                "wit = {:?} is not implemented by this host (it implements {WIT_VERSIONS:?}); \
                 rebuild the plugin against a supported version",
                self.wit
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("sha256: expected 64 hex digits".into());
        }
        for d in &self.capabilities.directories {
            if !d.starts_with('/') || d.split('/').any(|c| c == "..") {
                return Err(format!(
                    "capabilities.directories: {d:?} must be an absolute guest path without `..`"
                ));
            }
        }
        Ok(())
    }

    /// The bytes a publisher signs: identity, kind, contract and content hash, so a
    /// signature cannot be moved to another plugin or another build.
    pub fn signed_message(&self) -> Vec<u8> {
        format!(
            "lifeboat-plugin-signature-v1\nname={}\nversion={}\nkind={}\nwit={}\nsha256={}\n",
            self.name,
            self.version,
            self.kind,
            self.wit,
            self.sha256.to_ascii_lowercase()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    const GOOD: &str = r#"
manifest_version = 1
name = "zstd"
version = "0.1.0"
kind = "codec"
wit = "lifeboat:plugins@0.1.0"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[capabilities]
memory_mib = 64
"#;

    #[test]
    fn good_manifest_loads() {
        let (_d, p) = write(GOOD);
        let m = Manifest::load(&p).unwrap();
        assert_eq!(m.kind, PluginKind::Codec);
        assert_eq!(m.capabilities.memory_mib, Some(64));
    }

    #[test]
    fn unknown_key_is_refused_with_file_name() {
        let (_d, p) = write(&format!("{GOOD}\nnetwork = true\n"));
        let e = Manifest::load(&p).unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("network"), "{e}");
    }

    #[test]
    fn unsupported_wit_version_is_refused() {
        let (_d, p) = write(&GOOD.replace("@0.1.0", "@9.0.0"));
        let e = Manifest::load(&p).unwrap_err().to_string();
        assert!(e.contains("9.0.0") && e.contains("rebuild"), "{e}");
    }

    #[test]
    fn bad_kind_name_hash_and_dir_are_refused() {
        for bad in [
            GOOD.replace("\"codec\"", "\"compressor\""),
            GOOD.replace("\"zstd\"", "\"../zstd\""),
            GOOD.replace("0000000000", "zz"),
            format!("{GOOD}directories = [\"../etc\"]\n"),
            GOOD.replace("manifest_version = 1", "manifest_version = 2"),
        ] {
            let (_d, p) = write(&bad);
            assert!(Manifest::load(&p).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn signed_message_binds_identity_and_hash() {
        let (_d, p) = write(GOOD);
        let m = Manifest::load(&p).unwrap();
        let msg = String::from_utf8(m.signed_message()).unwrap();
        assert!(
            msg.contains("name=zstd") && msg.contains("kind=codec") && msg.contains("sha256=0000")
        );
    }
}
