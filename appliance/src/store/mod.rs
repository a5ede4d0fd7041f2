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

use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

mod admins;
mod certs;
mod cursors;
mod failovers;
mod jobs;
mod machines;
mod migrations;
mod points;
mod settings;

pub use certs::MachineCerts;
pub use cursors::DiskAlertRow;
pub use failovers::{FailoverRow, ReverseRow, TestFailoverRow};
pub use jobs::JobRow;
pub use machines::PASSPHRASE_TTL_MS;
use migrations::MIGRATIONS;
pub use points::{GroupDef, GroupPointRow, PointRow};

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
}

#[cfg(test)]
mod tests;
