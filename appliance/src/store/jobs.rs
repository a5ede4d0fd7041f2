//! Long-running jobs and their progress.

use super::{Sqlite, State, StateError, now_ms};
use lifeboat_api::{JobId, JobKind, JobState};
use lifeboat_wire::MachineId;
use rusqlite::params;

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Job number.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// The machine it is about.
    pub machine_id: Option<String>,
    /// Where it stands.
    pub state: JobState,
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

super::backend_trait! {
    /// Long-running jobs.
    JobStore {
        /// Starts a job; returns its number.
        fn create_job(
            &self,
            kind: JobKind,
            machine_id: Option<MachineId>,
            message: &str,
        ) -> Result<JobId, StateError>;

        /// Records a running job's progress.
        fn job_progress(&self, id: JobId, progress: f64, message: &str) -> Result<(), StateError>;

        /// Ends a job: succeeded with `result` (JSON) or failed with `message`.
        fn finish_job(
            &self,
            id: JobId,
            ok: bool,
            message: &str,
            result: Option<&str>,
        ) -> Result<(), StateError>;

        /// Jobs a restart interrupted are failed (they are not resumed); returns how many.
        fn fail_interrupted_jobs(&self) -> Result<u64, StateError>;

        /// Jobs, newest first (at most `limit`), or one.
        fn jobs(&self, id: Option<JobId>, limit: u64) -> Result<Vec<JobRow>, StateError>;
    }
}

impl JobStore for Sqlite {
    fn create_job(
        &self,
        kind: JobKind,
        machine_id: Option<MachineId>,
        message: &str,
    ) -> Result<JobId, StateError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO jobs (kind, machine_id, state, progress, message, created_unix_ms)
             VALUES (?1, ?2, 'running', 0, ?3, ?4)",
            params![kind, machine_id, message, now_ms() as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(JobId(c.last_insert_rowid() as u64))
    }

    fn job_progress(&self, id: JobId, progress: f64, message: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE jobs SET progress = ?2, message = ?3 WHERE id = ?1 AND state = 'running'",
                params![id, progress, message],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn finish_job(
        &self,
        id: JobId,
        ok: bool,
        message: &str,
        result: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE jobs SET state = ?2, progress = CASE WHEN ?2 = 'succeeded' THEN 1 ELSE progress END,
                 message = ?3, result = ?4, finished_unix_ms = ?5 WHERE id = ?1",
                params![id, if ok { JobState::Succeeded } else { JobState::Failed }, message, result, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn fail_interrupted_jobs(&self) -> Result<u64, StateError> {
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

    fn jobs(&self, id: Option<JobId>, limit: u64) -> Result<Vec<JobRow>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, kind, machine_id, state, progress, message, created_unix_ms, finished_unix_ms, result
                 FROM jobs WHERE ?1 IS NULL OR id = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id, limit as i64], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
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
}
