//! Test failover (issue 5, first step of the lifecycle): a recovery point materialised into
//! an isolated copy while replication goes on, and its cleanup. Both run as jobs
//! (`GET /api/v1/jobs/{id}`) through the master target's target plugin.
//!
//! A test failover of machine `M` at point `P`, as job `N`:
//! 1. every disk `d` of the point is materialised as `tfN-M-d<d>` (`materialize`: a reflink
//!    or sparse copy at the local target, no data through the appliance);
//! 2. a VM `tfN-M` is created on them with `isolated = true` (test network only);
//! 3. the test failover `tfN` is recorded with its VM and disks.
//!
//! A failure part way deletes what the job made, and the job fails with the reason. Cleanup
//! deletes the VM and the disks and marks the test failover cleaned; it never touches the
//! replicas or the points.

use std::sync::Arc;

use lifeboat_plugin_host::TargetInstance;
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::target::{Firmware, VmSpec};

use crate::state::{PointRow, State, TestFailoverRow, now_ms};

/// Where test failovers are made: the target plugin of the master target.
#[derive(Clone)]
pub struct Failover {
    /// State store.
    pub state: State,
    /// Loaded plugins.
    pub registry: Arc<Registry>,
    /// The master target's target plugin name.
    pub target: String,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover").field("target", &self.target).finish()
    }
}

/// A delete that found nothing to delete (a cleanup repeated after a crash) succeeded.
fn gone(r: Result<(), lifeboat_plugin_host::CallError>) -> anyhow::Result<()> {
    match r {
        Err(e)
            if !matches!(
                e.plugin_error(),
                Some(lifeboat_plugin_host::PluginError::NotFound(_))
            ) =>
        {
            Err(e.into())
        }
        _ => Ok(()),
    }
}

impl Failover {
    async fn instance(&self) -> anyhow::Result<TargetInstance> {
        let plugin = self
            .registry
            .get(&self.target)
            .ok_or_else(|| anyhow::anyhow!("target plugin {:?} is not loaded", self.target))?;
        Ok(TargetInstance::new(plugin).await?)
    }

    /// Runs job `job`: a test failover of `machine` at `point`.
    pub async fn test_failover(&self, job: u64, machine: String, point: PointRow) {
        let tf = format!("tf{job}");
        let mut made: Vec<String> = Vec::new();
        let r = self.test_failover_steps(job, &tf, &machine, &point, &mut made).await;
        match r {
            Ok(result) => {
                let _ = self.state.finish_job(
                    job,
                    true,
                    "test failover ready",
                    Some(&result.to_string()),
                );
            }
            Err(e) => {
                // Undo what this job made; the replicas and points are never touched.
                if let Ok(mut t) = self.instance().await {
                    let _ = t.delete_vm(&format!("{tf}-{machine}")).await;
                    for d in &made {
                        let _ = t.delete_disk(d).await;
                    }
                }
                tracing::warn!(job, %machine, "test failover failed: {e:#}");
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    async fn test_failover_steps(
        &self,
        job: u64,
        tf: &str,
        machine: &str,
        point: &PointRow,
        made: &mut Vec<String>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut t = self.instance().await?;
        let steps = point.disks.len() as f64 + 1.0;
        let mut locations = Vec::new();
        for (i, d) in point.disks.iter().enumerate() {
            let new = format!("{tf}-{machine}-d{d}");
            let source = format!("{machine}-d{d}");
            self.state.job_progress(job, i as f64 / steps, &format!("materialising disk {d}"))?;
            let m = t.materialize(&point.id, &source, &new).await?;
            made.push(new.clone());
            locations.push(serde_json::json!({"disk": d, "id": new, "location": m.location, "instant": m.instant}));
        }
        self.state.job_progress(job, (steps - 1.0) / steps, "creating the isolated VM")?;
        let vm_name = format!("{tf}-{machine}");
        let vm = t
            .create_vm(&VmSpec {
                name: vm_name,
                firmware: Firmware::Bios,
                cpus: 2,
                memory_mib: 2048,
                disks: made.clone(),
                nics: Vec::new(),
                isolated: true,
            })
            .await?;
        self.state.add_test_failover(&TestFailoverRow {
            id: tf.to_owned(),
            machine_id: machine.to_owned(),
            point_id: point.id.clone(),
            vm: vm.clone(),
            disks: made.clone(),
            created_unix_ms: now_ms(),
            cleaned_unix_ms: None,
        })?;
        tracing::info!(job, %machine, point = %point.id, test_failover = tf, %vm, "test failover ready");
        Ok(
            serde_json::json!({"test_failover": tf, "vm": vm, "point": point.id, "disks": locations}),
        )
    }

    /// Runs job `job`: the cleanup of test failover `tf`.
    pub async fn cleanup(&self, job: u64, tf: TestFailoverRow) {
        let r: anyhow::Result<()> = async {
            let mut t = self.instance().await?;
            self.state.job_progress(job, 0.0, "deleting the VM")?;
            gone(t.delete_vm(&tf.vm).await)?;
            for (i, d) in tf.disks.iter().enumerate() {
                self.state.job_progress(
                    job,
                    (i + 1) as f64 / (tf.disks.len() + 1) as f64,
                    &format!("deleting {d}"),
                )?;
                gone(t.delete_disk(d).await)?;
            }
            self.state.test_failover_cleaned(&tf.id)?;
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                tracing::info!(job, test_failover = %tf.id, "test failover cleaned up");
                let _ = self.state.finish_job(
                    job,
                    true,
                    "cleaned up",
                    Some(&serde_json::json!({"test_failover": tf.id}).to_string()),
                );
            }
            Err(e) => {
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }
}
