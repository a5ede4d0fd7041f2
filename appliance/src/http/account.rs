//! Administrator accounts: first-run setup, login, logout, the session.

use super::*;

/// `GET /api/v1/setup`
#[utoipa::path(
    get,
    path = "/api/v1/setup",
    tag = "account",
    summary = "Whether the first-run setup is still to be done.",
    responses(
        (status = 200, description = "status", body = api::SetupStatus),
        (status = 403, description = "error", body = api::ApiError)
    ),
)]
pub(super) async fn setup_status(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
) -> Answer {
    let needed = ctx.admins.setup_needed().map_err(admin_error)?;
    json(StatusCode::OK, &api::SetupStatus { needed })
}

/// `POST /api/v1/setup`
#[utoipa::path(
    post,
    path = "/api/v1/setup",
    tag = "account",
    summary = "Creates the first administrator (only while none exists) and logs it in. Needs the appliance's one-time setup token, shown on its console and by `lifeboat-appliance setup-token`: 403 `bad_setup_token` without it.",
    request_body = api::SetupRequest,
    responses(
        (status = 201, description = "created", body = api::SessionInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 403, description = "error", body = api::ApiError),
        (status = 409, description = "error", body = api::ApiError),
        (status = 413, description = "error", body = api::ApiError),
        (status = 415, description = "error", body = api::ApiError)
    ),
)]
pub(super) async fn setup(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let c: api::SetupRequest = body_json(req, UNAUTHENTICATED_BODY).await?;
    let ctx2 = ctx.clone();
    let s = blocking(move || ctx2.admins.setup(&c.setup_token, &c.name, &c.password)).await?;
    session_answer(StatusCode::CREATED, s)
}

/// `POST /api/v1/login`
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "account",
    summary = "Opens a session (12 h). Five failures from one source (an IPv4 address or an IPv6 /64) within 5 minutes give that source 429 for the rest of the window; no account is ever locked. 429 `busy` when too many logins are being checked at once. Bodies over 4 KiB: 413.",
    request_body = api::Credentials,
    responses(
        (status = 200, description = "logged in", body = api::SessionInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 429, description = "error", body = api::ApiError),
        AdminErrors
    ),
)]
pub(super) async fn login(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let from = req
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.remote_addr.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let c: api::Credentials = body_json(req, UNAUTHENTICATED_BODY).await?;
    let s = ctx.admins.login(&c.name, &c.password, from).await.map_err(admin_error)?;
    session_answer(StatusCode::OK, s)
}

/// `POST /api/v1/logout`
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "account",
    summary = "Ends the session.",
    responses(
        (status = 200, description = "{}"),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn logout(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (token, _, _) = authenticated(&ctx, &req)?;
    ctx.admins.logout(&token).map_err(admin_error)?;
    json(StatusCode::OK, &api::Empty {})
}

/// `GET /api/v1/session`
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "account",
    summary = "Who the session belongs to and when it ends.",
    responses(
        (status = 200, description = "the session (no token)", body = api::SessionInfo),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn session(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, name, expires_unix_ms) = authenticated(&ctx, &req)?;
    json(StatusCode::OK, &api::SessionInfo { token: None, name, expires_unix_ms })
}

pub(super) fn bearer(req: &Req) -> Option<String> {
    let v = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// The administrator of the request's session, or 401.
pub(super) fn authenticated(
    ctx: &ConfigServerCtx,
    req: &Req,
) -> Result<(String, String, u64), ApiError> {
    let token = bearer(req)
        .ok_or_else(|| admin_error(crate::config_server::admin::AdminError::Unauthenticated))?;
    let (name, expires) = ctx.admins.check(&token).map_err(admin_error)?;
    Ok((token, name, expires))
}

pub(super) fn session_answer(
    status: StatusCode,
    s: crate::config_server::admin::Session,
) -> Answer {
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
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::config_server::admin::AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(admin_error)
}
