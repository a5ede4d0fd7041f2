//! Recovery plans and jobs.

use super::*;

/// `GET /api/v1/plans`
#[utoipa::path(
    get,
    path = "/api/v1/plans",
    tag = "plans",
    summary = "Recovery plans.",
    responses(
        (status = 200, description = "Every recovery plan.", body = api::PlanList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_plans(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &plan_list(&ctx.state)?)
}

/// `POST /api/v1/plans/{name}/run`
#[utoipa::path(
    post,
    path = "/api/v1/plans/{name}/run",
    tag = "plans",
    summary = "Runs a plan as a test failover or a failover (a job; each machine's own (test) failover is a job too). Stops at the first failure. 409 if the plan no longer fits the appliance (a plugin unloaded) or there is no master target here.",
    params(("name" = String, Path, description = "name")),
    request_body = api::PlanRun,
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn run_plan(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    check_policy_name(&name)?;
    let r: api::PlanRun = body_json(req, ADMIN_BODY).await?;
    if !matches!(r.mode.as_str(), "test-failover" | "failover") {
        return Err(ApiError::bad_request(
            "invalid",
            format!("mode: {:?} is not test-failover or failover", r.mode),
        ));
    }
    let plan = plan_list(&ctx.state)?
        .plans
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found("unknown_plan", format!("name: no plan {name:?}")))?
        .plan;
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    // What changed since the plan was saved (a plugin unloaded, a machine removed).
    ctx.plans
        .validate(&ctx.state, Some(&f), &plan)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "plan_invalid", e))?;
    let choice = crate::master_target::failover::PointChoice::parse(r.point.as_deref());
    let job = ctx
        .state
        .create_job(lifeboat_api::JobKind::Plan, None, &format!("plan {name} ({})", r.mode))
        .map_err(internal)?;
    tracing::warn!(%admin, plan = %name, mode = %r.mode, %job, "recovery plan started");
    let plans = ctx.plans.clone();
    tokio::spawn(async move { plans.run(f, job, name, plan, r.mode, choice).await });
    accepted(&ctx.state, job)
}

/// `PUT /api/v1/plans/{name}`
#[utoipa::path(
    put,
    path = "/api/v1/plans/{name}",
    tag = "plans",
    summary = "Creates or replaces a recovery plan: groups of machines failed over in order (a group's machines in parallel), each with pre and post actions — an allow-listed script (`[plans.scripts]`), an action plugin, or a manual step. Machines, scripts and plugins must exist.",
    params(("name" = String, Path, description = "name")),
    request_body = api::Plan,
    responses(
        (status = 200, description = "Every recovery plan.", body = api::PlanList),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn put_plan(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    check_policy_name(&name)?;
    let plan: api::Plan = body_json(req, ADMIN_BODY).await?;
    ctx.plans
        .validate(&ctx.state, ctx.failover.as_ref(), &plan)
        .map_err(|e| ApiError::bad_request("invalid", e))?;
    let text = serde_json::to_string(&plan).map_err(|e| ApiError::internal(e.to_string()))?;
    ctx.state.set_plan(&name, &text).map_err(internal)?;
    tracing::info!(%admin, plan = %name, "recovery plan set");
    json(StatusCode::OK, &plan_list(&ctx.state)?)
}

/// `DELETE /api/v1/plans/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/plans/{name}",
    tag = "plans",
    summary = "Deletes a recovery plan.",
    params(("name" = String, Path, description = "name")),
    responses(
        (status = 200, description = "Every recovery plan.", body = api::PlanList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn delete_plan(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = name.as_str();
    check_policy_name(name)?;
    if !ctx.state.delete_plan(name).map_err(internal)? {
        return Err(ApiError::not_found("unknown_plan", format!("name: no plan {name:?}")));
    }
    tracing::info!(%admin, plan = %name, "recovery plan deleted");
    json(StatusCode::OK, &plan_list(&ctx.state)?)
}

/// `POST /api/v1/jobs/{id}/continue`
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/continue",
    tag = "plans",
    summary = "Confirms the manual step a plan's job waits on; with `{\"step\": n}`, only if that is the step it waits on (the job's message numbers it). 409 if it waits on none, or on another.",
    params(("id" = String, Path, description = "id")),
    request_body = api::ContinueStep,
    responses(
        (status = 200, description = "Continued.", body = api::Continued),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn continue_job(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(id): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let raw = id.as_str();
    let id: api::JobId = raw.parse().map_err(|_| {
        ApiError::bad_request("invalid", format!("id: {raw:?} is not a job number"))
    })?;
    let body = body_bytes(req, ADMIN_BODY).await?;
    let step = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let c: api::ContinueStep = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("the request body is not valid JSON for this endpoint: {e}"),
            )
        })?;
        c.step
    };
    if ctx.state.jobs(Some(id), 1).map_err(internal)?.is_empty() {
        return Err(ApiError::not_found("unknown_job", format!("id: no job {id}")));
    }
    let step = ctx
        .plans
        .confirm(id, step)
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "not_waiting", why))?;
    tracing::info!(%admin, job = %id, step, "manual plan step confirmed");
    json(StatusCode::OK, &api::Continued { continued: true, step })
}

/// `GET /api/v1/jobs`
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "plans",
    summary = "The newest 100 jobs, newest first.",
    responses(
        (status = 200, description = "list", body = api::JobList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_jobs(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let jobs = ctx.state.jobs(None, 100).map_err(internal)?.into_iter().map(job_info).collect();
    json(StatusCode::OK, &api::JobList { jobs })
}

/// `GET /api/v1/jobs/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "plans",
    summary = "One job with its progress and, once done, its result or why it failed.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 200, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn job(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(id): Path<String>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let raw = id.as_str();
    let id: api::JobId = raw.parse().map_err(|_| {
        ApiError::bad_request("invalid", format!("id: {raw:?} is not a job number"))
    })?;
    let j = ctx
        .state
        .jobs(Some(id), 1)
        .map_err(internal)?
        .pop()
        .ok_or_else(|| ApiError::not_found("unknown_job", format!("id: no job {id}")))?;
    json(StatusCode::OK, &job_info(j))
}

pub(super) fn job_info(j: crate::store::JobRow) -> api::JobInfo {
    api::JobInfo {
        id: j.id,
        kind: j.kind,
        machine_id: j.machine_id,
        state: j.state,
        progress: j.progress,
        message: j.message,
        created_unix_ms: j.created_unix_ms,
        finished_unix_ms: j.finished_unix_ms,
        result: j.result.and_then(|r| serde_json::from_str(&r).ok()),
    }
}

/// Every recovery plan.
pub(super) fn plan_list(state: &State) -> Result<api::PlanList, ApiError> {
    let mut plans = Vec::new();
    for (name, json) in state.plans().map_err(|e| ApiError::internal(e.to_string()))? {
        let plan: api::Plan =
            serde_json::from_str(&json).map_err(|e| ApiError::internal(e.to_string()))?;
        plans.push(api::NamedPlan { name, plan });
    }
    Ok(api::PlanList { plans })
}
