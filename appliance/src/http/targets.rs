//! The target this appliance replicates to: which installed target plugin, and its
//! settings (the web UI's target step). What is kept and how: `config_server::targets`.

use super::*;
use crate::config_server::targets;
use lifeboat_plugin_host::LoadedPlugin;
use lifeboat_plugin_host::TargetInstance;
use lifeboat_plugin_host::manifest::PluginKind;
use lifeboat_plugin_host::registry::Registry;
use std::collections::BTreeMap;

fn registry(ctx: &ConfigServerCtx) -> Result<&Arc<Registry>, ApiError> {
    ctx.registry.as_ref().ok_or_else(|| {
        ApiError::not_found("unknown_plugin", "plugin: this appliance loads no plugins")
    })
}

/// The loaded target plugin `name`.
/// `field` is what the request calls it (errors start with it).
fn target_plugin(
    ctx: &ConfigServerCtx,
    name: &str,
    field: &str,
) -> Result<Arc<LoadedPlugin>, ApiError> {
    let plugin = registry(ctx)?.get(name).ok_or_else(|| {
        ApiError::not_found("unknown_plugin", format!("{field}: no loaded plugin {name:?}"))
    })?;
    if plugin.kind() != PluginKind::Target {
        return Err(ApiError::bad_request(
            "not_a_target",
            format!("{field}: {name} is a {} plugin, not a target", plugin.kind()),
        ));
    }
    Ok(plugin)
}

/// The settings `given` would give `plugin`, checked against what its manifest declares:
/// a declared setting left out or empty takes its default, a secret left out or empty
/// keeps the value it has now. Errors name the setting (`settings.<name>: …`).
fn candidate(
    plugin: &LoadedPlugin,
    given: &BTreeMap<String, String>,
) -> Result<targets::Settings, ApiError> {
    let m = plugin.manifest();
    let invalid = |name: &str, why: String| {
        ApiError::bad_request("invalid", format!("settings.{name}: {why}"))
    };
    if m.settings.is_empty() {
        if let Some(k) = given.keys().next() {
            return Err(invalid(
                k,
                format!(
                    "{} declares no settings (a manifest_version 1 plugin); give them in the \
                     configuration file, plugins.grants.{}.settings",
                    m.name, m.name
                ),
            ));
        }
        return Ok(plugin.settings().iter().cloned().collect());
    }
    for k in given.keys() {
        m.setting_spec(k).map_err(|takes| {
            invalid(k, format!("{} declares no such setting (it takes: {takes})", m.name))
        })?;
    }
    let mut out = targets::Settings::new();
    for spec in &m.settings {
        match given.get(&spec.name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(v) => {
                spec.check_given(v).map_err(|e| invalid(&spec.name, e))?;
                out.insert(spec.name.clone(), v.to_owned());
            }
            None if spec.secret => {
                if let Some((_, now)) = plugin.settings().iter().find(|(k, _)| *k == spec.name) {
                    out.insert(spec.name.clone(), now.clone());
                }
            }
            None => {}
        }
        if spec.required && spec.default.is_none() && !out.contains_key(&spec.name) {
            return Err(invalid(&spec.name, format!("required ({})", spec.label)));
        }
    }
    Ok(out)
}

/// A new instance of `name` with `settings`: the manifest's checks, then the plugin's own
/// `init`. Nothing is swapped in.
async fn try_settings(
    registry: &Registry,
    name: &str,
    settings: targets::Settings,
) -> Result<TargetInstance, ApiError> {
    // Loading compiles: off the async workers.
    let loaded = crate::store::off_worker(|| registry.load_with(name, settings))
        .map_err(|e| ApiError::bad_request("plugin_refused", format!("plugin: {}", e.message)))?;
    TargetInstance::new(loaded).await.map_err(|e| {
        ApiError::bad_request("target_refused", format!("{name} refused these settings: {e}"))
    })
}

fn target_state(ctx: &ConfigServerCtx) -> Result<api::TargetState, ApiError> {
    let plugin = targets::chosen(&ctx.state, &ctx.target);
    let stored = ctx.state.plugin_settings().map_err(internal)?.iter().any(|r| r.0 == plugin);
    Ok(api::TargetState {
        plugin,
        configured: ctx.target.clone(),
        stored,
        locked: !ctx.state.machines().map_err(internal)?.is_empty(),
    })
}

/// `GET /api/v1/target`
#[utoipa::path(
    get,
    path = "/api/v1/target",
    tag = "appliance",
    summary = "The target plugin this appliance replicates to, and whether another can still be chosen. Its settings are in GET /api/v1/plugins (a secret's value never).",
    responses(
        (status = 200, description = "The target.", body = api::TargetState),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn target(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    json(StatusCode::OK, &target_state(&ctx)?)
}

/// `PUT /api/v1/target`
#[utoipa::path(
    put,
    path = "/api/v1/target",
    tag = "appliance",
    summary = "Chooses the target plugin (until the first machine registers) and sets its settings. They are checked against the plugin's declared settings, then its own init must accept them (it connects and checks what it needs); only then are they kept, secrets sealed with the data key, and the plugin reloaded. A refused change keeps everything as it was.",
    request_body = api::TargetChoice,
    responses(
        (status = 200, description = "The target now.", body = api::TargetState),
        (status = 400, description = "error: `invalid` (names the setting), `not_a_target`, `plugin_refused`, `target_refused` (the plugin's own words)", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        (status = 409, description = "error: `target_locked`", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn set_target(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let r: api::TargetChoice = body_json(req, ADMIN_BODY).await?;
    // One change at a time: what is stored and what the registry is given stay the same.
    static CHANGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = CHANGING.lock().await;
    let plugin = target_plugin(&ctx, &r.plugin, "plugin")?;
    let registry = registry(&ctx)?;
    let locked = |ctx: &ConfigServerCtx| -> Result<(), ApiError> {
        let now = targets::chosen(&ctx.state, &ctx.target);
        if r.plugin != now && !ctx.state.machines().map_err(internal)?.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "target_locked",
                format!(
                    "plugin: machines are registered and their replicas are at {now}; another \
                     target cannot be chosen now (its settings can still change)"
                ),
            ));
        }
        Ok(())
    };
    locked(&ctx)?;
    let settings = candidate(&plugin, &r.settings)?;
    try_settings(registry, &r.plugin, settings.clone()).await?;
    // A machine may have registered while the plugin's init ran.
    locked(&ctx)?;
    // A plugin that declares no settings keeps its grant's: nothing of it is stored.
    if !plugin.manifest().settings.is_empty() {
        targets::store(&ctx.state, &ctx.keys, plugin.manifest(), &settings)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        registry.set_settings(&r.plugin, Some(settings));
    }
    ctx.state.set_setting(targets::CHOICE, &r.plugin).map_err(internal)?;
    let set = crate::store::off_worker(|| registry.reload());
    tracing::warn!(%admin, plugin = %r.plugin, generation = set.generation, "target set; plugins reloaded");
    json(StatusCode::OK, &target_state(&ctx)?)
}

/// `POST /api/v1/plugins/{name}/health`
#[utoipa::path(
    post,
    path = "/api/v1/plugins/{name}/health",
    tag = "appliance",
    summary = "Tests a target plugin: a new instance runs `init` (which connects and checks what it needs) and `health` (a harmless probe), with the plugin's settings or, given a body, with those settings instead (as PUT /api/v1/target takes them; nothing is kept). The answer carries the plugin's own message or error; the replicas are not touched.",
    params(("name" = String, Path, description = "a loaded target plugin")),
    request_body(content = Option<api::TargetSettings>, description = "optional: settings to test"),
    responses(
        (status = 200, description = "What the plugin said.", body = api::PluginHealth),
        (status = 400, description = "error", body = api::ApiError),
        (status = 404, description = "error", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn plugin_health(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let plugin = target_plugin(&ctx, &name, "name")?;
    let body = body_bytes(req, ADMIN_BODY).await?;
    let given = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let t: api::TargetSettings = read_json(http_body_util::Full::new(body)).await?;
        Some(t.settings)
    };
    let started = std::time::Instant::now();
    let outcome = match given {
        None => TargetInstance::new(plugin).await.map_err(|e| format!("init: {e}")),
        Some(given) => {
            let settings = candidate(&plugin, &given)?;
            let registry = registry(&ctx)?;
            match crate::store::off_worker(|| registry.load_with(&name, settings)) {
                Ok(p) => TargetInstance::new(p).await.map_err(|e| format!("init: {e}")),
                Err(e) => Err(format!("load: {}", e.message)),
            }
        }
    };
    let outcome = match outcome {
        Ok(mut t) => t.health().await.map_err(|e| format!("health: {e}")),
        Err(e) => Err(e),
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(%admin, plugin = %name, ok = outcome.is_ok(), "target plugin tested");
    let (ok, message) = match outcome {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    json(StatusCode::OK, &api::PluginHealth { plugin: name, ok, message, seconds })
}
