//! Machines: agent registration, the machine list, revocation, registration passphrases, VM settings, recovery points.

use super::MachinePath;
use super::*;
use lifeboat_wire::MachineId;

/// `POST /api/v1/register`
#[utoipa::path(
    post,
    path = "/api/v1/register",
    tag = "machines",
    summary = "An agent registers with a one-time passphrase and a CSR (see lifeboat_api::RegisterRequest).",
    responses(
        (status = 200, description = "registered"),
        (status = 400, description = "error", body = api::ApiError),
        (status = 403, description = "error", body = api::ApiError),
        (status = 413, description = "error", body = api::ApiError),
        (status = 415, description = "error", body = api::ApiError),
        (status = 429, description = "error", body = api::ApiError)
    ),
)]
pub(super) async fn register_route(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    register(&ctx, req).await
}

/// `GET /api/v1/machines`
#[utoipa::path(
    get,
    path = "/api/v1/machines",
    tag = "machines",
    summary = "Registered machines with their disks and newest recovery point.",
    responses(
        (status = 200, description = "machines", body = api::MachineList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list_machines(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let alerts = crate::config_server::policy::alerts(&ctx.state).map_err(internal)?;
    let group_points = ctx.state.group_points(None).map_err(internal)?;
    let mut machines = Vec::new();
    for (id, hostname, registered_unix_ms) in ctx.state.machines().map_err(internal)? {
        let id_text = id.to_string();
        let disks: Vec<api::DiskSize> = ctx
            .state
            .disks(id)
            .map_err(internal)?
            .into_iter()
            .map(|(index, size)| api::DiskSize { index, size })
            .collect();
        let last_point = ctx.state.newest_point(id).map_err(internal)?.map(point_summary);
        let state = machine_state(&ctx.state, id, last_point.is_some())?;
        let rpo_secs = last_point
            .as_ref()
            .map(|p| crate::store::now_ms().saturating_sub(p.created_unix_ms) / 1000);
        let (policy, last_seen_unix_ms) = ctx.state.machine_policy(id).map_err(internal)?;
        let progress = ctx.state.progress(id).map_err(internal)?;
        let copying: Vec<_> = progress.iter().filter(|p| p.1 == "initial-copy").collect();
        let initial_copy = (state == "initial-copy" && !copying.is_empty()).then(|| {
            let (done, total) = copying.iter().fold((0u64, 0u64), |(d, t), p| (d + p.2, t + p.3));
            (done as f64 / total.max(1) as f64).min(1.0)
        });
        let worst = alerts
            .iter()
            .filter(|a| a.machine_id.as_deref() == Some(id_text.as_str()))
            .map(|a| a.severity.as_str())
            .min();
        let health = match worst {
            Some("critical") => "critical",
            Some(_) => "warning",
            None => "normal",
        }
        .to_owned();
        let groups: Vec<String> = group_points
            .iter()
            .filter(|g| g.members.contains(&id))
            .map(|g| g.group.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut backlog_batches = 0;
        for d in &disks {
            let received = ctx.state.received_next(id, d.index).map_err(internal)?;
            let (applied, _) = ctx.state.applied(id, d.index).map_err(internal)?;
            backlog_batches += received.saturating_sub(applied);
        }
        let churn_mb_per_s = ctx
            .state
            .newest_churn(id)
            .map_err(internal)?
            .and_then(|report| serde_json::from_str::<api::ChurnReport>(&report).ok())
            .map(|r| r.disks.iter().map(|d| d.mean_mb_per_s).sum());
        machines.push(api::MachineSummary {
            id: id_text,
            hostname,
            registered_unix_ms,
            disks,
            last_point,
            state,
            rpo_secs,
            policy,
            last_seen_unix_ms,
            initial_copy,
            health,
            groups,
            backlog_batches,
            churn_mb_per_s,
        });
    }
    json(StatusCode::OK, &api::MachineList { machines })
}

/// `POST /api/v1/machines/{id}/revoke`
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/revoke",
    tag = "machines",
    summary = "Revokes a machine: the process server refuses its certificate from then on.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 200, description = "revoked", body = api::Revoked),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn revoke(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    if !ctx.state.revoke_machine(id).map_err(internal)? {
        return Err(ApiError::not_found("unknown_machine", format!("id: no machine {id:?}")));
    }
    tracing::warn!(machine = %id, %admin, "machine revoked: its certificate is refused from now on");
    json(StatusCode::OK, &api::Revoked { revoked: true })
}

/// `GET /api/v1/passphrases`
#[utoipa::path(
    get,
    path = "/api/v1/passphrases",
    tag = "machines",
    summary = "How many one-time registration passphrases are unused.",
    responses(
        (status = 200, description = "count", body = api::PassphraseStatus),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn passphrase_status(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let unused = ctx.state.unused_passphrases().map_err(internal)?;
    json(StatusCode::OK, &api::PassphraseStatus { unused })
}

/// `POST /api/v1/passphrases`
#[utoipa::path(
    post,
    path = "/api/v1/passphrases",
    tag = "machines",
    summary = "Rotates the registration passphrase: unused ones stop working and a new one-time passphrase is returned (shown once).",
    responses(
        (status = 201, description = "created", body = api::NewPassphrase),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn new_passphrase(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    // Rotation: the passphrases handed out before stop working.
    let dropped = ctx.state.drop_unused_passphrases().map_err(internal)?;
    let p = crate::config_server::new_passphrase(&ctx.state)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(%admin, dropped, "registration passphrase rotated");
    json(StatusCode::CREATED, &api::NewPassphrase { passphrase: p, dropped })
}

/// `GET /api/v1/machines/{id}/vm-spec`
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/vm-spec",
    tag = "machines",
    summary = "The VM a failover of the machine makes.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 200, description = "The VM a failover makes: detected facts with the settings over them.", body = api::VmSpecInfo),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn vm_spec(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    known_machine(&ctx.state, id)?;
    let spec = crate::master_target::failover::vm_spec(&ctx.state, id)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    json(StatusCode::OK, &spec)
}

/// `PUT /api/v1/machines/{id}/vm-spec`
#[utoipa::path(
    put,
    path = "/api/v1/machines/{id}/vm-spec",
    tag = "machines",
    summary = "Sets the administrator's VM settings (firmware, CPUs, memory, boot disk, network mapping with optional re-addressing); fields left out keep the detected values. Replaces earlier settings.",
    params(("id" = String, Path, description = "id")),
    request_body = api::VmSpecSettings,
    responses(
        (status = 200, description = "The VM a failover makes: detected facts with the settings over them.", body = api::VmSpecInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_vm_spec(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let settings: api::VmSpecSettings = body_json(req, ADMIN_BODY).await?;
    known_machine(&ctx.state, id)?;
    settings.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    if let Some(b) = settings.boot_disk {
        let disks = ctx.state.disks(id).map_err(internal)?;
        if !disks.iter().any(|(i, _)| *i == b) {
            return Err(ApiError::bad_request(
                "invalid",
                format!(
                    "boot_disk: machine {id} has no disk {b} (its disks: {:?})",
                    disks.iter().map(|d| d.0).collect::<Vec<_>>()
                ),
            ));
        }
    }
    let text = serde_json::to_string(&settings).map_err(|e| ApiError::internal(e.to_string()))?;
    ctx.state.set_vm_settings(id, &text).map_err(internal)?;
    tracing::info!(%admin, machine = %id, "VM settings changed");
    let spec = crate::master_target::failover::vm_spec(&ctx.state, id)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    json(StatusCode::OK, &spec)
}

/// `GET /api/v1/machines/{id}/points`
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/points",
    tag = "machines",
    summary = "A machine's recovery points, oldest first.",
    params(("id" = String, Path, description = "id")),
    responses(
        (status = 200, description = "points", body = api::PointList),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn points(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    if !ctx.state.machine_exists(id).map_err(internal)? {
        return Err(ApiError::not_found("unknown_machine", format!("id: no machine {id:?}")));
    }
    // Each point names the consistency groups whose recorded point it is part of.
    let groups = ctx.state.group_points(None).map_err(internal)?;
    let points = ctx
        .state
        .points(id)
        .map_err(internal)?
        .into_iter()
        .map(|p| {
            let number = p.point;
            let mut s = point_summary(p);
            s.groups = groups
                .iter()
                .filter(|g| g.point == number && g.members.contains(&id))
                .map(|g| g.group.clone())
                .collect();
            s
        })
        .collect();
    json(StatusCode::OK, &api::PointList { points })
}

/// Most hours of history one request asks for (the 90 days samples are kept).
const MAX_HISTORY_HOURS: u64 = 90 * 24;

/// `GET /api/v1/machines/{id}/history`
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/history",
    tag = "machines",
    summary = "A machine's sampled RPO, bytes received and backlog over the last `hours` (24 unless given; at most 2160).",
    params(
        ("id" = String, Path, description = "id"),
        ("hours" = Option<u64>, Query, description = "how far back, 1 to 2160")
    ),
    responses(
        (status = 200, description = "history", body = api::MachineHistory),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn history(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    MachinePath(id): MachinePath,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let hours =
        history_hours(req.uri().query()).map_err(|e| ApiError::bad_request("bad_query", e))?;
    if !ctx.state.machine_exists(id).map_err(internal)? {
        return Err(ApiError::not_found("unknown_machine", format!("id: no machine {id:?}")));
    }
    let since = crate::store::now_ms().saturating_sub(hours * 3600 * 1000);
    let samples = ctx
        .state
        .samples(id, since)
        .map_err(internal)?
        .into_iter()
        .map(|s| api::HistorySample {
            unix_ms: s.unix_ms,
            span_secs: s.span_secs,
            rpo_secs: s.rpo_secs,
            received_bytes: s.received_bytes,
            backlog_batches: s.backlog_batches,
        })
        .collect();
    json(StatusCode::OK, &api::MachineHistory { sample_secs: ctx.sample_secs, samples })
}

/// The `hours` of a history request's query (24 without one); anything else is an error.
fn history_hours(query: Option<&str>) -> Result<u64, String> {
    let mut hours = 24;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("hours", v)) => {
                hours = v
                    .parse::<u64>()
                    .ok()
                    .filter(|h| (1..=MAX_HISTORY_HOURS).contains(h))
                    .ok_or_else(|| format!("hours: expected 1 to {MAX_HISTORY_HOURS}"))?;
            }
            _ => return Err(format!("unknown query parameter {pair:?}: only hours is taken")),
        }
    }
    Ok(hours)
}

pub(super) fn point_summary(p: crate::store::PointRow) -> api::PointSummary {
    api::PointSummary {
        id: p.id,
        point: p.point,
        kind: p.kind,
        created_unix_ms: p.created_unix_ms,
        disks: p.disks,
        groups: Vec::new(),
    }
}

pub(super) async fn register(ctx: &ConfigServerCtx, req: Req) -> Answer {
    let from = req
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.remote_addr.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    // Wrong passphrases are limited per source like failed logins.
    let attempt = ctx
        .admins
        .registrations()
        .begin(&crate::config_server::admin::source_key(from))
        .map_err(admin_error)?;
    let r: api::RegisterRequest = body_json(req, REGISTER_BODY).await?;
    let version = lifeboat_wire::negotiate(lifeboat_wire::PROTOCOL_VERSIONS, &r.protocol_versions)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "protocol_version",
                format!(
                    "the agent speaks {:?}, this appliance {:?}",
                    r.protocol_versions,
                    lifeboat_wire::PROTOCOL_VERSIONS
                ),
            )
        })?;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(e.to_string()))?;
    raw[6] = (raw[6] & 0x0f) | 0x40; // UUID version 4
    raw[8] = (raw[8] & 0x3f) | 0x80;
    let machine_id = MachineId(raw);
    // Sign first: a malformed CSR must not burn the passphrase.
    let ca = ctx.pki.active();
    let cert_pem = ca
        .sign_client_csr(
            &r.csr_pem,
            &machine_id.to_string(),
            crate::config_server::pki::AGENT_CERT_DAYS,
        )
        .map_err(|e| {
            ApiError::bad_request("bad_csr", format!("certificate request refused: {e}"))
        })?;
    let ok = ctx
        .state
        .register_machine(&r.passphrase, machine_id, &r.hostname)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !ok {
        attempt.failed();
        tracing::warn!(%from, "registration refused: unknown, used or expired passphrase");
        return Err(ApiError::forbidden(
            "bad_passphrase",
            "the registration passphrase is wrong, was already used or has expired (they last \
             24 hours); ask the administrator for a new one (lifeboat-appliance passphrase)",
        ));
    }
    attempt.succeeded();
    crate::config_server::pki::record_cert(&ctx.state, machine_id, &cert_pem, ca.fingerprint())
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    tracing::info!(%machine_id, hostname = %r.hostname, "machine registered");
    json(
        StatusCode::OK,
        &api::RegisterResponse {
            machine_id: machine_id.to_string(),
            cert_pem,
            ca_pem: ctx.pki.bundle_pem(),
            protocol_version: version,
            process_server_url: super::appliance::agent_url(ctx)?,
        },
    )
}

/// A machine's state for the machines list.
pub(super) fn machine_state(
    state: &State,
    id: MachineId,
    has_point: bool,
) -> Result<String, ApiError> {
    let failover = state.failover_state(id).map_err(internal)?;
    Ok(match failover {
        Some(lifeboat_api::FailoverState::Committing) => "failed-over".into(),
        Some(s) => s.to_string(),
        None if !has_point => "initial-copy".into(),
        // A disk whose agent compares it whole again (it lost what its journal held).
        None if state.progress(id).map_err(internal)?.iter().any(|p| p.1 == "resync") => {
            "resyncing".into()
        }
        None => "protected".into(),
    })
}

#[cfg(test)]
mod history_query_tests {
    #[test]
    fn hours_are_checked() {
        use super::history_hours as h;
        assert_eq!(h(None), Ok(24));
        assert_eq!(h(Some("")), Ok(24));
        assert_eq!(h(Some("hours=168")), Ok(168));
        assert_eq!(h(Some("hours=2160")), Ok(2160));
        for bad in [
            "hours=0",
            "hours=2161",
            "hours=-1",
            "hours=",
            "hours=1e3",
            "hours",
            "days=2",
            "hours=2&x=1",
        ] {
            assert!(h(Some(bad)).is_err(), "{bad}");
        }
    }
}
