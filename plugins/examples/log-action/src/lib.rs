//! An example recovery-plan action (`kind = "action"`): appends one line per plan step
//! to `<path>` (setting `path`, default `/log/plan.log`, in the directory granted as
//! `/log`) — plan, mode, group, stage, and each machine with its VM. A template for real
//! actions (a webhook, a DNS change): `run` gets the plan's context and its `Ok` line goes
//! into the plan's log; an `Err` stops the plan. Setting `fail_stage = "post"` makes that
//! stage fail, to try a plan's failure handling.

use lifeboat_sdk::action::{Action, PlanContext};
use lifeboat_sdk::{PluginError, Settings, setting};
use std::io::Write as _;

/// The log file and the stage made to fail, if any.
pub struct LogAction {
    path: String,
    fail_stage: Option<String>,
}

/// The line for one step.
pub fn line(c: &PlanContext) -> String {
    let machines: Vec<String> = c
        .machines
        .iter()
        .map(|m| format!("{}:{}", m.hostname, m.vm.as_deref().unwrap_or("-")))
        .collect();
    format!(
        "plan={} mode={} group={} stage={} machines={}",
        c.plan,
        c.mode,
        c.group,
        c.stage,
        machines.join(",")
    )
}

impl Action for LogAction {
    fn init(settings: Settings) -> Result<Self, PluginError> {
        Ok(LogAction {
            path: setting(&settings, "path").unwrap_or("/log/plan.log").to_owned(),
            fail_stage: setting(&settings, "fail_stage").map(str::to_owned),
        })
    }

    fn run(&mut self, context: PlanContext) -> Result<String, PluginError> {
        let line = line(&context);
        if self.fail_stage.as_deref() == Some(context.stage.as_str()) {
            return Err(PluginError::Invalid(format!(
                "asked to fail at {}: {line}",
                context.stage
            )));
        }
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(
                |e| PluginError::Denied(format!("{}: {e} (is /log granted?)", self.path)),
            )?;
        writeln!(f, "{line}").map_err(|e| PluginError::Retryable(e.to_string()))?;
        f.sync_all().map_err(|e| PluginError::Retryable(e.to_string()))?;
        Ok(format!("logged to {}", self.path))
    }
}

lifeboat_sdk::export_action!(LogAction);

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_sdk::action::PlanMachine;

    #[test]
    fn a_step_is_one_line() {
        let c = PlanContext {
            plan: "web".into(),
            mode: "failover".into(),
            group: 1,
            stage: "post".into(),
            machines: vec![PlanMachine {
                id: "m".into(),
                hostname: "db01".into(),
                vm: Some("fo3-m".into()),
            }],
        };
        assert_eq!(line(&c), "plan=web mode=failover group=1 stage=post machines=db01:fo3-m");
    }
}
