//! The process server's routes (9443, mutual TLS): what registered agents call.

use super::MachinePath;
use super::*;

/// `POST /api/v1/hello`
pub(super) async fn hello(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let ps = &ctx.ps;
    let state = &ctx.state;
    let hello: api::Hello = body_json(req, AGENT_JSON_BODY).await?;
    if let Some(system) = &hello.system {
        system.check().map_err(|e| ApiError::bad_request("invalid-system", e))?;
        let text = serde_json::to_string(system).map_err(|e| ApiError::internal(e.to_string()))?;
        state.set_machine_facts(machine, &text).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    json(StatusCode::OK, &ps.hello(machine, hello).await?)
}

/// `PUT /api/v1/batches`
pub(super) async fn batch(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let ps = &ctx.ps;
    let body = read_body(req.into_body()).await?;
    json(StatusCode::OK, &ps.batch(machine, body).await?)
}

/// `POST /api/v1/progress`
pub(super) async fn progress(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let p: api::Progress = body_json(req, AGENT_JSON_BODY).await?;
    state.set_progress(machine, &p).map_err(|e| ApiError::internal(e.to_string()))?;
    json(StatusCode::OK, &api::Empty {})
}

/// `POST /api/v1/agent-alerts`
pub(super) async fn agent_alerts(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let a: api::AgentAlert = body_json(req, AGENT_JSON_BODY).await?;
    a.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    let record = crate::config_server::policy::AgentAlertRecord {
        kind: a.kind.clone(),
        message: a.message.clone(),
        at: crate::store::now_ms(),
    };
    let record = serde_json::to_string(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    state
        .set_setting(&format!("agent_alert:{machine}"), &record)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::warn!(%machine, kind = %a.kind, "agent alert: {}", a.message);
    json(StatusCode::OK, &api::Empty {})
}

/// `GET /api/v1/trust`
pub(super) async fn trust(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let pki = &ctx.pki;
    let der = req.extensions().get::<PeerInfo>().and_then(|p| p.cert_der.clone());
    let reason = match der {
        Some(d) => crate::config_server::pki::renew_reason(state, pki, machine, &d)
            .map_err(|e| ApiError::internal(e.to_string()))?,
        None => None,
    };
    let policy = state.policy_of(machine).map_err(|e| ApiError::internal(e.to_string()))?;
    let bundle = pki.bundle_pem();
    state
        .set_machine_trust(machine, &crate::config_server::pki::bundle_sha(&bundle))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    json(
        StatusCode::OK,
        &api::TrustAnswer {
            ca_pem: bundle,
            active_ca: pki.active().fingerprint().to_owned(),
            renew: reason,
            interval_secs: policy.crash_interval_secs,
            app_interval_secs: policy.app_interval_secs,
            bandwidth: policy.bandwidth,
            group: state.group_of(machine).map_err(|e| ApiError::internal(e.to_string()))?.map(
                |d| api::GroupAssignment {
                    name: d.name,
                    coordinator: d.coordinator.to_string(),
                    members: super::groups::strings(&d.members),
                },
            ),
            compare: state
                .compares(machine)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .into_iter()
                .filter(|c| c.2.is_none())
                .map(|(disk, token, _)| api::CompareRequest { disk, token })
                .collect(),
        },
    )
}

/// `POST /api/v1/renew`
pub(super) async fn renew(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let pki = &ctx.pki;
    let r: api::RenewRequest = body_json(req, AGENT_JSON_BODY).await?;
    let cert_pem = pki.sign_agent(state, &r.csr_pem, machine).map_err(|e| {
        ApiError::bad_request("bad_csr", format!("certificate request refused: {e:#}"))
    })?;
    tracing::info!(%machine, ca = %pki.active().fingerprint(), "agent certificate renewed");
    json(StatusCode::OK, &api::RenewAnswer { cert_pem, ca_pem: pki.bundle_pem() })
}

/// `GET /api/v1/reverse`
pub(super) async fn reverse_status(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
) -> Answer {
    let state = &ctx.state;
    json(StatusCode::OK, &crate::process_server::reverse::status(state, machine)?)
}

/// `POST /api/v1/reverse/diff`
pub(super) async fn reverse_diff(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let ps = &ctx.ps;
    let state = &ctx.state;
    let d: api::ReverseDiff = body_json(req, AGENT_JSON_BODY).await?;
    let batch = crate::process_server::reverse::diff(ps, state, machine, d).await?;
    let mut r = Response::new(lifeboat_net::server::full(batch));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// `POST /api/v1/reverse/done`
pub(super) async fn reverse_done(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let d: api::ReverseDone = body_json(req, AGENT_JSON_BODY).await?;
    crate::process_server::reverse::done(state, machine, d)?;
    json(StatusCode::OK, &api::Empty {})
}

/// `POST /api/v1/compare`
pub(super) async fn compare(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let ps = &ctx.ps;
    let state = &ctx.state;
    let c: api::CompareBlocks = body_json(req, AGENT_JSON_BODY).await?;
    json(StatusCode::OK, &crate::process_server::reverse::compare(ps, state, machine, c).await?)
}

/// `POST /api/v1/compare/done`
pub(super) async fn compare_done(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let ps = &ctx.ps;
    let state = &ctx.state;
    let d: api::CompareDone = body_json(req, AGENT_JSON_BODY).await?;
    if !state
        .compare_done(machine, d.disk, d.token, d.point)
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no-compare",
            format!("no comparison {} of disk {} is open", d.token, d.disk),
        ));
    }
    tracing::info!(%machine, disk = d.disk, point = d.point, "the agent compared the disk with its replica: whole again from that point");
    // A master target at another site learns it through the target.
    ps.publish_compare_done(machine, d.disk, d.token, d.point).await?;
    json(StatusCode::OK, &api::Empty {})
}

/// `POST /api/v1/churn`
pub(super) async fn churn(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let r: api::ChurnReport = body_json(req, AGENT_JSON_BODY).await?;
    r.check().map_err(|e| ApiError::bad_request("invalid-churn", e))?;
    let text = serde_json::to_string(&r).map_err(|e| ApiError::internal(e.to_string()))?;
    state.add_churn(machine, &text).map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(%machine, disks = r.disks.len(), seconds = r.seconds, "churn profile received");
    json(StatusCode::OK, &api::Empty {})
}

/// `POST /api/v1/groups/member-points`
pub(super) async fn member_points(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let m: api::MemberPoint = body_json(req, AGENT_JSON_BODY).await?;
    let def = state
        .group_of(machine)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .filter(|d| d.name == m.group)
        .ok_or_else(|| {
            ApiError::forbidden(
                "not-a-member",
                format!("machine {machine} is not a member of group {}", m.group),
            )
        })?;
    state
        .add_member_point(&def.name, machine, m.point)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    json(StatusCode::OK, &api::Empty {})
}

/// `POST /api/v1/groups/points`
pub(super) async fn group_points(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    req: Req,
) -> Answer {
    let state = &ctx.state;
    let g: api::GroupPoint = body_json(req, AGENT_JSON_BODY).await?;
    let members = check_group_point(state, machine, &g)?;
    state
        .add_group_point(&g.group, g.point, &members)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(group = %g.group, point = g.point, members = g.members.len(), "group point recorded by the coordinator");
    json(StatusCode::OK, &api::Empty {})
}

/// `GET /api/v1/machines/{id}/points`
pub(super) async fn agent_points(
    extract::State(ctx): extract::State<Arc<AgentCtx>>,
    Extension(AgentMachine(machine)): Extension<AgentMachine>,
    MachinePath(id): MachinePath,
) -> Answer {
    let state = &ctx.state;
    if id != machine {
        return Err(ApiError::forbidden(
            "forbidden",
            "an agent may list only its own machine's points",
        ));
    }
    let points = state
        .points(id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into_iter()
        .map(point_summary)
        .collect();
    json(StatusCode::OK, &api::PointList { points })
}
