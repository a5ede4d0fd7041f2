//! The appliance's runtime state, behind a backend interface: an embedded SQLite
//! database with versioned migrations (`<data_dir>/state.db`) is the backend there is.
//!
//! What lives here is what the appliance learns while running — registered machines,
//! registration passphrases (hashed), disks, where each role stands in each disk's
//! sequence, recovery points, progress — as opposed to the static `appliance.toml`.
//!
//! The interface: each resource's file declares a trait ([`MachineStore`],
//! [`CursorStore`], …) with `backend_trait!`, which also gives [`State`] the same
//! methods, run on the backend off the async workers (`off_worker`). [`Backend`] is all
//! of them; [`Sqlite`] implements it. The per-batch path's cursors and counters are kept
//! in memory and written behind (see `behind.rs`).
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
mod behind;
mod certs;
mod cursors;
mod failovers;
mod history;
mod jobs;
mod machines;
mod migrations;
mod points;
mod settings;

pub use admins::AdminStore;
pub use behind::{BehindStore, Counter};
pub use certs::{CertStore, MachineCerts};
pub use cursors::{CursorStore, DiskAlertRow};
pub use failovers::{FailoverRow, FailoverStore, ReverseRow, TestFailoverRow};
pub use history::{HistoryStore, SampleRow};
pub use jobs::{JobRow, JobStore};
pub use machines::{MachineStore, PASSPHRASE_TTL_MS};
use migrations::MIGRATIONS;
pub use points::{GroupDef, GroupPointRow, PointRow, PointStore};
pub use settings::SettingStore;

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

/// Declares one resource's part of the backend interface: the trait a backend
/// implements, and the same methods on [`State`], which run them off the async workers.
macro_rules! backend_trait {
    ($(#[$tm:meta])* $trait:ident {
        $($(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*
    }) => {
        $(#[$tm])*
        pub trait $trait {
            $($(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret;)*
        }

        impl State {
            $($(#[$m])* pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                super::off_worker(|| self.backend.$name($($arg),*))
            })*
        }
    };
}
pub(crate) use backend_trait;

/// Runs a database call so that it never holds up an async worker: on the appliance's
/// multi-threaded runtime the worker hands its other tasks to another thread for the
/// call's duration ([`tokio::task::block_in_place`]); on a blocking thread, or outside
/// a runtime, it simply runs. (A current-thread runtime, as in unit tests, runs it in
/// place: it has no other worker to hand its tasks to.)
pub(crate) fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A state backend: every resource's store, plus durability. SQLite ([`Sqlite`]) is the
/// one there is; a backend over a database server implements the same traits.
pub trait Backend:
    AdminStore
    + BehindStore
    + CertStore
    + CursorStore
    + FailoverStore
    + HistoryStore
    + JobStore
    + MachineStore
    + PointStore
    + SettingStore
    + Send
    + Sync
{
}

impl Backend for Sqlite {}

/// The state store; cheap to clone, safe to share between tasks. Its methods (from the
/// per-resource traits) run on the backend off the async workers (`off_worker`).
#[derive(Clone)]
pub struct State {
    backend: Arc<dyn Backend>,
    behind: Arc<behind::Behind>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// `query_row` through the connection's statement cache: the machines list, the alerts
/// and the history sampler run the same few queries for every machine.
pub(crate) trait CachedRow {
    /// [`Connection::query_row`], its statement prepared once per connection.
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl CachedRow for Connection {
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 128;

/// The embedded SQLite backend: WAL journal, one connection that writes and a few that
/// only read. Readers see every commit made before their query starts and are never held
/// up by a writer (nor by a durable sync, which holds the writer for a disk flush).
pub struct Sqlite {
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    path: String,
}

/// How many read-only connections the SQLite backend keeps.
const READERS: usize = 4;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(crate::millis)
        .unwrap_or(0)
}

impl State {
    /// Opens (creating and migrating) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<State, StateError> {
        Ok(State { backend: Arc::new(Sqlite::open(path)?), behind: Default::default() })
    }
}

impl Sqlite {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Sqlite, StateError> {
        let p = path.display().to_string();
        let db = |source| StateError::Db { path: p.clone(), source };
        let mut conn = Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // A negative version is out of range: an error, like any corrupt value.
        let version: usize =
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, usize>(0)).map_err(db)?;
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
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db)?;
            r.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
            r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(Mutex::new(r));
        }
        Ok(Sqlite { conn: Mutex::new(conn), readers, next_reader: Default::default(), path: p })
    }

    /// The connection that writes (and reads inside its transactions).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection for a query that only reads: a free one if there is, else the next
    /// in turn.
    fn read(&self) -> MutexGuard<'_, Connection> {
        use std::sync::TryLockError;
        let start = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..self.readers.len() {
            match self.readers[(start + i) % self.readers.len()].try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.readers[start % self.readers.len()].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Db { path: self.path.clone(), source }
    }
}

#[cfg(test)]
mod tests;
