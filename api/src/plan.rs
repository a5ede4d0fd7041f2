//! Recovery plans.

use serde::{Deserialize, Serialize};

/// A recovery plan (`PUT /api/v1/plans/{name}`): groups of machines failed over in order,
/// the machines of a group in parallel, with pre and post actions per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// 1 to 32 groups, in order.
    pub groups: Vec<PlanGroup>,
}

/// A group of a recovery plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGroup {
    /// Machine ids (at most 64), failed over in parallel; each in one group of the plan.
    #[serde(default)]
    pub machines: Vec<String>,
    /// Run in order before the group's machines fail over.
    #[serde(default)]
    pub pre: Vec<PlanAction>,
    /// Run in order after all of them did.
    #[serde(default)]
    pub post: Vec<PlanAction>,
}

/// One pre or post action: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanAction {
    /// An allow-listed script of the appliance (`[plans.scripts]` in `appliance.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// An action plugin (`kind = "action"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// A manual step: the plan waits, showing this, until someone confirms it
    /// (`POST /api/v1/jobs/{id}/continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
}

impl Plan {
    /// Shape checks, naming the field (machines, scripts and plugins are checked against
    /// the appliance by the caller).
    pub fn check(&self) -> Result<(), String> {
        if self.groups.is_empty() || self.groups.len() > 32 {
            return Err("groups: expected 1 to 32".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if g.machines.len() > 64 {
                return Err(format!("groups[{i}].machines: more than 64"));
            }
            for (j, m) in g.machines.iter().enumerate() {
                if !seen.insert(m.as_str()) {
                    return Err(format!("groups[{i}].machines[{j}]: {m:?} is in the plan twice"));
                }
            }
            for (stage, actions) in [("pre", &g.pre), ("post", &g.post)] {
                if actions.len() > 16 {
                    return Err(format!("groups[{i}].{stage}: more than 16 actions"));
                }
                for (j, a) in actions.iter().enumerate() {
                    let at = format!("groups[{i}].{stage}[{j}]");
                    let set =
                        [&a.script, &a.plugin, &a.manual].iter().filter(|x| x.is_some()).count();
                    if set != 1 {
                        return Err(format!(
                            "{at}: expected exactly one of script, plugin, manual"
                        ));
                    }
                    if let Some(m) = &a.manual
                        && (m.trim().is_empty() || m.len() > 1000)
                    {
                        return Err(format!("{at}.manual: expected 1 to 1000 characters"));
                    }
                    for name in [&a.script, &a.plugin].into_iter().flatten() {
                        if name.is_empty()
                            || name.len() > 64
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                        {
                            return Err(format!(
                                "{at}: {name:?} is not a name (letters, digits, '.', '_', '-')"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A named plan (`GET /api/v1/plans`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedPlan {
    /// Its name.
    pub name: String,
    /// The plan.
    pub plan: Plan,
}

/// `GET /api/v1/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanList {
    /// By name.
    pub plans: Vec<NamedPlan>,
}

/// `POST /api/v1/jobs/{id}/continue` (the body may also be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContinueStep {
    /// The manual step being confirmed, as the job's message numbers it; if given, it must
    /// be the one the job waits on.
    #[serde(default)]
    pub step: Option<u32>,
}

/// `POST /api/v1/plans/{name}/run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRun {
    /// `test-failover` or `failover`.
    pub mode: String,
    /// The point choice for every machine (as in a test failover); default `latest`.
    #[serde(default)]
    pub point: Option<String>,
}

/// The answer of `POST /api/v1/jobs/{id}/continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Continued {
    /// The manual step was confirmed: the plan goes on.
    pub continued: bool,
    /// The step that was confirmed.
    pub step: u32,
}

/// The [`crate::JobInfo::result`] of a `plan` job, once it ended (succeeded or failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanResult {
    /// The plan's name.
    pub plan: String,
    /// `test-failover` or `failover`.
    pub mode: String,
    /// What each step did, in order.
    pub log: Vec<String>,
}
