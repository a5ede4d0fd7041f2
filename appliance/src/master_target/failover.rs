//! Test failover, failover and commit: a recovery point materialised into disks and a VM
//! at the target. Every one runs as a job (`GET /api/v1/jobs/{id}`) through the master
//! target's target plugin.
//!
//! **Choosing the point** ([`PointChoice`]): `latest` first waits until the master target
//! has applied everything the process server had received when the job started (and cut
//! the points it reaches), then takes the newest point; `latest-processed` takes the
//! newest point at once; `latest-app` the newest app-consistent one; `latest-group` the
//! newest point that is part of a complete consistency-group point; or a point id.
//!
//! **The VM** ([`vm_spec`]): firmware, CPUs, memory and interfaces as the agent detected
//! them (`SystemInfo` in its hello), with the administrator's settings over them
//! (`PUT /api/v1/machines/{id}/vm-spec`): the boot disk first, each interface on its
//! mapped target network with an optional new address.
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
//!
//! A failover of machine `M`, as job `N` (the source is taken to be lost):
//! 1. the failover is recorded `failing-over`: the process server refuses the source from
//!    now on (`409 failed-over`), so what was received is all there is;
//! 2. the point is chosen; the names of what the job will make are recorded (so a restart
//!    half way leaves nothing the next failover does not delete);
//! 3. every disk is materialised as `foN-M-d<d>` and the VM `foN-M` made on its production
//!    networks;
//! 4. the failover is recorded `failed-over`: the master target leaves the machine's
//!    replica and points alone, so another point can still be chosen. Choosing another
//!    point makes the new VM first and deletes the earlier one's VM and disks only then;
//!    if the new one fails, the earlier one stays the machine's failover.
//!
//! A failure records `failover-failed` (the source stays refused; failing over again is
//! allowed). Commit deletes the machine's recovery points and its unapplied logs (the
//! failed-over VM and disks are what is kept; failback later makes the replica anew) and
//! records `committed`.

use crate::master_target::MasterError;
use std::sync::Arc;

use lifeboat_plugin_host::TargetInstance;
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::target::{Firmware, NicSpec, VmSpec};

use lifeboat_api::{NicMapping, SystemInfo, VmSpecInfo, VmSpecSettings};
use lifeboat_wire::MachineId;

use crate::store::{PointRow, State, StateError, TestFailoverRow, now_ms};

mod failback;
mod into;

/// Longest wait for the original machine's agent in reprotect and failback.
const REVERSE_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest wait for the master target to apply what was received (`latest`).
const PROCESS_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Which recovery point a (test) failover uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointChoice {
    /// Process everything already received, then the newest point.
    Latest,
    /// The newest point at the target now.
    LatestProcessed,
    /// The newest app-consistent point.
    LatestApp,
    /// The newest point that belongs to a complete consistency-group point.
    LatestGroup,
    /// A point id.
    Id(String),
}

impl PointChoice {
    /// Parses the API's `point` field (absent = `latest`).
    pub fn parse(s: Option<&str>) -> PointChoice {
        match s {
            None | Some("latest") => PointChoice::Latest,
            Some("latest-processed") => PointChoice::LatestProcessed,
            Some("latest-app") => PointChoice::LatestApp,
            Some("latest-group") => PointChoice::LatestGroup,
            Some(id) => PointChoice::Id(id.to_owned()),
        }
    }
}

/// Why no point fits a choice: (code, message), answered as 404.
pub type NoPoint = (&'static str, String);

/// The point `choice` names among the machine's points now (`Latest` as
/// `LatestProcessed`: waiting for the master target is the job's part).
pub fn choose_point(
    state: &State,
    machine: MachineId,
    choice: &PointChoice,
) -> Result<Result<PointRow, NoPoint>, StateError> {
    let points = state.points(machine)?;
    let none = |what: &str| ("no_point", format!("machine {machine} has no {what}"));
    Ok(match choice {
        PointChoice::Latest | PointChoice::LatestProcessed => {
            points.last().cloned().ok_or_else(|| none("recovery point yet"))
        }
        PointChoice::LatestApp => points
            .iter()
            .rev()
            .find(|p| p.kind == lifeboat_api::PointKind::App)
            .cloned()
            .ok_or_else(|| none("app-consistent point")),
        PointChoice::LatestGroup => {
            // Group points of groups this machine is in, where every member's point with
            // that number is at the target.
            let mut best: Option<PointRow> = None;
            for g in state.group_points(None)? {
                if !g.members.contains(&machine) {
                    continue;
                }
                let Some(mine) = points.iter().find(|p| p.point == g.point) else {
                    continue;
                };
                let mut complete = true;
                for m in &g.members {
                    if *m != machine && !state.points(*m)?.iter().any(|p| p.point == g.point) {
                        complete = false;
                    }
                }
                if complete && best.as_ref().is_none_or(|b| b.point < mine.point) {
                    best = Some(mine.clone());
                }
            }
            best.ok_or_else(|| none("complete consistency-group point"))
        }
        PointChoice::Id(id) => points.iter().find(|p| &p.id == id).cloned().ok_or_else(|| {
            ("unknown_point", format!("point: machine {machine} has no point {id:?}"))
        }),
    })
}

/// The VM a failover of `machine` makes: detected facts, the administrator's settings over
/// them, defaults for what neither gives (BIOS, 2 CPUs, 2048 MiB, one interface on
/// `default`).
pub fn vm_spec(state: &State, machine: MachineId) -> Result<VmSpecInfo, MasterError> {
    let detected: Option<SystemInfo> = match state.machine_facts(machine)? {
        Some(t) => Some(serde_json::from_str(&t)?),
        None => None,
    };
    let settings: VmSpecSettings = match state.vm_settings(machine)? {
        Some(t) => serde_json::from_str(&t)?,
        None => VmSpecSettings::default(),
    };
    let mut disks: Vec<u32> = state.disks(machine)?.into_iter().map(|(i, _)| i).collect();
    disks.sort_unstable();
    if let Some(b) = settings.boot_disk
        && let Some(pos) = disks.iter().position(|d| *d == b)
    {
        let boot = disks.remove(pos);
        disks.insert(0, boot);
    }
    let nics = match &settings.nics {
        Some(n) => n
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if m.mac.is_none() {
                    m.mac = detected
                        .as_ref()
                        .and_then(|d| d.nics.iter().find(|n| n.name == m.source))
                        .map(|n| n.mac.clone());
                }
                m
            })
            .collect(),
        None => match &detected {
            Some(d) if !d.nics.is_empty() => d
                .nics
                .iter()
                .map(|n| NicMapping {
                    source: n.name.clone(),
                    network: "default".into(),
                    mac: Some(n.mac.clone()),
                    ip: None,
                })
                .collect(),
            _ => vec![NicMapping {
                source: "eth0".into(),
                network: "default".into(),
                mac: None,
                ip: None,
            }],
        },
    };
    Ok(VmSpecInfo {
        firmware: settings
            .firmware
            .clone()
            .or_else(|| detected.as_ref().map(|d| d.firmware.clone()))
            .unwrap_or_else(|| "bios".into()),
        cpus: settings.cpus.or(detected.as_ref().map(|d| d.cpus.min(256))).unwrap_or(2),
        memory_mib: settings
            .memory_mib
            .or(detected.as_ref().map(|d| d.memory_mib.clamp(128, 4 << 20)))
            .unwrap_or(2048),
        disks,
        nics,
        detected,
    })
}

/// The target plugin's VM spec for `spec`.
fn plugin_spec(name: String, spec: &VmSpecInfo, disks: Vec<String>, isolated: bool) -> VmSpec {
    VmSpec {
        name,
        firmware: if spec.firmware == "uefi" { Firmware::Uefi } else { Firmware::Bios },
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disks,
        nics: spec
            .nics
            .iter()
            .map(|n| NicSpec { network: n.network.clone(), mac: n.mac.clone(), ip: n.ip.clone() })
            .collect(),
        isolated,
    }
}

/// Where test failovers are made: the target plugin of the master target.
#[derive(Clone)]
pub struct Failover {
    /// State store.
    pub state: State,
    /// Loaded plugins.
    pub registry: Arc<Registry>,
    /// The master target's target plugin as the configuration file names it (a target
    /// chosen from the API wins: [`Failover::target_name`]).
    pub target: String,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover").field("target", &self.target).finish()
    }
}

/// A delete that found nothing to delete (a cleanup repeated after a crash) succeeded.
fn gone(r: Result<(), lifeboat_plugin_host::CallError>) -> Result<(), MasterError> {
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
    /// The target plugin in use: the one chosen from the API, else the configured one.
    pub fn target_name(&self) -> String {
        crate::config_server::targets::chosen(&self.state, &self.target)
    }

    async fn instance(&self) -> Result<TargetInstance, MasterError> {
        let name = self.target_name();
        let plugin = self
            .registry
            .get(&name)
            .ok_or_else(|| MasterError::msg(format!("target plugin {name:?} is not loaded")))?;
        Ok(TargetInstance::new(plugin).await?)
    }

    /// Waits until the master target applied everything received for `machine` when
    /// this was called, and cut the points that reaches.
    async fn wait_processed(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
    ) -> Result<(), MasterError> {
        let mut want = Vec::new();
        for (d, _) in self.state.disks(machine)? {
            want.push((d, self.state.received_next(machine, d)?));
        }
        let start = std::time::Instant::now();
        loop {
            let newest = self.state.newest_point(machine)?.map(|p| p.point).unwrap_or(0);
            // Done when no disk can move on: each has applied what was received, or waits
            // at a tag beyond the newest point for a disk whose logs up to that tag never
            // came (the source was lost mid-point). If every disk waits at one tag, the
            // point is about to be cut.
            let (mut left, mut waiting, mut tags) = (0, 0, Vec::new());
            for (d, received) in &want {
                let (applied, reached) = self.state.applied(machine, *d)?;
                let parked = reached.is_some_and(|r| r > newest);
                if parked {
                    waiting += 1;
                    tags.push(reached);
                } else {
                    left += received.saturating_sub(applied);
                }
            }
            let all_at_one_tag =
                waiting == want.len() && waiting > 0 && tags.windows(2).all(|w| w[0] == w[1]);
            if left == 0 && !all_at_one_tag {
                return Ok(());
            }
            if start.elapsed() > PROCESS_WAIT {
                return Err(MasterError::msg(format!(
                    "the master target did not apply the {left} logs received for {machine} in {} s; \
                     choose latest-processed to use the newest point there is",
                    PROCESS_WAIT.as_secs()
                )));
            }
            self.state.job_progress(
                job,
                0.0,
                &format!("processing what was received: {left} logs to apply"),
            )?;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The point `choice` names, after processing what was received for `Latest`.
    async fn resolve(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        choice: &PointChoice,
    ) -> Result<PointRow, MasterError> {
        if *choice == PointChoice::Latest {
            self.wait_processed(job, machine).await?;
        }
        choose_point(&self.state, machine, choice)?.map_err(|(_, m)| MasterError::msg(m))
    }

    /// Materialises every disk of `point` as `<prefix>-<machine>-d<d>`, in the VM's disk
    /// order, pushing each made disk to `made`; answers the disks' JSON descriptions.
    async fn materialize_all(
        &self,
        t: &mut TargetInstance,
        job: lifeboat_api::JobId,
        prefix: &str,
        point: &PointRow,
        order: &[u32],
        made: &mut Vec<String>,
    ) -> Result<Vec<lifeboat_api::FailoverDisk>, MasterError> {
        let mut disks: Vec<u32> =
            order.iter().copied().filter(|d| point.disks.contains(d)).collect();
        disks.extend(point.disks.iter().copied().filter(|d| !order.contains(d)));
        let steps = disks.len() as f64 + 1.0;
        let mut locations = Vec::new();
        let machine = &point.machine_id;
        for (i, d) in disks.iter().enumerate() {
            let new = format!("{prefix}-{machine}-d{d}");
            let source = format!("{machine}-d{d}");
            self.state.job_progress(job, i as f64 / steps, &format!("materialising disk {d}"))?;
            let m = t.materialize(&point.id, &source, &new).await?;
            made.push(new.clone());
            locations.push(lifeboat_api::FailoverDisk {
                disk: *d,
                id: new,
                location: m.location,
                instant: m.instant,
            });
        }
        self.state.job_progress(job, (steps - 1.0) / steps, "creating the VM")?;
        Ok(locations)
    }

    /// What the master target's target plugin says it can do.
    pub async fn target_capabilities(
        &self,
    ) -> Result<lifeboat_plugin_host::target::TargetCapabilities, MasterError> {
        let t = self.instance().await?;
        t.capabilities().cloned().ok_or_else(|| {
            MasterError::msg(format!(
                "the target plugin {} gave no capabilities",
                self.target_name()
            ))
        })
    }

    /// Runs job `job`: a test failover of `machine` at the point `choice` names.
    pub async fn test_failover(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        choice: PointChoice,
    ) {
        let tf = format!("tf{job}");
        let mut made: Vec<String> = Vec::new();
        let r = self.test_failover_steps(job, &tf, machine, &choice, &mut made).await;
        match r {
            Ok(result) => {
                let _ = self.state.finish_job(
                    job,
                    true,
                    "test failover ready",
                    serde_json::to_string(&result).ok().as_deref(),
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
                tracing::warn!(%job, %machine, "test failover failed: {e:#}");
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    async fn test_failover_steps(
        &self,
        job: lifeboat_api::JobId,
        tf: &str,
        machine: MachineId,
        choice: &PointChoice,
        made: &mut Vec<String>,
    ) -> Result<lifeboat_api::TestFailoverResult, MasterError> {
        let point = self.resolve(job, machine, choice).await?;
        let spec = vm_spec(&self.state, machine)?;
        let mut t = self.instance().await?;
        let locations = self.materialize_all(&mut t, job, tf, &point, &spec.disks, made).await?;
        let vm =
            t.create_vm(&plugin_spec(format!("{tf}-{machine}"), &spec, made.clone(), true)).await?;
        self.state.add_test_failover(&TestFailoverRow {
            id: tf.to_owned(),
            machine_id: machine.to_owned(),
            point_id: point.id.clone(),
            vm: vm.clone(),
            disks: made.clone(),
            created_unix_ms: now_ms(),
            cleaned_unix_ms: None,
        })?;
        tracing::info!(%job, %machine, point = %point.id, test_failover = tf, %vm, "test failover ready");
        Ok(lifeboat_api::TestFailoverResult {
            test_failover: tf.to_owned(),
            vm,
            point: point.id,
            disks: locations,
        })
    }

    /// Runs job `job`: a failover of `machine` at the point `choice` names. The failover
    /// was recorded `failing-over` by the caller ([`State::start_failover`]); what an
    /// earlier failover of the machine made (another point before commit) is replaced only
    /// once the new VM exists.
    pub async fn failover(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        choice: PointChoice,
    ) {
        let old = self.state.failovers(Some(machine)).ok().and_then(|mut v| v.pop());
        let mut made: Vec<String> = Vec::new();
        let mut vm_made = None;
        match self
            .failover_steps(job, machine, &choice, old.as_ref(), &mut made, &mut vm_made)
            .await
        {
            Ok(result) => {
                let _ = self.state.finish_job(
                    job,
                    true,
                    "failed over",
                    serde_json::to_string(&result).ok().as_deref(),
                );
            }
            Err(e) => {
                if let Ok(mut t) = self.instance().await {
                    if let Some(vm) = &vm_made {
                        let _ = t.delete_vm(vm).await;
                    }
                    for d in &made {
                        let _ = t.delete_disk(d).await;
                    }
                }
                tracing::warn!(%job, %machine, "failover failed: {e:#}");
                // An earlier failover that is still in place stays the machine's failover.
                let _ = match old.filter(|o| o.vm.is_some() && o.point_id.is_some()) {
                    Some(o) => self.state.set_failover(
                        machine,
                        lifeboat_api::FailoverState::FailedOver,
                        o.point_id.as_deref(),
                        o.vm.as_deref(),
                        &o.disks,
                    ),
                    None => self.state.set_failover(
                        machine,
                        lifeboat_api::FailoverState::FailoverFailed,
                        None,
                        None,
                        &[],
                    ),
                };
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    async fn failover_steps(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        choice: &PointChoice,
        old: Option<&crate::store::FailoverRow>,
        made: &mut Vec<String>,
        vm_made: &mut Option<String>,
    ) -> Result<lifeboat_api::FailoverResult, MasterError> {
        let t0 = std::time::Instant::now();
        let mut t = self.instance().await?;
        let point = self.resolve(job, machine, choice).await?;
        let spec = vm_spec(&self.state, machine)?;
        let prefix = format!("fo{job}");
        let vm_name = format!("{prefix}-{machine}");
        let in_place = old.is_some_and(|o| o.vm.is_some() && o.point_id.is_some());
        if !in_place {
            // What this job will make, recorded first: if the appliance stops half way, the
            // next failover of the machine deletes it.
            let planned: Vec<String> =
                point.disks.iter().map(|d| format!("{prefix}-{machine}-d{d}")).collect();
            // Leftovers of a failover cut short.
            if let Some(o) = old {
                if let Some(vm) = &o.vm {
                    gone(t.delete_vm(vm).await)?;
                }
                for d in &o.disks {
                    gone(t.delete_disk(d).await)?;
                }
            }
            self.state.set_failover(
                machine,
                lifeboat_api::FailoverState::FailingOver,
                None,
                Some(&vm_name),
                &planned,
            )?;
        }
        let locations =
            self.materialize_all(&mut t, job, &prefix, &point, &spec.disks, made).await?;
        let vm = t.create_vm(&plugin_spec(vm_name, &spec, made.clone(), false)).await?;
        *vm_made = Some(vm.clone());
        self.state.set_failover(
            machine,
            lifeboat_api::FailoverState::FailedOver,
            Some(&point.id),
            Some(&vm),
            made,
        )?;
        // The new failover is in place: what the earlier one made goes (a failure here
        // leaves garbage, not a broken failover).
        if let Some(o) = old.filter(|_| in_place) {
            if let Some(old_vm) = &o.vm
                && let Err(e) = gone(t.delete_vm(old_vm).await)
            {
                tracing::warn!(%job, %machine, vm = %old_vm, "the earlier failover's VM was not deleted: {e:#}");
            }
            for d in &o.disks {
                if let Err(e) = gone(t.delete_disk(d).await) {
                    tracing::warn!(%job, %machine, disk = %d, "the earlier failover's disk was not deleted: {e:#}");
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(%job, %machine, point = %point.id, %vm, seconds, "failed over");
        Ok(lifeboat_api::FailoverResult {
            machine: machine.to_string(),
            vm,
            point: point.id,
            disks: locations,
            seconds,
        })
    }

    /// Runs job `job`: commits `machine`'s failover (moved to `committing` by the caller):
    /// its recovery points and unapplied logs are deleted, the failed-over VM and disks
    /// (and the replica) stay. A failure goes back to `failed-over`.
    pub async fn commit(&self, job: lifeboat_api::JobId, machine: MachineId) {
        let r: Result<u64, MasterError> = async {
            let mut t = self.instance().await?;
            let points = self.state.points(machine)?;
            for (i, p) in points.iter().enumerate() {
                self.state.job_progress(
                    job,
                    i as f64 / (points.len() + 1) as f64,
                    &format!("deleting recovery point {}", p.point),
                )?;
                gone(t.delete_point(&p.id).await)?;
                self.state.delete_point(&p.id)?;
            }
            let mid = machine;
            for (d, _) in self.state.disks(machine)? {
                for name in t.list_logs(&crate::logobj::log_prefix(mid, d)).await? {
                    gone(t.delete_log(&name).await)?;
                }
            }
            let fo = self.state.failovers(Some(machine))?.pop();
            let (point, vm, disks) = fo.map(|f| (f.point_id, f.vm, f.disks)).unwrap_or_default();
            self.state.set_failover(
                machine,
                lifeboat_api::FailoverState::Committed,
                point.as_deref(),
                vm.as_deref(),
                &disks,
            )?;
            Ok(points.len() as u64)
        }
        .await;
        match r {
            Ok(n) => {
                tracing::info!(%job, %machine, points_deleted = n, "failover committed");
                let _ = self.state.finish_job(
                    job,
                    true,
                    "committed",
                    serde_json::to_string(&lifeboat_api::CommitResult {
                        machine: machine.to_string(),
                        points_deleted: n,
                    })
                    .ok()
                    .as_deref(),
                );
            }
            Err(e) => {
                let _ = self.state.failover_transition(
                    machine,
                    lifeboat_api::FailoverState::Committing,
                    lifeboat_api::FailoverState::FailedOver,
                );
                tracing::warn!(%job, %machine, "commit failed: {e:#}");
                let _ = self.state.finish_job(job, false, &format!("{e:#}"), None);
            }
        }
    }

    /// Runs job `job`: the cleanup of test failover `tf`.
    pub async fn cleanup(&self, job: lifeboat_api::JobId, tf: TestFailoverRow) {
        let r: Result<(), MasterError> = async {
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
                tracing::info!(%job, test_failover = %tf.id, "test failover cleaned up");
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
