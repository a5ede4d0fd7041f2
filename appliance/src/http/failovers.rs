//! Failover, test failover and their cleanup, commit, reprotect and failback.

use super::MachinePath;
use super::*;
use lifeboat_wire::MachineId;

/// `POST /api/v1/machines/{id}/test-failover`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/test-failover",
    tag = "failovers",
    summary = "Starts a test failover: the chosen point (`latest` (default: first process everything already received, then the newest point), `latest-processed` (the newest point now), `latest-app`, `latest-group` (newest point of a complete consistency-group point) or a point id) materialised into isolated disks and a VM on the test network, while replication goes on.",
    params(("id" = String, Path, description = "id")),
    request_body = api::TestFailoverRequest,
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn test_failover(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::TestFailoverRequest = body_json(req, ADMIN_BODY).await?;
    known_machine(&ctx.state, id)?;
    let choice = point_choice(&ctx.state, id, &r)?;
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    let job = ctx
        .state
        .create_job(
            lifeboat_api::JobKind::TestFailover,
            Some(id),
            &format!("test failover at {choice:?}"),
        )
        .map_err(internal)?;
    tracing::info!(%admin, machine = %id, ?choice, %job, "test failover started");
    tokio::spawn(async move { f.test_failover(job, id, choice).await });
    accepted(&ctx.state, job)
}

/// `POST /api/v1/machines/{id}/failover`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/failover",
    tag = "failovers",
    summary = "Starts a failover (the source is taken to be lost: its data is refused from now on): the chosen point (`latest` (default: first process everything already received, then the newest point), `latest-processed` (the newest point now), `latest-app`, `latest-group` (newest point of a complete consistency-group point) or a point id) materialised into disks and the VM on its mapped networks. Again while failed-over and not committed: another point. 409 while failing over or once committed.",
    params(("id" = String, Path, description = "id")),
    request_body = api::TestFailoverRequest,
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn failover(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::TestFailoverRequest = body_json(req, ADMIN_BODY).await?;
    known_machine(&ctx.state, id)?;
    let busy = |now: lifeboat_api::FailoverState| {
        failover_conflict(
            id,
            now.as_str(),
            "a failover can start only from protected, failed-over (another point) or failover-failed",
        )
    };
    if let Some(now) = ctx.state.failover_state(id).map_err(internal)?
        && !now.may_fail_over_again()
    {
        return Err(busy(now));
    }
    let choice = point_choice(&ctx.state, id, &r)?;
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    let job = ctx
        .state
        .create_job(lifeboat_api::JobKind::Failover, Some(id), &format!("failover at {choice:?}"))
        .map_err(internal)?;
    if !ctx.state.start_failover(id, job).map_err(internal)? {
        let now = machine_state(&ctx.state, id, true)?;
        let _ = ctx.state.finish_job(job, false, &format!("machine is {now}"), None);
        return Err(failover_conflict(
            id,
            &now,
            "a failover can start only from protected, failed-over (another point) or failover-failed",
        ));
    }
    tracing::warn!(%admin, machine = %id, ?choice, %job, "failover started: replication from the source stops");
    tokio::spawn(async move { f.failover(job, id, choice).await });
    accepted(&ctx.state, job)
}

/// `POST /api/v1/machines/{id}/commit`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/commit",
    tag = "failovers",
    summary = "Commits a failed-over machine: its recovery points and unapplied logs are deleted; the failed-over VM and disks stay. No body. 409 unless failed-over.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn commit(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    known_machine(&ctx.state, id)?;
    let not_failed_over =
        |now: String| failover_conflict(id, &now, "only a failed-over machine can be committed");
    if ctx.state.failover_state(id).map_err(internal)?
        != Some(lifeboat_api::FailoverState::FailedOver)
    {
        return Err(not_failed_over(machine_state(&ctx.state, id, true)?));
    }
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    move_failover(
        &ctx.state,
        id,
        lifeboat_api::FailoverState::FailedOver,
        lifeboat_api::FailoverState::Committing,
        "only a failed-over machine can be committed",
    )?;
    let job = ctx
        .state
        .create_job(lifeboat_api::JobKind::Commit, Some(id), "committing the failover")
        .map_err(internal)?;
    tracing::warn!(%admin, machine = %id, %job, "failover commit started: the machine's recovery points will be deleted");
    tokio::spawn(async move { f.commit(job, id).await });
    accepted(&ctx.state, job)
}

/// `POST /api/v1/machines/{id}/reprotect`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/reprotect",
    tag = "failovers",
    summary = "Reprotects a committed failover. Without `to` (or no body): the original machine's agent (`lifeboat-agent reprotect`) pulls the blocks that differ between its disks and the failed-over ones, so only changed blocks cross the network. With `to` (another loaded target plugin): the master target writes new disks there from the failed-over ones, block by block, writing only blocks that differ; failback then makes VM `vm_name` on them. With `existing_vm`, `vm_name` is an existing, powered-off VM there (the machine's original VM): its own disks are written, and failback starts it. The job ends after its first complete pass (state `reprotected`). 409 unless committed.",
    params(("id" = String, Path, description = "id")),
    request_body = api::ReprotectRequest,
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn reprotect(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    // The body is optional (older clients send none).
    let bytes = body_bytes(req, ADMIN_BODY).await?;
    let r: api::ReprotectRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        api::ReprotectRequest::default()
    } else {
        read_json(http_body_util::Full::new(bytes)).await?
    };
    r.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    known_machine(&ctx.state, id)?;
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    let disks = ctx.state.disks(id).map_err(internal)?;
    let destination = match &r.to {
        None => None,
        Some(to) => {
            let current = f.target_name();
            if *to == current {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!(
                        "to: the machine failed over to {to:?} already; reprotect without `to` writes the original machine's disks"
                    ),
                ));
            }
            match f.registry.get(to) {
                Some(p) if p.kind() == lifeboat_plugin_host::manifest::PluginKind::Target => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "invalid",
                        format!("to: plugin {to:?} is not a target plugin"),
                    ));
                }
                None => {
                    return Err(ApiError::bad_request(
                        "invalid",
                        format!(
                            "to: no target plugin {to:?} is loaded (install it and grant it in the configuration file)"
                        ),
                    ));
                }
            }
            let d = api::ReprotectDestination {
                target: to.clone(),
                vm_name: r.vm_name.clone().unwrap_or_else(|| format!("lb-{id}")),
                network: r.network.clone(),
                existing: r.existing_vm,
                disks: disks
                    .iter()
                    .map(|(i, _)| api::DestinationDisk { disk: *i, id: format!("fb-{id}-d{i}") })
                    .collect(),
            };
            Some(serde_json::to_string(&d).map_err(|e| ApiError::internal(e.to_string()))?)
        }
    };
    move_failover(
        &ctx.state,
        id,
        lifeboat_api::FailoverState::Committed,
        lifeboat_api::FailoverState::Reprotecting,
        "only a committed failover can be reprotected",
    )?;
    let total: u64 = disks.iter().map(|d| d.1).sum();
    ctx.state.start_reverse(id, total, destination.as_deref()).map_err(internal)?;
    let waiting = match &r.to {
        Some(to) => format!("writing the failed-over disks into {to}"),
        None => "waiting for the original machine's agent".into(),
    };
    let job = ctx
        .state
        .create_job(lifeboat_api::JobKind::Reprotect, Some(id), &waiting)
        .map_err(internal)?;
    match r.to {
        Some(to) => {
            tracing::warn!(%admin, machine = %id, %job, %to, "reprotect started: new disks at another target will be written from the failed-over ones");
        }
        None => {
            tracing::warn!(%admin, machine = %id, %job, "reprotect started: the original disks will be written from the failed-over ones");
        }
    }
    tokio::spawn(async move { f.reprotect(job, id).await });
    accepted(&ctx.state, job)
}

/// `POST /api/v1/machines/{id}/failback`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/failback",
    tag = "failovers",
    summary = "Fails a reprotected machine back: the failed-over VM is stopped, the final reverse pass is made (by the original machine's agent, or, reprotected into another target, by the master target), the replicas are made anew from the failed-over disks and replication goes forward again (state `protected`); into another target, the VM is made there and powered on first, and the agent inside it sends its disks' data again once (its journal came from a recovery point, so the appliance's numbering moves past it, which the agent answers with a full resync). No body. 409 unless reprotected.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn failback(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    known_machine(&ctx.state, id)?;
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    move_failover(
        &ctx.state,
        id,
        lifeboat_api::FailoverState::Reprotected,
        lifeboat_api::FailoverState::FailingBack,
        "only a reprotected machine can fail back",
    )?;
    let job = ctx
        .state
        .create_job(lifeboat_api::JobKind::Failback, Some(id), "stopping the failed-over VM")
        .map_err(internal)?;
    tracing::warn!(%admin, machine = %id, %job, "failback started: the failed-over VM is stopped");
    tokio::spawn(async move { f.failback(job, id).await });
    accepted(&ctx.state, job)
}

/// `GET /api/v1/failovers`
#[utoipa::path(
    get,
    path = "/api/v1/failovers",
    tag = "failovers",
    summary = "Failovers: one per machine that was failed over, with its state.",
    responses(
        (status = 200, description = "The failovers.", body = api::FailoverList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_failovers(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let list = ctx.state.failovers(None).map_err(internal)?;
    json(
        StatusCode::OK,
        &api::FailoverList { failovers: list.into_iter().map(failover_info).collect() },
    )
}

/// `GET /api/v1/test-failovers`
#[utoipa::path(
    get,
    path = "/api/v1/test-failovers",
    tag = "failovers",
    summary = "Test failovers, cleaned up or not.",
    responses(
        (status = 200, description = "list", body = api::TestFailoverList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_test_failovers(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let list = ctx.state.test_failovers(None).map_err(internal)?;
    json(
        StatusCode::OK,
        &api::TestFailoverList {
            test_failovers: list.into_iter().map(test_failover_info).collect(),
        },
    )
}

/// `POST /api/v1/test-failovers/{id}/cleanup`
#[utoipa::path(
    post,
    path = "/api/v1/test-failovers/{id}/cleanup",
    tag = "failovers",
    summary = "Deletes a test failover's VM and disks (a job).",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn cleanup_test_failover(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(id): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let id = id.as_str();
    let tf = ctx.state.test_failovers(Some(id)).map_err(internal)?.pop().ok_or_else(|| {
        ApiError::not_found("unknown_test_failover", format!("id: no test failover {id:?}"))
    })?;
    if tf.cleaned_unix_ms.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_cleaned",
            format!("test failover {id} was cleaned up already"),
        ));
    }
    let f = ctx.failover.clone().ok_or_else(no_master_target)?;
    let job = ctx
        .state
        .create_job(
            lifeboat_api::JobKind::TestFailoverCleanup,
            Some(tf.machine_id),
            &format!("cleaning up {id}"),
        )
        .map_err(internal)?;
    tracing::info!(%admin, test_failover = id, %job, "test failover cleanup started");
    tokio::spawn(async move { f.cleanup(job, tf).await });
    accepted(&ctx.state, job)
}

pub(super) fn test_failover_info(t: crate::store::TestFailoverRow) -> api::TestFailoverInfo {
    api::TestFailoverInfo {
        id: t.id,
        machine_id: t.machine_id.to_string(),
        point_id: t.point_id,
        vm: t.vm,
        disks: t.disks,
        created_unix_ms: t.created_unix_ms,
        cleaned_unix_ms: t.cleaned_unix_ms,
    }
}

/// `409 failover_state`: machine `id` is `now`, and only `needed` allows what was asked.
pub(super) fn failover_conflict(id: MachineId, now: &str, needed: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "failover_state",
        format!("machine {id} is {now}: {needed}"),
    )
}

/// Moves machine `id`'s failover from `from` to `to`, or answers the 409 saying what it is
/// and that only `needed` allows this.
pub(super) fn move_failover(
    state: &State,
    id: MachineId,
    from: lifeboat_api::FailoverState,
    to: lifeboat_api::FailoverState,
    needed: &str,
) -> Result<(), ApiError> {
    if state.failover_transition(id, from, to).map_err(|e| ApiError::internal(e.to_string()))? {
        Ok(())
    } else {
        Err(failover_conflict(id, &machine_state(state, id, true)?, needed))
    }
}

pub(super) fn failover_info(f: crate::store::FailoverRow) -> api::FailoverInfo {
    api::FailoverInfo {
        machine_id: f.machine_id.to_string(),
        state: f.state,
        point_id: f.point_id,
        vm: f.vm,
        disks: f.disks,
        job: f.job,
        started_unix_ms: f.started_unix_ms,
        committed_unix_ms: f.committed_unix_ms,
    }
}

/// The point choice of a (test) failover request, checked against the points there are.
pub(super) fn point_choice(
    state: &State,
    machine: MachineId,
    r: &api::TestFailoverRequest,
) -> Result<crate::master_target::failover::PointChoice, ApiError> {
    let choice = crate::master_target::failover::PointChoice::parse(r.point.as_deref());
    crate::master_target::failover::choose_point(state, machine, &choice)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|(code, m)| ApiError::not_found(code, m))?;
    Ok(choice)
}
