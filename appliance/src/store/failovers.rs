//! Failovers, test failovers and reverse replication.

use super::{CachedRow, Sqlite, State, StateError, now_ms};
use lifeboat_api::{FailoverState, JobId};
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};

/// A machine's failover as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRow {
    /// The machine.
    pub machine_id: MachineId,
    /// Where it stands.
    pub state: FailoverState,
    /// The point the VM was made from.
    pub point_id: Option<String>,
    /// The VM at the target.
    pub vm: Option<String>,
    /// The VM's disks at the target, boot disk first.
    pub disks: Vec<String>,
    /// The job that made it.
    pub job: JobId,
    /// When it was asked for.
    pub started_unix_ms: u64,
    /// When it was committed.
    pub committed_unix_ms: Option<u64>,
}

/// A test failover as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailoverRow {
    /// Its id (`tf<job>`).
    pub id: String,
    /// The machine.
    pub machine_id: MachineId,
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
    /// Reprotect into another target: where failback makes the VM
    /// (`lifeboat_api::ReprotectDestination`, JSON); `None`: the original machine.
    pub destination: Option<String>,
}

super::backend_trait! {
    /// Failovers, test failovers and reverse replication.
    FailoverStore {
        /// Records a test failover.
        fn add_test_failover(&self, t: &TestFailoverRow) -> Result<(), StateError>;

        /// Test failovers, oldest first, or one.
        fn test_failovers(&self, id: Option<&str>) -> Result<Vec<TestFailoverRow>, StateError>;

        /// Marks a test failover cleaned up.
        fn test_failover_cleaned(&self, id: &str) -> Result<(), StateError>;

        /// Starts a failover of a machine as job `job`: replication of the machine stops
        /// being accepted. False (nothing written) if it is failing over already, or failed
        /// over and committed.
        fn start_failover(&self, machine_id: MachineId, job: JobId) -> Result<bool, StateError>;

        /// Records where a failover stands: its state and, once made, the VM and disks.
        fn set_failover(
            &self,
            machine_id: MachineId,
            state: FailoverState,
            point_id: Option<&str>,
            vm: Option<&str>,
            disks: &[String],
        ) -> Result<(), StateError>;

        /// Failovers, by machine id, or one machine's.
        fn failovers(&self, machine_id: Option<MachineId>) -> Result<Vec<FailoverRow>, StateError>;

        /// Moves a machine's failover from state `from` to `to`; false (nothing written) if it
        /// was not in `from`.
        fn failover_transition(
            &self,
            machine_id: MachineId,
            from: FailoverState,
            to: FailoverState,
        ) -> Result<bool, StateError>;

        /// Starts reverse replication of a machine whose disks hold `total_bytes`: into the
        /// original machine, or into `destination` (JSON) at another target.
        fn start_reverse(
            &self,
            machine_id: MachineId,
            total_bytes: u64,
            destination: Option<&str>,
        ) -> Result<(), StateError>;

        /// Where reverse replication of a machine stands, if it was started.
        fn reverse(&self, machine_id: MachineId) -> Result<Option<ReverseRow>, StateError>;

        /// Counts a served reverse diff: `hashed` bytes compared, `sent` bytes sent. A diff at
        /// the start of the first disk starts a new pass's counts.
        fn reverse_progress(
            &self,
            machine_id: MachineId,
            restart: bool,
            hashed: u64,
            sent: u64,
        ) -> Result<(), StateError>;

        /// Records a completed reverse pass; a final one — started after failback asked for it
        /// (a diff at the start of the first disk came after the request) and covering every
        /// byte — with the agent's next sequences.
        fn reverse_pass_done(
            &self,
            machine_id: MachineId,
            final_pass: bool,
            next_sequences_json: &str,
        ) -> Result<(), StateError>;

        /// Failback asks the agent for a final pass (the failed-over VM is stopped) over
        /// `source_disks`, frozen copies of the failed-over disks; with `None`, the request is
        /// withdrawn (a failback that failed).
        fn request_final_pass(
            &self,
            machine_id: MachineId,
            source_disks: Option<&[String]>,
        ) -> Result<(), StateError>;

        /// Forward replication again: the failover and its reverse replication are forgotten.
        fn end_failover(&self, machine_id: MachineId) -> Result<(), StateError>;

        /// A machine's failover state, if it has one (`failing-over`, `failed-over`, …).
        fn failover_state(&self, machine_id: MachineId) -> Result<Option<FailoverState>, StateError>;
    }
}

impl FailoverStore for Sqlite {
    fn add_test_failover(&self, t: &TestFailoverRow) -> Result<(), StateError> {
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

    fn test_failovers(&self, id: Option<&str>) -> Result<Vec<TestFailoverRow>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
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

    fn test_failover_cleaned(&self, id: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE test_failovers SET cleaned_unix_ms = ?2 WHERE id = ?1",
                params![id, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn start_failover(&self, machine_id: MachineId, job: JobId) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO failovers (machine_id, state, disks, job, started_unix_ms)
                 VALUES (?1, 'failing-over', '', ?2, ?3)
                 ON CONFLICT (machine_id) DO UPDATE SET state = 'failing-over', job = ?2
                 WHERE failovers.state IN ('failed-over', 'failover-failed')",
                params![machine_id, job, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn set_failover(
        &self,
        machine_id: MachineId,
        state: FailoverState,
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

    fn failovers(&self, machine_id: Option<MachineId>) -> Result<Vec<FailoverRow>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
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
                    job: r.get(5)?,
                    started_unix_ms: r.get::<_, i64>(6)? as u64,
                    committed_unix_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn failover_transition(
        &self,
        machine_id: MachineId,
        from: FailoverState,
        to: FailoverState,
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

    fn start_reverse(
        &self,
        machine_id: MachineId,
        total_bytes: u64,
        destination: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO reverse_sync (machine_id, passes, final_requested, final_done, done_bytes,
                     total_bytes, received_bytes, last_received_bytes, updated_unix_ms, destination)
                 VALUES (?1, 0, 0, 0, 0, ?2, 0, 0, ?3, ?4)
                 ON CONFLICT (machine_id) DO UPDATE SET passes = 0, final_requested = 0,
                     final_done = 0, done_bytes = 0, total_bytes = ?2, received_bytes = 0,
                     last_received_bytes = 0, next_sequences = NULL, updated_unix_ms = ?3,
                     destination = ?4",
                params![machine_id, total_bytes as i64, now_ms() as i64, destination],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn reverse(&self, machine_id: MachineId) -> Result<Option<ReverseRow>, StateError> {
        self.read()
            .row_cached(
                "SELECT passes, final_requested, final_done, done_bytes, total_bytes,
                        received_bytes, last_received_bytes, next_sequences, final_started,
                        source_disks, destination
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
                        destination: r.get(10)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn reverse_progress(
        &self,
        machine_id: MachineId,
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

    fn reverse_pass_done(
        &self,
        machine_id: MachineId,
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

    fn request_final_pass(
        &self,
        machine_id: MachineId,
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

    fn end_failover(&self, machine_id: MachineId) -> Result<(), StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM reverse_sync WHERE machine_id = ?1", params![machine_id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM failovers WHERE machine_id = ?1", params![machine_id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn failover_state(&self, machine_id: MachineId) -> Result<Option<FailoverState>, StateError> {
        self.read()
            .row_cached(
                "SELECT state FROM failovers WHERE machine_id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}
