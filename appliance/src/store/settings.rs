//! Recovery plans, protection policies, appliance settings and counters.

use super::{CachedRow, Sqlite, State, StateError};
use lifeboat_api::Policy;
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};

/// A stored plugin setting: (plugin, name, value, sealed).
pub type PluginSettingRow = (String, String, Vec<u8>, bool);

super::backend_trait! {
    /// Recovery plans, policies, appliance settings and counters.
    SettingStore {
        /// Creates or replaces a recovery plan (JSON of `Plan`).
        fn set_plan(&self, name: &str, json: &str) -> Result<(), StateError>;

        /// Recovery plans as (name, JSON), by name.
        fn plans(&self) -> Result<Vec<(String, String)>, StateError>;

        /// Deletes a recovery plan; false if there was none.
        fn delete_plan(&self, name: &str) -> Result<bool, StateError>;

        /// Creates or replaces a policy (JSON of `Policy`).
        fn set_policy(&self, name: &str, json: &str) -> Result<(), StateError>;

        /// Stored policies as (name, JSON), by name (`default` only once it was set).
        fn policies(&self) -> Result<Vec<(String, String)>, StateError>;

        /// Deletes a policy no machine uses; false if a machine uses it (nothing deleted).
        fn delete_policy(&self, name: &str) -> Result<bool, StateError>;

        /// Sets an appliance-wide value.
        fn set_setting(&self, name: &str, value: &str) -> Result<(), StateError>;

        /// An appliance-wide value, if set.
        fn setting(&self, name: &str) -> Result<Option<String>, StateError>;

        /// Replaces every stored setting of `plugin` with `values`: (name, value, sealed),
        /// a sealed value being ciphertext. Empty `values`: the plugin has none stored.
        fn set_plugin_settings(
            &self,
            plugin: &str,
            values: &[(String, Vec<u8>, bool)],
        ) -> Result<(), StateError>;

        /// Every stored plugin setting: (plugin, name, value, sealed), by plugin and name.
        fn plugin_settings(&self) -> Result<Vec<PluginSettingRow>, StateError>;

        /// Pins `plugin` to the build `sha256`, trusted by the administrator `by`.
        fn set_plugin_pin(&self, plugin: &str, sha256: &str, by: &str) -> Result<(), StateError>;

        /// Every pin set from the API: (plugin, sha256), by plugin.
        fn plugin_pins(&self) -> Result<Vec<(String, String)>, StateError>;
    }
}

impl SettingStore for Sqlite {
    fn set_plan(&self, name: &str, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO plans (name, plan) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET plan = ?2",
                params![name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn plans(&self) -> Result<Vec<(String, String)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT name, plan FROM plans ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn delete_plan(&self, name: &str) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM plans WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn set_policy(&self, name: &str, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO policies (name, policy) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET policy = ?2",
                params![name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn policies(&self) -> Result<Vec<(String, String)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT name, policy FROM policies ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn delete_policy(&self, name: &str) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let used: i64 = tx
            .row_cached("SELECT COUNT(*) FROM machines WHERE policy = ?1", params![name], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        if used > 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM policies WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = ?2",
                params![name, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    fn set_plugin_settings(
        &self,
        plugin: &str,
        values: &[(String, Vec<u8>, bool)],
    ) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM plugin_settings WHERE plugin = ?1", params![plugin])
            .map_err(|e| self.err(e))?;
        for (name, value, sealed) in values {
            tx.execute(
                "INSERT INTO plugin_settings (plugin, name, value, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![plugin, name, value, sealed],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn set_plugin_pin(&self, plugin: &str, sha256: &str, by: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO plugin_pins (plugin, sha256, pinned_by, pinned_unix_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plugin) DO UPDATE SET sha256 = ?2, pinned_by = ?3, pinned_unix_ms = ?4",
                params![plugin, sha256, by, super::now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn plugin_pins(&self) -> Result<Vec<(String, String)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT plugin, sha256 FROM plugin_pins ORDER BY plugin")
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn plugin_settings(&self) -> Result<Vec<PluginSettingRow>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT plugin, name, value, sealed FROM plugin_settings ORDER BY plugin, name",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

impl State {
    /// The policy named `name`: stored, or the built-in default for `default`.
    pub fn policy(&self, name: &str) -> Result<Option<Policy>, StateError> {
        for (n, json) in self.policies()? {
            if n == name {
                return Ok(serde_json::from_str(&json).ok());
            }
        }
        Ok((name == "default").then(Policy::default))
    }

    /// The policy of `machine` (the `default` policy if its own is gone).
    pub fn policy_of(&self, machine: MachineId) -> Result<Policy, StateError> {
        let (name, _) = self.machine_policy(machine)?;
        match self.policy(&name)? {
            Some(p) => Ok(p),
            None => Ok(self.policy("default")?.unwrap_or_default()),
        }
    }
}
