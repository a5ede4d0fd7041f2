//! Consistency groups as the administrator defines them.

use super::*;

/// `GET /api/v1/groups`
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    summary = "Consistency groups as defined (members, coordinator) with their points: a group point is listed once its coordinator recorded it and every member reported recording it; it is `complete` once every member's point with that number is at the target (`latest-group` fails over to the newest complete one).",
    responses(
        (status = 200, description = "The groups.", body = api::GroupList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_groups(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &group_list(&ctx.state)?)
}

/// `PUT /api/v1/groups/{name}`
#[utoipa::path(
    put,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    summary = "Defines or redefines a consistency group. The appliance owns membership: agents learn it with their trust check and take part only in the group defined here; only its coordinator may record its points. A machine is in one group at most (409 otherwise); revoking a machine takes it out of its group.",
    params(("name" = String, Path, description = "name")),
    request_body = api::GroupDefinition,
    responses(
        (status = 200, description = "Every group.", body = api::GroupList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn put_group(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let d: api::GroupDefinition = body_json(req, ADMIN_BODY).await?;
    let def = check_group_definition(&ctx.state, &name, d)?;
    if !ctx.state.set_group(&def).map_err(internal)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_another_group",
            "members: a machine is in one consistency group at most; remove it from its group first",
        ));
    }
    tracing::info!(%admin, group = %name, coordinator = %def.coordinator, members = ?def.members, "consistency group defined");
    json(StatusCode::OK, &group_list(&ctx.state)?)
}

/// `DELETE /api/v1/groups/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    summary = "Deletes a group's definition: its members cut no more group points (those recorded stay listed).",
    params(("name" = String, Path, description = "name")),
    responses(
        (status = 200, description = "Every group.", body = api::GroupList),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn delete_group(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = name.as_str();
    if !ctx.state.delete_group(name).map_err(internal)? {
        return Err(ApiError::not_found("unknown_group", format!("name: no group {name:?}")));
    }
    tracing::info!(%admin, group = %name, "consistency group deleted");
    json(StatusCode::OK, &group_list(&ctx.state)?)
}

/// Consistency groups with their points.
pub(super) fn group_list(state: &State) -> Result<api::GroupList, ApiError> {
    let mut groups: std::collections::BTreeMap<String, api::GroupInfo> = Default::default();
    for d in state.groups().map_err(internal)? {
        groups.insert(
            d.name.clone(),
            api::GroupInfo {
                name: d.name,
                coordinator: Some(d.coordinator.to_string()),
                members: strings(&d.members),
                points: Vec::new(),
            },
        );
    }
    for g in state.group_points(None).map_err(internal)? {
        let mut ids = Vec::new();
        for m in &g.members {
            let p = state.points(*m).map_err(internal)?.into_iter().find(|p| p.point == g.point);
            ids.push(p.map(|p| p.id));
        }
        let entry = groups.entry(g.group.clone()).or_insert_with(|| api::GroupInfo {
            name: g.group.clone(),
            coordinator: None,
            members: strings(&g.members),
            points: Vec::new(),
        });
        entry.points.push(api::GroupPointInfo {
            point: g.point,
            complete: ids.iter().all(Option::is_some),
            point_ids: ids,
            created_unix_ms: g.created_unix_ms,
        });
    }
    Ok(api::GroupList { groups: groups.into_values().collect() })
}

/// Most members of one consistency group.
pub const MAX_GROUP_MEMBERS: usize = 64;

/// Checks a group's definition: a well-formed name, 2 to [`MAX_GROUP_MEMBERS`] distinct
/// registered members, the coordinator among them.
pub(super) fn check_group_definition(
    state: &State,
    name: &str,
    d: api::GroupDefinition,
) -> Result<crate::store::GroupDef, ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad_request(
            "invalid",
            format!("name: {name:?} must be 1 to 64 ASCII letters, digits, '-' or '_'"),
        ));
    }
    if d.members.len() < 2 || d.members.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::bad_request(
            "invalid",
            format!(
                "members: a group has 2 to {MAX_GROUP_MEMBERS} machines, got {}",
                d.members.len()
            ),
        ));
    }
    let mut members = Vec::with_capacity(d.members.len());
    for (i, m) in d.members.iter().enumerate() {
        if d.members[..i].contains(m) {
            return Err(ApiError::bad_request(
                "invalid",
                format!("members[{i}]: {m:?} is listed twice"),
            ));
        }
        let not_registered = || {
            ApiError::bad_request(
                "invalid",
                format!("members[{i}]: {m:?} is not a registered machine"),
            )
        };
        let id: MachineId = m.parse().map_err(|_| not_registered())?;
        if !state.machine_exists(id).map_err(|e| ApiError::internal(e.to_string()))? {
            return Err(not_registered());
        }
        members.push(id);
    }
    let coordinator =
        d.members.iter().position(|m| *m == d.coordinator).map(|i| members[i]).ok_or_else(
            || {
                ApiError::bad_request(
                    "invalid",
                    format!("coordinator: {:?} is not one of the members", d.coordinator),
                )
            },
        )?;
    members.sort();
    Ok(crate::store::GroupDef { name: name.to_owned(), coordinator, members })
}

/// Checks a group point record an agent sends: the group is defined, the caller is its
/// coordinator, and the record names exactly its members (returned, sorted). Anything else is
/// 403: an agent cannot record group points naming other machines.
pub(super) fn check_group_point(
    state: &State,
    caller: MachineId,
    g: &api::GroupPoint,
) -> Result<Vec<MachineId>, ApiError> {
    let def =
        state.groups().map_err(internal)?.into_iter().find(|d| d.name == g.group).ok_or_else(
            || {
                ApiError::forbidden(
                    "unknown-group",
                    format!("group {:?} is not defined on the appliance", g.group),
                )
            },
        )?;
    if def.coordinator != caller {
        return Err(ApiError::forbidden(
            "not-coordinator",
            format!("only the coordinator of group {} may record its points", g.group),
        ));
    }
    let wrong = || {
        ApiError::forbidden(
            "wrong-members",
            format!("the record does not name exactly the members of group {}", g.group),
        )
    };
    let mut named = parse_ids(&g.members).ok_or_else(wrong)?;
    named.sort();
    named.dedup();
    if named != def.members || named.len() != g.members.len() {
        return Err(wrong());
    }
    Ok(named)
}

/// Machine ids as the API shows them.
pub(super) fn strings(ids: &[MachineId]) -> Vec<String> {
    ids.iter().map(MachineId::to_string).collect()
}

/// Machine ids from the API; `None` if one is malformed.
fn parse_ids(ids: &[String]) -> Option<Vec<MachineId>> {
    ids.iter().map(|m| m.parse().ok()).collect()
}
