//! The set of plugins loaded from the plugins directory, and reloading it without a
//! restart.

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
}

impl Registry {
    /// Loads every plugin in `config.dir`.
    pub fn new(host: Host, config: PluginsConfig) -> Registry {
        let r = Registry { host, config, current: RwLock::new(Arc::new(PluginSet::default())) };
        r.reload();
        r
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
        for path in wasm {
            match self.host.load(&path, &self.config) {
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
