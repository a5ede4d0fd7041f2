//! The set of plugins loaded from the plugins directory, and reloading it without a
//! restart.
//!
//! A plugin's settings come from its grant (`plugins.grants.<name>.settings` of the
//! configuration file) unless the process gave the registry others for it
//! ([`Registry::set_settings`]: the appliance's stored target settings, edited in its web
//! UI); those replace the grant's settings whole. Everything else a grant holds — trust,
//! directories, HTTP hosts, limits — stays the file's.

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
    /// Settings that replace a grant's, by plugin name.
    settings: RwLock<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Registry {
    /// Loads every plugin in `config.dir`.
    pub fn new(host: Host, config: PluginsConfig) -> Registry {
        Registry::with_settings(host, config, BTreeMap::new())
    }

    /// Loads every plugin in `config.dir`, with `settings` in place of the grants'
    /// settings of the plugins it names.
    pub fn with_settings(
        host: Host,
        config: PluginsConfig,
        settings: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Registry {
        let r = Registry {
            host,
            config,
            current: RwLock::new(Arc::new(PluginSet::default())),
            settings: RwLock::new(settings),
        };
        r.reload();
        r
    }

    /// Gives `plugin` these settings in place of its grant's (`None`: its grant's again),
    /// from the next [`Registry::reload`] on.
    pub fn set_settings(&self, plugin: &str, settings: Option<BTreeMap<String, String>>) {
        let mut all = self.settings.write().unwrap_or_else(|p| p.into_inner());
        match settings {
            Some(s) => all.insert(plugin.to_owned(), s),
            None => all.remove(plugin),
        };
    }

    /// The configuration plugins are loaded under: the file's, with the settings given
    /// by [`Registry::set_settings`] in place of the grants' settings.
    fn effective(&self) -> PluginsConfig {
        let mut config = self.config.clone();
        for (name, s) in self.settings.read().unwrap_or_else(|p| p.into_inner()).iter() {
            config.grants.entry(name.clone()).or_default().settings = s.clone();
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
