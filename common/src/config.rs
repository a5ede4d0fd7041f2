//! Loading versioned TOML configuration files.
//!
//! Each file starts with `config_version = N`. A loader reads that key first, refuses a
//! version it does not know (naming the versions it does), then deserialises the whole
//! file into the role's struct, whose types use `#[serde(deny_unknown_fields)]` so that a
//! misspelt key is an error rather than a silently ignored setting.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the expected shape.
    #[error("configuration file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key and line (from the TOML parser).
        message: String,
    },
    /// The file declares a version this build does not understand.
    #[error(
        "configuration file {path}: config_version = {found} is not supported by this build \
         (supported: {supported:?}); upgrade Lifeboat or rewrite the file for a supported version"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version the file declares.
        found: i64,
        /// Versions this build reads.
        supported: Vec<i64>,
    },
}

/// Parses `text` (read from `path`, used in messages) as configuration of one of the
/// `supported` versions. A missing `config_version` means the newest supported version.
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    supported: &[i64],
) -> Result<T, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if let Some(v) = table.get("config_version") {
        let found = v.as_integer().ok_or_else(|| {
            invalid("key `config_version`: expected an integer such as 1".to_owned())
        })?;
        if !supported.contains(&found) {
            return Err(ConfigError::Version {
                path: path.to_owned(),
                found,
                supported: supported.to_vec(),
            });
        }
    }
    toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))
}

/// Reads and parses the file at `path`; see [`parse`].
pub fn load<T: DeserializeOwned>(path: &Path, supported: &[i64]) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text, supported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        #[allow(dead_code)]
        config_version: i64,
        #[serde(default = "default_port")]
        port: u16,
    }
    fn default_port() -> u16 {
        9443
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let s: Sample = parse(Path::new("a.toml"), "", &[1]).unwrap();
        assert_eq!(s.port, 9443);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse::<Sample>(Path::new("/etc/x.toml"), "prot = 1\n", &[1]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/x.toml"), "{m}");
        assert!(m.contains("prot"), "{m}");
    }

    #[test]
    fn wrong_type_says_what_is_expected() {
        let e = parse::<Sample>(Path::new("x.toml"), "port = \"high\"\n", &[1]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("port") && m.contains("expected u16"), "{m}");
    }

    #[test]
    fn unsupported_version_is_refused() {
        let e = parse::<Sample>(Path::new("x.toml"), "config_version = 7\n", &[1]).unwrap_err();
        assert!(matches!(e, ConfigError::Version { found: 7, .. }), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load::<Sample>(Path::new("/nonexistent/lifeboat.toml"), &[1]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lifeboat.toml"));
    }
}
