//! Recovery plans and jobs.

use super::*;

/// `GET /api/v1/plans`
pub(super) async fn list_plans(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &plan_list(&ctx.state)?)
}

/// `POST /api/v1/plans/{name}/run`
pub(super) async fn run_plan(
    ctx: Arc<ConfigServerCtx>,
    req: Request<RequestBody>,
    p: &str,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = segment(p, "/api/v1/plans/", "/run").unwrap_or_default().to_owned();
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
        .create_job("plan", None, &format!("plan {name} ({})", r.mode))
        .map_err(internal)?;
    tracing::warn!(%admin, plan = %name, mode = %r.mode, job, "recovery plan started");
    let plans = ctx.plans.clone();
    tokio::spawn(async move { plans.run(f, job, name, plan, r.mode, choice).await });
    accepted(&ctx.state, job)
}

/// `PUT /api/v1/plans/{name}`
pub(super) async fn put_plan(
    ctx: Arc<ConfigServerCtx>,
    req: Request<RequestBody>,
    p: &str,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = segment(p, "/api/v1/plans/", "").unwrap_or_default().to_owned();
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
pub(super) async fn delete_plan(
    ctx: Arc<ConfigServerCtx>,
    req: Request<RequestBody>,
    p: &str,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let name = segment(p, "/api/v1/plans/", "").unwrap_or_default();
    check_policy_name(name)?;
    if !ctx.state.delete_plan(name).map_err(internal)? {
        return Err(ApiError::not_found("unknown_plan", format!("name: no plan {name:?}")));
    }
    tracing::info!(%admin, plan = %name, "recovery plan deleted");
    json(StatusCode::OK, &plan_list(&ctx.state)?)
}

/// `POST /api/v1/jobs/{id}/continue`
pub(super) async fn continue_job(
    ctx: Arc<ConfigServerCtx>,
    req: Request<RequestBody>,
    p: &str,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let raw = segment(p, "/api/v1/jobs/", "/continue").unwrap_or_default();
    let id: u64 = raw.parse().map_err(|_| {
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
    tracing::info!(%admin, job = id, step, "manual plan step confirmed");
    json(StatusCode::OK, &serde_json::json!({"continued": true, "step": step}))
}

/// `GET /api/v1/jobs`
pub(super) async fn list_jobs(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    authenticated(&ctx, &req)?;
    let jobs = ctx.state.jobs(None, 100).map_err(internal)?.into_iter().map(job_info).collect();
    json(StatusCode::OK, &api::JobList { jobs })
}

/// `GET /api/v1/jobs/{id}`
pub(super) async fn job(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>, p: &str) -> Answer {
    authenticated(&ctx, &req)?;
    let raw = segment(p, "/api/v1/jobs/", "").unwrap_or_default();
    let id: u64 = raw.parse().map_err(|_| {
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
