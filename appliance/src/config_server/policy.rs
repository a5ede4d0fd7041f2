//! Replication policies and alerts.
//!
//! A policy (`lifeboat_api::Policy`) sets a machine's RPO thresholds, how long its
//! agent may stay silent, and the tiered thinning of its recovery points. Machines use
//! `default` (the built-in values until an administrator stores another `default`) until
//! given another. The master target thins points by the machine's policy when it has a
//! `retention` (`master_target::retention`), else by the appliance's `keep_points`/`keep_hours`.
//!
//! Alerts ([`alerts`]) are evaluated when asked for: RPO over the machine's thresholds,
//! a silent agent, the process server's cache over its high-water mark or full, the
//! appliance's CPU and memory over 80 % (warning) and 95 % (critical) — ASR's thresholds —
//! and plugin failures (a refused plugin, a failing master target pass). The appliance's
//! own figures come from [`Health`], sampled every few seconds into the state store.

use lifeboat_api::Alert;
#[cfg(test)]
use lifeboat_api::Policy;
use lifeboat_wire::MachineId;

use crate::store::{State, StateError, now_ms};

/// Samples the appliance's CPU and memory use and the cache into the state store, for
/// alerts and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    last_cpu: Option<(u64, u64)>,
}

impl Health {
    /// One sample: CPU use since the last sample, memory use now.
    pub fn sample(&mut self, state: &State) -> Result<(), StateError> {
        if let Some((busy, total)) =
            std::fs::read_to_string("/proc/stat").ok().and_then(|t| cpu_times(&t))
        {
            if let Some((b0, t0)) = self.last_cpu
                && total > t0
            {
                let pct = 100.0 * (busy - b0) as f64 / (total - t0) as f64;
                state.set_setting("cpu_percent", &format!("{pct:.1}"))?;
            }
            self.last_cpu = Some((busy, total));
        }
        if let Some(pct) =
            std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| memory_percent(&t))
        {
            state.set_setting("memory_percent", &format!("{pct:.1}"))?;
        }
        state.set_setting("health_unix_ms", &now_ms().to_string())
    }
}

/// (busy, total) jiffies from `/proc/stat`'s first line.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Memory in use (total − available), percent, from `/proc/meminfo`.
fn memory_percent(meminfo: &str) -> Option<f64> {
    let get = |key: &str| {
        meminfo.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let (total, avail) = (get("MemTotal:")?, get("MemAvailable:")?);
    (total > 0.0).then(|| 100.0 * (total - avail) / total)
}

fn setting_f64(state: &State, name: &str) -> Result<Option<f64>, StateError> {
    Ok(state.setting(name)?.and_then(|v| v.parse().ok()))
}

/// Figures older than this are not alerted on (the sampler stopped).
const STALE_MS: u64 = 60_000;

/// The last alert an agent reported (a quiescer failed), as stored in the settings under
/// `agent_alert:<machine>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentAlertRecord {
    /// What failed (the agent's alert kind).
    pub kind: String,
    /// The agent's words.
    pub message: String,
    /// When the appliance received it.
    pub at: u64,
}

/// The alerts found so far.
struct Found(Vec<Alert>);

impl Found {
    fn add(
        &mut self,
        kind: &str,
        critical: bool,
        machine: Option<MachineId>,
        message: String,
        value: f64,
        threshold: f64,
    ) {
        self.0.push(Alert {
            kind: kind.into(),
            severity: if critical { "critical" } else { "warning" }.into(),
            machine_id: machine.map(|m| m.to_string()),
            message,
            value,
            threshold,
        });
    }
}

/// Every alert that holds now, critical first.
pub fn alerts(state: &State) -> Result<Vec<Alert>, StateError> {
    let now = now_ms();
    let mut found = Found(Vec::new());
    for (id, hostname, _) in state.machines()? {
        if state.is_revoked(id)? || state.failover_state(id)?.is_some() {
            continue; // not replicating: no RPO to keep
        }
        machine_alerts(state, now, id, &hostname, &mut found)?;
    }
    appliance_alerts(state, now, &mut found)?;
    disk_and_role_alerts(state, now, &mut found)?;
    let mut out = found.0;
    out.sort_by_key(|a| a.severity != "critical");
    Ok(out)
}

/// A replicating machine's alerts: its RPO, a failed quiescer, a silent agent.
fn machine_alerts(
    state: &State,
    now: u64,
    id: MachineId,
    hostname: &str,
    found: &mut Found,
) -> Result<(), StateError> {
    let policy = state.policy_of(id)?;
    if let Some(p) = state.newest_point(id)? {
        let rpo = now.saturating_sub(p.created_unix_ms) / 1000;
        let (critical, limit) = if rpo > policy.rpo_critical_secs {
            (true, policy.rpo_critical_secs)
        } else {
            (false, policy.rpo_warning_secs)
        };
        if rpo > policy.rpo_warning_secs {
            found.add(
                "rpo",
                critical,
                Some(id),
                format!(
                    "{hostname}: the newest recovery point is {rpo} s old (threshold {limit} s)"
                ),
                rpo as f64,
                limit as f64,
            );
        }
    }
    // A quiescer that failed on the machine, with no app-consistent point since.
    if let Some(rec) = state
        .setting(&format!("agent_alert:{id}"))?
        .and_then(|t| serde_json::from_str::<AgentAlertRecord>(&t).ok())
    {
        let last_app = state
            .points(id)?
            .iter()
            .rev()
            .find(|p| p.kind == lifeboat_api::PointKind::App)
            .map(|p| p.created_unix_ms)
            .unwrap_or(0);
        if rec.at > last_app {
            found.add(
                "plugin",
                false,
                Some(id),
                format!(
                    "{hostname}: a quiescer failed, points are crash-consistent until it works: {}",
                    rec.message
                ),
                now.saturating_sub(rec.at) as f64 / 1000.0,
                0.0,
            );
        }
    }
    let (_, seen) = state.machine_policy(id)?;
    if let Some(seen) = seen {
        let silent = now.saturating_sub(seen) / 1000;
        if silent > policy.silent_secs {
            found.add(
                "agent-silent",
                false,
                Some(id),
                format!("{hostname}: its agent has not been heard from for {silent} s"),
                silent as f64,
                policy.silent_secs as f64,
            );
        }
    }
    Ok(())
}

/// Whole MiB in `bytes`, for a message.
#[expect(
    clippy::cast_possible_truncation,
    reason = "float to int saturates; the fraction is dropped on purpose"
)]
fn whole_mib(bytes: f64) -> u64 {
    bytes as u64 >> 20
}

/// The appliance's own alerts (CPU, memory, the cache), while its figures are fresh.
fn appliance_alerts(state: &State, now: u64, found: &mut Found) -> Result<(), StateError> {
    let fresh = state
        .setting("health_unix_ms")?
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|t| now.saturating_sub(t) < STALE_MS);
    if !fresh {
        return Ok(());
    }
    for (kind, what) in [("cpu", "CPU"), ("memory", "memory")] {
        if let Some(pct) = setting_f64(state, &format!("{kind}_percent"))?
            && pct >= 80.0
        {
            let critical = pct >= 95.0;
            found.add(
                kind,
                critical,
                None,
                format!("the appliance's {what} use is {pct:.0} %"),
                pct,
                if critical { 95.0 } else { 80.0 },
            );
        }
    }
    if let (Some(used), Some(high), Some(max)) = (
        setting_f64(state, "cache_usage_bytes")?,
        setting_f64(state, "cache_high_water_bytes")?,
        setting_f64(state, "cache_max_bytes")?,
    ) && used >= high
    {
        let critical = used >= max;
        found.add(
            "cache",
            critical,
            None,
            format!(
                "the process server's cache holds {} MiB ({}): agents are slowed down{}",
                whole_mib(used),
                if critical { "full" } else { "over its high-water mark" },
                if critical { " and refused" } else { "" }
            ),
            used,
            if critical { max } else { high },
        );
    }
    Ok(())
}

/// Problems of one disk (its logs cannot be applied, it shrank, its cursor is stuck),
/// refused plugins, and a master target whose passes fail.
fn disk_and_role_alerts(state: &State, now: u64, found: &mut Found) -> Result<(), StateError> {
    for a in state.disk_alerts()? {
        if state.is_revoked(a.machine_id)? {
            continue;
        }
        found.add(
            a.kind.as_str(),
            true,
            Some(a.machine_id),
            format!("disk {} of machine {}: {}", a.disk, a.machine_id, a.message),
            now.saturating_sub(a.since_unix_ms) as f64 / 1000.0,
            0.0,
        );
    }
    if let Some(refused) = state.setting("plugins_refused")?.filter(|r| !r.is_empty()) {
        found.add("plugin", false, None, format!("plugins refused at load: {refused}"), 1.0, 0.0);
    }
    if let Some(err) = state.setting("master_last_error")? {
        let at: u64 =
            state.setting("master_last_error_unix_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let ok: u64 =
            state.setting("master_last_ok_unix_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if at > ok {
            found.add(
                "plugin",
                true,
                None,
                format!("the master target's passes fail: {err}"),
                now.saturating_sub(at) as f64 / 1000.0,
                0.0,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: MachineId = MachineId([1; 16]);

    #[test]
    fn cpu_and_memory_are_parsed() {
        assert_eq!(cpu_times("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2\n"), Some((20, 100)));
        assert_eq!(cpu_times("intr 1\n"), None);
        let m = memory_percent("MemTotal: 1000 kB\nMemFree: 1 kB\nMemAvailable: 250 kB\n").unwrap();
        assert!((m - 75.0).abs() < 1e-9);
        assert_eq!(memory_percent("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn alerts_follow_the_policy() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("state.db")).unwrap();
        s.add_passphrase("p").unwrap();
        s.register_machine("p", M1, "web01").unwrap();
        s.add_point(&crate::store::PointRow {
            id: "m-1-p1".into(),
            machine_id: M1,
            point: 1,
            kind: lifeboat_api::PointKind::Crash,
            created_unix_ms: now_ms() - 1_000_000,
            disks: vec![0],
        })
        .unwrap();
        let a = alerts(&s).unwrap();
        assert_eq!((a[0].kind.as_str(), a[0].severity.as_str()), ("rpo", "warning"), "{a:?}");
        let strict = Policy { rpo_warning_secs: 60, rpo_critical_secs: 600, ..Policy::default() };
        s.set_policy("strict", &serde_json::to_string(&strict).unwrap()).unwrap();
        s.set_machine_policy(M1, "strict").unwrap();
        let a = alerts(&s).unwrap();
        assert_eq!((a[0].severity.as_str(), a[0].threshold), ("critical", 600.0), "{a:?}");
        let lax = Policy { rpo_warning_secs: 5000, rpo_critical_secs: 6000, ..Policy::default() };
        s.set_policy("strict", &serde_json::to_string(&lax).unwrap()).unwrap();
        assert!(alerts(&s).unwrap().is_empty());
        s.set_setting("health_unix_ms", &now_ms().to_string()).unwrap();
        s.set_setting("memory_percent", "96.5").unwrap();
        s.set_setting("cpu_percent", "81").unwrap();
        let a = alerts(&s).unwrap();
        let kinds: Vec<(&str, &str)> =
            a.iter().map(|a| (a.kind.as_str(), a.severity.as_str())).collect();
        assert_eq!(kinds, [("memory", "critical"), ("cpu", "warning")]);
    }
}
