//! Failover and test failover: starting them, commit, reprotect, failback, cleanup, and
//! the lists of failovers, test failovers and jobs.

use lifeboat_api as api;

use crate::Cli;
use crate::client::{Failure, Output, Session, job_result};

/// `lifeboat test-failover MACHINE`: an isolated copy at a point.
pub fn test_failover(
    cli: &Cli,
    machine: &str,
    point: &Option<String>,
    no_wait: bool,
) -> Result<Output, Failure> {
    let body = api::TestFailoverRequest { point: point.clone() };
    let v = Session::load(cli)?.job(
        &format!("/api/v1/machines/{machine}/test-failover"),
        Some(&body),
        !no_wait,
        cli.json,
    )?;
    let t = match job_result::<api::TestFailoverResult>(&v) {
        Some(r) => {
            format!("test failover {} ready: VM {} at point {}", r.test_failover, r.vm, r.point)
        }
        None => format!("job {} started", v.id),
    };
    Ok(Output::new(&v, t))
}

/// `lifeboat failover MACHINE`: its source is taken to be lost.
pub fn failover(
    cli: &Cli,
    machine: &str,
    point: &Option<String>,
    no_wait: bool,
) -> Result<Output, Failure> {
    let body = api::TestFailoverRequest { point: point.clone() };
    let v = Session::load(cli)?.job(
        &format!("/api/v1/machines/{machine}/failover"),
        Some(&body),
        !no_wait,
        cli.json,
    )?;
    let t = match job_result::<api::FailoverResult>(&v) {
        Some(r) => format!("machine {machine} failed over: VM {} at point {}", r.vm, r.point),
        None => format!("job {} started", v.id),
    };
    Ok(Output::new(&v, t))
}

/// `lifeboat commit MACHINE`: its recovery points are deleted, the VM stays.
pub fn commit(cli: &Cli, machine: &str, no_wait: bool) -> Result<Output, Failure> {
    let path = format!("/api/v1/machines/{machine}/commit");
    let v = Session::load(cli)?.job(&path, None::<&api::Empty>, !no_wait, cli.json)?;
    let t = match job_result::<api::CommitResult>(&v) {
        Some(r) => {
            format!("failover of {machine} committed; {} recovery points deleted", r.points_deleted)
        }
        None => format!("job {} started", v.id),
    };
    Ok(Output::new(&v, t))
}

/// `lifeboat reprotect MACHINE` (with its `body`) or `lifeboat failback MACHINE` (`verb`).
pub fn reverse(
    cli: &Cli,
    verb: &str,
    machine: &str,
    body: Option<&api::ReprotectRequest>,
    no_wait: bool,
) -> Result<Output, Failure> {
    let path = format!("/api/v1/machines/{machine}/{verb}");
    let v = Session::load(cli)?.job(&path, body, !no_wait, cli.json)?;
    let t = match v.state.as_str() {
        "succeeded" => format!("{verb} of {machine}: {}", v.message),
        _ => format!("job {} started", v.id),
    };
    Ok(Output::new(&v, t))
}

/// `lifeboat failovers`.
pub fn failovers(cli: &Cli) -> Result<Output, Failure> {
    let v: api::FailoverList = Session::load(cli)?.get("/api/v1/failovers")?;
    let t = v
        .failovers
        .iter()
        .map(|f| {
            format!(
                "{}  {}  {}  {}",
                f.machine_id,
                f.state,
                f.point_id.as_deref().unwrap_or("-"),
                f.vm.as_deref().unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}

/// `lifeboat cleanup ID`: removes a test failover's VM and disks and waits for it.
pub fn cleanup(cli: &Cli, id: &str) -> Result<Output, Failure> {
    let v = Session::load(cli)?.job(
        &format!("/api/v1/test-failovers/{id}/cleanup"),
        Some(&api::Empty {}),
        true,
        cli.json,
    )?;
    Ok(Output::new(&v, format!("test failover {id} cleaned up")))
}

/// `lifeboat test-failovers`.
pub fn test_failovers(cli: &Cli) -> Result<Output, Failure> {
    let v: api::TestFailoverList = Session::load(cli)?.get("/api/v1/test-failovers")?;
    let t = v
        .test_failovers
        .iter()
        .map(|t| {
            format!(
                "{}  {}  {}  {}",
                t.id,
                t.machine_id,
                t.point_id,
                if t.cleaned_unix_ms.is_none() { "live" } else { "cleaned up" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}

/// `lifeboat jobs [ID]`: the jobs, newest first, or one of them.
pub fn jobs(cli: &Cli, id: Option<u64>) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    let line = |j: &api::JobInfo| {
        format!("{}  {}  {}  {:.0} %  {}", j.id, j.kind, j.state, j.progress * 100.0, j.message)
    };
    Ok(match id {
        Some(i) => {
            let v: api::JobInfo = s.get(&format!("/api/v1/jobs/{i}"))?;
            Output::new(&v, line(&v))
        }
        None => {
            let v: api::JobList = s.get("/api/v1/jobs")?;
            Output::new(&v, v.jobs.iter().map(line).collect::<Vec<_>>().join("\n"))
        }
    })
}
