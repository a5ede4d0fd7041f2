//! The appliance's runtime state: an embedded SQLite database with versioned
//! migrations (`<data_dir>/state.db`).
//!
//! What lives here is what the appliance learns while running — registered machines,
//! registration passphrases (hashed), disks, where each role stands in each disk's
//! sequence, recovery points, progress — as opposed to the static `appliance.toml`.
//!
//! Durability: WAL journal with `synchronous = NORMAL`: a committed transaction survives
//! a process crash; a power loss may roll back the last few. That is safe only for facts
//! that are re-derived or re-done after a rollback (counters, progress, a cursor whose
//! logs are still there: applying is idempotent). Before any step that cannot be undone
//! and that a rolled-back fact would contradict, the fact is made durable first with
//! [`State::make_durable`] (a commit under `synchronous = FULL`, which syncs the WAL and
//! with it every earlier commit): the master target before it deletes applied logs at the
//! target, the process server before it releases a shipped batch from its cache. Without
//! that a power cut left a cursor behind logs that no longer exist, and the disk waited
//! forever.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Schema migrations, in order. Never edit a published one; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: replication core.
    "CREATE TABLE machines (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        registered_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE passphrases (
        hash TEXT PRIMARY KEY,
        created_unix_ms INTEGER NOT NULL,
        used_unix_ms INTEGER,
        machine_id TEXT
     );
     CREATE TABLE disks (
        machine_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        size INTEGER NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (machine_id, idx)
     );
     CREATE TABLE received (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        next_sequence INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk)
     );
     CREATE TABLE applied (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        next_sequence INTEGER NOT NULL,
        point_reached INTEGER,
        PRIMARY KEY (machine_id, disk)
     );
     CREATE TABLE points (
        id TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        point INTEGER NOT NULL,
        kind TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        disks TEXT NOT NULL
     );
     CREATE TABLE progress (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        phase TEXT NOT NULL,
        done_bytes INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        sent_bytes INTEGER NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk)
     );",
    // 2: counters for the status API, tests and benchmarks.
    "CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );",
    // 3: the kind (crash, app) of the tag a disk reached, so the point gets it.
    "ALTER TABLE applied ADD COLUMN point_kind TEXT;",
    // 4: consistency-group points, recorded by the group's coordinator.
    "CREATE TABLE group_points (
        group_name TEXT NOT NULL,
        point INTEGER NOT NULL,
        members TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (group_name, point)
     );",
    // 5: write-churn profiles reported by agents (`lifeboat-agent churn --report`).
    "CREATE TABLE churn (
        machine_id TEXT NOT NULL,
        reported_unix_ms INTEGER NOT NULL,
        report TEXT NOT NULL
     );",
    // 6: administrators and their sessions (tokens are stored as sha256).
    "CREATE TABLE admins (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        token_sha256 TEXT PRIMARY KEY,
        admin TEXT NOT NULL,
        expires_unix_ms INTEGER NOT NULL
     );",
    // 7: revoked machines: their certificates are refused from then on.
    "ALTER TABLE machines ADD COLUMN revoked_unix_ms INTEGER;",
    // 8: asynchronous jobs, and test failovers until they are cleaned up.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        machine_id TEXT,
        state TEXT NOT NULL,
        progress REAL NOT NULL,
        message TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        finished_unix_ms INTEGER,
        result TEXT
     );
     CREATE TABLE test_failovers (
        id TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        point_id TEXT NOT NULL,
        vm TEXT NOT NULL,
        disks TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        cleaned_unix_ms INTEGER
     );",
    // 9: what agents report of their machines, the administrator's VM settings, and
    // failovers (one per machine: its current one).
    "CREATE TABLE machine_facts (
        machine_id TEXT PRIMARY KEY,
        system TEXT NOT NULL,
        updated_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE vm_settings (
        machine_id TEXT PRIMARY KEY,
        settings TEXT NOT NULL
     );
     CREATE TABLE failovers (
        machine_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        point_id TEXT,
        vm TEXT,
        disks TEXT NOT NULL,
        job INTEGER NOT NULL,
        started_unix_ms INTEGER NOT NULL,
        committed_unix_ms INTEGER
     );",
    // 10: reverse replication (reprotect → failback): passes done by the original
    // machine's agent, the final pass failback asks for, and where the agent's numbering
    // stands once it is done.
    "CREATE TABLE reverse_sync (
        machine_id TEXT PRIMARY KEY,
        passes INTEGER NOT NULL,
        final_requested INTEGER NOT NULL,
        final_done INTEGER NOT NULL,
        done_bytes INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        received_bytes INTEGER NOT NULL,
        last_received_bytes INTEGER NOT NULL,
        next_sequences TEXT,
        final_started INTEGER NOT NULL DEFAULT 0,
        source_disks TEXT,
        updated_unix_ms INTEGER NOT NULL
     );",
    // 11: appliance-wide values (when the catalogue was last written at the target, …).
    "CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
    // 12: replication policies, each machine's policy, and when its agent was last heard.
    "CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        policy TEXT NOT NULL
     );
     ALTER TABLE machines ADD COLUMN policy TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE machines ADD COLUMN last_seen_unix_ms INTEGER;",
    // 13: each machine's current certificate: the CA that signed it, its expiry, its hash.
    "ALTER TABLE machines ADD COLUMN cert_ca TEXT;
     ALTER TABLE machines ADD COLUMN cert_not_after_unix_ms INTEGER;
     ALTER TABLE machines ADD COLUMN cert_sha256 TEXT;
     ALTER TABLE machines ADD COLUMN cert_prev_sha256 TEXT;
     ALTER TABLE machines ADD COLUMN trust_bundle_sha256 TEXT;",
    // 14: recovery plans.
    "CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        plan TEXT NOT NULL
     );",
    // 15: problems of one disk (its logs cannot be applied, it shrank, its cursor is
    // stuck behind a gap), each an alert naming the disk until it clears.
    "CREATE TABLE disk_alerts (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        since_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk, kind)
     );",
    // 16: comparisons of a disk with its replica the master target asked for (logs of the
    // disk were missing at the target), until the point that makes the replica whole.
    "CREATE TABLE compares (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        token INTEGER NOT NULL,
        requested_unix_ms INTEGER NOT NULL,
        done_point INTEGER,
        PRIMARY KEY (machine_id, disk)
     );",
    // 17: consistency groups as the administrator defines them (the appliance owns
    // membership), and each member's own report of the group points it recorded.
    "CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        coordinator TEXT NOT NULL,
        members TEXT NOT NULL
     );
     CREATE TABLE group_member_points (
        group_name TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        point INTEGER NOT NULL,
        PRIMARY KEY (group_name, machine_id, point)
     );",
];

/// A consistency group as the administrator defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDef {
    /// Its name.
    pub name: String,
    /// The member that runs the group's rounds and records its points.
    pub coordinator: String,
    /// Every member, the coordinator included, sorted.
    pub members: Vec<String>,
}

/// How long a registration passphrase may be used after it was made: 24 hours.
pub const PASSPHRASE_TTL_MS: u64 = 24 * 3600 * 1000;

/// A problem of one disk, see [`State::disk_alerts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAlertRow {
    /// The machine.
    pub machine_id: String,
    /// The disk's index.
    pub disk: u32,
    /// `apply-failed`, `disk-shrunk` or `cursor-stuck`.
    pub kind: String,
    /// What is wrong and what to do.
    pub message: String,
    /// Since when (the first time it was seen, kept while it holds).
    pub since_unix_ms: u64,
}

/// A machine's certificates: (signing CA of the current one, current sha256, previous
/// sha256 still accepted).
pub type MachineCerts = (Option<String>, Option<String>, Option<String>);

/// Where reverse replication of a machine stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReverseRow {
    /// Passes completed.
    pub passes: u64,
    /// Failback asked for a final pass.
    pub final_requested: bool,
    /// The final pass is done.
    pub final_done: bool,
    /// Bytes hashed so far in the current pass.
    pub done_bytes: u64,
    /// Bytes of the machine's disks.
    pub total_bytes: u64,
    /// Bytes sent to the agent so far in the current pass.
    pub received_bytes: u64,
    /// Bytes the last completed pass sent.
    pub last_received_bytes: u64,
    /// The agent's next sequence per disk, JSON (from the final pass).
    pub next_sequences: Option<String>,
    /// The final pass started (a diff at the start of the first disk after the request).
    pub final_started: bool,
    /// What diffs read instead of the failover's disks: failback's frozen copies.
    pub source_disks: Vec<String>,
}

/// A machine's failover as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRow {
    /// The machine.
    pub machine_id: String,
    /// `failing-over`, `failed-over`, `failover-failed`, `committing`, `committed`,
    /// `reprotecting`, `reprotected` or `failing-back`.
    pub state: String,
    /// The point the VM was made from.
    pub point_id: Option<String>,
    /// The VM at the target.
    pub vm: Option<String>,
    /// The VM's disks at the target, boot disk first.
    pub disks: Vec<String>,
    /// The job that made it.
    pub job: u64,
    /// When it was asked for.
    pub started_unix_ms: u64,
    /// When it was committed.
    pub committed_unix_ms: Option<u64>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Job number.
    pub id: u64,
    /// What it does (`test-failover`, `test-failover-cleanup`).
    pub kind: String,
    /// The machine it is about.
    pub machine_id: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// 0 to 1.
    pub progress: f64,
    /// What it is doing, or why it failed.
    pub message: String,
    /// When it started.
    pub created_unix_ms: u64,
    /// When it ended.
    pub finished_unix_ms: Option<u64>,
    /// Its result (JSON), once succeeded.
    pub result: Option<String>,
}

/// A test failover as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailoverRow {
    /// Its id (`tf<job>`).
    pub id: String,
    /// The machine.
    pub machine_id: String,
    /// The point it was made from.
    pub point_id: String,
    /// The VM at the target.
    pub vm: String,
    /// The materialised disks at the target, boot disk first.
    pub disks: Vec<String>,
    /// When it was made.
    pub created_unix_ms: u64,
    /// When it was cleaned up.
    pub cleaned_unix_ms: Option<u64>,
}

/// A consistency-group point as recorded by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPointRow {
    /// Group name.
    pub group: String,
    /// Point number on every member.
    pub point: u64,
    /// Member machine ids.
    pub members: Vec<String>,
    /// When it was recorded.
    pub created_unix_ms: u64,
}

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused.
    #[error("state database {path}: {source}")]
    Db {
        /// The database file.
        path: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer Lifeboat.
    #[error(
        "state database {path} has schema version {found}, newer than this build understands \
         ({known}); run the newer Lifeboat or restore a backup"
    )]
    TooNew {
        /// The database file.
        path: String,
        /// Its schema version.
        found: usize,
        /// The newest this build knows.
        known: usize,
    },
}

/// A recovery point row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRow {
    /// Point id at the target.
    pub id: String,
    /// Machine.
    pub machine_id: String,
    /// Agent's point number.
    pub point: u64,
    /// `crash` or `app`.
    pub kind: String,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Disk indexes.
    pub disks: Vec<u32>,
}

/// The state store; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct State {
    conn: Arc<Mutex<Connection>>,
    path: String,
    /// How many [`State::make_durable`] calls completed (see [`State::durable_mark`]).
    durable: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hash_passphrase(p: &str) -> String {
    hex::encode(Sha256::digest(p.trim().as_bytes()))
}

impl State {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let p = path.display().to_string();
        let db = |source| StateError::Db { path: p.clone(), source };
        let mut conn = Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
        let version: usize =
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).map_err(db)? as usize;
        if version > MIGRATIONS.len() {
            return Err(StateError::TooNew { path: p, found: version, known: MIGRATIONS.len() });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(m).map_err(db)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(path = %p, version = i + 1, "state database migrated");
        }
        Ok(State { conn: Arc::new(Mutex::new(conn)), path: p, durable: Default::default() })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Db { path: self.path.clone(), source }
    }

    /// Stores a new one-time registration passphrase (only its hash is kept).
    pub fn add_passphrase(&self, passphrase: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO passphrases (hash, created_unix_ms) VALUES (?1, ?2)",
                params![hash_passphrase(passphrase), now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Number of passphrases neither used nor expired.
    pub fn unused_passphrases(&self) -> Result<u64, StateError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM passphrases WHERE used_unix_ms IS NULL AND created_unix_ms > ?1",
                params![now_ms().saturating_sub(PASSPHRASE_TTL_MS) as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Registers a machine if `passphrase` is valid, unused and younger than
    /// [`PASSPHRASE_TTL_MS`], consuming it. Returns false (and changes nothing) otherwise.
    pub fn register_machine(
        &self,
        passphrase: &str,
        machine_id: &str,
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

    /// The appliance-local number of a registered machine (its row id), used as the
    /// durable cache's compact machine key.
    pub fn machine_number(&self, machine_id: &str) -> Result<Option<u64>, StateError> {
        self.conn()
            .query_row("SELECT rowid FROM machines WHERE id = ?1", params![machine_id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|o| o.map(|n| n as u64))
            .map_err(|e| self.err(e))
    }

    /// Every machine id this appliance knows: registered here, or with recovery points
    /// here (a target-site appliance registers no machines but keeps their points).
    pub fn machine_ids(&self) -> Result<Vec<String>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT id FROM (SELECT id, registered_unix_ms AS t FROM machines
                 UNION SELECT machine_id, MIN(created_unix_ms) FROM points GROUP BY machine_id)
                 GROUP BY id ORDER BY MIN(t)",
            )
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], |r| r.get::<_, String>(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Whether `machine_id` is registered.
    pub fn machine_exists(&self, machine_id: &str) -> Result<bool, StateError> {
        self.conn()
            .query_row("SELECT 1 FROM machines WHERE id = ?1", params![machine_id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Records a disk of a machine (size and path as the agent reports them).
    pub fn upsert_disk(
        &self,
        machine_id: &str,
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

    /// The disk indexes of a machine with their sizes.
    pub fn disks(&self, machine_id: &str) -> Result<Vec<(u32, u64)>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare("SELECT idx, size FROM disks WHERE machine_id = ?1 ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// A machine's disks as (index, size, source path), by index.
    pub fn disk_rows(&self, machine_id: &str) -> Result<Vec<(u32, u64, String)>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare("SELECT idx, size, path FROM disks WHERE machine_id = ?1 ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Adds a machine known from a recovered catalogue (no passphrase: it registered with
    /// the lost appliance).
    pub fn import_machine(
        &self,
        machine_id: &str,
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

    fn get_seq(&self, table: &str, machine_id: &str, disk: u32) -> Result<u64, StateError> {
        self.conn()
            .query_row(
                &format!("SELECT next_sequence FROM {table} WHERE machine_id = ?1 AND disk = ?2"),
                params![machine_id, disk],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// The process server's cursor: the next sequence it expects for a disk.
    pub fn received_next(&self, machine_id: &str, disk: u32) -> Result<u64, StateError> {
        self.get_seq("received", machine_id, disk)
    }

    /// Advances the process server's cursor (never moves it back).
    pub fn set_received_next(
        &self,
        machine_id: &str,
        disk: u32,
        next: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO received (machine_id, disk, next_sequence) VALUES (?1, ?2, ?3)
                 ON CONFLICT (machine_id, disk) DO UPDATE
                 SET next_sequence = MAX(next_sequence, ?3)",
                params![machine_id, disk, next as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The master target's cursor: the next sequence to apply, and the last point tag
    /// the disk reached.
    pub fn applied(&self, machine_id: &str, disk: u32) -> Result<(u64, Option<u64>), StateError> {
        self.conn()
            .query_row(
                "SELECT next_sequence, point_reached FROM applied
                 WHERE machine_id = ?1 AND disk = ?2",
                params![machine_id, disk],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
            )
            .optional()
            .map(|o| o.unwrap_or((0, None)))
            .map_err(|e| self.err(e))
    }

    /// Records that a disk's log `next - 1` was applied (and the point tag it carried, with
    /// the tag's kind: `crash` or `app`).
    pub fn set_applied(
        &self,
        machine_id: &str,
        disk: u32,
        next: u64,
        point_reached: Option<(u64, &str)>,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO applied (machine_id, disk, next_sequence, point_reached, point_kind)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (machine_id, disk) DO UPDATE
                 SET next_sequence = ?3, point_reached = COALESCE(?4, point_reached),
                     point_kind = COALESCE(?5, point_kind)",
                params![
                    machine_id,
                    disk,
                    next as i64,
                    point_reached.map(|p| p.0 as i64),
                    point_reached.map(|p| p.1)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Makes every commit so far durable (they survive a power cut): one commit under
    /// `synchronous = FULL`. Call it before an irreversible step that relies on them.
    pub fn make_durable(&self) -> Result<(), StateError> {
        let c = self.conn();
        c.execute_batch(
            "PRAGMA synchronous = FULL;
             INSERT INTO counters (name, value) VALUES ('durable_commits', 1)
               ON CONFLICT (name) DO UPDATE SET value = value + 1;
             PRAGMA synchronous = NORMAL;",
        )
        .map_err(|e| self.err(e))?;
        // Counted while the connection is still held: commits are serialised by it.
        self.durable.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A mark to take right after a commit: once [`State::make_durable_since`] is called
    /// with it, that commit is durable. Lets one sync cover many commits.
    pub fn durable_mark(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes the commits made before `mark` was taken durable: nothing to do if a
    /// [`State::make_durable`] completed since (it ran after them, holding the same
    /// connection, so its sync covered them), else one now.
    pub fn make_durable_since(&self, mark: u64) -> Result<(), StateError> {
        if self.durable_mark() > mark {
            return Ok(());
        }
        self.make_durable()
    }

    /// The kind (`crash`, `app`) of the last point tag a disk reached; `crash` for tags
    /// recorded before the kind was (schema 2).
    pub fn applied_kind(&self, machine_id: &str, disk: u32) -> Result<String, StateError> {
        self.conn()
            .query_row(
                "SELECT point_kind FROM applied WHERE machine_id = ?1 AND disk = ?2",
                params![machine_id, disk],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(|o| o.flatten().unwrap_or_else(|| "crash".into()))
            .map_err(|e| self.err(e))
    }

    /// Starts a job; returns its number.
    pub fn create_job(
        &self,
        kind: &str,
        machine_id: Option<&str>,
        message: &str,
    ) -> Result<u64, StateError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO jobs (kind, machine_id, state, progress, message, created_unix_ms)
             VALUES (?1, ?2, 'running', 0, ?3, ?4)",
            params![kind, machine_id, message, now_ms() as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(c.last_insert_rowid() as u64)
    }

    /// Records a running job's progress.
    pub fn job_progress(&self, id: u64, progress: f64, message: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE jobs SET progress = ?2, message = ?3 WHERE id = ?1 AND state = 'running'",
                params![id as i64, progress, message],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends a job: succeeded with `result` (JSON) or failed with `message`.
    pub fn finish_job(
        &self,
        id: u64,
        ok: bool,
        message: &str,
        result: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE jobs SET state = ?2, progress = CASE WHEN ?2 = 'succeeded' THEN 1 ELSE progress END,
                 message = ?3, result = ?4, finished_unix_ms = ?5 WHERE id = ?1",
                params![id as i64, if ok { "succeeded" } else { "failed" }, message, result, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Jobs a restart interrupted are failed (they are not resumed); returns how many.
    pub fn fail_interrupted_jobs(&self) -> Result<u64, StateError> {
        let n = self
            .conn()
            .execute(
                "UPDATE jobs SET state = 'failed', message = 'interrupted by an appliance restart; start it again',
                 finished_unix_ms = ?1 WHERE state = 'running'",
                params![now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        // A failover cut short may be started again; the next one deletes what this one
        // recorded it would make.
        self.conn()
            .execute(
                "UPDATE failovers SET state = 'failover-failed' WHERE state = 'failing-over'",
                [],
            )
            .map_err(|e| self.err(e))?;
        self.conn()
            .execute("UPDATE failovers SET state = 'failed-over' WHERE state = 'committing'", [])
            .map_err(|e| self.err(e))?;
        // Reprotect and failback wait on the agent; started again, they wait again.
        self.conn()
            .execute("UPDATE failovers SET state = 'committed' WHERE state = 'reprotecting'", [])
            .map_err(|e| self.err(e))?;
        self.conn()
            .execute("UPDATE failovers SET state = 'reprotected' WHERE state = 'failing-back'", [])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Jobs, newest first (at most `limit`), or one.
    pub fn jobs(&self, id: Option<u64>, limit: u64) -> Result<Vec<JobRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, kind, machine_id, state, progress, message, created_unix_ms, finished_unix_ms, result
                 FROM jobs WHERE ?1 IS NULL OR id = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id.map(|i| i as i64), limit as i64], |r| {
                Ok(JobRow {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    machine_id: r.get(2)?,
                    state: r.get(3)?,
                    progress: r.get(4)?,
                    message: r.get(5)?,
                    created_unix_ms: r.get::<_, i64>(6)? as u64,
                    finished_unix_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                    result: r.get(8)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Records a test failover.
    pub fn add_test_failover(&self, t: &TestFailoverRow) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO test_failovers (id, machine_id, point_id, vm, disks, created_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t.id,
                    t.machine_id,
                    t.point_id,
                    t.vm,
                    t.disks.join(","),
                    t.created_unix_ms as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Test failovers, oldest first, or one.
    pub fn test_failovers(&self, id: Option<&str>) -> Result<Vec<TestFailoverRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, machine_id, point_id, vm, disks, created_unix_ms, cleaned_unix_ms
                 FROM test_failovers WHERE ?1 IS NULL OR id = ?1 ORDER BY created_unix_ms, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(TestFailoverRow {
                    id: r.get(0)?,
                    machine_id: r.get(1)?,
                    point_id: r.get(2)?,
                    vm: r.get(3)?,
                    disks: r
                        .get::<_, String>(4)?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    created_unix_ms: r.get::<_, i64>(5)? as u64,
                    cleaned_unix_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Marks a test failover cleaned up.
    pub fn test_failover_cleaned(&self, id: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE test_failovers SET cleaned_unix_ms = ?2 WHERE id = ?1",
                params![id, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stores what the agent reported of its machine (JSON of `SystemInfo`).
    pub fn set_machine_facts(&self, machine_id: &str, system_json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO machine_facts (machine_id, system, updated_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (machine_id) DO UPDATE SET system = ?2, updated_unix_ms = ?3",
                params![machine_id, system_json, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// What the agent last reported of its machine (JSON), if anything.
    pub fn machine_facts(&self, machine_id: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT system FROM machine_facts WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Stores the administrator's VM settings for a machine (JSON of `VmSpecSettings`).
    pub fn set_vm_settings(&self, machine_id: &str, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO vm_settings (machine_id, settings) VALUES (?1, ?2)
                 ON CONFLICT (machine_id) DO UPDATE SET settings = ?2",
                params![machine_id, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The administrator's VM settings for a machine (JSON), if any.
    pub fn vm_settings(&self, machine_id: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT settings FROM vm_settings WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Starts a failover of a machine as job `job`: replication of the machine stops
    /// being accepted. False (nothing written) if it is failing over already, or failed
    /// over and committed.
    pub fn start_failover(&self, machine_id: &str, job: u64) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO failovers (machine_id, state, disks, job, started_unix_ms)
                 VALUES (?1, 'failing-over', '', ?2, ?3)
                 ON CONFLICT (machine_id) DO UPDATE SET state = 'failing-over', job = ?2
                 WHERE failovers.state IN ('failed-over', 'failover-failed')",
                params![machine_id, job as i64, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Records where a failover stands: its state and, once made, the VM and disks.
    pub fn set_failover(
        &self,
        machine_id: &str,
        state: &str,
        point_id: Option<&str>,
        vm: Option<&str>,
        disks: &[String],
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE failovers SET state = ?2, point_id = ?3, vm = ?4, disks = ?5,
                 committed_unix_ms = CASE WHEN ?2 = 'committed' THEN ?6 ELSE NULL END
                 WHERE machine_id = ?1",
                params![machine_id, state, point_id, vm, disks.join(","), now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Failovers, by machine id, or one machine's.
    pub fn failovers(&self, machine_id: Option<&str>) -> Result<Vec<FailoverRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT machine_id, state, point_id, vm, disks, job, started_unix_ms,
                        committed_unix_ms
                 FROM failovers WHERE ?1 IS NULL OR machine_id = ?1 ORDER BY machine_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![machine_id], |r| {
                Ok(FailoverRow {
                    machine_id: r.get(0)?,
                    state: r.get(1)?,
                    point_id: r.get(2)?,
                    vm: r.get(3)?,
                    disks: r
                        .get::<_, String>(4)?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    job: r.get::<_, i64>(5)? as u64,
                    started_unix_ms: r.get::<_, i64>(6)? as u64,
                    committed_unix_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Moves a machine's failover from state `from` to `to`; false (nothing written) if it
    /// was not in `from`.
    pub fn failover_transition(
        &self,
        machine_id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "UPDATE failovers SET state = ?3 WHERE machine_id = ?1 AND state = ?2",
                params![machine_id, from, to],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Starts reverse replication of a machine whose disks hold `total_bytes`.
    pub fn start_reverse(&self, machine_id: &str, total_bytes: u64) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO reverse_sync (machine_id, passes, final_requested, final_done, done_bytes,
                     total_bytes, received_bytes, last_received_bytes, updated_unix_ms)
                 VALUES (?1, 0, 0, 0, 0, ?2, 0, 0, ?3)
                 ON CONFLICT (machine_id) DO UPDATE SET passes = 0, final_requested = 0,
                     final_done = 0, done_bytes = 0, total_bytes = ?2, received_bytes = 0,
                     last_received_bytes = 0, next_sequences = NULL, updated_unix_ms = ?3",
                params![machine_id, total_bytes as i64, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Where reverse replication of a machine stands, if it was started.
    pub fn reverse(&self, machine_id: &str) -> Result<Option<ReverseRow>, StateError> {
        self.conn()
            .query_row(
                "SELECT passes, final_requested, final_done, done_bytes, total_bytes,
                        received_bytes, last_received_bytes, next_sequences, final_started,
                        source_disks
                 FROM reverse_sync WHERE machine_id = ?1",
                params![machine_id],
                |r| {
                    Ok(ReverseRow {
                        passes: r.get::<_, i64>(0)? as u64,
                        final_requested: r.get::<_, i64>(1)? != 0,
                        final_done: r.get::<_, i64>(2)? != 0,
                        done_bytes: r.get::<_, i64>(3)? as u64,
                        total_bytes: r.get::<_, i64>(4)? as u64,
                        received_bytes: r.get::<_, i64>(5)? as u64,
                        last_received_bytes: r.get::<_, i64>(6)? as u64,
                        next_sequences: r.get(7)?,
                        final_started: r.get::<_, i64>(8)? != 0,
                        source_disks: r
                            .get::<_, Option<String>>(9)?
                            .unwrap_or_default()
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Counts a served reverse diff: `hashed` bytes compared, `sent` bytes sent. A diff at
    /// the start of the first disk starts a new pass's counts.
    pub fn reverse_progress(
        &self,
        machine_id: &str,
        restart: bool,
        hashed: u64,
        sent: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE reverse_sync SET
                     done_bytes = CASE WHEN ?2 THEN 0 ELSE done_bytes END + ?3,
                     received_bytes = CASE WHEN ?2 THEN 0 ELSE received_bytes END + ?4,
                     final_started = CASE WHEN ?2 AND final_requested THEN 1 ELSE final_started END,
                     updated_unix_ms = ?5
                 WHERE machine_id = ?1",
                params![machine_id, restart, hashed as i64, sent as i64, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a completed reverse pass; a final one — started after failback asked for it
    /// (a diff at the start of the first disk came after the request) and covering every
    /// byte — with the agent's next sequences.
    pub fn reverse_pass_done(
        &self,
        machine_id: &str,
        final_pass: bool,
        next_sequences_json: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE reverse_sync SET passes = passes + 1, last_received_bytes = received_bytes,
                     final_done = CASE WHEN ?2 AND final_requested AND final_started
                         AND done_bytes >= total_bytes THEN 1 ELSE final_done END,
                     next_sequences = CASE WHEN ?2 AND final_requested AND final_started
                         AND done_bytes >= total_bytes THEN ?3 ELSE next_sequences END,
                     updated_unix_ms = ?4
                 WHERE machine_id = ?1",
                params![machine_id, final_pass, next_sequences_json, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Failback asks the agent for a final pass (the failed-over VM is stopped) over
    /// `source_disks`, frozen copies of the failed-over disks; with `None`, the request is
    /// withdrawn (a failback that failed).
    pub fn request_final_pass(
        &self,
        machine_id: &str,
        source_disks: Option<&[String]>,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE reverse_sync SET final_requested = ?2, final_done = 0, final_started = 0,
                     source_disks = ?3 WHERE machine_id = ?1",
                params![machine_id, source_disks.is_some(), source_disks.map(|d| d.join(","))],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forward replication again: the failover and its reverse replication are forgotten.
    pub fn end_failover(&self, machine_id: &str) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM reverse_sync WHERE machine_id = ?1", params![machine_id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM failovers WHERE machine_id = ?1", params![machine_id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The replica of a disk was made anew (failback): the master target goes on from
    /// sequence `next` with no point reached, and the process server expects `next`.
    pub fn rebase_disk(&self, machine_id: &str, disk: u32, next: u64) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO applied (machine_id, disk, next_sequence, point_reached, point_kind)
             VALUES (?1, ?2, ?3, NULL, NULL)
             ON CONFLICT (machine_id, disk) DO UPDATE
             SET next_sequence = ?3, point_reached = NULL, point_kind = NULL",
            params![machine_id, disk, next as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO received (machine_id, disk, next_sequence) VALUES (?1, ?2, ?3)
             ON CONFLICT (machine_id, disk) DO UPDATE
             SET next_sequence = MAX(next_sequence, ?3)",
            params![machine_id, disk, next as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// A machine's failover state, if it has one (`failing-over`, `failed-over`, …).
    pub fn failover_state(&self, machine_id: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT state FROM failovers WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Invalidates every unused registration passphrase; returns how many.
    pub fn drop_unused_passphrases(&self) -> Result<u64, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM passphrases WHERE used_unix_ms IS NULL", [])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Revokes a machine: its certificate is refused from now on. False if unknown.
    pub fn revoke_machine(&self, id: &str) -> Result<bool, StateError> {
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
            g.members.retain(|m| m != id);
            if g.coordinator == id || g.members.len() < 2 {
                self.delete_group(&g.name)?;
            } else {
                self.set_group(&g)?;
            }
        }
        Ok(n > 0)
    }

    /// Whether a machine was revoked.
    pub fn is_revoked(&self, id: &str) -> Result<bool, StateError> {
        self.conn()
            .query_row("SELECT revoked_unix_ms FROM machines WHERE id = ?1", params![id], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|o| o.flatten().is_some())
            .map_err(|e| self.err(e))
    }

    /// Registered machines as (id, host name, registration time), by id.
    pub fn machines(&self) -> Result<Vec<(String, String, u64)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, hostname, registered_unix_ms FROM machines ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Creates the first administrator; false (nothing written) if one exists already.
    pub fn create_first_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let n: i64 = tx
            .query_row("SELECT COUNT(*) FROM admins", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if n > 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO admins (name, password_hash, created_unix_ms) VALUES (?1, ?2, ?3)",
            params![name, password_hash, now_ms() as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Whether any administrator exists.
    pub fn has_admin(&self) -> Result<bool, StateError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM admins", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// An administrator's password hash.
    pub fn admin_hash(&self, name: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row("SELECT password_hash FROM admins WHERE name = ?1", params![name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records a session (by the token's sha256) and drops expired ones.
    pub fn add_session(
        &self,
        token_sha256: &str,
        admin: &str,
        expires_unix_ms: u64,
    ) -> Result<(), StateError> {
        let c = self.conn();
        c.execute("DELETE FROM sessions WHERE expires_unix_ms <= ?1", params![now_ms() as i64])
            .map_err(|e| self.err(e))?;
        c.execute(
            "INSERT INTO sessions (token_sha256, admin, expires_unix_ms) VALUES (?1, ?2, ?3)",
            params![token_sha256, admin, expires_unix_ms as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The administrator and expiry of a live session.
    pub fn session(&self, token_sha256: &str) -> Result<Option<(String, u64)>, StateError> {
        self.conn()
            .query_row(
                "SELECT admin, expires_unix_ms FROM sessions WHERE token_sha256 = ?1 AND expires_unix_ms > ?2",
                params![token_sha256, now_ms() as i64],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Ends a session.
    pub fn delete_session(&self, token_sha256: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE token_sha256 = ?1", params![token_sha256])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stores a churn report (JSON, already checked) of `machine_id`.
    pub fn add_churn(&self, machine_id: &str, report_json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO churn (machine_id, reported_unix_ms, report) VALUES (?1, ?2, ?3)",
                params![machine_id, now_ms() as i64, report_json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Churn reports as (machine, time, JSON), oldest first, of one machine or all.
    pub fn churn(
        &self,
        machine_id: Option<&str>,
    ) -> Result<Vec<(String, u64, String)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT machine_id, reported_unix_ms, report FROM churn
                 WHERE ?1 IS NULL OR machine_id = ?1 ORDER BY reported_unix_ms, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![machine_id], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Records a group point (idempotent).
    pub fn add_group_point(
        &self,
        group: &str,
        point: u64,
        members: &[String],
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO group_points (group_name, point, members, created_unix_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![group, point as i64, members.join(","), now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Defines (or redefines) a consistency group. False when a member is in another group
    /// already (a machine is in one group at most).
    pub fn set_group(&self, g: &GroupDef) -> Result<bool, StateError> {
        for other in self.groups()? {
            if other.name != g.name && other.members.iter().any(|m| g.members.contains(m)) {
                return Ok(false);
            }
        }
        self.conn()
            .execute(
                "INSERT INTO groups (name, coordinator, members) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET coordinator = ?2, members = ?3",
                params![g.name, g.coordinator, g.members.join(",")],
            )
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Deletes a group's definition (its recorded points stay listed, and count no more).
    pub fn delete_group(&self, name: &str) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM groups WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Every defined group, by name.
    pub fn groups(&self) -> Result<Vec<GroupDef>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare("SELECT name, coordinator, members FROM groups ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(GroupDef {
                    name: r.get(0)?,
                    coordinator: r.get(1)?,
                    members: r.get::<_, String>(2)?.split(',').map(str::to_owned).collect(),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The group `machine_id` is a member of, if any.
    pub fn group_of(&self, machine_id: &str) -> Result<Option<GroupDef>, StateError> {
        Ok(self.groups()?.into_iter().find(|g| g.members.iter().any(|m| m == machine_id)))
    }

    /// A member's own report that it recorded group point `point`.
    pub fn add_member_point(
        &self,
        group: &str,
        machine_id: &str,
        point: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO group_member_points (group_name, machine_id, point)
                 VALUES (?1, ?2, ?3)",
                params![group, machine_id, point as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Group points of `group` (every group when `None`), oldest first: those its
    /// coordinator recorded *and* every member it names reported recording itself. A
    /// record alone (a coordinator's claim) is not a group point.
    pub fn group_points(&self, group: Option<&str>) -> Result<Vec<GroupPointRow>, StateError> {
        let rows = self.group_point_records(group)?;
        let c = self.conn();
        let mut reported = c
            .prepare(
                "SELECT 1 FROM group_member_points
                 WHERE group_name = ?1 AND machine_id = ?2 AND point = ?3",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let mut all = true;
            for m in &r.members {
                all &= reported
                    .exists(params![r.group, m, r.point as i64])
                    .map_err(|e| self.err(e))?;
            }
            if all {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every recorded group point, whether its members reported it or not.
    pub fn group_point_records(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<GroupPointRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT group_name, point, members, created_unix_ms FROM group_points
                 WHERE ?1 IS NULL OR group_name = ?1 ORDER BY group_name, point",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![group], |r| {
                Ok(GroupPointRow {
                    group: r.get(0)?,
                    point: r.get::<_, i64>(1)? as u64,
                    members: r.get::<_, String>(2)?.split(',').map(str::to_owned).collect(),
                    created_unix_ms: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Records a recovery point.
    pub fn add_point(&self, p: &PointRow) -> Result<(), StateError> {
        let disks = p.disks.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO points (id, machine_id, point, kind, created_unix_ms, disks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.id,
                    p.machine_id,
                    p.point as i64,
                    p.kind,
                    p.created_unix_ms as i64,
                    disks
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets a recovery point.
    pub fn delete_point(&self, id: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM points WHERE id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A machine's points, oldest first.
    pub fn points(&self, machine_id: &str) -> Result<Vec<PointRow>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT id, machine_id, point, kind, created_unix_ms, disks FROM points
                 WHERE machine_id = ?1 ORDER BY point",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                let disks: String = r.get(5)?;
                Ok(PointRow {
                    id: r.get(0)?,
                    machine_id: r.get(1)?,
                    point: r.get::<_, i64>(2)? as u64,
                    kind: r.get(3)?,
                    created_unix_ms: r.get::<_, i64>(4)? as u64,
                    disks: disks
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .filter_map(|s| s.parse().ok())
                        .collect(),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
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

    /// Gives a machine a policy.
    pub fn set_machine_policy(&self, machine_id: &str, policy: &str) -> Result<(), StateError> {
        self.conn()
            .execute("UPDATE machines SET policy = ?2 WHERE id = ?1", params![machine_id, policy])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A machine's policy name and when its agent was last heard from.
    pub fn machine_policy(&self, machine_id: &str) -> Result<(String, Option<u64>), StateError> {
        self.conn()
            .query_row(
                "SELECT policy, last_seen_unix_ms FROM machines WHERE id = ?1",
                params![machine_id],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
            )
            .optional()
            .map(|o| o.unwrap_or_else(|| ("default".into(), None)))
            .map_err(|e| self.err(e))
    }

    /// Records a certificate just issued to the machine; the one it had stays accepted
    /// until the new one is seen in use (a lost renewal answer must not lock it out).
    pub fn set_machine_cert(
        &self,
        machine_id: &str,
        ca_fingerprint: &str,
        not_after_unix_ms: u64,
        cert_sha256: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET cert_ca = ?2,
                     cert_not_after_unix_ms = CASE WHEN ?3 > 0 THEN ?3 ELSE cert_not_after_unix_ms END,
                     cert_prev_sha256 = CASE WHEN cert_sha256 = ?4 THEN cert_prev_sha256 ELSE cert_sha256 END,
                     cert_sha256 = ?4 WHERE id = ?1",
                params![machine_id, ca_fingerprint, not_after_unix_ms as i64, cert_sha256],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The machine presented its current certificate: the previous one is refused now.
    pub fn machine_cert_in_use(&self, machine_id: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET cert_prev_sha256 = NULL
                 WHERE id = ?1 AND cert_prev_sha256 IS NOT NULL",
                params![machine_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The machine's certificates as (signing CA of the current one, current sha256,
    /// previous sha256 still accepted).
    pub fn machine_certs(&self, machine_id: &str) -> Result<MachineCerts, StateError> {
        self.conn()
            .query_row(
                "SELECT cert_ca, cert_sha256, cert_prev_sha256 FROM machines WHERE id = ?1",
                params![machine_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(e))
    }

    /// The machine's current certificate as (signing CA fingerprint, sha256), if recorded.
    pub fn machine_cert(
        &self,
        machine_id: &str,
    ) -> Result<(Option<String>, Option<String>), StateError> {
        let (ca, sha, _) = self.machine_certs(machine_id)?;
        Ok((ca, sha))
    }

    /// Records the sha256 of the trust bundle last sent to the machine's agent.
    pub fn set_machine_trust(
        &self,
        machine_id: &str,
        bundle_sha256: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET trust_bundle_sha256 = ?2 WHERE id = ?1",
                params![machine_id, bundle_sha256],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The sha256 of the trust bundle last sent to the machine's agent.
    pub fn machine_trust(&self, machine_id: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT trust_bundle_sha256 FROM machines WHERE id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// The machine's certificate expiry, if recorded.
    pub fn machine_cert_expiry(&self, machine_id: &str) -> Result<Option<u64>, StateError> {
        self.conn()
            .query_row(
                "SELECT cert_not_after_unix_ms FROM machines WHERE id = ?1",
                params![machine_id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(|o| o.flatten().map(|v| v as u64))
            .map_err(|e| self.err(e))
    }

    /// The machine's agent was heard from now.
    pub fn machine_seen(&self, machine_id: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET last_seen_unix_ms = ?2 WHERE id = ?1",
                params![machine_id, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
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

    /// Records (or refreshes the message of) a problem of one disk; `since` stays the
    /// first time it was seen.
    pub fn set_disk_alert(
        &self,
        machine_id: &str,
        disk: u32,
        kind: &str,
        message: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO disk_alerts (machine_id, disk, kind, message, since_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (machine_id, disk, kind) DO UPDATE SET message = ?4",
                params![machine_id, disk, kind, message, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Clears a problem of one disk (nothing if there is none).
    pub fn clear_disk_alert(
        &self,
        machine_id: &str,
        disk: u32,
        kind: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "DELETE FROM disk_alerts WHERE machine_id = ?1 AND disk = ?2 AND kind = ?3",
                params![machine_id, disk, kind],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every problem of a disk that holds now.
    pub fn disk_alerts(&self) -> Result<Vec<DiskAlertRow>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT machine_id, disk, kind, message, since_unix_ms FROM disk_alerts
                 ORDER BY machine_id, disk, kind",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(DiskAlertRow {
                    machine_id: r.get(0)?,
                    disk: r.get::<_, i64>(1)? as u32,
                    kind: r.get(2)?,
                    message: r.get(3)?,
                    since_unix_ms: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Asks for a comparison of a disk with its replica; returns its token (the open
    /// request's, if there is one).
    pub fn request_compare(&self, machine_id: &str, disk: u32) -> Result<u64, StateError> {
        let c = self.conn();
        let open: Option<i64> = c
            .query_row(
                "SELECT token FROM compares WHERE machine_id = ?1 AND disk = ?2 AND done_point IS NULL",
                params![machine_id, disk],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(t) = open {
            return Ok(t as u64);
        }
        let token = now_ms();
        c.execute(
            "INSERT INTO compares (machine_id, disk, token, requested_unix_ms, done_point)
             VALUES (?1, ?2, ?3, ?3, NULL)
             ON CONFLICT (machine_id, disk) DO UPDATE
             SET token = ?3, requested_unix_ms = ?3, done_point = NULL",
            params![machine_id, disk, token as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(token)
    }

    /// Records a comparison asked for elsewhere (a master target at another site), under
    /// its token; false if it is known already.
    pub fn record_compare(
        &self,
        machine_id: &str,
        disk: u32,
        token: u64,
    ) -> Result<bool, StateError> {
        if self.compares(machine_id)?.iter().any(|c| c.0 == disk && c.1 == token) {
            return Ok(false);
        }
        self.conn()
            .execute(
                "INSERT INTO compares (machine_id, disk, token, requested_unix_ms, done_point)
                 VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (machine_id, disk) DO UPDATE
                 SET token = ?3, requested_unix_ms = ?4, done_point = NULL",
                params![machine_id, disk, token as i64, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// A machine's comparisons: (disk, token, point from which the replica is whole once
    /// the agent said it is done).
    pub fn compares(&self, machine_id: &str) -> Result<Vec<(u32, u64, Option<u64>)>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT disk, token, done_point FROM compares WHERE machine_id = ?1 ORDER BY disk",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u32,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.map(|p| p as u64),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The agent compared the whole disk for the request `token`; the replica is whole
    /// from `point` on. False if no such request is open.
    pub fn compare_done(
        &self,
        machine_id: &str,
        disk: u32,
        token: u64,
        point: u64,
    ) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "UPDATE compares SET done_point = ?4
                 WHERE machine_id = ?1 AND disk = ?2 AND token = ?3 AND done_point IS NULL",
                params![machine_id, disk, token as i64, point as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Forgets a machine's comparisons that are done by `point`.
    pub fn end_compares(&self, machine_id: &str, point: u64) -> Result<Vec<u32>, StateError> {
        let done: Vec<u32> = self
            .compares(machine_id)?
            .into_iter()
            .filter(|(_, _, d)| d.is_some_and(|d| d <= point))
            .map(|(disk, _, _)| disk)
            .collect();
        for d in &done {
            self.conn()
                .execute(
                    "DELETE FROM compares WHERE machine_id = ?1 AND disk = ?2",
                    params![machine_id, d],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(done)
    }

    /// An appliance-wide value, if set.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
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

    /// A machine's progress per disk as (disk, phase, done, total), by disk.
    pub fn progress(&self, machine_id: &str) -> Result<Vec<(u32, String, u64, u64)>, StateError> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT disk, phase, done_bytes, total_bytes FROM progress
                 WHERE machine_id = ?1 ORDER BY disk",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u32,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Stores an agent's progress report for one disk.
    pub fn set_progress(
        &self,
        machine_id: &str,
        p: &lifeboat_wire::api::Progress,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO progress (machine_id, disk, phase, done_bytes, total_bytes, sent_bytes, updated_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (machine_id, disk) DO UPDATE SET phase = ?3, done_bytes = ?4,
                 total_bytes = ?5, sent_bytes = ?6, updated_unix_ms = ?7",
                params![
                    machine_id,
                    p.disk,
                    p.phase,
                    p.done_bytes as i64,
                    p.total_bytes as i64,
                    p.sent_bytes as i64,
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let s = State::open(&p).unwrap();
        s.add_passphrase("alpha-bravo").unwrap();
        drop(s);
        let s = State::open(&p).unwrap();
        assert_eq!(s.unused_passphrases().unwrap(), 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        drop(State::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = State::open(&p).unwrap_err();
        assert!(matches!(e, StateError::TooNew { found: 99, .. }), "{e}");
    }

    #[test]
    fn one_durable_sync_covers_every_commit_before_it() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("s.db")).unwrap();
        let synced = |s: &State| {
            s.counters().unwrap().into_iter().find(|c| c.0 == "durable_commits").map_or(0, |c| c.1)
        };
        s.set_received_next("m", 0, 1).unwrap();
        let first = s.durable_mark();
        s.set_received_next("m", 0, 2).unwrap();
        let second = s.durable_mark();
        s.make_durable_since(second).unwrap();
        assert_eq!(synced(&s), 1);
        // Both commits came before that sync: nothing more to do for either.
        s.make_durable_since(first).unwrap();
        s.make_durable_since(second).unwrap();
        assert_eq!(synced(&s), 1);
        s.set_received_next("m", 0, 3).unwrap();
        s.make_durable_since(s.durable_mark()).unwrap();
        assert_eq!(synced(&s), 2, "a commit after the sync needs another");
    }

    #[test]
    fn passphrases_are_one_time() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("s.db")).unwrap();
        s.add_passphrase("one-time").unwrap();
        assert!(!s.register_machine("wrong", "m1", "h").unwrap());
        // Issue 11, finding 8: passphrases never expired, unlike docs/security.md.
        s.add_passphrase("stale").unwrap();
        s.conn()
            .execute(
                "UPDATE passphrases SET created_unix_ms = ?1 WHERE hash = ?2",
                params![(now_ms() - PASSPHRASE_TTL_MS - 1000) as i64, hash_passphrase("stale")],
            )
            .unwrap();
        assert!(!s.register_machine("stale", "m0", "h").unwrap(), "an expired passphrase");
        assert!(s.register_machine(" one-time ", "m1", "h").unwrap());
        assert!(!s.register_machine("one-time", "m2", "h").unwrap());
        assert!(s.machine_exists("m1").unwrap());
        assert!(!s.machine_exists("m2").unwrap());
    }

    #[test]
    fn cursors_points_and_disks() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("s.db")).unwrap();
        assert_eq!(s.received_next("m", 0).unwrap(), 0);
        s.set_received_next("m", 0, 5).unwrap();
        s.set_received_next("m", 0, 3).unwrap();
        assert_eq!(s.received_next("m", 0).unwrap(), 5, "never moves back");
        assert_eq!(s.applied_kind("m", 0).unwrap(), "crash");
        s.set_applied("m", 0, 2, Some((7, "app"))).unwrap();
        s.set_applied("m", 0, 3, None).unwrap();
        assert_eq!(s.applied("m", 0).unwrap(), (3, Some(7)));
        assert_eq!(s.applied_kind("m", 0).unwrap(), "app", "kept across untagged logs");
        s.set_applied("m", 0, 4, Some((8, "crash"))).unwrap();
        assert_eq!(s.applied_kind("m", 0).unwrap(), "crash");
        s.upsert_disk("m", 1, 100, "/dev/b").unwrap();
        s.upsert_disk("m", 0, 50, "/dev/a").unwrap();
        s.upsert_disk("m", 0, 60, "/dev/a").unwrap();
        assert_eq!(s.disks("m").unwrap(), vec![(0, 60), (1, 100)]);
        let p = PointRow {
            id: "m-p1".into(),
            machine_id: "m".into(),
            point: 1,
            kind: "crash".into(),
            created_unix_ms: 5,
            disks: vec![0, 1],
        };
        s.add_point(&p).unwrap();
        s.add_point(&p).unwrap();
        assert_eq!(s.points("m").unwrap(), vec![p]);
        s.delete_point("m-p1").unwrap();
        assert!(s.points("m").unwrap().is_empty());
    }
}
