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
    let cookie = wants_cookie(&req);
    let c: api::SetupRequest = body_json(req, UNAUTHENTICATED_BODY).await?;
    let ctx2 = ctx.clone();
    let s = blocking(move || ctx2.admins.setup(&c.setup_token, &c.name, &c.password)).await?;
    session_answer(StatusCode::CREATED, s, cookie)
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
    let cookie = wants_cookie(&req);
    let c: api::Credentials = body_json(req, UNAUTHENTICATED_BODY).await?;
    let s = ctx.admins.login(&c.name, &c.password, from).await.map_err(admin_error)?;
    session_answer(StatusCode::OK, s, cookie)
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
    let mut r = json(StatusCode::OK, &api::Empty {})?;
    if cookie_token(&req).is_some() {
        set_cookie(&mut r, "", 0);
    }
    Ok(r)
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

/// The browser session cookie: the same session token, out of the page's reach
/// (`HttpOnly`), sent only over HTTPS (`Secure`) and only by pages of this origin
/// (`SameSite=Strict`).
pub const SESSION_COOKIE: &str = "lifeboat_session";
/// Setup and login answer with the session as a cookie (and no token in the body) when
/// the request carries this header with the value `cookie`: the web UI does.
pub const SESSION_MODE_HEADER: &str = "x-lifeboat-session";
/// A request authenticated by the cookie that is not a GET must carry this header (any
/// value). A page of another origin cannot send a custom header without a CORS preflight,
/// which this server never grants; the `Origin` check refuses it too.
pub const CSRF_HEADER: &str = "x-lifeboat-csrf";

/// Whether setup or login should answer with a cookie.
fn wants_cookie(req: &Req) -> bool {
    req.headers().get(SESSION_MODE_HEADER).is_some_and(|v| v.as_bytes() == b"cookie")
}

/// The session token of the request's cookie.
pub(super) fn cookie_token(req: &Req) -> Option<String> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Sets (or, with `max_age_secs` 0, clears) the session cookie on an answer.
fn set_cookie(r: &mut Response<ResponseBody>, token: &str, max_age_secs: u64) {
    let v = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age_secs}"
    );
    if let Ok(v) = http::HeaderValue::from_str(&v) {
        r.headers_mut().append(http::header::SET_COOKIE, v);
    }
}

/// The administrator of the request's session (a bearer token, or the browser's cookie),
/// or 401; 403 `csrf` for a cookie-authenticated change without [`CSRF_HEADER`].
pub(super) fn authenticated(
    ctx: &ConfigServerCtx,
    req: &Req,
) -> Result<(String, String, u64), ApiError> {
    let token = match bearer(req) {
        Some(t) => t,
        None => {
            let t = cookie_token(req).ok_or_else(|| {
                admin_error(crate::config_server::admin::AdminError::Unauthenticated)
            })?;
            let safe = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
            if !safe && req.headers().get(CSRF_HEADER).is_none() {
                return Err(ApiError::forbidden(
                    "csrf",
                    "a change made with the session cookie must carry the X-Lifeboat-Csrf header",
                ));
            }
            t
        }
    };
    let (name, expires) = ctx.admins.check(&token).map_err(admin_error)?;
    Ok((token, name, expires))
}

/// The session just opened: its token in the body, or (`cookie`) in the session cookie
/// only.
pub(super) fn session_answer(
    status: StatusCode,
    s: crate::config_server::admin::Session,
    cookie: bool,
) -> Answer {
    let info = api::SessionInfo {
        token: (!cookie).then(|| s.token.clone()),
        name: s.name,
        expires_unix_ms: s.expires_unix_ms,
    };
    let mut r = json(status, &info)?;
    if cookie {
        let left = s.expires_unix_ms.saturating_sub(crate::store::now_ms()) / 1000;
        set_cookie(&mut r, &s.token, left);
    }
    Ok(r)
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
