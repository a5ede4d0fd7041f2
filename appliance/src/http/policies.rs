//! Replication policies, their assignment to machines, and alerts.

use super::MachinePath;
use super::*;

/// `GET /api/v1/policies`
#[utoipa::path(
    get,
    path = "/api/v1/policies",
    tag = "policies",
    summary = "Replication policies: RPO thresholds, agent silence, tiered retention.",
    responses(
        (status = 200, description = "Every policy (default always) with the machines that use it.", body = api::PolicyList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_policies(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &policy_list(&ctx.state)?)
}

/// `PUT /api/v1/policies/{name}`
#[utoipa::path(
    put,
    path = "/api/v1/policies/{name}",
    tag = "policies",
    summary = "Creates or replaces a policy; fields left out take their defaults. `default` is what machines use until given another.",
    params(("name" = String, Path, description = "name")),
    request_body = api::Policy,
    responses(
        (status = 200, description = "Every policy (default always) with the machines that use it.", body = api::PolicyList),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn put_policy(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    check_policy_name(&name)?;
    let policy: api::Policy = body_json(req, ADMIN_BODY).await?;
    policy.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    // What the target cannot do (checked where this appliance runs the master
    // target, which knows its target).
    let needs_caps =
        policy.encryption == Some(false) || policy.crash_interval_secs.is_some_and(|i| i < 60);
    if let (true, Some(f)) = (needs_caps, &ctx.failover) {
        let caps =
            f.target_capabilities().await.map_err(|e| ApiError::internal(format!("{e:#}")))?;
        if policy.encryption == Some(false) && caps.requires_encryption {
            return Err(ApiError::bad_request(
                "invalid",
                format!("encryption: the target ({}) requires the data sealed", f.target_name()),
            ));
        }
        if let Some(i) = policy.crash_interval_secs.filter(|i| *i < 60)
            && !caps.instant_points
        {
            return Err(ApiError::bad_request(
                "invalid",
                format!(
                    "crash_interval_secs: the target ({}) copies each point (no instant points here); a point every {i} s would not keep up, set 60 or more",
                    f.target_name()
                ),
            ));
        }
    }
    let text = serde_json::to_string(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
    ctx.state.set_policy(&name, &text).map_err(internal)?;
    tracing::info!(%admin, policy = %name, "policy set");
    json(StatusCode::OK, &policy_list(&ctx.state)?)
}

/// `DELETE /api/v1/policies/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/policies/{name}",
    tag = "policies",
    summary = "Deletes a policy no machine uses (409 if one does, or for `default`).",
    params(("name" = String, Path, description = "name")),
    responses(
        (status = 200, description = "Every policy (default always) with the machines that use it.", body = api::PolicyList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn delete_policy(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = name.as_str();
    check_policy_name(name)?;
    if name == "default" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_in_use",
            "the default policy cannot be deleted (set it to change it)",
        ));
    }
    if ctx.state.policy(name).map_err(internal)?.is_none() {
        return Err(ApiError::not_found("unknown_policy", format!("name: no policy {name:?}")));
    }
    if !ctx.state.delete_policy(name).map_err(internal)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_in_use",
            format!("policy {name} is used by machines: give them another first"),
        ));
    }
    tracing::info!(%admin, policy = %name, "policy deleted");
    json(StatusCode::OK, &policy_list(&ctx.state)?)
}

/// `PUT /api/v1/machines/{id}/policy`
#[utoipa::path(
    put,
    path = "/api/v1/machines/{id}/policy",
    tag = "policies",
    summary = "Gives a machine a policy.",
    params(("id" = String, Path, description = "id")),
    request_body = api::PolicyAssignment,
    responses(
        (status = 200, description = "Every policy (default always) with the machines that use it.", body = api::PolicyList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn assign_policy(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let a: api::PolicyAssignment = body_json(req, ADMIN_BODY).await?;
    known_machine(&ctx.state, id)?;
    if ctx.state.policy(&a.policy).map_err(internal)?.is_none() {
        return Err(ApiError::bad_request("invalid", format!("policy: no policy {:?}", a.policy)));
    }
    ctx.state.set_machine_policy(id, &a.policy).map_err(internal)?;
    tracing::info!(%admin, machine = %id, policy = %a.policy, "machine policy set");
    json(StatusCode::OK, &policy_list(&ctx.state)?)
}

/// `GET /api/v1/alerts`
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "policies",
    summary = "Alerts that hold now, critical first: RPO over the machine's policy thresholds, an agent silent too long, the process server's cache over its high-water mark or full, the appliance's CPU or memory over 80 % / 95 %, plugin failures.",
    responses(
        (status = 200, description = "The alerts.", body = api::AlertList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_alerts(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let alerts = crate::config_server::policy::alerts(&ctx.state).map_err(internal)?;
    json(StatusCode::OK, &api::AlertList { alerts })
}

/// Every policy with the machines that use it; `default` always.
pub(super) fn policy_list(state: &State) -> Result<api::PolicyList, ApiError> {
    let mut names: Vec<String> =
        state.policies().map_err(internal)?.into_iter().map(|p| p.0).collect();
    if !names.iter().any(|n| n == "default") {
        names.insert(0, "default".into());
    }
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, _, _) in state.machines().map_err(internal)? {
        let (p, _) = state.machine_policy(id).map_err(internal)?;
        users.entry(p).or_default().push(id.to_string());
    }
    let mut policies = Vec::new();
    for name in names {
        let policy = state.policy(&name).map_err(internal)?.unwrap_or_default();
        let machines = users.remove(&name).unwrap_or_default();
        policies.push(api::NamedPolicy { name, policy, machines });
    }
    Ok(api::PolicyList { policies })
}

/// A policy name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
pub(super) fn check_policy_name(name: &str) -> Result<(), ApiError> {
    if !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid",
            format!("name: {name:?} is not a policy name (1 to 64 letters, digits, '.', '_', '-')"),
        ))
    }
}
