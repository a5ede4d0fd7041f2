//! The target this appliance replicates to, as the administrator chose and set it up from
//! the API (`PUT /api/v1/target`, the web UI's target step).
//!
//! The configuration file names a target plugin (`[process_server] target`,
//! `[master_target] target`) and grants it what it may reach (`[plugins.grants.<name>]`:
//! trust, directories, HTTP hosts). An administrator may then choose another installed
//! target plugin, until the first machine registers, and set its settings at any time;
//! both are kept in the state store and win over the file:
//!
//! - the choice: the setting `target_plugin`, read by the process server and the master
//!   target whenever they make a new target instance ([`chosen`]);
//! - the settings: table `plugin_settings`, one row per setting; they replace the grant's
//!   `settings` whole ([`Registry::set_settings`]). A setting the manifest declares
//!   `secret` is stored sealed with the active data key (AES-256-GCM, the name of the
//!   plugin and setting bound in as associated data, the format of
//!   [`crate::control::seal`]) and never shown again by the API.
//!
//! Sealing protects the secrets in a copy of `state.db` (a backup, a support bundle): the
//! data keys live beside it in `<data_dir>/keys`, so whoever holds the whole data
//! directory holds both.

use crate::store::{State, StateError};
use lifeboat_plugin_host::keys::KeyRing;
use lifeboat_plugin_host::manifest::Manifest;
use lifeboat_plugin_host::registry::Registry;
use std::collections::BTreeMap;

/// The state setting naming the chosen target plugin.
pub const CHOICE: &str = "target_plugin";

/// Settings of one plugin, by name.
pub type Settings = BTreeMap<String, String>;

/// Why stored plugin settings could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// The state store refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// A sealed value does not open (another appliance's database, or its key is gone).
    #[error(
        "the stored setting {plugin}.{name} does not open with this appliance's data keys ({source}); \
         set the plugin's settings again (PUT /api/v1/target)"
    )]
    Sealed {
        /// The plugin.
        plugin: String,
        /// The setting.
        name: String,
        /// Why.
        source: crate::control::ControlError,
    },
    /// A stored value is not text.
    #[error("the stored setting {plugin}.{name} is not UTF-8")]
    NotText {
        /// The plugin.
        plugin: String,
        /// The setting.
        name: String,
    },
}

fn aad_name(plugin: &str, name: &str) -> String {
    format!("plugin-setting/{plugin}/{name}")
}

/// The target plugin the roles of this appliance use: the stored choice, else the one the
/// configuration file names (`configured`).
pub fn chosen(state: &State, configured: &str) -> String {
    match state.setting(CHOICE) {
        Ok(Some(name)) => name,
        Ok(None) => configured.to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the chosen target; using the configured one");
            configured.to_owned()
        }
    }
}

/// Every plugin's stored settings, secrets opened; and why the settings of plugins left
/// out could not be read (a sealed value that does not open: a database restored without
/// its keys). Those plugins keep their grant's settings, so the appliance still starts
/// and the administrator sets them again.
pub fn stored(
    state: &State,
    keys: &KeyRing,
) -> Result<(BTreeMap<String, Settings>, Vec<TargetsError>), StateError> {
    let mut out: BTreeMap<String, Settings> = BTreeMap::new();
    let mut bad: BTreeMap<String, TargetsError> = BTreeMap::new();
    for (plugin, name, value, sealed) in state.plugin_settings()? {
        let opened = if sealed {
            crate::control::open(keys, &aad_name(&plugin, &name), &value).map_err(|source| {
                TargetsError::Sealed { plugin: plugin.clone(), name: name.clone(), source }
            })
        } else {
            Ok(value)
        };
        let text = opened.and_then(|b| {
            String::from_utf8(b)
                .map_err(|_| TargetsError::NotText { plugin: plugin.clone(), name: name.clone() })
        });
        match text {
            Ok(t) => {
                out.entry(plugin).or_default().insert(name, t);
            }
            Err(e) => {
                bad.entry(plugin).or_insert(e);
            }
        }
    }
    for p in bad.keys() {
        out.remove(p);
    }
    Ok((out, bad.into_values().collect()))
}

/// Stores `settings` as `plugin`'s (replacing what was stored), sealing those its manifest
/// declares secret.
pub fn store(
    state: &State,
    keys: &KeyRing,
    manifest: &Manifest,
    settings: &Settings,
) -> Result<(), TargetsError> {
    let plugin = &manifest.name;
    let mut rows = Vec::with_capacity(settings.len());
    for (name, value) in settings {
        let secret = manifest.settings.iter().any(|s| &s.name == name && s.secret);
        let stored = if secret {
            crate::control::seal(keys, &aad_name(plugin, name), value.as_bytes()).map_err(
                |source| TargetsError::Sealed {
                    plugin: plugin.clone(),
                    name: name.clone(),
                    source,
                },
            )?
        } else {
            value.clone().into_bytes()
        };
        rows.push((name.clone(), stored, secret));
    }
    state.set_plugin_settings(plugin, &rows)?;
    Ok(())
}

/// Gives the registry the stored settings of every plugin that has some.
pub fn apply(registry: &Registry, stored: BTreeMap<String, Settings>) {
    for (plugin, s) in stored {
        registry.set_settings(&plugin, Some(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_plugin_host::keys::{Algorithm, Key};

    fn keys(material: u8) -> KeyRing {
        KeyRing::new(vec![Key::new("dk-1", Algorithm::Aes256Gcm, &[material; 32], true)])
    }

    fn manifest() -> Manifest {
        let text = r#"
manifest_version = 2
name = "azure"
version = "0.1.0"
kind = "target"
wit = "lifeboat:plugins@0.1.0"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[settings]]
name = "account"
type = "string"
label = "Account"
[[settings]]
name = "key"
type = "string"
label = "Key"
secret = true
"#;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("azure.toml");
        std::fs::write(&p, text).unwrap();
        Manifest::load(&p).unwrap()
    }

    #[test]
    fn secrets_are_sealed_at_rest_and_open_only_with_the_appliances_keys() {
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("state.db")).unwrap();
        let s: Settings = [("account", "acct"), ("key", "c2VjcmV0LWtleS12YWx1ZQ==")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        store(&state, &keys(7), &manifest(), &s).unwrap();
        assert_eq!(stored(&state, &keys(7)).unwrap().0["azure"], s);
        // At rest: the secret's text is nowhere in the database; the plain setting is.
        state.flush().unwrap();
        drop(state);
        let mut raw = Vec::new();
        for f in ["state.db", "state.db-wal"] {
            raw.extend(std::fs::read(d.path().join(f)).unwrap_or_default());
        }
        let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"acct") && !has(b"c2VjcmV0LWtleS12YWx1ZQ=="));
        // Another appliance's keys do not open it: the plugin's stored settings are left
        // out (the appliance still starts), saying what to do.
        let state = State::open(&d.path().join("state.db")).unwrap();
        let (open, bad) = stored(&state, &keys(8)).unwrap();
        assert!(open.is_empty());
        let e = bad[0].to_string();
        assert!(e.contains("azure.key") && e.contains("PUT /api/v1/target"), "{e}");
        // Storing again replaces everything stored before.
        let fewer: Settings = [("account".to_string(), "other".to_string())].into();
        store(&state, &keys(7), &manifest(), &fewer).unwrap();
        assert_eq!(stored(&state, &keys(7)).unwrap().0["azure"], fewer);
    }

    #[test]
    fn the_choice_falls_back_to_the_configured_target() {
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("state.db")).unwrap();
        assert_eq!(chosen(&state, "local"), "local");
        state.set_setting(CHOICE, "azure").unwrap();
        assert_eq!(chosen(&state, "local"), "azure");
    }
}
