//! Registered machines: registration passphrases, disks, facts, VM settings, revocation and policy assignment.

use super::{CachedRow, PointStore, Sqlite, State, StateError, now_ms};
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

/// How long a registration passphrase may be used after it was made: 24 hours.
pub const PASSPHRASE_TTL_MS: u64 = 24 * 3600 * 1000;

pub(super) fn hash_passphrase(p: &str) -> String {
    hex::encode(Sha256::digest(p.trim().as_bytes()))
}

super::backend_trait! {
    /// Registration passphrases, machines, their disks, facts and policies.
    MachineStore {
        /// Stores a new one-time registration passphrase (only its hash is kept).
        fn add_passphrase(&self, passphrase: &str) -> Result<(), StateError>;

        /// Number of passphrases neither used nor expired.
        fn unused_passphrases(&self) -> Result<u64, StateError>;

        /// Invalidates every unused registration passphrase; returns how many.
        fn drop_unused_passphrases(&self) -> Result<u64, StateError>;

        /// Registers a machine if `passphrase` is valid, unused and younger than
        /// [`PASSPHRASE_TTL_MS`], consuming it. Returns false (and changes nothing) otherwise.
        fn register_machine(
            &self,
            passphrase: &str,
            machine_id: MachineId,
            hostname: &str,
        ) -> Result<bool, StateError>;

        /// The appliance-local number of a registered machine (its row id), used as the
        /// durable cache's compact machine key.
        fn machine_number(&self, machine_id: MachineId) -> Result<Option<u64>, StateError>;

        /// Every machine id this appliance knows: registered here, or with recovery points
        /// here (a target-site appliance registers no machines but keeps their points).
        fn machine_ids(&self) -> Result<Vec<MachineId>, StateError>;

        /// Whether `machine_id` is registered.
        fn machine_exists(&self, machine_id: MachineId) -> Result<bool, StateError>;

        /// Records a disk of a machine (size and path as the agent reports them).
        fn upsert_disk(
            &self,
            machine_id: MachineId,
            idx: u32,
            size: u64,
            path: &str,
        ) -> Result<(), StateError>;

        /// The disk indexes of a machine with their sizes.
        fn disks(&self, machine_id: MachineId) -> Result<Vec<(u32, u64)>, StateError>;

        /// A machine's disks as (index, size, source path), by index.
        fn disk_rows(&self, machine_id: MachineId) -> Result<Vec<(u32, u64, String)>, StateError>;

        /// Adds a machine known from a recovered catalogue (no passphrase: it registered with
        /// the lost appliance).
        fn import_machine(
            &self,
            machine_id: MachineId,
            hostname: &str,
            registered_unix_ms: u64,
        ) -> Result<(), StateError>;

        /// Stores what the agent reported of its machine (JSON of `SystemInfo`).
        fn set_machine_facts(&self, machine_id: MachineId, system_json: &str) -> Result<(), StateError>;

        /// What the agent last reported of its machine (JSON), if anything.
        fn machine_facts(&self, machine_id: MachineId) -> Result<Option<String>, StateError>;

        /// Stores the administrator's VM settings for a machine (JSON of `VmSpecSettings`).
        fn set_vm_settings(&self, machine_id: MachineId, json: &str) -> Result<(), StateError>;

        /// The administrator's VM settings for a machine (JSON), if any.
        fn vm_settings(&self, machine_id: MachineId) -> Result<Option<String>, StateError>;

        /// Revokes a machine: its certificate is refused from now on. False if unknown.
        fn revoke_machine(&self, id: MachineId) -> Result<bool, StateError>;

        /// Whether a machine was revoked.
        fn is_revoked(&self, id: MachineId) -> Result<bool, StateError>;

        /// Registered machines as (id, host name, registration time), by id.
        fn machines(&self) -> Result<Vec<(MachineId, String, u64)>, StateError>;

        /// Gives a machine a policy.
        fn set_machine_policy(&self, machine_id: MachineId, policy: &str) -> Result<(), StateError>;

        /// A machine's policy name and when its agent was last heard from.
        fn machine_policy(&self, machine_id: MachineId) -> Result<(String, Option<u64>), StateError>;

        /// The machine's agent was heard from now.
        fn machine_seen(&self, machine_id: MachineId) -> Result<(), StateError>;
    }
}

impl MachineStore for Sqlite {
    fn add_passphrase(&self, passphrase: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO passphrases (hash, created_unix_ms) VALUES (?1, ?2)",
                params![hash_passphrase(passphrase), now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn unused_passphrases(&self) -> Result<u64, StateError> {
        self.read()
            .row_cached(
                "SELECT COUNT(*) FROM passphrases WHERE used_unix_ms IS NULL AND created_unix_ms > ?1",
                params![now_ms().saturating_sub(PASSPHRASE_TTL_MS) as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn drop_unused_passphrases(&self) -> Result<u64, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM passphrases WHERE used_unix_ms IS NULL", [])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    fn register_machine(
        &self,
        passphrase: &str,
        machine_id: MachineId,
        hostname: &str,
    ) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE passphrases SET used_unix_ms = ?2, machine_id = ?3
                 WHERE hash = ?1 AND used_unix_ms IS NULL AND created_unix_ms > ?4",
                params![
                    hash_passphrase(passphrase),
                    now_ms() as i64,
                    machine_id,
                    now_ms().saturating_sub(PASSPHRASE_TTL_MS) as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO machines (id, hostname, registered_unix_ms) VALUES (?1, ?2, ?3)",
            params![machine_id, hostname, now_ms() as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn machine_number(&self, machine_id: MachineId) -> Result<Option<u64>, StateError> {
        self.read()
            .row_cached("SELECT rowid FROM machines WHERE id = ?1", params![machine_id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|o| o.map(|n| n as u64))
            .map_err(|e| self.err(e))
    }

    fn machine_ids(&self) -> Result<Vec<MachineId>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT id FROM (SELECT id, registered_unix_ms AS t FROM machines
                 UNION SELECT machine_id, MIN(created_unix_ms) FROM points GROUP BY machine_id)
                 GROUP BY id ORDER BY MIN(t)",
            )
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| r.get::<_, MachineId>(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn machine_exists(&self, machine_id: MachineId) -> Result<bool, StateError> {
        self.read()
            .row_cached("SELECT 1 FROM machines WHERE id = ?1", params![machine_id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    fn upsert_disk(
        &self,
        machine_id: MachineId,
        idx: u32,
        size: u64,
        path: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO disks (machine_id, idx, size, path) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (machine_id, idx) DO UPDATE SET size = ?3, path = ?4",
                params![machine_id, idx, size as i64, path],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn disks(&self, machine_id: MachineId) -> Result<Vec<(u32, u64)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT idx, size FROM disks WHERE machine_id = ?1 ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn disk_rows(&self, machine_id: MachineId) -> Result<Vec<(u32, u64, String)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT idx, size, path FROM disks WHERE machine_id = ?1 ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn import_machine(
        &self,
        machine_id: MachineId,
        hostname: &str,
        registered_unix_ms: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO machines (id, hostname, registered_unix_ms) VALUES (?1, ?2, ?3)",
                params![machine_id, hostname, registered_unix_ms as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn set_machine_facts(
        &self,
        machine_id: MachineId,
        system_json: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO machine_facts (machine_id, system, updated_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (machine_id) DO UPDATE SET system = ?2, updated_unix_ms = ?3",
                params![machine_id, system_json, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn machine_facts(&self, machine_id: MachineId) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached(
                "SELECT system FROM machine_facts WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn set_vm_settings(&self, machine_id: MachineId, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO vm_settings (machine_id, settings) VALUES (?1, ?2)
                 ON CONFLICT (machine_id) DO UPDATE SET settings = ?2",
                params![machine_id, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn vm_settings(&self, machine_id: MachineId) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached(
                "SELECT settings FROM vm_settings WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn revoke_machine(&self, id: MachineId) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "UPDATE machines SET revoked_unix_ms = COALESCE(revoked_unix_ms, ?2) WHERE id = ?1",
                params![id, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        // A revoked machine leaves its consistency group, so its peers refuse it too (they
        // check the group's definition, which they learn from the appliance). A group left
        // without its coordinator or with fewer than two members is dissolved.
        if n > 0
            && let Some(mut g) = self.group_of(id)?
        {
            g.members.retain(|m| *m != id);
            if g.coordinator == id || g.members.len() < 2 {
                self.delete_group(&g.name)?;
            } else {
                self.set_group(&g)?;
            }
        }
        Ok(n > 0)
    }

    fn is_revoked(&self, id: MachineId) -> Result<bool, StateError> {
        self.read()
            .row_cached("SELECT revoked_unix_ms FROM machines WHERE id = ?1", params![id], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|o| o.flatten().is_some())
            .map_err(|e| self.err(e))
    }

    fn machines(&self) -> Result<Vec<(MachineId, String, u64)>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached("SELECT id, hostname, registered_unix_ms FROM machines ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn set_machine_policy(&self, machine_id: MachineId, policy: &str) -> Result<(), StateError> {
        self.conn()
            .execute("UPDATE machines SET policy = ?2 WHERE id = ?1", params![machine_id, policy])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn machine_policy(&self, machine_id: MachineId) -> Result<(String, Option<u64>), StateError> {
        self.read()
            .row_cached(
                "SELECT policy, last_seen_unix_ms FROM machines WHERE id = ?1",
                params![machine_id],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
            )
            .optional()
            .map(|o| o.unwrap_or_else(|| ("default".into(), None)))
            .map_err(|e| self.err(e))
    }

    fn machine_seen(&self, machine_id: MachineId) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET last_seen_unix_ms = ?2 WHERE id = ?1",
                params![machine_id, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
