//! Recovery plans: ordered groups of machines, failed over (or test-failed over) group by
//! group, the machines of a group in parallel, with pre and post actions per group. An
//! action is an allow-listed script of the appliance (`[plans.scripts]`), an action plugin
//! (`kind = "action"`, the `action` world), or a manual step that holds the plan until
//! someone confirms it (`POST /api/v1/jobs/{id}/continue`, `lifeboat plan continue`).
//!
//! A plan runs as one job; each machine's (test) failover is a job of its own, so it can be
//! followed and cleaned up like any other. The plan stops at the first failure (an action
//! that fails, a machine that does not fail over), saying which; what was done before
//! stays (test failovers to clean up, failovers to commit or fail over again).

use lifeboat_wire::MachineId;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_api::{Plan, PlanAction};
use lifeboat_plugin_host::ActionInstance;
use lifeboat_plugin_host::action::{PlanContext, PlanMachine};
use lifeboat_plugin_host::manifest::PluginKind;

use crate::master_target::failover::{Failover, PointChoice};
use crate::store::State;

/// Longest a script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What plans run with: the allow-listed scripts and the jobs waiting on a manual step.
#[derive(Debug, Default)]
pub struct Plans {
    /// Script name → program and arguments.
    pub scripts: BTreeMap<String, Vec<String>>,
    /// Jobs waiting on a manual step: the step's number in the plan and its wake-up.
    waiting: Mutex<HashMap<lifeboat_api::JobId, (u32, Arc<tokio::sync::Notify>)>>,
    /// Manual steps reached so far per running job.
    manual_steps: Mutex<HashMap<lifeboat_api::JobId, u32>>,
}

impl Plans {
    /// Plans with these scripts.
    pub fn new(scripts: BTreeMap<String, Vec<String>>) -> Plans {
        Plans {
            scripts,
            waiting: Mutex::new(HashMap::new()),
            manual_steps: Mutex::new(HashMap::new()),
        }
    }

    /// The number the next manual step of job `job` gets (1 first).
    fn steps_seen(&self, job: lifeboat_api::JobId) -> u32 {
        let mut m = self.manual_steps.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(job).or_insert(0);
        *n += 1;
        *n
    }

    /// Confirms job `job`'s manual step — `step`, if given, must be the one it waits on
    /// (so a late or repeated confirmation never confirms a step nobody has seen). `Err`
    /// with the reason when nothing was confirmed.
    pub fn confirm(&self, job: lifeboat_api::JobId, step: Option<u32>) -> Result<u32, String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match waiting.entry(job) {
            Entry::Vacant(_) => Err(format!("job {job} is not waiting for a manual step")),
            Entry::Occupied(e) if step.is_some_and(|want| want != e.get().0) => Err(format!(
                "job {job} waits on manual step {}, not {}",
                e.get().0,
                step.unwrap_or_default()
            )),
            Entry::Occupied(e) => {
                let (s, n) = e.remove();
                n.notify_one();
                Ok(s)
            }
        }
    }

    /// Checks `plan` against what exists: machines, scripts, action plugins.
    pub fn validate(
        &self,
        state: &State,
        failover: Option<&Failover>,
        plan: &Plan,
    ) -> Result<(), String> {
        plan.check()?;
        for (i, g) in plan.groups.iter().enumerate() {
            for (j, m) in g.machines.iter().enumerate() {
                let Ok(id) = m.parse::<MachineId>() else {
                    return Err(format!("groups[{i}].machines[{j}]: {m:?} is not a machine id"));
                };
                if !state.machine_exists(id).map_err(|e| e.to_string())? {
                    return Err(format!("groups[{i}].machines[{j}]: no machine {m:?}"));
                }
            }
            for (stage, actions) in [("pre", &g.pre), ("post", &g.post)] {
                for (j, a) in actions.iter().enumerate() {
                    let at = format!("groups[{i}].{stage}[{j}]");
                    if let Some(s) = &a.script {
                        match self.scripts.get(s) {
                            Some(argv) if argv.first().is_some_and(|p| p.starts_with('/')) => {}
                            Some(_) => {
                                return Err(format!(
                                    "{at}.script: {s:?} in [plans.scripts] needs an absolute program path"
                                ));
                            }
                            None => {
                                return Err(format!(
                                    "{at}.script: {s:?} is not in [plans.scripts] of appliance.toml"
                                ));
                            }
                        }
                    }
                    if let Some(p) = &a.plugin {
                        let kind = failover.and_then(|f| f.registry.get(p)).map(|l| l.kind());
                        if kind != Some(PluginKind::Action) {
                            return Err(format!(
                                "{at}.plugin: {p:?} is not a loaded action plugin"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs job `job`: plan `name` in `mode` (`test-failover` or `failover`).
    pub async fn run(
        self: Arc<Self>,
        f: Failover,
        job: lifeboat_api::JobId,
        name: String,
        plan: Plan,
        mode: String,
        choice: PointChoice,
    ) {
        let mut log: Vec<String> = Vec::new();
        let r = self.steps(&f, job, &name, &plan, &mode, &choice, &mut log).await;
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
        self.manual_steps.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
        let result = serde_json::to_string(&lifeboat_api::PlanResult {
            plan: name.clone(),
            mode: mode.clone(),
            log,
        })
        .ok();
        match r {
            Ok(()) => {
                tracing::info!(%job, plan = %name, %mode, "recovery plan done");
                let _ = f.state.finish_job(job, true, "plan done", result.as_deref());
            }
            Err(e) => {
                tracing::warn!(%job, plan = %name, %mode, "recovery plan stopped: {e}");
                let _ = f.state.finish_job(job, false, &e, result.as_deref());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        f: &Failover,
        job: lifeboat_api::JobId,
        name: &str,
        plan: &Plan,
        mode: &str,
        choice: &PointChoice,
        log: &mut Vec<String>,
    ) -> Result<(), String> {
        let kind: lifeboat_api::JobKind = mode.parse().map_err(|e| format!("{e}"))?;
        let n = plan.groups.len();
        for (gi, g) in plan.groups.iter().enumerate() {
            let progress = |part: f64| (gi as f64 + part) / n as f64;
            let ids =
                g.machines.iter().map(|m| m.parse::<MachineId>()).collect::<Result<Vec<_>, _>>()?;
            let hostname = |m: MachineId| -> String {
                f.state
                    .machines()
                    .ok()
                    .and_then(|all| all.into_iter().find(|x| x.0 == m).map(|x| x.1))
                    .unwrap_or_default()
            };
            let mut machines: Vec<PlanMachine> = ids
                .iter()
                .map(|&m| PlanMachine { id: m.to_string(), hostname: hostname(m), vm: None })
                .collect();
            for a in &g.pre {
                let _ =
                    f.state.job_progress(job, progress(0.0), &format!("group {gi}: pre action"));
                let line = self.action(f, job, name, mode, gi, "pre", &machines, a).await?;
                log.push(format!("group {gi} pre: {line}"));
            }
            let _ = f.state.job_progress(
                job,
                progress(0.3),
                &format!("group {gi}: {} machine(s)", g.machines.len()),
            );
            let mut children = Vec::new();
            for &m in &ids {
                let child = f
                    .state
                    .create_job(kind, Some(m), &format!("{mode} by plan {name} (job {job})"))
                    .map_err(|e| e.to_string())?;
                if mode == "failover"
                    && !f.state.start_failover(m, child).map_err(|e| e.to_string())?
                {
                    let _ = f.state.finish_job(
                        child,
                        false,
                        "the machine is failing over or committed",
                        None,
                    );
                    return Err(format!(
                        "group {gi}: machine {m} cannot fail over now (failing over already, or committed)"
                    ));
                }
                let (f2, m2, c2, mode2) = (f.clone(), m, choice.clone(), mode.to_owned());
                children.push((
                    m,
                    child,
                    tokio::spawn(async move {
                        if mode2 == "failover" {
                            f2.failover(child, m2, c2).await
                        } else {
                            f2.test_failover(child, m2, c2).await
                        }
                    }),
                ));
            }
            for (m, child, task) in children {
                let _ = task.await;
                let j = f.state.jobs(Some(child), 1).map_err(|e| e.to_string())?.pop();
                let Some(j) = j.filter(|j| j.state == lifeboat_api::JobState::Succeeded) else {
                    return Err(format!("group {gi}: {mode} of machine {m} failed (job {child})"));
                };
                let vm = j
                    .result
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                    .and_then(|v| v["vm"].as_str().map(str::to_owned));
                log.push(format!(
                    "group {gi}: {m} ready, VM {} (job {child})",
                    vm.as_deref().unwrap_or("?")
                ));
                if let Some(pm) = machines.iter_mut().find(|x| x.id == m.to_string()) {
                    pm.vm = vm;
                }
            }
            for a in &g.post {
                let _ =
                    f.state.job_progress(job, progress(0.9), &format!("group {gi}: post action"));
                let line = self.action(f, job, name, mode, gi, "post", &machines, a).await?;
                log.push(format!("group {gi} post: {line}"));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn action(
        &self,
        f: &Failover,
        job: lifeboat_api::JobId,
        plan: &str,
        mode: &str,
        group: usize,
        stage: &str,
        machines: &[PlanMachine],
        a: &PlanAction,
    ) -> Result<String, String> {
        let at = format!("group {group} {stage}");
        if let Some(msg) = &a.manual {
            let notify = Arc::new(tokio::sync::Notify::new());
            let step = {
                let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let step = self.steps_seen(job);
                w.insert(job, (step, notify.clone()));
                step
            };
            let progress = f
                .state
                .jobs(Some(job), 1)
                .ok()
                .and_then(|mut j| j.pop())
                .map(|j| j.progress)
                .unwrap_or(0.0);
            let _ = f.state.job_progress(
                job,
                progress,
                &format!(
                    "waiting for confirmation of step {step}: {msg} (lifeboat plan continue {job} --step {step})"
                ),
            );
            tracing::info!(%job, %plan, group, "recovery plan waits for a manual step: {msg}");
            notify.notified().await;
            return Ok(format!("manual step confirmed: {msg}"));
        }
        if let Some(name) = &a.script {
            let argv = self
                .scripts
                .get(name)
                .ok_or_else(|| format!("{at}: script {name:?} is no longer allow-listed"))?;
            let vms: Vec<&str> = machines.iter().filter_map(|m| m.vm.as_deref()).collect();
            let ids: Vec<&str> = machines.iter().map(|m| m.id.as_str()).collect();
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..])
                .env("LIFEBOAT_PLAN", plan)
                .env("LIFEBOAT_MODE", mode)
                .env("LIFEBOAT_GROUP", group.to_string())
                .env("LIFEBOAT_STAGE", stage)
                .env("LIFEBOAT_MACHINES", ids.join(","))
                .env("LIFEBOAT_VMS", vms.join(","))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(SCRIPT_TIMEOUT, c.output())
                .await
                .map_err(|_| {
                    format!("{at}: script {name} ran longer than {} s", SCRIPT_TIMEOUT.as_secs())
                })?
                .map_err(|e| format!("{at}: script {name} ({}) could not start: {e}", argv[0]))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: String =
                    err.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(format!(
                    "{at}: script {name} failed ({}): {}",
                    out.status,
                    tail.trim()
                ));
            }
            return Ok(format!("script {name} done"));
        }
        let name = a.plugin.as_deref().unwrap_or_default();
        let plugin = f
            .registry
            .get(name)
            .filter(|p| p.kind() == PluginKind::Action)
            .ok_or_else(|| format!("{at}: action plugin {name:?} is not loaded"))?;
        let mut inst =
            ActionInstance::new(plugin).await.map_err(|e| format!("{at}: plugin {name}: {e}"))?;
        let group = u32::try_from(group).map_err(|_| {
            format!("{at}: group {group} is past the plugin interface's 32-bit index")
        })?;
        let ctx = PlanContext {
            plan: plan.to_owned(),
            mode: mode.to_owned(),
            group,
            stage: stage.to_owned(),
            machines: machines.to_vec(),
        };
        inst.run(&ctx).await.map_err(|e| format!("{at}: plugin {name}: {e}"))
    }
}
