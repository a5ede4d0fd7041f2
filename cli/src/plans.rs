//! Recovery plans: list, set from a JSON file, delete, run, continue a manual step.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session, fail, job_result};
use crate::{Cli, PlanCmd};

/// `lifeboat plan …`.
pub fn plan(cli: &Cli, cmd: &PlanCmd) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    Ok(match cmd {
        PlanCmd::List => list(&s.get("/api/v1/plans")?),
        PlanCmd::Set { name, file } => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .map_err(|e| fail(2, format!("standard input: {e}")))?;
                t
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| fail(2, format!("{}: {e}", file.display())))?
            };
            let body: api::Plan = serde_json::from_str(&text)
                .map_err(|e| fail(2, format!("{}: not a plan: {e}", file.display())))?;
            list(&s.send(Method::PUT, &format!("/api/v1/plans/{name}"), &body)?)
        }
        PlanCmd::Delete { name } => list(&s.ask(Method::DELETE, &format!("/api/v1/plans/{name}"))?),
        PlanCmd::Run { name, failover, point, no_wait } => {
            let body = api::PlanRun {
                mode: if *failover { "failover" } else { "test-failover" }.into(),
                point: point.clone(),
            };
            let v = s.job(&format!("/api/v1/plans/{name}/run"), Some(&body), !no_wait, cli.json)?;
            let t = match job_result::<api::PlanResult>(&v) {
                Some(r) => r.log.join("\n"),
                None => format!("job {} started", v.id),
            };
            Output::new(&v, t)
        }
        PlanCmd::Continue { job, step } => {
            let body = step.map(|n| api::ContinueStep { step: Some(n) });
            let v: api::Continued =
                s.call(Method::POST, &format!("/api/v1/jobs/{job}/continue"), body.as_ref())?;
            let t = if v.continued { "continued".into() } else { format!("job {job}") };
            Output::new(&v, t)
        }
    })
}

/// The plans, one line each.
fn list(v: &api::PlanList) -> Output {
    let t = v
        .plans
        .iter()
        .map(|p| format!("{}  {} group(s)", p.name, p.plan.groups.len()))
        .collect::<Vec<_>>()
        .join("\n");
    Output::new(v, t)
}
