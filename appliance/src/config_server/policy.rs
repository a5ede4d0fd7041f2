//! Replication policies and alerts.
//!
//! A policy (`lifeboat_api::Policy`) sets a machine's RPO thresholds, how long its
//! agent may stay silent, and the tiered thinning of its recovery points. Machines use
//! `default` (the built-in values until an administrator stores another `default`) until
//! given another. The master target thins points by the machine's policy when it has a
//! `retention` ([`thin`]), else by the appliance's `keep_points`/`keep_hours`.
//!
//! Alerts ([`alerts`]) are evaluated when asked for: RPO over the machine's thresholds,
//! a silent agent, the process server's cache over its high-water mark or full, the
//! appliance's CPU and memory over 80 % (warning) and 95 % (critical) — ASR's thresholds —
//! and plugin failures (a refused plugin, a failing master target pass). The appliance's
//! own figures come from [`Health`], sampled every few seconds into the state store.

use lifeboat_api::{Alert, Policy, RetentionTier};

use crate::store::{State, StateError, now_ms};

/// The policy named `name`: stored, or the built-in default for `default`.
pub fn get(state: &State, name: &str) -> Result<Option<Policy>, StateError> {
    for (n, json) in state.policies()? {
        if n == name {
            return Ok(serde_json::from_str(&json).ok());
        }
    }
    Ok((name == "default").then(Policy::default))
}

/// The policy of `machine` (the `default` policy if its own is gone).
pub fn of_machine(state: &State, machine: &str) -> Result<Policy, StateError> {
    let (name, _) = state.machine_policy(machine)?;
    match get(state, &name)? {
        Some(p) => Ok(p),
        None => Ok(get(state, "default")?.unwrap_or_default()),
    }
}

/// Which of `points` (id, created ms, rank), oldest first, a retention of `tiers` deletes
/// at `now`. In each tier one point stays per `every_secs` slot: the one of highest rank
/// (2: part of a consistency-group point, 1: app-consistent, 0: crash-consistent), the
/// oldest among equals; past the last tier nothing stays; the newest point always stays.
pub fn thin(points: &[(String, u64, u8)], now: u64, tiers: &[RetentionTier]) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut delete = Vec::new();
    // (tier, slot) → the survivor so far (rank, created, id).
    let mut slots: BTreeMap<(usize, u64), (u8, u64, String)> = BTreeMap::new();
    let n = points.len();
    for (id, created, rank) in points.iter().take(n.saturating_sub(1)) {
        let age = now.saturating_sub(*created) / 1000;
        let Some((tier, t)) = tiers.iter().enumerate().find(|(_, t)| age < t.for_secs) else {
            delete.push(id.clone());
            continue;
        };
        if t.every_secs == 0 {
            continue;
        }
        let key = (tier, created / (t.every_secs * 1000));
        match slots.get(&key) {
            None => {
                slots.insert(key, (*rank, *created, id.clone()));
            }
            // Oldest first: a later point replaces the survivor only with a higher rank.
            Some((r, _, kept)) if *rank > *r => {
                delete.push(kept.clone());
                slots.insert(key, (*rank, *created, id.clone()));
            }
            Some(_) => delete.push(id.clone()),
        }
    }
    delete
}

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
        machine: Option<&str>,
        message: String,
        value: f64,
        threshold: f64,
    ) {
        self.0.push(Alert {
            kind: kind.into(),
            severity: if critical { "critical" } else { "warning" }.into(),
            machine_id: machine.map(str::to_owned),
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
        if state.is_revoked(&id)? || state.failover_state(&id)?.is_some() {
            continue; // not replicating: no RPO to keep
        }
        machine_alerts(state, now, &id, &hostname, &mut found)?;
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
    id: &str,
    hostname: &str,
    found: &mut Found,
) -> Result<(), StateError> {
    let policy = of_machine(state, id)?;
    if let Some(p) = state.points(id)?.last() {
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
                used as u64 >> 20,
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
        if state.is_revoked(&a.machine_id)? {
            continue;
        }
        found.add(
            a.kind.as_str(),
            true,
            Some(&a.machine_id),
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

    fn pts(ages_s: &[u64], now: u64) -> Vec<(String, u64, u8)> {
        ages_s.iter().map(|a| (format!("p{a}"), now - a * 1000, 0)).collect()
    }

    #[test]
    fn thinning_keeps_one_point_per_slot_per_tier() {
        let now = 1_000_000 * 1000;
        let tiers = [
            RetentionTier { every_secs: 0, for_secs: 100 },
            RetentionTier { every_secs: 1000, for_secs: 10_000 },
        ];
        // Oldest first: 20000 s (past every tier), two in one 1000-s slot, one in another,
        // and young ones kept whole.
        let points = pts(&[20_000, 5_500, 5_200, 3_500, 50, 10, 1], now);
        let gone = thin(&points, now, &tiers);
        assert_eq!(gone, vec!["p20000".to_string(), "p5200".to_string()]);
        // The newest point stays even past every tier.
        assert!(thin(&pts(&[50_000], now), now, &tiers).is_empty());
        assert!(thin(&[], now, &tiers).is_empty());
        // In a slot, a group point outranks an app point, which outranks a crash point,
        // whatever their order.
        let mut ranked = pts(&[5_900, 5_700, 5_500, 5_300, 10], now);
        ranked[1].2 = 1; // app
        ranked[2].2 = 2; // group
        ranked[3].2 = 1;
        let mut gone = thin(&ranked, now, &tiers);
        gone.sort();
        assert_eq!(gone, vec!["p5300".to_string(), "p5700".into(), "p5900".into()]);
    }

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
        s.register_machine("p", "m-1", "web01").unwrap();
        s.add_point(&crate::store::PointRow {
            id: "m-1-p1".into(),
            machine_id: "m-1".into(),
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
        s.set_machine_policy("m-1", "strict").unwrap();
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
