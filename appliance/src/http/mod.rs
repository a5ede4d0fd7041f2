//! HTTP routes of the configuration server (443) and the process server (9443).
//!
//! Each listener has an axum router ([`ConfigServer`], [`AgentServer`]) over the project's
//! own HTTPS server (`lifeboat_net::server`), which keeps the connection limits, client
//! certificates and per-request peer identity. A route is one function in the file of its
//! resource; on the configuration server each carries its OpenAPI description
//! (`#[utoipa::path]`), and the router and the OpenAPI document it serves
//! (`GET /api/v1/openapi.json`) are built from the same list of handlers, so they cannot
//! disagree. Bodies and answers are the types of `lifeboat_api`. Errors of the roles
//! become HTTP status codes here and nowhere else.

use crate::process_server::{Kind, ProcessError, ProcessServer};
use crate::store::State;
use axum::Extension;
use axum::extract::{self, Path};
use http::{Request, Response, StatusCode};
use lifeboat_api as api;
use lifeboat_net::server::{read_body, read_json};
use lifeboat_net::{PeerInfo, RequestBody, ResponseBody};
use lifeboat_wire::MachineId;
use std::sync::Arc;
use tower::ServiceExt;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod account;
mod admins;
mod agents;
mod appliance;
mod downloads;
mod failovers;
mod groups;
mod machines;
mod plans;
mod plugins;
mod policies;
mod push;
mod targets;
pub mod ui;

use account::authenticated;
pub use appliance::metrics_text;
pub use groups::MAX_GROUP_MEMBERS;
use groups::check_group_point;
use machines::{machine_state, point_summary};
use plans::job_info;
use policies::check_policy_name;

type Answer = Result<Response<ResponseBody>, ApiError>;

/// `value` as the JSON answer with `status`.
fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Answer {
    Ok(lifeboat_net::server::json(status, value)?)
}

/// What a listener answers the HTTPS server.
type Served = Result<Response<ResponseBody>, lifeboat_net::ApiError>;

/// A request as the routes see it.
type Req = extract::Request;

/// An error answered as `{"error": message, "code": code}` with its status (the
/// `lifeboat_net` error, made an axum response), plus what a role's error may add: the
/// sequence a disk expects (`sequence-gap`) and `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    error: lifeboat_net::ApiError,
    expected_sequence: Option<u64>,
    retry_after: Option<u64>,
}

impl From<lifeboat_net::ApiError> for ApiError {
    fn from(error: lifeboat_net::ApiError) -> Self {
        ApiError { error, expected_sequence: None, retry_after: None }
    }
}

/// The process server's errors: this is where their kinds become statuses.
impl From<ProcessError> for ApiError {
    fn from(f: ProcessError) -> Self {
        let status = match f.kind {
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Kind::TooBusy => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            error: lifeboat_net::ApiError::new(status, f.code, f.message),
            expected_sequence: f.expected_sequence,
            retry_after: f.retry_after,
        }
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        lifeboat_net::ApiError::new(status, code, message).into()
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        lifeboat_net::ApiError::bad_request(code, message).into()
    }

    fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        lifeboat_net::ApiError::forbidden(code, message).into()
    }

    fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        lifeboat_net::ApiError::not_found(code, message).into()
    }

    fn body_too_large(limit: usize) -> Self {
        lifeboat_net::ApiError::body_too_large(limit).into()
    }

    fn internal(message: impl Into<String>) -> Self {
        lifeboat_net::ApiError::internal(message).into()
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut r = match self.expected_sequence {
            None => self.error.into_response().map(axum::body::Body::new),
            Some(expected) => {
                let body = api::ApiError {
                    error: self.error.message,
                    code: self.error.code.to_owned(),
                    expected_sequence: Some(expected),
                };
                match json(self.error.status, &body) {
                    Ok(r) => axum::response::IntoResponse::into_response(r),
                    Err(e) => e.error.into_response().map(axum::body::Body::new),
                }
            }
        };
        if let Some(s) = self.retry_after
            && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        r
    }
}

/// An axum response as the HTTPS server sends it.
fn to_server(r: axum::response::Response) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    r.map(|b| b.map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into).boxed_unsync())
}

/// A state-store failure as an answer (500).
fn internal(e: crate::store::StateError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// What a path that no route serves (or a method a route does not take) answers.
async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found("not_found", format!("no such endpoint: {}", uri.path()))
}

fn peer_machine(req: &Request<RequestBody>) -> Result<MachineId, ApiError> {
    let id =
        req.extensions().get::<PeerInfo>().and_then(|p| p.machine_id.clone()).ok_or_else(|| {
            ApiError::forbidden(
                "no_client_certificate",
                "this endpoint needs the agent's client certificate",
            )
        })?;
    // The appliance's CA signs only certificates whose name is a machine id; anything else
    // is a certificate it did not issue for an agent.
    id.parse().map_err(|e: String| ApiError::forbidden("bad_client_certificate", e))
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
    /// How often the machines' history is sampled (`config_server.sample_secs`).
    pub sample_secs: u64,
    /// The data keys (stored plugin secrets are sealed with the active one).
    pub keys: lifeboat_plugin_host::keys::KeyRing,
    /// The target plugin the configuration file names (a choice stored from the API wins).
    pub target: String,
    /// The agent packages served at `/downloads/` (`config_server.downloads`).
    pub downloads: Option<Arc<crate::config_server::downloads::Downloads>>,
}

/// Most bytes of a request body read before the caller is known (setup, login).
pub const UNAUTHENTICATED_BODY: usize = 4 << 10;
/// Most bytes of a registration (a CSR, a passphrase, a host name).
pub const REGISTER_BODY: usize = 16 << 10;
/// Most bytes of an administrator's request body (plans, policies, VM settings).
pub const ADMIN_BODY: usize = 1 << 20;
/// The configuration server's connection-level body limit (nothing it serves is larger).
pub const CONFIG_SERVER_MAX_BODY: usize = plugins::UPLOAD_BODY;
/// Most bytes of an agent's JSON request (hello, progress, churn, comparisons).
pub const AGENT_JSON_BODY: usize = 4 << 20;

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn says_json(req: &Req) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// A request's body, at most `limit` bytes (413 past it, without reading further); a
/// non-empty body must be declared `application/json` (415 otherwise: a browser form
/// cannot send one).
async fn body_bytes(req: Req, limit: usize) -> Result<bytes::Bytes, ApiError> {
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
async fn body_json<T: serde::de::DeserializeOwned>(req: Req, limit: usize) -> Result<T, ApiError> {
    let bytes = body_bytes(req, limit).await?;
    Ok(read_json(http_body_util::Full::new(bytes)).await?)
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

/// `202 Accepted` with the job just started.
/// `https://<authority>` of a request (HTTP/2's `:authority`, else the Host header): the
/// address the caller reached this appliance at.
fn request_origin(req: &Req) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
        })
        .map(|h| format!("https://{h}"))
}

fn accepted(state: &State, job: lifeboat_api::JobId) -> Answer {
    let j = state
        .jobs(Some(job), 1)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .pop()
        .map(job_info);
    json(StatusCode::ACCEPTED, &j)
}

/// A machine id in a route's path (`{id}`). A malformed one names no machine: 404, as for an
/// unknown one.
#[derive(Debug, Clone, Copy)]
struct MachinePath(MachineId);

impl<S: Send + Sync> extract::FromRequestParts<S> for MachinePath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid", e.body_text()))?;
        id.parse()
            .map(MachinePath)
            .map_err(|_| ApiError::not_found("unknown_machine", format!("id: no machine {id:?}")))
    }
}

fn known_machine(state: &State, id: MachineId) -> Result<(), ApiError> {
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
        E::BadSetupToken => ApiError::forbidden("bad_setup_token", e.to_string()),
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

/// The OpenAPI document's frame: what the routes' own descriptions do not say.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeboat configuration server",
        version = "1",
        description = "The administrator API (bearer session tokens from POST /api/v1/login) and agent registration. Browsers (the web UI served at /) hold the session in the `lifeboat_session` cookie instead (HttpOnly, Secure, SameSite=Strict; setup and login set it when asked with `X-Lifeboat-Session: cookie`, and then answer without the token); a request authenticated by the cookie that is not a GET must carry the `X-Lifeboat-Csrf` header (403 csrf otherwise). Errors are {\"error\": message, \"code\": code} with an HTTP status; 400 names the field and what is expected. A request body must be declared `Content-Type: application/json` (415 otherwise) and is at most 1 MiB (4 KiB before authentication, 16 KiB for a registration, 24 MiB for a plugin upload; 413 past it). A request whose `Origin` is not the appliance's own address is refused (403 origin_mismatch)."
    ),
    modifiers(&SessionScheme)
)]
struct Frame;

/// The `session` security scheme: a bearer token from `POST /api/v1/login`.
struct SessionScheme;

impl utoipa::Modify for SessionScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "session",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The errors every authenticated route with a body may answer: no or an expired session
/// (401), a page of another origin (403), a body too large (413) or not JSON (415).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum AdminErrors {
    #[response(status = 401, description = "error")]
    Unauthorized(api::ApiError),
    #[response(status = 403, description = "error")]
    Forbidden(api::ApiError),
    #[response(status = 413, description = "error")]
    TooLarge(api::ApiError),
    #[response(status = 415, description = "error")]
    NotJson(api::ApiError),
}

/// The errors every authenticated route may answer: no or an expired session (401), a
/// page of another origin (403).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SessionErrors {
    #[response(status = 401, description = "error")]
    Unauthorized(api::ApiError),
    #[response(status = 403, description = "error")]
    Forbidden(api::ApiError),
}

/// Every route of the configuration server, with its OpenAPI description.
fn config_routes() -> OpenApiRouter<Arc<ConfigServerCtx>> {
    OpenApiRouter::with_openapi(Frame::openapi())
        .routes(routes!(machines::register_route))
        .routes(routes!(appliance::health))
        .routes(routes!(appliance::openapi))
        .routes(routes!(appliance::metrics))
        .routes(routes!(account::setup_status, account::setup))
        .routes(routes!(account::login))
        .routes(routes!(account::logout))
        .routes(routes!(account::session))
        .routes(routes!(machines::list_machines))
        .routes(routes!(machines::revoke))
        .routes(routes!(machines::passphrase_status, machines::new_passphrase))
        .routes(routes!(downloads::list))
        .routes(routes!(push::install))
        .routes(routes!(machines::vm_spec, machines::set_vm_spec))
        .routes(routes!(machines::points))
        .routes(routes!(machines::history))
        .routes(routes!(failovers::test_failover))
        .routes(routes!(failovers::failover))
        .routes(routes!(failovers::commit))
        .routes(routes!(failovers::reprotect))
        .routes(routes!(failovers::failback))
        .routes(routes!(failovers::list_failovers))
        .routes(routes!(failovers::list_test_failovers))
        .routes(routes!(failovers::cleanup_test_failover))
        .routes(routes!(policies::list_policies))
        .routes(routes!(policies::put_policy, policies::delete_policy))
        .routes(routes!(policies::assign_policy))
        .routes(routes!(policies::list_alerts))
        .routes(routes!(appliance::appliance, appliance::set_appliance))
        .routes(routes!(appliance::set_wizard))
        .routes(routes!(
            appliance::certificate,
            appliance::set_certificate,
            appliance::delete_certificate
        ))
        .routes(routes!(appliance::ca))
        .routes(routes!(appliance::rotate_ca))
        .routes(routes!(appliance::recovery_passphrase_status, appliance::set_recovery_passphrase))
        .routes(routes!(appliance::plugins))
        .routes(routes!(targets::plugin_health))
        .routes(routes!(targets::target, targets::set_target))
        .routes(routes!(plugins::upload))
        .routes(routes!(plugins::trust))
        .routes(routes!(plugins::discard))
        .routes(routes!(plugins::reload))
        .routes(routes!(admins::list_admins, admins::add_admin))
        .routes(routes!(admins::delete_admin))
        .routes(routes!(admins::set_password))
        .routes(routes!(admins::list_sessions))
        .routes(routes!(admins::end_session))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::put_group, groups::delete_group))
        .routes(routes!(plans::list_plans))
        .routes(routes!(plans::run_plan))
        .routes(routes!(plans::put_plan, plans::delete_plan))
        .routes(routes!(plans::continue_job))
        .routes(routes!(plans::list_jobs))
        .routes(routes!(plans::job))
}

/// The configuration server's generated OpenAPI document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    config_routes().split_for_parts().1
}

/// The configuration server: its router, and the OpenAPI document it serves.
pub struct ConfigServer {
    router: axum::Router,
}

impl ConfigServer {
    /// The router over `ctx`.
    pub fn new(ctx: Arc<ConfigServerCtx>) -> ConfigServer {
        let (router, doc) = config_routes().split_for_parts();
        let doc = Arc::new(OpenApiJson(doc.to_pretty_json().unwrap_or_default()));
        let router = router
            .route("/", axum::routing::get(ui::index))
            .route("/assets/{file}", axum::routing::get(ui::asset))
            .route("/downloads/", axum::routing::get(downloads::index))
            .route("/downloads/{name}", axum::routing::get(downloads::file))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .layer(Extension(doc))
            .with_state(ctx);
        ConfigServer { router }
    }

    /// Answers one request.
    pub async fn serve(&self, req: Request<RequestBody>) -> Served {
        if let Err(e) = check_origin(&req) {
            let mut r = to_server(axum::response::IntoResponse::into_response(e));
            ui::secure_headers(r.headers_mut());
            return Ok(r);
        }
        let r = self.router.clone().oneshot(req.map(axum::body::Body::new)).await;
        let mut r = to_server(r.unwrap_or_else(|never| match never {}));
        ui::secure_headers(r.headers_mut());
        Ok(r)
    }
}

/// The generated document, as served.
#[derive(Debug)]
struct OpenApiJson(String);

/// What the process server's routes need.
struct AgentCtx {
    ps: ProcessServer,
    state: State,
    pki: Arc<crate::config_server::pki::Pki>,
}

/// The machine of the client certificate a request came with.
#[derive(Debug, Clone)]
struct AgentMachine(MachineId);

/// The process server's listener (mutual TLS: every request carries a machine id).
pub struct AgentServer {
    ctx: Arc<AgentCtx>,
    router: axum::Router,
}

impl AgentServer {
    /// The router of the process server's routes.
    pub fn new(
        ps: ProcessServer,
        state: State,
        pki: Arc<crate::config_server::pki::Pki>,
    ) -> AgentServer {
        use axum::routing::{get, post, put};
        let ctx = Arc::new(AgentCtx { ps, state, pki });
        let router = axum::Router::new()
            .route("/api/v1/hello", post(agents::hello))
            .route("/api/v1/batches", put(agents::batch))
            .route("/api/v1/progress", post(agents::progress))
            .route("/api/v1/agent-alerts", post(agents::agent_alerts))
            .route("/api/v1/trust", get(agents::trust))
            .route("/api/v1/renew", post(agents::renew))
            .route("/api/v1/reverse", get(agents::reverse_status))
            .route("/api/v1/reverse/diff", post(agents::reverse_diff))
            .route("/api/v1/reverse/done", post(agents::reverse_done))
            .route("/api/v1/compare", post(agents::compare))
            .route("/api/v1/compare/done", post(agents::compare_done))
            .route("/api/v1/churn", post(agents::churn))
            .route("/api/v1/groups/member-points", post(agents::member_points))
            .route("/api/v1/groups/points", post(agents::group_points))
            .route("/api/v1/machines/{id}/points", get(agents::agent_points))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(ctx.clone());
        AgentServer { ctx, router }
    }

    /// Answers one request: the machine must be known, not revoked, on its current
    /// certificate, and (but for reverse replication and trust) not failed over.
    pub async fn serve(&self, req: Request<RequestBody>) -> Served {
        let machine = self.check(&req).map_err(|e| e.error)?;
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(AgentMachine(machine));
        let r = self.router.clone().oneshot(req).await;
        Ok(to_server(r.unwrap_or_else(|never| match never {})))
    }

    /// The machine of the request's client certificate, or why it may not call now.
    fn check(&self, req: &Request<RequestBody>) -> Result<MachineId, ApiError> {
        let AgentCtx { ps, state, pki } = &*self.ctx;
        let path = req.uri().path().to_owned();
        let machine = peer_machine(req)?;
        // A revoked machine is refused at once, whatever it asks.
        if state.is_revoked(machine).map_err(|e| ApiError::internal(e.to_string()))? {
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
            && let Err(why) = crate::config_server::pki::check_presented(state, pki, machine, &der)
                .map_err(|e| ApiError::internal(e.to_string()))?
        {
            return Err(ApiError::forbidden("certificate-replaced", why));
        }
        ps.seen(machine).map_err(|e| ApiError::internal(e.to_string()))?;
        let reverse_route = path == "/api/v1/reverse"
            || path.starts_with("/api/v1/reverse/")
            || path == "/api/v1/trust"
            || path == "/api/v1/renew";
        if !reverse_route
            && let Some(s) =
                state.failover_state(machine).map_err(|e| ApiError::internal(e.to_string()))?
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "failed-over",
                format!(
                    "machine {machine} is {s} at the target; replication from it resumes with reprotect"
                ),
            ));
        }
        Ok(machine)
    }
}

#[cfg(test)]
mod tests;
