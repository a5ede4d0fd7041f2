//! The set of plugins loaded from the plugins directory, and reloading it without a
//! restart.
//!
//! A plugin's settings come from its grant (`plugins.grants.<name>.settings` of the
//! configuration file) unless the process gave the registry others for it
//! ([`Registry::set_settings`]: the appliance's stored target settings, edited in its web
//! UI); those replace the grant's settings whole. Likewise a pin the process gives
//! ([`Registry::set_pin`]: an administrator trusting an uploaded build) replaces the
//! grant's `sha256`. Everything else a grant holds — directories, HTTP hosts, TLS roots,
//! limits — stays the file's.

use crate::config::PluginsConfig;
use crate::engine::Host;
use crate::load::{LoadError, LoadedPlugin};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// One generation of loaded plugins.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Increases by one on every reload.
    pub generation: u64,
    /// Plugins that loaded, by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Plugins that were refused, with the reason. A refused plugin that had loaded
    /// before stays in [`PluginSet::plugins`] in that earlier version.
    pub refused: Vec<LoadError>,
}

/// The current plugins of a process. Reloading swaps in a new [`PluginSet`]; instances
/// made from an older set keep it alive until they are dropped, so calls in flight
/// finish on the old plugin.
#[derive(Debug)]
pub struct Registry {
    host: Host,
    config: PluginsConfig,
    current: RwLock<Arc<PluginSet>>,
    /// Settings and pins that replace a grant's.
    overrides: RwLock<Overrides>,
}

/// What the process gives the registry in place of the configuration file's grants.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Settings that replace a grant's `settings`, by plugin name.
    pub settings: BTreeMap<String, BTreeMap<String, String>>,
    /// sha256 pins that replace a grant's `sha256`, by plugin name.
    pub pins: BTreeMap<String, String>,
}

impl Registry {
    /// Loads every plugin in `config.dir`.
    pub fn new(host: Host, config: PluginsConfig) -> Registry {
        Registry::with_overrides(host, config, Overrides::default())
    }

    /// Loads every plugin in `config.dir`, with `overrides` in place of what the grants
    /// of the plugins it names say.
    pub fn with_overrides(host: Host, config: PluginsConfig, overrides: Overrides) -> Registry {
        let r = Registry {
            host,
            config,
            current: RwLock::new(Arc::new(PluginSet::default())),
            overrides: RwLock::new(overrides),
        };
        r.reload();
        r
    }

    /// The plugins directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.config.dir
    }

    /// The publisher keys whose signatures are trusted.
    pub fn trusted_keys(&self) -> &[String] {
        &self.config.trusted_keys
    }

    /// Pins `plugin` to the build with this sha256 (hex) in place of its grant's pin, from
    /// the next [`Registry::reload`] on.
    pub fn set_pin(&self, plugin: &str, sha256: &str) {
        let mut o = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        o.pins.insert(plugin.to_owned(), sha256.to_ascii_lowercase());
    }

    /// Loads the plugin files at `wasm` (and its `.toml`) under the current trust and
    /// grants, or trusting exactly the build `pin` instead, without swapping anything in:
    /// to check an uploaded plugin (its manifest, its build, its world, what it requests).
    pub fn load_file(
        &self,
        wasm: &std::path::Path,
        pin: Option<&str>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let mut config = self.effective();
        if let Some(pin) = pin {
            let name = crate::manifest::Manifest::load(&wasm.with_extension("toml"))
                .map(|m| m.name)
                .unwrap_or_default();
            config.grants.entry(name).or_default().sha256 = Some(pin.to_owned());
        }
        self.host.load(wasm, &config)
    }

    /// Gives `plugin` these settings in place of its grant's (`None`: its grant's again),
    /// from the next [`Registry::reload`] on.
    pub fn set_settings(&self, plugin: &str, settings: Option<BTreeMap<String, String>>) {
        let mut o = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        match settings {
            Some(s) => o.settings.insert(plugin.to_owned(), s),
            None => o.settings.remove(plugin),
        };
    }

    /// The configuration plugins are loaded under: the file's, with the settings and pins
    /// given by [`Registry::set_settings`] and [`Registry::set_pin`] in place of the grants'.
    fn effective(&self) -> PluginsConfig {
        let mut config = self.config.clone();
        let o = self.overrides.read().unwrap_or_else(|p| p.into_inner());
        for (name, s) in &o.settings {
            config.grants.entry(name.clone()).or_default().settings = s.clone();
        }
        for (name, pin) in &o.pins {
            config.grants.entry(name.clone()).or_default().sha256 = Some(pin.clone());
        }
        config
    }

    /// Loads the plugin `name` again from the files it was loaded from, with `settings`
    /// in place of its grant's, without swapping it in: to check settings (the manifest's
    /// declarations, then the plugin's own `init`) before they are kept.
    pub fn load_with(
        &self,
        name: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let current = self.get(name).ok_or_else(|| LoadError {
            plugin: name.to_owned(),
            path: self.config.dir.display().to_string(),
            refusal: crate::load::Refusal::Io,
            message: "no such plugin is loaded".into(),
        })?;
        let mut config = self.effective();
        config.grants.entry(name.to_owned()).or_default().settings = settings;
        self.host.load(current.path(), &config)
    }

    /// Loads the plugins directory again and swaps the result in. Returns the new set.
    pub fn reload(&self) -> Arc<PluginSet> {
        let generation = self.current().generation + 1;
        let mut set = PluginSet { generation, ..PluginSet::default() };
        let mut wasm: Vec<_> = match std::fs::read_dir(&self.config.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect(),
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), error = %e, "cannot read the plugins directory");
                Vec::new()
            }
        };
        wasm.sort();
        let config = self.effective();
        for path in wasm {
            match self.host.load(&path, &config) {
                Ok(p) => {
                    if let Some(old) = set.plugins.insert(p.name().to_owned(), p.clone()) {
                        tracing::warn!(plugin = %p.name(), first = %old.path().display(), second = %p.path().display(), "two plugins share a name; using the second");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "plugin refused");
                    set.refused.push(e);
                }
            }
        }
        // A plugin whose new files were refused (a manifest copied before its `.wasm`, a
        // build that is not trusted) keeps working in the version loaded before, until
        // a version that loads replaces it.
        let previous = self.current();
        for e in &set.refused {
            let kept = previous
                .plugins
                .values()
                .find(|p| p.name() == e.plugin || p.path().display().to_string() == e.path);
            if let Some(old) = kept
                && !set.plugins.contains_key(old.name())
            {
                tracing::warn!(plugin = %old.name(), version = %old.manifest().version, "keeping the version loaded before until the new files load");
                set.plugins.insert(old.name().to_owned(), old.clone());
            }
        }
        // Likewise a new load that is not configured (a required setting lost its value)
        // does not replace a configured version that works.
        for (name, p) in set.plugins.iter_mut() {
            if let (Some(why), Some(old)) = (p.unconfigured(), previous.plugins.get(name))
                && old.unconfigured().is_none()
                && !Arc::ptr_eq(old, p)
            {
                tracing::warn!(plugin = %name, reason = %why, "keeping the configured version loaded before");
                *p = old.clone();
            }
        }
        let set = Arc::new(set);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        tracing::info!(
            generation,
            loaded = set.plugins.len(),
            refused = set.refused.len(),
            "plugins reloaded"
        );
        set
    }

    /// The current set.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current plugin called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.current().plugins.get(name).cloned()
    }
}
