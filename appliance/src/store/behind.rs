//! What the per-batch path records — the process server's cursor of each disk and the
//! counters — kept in memory and written behind, and durability marks.
//!
//! Accepting a batch writes nothing to the database: its cursor advance and its counts
//! are atomic updates in memory. They reach the database together, in one transaction, at every
//! [`State::make_durable`] (the process server's, before a shipped batch leaves its cache)
//! and at least every second from [`State::flush_every`]. The memory is what every reader
//! in the process sees, so nothing reads a cursor behind what was acknowledged.
//!
//! After a crash the database holds what was last written: a cursor may be behind (the
//! process server's cache replay advances it again to every batch it still holds, and a
//! batch leaves the cache only after a durable sync covered its cursor), and up to a
//! second of counts is lost (they are statistics).

use super::{CachedRow, Sqlite, State, StateError};
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};

/// What the appliance counts (`lifeboat-appliance stats`, `GET /metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Batches the process server accepted.
    ReceivedBatches,
    /// Their bytes.
    ReceivedBytes,
    /// Batches received again (already acknowledged) and dropped.
    DuplicateBatches,
    /// Their bytes.
    DuplicateBytes,
    /// Log objects shipped to the target.
    ShippedObjects,
    /// Their bytes.
    ShippedBytes,
    /// Batches the master target applied to replicas.
    AppliedBatches,
    /// Logs the master target found missing (each repaired by a comparison).
    LogGaps,
    /// Log objects that failed to open (altered, or sealed under an unknown key).
    UnsealedLogs,
    /// Bytes hashed by comparisons.
    ComparedBytes,
    /// Bytes the comparisons found different.
    ComparedDifferingBytes,
}

impl Counter {
    /// Every counter.
    pub const ALL: [Counter; 11] = [
        Counter::ReceivedBatches,
        Counter::ReceivedBytes,
        Counter::DuplicateBatches,
        Counter::DuplicateBytes,
        Counter::ShippedObjects,
        Counter::ShippedBytes,
        Counter::AppliedBatches,
        Counter::LogGaps,
        Counter::UnsealedLogs,
        Counter::ComparedBytes,
        Counter::ComparedDifferingBytes,
    ];

    /// Its name in the database and in `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::ReceivedBatches => "received_batches",
            Counter::ReceivedBytes => "received_bytes",
            Counter::DuplicateBatches => "duplicate_batches",
            Counter::DuplicateBytes => "duplicate_bytes",
            Counter::ShippedObjects => "shipped_objects",
            Counter::ShippedBytes => "shipped_bytes",
            Counter::AppliedBatches => "applied_batches",
            Counter::LogGaps => "log_gaps",
            Counter::UnsealedLogs => "unsealed_logs",
            Counter::ComparedBytes => "compared_bytes",
            Counter::ComparedDifferingBytes => "compared_differing_bytes",
        }
    }
}

/// The backend side: where written-behind values are stored.
pub trait BehindStore {
    /// The process server's cursor of a disk as stored: the next sequence it expects.
    fn stored_received_next(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError>;

    /// Writes cursors (each only advanced, never moved back) and adds to counters, in one
    /// transaction.
    fn write_behind(
        &self,
        cursors: &[(MachineId, u32, u64)],
        counts: &[(&str, u64)],
    ) -> Result<(), StateError>;

    /// Every stored counter, by name.
    fn stored_counters(&self) -> Result<Vec<(String, u64)>, StateError>;

    /// The replica of a disk was made anew (failback): the master target goes on from
    /// sequence `next` with no point reached, and the process server expects `next`.
    fn rebase_disk(&self, machine_id: MachineId, disk: u32, next: u64) -> Result<(), StateError>;

    /// Makes every commit so far durable (they survive a power cut).
    fn make_durable(&self) -> Result<(), StateError>;
}

/// One disk's cursor in memory.
#[derive(Debug, Default)]
struct Cursor {
    next: AtomicU64,
    stored: AtomicU64,
    /// Bytes received for the disk since the process started (for the history samples;
    /// never stored).
    received_bytes: AtomicU64,
}

/// The in-memory side, shared by every clone of a [`State`].
#[derive(Debug, Default)]
pub(super) struct Behind {
    cursors: RwLock<HashMap<(MachineId, u32), Arc<Cursor>>>,
    counts: [AtomicU64; Counter::ALL.len()],
    /// Durable syncs started, and the newest one completed (see [`State::durable_mark`]).
    syncs_started: AtomicU64,
    synced: AtomicU64,
}

impl State {
    fn cursor(&self, machine_id: MachineId, disk: u32) -> Result<Arc<Cursor>, StateError> {
        let key = (machine_id, disk);
        if let Some(c) = self.behind.cursors.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let stored = super::off_worker(|| self.backend.stored_received_next(machine_id, disk))?;
        let mut all = self.behind.cursors.write().unwrap_or_else(|e| e.into_inner());
        let c = all.entry(key).or_insert_with(|| {
            Arc::new(Cursor {
                next: AtomicU64::new(stored),
                stored: AtomicU64::new(stored),
                received_bytes: AtomicU64::new(0),
            })
        });
        Ok(c.clone())
    }

    /// The process server's cursor: the next sequence it expects for a disk.
    pub fn received_next(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError> {
        Ok(self.cursor(machine_id, disk)?.next.load(SeqCst))
    }

    /// Advances the process server's cursor (never moves it back); written behind.
    pub fn set_received_next(
        &self,
        machine_id: MachineId,
        disk: u32,
        next: u64,
    ) -> Result<(), StateError> {
        self.cursor(machine_id, disk)?.next.fetch_max(next, SeqCst);
        Ok(())
    }

    /// Counts bytes received for a disk (in memory only: see [`State::received_bytes`]).
    pub fn add_received_bytes(
        &self,
        machine_id: MachineId,
        disk: u32,
        bytes: u64,
    ) -> Result<(), StateError> {
        self.cursor(machine_id, disk)?.received_bytes.fetch_add(bytes, SeqCst);
        Ok(())
    }

    /// Bytes received for a disk since this process started.
    pub fn received_bytes(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError> {
        Ok(self.cursor(machine_id, disk)?.received_bytes.load(SeqCst))
    }

    /// The replica of a disk was made anew (failback): the master target goes on from
    /// sequence `next` with no point reached, and the process server expects `next`.
    pub fn rebase_disk(
        &self,
        machine_id: MachineId,
        disk: u32,
        next: u64,
    ) -> Result<(), StateError> {
        let c = self.cursor(machine_id, disk)?;
        super::off_worker(|| self.backend.rebase_disk(machine_id, disk, next))?;
        c.next.fetch_max(next, SeqCst);
        c.stored.fetch_max(next, SeqCst);
        Ok(())
    }

    /// Adds to counters; written behind.
    pub fn count(&self, adds: &[(Counter, u64)]) -> Result<(), StateError> {
        for &(c, by) in adds {
            self.behind.counts[c as usize].fetch_add(by, SeqCst);
        }
        Ok(())
    }

    /// Every counter, by name: what is stored plus what is not written yet.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StateError> {
        let mut all: std::collections::BTreeMap<String, u64> =
            super::off_worker(|| self.backend.stored_counters())?.into_iter().collect();
        for c in Counter::ALL {
            let pending = self.behind.counts[c as usize].load(SeqCst);
            if pending > 0 {
                *all.entry(c.name().to_owned()).or_default() += pending;
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Writes what is kept in memory to the backend.
    pub fn flush(&self) -> Result<(), StateError> {
        let dirty: Vec<((MachineId, u32), Arc<Cursor>, u64)> = self
            .behind
            .cursors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(k, c)| {
                let next = c.next.load(SeqCst);
                (next > c.stored.load(SeqCst)).then(|| (*k, c.clone(), next))
            })
            .collect();
        let counts: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .map(|&c| (c, self.behind.counts[c as usize].swap(0, SeqCst)))
            .filter(|&(_, n)| n > 0)
            .collect();
        if dirty.is_empty() && counts.is_empty() {
            return Ok(());
        }
        let cursors: Vec<(MachineId, u32, u64)> =
            dirty.iter().map(|((m, d), _, next)| (*m, *d, *next)).collect();
        let named: Vec<(&str, u64)> = counts.iter().map(|&(c, n)| (c.name(), n)).collect();
        match super::off_worker(|| self.backend.write_behind(&cursors, &named)) {
            Ok(()) => {
                for (_, c, next) in &dirty {
                    c.stored.fetch_max(*next, SeqCst);
                }
                Ok(())
            }
            Err(e) => {
                // Nothing was written: the counts go back to be written next time.
                self.count(&counts)?;
                Err(e)
            }
        }
    }

    /// Flushes every `period` until `shutdown`, and once more then.
    pub async fn flush_every(
        &self,
        period: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "state: writing cursors and counters failed; retrying");
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "state: writing cursors and counters at shutdown failed");
        }
    }

    /// Makes every commit so far durable, and what is kept in memory with it (they
    /// survive a power cut): call it before an irreversible step that relies on them.
    pub fn make_durable(&self) -> Result<(), StateError> {
        let started = self.behind.syncs_started.fetch_add(1, SeqCst) + 1;
        self.flush()?;
        super::off_worker(|| self.backend.make_durable())?;
        self.behind.synced.fetch_max(started, SeqCst);
        Ok(())
    }

    /// A mark to take right after a change: once [`State::make_durable_since`] is called
    /// with it, that change is durable. Lets one sync cover many changes.
    pub fn durable_mark(&self) -> u64 {
        self.behind.syncs_started.load(SeqCst)
    }

    /// Makes the changes made before `mark` was taken durable: nothing to do if a
    /// [`State::make_durable`] that started after the mark completed since (its flush saw
    /// them and its sync covered them), else one now.
    pub fn make_durable_since(&self, mark: u64) -> Result<(), StateError> {
        if self.behind.synced.load(SeqCst) > mark {
            return Ok(());
        }
        self.make_durable()
    }
}

impl BehindStore for Sqlite {
    fn stored_received_next(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError> {
        self.read()
            .row_cached(
                "SELECT next_sequence FROM received WHERE machine_id = ?1 AND disk = ?2",
                params![machine_id, disk],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    fn write_behind(
        &self,
        cursors: &[(MachineId, u32, u64)],
        counts: &[(&str, u64)],
    ) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        for (machine_id, disk, next) in cursors {
            tx.execute(
                "INSERT INTO received (machine_id, disk, next_sequence) VALUES (?1, ?2, ?3)
                 ON CONFLICT (machine_id, disk) DO UPDATE
                 SET next_sequence = MAX(next_sequence, ?3)",
                params![machine_id, disk, *next as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        for (name, by) in counts {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + ?2",
                params![name, *by as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn stored_counters(&self) -> Result<Vec<(String, u64)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT name, value FROM counters ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn rebase_disk(&self, machine_id: MachineId, disk: u32, next: u64) -> Result<(), StateError> {
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

    /// One commit under `synchronous = FULL`, which syncs the WAL and with it every
    /// earlier commit.
    fn make_durable(&self) -> Result<(), StateError> {
        self.conn()
            .execute_batch(
                "PRAGMA synchronous = FULL;
                 INSERT INTO counters (name, value) VALUES ('durable_commits', 1)
                   ON CONFLICT (name) DO UPDATE SET value = value + 1;
                 PRAGMA synchronous = NORMAL;",
            )
            .map_err(|e| self.err(e))
    }
}
