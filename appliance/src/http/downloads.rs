//! `/downloads/`: the agent packages, their SHA-256 and the installer, for anyone who reaches
//! the configuration server (nothing in them is secret; what they may be trusted for is in
//! the digests an administrator is shown); `GET /api/v1/downloads`: the same list and the
//! one-line install command, for administrators.

use super::*;
use crate::config_server::downloads::{self, Downloads};

fn bytes_answer(content_type: &str, body: bytes::Bytes) -> Answer {
    use http_body_util::BodyExt as _;
    let full = http_body_util::Full::new(body).map_err(|never| match never {}).boxed_unsync();
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(full)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn served(ctx: &ConfigServerCtx) -> Result<&Downloads, ApiError> {
    ctx.downloads.as_deref().ok_or_else(|| {
        ApiError::not_found(
            "no_downloads",
            "this appliance serves no packages (config_server.downloads)",
        )
    })
}

/// `GET /downloads/`: `SHA256SUMS`.
pub(super) async fn index(extract::State(ctx): extract::State<Arc<ConfigServerCtx>>) -> Answer {
    let d = served(&ctx)?;
    bytes_answer("text/plain; charset=utf-8", d.sums().into())
}

/// `GET /downloads/{name}`: a package, `SHA256SUMS` or `install.sh`.
pub(super) async fn file(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    Path(name): Path<String>,
) -> Answer {
    let d = served(&ctx)?;
    match name.as_str() {
        "SHA256SUMS" => bytes_answer("text/plain; charset=utf-8", d.sums().into()),
        "install.sh" => {
            let fp = ctx.pki.fingerprints().0;
            bytes_answer("text/x-shellscript; charset=utf-8", d.installer(&fp).into())
        }
        _ => match d.get(&name) {
            Some((f, body)) => {
                let kind = if f.name.ends_with(".deb") {
                    "application/vnd.debian.binary-package"
                } else {
                    "application/octet-stream"
                };
                bytes_answer(kind, body)
            }
            None => {
                Err(ApiError::not_found("not_found", format!("no such file: /downloads/{name}")))
            }
        },
    }
}

/// `GET /api/v1/downloads`
#[utoipa::path(
    get,
    path = "/api/v1/downloads",
    tag = "machines",
    summary = "The agent packages served at /downloads/ with their SHA-256, and the one-line command that installs and registers the agent on a machine (for the origin given, default the request's Host).",
    params(
        ("origin" = Option<String>, Query, description = "https://HOST[:PORT] the machines reach the appliance at")
    ),
    responses(
        (status = 200, description = "downloads", body = api::Downloads),
        (status = 400, description = "bad origin", body = api::ApiError),
        SessionErrors
    ),
    security(("session" = [])),
)]
pub(super) async fn list(
    extract::State(ctx): extract::State<Arc<ConfigServerCtx>>,
    req: Req,
) -> Answer {
    authenticated(&ctx, &req)?;
    let origin = match req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("origin=")).map(str::to_owned))
    {
        Some(o) => percent_decode(&o).ok_or_else(|| {
            ApiError::bad_request("bad_origin", "origin: not valid percent-encoding")
        })?,
        None => request_origin(&req).unwrap_or_default(),
    };
    let Some(d) = ctx.downloads.as_deref() else {
        return json(
            StatusCode::OK,
            &api::Downloads {
                enabled: false,
                files: vec![],
                installer_sha256: String::new(),
                install_command: String::new(),
            },
        );
    };
    if !downloads::valid_origin(&origin) {
        return Err(ApiError::bad_request(
            "bad_origin",
            format!(
                "origin: {origin:?} is not https://HOST[:PORT] (host: letters, digits, '.', '-', or [IPv6])"
            ),
        ));
    }
    let installer = d.installer(&ctx.pki.fingerprints().0);
    let installer_sha256 = downloads::sha256_hex(&installer);
    let install_command = if d.agent_deb().is_some() {
        downloads::install_command(&origin, &installer_sha256)
    } else {
        String::new()
    };
    let files = d
        .files()
        .iter()
        .map(|f| api::DownloadFile { name: f.name.clone(), size: f.size, sha256: f.sha256.clone() })
        .collect();
    json(
        StatusCode::OK,
        &api::Downloads { enabled: true, files, installer_sha256, install_command },
    )
}

/// `%XX` decoding of a query value (`+` is a plus: origins have no spaces).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
