//! Plugins uploaded from the API: quarantined, trusted (pinned and installed) or discarded
//! by an administrator; and reloading the plugins directory. What is checked and kept:
//! `config_server::uploads`.

use super::*;
use crate::config_server::uploads::{self, UploadError};

/// Largest body of an upload: a 16 MiB `.wasm` in base64, its manifest and the JSON around.
pub const UPLOAD_BODY: usize = 24 << 20;

fn answer(e: UploadError) -> ApiError {
    match e {
        UploadError::Invalid(m) => ApiError::bad_request("invalid", m),
        UploadError::NotFound(_) => ApiError::not_found("unknown_upload", e.to_string()),
        UploadError::Io(m) => ApiError::internal(m),
        UploadError::State(e) => internal(e),
    }
}

fn registry(
    ctx: &ConfigServerCtx,
) -> Result<&Arc<lifeboat_plugin_host::registry::Registry>, ApiError> {
    ctx.registry.as_ref().ok_or_else(|| {
        ApiError::bad_request("no_plugins", "this appliance runs no role that loads plugins")
    })
}

/// `POST /api/v1/plugin-uploads`
#[utoipa::path(
    post,
    path = "/api/v1/plugin-uploads",
    tag = "appliance",
    summary = "Uploads a plugin (manifest and .wasm) into quarantine: its manifest is checked, its build must be the manifest's sha256, and it is compiled (never run) to check it is a component of the world it claims. It is not loaded until an administrator trusts it. An earlier upload of the same name is replaced.",
    request_body = api::PluginUpload,
    responses(
        (status = 201, description = "In quarantine.", body = api::QuarantinedPlugin),
        (status = 400, description = "error: `invalid` (names the field and what is wrong)", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn upload(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    use base64::Engine as _;
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let u: api::PluginUpload = body_json(req, UPLOAD_BODY).await?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(u.wasm_base64.trim())
        .map_err(|e| ApiError::bad_request("invalid", format!("wasm_base64: not base64: {e}")))?;
    let registry = registry(&ctx)?.clone();
    let data = ctx.data_dir.clone();
    let q =
        tokio::task::spawn_blocking(move || uploads::receive(&registry, &data, &u.manifest, &wasm))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(answer)?;
    tracing::warn!(%admin, plugin = %q.name, sha256 = %q.sha256, "plugin uploaded into quarantine");
    json(StatusCode::CREATED, &q)
}

/// `POST /api/v1/plugin-uploads/{name}/trust`
#[utoipa::path(
    post,
    path = "/api/v1/plugin-uploads/{name}/trust",
    tag = "appliance",
    summary = "Trusts an upload: given the sha256 the administrator read (it must still be the quarantined build's), the build is pinned (the pin replaces the grant's sha256), moved into the plugins directory, and the plugins are reloaded. What it may reach stays the configuration file's grant: a plugin asking for more is then listed as refused, saying what to grant.",
    params(("name" = String, Path, description = "the upload's name")),
    request_body = api::PluginTrust,
    responses(
        (status = 200, description = "The plugins now.", body = api::PluginList),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn trust(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let t: api::PluginTrust = body_json(req, ADMIN_BODY).await?;
    let registry = registry(&ctx)?.clone();
    // Compiling, syncing and reloading: off the async workers.
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || {
        uploads::trust(&c.state, &registry, &c.data_dir, &name, &t.sha256, &admin)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(answer)?;
    json(StatusCode::OK, &super::appliance::plugin_list(ctx.registry.as_deref(), &ctx.data_dir))
}

/// `DELETE /api/v1/plugin-uploads/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/plugin-uploads/{name}",
    tag = "appliance",
    summary = "Discards an upload in quarantine.",
    params(("name" = String, Path, description = "the upload's name")),
    responses(
        (status = 200, description = "The plugins now.", body = api::PluginList),
        (status = 404, description = "error", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn discard(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    uploads::discard(&ctx.data_dir, &name).map_err(answer)?;
    tracing::info!(%admin, plugin = %name, "upload discarded");
    json(StatusCode::OK, &super::appliance::plugin_list(ctx.registry.as_deref(), &ctx.data_dir))
}

/// `POST /api/v1/plugins/reload`
#[utoipa::path(
    post,
    path = "/api/v1/plugins/reload",
    tag = "appliance",
    summary = "Loads the plugins directory again (as SIGHUP does): new and changed plugins are loaded, a plugin whose new files are refused keeps its earlier version. No body.",
    responses(
        (status = 200, description = "The plugins now.", body = api::PluginList),
        (status = 400, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn reload(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let registry = registry(&ctx)?;
    let set = crate::store::off_worker(|| registry.reload());
    tracing::info!(%admin, generation = set.generation, "plugins reloaded from the API");
    json(StatusCode::OK, &super::appliance::plugin_list(Some(registry.as_ref()), &ctx.data_dir))
}
