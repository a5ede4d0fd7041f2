//! Reprotect and failback: replication reversed from the failed-over machine to the
//! source, then the final pass and the switch back.

use super::*;
use lifeboat_wire::MachineId;

impl Failover {
    /// Waits until reverse replication of `machine` satisfies `done`, showing the pass's
    /// progress; `what` names what is awaited.
    async fn wait_reverse(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        what: &str,
        done: impl Fn(&crate::store::ReverseRow) -> bool,
    ) -> Result<crate::store::ReverseRow, MasterError> {
        let start = std::time::Instant::now();
        loop {
            let r = self.state.reverse(machine)?.ok_or_else(|| {
                MasterError::msg(format!("reverse replication of {machine} is gone"))
            })?;
            if done(&r) {
                return Ok(r);
            }
            if start.elapsed() > REVERSE_WAIT {
                return Err(MasterError::msg(format!(
                    "no {what} in {} hours: is `lifeboat-agent reprotect` running on the original machine?",
                    REVERSE_WAIT.as_secs() / 3600
                )));
            }
            let (progress, message) = if r.done_bytes > 0 {
                (
                    r.done_bytes as f64 / r.total_bytes.max(1) as f64,
                    format!(
                        "{what}: {} of {} MiB compared, {} MiB received",
                        r.done_bytes >> 20,
                        r.total_bytes >> 20,
                        r.received_bytes >> 20
                    ),
                )
            } else {
                (
                    0.0,
                    format!(
                        "waiting for {what} by the original machine's agent (`lifeboat-agent reprotect`)"
                    ),
                )
            };
            self.state.job_progress(job, progress.min(0.99), &message)?;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    /// Runs job `job`: reprotect of `machine` (moved to `reprotecting`, its reverse
    /// replication started, by the caller): done once the original machine's agent
    /// completed a reverse pass; `reprotected` then.
    pub async fn reprotect(&self, job: lifeboat_api::JobId, machine: MachineId) {
        let into = match self.destination(machine) {
            Ok(Some(dest)) => Some(self.reprotect_into(job, machine, &dest).await),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        if let Some(r) = into {
            match r {
                Ok(result) => {
                    let _ = self.state.failover_transition(
                        machine,
                        lifeboat_api::FailoverState::Reprotecting,
                        lifeboat_api::FailoverState::Reprotected,
                    );
                    tracing::info!(%job, %machine, %result, "reprotected into another target");
                    let _ = self.state.finish_job(
                        job,
                        true,
                        &format!(
                            "reprotected: the disks at {} hold the failed-over machine's data",
                            result["target"].as_str().unwrap_or("the destination")
                        ),
                        Some(&result.to_string()),
                    );
                }
                Err(e) => {
                    let _ = self.state.failover_transition(
                        machine,
                        lifeboat_api::FailoverState::Reprotecting,
                        lifeboat_api::FailoverState::Committed,
                    );
                    tracing::warn!(%job, %machine, "reprotect into another target failed: {e:#}");
                    let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
                }
            }
            return;
        }
        let r = self.wait_reverse(job, machine, "a reverse pass", |r| r.passes >= 1).await;
        match r {
            Ok(r) => {
                let _ = self.state.failover_transition(
                    machine,
                    lifeboat_api::FailoverState::Reprotecting,
                    lifeboat_api::FailoverState::Reprotected,
                );
                tracing::info!(%job, %machine, received_bytes = r.last_received_bytes, "reprotected");
                let _ = self.state.finish_job(
                    job,
                    true,
                    "reprotected: the original disks hold the failed-over machine's data",
                    Some(
                        &serde_json::json!({
                            "machine": machine.to_string(), "passes": r.passes,
                            "received_bytes": r.last_received_bytes, "disk_bytes": r.total_bytes,
                        })
                        .to_string(),
                    ),
                );
            }
            Err(e) => {
                let _ = self.state.failover_transition(
                    machine,
                    lifeboat_api::FailoverState::Reprotecting,
                    lifeboat_api::FailoverState::Committed,
                );
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    /// Runs job `job`: failback of `machine` (moved to `failing-back` by the caller). The
    /// failed-over VM is stopped (deleted at the target, and checked gone), its disks are
    /// frozen (a point, materialised as `fb<job>-…` copies), the agent's final reverse pass
    /// over those is awaited, the replicas are made anew from the same point (clones at
    /// the target, no data over the network) and replication goes forward again from the
    /// agent's numbering; then the failed-over disks and the copies are deleted.
    pub async fn failback(&self, job: lifeboat_api::JobId, machine: MachineId) {
        let r = match self.destination(machine) {
            Ok(Some(dest)) => self.failback_into(job, machine, &dest).await,
            Ok(None) => self.failback_steps(job, machine).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(result) => {
                tracing::info!(%job, %machine, %result, "failed back: replication goes forward again");
                let message = match result["vm_name"].as_str() {
                    Some(vm) => format!(
                        "failed back into VM {vm} at {}; protected again once its agent resyncs",
                        result["target"].as_str().unwrap_or("the destination")
                    ),
                    None => "failed back; protected again".into(),
                };
                let _ = self.state.finish_job(job, true, &message, Some(&result.to_string()));
            }
            Err(e) => {
                let _ = self.state.failover_transition(
                    machine,
                    lifeboat_api::FailoverState::FailingBack,
                    lifeboat_api::FailoverState::Reprotected,
                );
                tracing::warn!(%job, %machine, "failback failed: {e:#}");
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    /// The machine's failover.
    pub(super) fn failover_row(
        &self,
        machine: MachineId,
    ) -> Result<crate::store::FailoverRow, MasterError> {
        self.state
            .failovers(Some(machine))?
            .pop()
            .ok_or_else(|| MasterError::msg(format!("machine {machine} has no failover")))
    }

    /// Deletes the failed-over VM of `fo` (its disks stay), checks it is gone, and records
    /// the failover without a VM.
    pub(super) async fn stop_failed_over(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        fo: &crate::store::FailoverRow,
        t: &mut TargetInstance,
    ) -> Result<(), MasterError> {
        let Some(vm) = &fo.vm else { return Ok(()) };
        self.state.job_progress(job, 0.0, "stopping the failed-over VM")?;
        gone(t.delete_vm(vm).await)?;
        match t.vm_state(vm).await {
            Err(e)
                if matches!(
                    e.plugin_error(),
                    Some(lifeboat_plugin_host::PluginError::NotFound(_))
                ) => {}
            other => {
                return Err(MasterError::msg(format!(
                    "the failed-over VM {vm} is still there: {other:?}"
                )));
            }
        }
        self.state.set_failover(
            machine,
            lifeboat_api::FailoverState::FailingBack,
            fo.point_id.as_deref(),
            None,
            &fo.disks,
        )?;
        Ok(())
    }

    async fn failback_steps(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
    ) -> Result<serde_json::Value, MasterError> {
        let fo = self.failover_row(machine)?;
        let mut t = self.instance().await?;
        self.stop_failed_over(job, machine, &fo, &mut t).await?;
        // Frozen copies of the stopped machine's disks: the final pass reads them, and the
        // replicas are made from the same point.
        let mid = machine;
        let point = format!("fb{job}-{machine}");
        t.create_point(&point, "failback", &fo.disks).await?;
        let mut frozen = Vec::new();
        let r: Result<serde_json::Value, MasterError> = async {
            for d in &fo.disks {
                let copy = format!("fb{job}-{d}");
                t.materialize(&point, d, &copy).await?;
                frozen.push(copy);
            }
            self.state.request_final_pass(machine, Some(&frozen))?;
            let r =
                self.wait_reverse(job, machine, "the final reverse pass", |r| r.final_done).await?;
            let cursors: Vec<lifeboat_api::DiskCursor> =
                serde_json::from_str(r.next_sequences.as_deref().unwrap_or("[]"))?;
            self.state.job_progress(job, 0.99, "making the replicas from the failed-over disks")?;
            for (d, _) in self.state.disks(machine)? {
                let suffix = format!("-d{d}");
                let Some(source) = fo.disks.iter().find(|x| x.ends_with(&suffix)) else {
                    return Err(MasterError::msg(format!(
                        "the failed-over disks have no disk {d}"
                    )));
                };
                let agent_next = cursors
                    .iter()
                    .find(|c| c.index == d)
                    .map(|c| c.next_sequence)
                    .ok_or_else(|| {
                        MasterError::msg(format!("the final pass gave no sequence for disk {d}"))
                    })?;
                let replica = crate::logobj::disk_id(mid, d);
                gone(t.delete_disk(&replica).await)?;
                t.materialize(&point, source, &replica).await?;
                let next = agent_next.max(self.state.received_next(machine, d)?);
                self.state.rebase_disk(machine, d, next)?;
            }
            Ok(serde_json::json!({
                "machine": machine.to_string(),
                "final_pass_received_bytes": r.last_received_bytes,
                "disk_bytes": r.total_bytes,
            }))
        }
        .await;
        if r.is_err() {
            let _ = self.state.request_final_pass(machine, None);
        }
        // Forward again first; then what failback no longer needs goes (a failure there
        // leaves garbage at the target, logged, not a machine stuck half way).
        if r.is_ok() {
            self.state.end_failover(machine)?;
        }
        let mut garbage: Vec<&String> = frozen.iter().collect();
        if r.is_ok() {
            garbage.extend(&fo.disks);
        }
        if let Err(e) = gone(t.delete_point(&point).await) {
            tracing::warn!(%job, %machine, %point, "failback's point was not deleted: {e:#}");
        }
        for d in garbage {
            if let Err(e) = gone(t.delete_disk(d).await) {
                tracing::warn!(%job, %machine, disk = %d, "a disk failback no longer needs was not deleted: {e:#}");
            }
        }
        r
    }
}
