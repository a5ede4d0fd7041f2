//! Replication policies, bandwidth schedules, retention tiers and alerts.

use serde::{Deserialize, Serialize};

/// A replication policy (`PUT /api/v1/policies/{name}`); machines use `default` until
/// given another (`PUT /api/v1/machines/{id}/policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// An alert (warning) once a machine's newest point is older than this. Default 900.
    #[serde(default = "default_rpo_warning")]
    pub rpo_warning_secs: u64,
    /// A critical alert past this. Default 1800.
    #[serde(default = "default_rpo_critical")]
    pub rpo_critical_secs: u64,
    /// An alert once the machine's agent has not been heard from for this long. Default 900.
    #[serde(default = "default_silent")]
    pub silent_secs: u64,
    /// Tiered thinning of recovery points, youngest tier first: of the points younger than
    /// a tier's `for_secs` (and older than the tier before), one per `every_secs` slot is
    /// kept (0: every point) — a consistency-group point first, then an app-consistent one,
    /// then the oldest. Older than the last tier: deleted. The newest point is always kept.
    /// Absent: the appliance's `keep_points`/`keep_hours`.
    #[serde(default)]
    pub retention: Option<Vec<RetentionTier>>,
    /// Seconds between crash-consistent points (the agent's cycle interval), 1 to 86400.
    /// Absent: the agent's own `interval_secs`. Agents take it at their next check.
    #[serde(default)]
    pub crash_interval_secs: Option<u64>,
    /// The codec level the process server compresses the machine's data with (zstd: -7
    /// to 22). Absent: the process server's `codec_level`.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Seconds between app-consistent points (0: every cut). Absent: the agent's own
    /// `quiesce.interval_secs`. Only for agents with quiescers.
    #[serde(default)]
    pub app_interval_secs: Option<u64>,
    /// The network bandwidth schedule the machine's agent sends under (the shape of the
    /// agent's `[bandwidth]`). Absent: the agent's own.
    #[serde(default)]
    pub bandwidth: Option<PolicyBandwidth>,
    /// Whether the machine's data is sealed by the cipher on its way to and at the target.
    /// Absent: yes. `false` is refused for a target that requires it.
    #[serde(default)]
    pub encryption: Option<bool>,
}

/// A bandwidth schedule in a policy: megabits per second outside the windows (absent:
/// unlimited), and windows of local time with their own limit (0 pauses sending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBandwidth {
    /// Megabits per second outside every window.
    #[serde(default)]
    pub mbps: Option<f64>,
    /// Windows; the first that matches wins.
    #[serde(default)]
    pub schedule: Vec<PolicyWindow>,
}

/// A window of a [`PolicyBandwidth`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyWindow {
    /// Days it starts on (`mon` … `sun`); absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local start, `HH:MM`.
    pub from: String,
    /// Local end, `HH:MM` (before `from`: past midnight).
    pub to: String,
    /// Megabits per second; 0 pauses sending.
    pub mbps: f64,
}

impl PolicyBandwidth {
    /// Shape checks, naming the field (the agent checks again when it applies it).
    pub fn check(&self) -> Result<(), String> {
        let rate =
            |v: f64, zero_ok: bool| v.is_finite() && v <= 1e6 && (v > 0.0 || (zero_ok && v == 0.0));
        if self.mbps.is_some_and(|m| !rate(m, false)) {
            return Err("bandwidth.mbps: expected more than 0 and at most 1000000".into());
        }
        if self.schedule.len() > 32 {
            return Err("bandwidth.schedule: more than 32 windows".into());
        }
        let hhmm = |t: &str| {
            t.split_once(':').is_some_and(|(h, m)| {
                h.len() == 2
                    && m.len() == 2
                    && h.parse::<u8>().is_ok_and(|h| h < 24)
                    && m.parse::<u8>().is_ok_and(|m| m < 60)
            })
        };
        for (i, w) in self.schedule.iter().enumerate() {
            for (field, t) in [("from", &w.from), ("to", &w.to)] {
                if !hhmm(t) {
                    return Err(format!("bandwidth.schedule[{i}].{field}: {t:?} is not HH:MM"));
                }
            }
            if !rate(w.mbps, true) {
                return Err(format!("bandwidth.schedule[{i}].mbps: expected 0 to 1000000"));
            }
            if let Some(days) = &w.days {
                const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
                if days.is_empty() || days.iter().any(|d| !DAYS.contains(&d.as_str())) {
                    return Err(format!(
                        "bandwidth.schedule[{i}].days: expected days among mon … sun"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_rpo_warning() -> u64 {
    900
}

fn default_rpo_critical() -> u64 {
    1800
}

fn default_silent() -> u64 {
    900
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rpo_warning_secs: default_rpo_warning(),
            rpo_critical_secs: default_rpo_critical(),
            silent_secs: default_silent(),
            retention: None,
            crash_interval_secs: None,
            compression_level: None,
            app_interval_secs: None,
            bandwidth: None,
            encryption: None,
        }
    }
}

/// One tier of a retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionTier {
    /// Keep one point per this many seconds (0: every point).
    pub every_secs: u64,
    /// Up to this age, in seconds.
    pub for_secs: u64,
}

/// Ten years, the longest a retention tier or a threshold may be.
pub const MAX_POLICY_SECS: u64 = 10 * 366 * 86_400;

impl Policy {
    /// Range and order checks, naming the field.
    pub fn check(&self) -> Result<(), String> {
        let secs = |name: &str, v: u64| {
            if (1..=MAX_POLICY_SECS).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: expected 1 to {MAX_POLICY_SECS} seconds"))
            }
        };
        secs("rpo_warning_secs", self.rpo_warning_secs)?;
        secs("rpo_critical_secs", self.rpo_critical_secs)?;
        secs("silent_secs", self.silent_secs)?;
        if self.rpo_critical_secs < self.rpo_warning_secs {
            return Err("rpo_critical_secs: must not be below rpo_warning_secs".into());
        }
        if self.crash_interval_secs.is_some_and(|i| !(1..=86_400).contains(&i)) {
            return Err("crash_interval_secs: expected 1 to 86400".into());
        }
        if self.compression_level.is_some_and(|l| !(-7..=22).contains(&l)) {
            return Err("compression_level: expected -7 to 22 (zstd levels)".into());
        }
        if self.app_interval_secs.is_some_and(|i| i > 7 * 86_400) {
            return Err("app_interval_secs: expected 0 to 604800".into());
        }
        if let Some(b) = &self.bandwidth {
            b.check()?;
        }
        if let Some(tiers) = &self.retention {
            if tiers.is_empty() || tiers.len() > 8 {
                return Err("retention: expected 1 to 8 tiers".into());
            }
            for (i, t) in tiers.iter().enumerate() {
                secs(&format!("retention[{i}].for_secs"), t.for_secs)?;
                if t.every_secs >= t.for_secs {
                    return Err(format!("retention[{i}].every_secs: must be below for_secs"));
                }
                if let Some(prev) = i.checked_sub(1).map(|j| tiers[j]) {
                    if t.for_secs <= prev.for_secs {
                        return Err(format!(
                            "retention[{i}].for_secs: tiers go from young to old (above {})",
                            prev.for_secs
                        ));
                    }
                    if t.every_secs < prev.every_secs {
                        return Err(format!(
                            "retention[{i}].every_secs: older tiers keep fewer points (at least {})",
                            prev.every_secs
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A named policy (`GET /api/v1/policies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedPolicy {
    /// Its name.
    pub name: String,
    /// The policy.
    pub policy: Policy,
    /// Machines using it.
    pub machines: Vec<String>,
}

/// `GET /api/v1/policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyList {
    /// By name; `default` always exists.
    pub policies: Vec<NamedPolicy>,
}

/// `PUT /api/v1/machines/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyAssignment {
    /// The policy's name.
    pub policy: String,
}

/// An alert (`GET /api/v1/alerts`): a condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// `rpo`, `agent-silent`, `cache`, `cpu`, `memory`, `plugin`.
    pub kind: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The machine it is about, if any.
    pub machine_id: Option<String>,
    /// What is wrong, for people.
    pub message: String,
    /// The measured value (seconds, percent, …).
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
}

/// `GET /api/v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertList {
    /// Critical first.
    pub alerts: Vec<Alert>,
}
