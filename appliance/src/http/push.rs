//! `POST /api/v1/machines/install`: push install over SSH, as a job.

use super::*;
use crate::config_server::push::{self, Credentials, PushError, PushJob};

/// The setting that keeps a host's credentials (sealed).
fn kept_name(host: &str, port: u16) -> String {
    format!("push-credentials/{host}:{port}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    user: String,
    password: Option<String>,
    private_key: Option<String>,
    key_passphrase: Option<String>,
}

fn keep(ctx: &ConfigServerCtx, host: &str, port: u16, c: &Credentials) -> Result<(), ApiError> {
    let name = kept_name(host, port);
    let body = serde_json::to_vec(&Kept {
        user: c.user.clone(),
        password: c.password.clone(),
        private_key: c.private_key.clone(),
        key_passphrase: c.key_passphrase.clone(),
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let sealed = crate::control::seal(&ctx.keys, &name, &body)
        .map_err(|e| ApiError::internal(format!("cannot seal the credentials: {e}")))?;
    ctx.state.set_setting(&name, &hex::encode(sealed)).map_err(internal)
}

fn kept(ctx: &ConfigServerCtx, host: &str, port: u16) -> Result<Option<Credentials>, ApiError> {
    let name = kept_name(host, port);
    let Some(text) = ctx.state.setting(&name).map_err(internal)? else { return Ok(None) };
    let sealed = hex::decode(text).map_err(|e| ApiError::internal(e.to_string()))?;
    let body = crate::control::open(&ctx.keys, &name, &sealed).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "credentials_unreadable",
            format!("the credentials kept for {host}:{port} do not open ({e}); give them again"),
        )
    })?;
    let k: Kept = serde_json::from_slice(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Some(Credentials {
        user: k.user,
        password: k.password,
        private_key: k.private_key,
        key_passphrase: k.key_passphrase,
    }))
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("invalid", message)
}

/// `POST /api/v1/machines/install`
#[utoipa::path(
    post,
    path = "/api/v1/machines/install",
    tag = "machines",
    summary = "Installs the agent on a machine over SSH (push install) as a job: checks the host key against the one confirmed (without one, the job stops and names the key presented), logs in, becomes root (sudo), checks the distribution, systemd and the disks, copies the agent's package, installs and registers it with a fresh passphrase. Each step is the job's message; its result is an InstallReport. Failures start with a code: unreachable, host_key_unconfirmed, host_key_mismatch, wrong_credentials, no_root, unsupported_distribution, no_systemd, disk_not_found, failed.",
    request_body = api::InstallRequest,
    responses(
        (status = 202, description = "the job", body = api::JobInfo),
        (status = 400, description = "error", body = api::ApiError),
        (status = 409, description = "no package to install", body = api::ApiError),
        AdminErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn install(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    let (_, admin, _) = authenticated(&ctx, &req)?;
    let host_origin = request_origin(&req);
    let r: api::InstallRequest = body_json(req, ADMIN_BODY).await?;
    let host = r.host.trim().to_owned();
    if host.is_empty()
        || host.len() > 253
        || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        return Err(invalid(format!("host: {:?} is not a host name or address", r.host)));
    }
    let port = r.port.unwrap_or(22);
    if port == 0 {
        return Err(invalid("port: 1 to 65535".into()));
    }
    if r.user.is_empty() || r.user.len() > 64 || r.user.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(invalid("user: 1 to 64 characters, no spaces".into()));
    }
    if let Some(k) = &r.host_key
        && !push::valid_fingerprint(k)
    {
        return Err(invalid(format!(
            "host_key: {k:?} is not SHA256:<43 base64 characters> (ssh-keygen -lf prints it)"
        )));
    }
    for d in &r.disks {
        if !d.starts_with('/') || d.len() > 255 || d.chars().any(|c| c.is_control()) {
            return Err(invalid(format!("disks: {d:?} is not an absolute path")));
        }
    }
    let appliance_url = match r.appliance_url.clone().or(host_origin) {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => return Err(invalid("appliance_url: needed (the request had no Host)".into())),
    };
    api::check_https_url(&appliance_url).map_err(|e| invalid(format!("appliance_url: {e}")))?;
    let given = r.password.is_some() || r.private_key.is_some();
    let credentials = if given {
        Credentials {
            user: r.user.clone(),
            password: r.password.clone(),
            private_key: r.private_key.clone(),
            key_passphrase: r.key_passphrase.clone(),
        }
    } else {
        match kept(&ctx, &host, port)? {
            Some(c) if c.user == r.user => c,
            _ => {
                return Err(invalid(format!(
                    "password or private_key: needed (no credentials are kept for {}@{host}:{port})",
                    r.user
                )));
            }
        }
    };
    let downloads = ctx.downloads.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_package",
            "this appliance serves no agent package (config_server.downloads)",
        )
    })?;
    let Some(deb) = downloads.agent_deb().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_package",
            "no lifeboat-agent_*_amd64.deb among the downloads",
        ));
    };
    let bytes = downloads.get(&deb.name).map(|(_, b)| b).unwrap_or_default();
    if r.keep_credentials && given {
        keep(&ctx, &host, port, &credentials)?;
    }
    let passphrase = crate::config_server::new_passphrase(&ctx.state)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let job = PushJob {
        host: host.clone(),
        port,
        credentials,
        host_key: r.host_key.clone(),
        disks: r.disks.clone(),
        appliance_url,
        ca_fingerprint: ctx.pki.fingerprints().0,
        passphrase,
        package: (deb.name.clone(), bytes, deb.sha256.clone()),
    };
    let id = ctx
        .state
        .create_job(api::JobKind::Install, None, &format!("installing the agent on {host}:{port}"))
        .map_err(internal)?;
    tracing::info!(%admin, %host, port, user = %r.user, job = %id, "push install started");
    let state = ctx.state.clone();
    tokio::spawn(async move {
        let progress_state = state.clone();
        let outcome = push::install(&job, |f, step| {
            let _ = progress_state.job_progress(id, f, step);
        })
        .await;
        match outcome {
            Ok(report) => {
                let result = serde_json::to_string(&api::InstallReport {
                    host_key: report.host_key,
                    os: report.os,
                    machine_id: report.machine_id.clone(),
                    running: report.running,
                    steps: report.steps,
                })
                .ok();
                tracing::info!(host = %job.host, machine = ?report.machine_id, "push install done");
                let _ = state.finish_job(
                    id,
                    true,
                    "the agent is installed and registered",
                    result.as_deref(),
                );
            }
            Err(e) => {
                let presented = match &e {
                    PushError::HostKeyUnconfirmed { presented, .. }
                    | PushError::HostKeyMismatch { presented, .. } => Some(presented.clone()),
                    _ => None,
                };
                let result = serde_json::to_string(&api::InstallReport {
                    host_key: presented,
                    os: None,
                    machine_id: None,
                    running: false,
                    steps: vec![],
                })
                .ok();
                tracing::warn!(host = %job.host, error = %e, "push install failed");
                let _ = state.finish_job(id, false, &e.to_string(), result.as_deref());
            }
        }
    });
    accepted(&ctx.state, id)
}
