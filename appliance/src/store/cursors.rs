//! Where each role stands in each disk's sequence, progress, churn reports, disk alerts and hash comparisons.

use super::{CachedRow, Sqlite, State, StateError, now_ms};
use lifeboat_api::{DiskAlertKind, PointKind};
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};

/// A problem of one disk, see [`State::disk_alerts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAlertRow {
    /// The machine.
    pub machine_id: MachineId,
    /// The disk's index.
    pub disk: u32,
    /// What is wrong.
    pub kind: DiskAlertKind,
    /// What is wrong and what to do.
    pub message: String,
    /// Since when (the first time it was seen, kept while it holds).
    pub since_unix_ms: u64,
}

super::backend_trait! {
    /// Where each role stands in each disk's sequence, progress, churn, disk alerts and hash comparisons.
    CursorStore {

        /// The master target's cursor: the next sequence to apply, and the last point tag
        /// the disk reached.
        fn applied(&self, machine_id: MachineId, disk: u32) -> Result<(u64, Option<u64>), StateError>;

        /// Records that a disk's log `next - 1` was applied (and the point tag it carried, with
        /// the tag's kind: `crash` or `app`).
        fn set_applied(
            &self,
            machine_id: MachineId,
            disk: u32,
            next: u64,
            point_reached: Option<(u64, PointKind)>,
        ) -> Result<(), StateError>;

        /// The kind (`crash`, `app`) of the last point tag a disk reached; `crash` for tags
        /// recorded before the kind was (schema 2).
        fn applied_kind(&self, machine_id: MachineId, disk: u32) -> Result<PointKind, StateError>;

        /// A machine's progress per disk as (disk, phase, done, total), by disk.
        fn progress(&self, machine_id: MachineId) -> Result<Vec<(u32, String, u64, u64)>, StateError>;

        /// Stores an agent's progress report for one disk.
        fn set_progress(
            &self,
            machine_id: MachineId,
            p: &lifeboat_api::Progress,
        ) -> Result<(), StateError>;

        /// Stores a churn report (JSON, already checked) of `machine_id`.
        fn add_churn(&self, machine_id: MachineId, report_json: &str) -> Result<(), StateError>;

        /// A machine's newest churn report (JSON), if it sent one.
        fn newest_churn(&self, machine_id: MachineId) -> Result<Option<String>, StateError>;

        /// Churn reports as (machine, time, JSON), oldest first, of one machine or all.
        fn churn(
            &self,
            machine_id: Option<MachineId>,
        ) -> Result<Vec<(MachineId, u64, String)>, StateError>;

        /// Records (or refreshes the message of) a problem of one disk; `since` stays the
        /// first time it was seen.
        fn set_disk_alert(
            &self,
            machine_id: MachineId,
            disk: u32,
            kind: DiskAlertKind,
            message: &str,
        ) -> Result<(), StateError>;

        /// Clears a problem of one disk (nothing if there is none).
        fn clear_disk_alert(
            &self,
            machine_id: MachineId,
            disk: u32,
            kind: DiskAlertKind,
        ) -> Result<(), StateError>;

        /// Every problem of a disk that holds now.
        fn disk_alerts(&self) -> Result<Vec<DiskAlertRow>, StateError>;

        /// Asks for a comparison of a disk with its replica; returns its token (the open
        /// request's, if there is one).
        fn request_compare(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError>;

        /// Records a comparison asked for elsewhere (a master target at another site), under
        /// its token; false if it is known already.
        fn record_compare(
            &self,
            machine_id: MachineId,
            disk: u32,
            token: u64,
        ) -> Result<bool, StateError>;

        /// A machine's comparisons: (disk, token, point from which the replica is whole once
        /// the agent said it is done).
        fn compares(&self, machine_id: MachineId) -> Result<Vec<(u32, u64, Option<u64>)>, StateError>;

        /// The agent compared the whole disk for the request `token`; the replica is whole
        /// from `point` on. False if no such request is open.
        fn compare_done(
            &self,
            machine_id: MachineId,
            disk: u32,
            token: u64,
            point: u64,
        ) -> Result<bool, StateError>;

        /// Forgets a machine's comparisons that are done by `point`.
        fn end_compares(&self, machine_id: MachineId, point: u64) -> Result<Vec<u32>, StateError>;
    }
}

impl CursorStore for Sqlite {
    fn applied(&self, machine_id: MachineId, disk: u32) -> Result<(u64, Option<u64>), StateError> {
        self.read()
            .row_cached(
                "SELECT next_sequence, point_reached FROM applied
                 WHERE machine_id = ?1 AND disk = ?2",
                params![machine_id, disk],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
            )
            .optional()
            .map(|o| o.unwrap_or((0, None)))
            .map_err(|e| self.err(e))
    }

    fn set_applied(
        &self,
        machine_id: MachineId,
        disk: u32,
        next: u64,
        point_reached: Option<(u64, PointKind)>,
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

    fn applied_kind(&self, machine_id: MachineId, disk: u32) -> Result<PointKind, StateError> {
        self.read()
            .row_cached(
                "SELECT point_kind FROM applied WHERE machine_id = ?1 AND disk = ?2",
                params![machine_id, disk],
                |r| r.get::<_, Option<PointKind>>(0),
            )
            .optional()
            .map(|o| o.flatten().unwrap_or(PointKind::Crash))
            .map_err(|e| self.err(e))
    }

    fn progress(&self, machine_id: MachineId) -> Result<Vec<(u32, String, u64, u64)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT disk, phase, done_bytes, total_bytes FROM progress
                 WHERE machine_id = ?1 ORDER BY disk",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn set_progress(
        &self,
        machine_id: MachineId,
        p: &lifeboat_api::Progress,
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

    fn add_churn(&self, machine_id: MachineId, report_json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO churn (machine_id, reported_unix_ms, report) VALUES (?1, ?2, ?3)",
                params![machine_id, now_ms() as i64, report_json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn newest_churn(&self, machine_id: MachineId) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached(
                "SELECT report FROM churn WHERE machine_id = ?1
                 ORDER BY reported_unix_ms DESC, rowid DESC LIMIT 1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn churn(
        &self,
        machine_id: Option<MachineId>,
    ) -> Result<Vec<(MachineId, u64, String)>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
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

    fn set_disk_alert(
        &self,
        machine_id: MachineId,
        disk: u32,
        kind: DiskAlertKind,
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

    fn clear_disk_alert(
        &self,
        machine_id: MachineId,
        disk: u32,
        kind: DiskAlertKind,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "DELETE FROM disk_alerts WHERE machine_id = ?1 AND disk = ?2 AND kind = ?3",
                params![machine_id, disk, kind],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn disk_alerts(&self) -> Result<Vec<DiskAlertRow>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT machine_id, disk, kind, message, since_unix_ms FROM disk_alerts
                 ORDER BY machine_id, disk, kind",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(DiskAlertRow {
                    machine_id: r.get(0)?,
                    disk: r.get::<_, u32>(1)?,
                    kind: r.get(2)?,
                    message: r.get(3)?,
                    since_unix_ms: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn request_compare(&self, machine_id: MachineId, disk: u32) -> Result<u64, StateError> {
        let c = self.conn();
        let open: Option<i64> = c
            .row_cached(
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

    fn record_compare(
        &self,
        machine_id: MachineId,
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

    fn compares(&self, machine_id: MachineId) -> Result<Vec<(u32, u64, Option<u64>)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT disk, token, done_point FROM compares WHERE machine_id = ?1 ORDER BY disk",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![machine_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.map(|p| p as u64),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn compare_done(
        &self,
        machine_id: MachineId,
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

    fn end_compares(&self, machine_id: MachineId, point: u64) -> Result<Vec<u32>, StateError> {
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
}
