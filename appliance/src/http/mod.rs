//! HTTP routes of the configuration server (443) and the process server (9443).
//! One function per listener; each request is one small function. Bodies and answers are
//! the types of `lifeboat_api`.

use crate::process_server::{Kind, ProcessError, ProcessServer};
use crate::store::State;
use http::{Method, Request, Response, StatusCode};
use lifeboat_api as api;
use lifeboat_net::server::{json, read_body, read_json};
use lifeboat_net::{ApiError, PeerInfo, RequestBody, ResponseBody};
use std::sync::Arc;

mod account;
mod agents;
mod appliance;
mod failovers;
mod groups;
mod machines;
mod plans;
mod policies;

use account::authenticated;
pub use appliance::metrics_text;
pub use groups::MAX_GROUP_MEMBERS;
use groups::check_group_point;
use machines::{machine_state, point_summary};
use plans::job_info;
use policies::check_policy_name;

type Answer = Result<Response<ResponseBody>, ApiError>;

/// A state-store failure as an answer (500).
fn internal(e: crate::store::StateError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn failure(f: ProcessError) -> Response<ResponseBody> {
    let body = api::ApiError {
        error: f.message,
        code: f.code.to_owned(),
        expected_sequence: f.expected_sequence,
    };
    let status = match f.kind {
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        Kind::TooBusy => StatusCode::TOO_MANY_REQUESTS,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
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
    pub admins: crate::config_server::admin::Admins,
    /// Test failovers, when this appliance also runs the master target.
    pub failover: Option<crate::master_target::failover::Failover>,
    /// The appliance's CAs: the active one signs agent certificates.
    pub pki: Arc<crate::config_server::pki::Pki>,
    /// Handed to agents at registration.
    pub process_server_url: String,
    /// The data directory (the recovery passphrase's derived key lives there).
    pub data_dir: std::path::PathBuf,
    /// Recovery plans' scripts and manual steps.
    pub plans: Arc<crate::config_server::plan::Plans>,
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
pub const OPENAPI: &str = include_str!("../../openapi.json");

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

/// `202 Accepted` with the job just started.
fn accepted(state: &State, job: u64) -> Answer {
    let j = state
        .jobs(Some(job), 1)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .pop()
        .map(job_info);
    json(StatusCode::ACCEPTED, &j)
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

fn no_master_target() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "no_master_target",
        "this appliance does not run the master target role, which holds the replicas: ask the one that does",
    )
}

fn admin_error(e: crate::config_server::admin::AdminError) -> ApiError {
    use crate::config_server::admin::AdminError as E;
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

/// Routes of the configuration server.
pub async fn config_server(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    check_origin(&req)?;
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/api/v1/register") => machines::register_route(ctx, req).await,
        (Method::GET, "/api/v1/health") => appliance::health().await,
        (Method::GET, "/api/v1/openapi.json") => appliance::openapi().await,
        (Method::GET, "/metrics") => appliance::metrics(ctx, req).await,
        (Method::GET, "/api/v1/setup") => account::setup_status(ctx).await,
        (Method::POST, "/api/v1/setup") => account::setup(ctx, req).await,
        (Method::POST, "/api/v1/login") => account::login(ctx, req).await,
        (Method::POST, "/api/v1/logout") => account::logout(ctx, req).await,
        (Method::GET, "/api/v1/session") => account::session(ctx, req).await,
        (Method::GET, "/api/v1/machines") => machines::list_machines(ctx, req).await,
        (Method::POST, p) if machine_in(p, "/revoke").is_some() => {
            machines::revoke(ctx, req, p).await
        }
        (Method::GET, "/api/v1/passphrases") => machines::passphrase_status(ctx, req).await,
        (Method::POST, "/api/v1/passphrases") => machines::new_passphrase(ctx, req).await,
        (Method::POST, p) if machine_in(p, "/test-failover").is_some() => {
            failovers::test_failover(ctx, req, p).await
        }
        (Method::POST, p) if machine_in(p, "/failover").is_some() => {
            failovers::failover(ctx, req, p).await
        }
        (Method::POST, p) if machine_in(p, "/commit").is_some() => {
            failovers::commit(ctx, req, p).await
        }
        (Method::POST, p) if machine_in(p, "/reprotect").is_some() => {
            failovers::reprotect(ctx, req, p).await
        }
        (Method::POST, p) if machine_in(p, "/failback").is_some() => {
            failovers::failback(ctx, req, p).await
        }
        (Method::GET, "/api/v1/policies") => policies::list_policies(ctx, req).await,
        (Method::PUT, p) if segment(p, "/api/v1/policies/", "").is_some() => {
            policies::put_policy(ctx, req, p).await
        }
        (Method::DELETE, p) if segment(p, "/api/v1/policies/", "").is_some() => {
            policies::delete_policy(ctx, req, p).await
        }
        (Method::PUT, p) if machine_in(p, "/policy").is_some() => {
            policies::assign_policy(ctx, req, p).await
        }
        (Method::GET, "/api/v1/alerts") => policies::list_alerts(ctx, req).await,
        (Method::GET, "/api/v1/ca") => appliance::ca(ctx, req).await,
        (Method::POST, "/api/v1/ca/rotate") => appliance::rotate_ca(ctx, req).await,
        (Method::GET, "/api/v1/recovery-passphrase") => {
            appliance::recovery_passphrase_status(ctx, req).await
        }
        (Method::PUT, "/api/v1/recovery-passphrase") => {
            appliance::set_recovery_passphrase(ctx, req).await
        }
        (Method::GET, "/api/v1/failovers") => failovers::list_failovers(ctx, req).await,
        (Method::GET, p) if machine_in(p, "/vm-spec").is_some() => {
            machines::vm_spec(ctx, req, p).await
        }
        (Method::PUT, p) if machine_in(p, "/vm-spec").is_some() => {
            machines::set_vm_spec(ctx, req, p).await
        }
        (Method::GET, "/api/v1/test-failovers") => failovers::list_test_failovers(ctx, req).await,
        (Method::POST, p) if segment(p, "/api/v1/test-failovers/", "/cleanup").is_some() => {
            failovers::cleanup_test_failover(ctx, req, p).await
        }
        (Method::GET, "/api/v1/plugins") => appliance::plugins(ctx, req).await,
        (Method::GET, "/api/v1/groups") => groups::list_groups(ctx, req).await,
        (Method::PUT, p) if segment(p, "/api/v1/groups/", "").is_some() => {
            groups::put_group(ctx, req, p).await
        }
        (Method::DELETE, p) if segment(p, "/api/v1/groups/", "").is_some() => {
            groups::delete_group(ctx, req, p).await
        }
        (Method::GET, "/api/v1/plans") => plans::list_plans(ctx, req).await,
        (Method::POST, p) if segment(p, "/api/v1/plans/", "/run").is_some() => {
            plans::run_plan(ctx, req, p).await
        }
        (Method::PUT, p) if segment(p, "/api/v1/plans/", "").is_some() => {
            plans::put_plan(ctx, req, p).await
        }
        (Method::DELETE, p) if segment(p, "/api/v1/plans/", "").is_some() => {
            plans::delete_plan(ctx, req, p).await
        }
        (Method::POST, p) if segment(p, "/api/v1/jobs/", "/continue").is_some() => {
            plans::continue_job(ctx, req, p).await
        }
        (Method::GET, "/api/v1/jobs") => plans::list_jobs(ctx, req).await,
        (Method::GET, p) if segment(p, "/api/v1/jobs/", "").is_some() => {
            plans::job(ctx, req, p).await
        }
        (Method::GET, p) if machine_in(p, "/points").is_some() => {
            machines::points(ctx, req, p).await
        }
        _ => not_found(&path),
    }
}

/// Routes of the process server (mutual TLS: every request carries a machine id).
pub async fn process_server(
    ps: ProcessServer,
    state: State,
    pki: Arc<crate::config_server::pki::Pki>,
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
        && let Err(why) = crate::config_server::pki::check_presented(&state, &pki, &machine, &der)
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
        (Method::POST, "/api/v1/hello") => agents::hello(ps, state, machine, req).await,
        (Method::PUT, "/api/v1/batches") => agents::batch(ps, machine, req).await,
        (Method::POST, "/api/v1/progress") => agents::progress(state, machine, req).await,
        (Method::POST, "/api/v1/agent-alerts") => agents::agent_alerts(state, machine, req).await,
        (Method::GET, "/api/v1/trust") => agents::trust(state, pki, machine, req).await,
        (Method::POST, "/api/v1/renew") => agents::renew(state, pki, machine, req).await,
        (Method::GET, "/api/v1/reverse") => agents::reverse_status(state, machine).await,
        (Method::POST, "/api/v1/reverse/diff") => {
            agents::reverse_diff(ps, state, machine, req).await
        }
        (Method::POST, "/api/v1/reverse/done") => agents::reverse_done(state, machine, req).await,
        (Method::POST, "/api/v1/compare") => agents::compare(ps, state, machine, req).await,
        (Method::POST, "/api/v1/compare/done") => {
            agents::compare_done(ps, state, machine, req).await
        }
        (Method::POST, "/api/v1/churn") => agents::churn(state, machine, req).await,
        (Method::POST, "/api/v1/groups/member-points") => {
            agents::member_points(state, machine, req).await
        }
        (Method::POST, "/api/v1/groups/points") => agents::group_points(state, machine, req).await,
        (Method::GET, p) if machine_in(p, "/points").is_some() => {
            agents::agent_points(state, machine, p).await
        }
        _ => not_found(&path),
    }
}

#[cfg(test)]
mod tests;
