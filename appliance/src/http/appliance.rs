//! The appliance itself: health, the OpenAPI document, metrics, its identity and the setup
//! wizard's progress, the certificate authorities, the recovery passphrase, plugins.

use super::*;

/// `GET /api/v1/health`
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "appliance",
    summary = "Liveness.",
    responses(
        (status = 200, description = "{\"ok\": true}"),
        (status = 403, description = "error", body = api::ApiError)
    ),
)]
pub(super) async fn health() -> Answer {
    json(StatusCode::OK, &api::Health { ok: true })
}

/// `GET /api/v1/openapi.json`
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "appliance",
    summary = "This document.",
    responses(
        (status = 200, description = "OpenAPI 3.0 document"),
        (status = 403, description = "error", body = api::ApiError)
    ),
)]
pub(super) async fn openapi(Extension(doc): Extension<Arc<OpenApiJson>>) -> Answer {
    let mut r = Response::new(lifeboat_net::server::full(doc.0.clone()));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(r)
}

/// `GET /metrics`
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "appliance",
    summary = "Prometheus metrics (text format 0.0.4): the appliance's counters, machines, points per machine, each machine's newest point age in seconds, running jobs.",
    responses(
        (status = 200, description = "metrics", body = String, content_type = "text/plain"),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn metrics(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    // Scrapers authenticate like any administrator client (bearer token).
    authenticated(&ctx, &req)?;
    let text = metrics_text(&ctx.state).map_err(internal)?;
    let mut r = Response::new(lifeboat_net::server::full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// `GET /api/v1/ca`
#[utoipa::path(
    get,
    path = "/api/v1/ca",
    tag = "appliance",
    summary = "The appliance's CAs (active, being introduced, retiring), the rotation phase, and which CA signed each machine's certificate.",
    responses(
        (status = 200, description = "The CAs, the rotation phase and each machine's certificate.", body = api::CaStatus),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn ca(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &ca_status(&ctx)?)
}

/// `POST /api/v1/ca/rotate`
#[utoipa::path(
    post,
    path = "/api/v1/ca/rotate",
    tag = "appliance",
    summary = "The next CA rotation step: steady → introducing (a new CA is trusted alongside), introducing → retiring (the new CA signs; agents renew), retiring → steady (the old CA is dropped; 409 while machines that are not revoked still have its certificates, unless `force`). Agents are never registered again.",
    request_body = api::CaRotate,
    responses(
        (status = 200, description = "The CAs, the rotation phase and each machine's certificate.", body = api::CaStatus),
        (status = 400, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn rotate_ca(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::CaRotate = body_json(req, ADMIN_BODY).await?;
    let (pki, state) = (ctx.pki.clone(), ctx.state.clone());
    let phase = tokio::task::spawn_blocking(move || pki.rotate(&state, r.force))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match phase {
        Ok(phase) => {
            tracing::warn!(%admin, phase, "CA rotation step");
            json(StatusCode::OK, &ca_status(&ctx)?)
        }
        Err(e @ crate::config_server::pki::RotateError::NotRenewed(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_renewed", e.to_string()))
        }
        Err(e @ crate::config_server::pki::RotateError::NotIntroduced(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_introduced", e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// `GET /api/v1/recovery-passphrase`
#[utoipa::path(
    get,
    path = "/api/v1/recovery-passphrase",
    tag = "appliance",
    summary = "Whether the catalogue at the target is sealed under a recovery passphrase, and when it was last written.",
    responses(
        (status = 200, description = "Whether a recovery passphrase is set, and when the catalogue was last written at the target.", body = api::RecoveryStatus),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn recovery_passphrase_status(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let set = crate::master_target::catalogue::Sealer::load(&ctx.data_dir)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?
        .is_some();
    let written = ctx
        .state
        .setting("catalogue_written_unix_ms")
        .map_err(internal)?
        .and_then(|v| v.parse().ok());
    json(StatusCode::OK, &api::RecoveryStatus { set, catalogue_written_unix_ms: written })
}

/// `PUT /api/v1/recovery-passphrase`
#[utoipa::path(
    put,
    path = "/api/v1/recovery-passphrase",
    tag = "appliance",
    summary = "Sets the recovery passphrase (16 to 1024 characters): the catalogue at the target (machines, disks, points, VM settings, data keys) is sealed under it from now on, so a fresh appliance at the target site can fail over without this one (`lifeboat-appliance recover`). Only a key derived from it (argon2id) is kept.",
    request_body = api::RecoveryPassphrase,
    responses(
        (status = 200, description = "Whether a recovery passphrase is set, and when the catalogue was last written at the target.", body = api::RecoveryStatus),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_recovery_passphrase(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::RecoveryPassphrase = body_json(req, ADMIN_BODY).await?;
    if r.passphrase.chars().count() < crate::master_target::catalogue::MIN_PASSPHRASE
        || r.passphrase.len() > 1024
    {
        return Err(ApiError::bad_request(
            "invalid",
            format!(
                "passphrase: expected {} to 1024 characters",
                crate::master_target::catalogue::MIN_PASSPHRASE
            ),
        ));
    }
    let dir = ctx.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        crate::master_target::catalogue::Sealer::new(&r.passphrase)?.store(&dir)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    tracing::warn!(%admin, "recovery passphrase set: the catalogue at the target is sealed under it from now on");
    json(StatusCode::OK, &api::RecoveryStatus { set: true, catalogue_written_unix_ms: None })
}

fn https_certificate(ctx: &ConfigServerCtx) -> Result<api::HttpsCertificate, ApiError> {
    let (uploaded, fingerprint, names, not_after) =
        ctx.pki.https_certificate().map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(api::HttpsCertificate {
        source: if uploaded { "uploaded" } else { "appliance-ca" }.into(),
        fingerprint,
        names,
        not_after_unix_ms: u64::try_from(not_after).unwrap_or(0).saturating_mul(1000),
    })
}

/// `GET /api/v1/appliance/certificate`
#[utoipa::path(
    get,
    path = "/api/v1/appliance/certificate",
    tag = "appliance",
    summary = "The certificate the configuration server (443) presents: issued by the appliance's CA, or uploaded.",
    responses(
        (status = 200, description = "The certificate.", body = api::HttpsCertificate),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn certificate(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &https_certificate(&ctx)?)
}

/// `PUT /api/v1/appliance/certificate`
#[utoipa::path(
    put,
    path = "/api/v1/appliance/certificate",
    tag = "appliance",
    summary = "Uploads a certificate for 443 (from the site's own CA, so browsers trust the appliance): checked (it parses, the key is the leaf's, valid now, names a host), kept 0600 and used from the next connection on. Agents are not affected: 9443 keeps the certificate of the appliance CA they pin.",
    request_body = api::CertificateUpload,
    responses(
        (status = 200, description = "The certificate now.", body = api::HttpsCertificate),
        (status = 400, description = "error: `invalid` (names `certificate_pem` or `key_pem`)", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_certificate(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let u: api::CertificateUpload = body_json(req, ADMIN_BODY).await?;
    let id = lifeboat_net::Identity { cert_pem: u.certificate_pem, key_pem: u.key_pem };
    ctx.pki.set_https(Some(id)).map_err(|e| ApiError::bad_request("invalid", e.0))?;
    let c = https_certificate(&ctx)?;
    tracing::warn!(%admin, fingerprint = %c.fingerprint, "uploaded certificate for 443 in use");
    json(StatusCode::OK, &c)
}

/// `DELETE /api/v1/appliance/certificate`
#[utoipa::path(
    delete,
    path = "/api/v1/appliance/certificate",
    tag = "appliance",
    summary = "Goes back to a certificate for 443 issued by the appliance's CA (the uploaded one is deleted).",
    responses(
        (status = 200, description = "The certificate now.", body = api::HttpsCertificate),
        (status = 500, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn delete_certificate(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    ctx.pki.set_https(None).map_err(|e| ApiError::internal(e.0))?;
    tracing::warn!(%admin, "certificate for 443 issued by the appliance CA again");
    json(StatusCode::OK, &https_certificate(&ctx)?)
}

/// `GET /api/v1/plugins`
#[utoipa::path(
    get,
    path = "/api/v1/plugins",
    tag = "appliance",
    summary = "The appliance's plugins: loaded (kind, version, how they are trusted) and refused (why).",
    responses(
        (status = 200, description = "The plugins.", body = api::PluginList),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn plugins(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &plugin_list(ctx.registry.as_deref(), &ctx.data_dir))
}

/// Prometheus text exposition (format 0.0.4) of the appliance's state: its counters, the
/// machines, and each machine's newest point age (the achieved RPO as of now).
pub fn metrics_text(state: &State) -> Result<String, crate::store::StateError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, value) in state.counters()? {
        let metric: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        let _ = writeln!(out, "# TYPE lifeboat_{metric}_total counter");
        let _ = writeln!(out, "lifeboat_{metric}_total {value}");
    }
    let machines = state.machines()?;
    let _ = writeln!(out, "# TYPE lifeboat_machines gauge\nlifeboat_machines {}", machines.len());
    let now = crate::store::now_ms();
    let _ = writeln!(out, "# TYPE lifeboat_points gauge");
    let mut ages = String::from("# TYPE lifeboat_last_point_age_seconds gauge\n");
    for (id, _, _) in &machines {
        let points = state.points(*id)?;
        let _ = writeln!(out, "lifeboat_points{{machine=\"{id}\"}} {}", points.len());
        if let Some(p) = points.last() {
            let age = now.saturating_sub(p.created_unix_ms) as f64 / 1000.0;
            let _ = writeln!(ages, "lifeboat_last_point_age_seconds{{machine=\"{id}\"}} {age:.3}");
        }
    }
    out.push_str(&ages);
    let running = state
        .jobs(None, 1000)?
        .iter()
        .filter(|j| j.state == lifeboat_api::JobState::Running)
        .count();
    let _ = writeln!(out, "# TYPE lifeboat_jobs_running gauge\nlifeboat_jobs_running {running}");
    // Alerts that hold now, counted by kind and severity (the list: GET /api/v1/alerts).
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for a in crate::config_server::policy::alerts(state)? {
        *counts.entry((a.kind, a.severity)).or_default() += 1;
    }
    let _ = writeln!(out, "# TYPE lifeboat_alerts gauge");
    for ((kind, severity), n) in counts {
        let _ = writeln!(out, "lifeboat_alerts{{kind=\"{kind}\",severity=\"{severity}\"}} {n}");
    }
    for name in ["cpu_percent", "memory_percent"] {
        if let Some(v) = state.setting(name)?.and_then(|v| v.parse::<f64>().ok()) {
            let _ = writeln!(
                out,
                "# TYPE lifeboat_appliance_{name} gauge\nlifeboat_appliance_{name} {v}"
            );
        }
    }
    Ok(out)
}

/// The CAs and each machine's certificate.
pub(super) fn ca_status(ctx: &ConfigServerCtx) -> Result<api::CaStatus, ApiError> {
    let (active, next, retiring) = ctx.pki.fingerprints();
    let mut machines = Vec::new();
    for (id, _, _) in ctx.state.machines().map_err(internal)? {
        let (ca, _) = ctx.state.machine_cert(id).map_err(internal)?;
        machines.push(api::MachineCert {
            on_active_ca: ca.as_deref() == Some(active.as_str()),
            ca,
            not_after_unix_ms: ctx.state.machine_cert_expiry(id).map_err(internal)?,
            revoked: ctx.state.is_revoked(id).map_err(internal)?,
            id: id.to_string(),
        });
    }
    Ok(api::CaStatus { phase: ctx.pki.phase().into(), active, next, retiring, machines })
}

/// The loaded and refused plugins, and the uploads in quarantine.
pub(super) fn plugin_list(
    registry: Option<&lifeboat_plugin_host::registry::Registry>,
    data_dir: &std::path::Path,
) -> api::PluginList {
    let mut plugins = Vec::new();
    if let Some(r) = registry {
        let set = r.current();
        for p in set.plugins.values() {
            use lifeboat_plugin_host::TrustBasis;
            plugins.push(api::PluginInfo {
                name: p.name().to_owned(),
                kind: p.kind().to_string(),
                version: p.manifest().version.clone(),
                trust: match p.trust() {
                    TrustBasis::Pinned => "pinned",
                    TrustBasis::Signed(_) => "signed",
                    TrustBasis::Unsigned => "unsigned",
                }
                .into(),
                // Loaded but not configured: why no instance of it can be made yet.
                message: p.unconfigured().map(str::to_owned),
                settings: p
                    .manifest()
                    .settings
                    .iter()
                    .map(|spec| {
                        let now = p.settings().iter().find(|(k, _)| *k == spec.name);
                        api::PluginSetting {
                            name: spec.name.clone(),
                            kind: serde_json::to_value(spec.kind)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            label: spec.label.clone(),
                            help: spec.help.clone(),
                            default: spec.default_text(),
                            secret: spec.secret,
                            required: spec.required,
                            advanced: spec.advanced,
                            configured: now.is_some(),
                            // A secret's value never leaves the appliance.
                            value: if spec.secret { None } else { now.map(|(_, v)| v.clone()) },
                        }
                    })
                    .collect(),
            });
        }
        for e in &set.refused {
            plugins.push(api::PluginInfo {
                name: e.plugin.clone(),
                kind: String::new(),
                version: String::new(),
                trust: "refused".into(),
                message: Some(e.to_string()),
                settings: Vec::new(),
            });
        }
    }
    let quarantined =
        registry.map(|r| crate::config_server::uploads::list(r, data_dir)).unwrap_or_default();
    api::PluginList { plugins, quarantined }
}

/// The address handed to agents at registration: the administrator's (`PUT
/// /api/v1/appliance`), else the configuration file's.
pub(super) fn agent_url(ctx: &ConfigServerCtx) -> Result<String, ApiError> {
    Ok(ctx
        .state
        .setting("agent_url")
        .map_err(internal)?
        .unwrap_or_else(|| ctx.process_server_url.clone()))
}

fn appliance_info(ctx: &ConfigServerCtx) -> Answer {
    let step = match ctx.state.setting("wizard_step").map_err(internal)? {
        Some(s) => s.parse().map_err(|e| ApiError::internal(format!("{e}")))?,
        None => api::WizardStep::Identity,
    };
    json(
        StatusCode::OK,
        &api::ApplianceInfo {
            name: ctx
                .state
                .setting("appliance_name")
                .map_err(internal)?
                .unwrap_or_else(|| "lifeboat".into()),
            agent_url: agent_url(ctx)?,
            server_unix_ms: crate::store::now_ms(),
            ca_fingerprint: ctx.pki.active().fingerprint().to_owned(),
            wizard_step: step,
        },
    )
}

/// `GET /api/v1/appliance`
#[utoipa::path(
    get,
    path = "/api/v1/appliance",
    tag = "appliance",
    summary = "The appliance's name, the address agents send to, its clock, the CA fingerprint agents pin, and where the setup wizard stands.",
    responses(
        (status = 200, description = "the appliance", body = api::ApplianceInfo),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn appliance(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    appliance_info(&ctx)
}

/// `PUT /api/v1/appliance`
#[utoipa::path(
    put,
    path = "/api/v1/appliance",
    tag = "appliance",
    summary = "Sets the appliance's name and the address agents are given at registration (`https://host:port`). 400 names the field; nothing is changed then.",
    request_body = api::ApplianceIdentity,
    responses(
        (status = 200, description = "the appliance", body = api::ApplianceInfo),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_appliance(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::ApplianceIdentity = body_json(req, ADMIN_BODY).await?;
    r.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    ctx.state.set_setting("appliance_name", r.name.trim()).map_err(internal)?;
    ctx.state.set_setting("agent_url", r.agent_url.trim_end_matches('/')).map_err(internal)?;
    tracing::info!(%admin, name = %r.name.trim(), agent_url = %r.agent_url, "appliance identity set");
    appliance_info(&ctx)
}

/// `PUT /api/v1/wizard`
#[utoipa::path(
    put,
    path = "/api/v1/wizard",
    tag = "appliance",
    summary = "Records the setup wizard's step, where it resumes. `claim` is not a step to go back to once an administrator exists (400).",
    request_body = api::WizardProgress,
    responses(
        (status = 200, description = "the appliance", body = api::ApplianceInfo),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_wizard(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let r: api::WizardProgress = body_json(req, ADMIN_BODY).await?;
    if r.step == api::WizardStep::Claim {
        return Err(ApiError::bad_request("invalid", "step: the appliance is claimed already"));
    }
    ctx.state.set_setting("wizard_step", r.step.as_str()).map_err(internal)?;
    appliance_info(&ctx)
}
