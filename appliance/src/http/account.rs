//! Administrator accounts: first-run setup, login, logout, the session.

use super::*;

/// `GET /api/v1/setup`
pub(super) async fn setup_status(ctx: Arc<ConfigServerCtx>) -> Answer {
    let needed = ctx.admins.setup_needed().map_err(admin_error)?;
    json(StatusCode::OK, &api::SetupStatus { needed })
}

/// `POST /api/v1/setup`
pub(super) async fn setup(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    let c: api::Credentials = body_json(req, UNAUTHENTICATED_BODY).await?;
    let ctx2 = ctx.clone();
    let s = blocking(move || ctx2.admins.setup(&c.name, &c.password)).await?;
    session_answer(StatusCode::CREATED, s)
}

/// `POST /api/v1/login`
pub(super) async fn login(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
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
pub(super) async fn logout(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    let (token, _, _) = authenticated(&ctx, &req)?;
    ctx.admins.logout(&token).map_err(admin_error)?;
    json(StatusCode::OK, &serde_json::json!({}))
}

/// `GET /api/v1/session`
pub(super) async fn session(ctx: Arc<ConfigServerCtx>, req: Request<RequestBody>) -> Answer {
    let (_, name, expires_unix_ms) = authenticated(&ctx, &req)?;
    json(StatusCode::OK, &api::SessionInfo { token: None, name, expires_unix_ms })
}

pub(super) fn bearer(req: &Request<RequestBody>) -> Option<String> {
    let v = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// The administrator of the request's session, or 401.
pub(super) fn authenticated(
    ctx: &ConfigServerCtx,
    req: &Request<RequestBody>,
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
