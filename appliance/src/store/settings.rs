//! Recovery plans, protection policies, appliance settings and counters.

use super::{State, StateError};
use rusqlite::{OptionalExtension, params};

impl State {
    /// Creates or replaces a recovery plan (JSON of `Plan`).
    pub fn set_plan(&self, name: &str, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO plans (name, plan) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET plan = ?2",
                params![name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Recovery plans as (name, JSON), by name.
    pub fn plans(&self) -> Result<Vec<(String, String)>, StateError> {
        let c = self.conn();
        let mut s =
            c.prepare("SELECT name, plan FROM plans ORDER BY name").map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Deletes a recovery plan; false if there was none.
    pub fn delete_plan(&self, name: &str) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM plans WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Creates or replaces a policy (JSON of `Policy`).
    pub fn set_policy(&self, name: &str, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO policies (name, policy) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET policy = ?2",
                params![name, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stored policies as (name, JSON), by name (`default` only once it was set).
    pub fn policies(&self) -> Result<Vec<(String, String)>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare("SELECT name, policy FROM policies ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Deletes a policy no machine uses; false if a machine uses it (nothing deleted).
    pub fn delete_policy(&self, name: &str) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let used: i64 = tx
            .query_row("SELECT COUNT(*) FROM machines WHERE policy = ?1", params![name], |r| {
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

    /// Sets an appliance-wide value.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = ?2",
                params![name, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// An appliance-wide value, if set.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Adds to counters, all in one transaction: `(name, by)` pairs.
    pub fn count(&self, adds: &[(&str, u64)]) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        for (name, by) in adds {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + ?2",
                params![name, *by as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Every counter, by name.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StateError> {
        let c = self.conn();
        let mut s =
            c.prepare("SELECT name, value FROM counters ORDER BY name").map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
