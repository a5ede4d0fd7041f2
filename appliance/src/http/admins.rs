//! Administrators and their sessions: the list, another administrator, a new password, an
//! administrator removed (never the last, never oneself), a session ended.

use super::*;

fn admin_list(ctx: &ConfigServerCtx) -> Result<api::AdminList, ApiError> {
    let sessions = ctx.state.sessions().map_err(internal)?;
    let admins = ctx
        .state
        .admins()
        .map_err(internal)?
        .into_iter()
        .map(|(name, created_unix_ms)| api::AdminInfo {
            sessions: sessions.iter().filter(|s| s.1 == name).count() as u64,
            name,
            created_unix_ms,
        })
        .collect();
    Ok(api::AdminList { admins })
}

fn session_list(ctx: &ConfigServerCtx, token: &str) -> Result<api::SessionList, ApiError> {
    let sessions = ctx
        .admins
        .sessions(token)
        .map_err(admin_error)?
        .into_iter()
        .map(|(id, admin, created_unix_ms, expires_unix_ms, current)| api::SessionEntry {
            id,
            admin,
            created_unix_ms,
            expires_unix_ms,
            current,
        })
        .collect();
    Ok(api::SessionList { sessions })
}

/// `GET /api/v1/admins`
#[utoipa::path(
    get,
    path = "/api/v1/admins",
    tag = "account",
    summary = "The administrators, with how many live sessions each has.",
    responses((status = 200, description = "The administrators.", body = api::AdminList), SessionErrors),
    security(("session" = [])),
)]
pub(super) async fn list_admins(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &admin_list(&ctx)?)
}

/// `POST /api/v1/admins`
#[utoipa::path(
    post,
    path = "/api/v1/admins",
    tag = "account",
    summary = "Adds an administrator (name and password checked as for the first one; the password kept as an argon2id hash).",
    request_body = api::NewAdmin,
    responses(
        (status = 201, description = "The administrators now.", body = api::AdminList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 409, description = "error: `admin_exists`", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn add_admin(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, by, _) = authenticated(&ctx, &req)?;
    let n: api::NewAdmin = body_json(req, ADMIN_BODY).await?;
    if !ctx.admins.add(&n.name, &n.password).await.map_err(admin_error)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "admin_exists",
            format!("name: an administrator {} exists already", n.name),
        ));
    }
    tracing::warn!(%by, admin = %n.name, "administrator added");
    json(StatusCode::CREATED, &admin_list(&ctx)?)
}

/// `DELETE /api/v1/admins/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/admins/{name}",
    tag = "account",
    summary = "Removes an administrator and ends their sessions. The last administrator and the caller's own account are never removed.",
    params(("name" = String, Path, description = "the administrator")),
    responses(
        (status = 200, description = "The administrators now.", body = api::AdminList),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error: `last_admin`, `self`", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn delete_admin(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, by, _) = authenticated(&ctx, &req)?;
    if name == by {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "self",
            "name: an administrator cannot remove their own account; ask another one",
        ));
    }
    match ctx.state.delete_admin(&name).map_err(internal)? {
        None => Err(ApiError::not_found("unknown_admin", format!("name: no administrator {name}"))),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin",
            "name: the last administrator cannot be removed",
        )),
        Some(true) => {
            tracing::warn!(%by, admin = %name, "administrator removed; their sessions ended");
            json(StatusCode::OK, &admin_list(&ctx)?)
        }
    }
}

/// `PUT /api/v1/admins/{name}/password`
#[utoipa::path(
    put,
    path = "/api/v1/admins/{name}/password",
    tag = "account",
    summary = "Sets an administrator's password and ends their other sessions (the caller's own session stays).",
    params(("name" = String, Path, description = "the administrator")),
    request_body = api::NewPassword,
    responses(
        (status = 200, description = "The administrators now.", body = api::AdminList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_password(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (token, by, _) = authenticated(&ctx, &req)?;
    let p: api::NewPassword = body_json(req, ADMIN_BODY).await?;
    if !ctx.admins.set_password(&name, &p.password, &token).await.map_err(admin_error)? {
        return Err(ApiError::not_found("unknown_admin", format!("name: no administrator {name}")));
    }
    tracing::warn!(%by, admin = %name, "password changed; the administrator's other sessions ended");
    json(StatusCode::OK, &admin_list(&ctx)?)
}

/// `GET /api/v1/sessions`
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "account",
    summary = "Every live administrator session, the caller's marked.",
    responses((status = 200, description = "The sessions.", body = api::SessionList), SessionErrors),
    security(("session" = [])),
)]
pub(super) async fn list_sessions(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (token, _, _) = authenticated(&ctx, &req)?;
    json(StatusCode::OK, &session_list(&ctx, &token)?)
}

/// `DELETE /api/v1/sessions/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "account",
    summary = "Ends a session (any administrator's; ending one's own is a logout).",
    params(("id" = String, Path, description = "the session's id from GET /api/v1/sessions")),
    responses(
        (status = 200, description = "The sessions now.", body = api::SessionList),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn end_session(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(id): Path<String>,
    req: Req,
) -> Answer {
    let (token, by, _) = authenticated(&ctx, &req)?;
    if !ctx.admins.end_session(&id).map_err(admin_error)? {
        return Err(ApiError::not_found("unknown_session", format!("id: no live session {id}")));
    }
    tracing::warn!(%by, session = %id, "session ended");
    json(StatusCode::OK, &session_list(&ctx, &token)?)
}
