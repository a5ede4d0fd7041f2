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
//!
//! # manifest_version 2 and later: the settings `init` takes, so that the appliance
//! # can show a form for them (the web UI's target step).
//! [[settings]]
//! name = "account_url"      # the key handed to init
//! type = "url"              # string, integer, boolean or url
//! label = "Storage account URL"
//! help = "https://<account>.blob.core.windows.net"
//! required = true
//! [[settings]]
//! name = "account_key"
//! type = "string"
//! label = "Account key"
//! secret = true             # stored sealed, never shown again; no default
//! ```

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// Manifest versions this build reads: 2 adds `[[settings]]`.
pub const MANIFEST_VERSIONS: &[i64] = &[1, 2];

/// The first manifest version that may declare `[[settings]]`.
pub const SETTINGS_SINCE: i64 = 2;

/// Most settings a manifest declares.
pub const MAX_SETTINGS: usize = 32;

/// The type of a declared setting (what the form asks for; `init` gets its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    /// Any text (one line).
    String,
    /// A whole number (i64).
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An `http://` or `https://` URL.
    Url,
}

/// One setting a plugin's `init` takes, as its manifest declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingSpec {
    /// The key handed to `init`: a lowercase letter, then letters, digits or `_` (at most 64).
    pub name: String,
    /// What kind of value it takes.
    #[serde(rename = "type")]
    pub kind: SettingType,
    /// What the form calls it (1 to 80 characters).
    pub label: String,
    /// A sentence on what it is for (at most 500 characters).
    #[serde(default)]
    pub help: Option<String>,
    /// The value used when none is given (of the setting's type; never for a secret).
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// A secret (a key, a password): stored sealed, never shown again (strings and URLs only).
    #[serde(default)]
    pub secret: bool,
    /// The plugin cannot work without it.
    #[serde(default)]
    pub required: bool,
    /// Rarely changed: a form shows it folded away under "More settings" (a required
    /// setting is never folded away).
    #[serde(default)]
    pub advanced: bool,
}

fn printable(text: &str, max: usize) -> bool {
    text.chars().count() <= max && !text.chars().any(char::is_control)
}

impl SettingSpec {
    fn validate(&self, at: &str) -> Result<(), String> {
        let name_ok = self.name.len() <= 64
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(format!(
                "{at}.name {:?}: a lowercase letter, then lowercase letters, digits or `_` (at most 64)",
                self.name
            ));
        }
        if self.label.trim().is_empty() || !printable(&self.label, 80) {
            return Err(format!("{at}.label: expected 1 to 80 characters, no control characters"));
        }
        if let Some(h) = &self.help
            && !printable(h, 500)
        {
            return Err(format!(
                "{at}.help: expected at most 500 characters, no control characters"
            ));
        }
        if self.advanced && self.required {
            return Err(format!("{at}.advanced: a required setting cannot be folded away"));
        }
        if self.secret && !matches!(self.kind, SettingType::String | SettingType::Url) {
            return Err(format!("{at}.secret: only a string or url setting can be a secret"));
        }
        if let Some(d) = &self.default {
            if self.secret {
                return Err(format!("{at}.default: a secret has no default"));
            }
            let text = match d {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "{at}.default: expected a string, an integer or a boolean"
                    ));
                }
            };
            let matches = match self.kind {
                SettingType::String | SettingType::Url => matches!(d, toml::Value::String(_)),
                SettingType::Integer => matches!(d, toml::Value::Integer(_)),
                SettingType::Boolean => matches!(d, toml::Value::Boolean(_)),
            };
            if !matches {
                return Err(format!("{at}.default: {text:?} is not of type {:?}", self.kind));
            }
            self.check_value(&text).map_err(|e| format!("{at}.default: {e}"))?;
        }
        Ok(())
    }

    /// Checks a value given for this setting (as text, the form `init` gets it in).
    pub fn check_value(&self, value: &str) -> Result<(), String> {
        if !printable(value, 4096) {
            return Err("expected at most 4096 characters, no control characters".into());
        }
        match self.kind {
            SettingType::String => Ok(()),
            SettingType::Integer => value
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| format!("{value:?} is not a whole number")),
            SettingType::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("{value:?} is not true or false")),
            },
            SettingType::Url => {
                let rest = value
                    .strip_prefix("https://")
                    .or_else(|| value.strip_prefix("http://"))
                    .ok_or_else(|| format!("{value:?}: expected an http:// or https:// URL"))?;
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() || host.contains(char::is_whitespace) || host.contains('@') {
                    return Err(format!(
                        "{value:?}: expected a host after the scheme (and no user)"
                    ));
                }
                Ok(())
            }
        }
    }

    /// [`SettingSpec::check_value`] for a value given by someone: a secret's value is never
    /// echoed, not even in the error.
    pub fn check_given(&self, value: &str) -> Result<(), String> {
        self.check_value(value).map_err(|e| {
            if self.secret {
                format!("not a valid {} value", format!("{:?}", self.kind).to_lowercase())
            } else {
                e
            }
        })
    }

    /// The default as the text `init` gets, if there is one.
    pub fn default_text(&self) -> Option<String> {
        self.default.as_ref().map(|d| match d {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

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
    /// The settings its `init` takes (manifest_version 2 and later).
    #[serde(default)]
    pub settings: Vec<SettingSpec>,
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
    /// Virtual disks attached to the appliance, through the `host-disks` import (targets
    /// whose replicas are a hypervisor's disks); what resolves is what the grant's
    /// `attached_disks` says.
    #[serde(default)]
    pub attached_disks: bool,
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

/// Whether `name` may name a plugin (and its files): 1-64 ASCII letters, digits, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manifest {
    /// The declared setting `name`; else the names it declares, comma-separated (for the
    /// error).
    pub fn setting_spec(&self, name: &str) -> Result<&SettingSpec, String> {
        self.settings.iter().find(|s| s.name == name).ok_or_else(|| {
            self.settings.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        })
    }

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
        if !valid_name(&self.name) {
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
        if !self.settings.is_empty() && self.manifest_version < SETTINGS_SINCE {
            return Err(format!(
                "settings: declared by a manifest_version {} manifest; settings need \
                 manifest_version = {SETTINGS_SINCE}",
                self.manifest_version
            ));
        }
        if self.settings.len() > MAX_SETTINGS {
            return Err(format!("settings: more than {MAX_SETTINGS}"));
        }
        for (i, s) in self.settings.iter().enumerate() {
            s.validate(&format!("settings[{i}]"))?;
            if self.settings[..i].iter().any(|o| o.name == s.name) {
                return Err(format!("settings[{i}].name {:?}: declared twice", s.name));
            }
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
            GOOD.replace("manifest_version = 1", "manifest_version = 3"),
        ] {
            let (_d, p) = write(&bad);
            assert!(Manifest::load(&p).is_err(), "accepted: {bad}");
        }
    }

    const SETTINGS: &str = r#"
[[settings]]
name = "account_url"
type = "url"
label = "Storage account URL"
help = "https://<account>.blob.core.windows.net"
required = true
[[settings]]
name = "account_key"
type = "string"
label = "Account key"
secret = true
[[settings]]
name = "parallel"
type = "integer"
label = "Parallel requests"
default = 8
[[settings]]
name = "verify"
type = "boolean"
label = "Read back after writing"
default = false
advanced = true
"#;

    #[test]
    fn version_2_declares_settings() {
        let v2 = GOOD.replace("manifest_version = 1", "manifest_version = 2");
        let (_d, p) = write(&format!("{v2}{SETTINGS}"));
        let m = Manifest::load(&p).unwrap();
        let names: Vec<_> = m.settings.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["account_url", "account_key", "parallel", "verify"]);
        assert_eq!((m.settings[0].kind, m.settings[0].required), (SettingType::Url, true));
        assert!(m.settings[1].secret && m.settings[1].default.is_none());
        assert_eq!(m.settings[2].default_text().as_deref(), Some("8"));
        assert_eq!(m.settings[3].default_text().as_deref(), Some("false"));
        assert!(m.settings[3].advanced && !m.settings[0].advanced);
        // Values are checked against their type.
        assert!(m.settings[0].check_value("https://acct.blob.core.windows.net").is_ok());
        for bad in ["ftp://x", "https://", "https://user@host", "acct.blob", "https://a b"] {
            assert!(m.settings[0].check_value(bad).is_err(), "{bad}");
        }
        assert!(
            m.settings[2].check_value("12").is_ok() && m.settings[2].check_value("1.5").is_err()
        );
        assert!(
            m.settings[3].check_value("true").is_ok() && m.settings[3].check_value("yes").is_err()
        );
        assert!(m.settings[1].check_value("line\nbreak").is_err());
        // A version 1 manifest has none.
        assert!(Manifest::load(&write(GOOD).1).unwrap().settings.is_empty());
    }

    #[test]
    fn malformed_settings_are_refused_naming_the_field() {
        let v2 = GOOD.replace("manifest_version = 1", "manifest_version = 2");
        let one = |body: &str| format!("{v2}[[settings]]\n{body}\n");
        let cases = [
            // Settings in a version 1 manifest.
            (format!("{GOOD}{SETTINGS}"), "manifest_version = 2"),
            (one("name = \"Key\"\ntype = \"string\"\nlabel = \"k\""), "settings[0].name"),
            (one("name = \"1k\"\ntype = \"string\"\nlabel = \"k\""), "settings[0].name"),
            (one("name = \"k\"\ntype = \"float\"\nlabel = \"k\""), "float"),
            (one("name = \"k\"\ntype = \"string\"\nlabel = \"\""), "settings[0].label"),
            (one("name = \"k\"\ntype = \"string\"\nlabel = \"a\\u0007\""), "settings[0].label"),
            (one("name = \"k\"\ntype = \"string\""), "label"),
            (
                one(
                    "name = \"k\"\ntype = \"string\"\nlabel = \"k\"\nsecret = true\ndefault = \"x\"",
                ),
                "a secret has no default",
            ),
            (
                one(
                    "name = \"k\"\ntype = \"string\"\nlabel = \"k\"\nrequired = true\nadvanced = true",
                ),
                "settings[0].advanced",
            ),
            (
                one("name = \"k\"\ntype = \"integer\"\nlabel = \"k\"\nsecret = true"),
                "settings[0].secret",
            ),
            (
                one("name = \"k\"\ntype = \"integer\"\nlabel = \"k\"\ndefault = \"8\""),
                "settings[0].default",
            ),
            (
                one("name = \"k\"\ntype = \"url\"\nlabel = \"k\"\ndefault = \"nowhere\""),
                "settings[0].default",
            ),
            (
                one("name = \"k\"\ntype = \"string\"\nlabel = \"k\"\ndefault = [1]"),
                "settings[0].default",
            ),
            (one("name = \"k\"\ntype = \"string\"\nlabel = \"k\"\ncolour = \"red\""), "colour"),
            (
                format!(
                    "{}[[settings]]\nname = \"k\"\ntype = \"string\"\nlabel = \"again\"\n",
                    one("name = \"k\"\ntype = \"string\"\nlabel = \"k\"")
                ),
                "declared twice",
            ),
            (
                format!(
                    "{v2}{}",
                    "[[settings]]\nname = \"k\"\ntype = \"string\"\nlabel = \"k\"\n".repeat(33)
                ),
                "more than 32",
            ),
        ];
        for (text, want) in cases {
            let (_d, p) = write(&text);
            let e = Manifest::load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("p.toml"), "want {want:?} in: {e}");
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
