//! Each machine's history for the UI's plots: RPO, bytes received and backlog, sampled by
//! the configuration server (`config_server::history`), thinned with age.

use super::{Sqlite, State, StateError};
use lifeboat_wire::MachineId;
use rusqlite::params;

/// Samples are kept at full resolution this long.
pub const FULL_RESOLUTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Older samples are merged to one per hour, and dropped after this long.
pub const KEEP_MS: u64 = 90 * 24 * 3600 * 1000;
const HOUR_MS: u64 = 3600 * 1000;

/// One sample of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRow {
    /// The machine.
    pub machine_id: MachineId,
    /// When it was taken (the end of the span it covers).
    pub unix_ms: u64,
    /// How many seconds it covers (`sample_secs`, or 3600 once thinned).
    pub span_secs: u64,
    /// Age of the newest point then (thinned: the worst of the hour); none before the first.
    pub rpo_secs: Option<u64>,
    /// Bytes the process server received from the machine during the span.
    pub received_bytes: u64,
    /// Batches received and not applied yet (thinned: the worst of the hour).
    pub backlog_batches: u64,
}

super::backend_trait! {
    /// Each machine's sampled history.
    HistoryStore {
        /// Stores samples (one transaction); a sample already stored for the same machine
        /// and time is replaced.
        fn add_samples(&self, samples: &[SampleRow]) -> Result<(), StateError>;

        /// A machine's samples taken at or after `since_unix_ms`, oldest first.
        fn samples(&self, machine_id: MachineId, since_unix_ms: u64) -> Result<Vec<SampleRow>, StateError>;

        /// Merges samples older than [`FULL_RESOLUTION_MS`] to one per machine and hour (the
        /// worst RPO and backlog, the bytes summed) and drops those older than [`KEEP_MS`];
        /// returns (samples merged away, samples dropped).
        fn thin_samples(&self, now_unix_ms: u64) -> Result<(u64, u64), StateError>;
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SampleRow> {
    Ok(SampleRow {
        machine_id: r.get(0)?,
        unix_ms: r.get(1)?,
        span_secs: r.get(2)?,
        rpo_secs: r.get(3)?,
        received_bytes: r.get(4)?,
        backlog_batches: r.get(5)?,
    })
}

impl HistoryStore for Sqlite {
    fn add_samples(&self, samples: &[SampleRow]) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut s = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO samples
                     (machine_id, unix_ms, span_secs, rpo_secs, received_bytes, backlog_batches)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for x in samples {
                s.execute(params![
                    x.machine_id,
                    x.unix_ms,
                    x.span_secs,
                    x.rpo_secs,
                    x.received_bytes,
                    x.backlog_batches
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn samples(
        &self,
        machine_id: MachineId,
        since_unix_ms: u64,
    ) -> Result<Vec<SampleRow>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT machine_id, unix_ms, span_secs, rpo_secs, received_bytes, backlog_batches
                 FROM samples WHERE machine_id = ?1 AND unix_ms >= ?2 ORDER BY unix_ms",
            )
            .map_err(|e| self.err(e))?;
        let rows = s.query_map(params![machine_id, since_unix_ms], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn thin_samples(&self, now_unix_ms: u64) -> Result<(u64, u64), StateError> {
        // Whole hours only: a sample at the hour's end belongs to that hour, so the merged
        // row (stamped with the hour's end) never meets a sample it did not include.
        let cutoff = now_unix_ms.saturating_sub(FULL_RESOLUTION_MS) / HOUR_MS * HOUR_MS;
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let dropped = tx
            .execute(
                "DELETE FROM samples WHERE unix_ms < ?1",
                params![now_unix_ms.saturating_sub(KEEP_MS)],
            )
            .map_err(|e| self.err(e))? as u64;
        let merged: Vec<SampleRow> = {
            let mut s = tx
                .prepare_cached(
                    "SELECT machine_id, ((unix_ms - 1) / ?2 + 1) * ?2 AS hour_end, 3600,
                            MAX(rpo_secs), SUM(received_bytes), MAX(backlog_batches)
                     FROM samples WHERE unix_ms <= ?1 AND span_secs < 3600
                     GROUP BY machine_id, hour_end",
                )
                .map_err(|e| self.err(e))?;
            let rows = s.query_map(params![cutoff, HOUR_MS], row).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let removed = tx
            .execute(
                "DELETE FROM samples WHERE unix_ms <= ?1 AND span_secs < 3600",
                params![cutoff],
            )
            .map_err(|e| self.err(e))? as u64;
        {
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO samples
                     (machine_id, unix_ms, span_secs, rpo_secs, received_bytes, backlog_batches)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for x in &merged {
                s.execute(params![
                    x.machine_id,
                    x.unix_ms,
                    x.span_secs,
                    x.rpo_secs,
                    x.received_bytes,
                    x.backlog_batches
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok((removed - merged.len() as u64, dropped))
    }
}
