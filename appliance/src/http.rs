//! HTTP routes of the configuration server (443) and the process server (9443).
//! One function per listener; each request is one small function. Bodies and answers are
//! the types of `lifeboat_wire::api`.

use crate::process::{ApiFailure, ProcessServer};
use crate::state::State;
use http::{Method, Request, Response, StatusCode};
use lifeboat_net::server::{json, read_body, read_json};
use lifeboat_net::{ApiError, PeerInfo, RequestBody, ResponseBody};
use lifeboat_wire::api;
use std::sync::Arc;

type Answer = Result<Response<ResponseBody>, ApiError>;

fn failure(f: ApiFailure) -> Response<ResponseBody> {
    let body = api::ApiError {
        error: f.message,
        code: f.code.to_owned(),
        expected_sequence: f.expected_sequence,
    };
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json(status, &body).unwrap_or_else(|e| e.into_response());
    if let Some(s) = f.retry_after
        && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

fn not_found(path: &str) -> Answer {
    Err(ApiError::not_found("not_found", format!("no such endpoint: {path}")))
}

fn peer_machine(req: &Request<RequestBody>) -> Result<String, ApiError> {
    req.extensions().get::<PeerInfo>().and_then(|p| p.machine_id.clone()).ok_or_else(|| {
        ApiError::forbidden(
            "no_client_certificate",
            "this endpoint needs the agent's client certificate",
        )
    })
}

/// What the configuration server needs.
pub struct ConfigServerCtx {
    /// State store.
    pub state: State,
    /// Administrator accounts and sessions.
    pub admins: crate::admin::Admins,
    /// Test failovers, when this appliance also runs the master target.
    pub failover: Option<crate::failover::Failover>,
    /// The appliance's CAs: the active one signs agent certificates.
    pub pki: Arc<crate::pki::Pki>,
    /// Handed to agents at registration.
    pub process_server_url: String,
    /// The data directory (the recovery passphrase's derived key lives there).
    pub data_dir: std::path::PathBuf,
    /// Recovery plans' scripts and manual steps.
    pub plans: Arc<crate::plan::Plans>,
    /// The appliance's plugins (for the plugins list), when it loads any.
    pub registry: Option<Arc<lifeboat_plugin_host::registry::Registry>>,
}

/// Most bytes of a request body read before the caller is known (setup, login).
pub const UNAUTHENTICATED_BODY: usize = 4 << 10;
/// Most bytes of a registration (a CSR, a passphrase, a host name).
pub const REGISTER_BODY: usize = 16 << 10;
/// Most bytes of an administrator's request body (plans, policies, VM settings).
pub const ADMIN_BODY: usize = 1 << 20;
/// The configuration server's connection-level body limit (nothing it serves is larger).
pub const CONFIG_SERVER_MAX_BODY: usize = ADMIN_BODY;
/// Most bytes of an agent's JSON request (hello, progress, churn, comparisons).
pub const AGENT_JSON_BODY: usize = 4 << 20;

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn says_json(req: &Request<RequestBody>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// A request's body, at most `limit` bytes (413 past it, without reading further); a
/// non-empty body must be declared `application/json` (415 otherwise: a browser form
/// cannot send one).
async fn body_bytes(req: Request<RequestBody>, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let json = says_json(&req);
    let bytes = read_body(http_body_util::Limited::new(req.into_body(), limit)).await?;
    if !bytes.is_empty() && !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    Ok(bytes)
}

/// [`body_bytes`] parsed as `T` (one JSON object).
async fn body_json<T: serde::de::DeserializeOwned>(
    req: Request<RequestBody>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body_bytes(req, limit).await?;
    read_json(http_body_util::Full::new(bytes)).await
}

/// A browser's request from another origin (its `Origin` is not this server's own
/// address): refused, whatever it carries. Clients that send no `Origin` (the CLI,
/// agents, scripts) are not browsers and pass.
fn check_origin(req: &Request<RequestBody>) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(http::header::ORIGIN) else { return Ok(()) };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
        })
        .unwrap_or_default();
    let ours = |o: &str| {
        o.strip_prefix("https://").is_some_and(|rest| {
            rest.eq_ignore_ascii_case(&host)
                || rest.strip_suffix(":443").is_some_and(|r| r.eq_ignore_ascii_case(&host))
                || host.strip_suffix(":443").is_some_and(|h| h.eq_ignore_ascii_case(rest))
        })
    };
    if !host.is_empty() && origin.to_str().is_ok_and(ours) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "origin_mismatch",
            "a page from another origin may not call this API",
        ))
    }
}

/// The configuration server's OpenAPI document (`GET /api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the configuration server, as (method, OpenAPI path); a test checks the
/// OpenAPI document lists exactly these.
pub const CONFIG_SERVER_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/register"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/setup"),
    ("POST", "/api/v1/setup"),
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/logout"),
    ("GET", "/api/v1/session"),
    ("GET", "/api/v1/machines"),
    ("GET", "/api/v1/machines/{id}/points"),
    ("POST", "/api/v1/machines/{id}/revoke"),
    ("GET", "/api/v1/passphrases"),
    ("POST", "/api/v1/passphrases"),
    ("POST", "/api/v1/machines/{id}/test-failover"),
    ("GET", "/api/v1/test-failovers"),
    ("POST", "/api/v1/test-failovers/{id}/cleanup"),
    ("POST", "/api/v1/machines/{id}/failover"),
    ("POST", "/api/v1/machines/{id}/commit"),
    ("POST", "/api/v1/machines/{id}/reprotect"),
    ("POST", "/api/v1/machines/{id}/failback"),
    ("GET", "/api/v1/failovers"),
    ("GET", "/api/v1/machines/{id}/vm-spec"),
    ("PUT", "/api/v1/machines/{id}/vm-spec"),
    ("GET", "/api/v1/policies"),
    ("PUT", "/api/v1/policies/{name}"),
    ("DELETE", "/api/v1/policies/{name}"),
    ("PUT", "/api/v1/machines/{id}/policy"),
    ("GET", "/api/v1/alerts"),
    ("GET", "/api/v1/ca"),
    ("POST", "/api/v1/ca/rotate"),
    ("GET", "/api/v1/recovery-passphrase"),
    ("PUT", "/api/v1/recovery-passphrase"),
    ("GET", "/api/v1/plugins"),
    ("GET", "/api/v1/groups"),
    ("PUT", "/api/v1/groups/{name}"),
    ("DELETE", "/api/v1/groups/{name}"),
    ("GET", "/api/v1/plans"),
    ("PUT", "/api/v1/plans/{name}"),
    ("DELETE", "/api/v1/plans/{name}"),
    ("POST", "/api/v1/plans/{name}/run"),
    ("POST", "/api/v1/jobs/{id}/continue"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{id}"),
    ("GET", "/metrics"),
];

/// Prometheus text exposition (format 0.0.4) of the appliance's state: its counters, the
/// machines, and each machine's newest point age (the achieved RPO as of now).
pub fn metrics_text(state: &State) -> Result<String, crate::state::StateError> {
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
    let now = crate::state::now_ms();
    let _ = writeln!(out, "# TYPE lifeboat_points gauge");
    let mut ages = String::from("# TYPE lifeboat_last_point_age_seconds gauge\n");
    for (id, _, _) in &machines {
        let points = state.points(id)?;
        let _ = writeln!(out, "lifeboat_points{{machine=\"{id}\"}} {}", points.len());
        if let Some(p) = points.last() {
            let age = now.saturating_sub(p.created_unix_ms) as f64 / 1000.0;
            let _ = writeln!(ages, "lifeboat_last_point_age_seconds{{machine=\"{id}\"}} {age:.3}");
        }
    }
    out.push_str(&ages);
    let running = state.jobs(None, 1000)?.iter().filter(|j| j.state == "running").count();
    let _ = writeln!(out, "# TYPE lifeboat_jobs_running gauge\nlifeboat_jobs_running {running}");
    // Alerts that hold now, counted by kind and severity (the list: GET /api/v1/alerts).
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for a in crate::policy::alerts(state)? {
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

fn job_info(j: crate::state::JobRow) -> api::JobInfo {
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

fn test_failover_info(t: crate::state::TestFailoverRow) -> api::TestFailoverInfo {
    api::TestFailoverInfo {
        id: t.id,
        machine_id: t.machine_id,
        point_id: t.point_id,
        vm: t.vm,
        disks: t.disks,
        created_unix_ms: t.created_unix_ms,
        cleaned_unix_ms: t.cleaned_unix_ms,
    }
}

/// `202 Accepted` with the job just started.
fn accepted(state: &State, job: u64) -> Answer {
    let j = state
        .jobs(Some(job), 1)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .pop()
        .map(job_info);
    json(StatusCode::ACCEPTED, &j)
}

/// `409 failover_state`: machine `id` is `now`, and only `needed` allows what was asked.
fn failover_conflict(id: &str, now: &str, needed: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "failover_state",
        format!("machine {id} is {now}: {needed}"),
    )
}

/// Moves machine `id`'s failover from `from` to `to`, or answers the 409 saying what it is
/// and that only `needed` allows this.
fn move_failover(
    state: &State,
    id: &str,
    from: &str,
    to: &str,
    needed: &str,
) -> Result<(), ApiError> {
    if state.failover_transition(id, from, to).map_err(|e| ApiError::internal(e.to_string()))? {
        Ok(())
    } else {
        Err(failover_conflict(id, &machine_state(state, id, true)?, needed))
    }
}

fn failover_info(f: crate::state::FailoverRow) -> api::FailoverInfo {
    api::FailoverInfo {
        machine_id: f.machine_id,
        state: f.state,
        point_id: f.point_id,
        vm: f.vm,
        disks: f.disks,
        job: f.job,
        started_unix_ms: f.started_unix_ms,
        committed_unix_ms: f.committed_unix_ms,
    }
}

/// The CAs and each machine's certificate.
fn ca_status(ctx: &ConfigServerCtx) -> Result<api::CaStatus, ApiError> {
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
    let (active, next, retiring) = ctx.pki.fingerprints();
    let mut machines = Vec::new();
    for (id, _, _) in ctx.state.machines().map_err(internal)? {
        let (ca, _) = ctx.state.machine_cert(&id).map_err(internal)?;
        machines.push(api::MachineCert {
            on_active_ca: ca.as_deref() == Some(active.as_str()),
            ca,
            not_after_unix_ms: ctx.state.machine_cert_expiry(&id).map_err(internal)?,
            revoked: ctx.state.is_revoked(&id).map_err(internal)?,
            id,
        });
    }
    Ok(api::CaStatus { phase: ctx.pki.phase().into(), active, next, retiring, machines })
}

/// The loaded and refused plugins.
fn plugin_list(registry: Option<&lifeboat_plugin_host::registry::Registry>) -> api::PluginList {
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
                message: None,
            });
        }
        for e in &set.refused {
            plugins.push(api::PluginInfo {
                name: String::new(),
                kind: String::new(),
                version: String::new(),
                trust: "refused".into(),
                message: Some(e.to_string()),
            });
        }
    }
    api::PluginList { plugins }
}

/// Consistency groups with their points.
fn group_list(state: &State) -> Result<api::GroupList, ApiError> {
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
    let mut groups: std::collections::BTreeMap<String, api::GroupInfo> = Default::default();
    for d in state.groups().map_err(internal)? {
        groups.insert(
            d.name.clone(),
            api::GroupInfo {
                name: d.name,
                coordinator: Some(d.coordinator),
                members: d.members,
                points: Vec::new(),
            },
        );
    }
    for g in state.group_points(None).map_err(internal)? {
        let mut ids = Vec::new();
        for m in &g.members {
            let p = state.points(m).map_err(internal)?.into_iter().find(|p| p.point == g.point);
            ids.push(p.map(|p| p.id));
        }
        let entry = groups.entry(g.group.clone()).or_insert_with(|| api::GroupInfo {
            name: g.group.clone(),
            coordinator: None,
            members: g.members.clone(),
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

/// Every recovery plan.
fn plan_list(state: &State) -> Result<api::PlanList, ApiError> {
    let mut plans = Vec::new();
    for (name, json) in state.plans().map_err(|e| ApiError::internal(e.to_string()))? {
        let plan: api::Plan =
            serde_json::from_str(&json).map_err(|e| ApiError::internal(e.to_string()))?;
        plans.push(api::NamedPlan { name, plan });
    }
    Ok(api::PlanList { plans })
}

/// Every policy with the machines that use it; `default` always.
fn policy_list(state: &State) -> Result<api::PolicyList, ApiError> {
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
    let mut names: Vec<String> =
        state.policies().map_err(internal)?.into_iter().map(|p| p.0).collect();
    if !names.iter().any(|n| n == "default") {
        names.insert(0, "default".into());
    }
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, _, _) in state.machines().map_err(internal)? {
        let (p, _) = state.machine_policy(&id).map_err(internal)?;
        users.entry(p).or_default().push(id);
    }
    let mut policies = Vec::new();
    for name in names {
        let policy = crate::policy::get(state, &name).map_err(internal)?.unwrap_or_default();
        let machines = users.remove(&name).unwrap_or_default();
        policies.push(api::NamedPolicy { name, policy, machines });
    }
    Ok(api::PolicyList { policies })
}

/// A policy name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
fn check_policy_name(name: &str) -> Result<(), ApiError> {
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

/// The `{id}` of `<prefix>{id}<suffix>`: one non-empty path segment, or `None` (a path
/// such as `/api/v1/machines/revoke` is no route, never a slice out of bounds).
fn segment<'a>(path: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix).filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The machine id in `/api/v1/machines/{id}<suffix>`.
fn machine_in<'a>(path: &'a str, suffix: &str) -> Option<&'a str> {
    segment(path, "/api/v1/machines/", suffix)
}

/// 404 unless machine `id` is registered.
fn known_machine(state: &State, id: &str) -> Result<(), ApiError> {
    if state.machine_exists(id).map_err(|e| ApiError::internal(e.to_string()))? {
        Ok(())
    } else {
        Err(ApiError::not_found("unknown_machine", format!("id: no machine {id:?}")))
    }
}

/// The point choice of a (test) failover request, checked against the points there are.
fn point_choice(
    state: &State,
    machine: &str,
    r: &api::TestFailoverRequest,
) -> Result<crate::failover::PointChoice, ApiError> {
    let choice = crate::failover::PointChoice::parse(r.point.as_deref());
    crate::failover::choose_point(state, machine, &choice)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|(code, m)| ApiError::not_found(code, m))?;
    Ok(choice)
}

/// A machine's state for the machines list.
fn machine_state(state: &State, id: &str, has_point: bool) -> Result<String, ApiError> {
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
    let failover = state.failover_state(id).map_err(internal)?;
    Ok(match failover {
        Some(s) if s == "committing" => "failed-over".into(),
        Some(s) => s,
        None if !has_point => "initial-copy".into(),
        // A disk whose agent compares it whole again (it lost what its journal held).
        None if state.progress(id).map_err(internal)?.iter().any(|p| p.1 == "resync") => {
            "resyncing".into()
        }
        None => "protected".into(),
    })
}

fn no_master_target() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "no_master_target",
        "this appliance does not run the master target role, which holds the replicas: ask the one that does",
    )
}

fn admin_error(e: crate::admin::AdminError) -> ApiError {
    use crate::admin::AdminError as E;
    match e {
        E::Invalid { .. } => ApiError::bad_request("invalid", e.to_string()),
        E::AlreadySetUp => ApiError::new(StatusCode::CONFLICT, "already_set_up", e.to_string()),
        E::BadCredentials => {
            ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", e.to_string())
        }
        E::RateLimited { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
        }
        E::Busy => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string()),
        E::Unauthenticated => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
        }
        E::State(_) | E::Hash(_) => ApiError::internal(e.to_string()),
    }
}

fn bearer(req: &Request<RequestBody>) -> Option<String> {
    let v = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// The administrator of the request's session, or 401.
fn authenticated(
    ctx: &ConfigServerCtx,
    req: &Request<RequestBody>,
) -> Result<(String, String, u64), ApiError> {
    let token =
        bearer(req).ok_or_else(|| admin_error(crate::admin::AdminError::Unauthenticated))?;
    let (name, expires) = ctx.admins.check(&token).map_err(admin_error)?;
    Ok((token, name, expires))
}

fn session_answer(status: StatusCode, s: crate::admin::Session) -> Answer {
    json(
        status,
        &api::SessionInfo {
            token: Some(s.token),
            name: s.name,
            expires_unix_ms: s.expires_unix_ms,
        },
    )
}

/// Runs blocking work (argon2, SQLite) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::admin::AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(admin_error)
}

/// Routes of the configuration server.
pub async fn config_server(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    check_origin(&req)?;
    let path = req.uri().path().to_owned();
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/api/v1/register") => register(&ctx, req).await,
        (Method::GET, "/api/v1/health") => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (Method::GET, "/api/v1/openapi.json") => {
            let mut r = Response::new(lifeboat_net::server::full(OPENAPI));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (Method::GET, "/metrics") => {
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
        (Method::GET, "/api/v1/setup") => {
            let needed = ctx.admins.setup_needed().map_err(admin_error)?;
            json(StatusCode::OK, &api::SetupStatus { needed })
        }
        (Method::POST, "/api/v1/setup") => {
            let c: api::Credentials = body_json(req, UNAUTHENTICATED_BODY).await?;
            let ctx2 = ctx.clone();
            let s = blocking(move || ctx2.admins.setup(&c.name, &c.password)).await?;
            session_answer(StatusCode::CREATED, s)
        }
        (Method::POST, "/api/v1/login") => {
            let from = req
                .extensions()
                .get::<PeerInfo>()
                .map(|p| p.remote_addr.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let c: api::Credentials = body_json(req, UNAUTHENTICATED_BODY).await?;
            let s = ctx.admins.login(&c.name, &c.password, from).await.map_err(admin_error)?;
            session_answer(StatusCode::OK, s)
        }
        (Method::POST, "/api/v1/logout") => {
            let (token, _, _) = authenticated(&ctx, &req)?;
            ctx.admins.logout(&token).map_err(admin_error)?;
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::GET, "/api/v1/session") => {
            let (_, name, expires_unix_ms) = authenticated(&ctx, &req)?;
            json(StatusCode::OK, &api::SessionInfo { token: None, name, expires_unix_ms })
        }
        (Method::GET, "/api/v1/machines") => {
            authenticated(&ctx, &req)?;
            let alerts = crate::policy::alerts(&ctx.state).map_err(internal)?;
            let group_points = ctx.state.group_points(None).map_err(internal)?;
            let mut machines = Vec::new();
            for (id, hostname, registered_unix_ms) in ctx.state.machines().map_err(internal)? {
                let disks: Vec<api::DiskSize> = ctx
                    .state
                    .disks(&id)
                    .map_err(internal)?
                    .into_iter()
                    .map(|(index, size)| api::DiskSize { index, size })
                    .collect();
                let last_point = ctx.state.points(&id).map_err(internal)?.pop().map(point_summary);
                let state = machine_state(&ctx.state, &id, last_point.is_some())?;
                let rpo_secs = last_point
                    .as_ref()
                    .map(|p| crate::state::now_ms().saturating_sub(p.created_unix_ms) / 1000);
                let (policy, last_seen_unix_ms) =
                    ctx.state.machine_policy(&id).map_err(internal)?;
                let progress = ctx.state.progress(&id).map_err(internal)?;
                let copying: Vec<_> = progress.iter().filter(|p| p.1 == "initial-copy").collect();
                let initial_copy = (state == "initial-copy" && !copying.is_empty()).then(|| {
                    let (done, total) =
                        copying.iter().fold((0u64, 0u64), |(d, t), p| (d + p.2, t + p.3));
                    (done as f64 / total.max(1) as f64).min(1.0)
                });
                let worst = alerts
                    .iter()
                    .filter(|a| a.machine_id.as_deref() == Some(id.as_str()))
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
                    let received = ctx.state.received_next(&id, d.index).map_err(internal)?;
                    let (applied, _) = ctx.state.applied(&id, d.index).map_err(internal)?;
                    backlog_batches += received.saturating_sub(applied);
                }
                let churn_mb_per_s = ctx
                    .state
                    .churn(Some(&id))
                    .map_err(internal)?
                    .pop()
                    .and_then(|(_, _, report)| {
                        serde_json::from_str::<api::ChurnReport>(&report).ok()
                    })
                    .map(|r| r.disks.iter().map(|d| d.mean_mb_per_s).sum());
                machines.push(api::MachineSummary {
                    id,
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
        (Method::POST, p) if machine_in(p, "/revoke").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/revoke").unwrap_or_default();
            if !ctx.state.revoke_machine(id).map_err(internal)? {
                return Err(ApiError::not_found(
                    "unknown_machine",
                    format!("id: no machine {id:?}"),
                ));
            }
            tracing::warn!(machine = id, %admin, "machine revoked: its certificate is refused from now on");
            json(StatusCode::OK, &serde_json::json!({"revoked": true}))
        }
        (Method::GET, "/api/v1/passphrases") => {
            authenticated(&ctx, &req)?;
            let unused = ctx.state.unused_passphrases().map_err(internal)?;
            json(StatusCode::OK, &serde_json::json!({"unused": unused}))
        }
        (Method::POST, "/api/v1/passphrases") => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            // Rotation: the passphrases handed out before stop working.
            let dropped = ctx.state.drop_unused_passphrases().map_err(internal)?;
            let p = crate::run::new_passphrase(&ctx.state)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::info!(%admin, dropped, "registration passphrase rotated");
            json(StatusCode::CREATED, &serde_json::json!({"passphrase": p, "dropped": dropped}))
        }
        (Method::POST, p) if machine_in(p, "/test-failover").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/test-failover").unwrap_or_default().to_owned();
            let r: api::TestFailoverRequest = body_json(req, ADMIN_BODY).await?;
            known_machine(&ctx.state, &id)?;
            let choice = point_choice(&ctx.state, &id, &r)?;
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            let job = ctx
                .state
                .create_job("test-failover", Some(&id), &format!("test failover at {choice:?}"))
                .map_err(internal)?;
            tracing::info!(%admin, machine = %id, ?choice, job, "test failover started");
            tokio::spawn(async move { f.test_failover(job, id, choice).await });
            accepted(&ctx.state, job)
        }
        (Method::POST, p) if machine_in(p, "/failover").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/failover").unwrap_or_default().to_owned();
            let r: api::TestFailoverRequest = body_json(req, ADMIN_BODY).await?;
            known_machine(&ctx.state, &id)?;
            let busy = |now: String| {
                failover_conflict(
                    &id,
                    &now,
                    "a failover can start only from protected, failed-over (another point) or failover-failed",
                )
            };
            if let Some(now) = ctx.state.failover_state(&id).map_err(internal)?
                && !matches!(now.as_str(), "failed-over" | "failover-failed")
            {
                return Err(busy(now));
            }
            let choice = point_choice(&ctx.state, &id, &r)?;
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            let job = ctx
                .state
                .create_job("failover", Some(&id), &format!("failover at {choice:?}"))
                .map_err(internal)?;
            if !ctx.state.start_failover(&id, job).map_err(internal)? {
                let now = ctx.state.failover_state(&id).map_err(internal)?.unwrap_or_default();
                let _ = ctx.state.finish_job(job, false, &format!("machine is {now}"), None);
                return Err(busy(now));
            }
            tracing::warn!(%admin, machine = %id, ?choice, job, "failover started: replication from the source stops");
            tokio::spawn(async move { f.failover(job, id, choice).await });
            accepted(&ctx.state, job)
        }
        (Method::POST, p) if machine_in(p, "/commit").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/commit").unwrap_or_default().to_owned();
            known_machine(&ctx.state, &id)?;
            let not_failed_over = |now: String| {
                failover_conflict(&id, &now, "only a failed-over machine can be committed")
            };
            if ctx.state.failover_state(&id).map_err(internal)?.as_deref() != Some("failed-over") {
                return Err(not_failed_over(machine_state(&ctx.state, &id, true)?));
            }
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            move_failover(
                &ctx.state,
                &id,
                "failed-over",
                "committing",
                "only a failed-over machine can be committed",
            )?;
            let job = ctx
                .state
                .create_job("commit", Some(&id), "committing the failover")
                .map_err(internal)?;
            tracing::warn!(%admin, machine = %id, job, "failover commit started: the machine's recovery points will be deleted");
            tokio::spawn(async move { f.commit(job, id).await });
            accepted(&ctx.state, job)
        }
        (Method::POST, p) if machine_in(p, "/reprotect").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/reprotect").unwrap_or_default().to_owned();
            known_machine(&ctx.state, &id)?;
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            move_failover(
                &ctx.state,
                &id,
                "committed",
                "reprotecting",
                "only a committed failover can be reprotected",
            )?;
            let total: u64 = ctx.state.disks(&id).map_err(internal)?.iter().map(|d| d.1).sum();
            ctx.state.start_reverse(&id, total).map_err(internal)?;
            let job = ctx
                .state
                .create_job("reprotect", Some(&id), "waiting for the original machine's agent")
                .map_err(internal)?;
            tracing::warn!(%admin, machine = %id, job, "reprotect started: the original disks will be written from the failed-over ones");
            tokio::spawn(async move { f.reprotect(job, id).await });
            accepted(&ctx.state, job)
        }
        (Method::POST, p) if machine_in(p, "/failback").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/failback").unwrap_or_default().to_owned();
            known_machine(&ctx.state, &id)?;
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            move_failover(
                &ctx.state,
                &id,
                "reprotected",
                "failing-back",
                "only a reprotected machine can fail back",
            )?;
            let job = ctx
                .state
                .create_job("failback", Some(&id), "stopping the failed-over VM")
                .map_err(internal)?;
            tracing::warn!(%admin, machine = %id, job, "failback started: the failed-over VM is stopped");
            tokio::spawn(async move { f.failback(job, id).await });
            accepted(&ctx.state, job)
        }
        (Method::GET, "/api/v1/policies") => {
            authenticated(&ctx, &req)?;
            json(StatusCode::OK, &policy_list(&ctx.state)?)
        }
        (Method::PUT, p) if segment(p, "/api/v1/policies/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/policies/", "").unwrap_or_default().to_owned();
            check_policy_name(&name)?;
            let policy: api::Policy = body_json(req, ADMIN_BODY).await?;
            policy.check().map_err(|e| ApiError::bad_request("invalid", e))?;
            // What the target cannot do (checked where this appliance runs the master
            // target, which knows its target).
            let needs_caps = policy.encryption == Some(false)
                || policy.crash_interval_secs.is_some_and(|i| i < 60);
            if let (true, Some(f)) = (needs_caps, &ctx.failover) {
                let caps = f
                    .target_capabilities()
                    .await
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                if policy.encryption == Some(false) && caps.requires_encryption {
                    return Err(ApiError::bad_request(
                        "invalid",
                        format!("encryption: the target ({}) requires the data sealed", f.target),
                    ));
                }
                if let Some(i) = policy.crash_interval_secs.filter(|i| *i < 60)
                    && !caps.instant_points
                {
                    return Err(ApiError::bad_request(
                        "invalid",
                        format!(
                            "crash_interval_secs: the target ({}) copies each point (no instant points here); a point every {i} s would not keep up, set 60 or more",
                            f.target
                        ),
                    ));
                }
            }
            let text =
                serde_json::to_string(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
            ctx.state.set_policy(&name, &text).map_err(internal)?;
            tracing::info!(%admin, policy = %name, "policy set");
            json(StatusCode::OK, &policy_list(&ctx.state)?)
        }
        (Method::DELETE, p) if segment(p, "/api/v1/policies/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/policies/", "").unwrap_or_default();
            check_policy_name(name)?;
            if name == "default" {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "policy_in_use",
                    "the default policy cannot be deleted (set it to change it)",
                ));
            }
            if crate::policy::get(&ctx.state, name).map_err(internal)?.is_none() {
                return Err(ApiError::not_found(
                    "unknown_policy",
                    format!("name: no policy {name:?}"),
                ));
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
        (Method::PUT, p) if machine_in(p, "/policy").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/policy").unwrap_or_default().to_owned();
            let a: api::PolicyAssignment = body_json(req, ADMIN_BODY).await?;
            known_machine(&ctx.state, &id)?;
            if crate::policy::get(&ctx.state, &a.policy).map_err(internal)?.is_none() {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!("policy: no policy {:?}", a.policy),
                ));
            }
            ctx.state.set_machine_policy(&id, &a.policy).map_err(internal)?;
            tracing::info!(%admin, machine = %id, policy = %a.policy, "machine policy set");
            json(StatusCode::OK, &policy_list(&ctx.state)?)
        }
        (Method::GET, "/api/v1/alerts") => {
            authenticated(&ctx, &req)?;
            let alerts = crate::policy::alerts(&ctx.state).map_err(internal)?;
            json(StatusCode::OK, &api::AlertList { alerts })
        }
        (Method::GET, "/api/v1/ca") => {
            authenticated(&ctx, &req)?;
            json(StatusCode::OK, &ca_status(&ctx)?)
        }
        (Method::POST, "/api/v1/ca/rotate") => {
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
                Err(e @ crate::pki::RotateError::NotRenewed(_)) => {
                    Err(ApiError::new(StatusCode::CONFLICT, "not_renewed", e.to_string()))
                }
                Err(e @ crate::pki::RotateError::NotIntroduced(_)) => {
                    Err(ApiError::new(StatusCode::CONFLICT, "not_introduced", e.to_string()))
                }
                Err(e) => Err(ApiError::internal(e.to_string())),
            }
        }
        (Method::GET, "/api/v1/recovery-passphrase") => {
            authenticated(&ctx, &req)?;
            let set = crate::catalogue::Sealer::load(&ctx.data_dir)
                .map_err(|e| ApiError::internal(format!("{e:#}")))?
                .is_some();
            let written = ctx
                .state
                .setting("catalogue_written_unix_ms")
                .map_err(internal)?
                .and_then(|v| v.parse().ok());
            json(StatusCode::OK, &api::RecoveryStatus { set, catalogue_written_unix_ms: written })
        }
        (Method::PUT, "/api/v1/recovery-passphrase") => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let r: api::RecoveryPassphrase = body_json(req, ADMIN_BODY).await?;
            if r.passphrase.chars().count() < crate::catalogue::MIN_PASSPHRASE
                || r.passphrase.len() > 1024
            {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!(
                        "passphrase: expected {} to 1024 characters",
                        crate::catalogue::MIN_PASSPHRASE
                    ),
                ));
            }
            let dir = ctx.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::catalogue::Sealer::new(&r.passphrase)?.store(&dir)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            tracing::warn!(%admin, "recovery passphrase set: the catalogue at the target is sealed under it from now on");
            json(
                StatusCode::OK,
                &api::RecoveryStatus { set: true, catalogue_written_unix_ms: None },
            )
        }
        (Method::GET, "/api/v1/failovers") => {
            authenticated(&ctx, &req)?;
            let list = ctx.state.failovers(None).map_err(internal)?;
            json(
                StatusCode::OK,
                &api::FailoverList { failovers: list.into_iter().map(failover_info).collect() },
            )
        }
        (Method::GET, p) if machine_in(p, "/vm-spec").is_some() => {
            authenticated(&ctx, &req)?;
            let id = machine_in(p, "/vm-spec").unwrap_or_default();
            known_machine(&ctx.state, id)?;
            let spec = crate::failover::vm_spec(&ctx.state, id)
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            json(StatusCode::OK, &spec)
        }
        (Method::PUT, p) if machine_in(p, "/vm-spec").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = machine_in(p, "/vm-spec").unwrap_or_default().to_owned();
            let settings: api::VmSpecSettings = body_json(req, ADMIN_BODY).await?;
            known_machine(&ctx.state, &id)?;
            settings.check().map_err(|e| ApiError::bad_request("invalid", e))?;
            if let Some(b) = settings.boot_disk {
                let disks = ctx.state.disks(&id).map_err(internal)?;
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
            let text =
                serde_json::to_string(&settings).map_err(|e| ApiError::internal(e.to_string()))?;
            ctx.state.set_vm_settings(&id, &text).map_err(internal)?;
            tracing::info!(%admin, machine = %id, "VM settings changed");
            let spec = crate::failover::vm_spec(&ctx.state, &id)
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            json(StatusCode::OK, &spec)
        }
        (Method::GET, "/api/v1/test-failovers") => {
            authenticated(&ctx, &req)?;
            let list = ctx.state.test_failovers(None).map_err(internal)?;
            json(
                StatusCode::OK,
                &api::TestFailoverList {
                    test_failovers: list.into_iter().map(test_failover_info).collect(),
                },
            )
        }
        (Method::POST, p) if segment(p, "/api/v1/test-failovers/", "/cleanup").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let id = segment(p, "/api/v1/test-failovers/", "/cleanup").unwrap_or_default();
            let tf =
                ctx.state.test_failovers(Some(id)).map_err(internal)?.pop().ok_or_else(|| {
                    ApiError::not_found(
                        "unknown_test_failover",
                        format!("id: no test failover {id:?}"),
                    )
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
                    "test-failover-cleanup",
                    Some(&tf.machine_id),
                    &format!("cleaning up {id}"),
                )
                .map_err(internal)?;
            tracing::info!(%admin, test_failover = id, job, "test failover cleanup started");
            tokio::spawn(async move { f.cleanup(job, tf).await });
            accepted(&ctx.state, job)
        }
        (Method::GET, "/api/v1/plugins") => {
            authenticated(&ctx, &req)?;
            json(StatusCode::OK, &plugin_list(ctx.registry.as_deref()))
        }
        (Method::GET, "/api/v1/groups") => {
            authenticated(&ctx, &req)?;
            json(StatusCode::OK, &group_list(&ctx.state)?)
        }
        (Method::PUT, p) if segment(p, "/api/v1/groups/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/groups/", "").unwrap_or_default().to_owned();
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
        (Method::DELETE, p) if segment(p, "/api/v1/groups/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/groups/", "").unwrap_or_default();
            if !ctx.state.delete_group(name).map_err(internal)? {
                return Err(ApiError::not_found(
                    "unknown_group",
                    format!("name: no group {name:?}"),
                ));
            }
            tracing::info!(%admin, group = %name, "consistency group deleted");
            json(StatusCode::OK, &group_list(&ctx.state)?)
        }
        (Method::GET, "/api/v1/plans") => {
            authenticated(&ctx, &req)?;
            json(StatusCode::OK, &plan_list(&ctx.state)?)
        }
        (Method::POST, p) if segment(p, "/api/v1/plans/", "/run").is_some() => {
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
                .ok_or_else(|| {
                    ApiError::not_found("unknown_plan", format!("name: no plan {name:?}"))
                })?
                .plan;
            let f = ctx.failover.clone().ok_or_else(no_master_target)?;
            // What changed since the plan was saved (a plugin unloaded, a machine removed).
            ctx.plans
                .validate(&ctx.state, Some(&f), &plan)
                .map_err(|e| ApiError::new(StatusCode::CONFLICT, "plan_invalid", e))?;
            let choice = crate::failover::PointChoice::parse(r.point.as_deref());
            let job = ctx
                .state
                .create_job("plan", None, &format!("plan {name} ({})", r.mode))
                .map_err(internal)?;
            tracing::warn!(%admin, plan = %name, mode = %r.mode, job, "recovery plan started");
            let plans = ctx.plans.clone();
            tokio::spawn(async move { plans.run(f, job, name, plan, r.mode, choice).await });
            accepted(&ctx.state, job)
        }
        (Method::PUT, p) if segment(p, "/api/v1/plans/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/plans/", "").unwrap_or_default().to_owned();
            check_policy_name(&name)?;
            let plan: api::Plan = body_json(req, ADMIN_BODY).await?;
            ctx.plans
                .validate(&ctx.state, ctx.failover.as_ref(), &plan)
                .map_err(|e| ApiError::bad_request("invalid", e))?;
            let text =
                serde_json::to_string(&plan).map_err(|e| ApiError::internal(e.to_string()))?;
            ctx.state.set_plan(&name, &text).map_err(internal)?;
            tracing::info!(%admin, plan = %name, "recovery plan set");
            json(StatusCode::OK, &plan_list(&ctx.state)?)
        }
        (Method::DELETE, p) if segment(p, "/api/v1/plans/", "").is_some() => {
            let (_, admin, _) = authenticated(&ctx, &req)?;
            let name = segment(p, "/api/v1/plans/", "").unwrap_or_default();
            check_policy_name(name)?;
            if !ctx.state.delete_plan(name).map_err(internal)? {
                return Err(ApiError::not_found("unknown_plan", format!("name: no plan {name:?}")));
            }
            tracing::info!(%admin, plan = %name, "recovery plan deleted");
            json(StatusCode::OK, &plan_list(&ctx.state)?)
        }
        (Method::POST, p) if segment(p, "/api/v1/jobs/", "/continue").is_some() => {
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
        (Method::GET, "/api/v1/jobs") => {
            authenticated(&ctx, &req)?;
            let jobs =
                ctx.state.jobs(None, 100).map_err(internal)?.into_iter().map(job_info).collect();
            json(StatusCode::OK, &api::JobList { jobs })
        }
        (Method::GET, p) if segment(p, "/api/v1/jobs/", "").is_some() => {
            authenticated(&ctx, &req)?;
            let raw = segment(p, "/api/v1/jobs/", "").unwrap_or_default();
            let id: u64 = raw.parse().map_err(|_| {
                ApiError::bad_request("invalid", format!("id: {raw:?} is not a job number"))
            })?;
            let j =
                ctx.state.jobs(Some(id), 1).map_err(internal)?.pop().ok_or_else(|| {
                    ApiError::not_found("unknown_job", format!("id: no job {id}"))
                })?;
            json(StatusCode::OK, &job_info(j))
        }
        (Method::GET, p) if machine_in(p, "/points").is_some() => {
            authenticated(&ctx, &req)?;
            let id = machine_in(p, "/points").unwrap_or_default();
            if !ctx.state.machine_exists(id).map_err(internal)? {
                return Err(ApiError::not_found(
                    "unknown_machine",
                    format!("id: no machine {id:?}"),
                ));
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
                        .filter(|g| g.point == number && g.members.iter().any(|m| m == id))
                        .map(|g| g.group.clone())
                        .collect();
                    s
                })
                .collect();
            json(StatusCode::OK, &api::PointList { points })
        }
        _ => not_found(&path),
    }
}

fn point_summary(p: crate::state::PointRow) -> api::PointSummary {
    api::PointSummary {
        id: p.id,
        point: p.point,
        kind: p.kind,
        created_unix_ms: p.created_unix_ms,
        disks: p.disks,
        groups: Vec::new(),
    }
}

async fn register(ctx: &ConfigServerCtx, req: Request<RequestBody>) -> Answer {
    let from = req
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.remote_addr.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    // Wrong passphrases are limited per source like failed logins.
    let attempt =
        ctx.admins.registrations().begin(&crate::admin::source_key(from)).map_err(admin_error)?;
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
    let machine_id = lifeboat_wire::MachineId(raw).to_string();
    // Sign first: a malformed CSR must not burn the passphrase.
    let ca = ctx.pki.active();
    let cert_pem =
        ca.sign_client_csr(&r.csr_pem, &machine_id, crate::pki::AGENT_CERT_DAYS).map_err(|e| {
            ApiError::bad_request("bad_csr", format!("certificate request refused: {e}"))
        })?;
    let ok = ctx
        .state
        .register_machine(&r.passphrase, &machine_id, &r.hostname)
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
    crate::pki::record_cert(&ctx.state, &machine_id, &cert_pem, ca.fingerprint())
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    tracing::info!(%machine_id, hostname = %r.hostname, "machine registered");
    json(
        StatusCode::OK,
        &api::RegisterResponse {
            machine_id,
            cert_pem,
            ca_pem: ctx.pki.bundle_pem(),
            protocol_version: version,
            process_server_url: ctx.process_server_url.clone(),
        },
    )
}

/// Most members of one consistency group.
pub const MAX_GROUP_MEMBERS: usize = 64;

/// Checks a group's definition: a well-formed name, 2 to [`MAX_GROUP_MEMBERS`] distinct
/// registered members, the coordinator among them.
fn check_group_definition(
    state: &State,
    name: &str,
    d: api::GroupDefinition,
) -> Result<crate::state::GroupDef, ApiError> {
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
    for (i, m) in d.members.iter().enumerate() {
        if d.members[..i].contains(m) {
            return Err(ApiError::bad_request(
                "invalid",
                format!("members[{i}]: {m:?} is listed twice"),
            ));
        }
        if !state.machine_exists(m).map_err(|e| ApiError::internal(e.to_string()))? {
            return Err(ApiError::bad_request(
                "invalid",
                format!("members[{i}]: {m:?} is not a registered machine"),
            ));
        }
    }
    if !d.members.contains(&d.coordinator) {
        return Err(ApiError::bad_request(
            "invalid",
            format!("coordinator: {:?} is not one of the members", d.coordinator),
        ));
    }
    let mut members = d.members;
    members.sort();
    Ok(crate::state::GroupDef { name: name.to_owned(), coordinator: d.coordinator, members })
}

/// Checks a group point record an agent sends: the group is defined, the caller is its
/// coordinator, and the record names exactly its members. Anything else is 403: an agent
/// cannot record group points naming other machines.
fn check_group_point(state: &State, caller: &str, g: &api::GroupPoint) -> Result<(), ApiError> {
    let internal = |e: crate::state::StateError| ApiError::internal(e.to_string());
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
    let mut named = g.members.clone();
    named.sort();
    named.dedup();
    if named != def.members || named.len() != g.members.len() {
        return Err(ApiError::forbidden(
            "wrong-members",
            format!("the record does not name exactly the members of group {}", g.group),
        ));
    }
    Ok(())
}

/// Routes of the process server (mutual TLS: every request carries a machine id).
pub async fn process_server(
    ps: ProcessServer,
    state: State,
    pki: Arc<crate::pki::Pki>,
    req: Request<RequestBody>,
) -> Answer {
    let path = req.uri().path().to_owned();
    let machine = peer_machine(&req)?;
    // A revoked machine is refused at once, whatever it asks.
    if state.is_revoked(&machine).map_err(|e| ApiError::internal(e.to_string()))? {
        return Err(ApiError::forbidden(
            "revoked",
            format!(
                "machine {machine} was revoked by an administrator; register it again to protect it"
            ),
        ));
    }
    // A machine failed over at the target is not replicated from its source any more:
    // what the source writes from now on is for reprotect to reconcile.
    // Only the machine's current certificate (or the previous one until the renewed one
    // is in use): a replaced or retired certificate is refused even on a connection that
    // was accepted before.
    if let Some(der) = req.extensions().get::<PeerInfo>().and_then(|p| p.cert_der.clone())
        && let Err(why) = crate::pki::check_presented(&state, &pki, &machine, &der)
            .map_err(|e| ApiError::internal(e.to_string()))?
    {
        return Err(ApiError::forbidden("certificate-replaced", why));
    }
    ps.seen(&machine).map_err(|e| ApiError::internal(e.to_string()))?;
    let reverse_route = path == "/api/v1/reverse"
        || path.starts_with("/api/v1/reverse/")
        || path == "/api/v1/trust"
        || path == "/api/v1/renew";
    if !reverse_route
        && let Some(s) =
            state.failover_state(&machine).map_err(|e| ApiError::internal(e.to_string()))?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "failed-over",
            format!(
                "machine {machine} is {s} at the target; replication from it resumes with reprotect"
            ),
        ));
    }
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/api/v1/hello") => {
            let hello: api::Hello = body_json(req, AGENT_JSON_BODY).await?;
            if let Some(system) = &hello.system {
                system.check().map_err(|e| ApiError::bad_request("invalid-system", e))?;
                let text =
                    serde_json::to_string(system).map_err(|e| ApiError::internal(e.to_string()))?;
                state
                    .set_machine_facts(&machine, &text)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            match ps.hello(&machine, hello).await {
                Ok(r) => json(StatusCode::OK, &r),
                Err(f) => Ok(failure(f)),
            }
        }
        (Method::PUT, "/api/v1/batches") => {
            let body = read_body(req.into_body()).await?;
            match ps.batch(&machine, body).await {
                Ok(ack) => json(StatusCode::OK, &ack),
                Err(f) => Ok(failure(f)),
            }
        }
        (Method::POST, "/api/v1/progress") => {
            let p: api::Progress = body_json(req, AGENT_JSON_BODY).await?;
            state.set_progress(&machine, &p).map_err(|e| ApiError::internal(e.to_string()))?;
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::POST, "/api/v1/agent-alerts") => {
            let a: api::AgentAlert = body_json(req, AGENT_JSON_BODY).await?;
            a.check().map_err(|e| ApiError::bad_request("invalid", e))?;
            let record = serde_json::json!({
                "kind": a.kind, "message": a.message, "at": crate::state::now_ms(),
            });
            state
                .set_setting(&format!("agent_alert:{machine}"), &record.to_string())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::warn!(%machine, kind = %a.kind, "agent alert: {}", a.message);
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::GET, "/api/v1/trust") => {
            let der = req.extensions().get::<PeerInfo>().and_then(|p| p.cert_der.clone());
            let reason = match der {
                Some(d) => crate::pki::renew_reason(&state, &pki, &machine, &d)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                None => None,
            };
            let policy = crate::policy::of_machine(&state, &machine)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let bundle = pki.bundle_pem();
            state
                .set_machine_trust(&machine, &crate::pki::bundle_sha(&bundle))
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
                    group: state
                        .group_of(&machine)
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map(|d| api::GroupAssignment {
                            name: d.name,
                            coordinator: d.coordinator,
                            members: d.members,
                        }),
                    compare: state
                        .compares(&machine)
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .into_iter()
                        .filter(|c| c.2.is_none())
                        .map(|(disk, token, _)| api::CompareRequest { disk, token })
                        .collect(),
                },
            )
        }
        (Method::POST, "/api/v1/renew") => {
            let r: api::RenewRequest = body_json(req, AGENT_JSON_BODY).await?;
            let cert_pem = pki.sign_agent(&state, &r.csr_pem, &machine).map_err(|e| {
                ApiError::bad_request("bad_csr", format!("certificate request refused: {e:#}"))
            })?;
            tracing::info!(%machine, ca = %pki.active().fingerprint(), "agent certificate renewed");
            json(StatusCode::OK, &api::RenewAnswer { cert_pem, ca_pem: pki.bundle_pem() })
        }
        (Method::GET, "/api/v1/reverse") => match crate::reverse::status(&state, &machine) {
            Ok(st) => json(StatusCode::OK, &st),
            Err(f) => Ok(failure(f)),
        },
        (Method::POST, "/api/v1/reverse/diff") => {
            let d: api::ReverseDiff = body_json(req, AGENT_JSON_BODY).await?;
            match crate::reverse::diff(&ps, &state, &machine, d).await {
                Ok(batch) => {
                    let mut r = Response::new(lifeboat_net::server::full(batch));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok(r)
                }
                Err(f) => Ok(failure(f)),
            }
        }
        (Method::POST, "/api/v1/reverse/done") => {
            let d: api::ReverseDone = body_json(req, AGENT_JSON_BODY).await?;
            match crate::reverse::done(&state, &machine, d) {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({})),
                Err(f) => Ok(failure(f)),
            }
        }
        (Method::POST, "/api/v1/compare") => {
            let c: api::CompareBlocks = body_json(req, AGENT_JSON_BODY).await?;
            match crate::reverse::compare(&ps, &state, &machine, c).await {
                Ok(a) => json(StatusCode::OK, &a),
                Err(f) => Ok(failure(f)),
            }
        }
        (Method::POST, "/api/v1/compare/done") => {
            let d: api::CompareDone = body_json(req, AGENT_JSON_BODY).await?;
            if !state
                .compare_done(&machine, d.disk, d.token, d.point)
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
            let mid: lifeboat_wire::MachineId =
                machine.parse().map_err(|e: String| ApiError::internal(e))?;
            if let Err(f) = ps.publish_compare_done(mid, d.disk, d.token, d.point).await {
                return Ok(failure(f));
            }
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::POST, "/api/v1/churn") => {
            let r: api::ChurnReport = body_json(req, AGENT_JSON_BODY).await?;
            r.check().map_err(|e| ApiError::bad_request("invalid-churn", e))?;
            let text = serde_json::to_string(&r).map_err(|e| ApiError::internal(e.to_string()))?;
            state.add_churn(&machine, &text).map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::info!(%machine, disks = r.disks.len(), seconds = r.seconds, "churn profile received");
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::POST, "/api/v1/groups/member-points") => {
            let m: api::MemberPoint = body_json(req, AGENT_JSON_BODY).await?;
            let def = state
                .group_of(&machine)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .filter(|d| d.name == m.group)
                .ok_or_else(|| {
                    ApiError::forbidden(
                        "not-a-member",
                        format!("machine {machine} is not a member of group {}", m.group),
                    )
                })?;
            state
                .add_member_point(&def.name, &machine, m.point)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::POST, "/api/v1/groups/points") => {
            let g: api::GroupPoint = body_json(req, AGENT_JSON_BODY).await?;
            check_group_point(&state, &machine, &g)?;
            state
                .add_group_point(&g.group, g.point, &g.members)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::info!(group = %g.group, point = g.point, members = g.members.len(), "group point recorded by the coordinator");
            json(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::GET, p) if machine_in(p, "/points").is_some() => {
            let id = machine_in(p, "/points").unwrap_or_default();
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
        _ => not_found(&path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, finding 6: any member could record group points naming other machines
    /// (any point number, squatting future ones) and so steer their `latest-group`. Now
    /// only the administrator's group, recorded by its coordinator with exactly its
    /// members, counts, and only once each member reported the point itself.
    #[test]
    fn only_the_coordinator_records_and_only_reported_points_count() {
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("s.db")).unwrap();
        for (p, m) in [("p1", "m-a"), ("p2", "m-b"), ("p3", "m-c")] {
            state.add_passphrase(p).unwrap();
            assert!(state.register_machine(p, m, "host").unwrap());
        }
        let def = |coord: &str, members: &[&str]| api::GroupDefinition {
            coordinator: coord.into(),
            members: members.iter().map(|s| s.to_string()).collect(),
        };
        let err = |r: Result<crate::state::GroupDef, ApiError>| r.unwrap_err().to_string();
        assert!(
            err(check_group_definition(&state, "e rp", def("m-a", &["m-a", "m-b"])))
                .contains("name")
        );
        assert!(
            err(check_group_definition(&state, "erp", def("m-a", &["m-a"]))).contains("members")
        );
        assert!(
            err(check_group_definition(&state, "erp", def("m-a", &["m-a", "m-a"])))
                .contains("twice")
        );
        assert!(
            err(check_group_definition(&state, "erp", def("m-a", &["m-a", "m-x"])))
                .contains("not a registered machine")
        );
        assert!(
            err(check_group_definition(&state, "erp", def("m-c", &["m-a", "m-b"])))
                .contains("coordinator")
        );
        let g = check_group_definition(&state, "erp", def("m-b", &["m-b", "m-a"])).unwrap();
        assert_eq!(g.members, ["m-a", "m-b"]);
        assert!(state.set_group(&g).unwrap());
        let other = check_group_definition(&state, "crm", def("m-c", &["m-c", "m-a"])).unwrap();
        assert!(!state.set_group(&other).unwrap(), "a machine is in one group at most");

        let rec = |group: &str, point: u64, members: &[&str]| api::GroupPoint {
            group: group.into(),
            point,
            members: members.iter().map(|s| s.to_string()).collect(),
        };
        let code = |r: Result<(), ApiError>| r.unwrap_err().code;
        // A member that is not the coordinator, naming B: refused.
        assert_eq!(
            code(check_group_point(&state, "m-a", &rec("erp", 9, &["m-a", "m-b"]))),
            "not-coordinator"
        );
        // Another machine, a group of its own making: refused.
        assert_eq!(
            code(check_group_point(&state, "m-c", &rec("mine", 9, &["m-c", "m-b"]))),
            "unknown-group"
        );
        // The coordinator, with the wrong members: refused.
        assert_eq!(
            code(check_group_point(&state, "m-b", &rec("erp", 9, &["m-b", "m-c"]))),
            "wrong-members"
        );
        assert_eq!(
            code(check_group_point(&state, "m-b", &rec("erp", 9, &["m-b", "m-a", "m-a"]))),
            "wrong-members"
        );
        assert!(check_group_point(&state, "m-b", &rec("erp", 9, &["m-a", "m-b"])).is_ok());
        // A record counts once every member reported the point: until then B's
        // latest-group is not steered by it.
        for m in ["m-a", "m-b"] {
            state
                .add_point(&crate::state::PointRow {
                    id: format!("{m}-p9"),
                    machine_id: m.into(),
                    point: 9,
                    kind: "crash".into(),
                    created_unix_ms: 1,
                    disks: vec![0],
                })
                .unwrap();
        }
        let latest_group = |state: &State| {
            crate::failover::choose_point(state, "m-b", &crate::failover::PointChoice::LatestGroup)
                .unwrap()
                .ok()
                .map(|p| p.id)
        };
        state.add_group_point("erp", 9, &["m-a".into(), "m-b".into()]).unwrap();
        assert_eq!(latest_group(&state), None);
        assert!(state.group_points(Some("erp")).unwrap().is_empty(), "a claim alone");
        state.add_member_point("erp", "m-a", 9).unwrap();
        assert!(state.group_points(Some("erp")).unwrap().is_empty(), "one member of two");
        state.add_member_point("erp", "m-b", 9).unwrap();
        let rows = state.group_points(Some("erp")).unwrap();
        assert_eq!(
            (rows.len(), rows[0].members.clone()),
            (1, vec!["m-a".to_owned(), "m-b".into()])
        );
        assert_eq!(latest_group(&state).as_deref(), Some("m-b-p9"));
        // A revoked member leaves its group (its peers then refuse it): here the group is
        // left with one member, and dissolved.
        assert!(state.revoke_machine("m-a").unwrap());
        assert!(state.group_of("m-b").unwrap().is_none());
        assert!(state.group_points(Some("other")).unwrap().is_empty());
    }
}
