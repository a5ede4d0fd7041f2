//! Consistency groups: the list with their points, and their definitions.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session};
use crate::{Cli, GroupCmd};

/// `lifeboat groups` (`cmd` none) or `lifeboat group set|delete`: the groups after it.
pub fn groups(cli: &Cli, cmd: Option<&GroupCmd>) -> Result<Output, Failure> {
    let v: api::GroupList = match cmd {
        Some(GroupCmd::Set { name, coordinator, members }) => {
            let mut members = members.clone();
            if !members.contains(coordinator) {
                members.push(coordinator.clone());
            }
            let def = api::GroupDefinition { coordinator: coordinator.clone(), members };
            Session::load(cli)?.send(Method::PUT, &format!("/api/v1/groups/{name}"), &def)?
        }
        Some(GroupCmd::Delete { name }) => {
            Session::load(cli)?.ask(Method::DELETE, &format!("/api/v1/groups/{name}"))?
        }
        None => Session::load(cli)?.get("/api/v1/groups")?,
    };
    let t = v
        .groups
        .iter()
        .map(|g| {
            let complete = g.points.iter().filter(|p| p.complete).count();
            format!(
                "{}  coordinator {}  {} member(s)  {} point(s), {complete} complete",
                g.name,
                g.coordinator.as_deref().unwrap_or("(not defined)"),
                g.members.len(),
                g.points.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}
