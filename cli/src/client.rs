//! The session kept between commands, and the typed calls of the configuration server's
//! API: every request body is a `lifeboat_api` type, every answer is decoded into one
//! (error answers into [`lifeboat_api::ApiError`]).

use std::io::BufRead as _;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use lifeboat_api as api;
use lifeboat_net::tls::{self, Trust};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Cli;

/// What is kept between commands.
#[derive(Serialize, Deserialize)]
pub struct SessionFile {
    pub url: String,
    pub fingerprint: String,
    pub token: String,
    pub name: String,
    pub expires_unix_ms: u64,
}

/// A failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

/// What a command prints: the API's answer as JSON (`--json`), or else its text.
pub struct Output {
    /// The answer as JSON, or why it could not be written.
    pub json: Result<String, String>,
    pub text: String,
}

impl Output {
    /// The typed answer `answer`, shown as `text` without `--json`.
    pub fn new<T: Serialize>(answer: &T, text: impl Into<String>) -> Output {
        let json = serde_json::to_string(answer).map_err(|e| format!("the answer as JSON: {e}"));
        Output { json, text: text.into() }
    }
}

pub fn session_path(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(p) = &cli.session {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| fail(2, "no HOME or XDG_CONFIG_HOME: give --session"))?;
    Ok(base.join("lifeboat/session.json"))
}

fn load_session(cli: &Cli) -> Result<SessionFile, Failure> {
    let p = session_path(cli)?;
    let text = std::fs::read_to_string(&p).map_err(|_| {
        fail(3, format!("not logged in (no {}): run `lifeboat login`", p.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        fail(3, format!("{} is damaged ({e}): run `lifeboat login` again", p.display()))
    })
}

/// Writes the session file (mode 0600), making its folder if need be.
pub fn save_session(cli: &Cli, s: &SessionFile) -> Result<(), Failure> {
    let p = session_path(cli)?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(1, format!("{}: {e}", dir.display())))?;
    }
    let json = serde_json::to_vec_pretty(s)
        .map_err(|e| fail(1, format!("cannot write the session as JSON: {e}")))?;
    lifeboat_common::fs::write_atomic(&p, &json, Some(0o600))
        .map_err(|e| fail(1, format!("{}: {e}", p.display())))
}

/// The first line of standard input, without its line end; `what` names it in errors.
pub fn stdin_line(what: &str) -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(2, format!("cannot read the {what} from standard input: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub fn password() -> Result<String, Failure> {
    if let Ok(p) = std::env::var("LIFEBOAT_PASSWORD") {
        return Ok(p);
    }
    let p = stdin_line("password")?;
    if p.is_empty() {
        return Err(fail(2, "no password: set LIFEBOAT_PASSWORD or give it on standard input"));
    }
    Ok(p)
}

pub fn client(url: &str, fingerprint: &str) -> Result<lifeboat_net::Client, Failure> {
    let config = tls::client_config(Trust::Fingerprint(fingerprint.to_owned()), None)
        .map_err(|e| fail(2, format!("--fingerprint: {e}")))?;
    lifeboat_net::Client::new(url, config).map_err(|e| fail(2, format!("--url: {e}")))
}

/// One API call with body `body` (none: an empty body), its answer decoded as `Ans`; a
/// non-2xx answer becomes the failure with the matching exit code.
pub fn call<Req: Serialize, Ans: DeserializeOwned>(
    c: &lifeboat_net::Client,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Req>,
) -> Result<Ans, Failure> {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| fail(3, "bad token"))?;
        headers.insert(http::header::AUTHORIZATION, v);
    }
    // One runtime for the whole command: a job's polling reuses its connection.
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = match RT.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(1, e.to_string()))?;
            RT.get_or_init(|| rt)
        }
    };
    let what = format!("{method} {path}");
    let answer = match body {
        Some(b) => {
            let bytes = serde_json::to_vec(b)
                .map_err(|e| fail(1, format!("{what}: cannot write the request as JSON: {e}")))?;
            headers
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            rt.block_on(c.request(method, path, Bytes::from(bytes), headers))
        }
        None => rt.block_on(c.request(method, path, Bytes::new(), headers)),
    };
    let (status, _, bytes) = answer.map_err(|e| fail(1, e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                1,
                format!("the appliance's answer to {what} is not what this lifeboat expects: {e}"),
            )
        });
    }
    let message = serde_json::from_slice::<api::ApiError>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| status.to_string());
    let code = match status {
        StatusCode::BAD_REQUEST => 2,
        StatusCode::UNAUTHORIZED => 3,
        StatusCode::NOT_FOUND => 4,
        StatusCode::CONFLICT => 5,
        StatusCode::TOO_MANY_REQUESTS => 6,
        _ => 1,
    };
    Err(fail(code, message))
}

/// A logged-in session: the kept session file and a client for its appliance.
pub struct Session {
    /// What is kept between commands.
    pub file: SessionFile,
    client: lifeboat_net::Client,
}

impl Session {
    /// The kept session (exit code 3 if there is none).
    pub fn load(cli: &Cli) -> Result<Session, Failure> {
        let file = load_session(cli)?;
        let client = client(&file.url, &file.fingerprint)?;
        Ok(Session { file, client })
    }

    /// `method path` with body `body` (none: an empty body).
    pub fn call<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Ans, Failure> {
        call(&self.client, method, path, Some(&self.file.token), body)
    }

    /// `method path` with the JSON body `body`.
    pub fn send<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Req,
    ) -> Result<Ans, Failure> {
        self.call(method, path, Some(body))
    }

    /// `method path` with an empty body.
    pub fn ask<Ans: DeserializeOwned>(&self, method: Method, path: &str) -> Result<Ans, Failure> {
        self.call(method, path, None::<&api::Empty>)
    }

    /// `GET path`.
    pub fn get<Ans: DeserializeOwned>(&self, path: &str) -> Result<Ans, Failure> {
        self.ask(Method::GET, path)
    }

    /// `POST path` with body `body` (none: an empty body), which starts a job (`202` with
    /// the job); the job once it ended if `wait`, else as it started.
    pub fn job<Req: Serialize>(
        &self,
        path: &str,
        body: Option<&Req>,
        wait: bool,
        quiet: bool,
    ) -> Result<api::JobInfo, Failure> {
        let job: Option<api::JobInfo> = self.call(Method::POST, path, body)?;
        let job = job.ok_or_else(|| fail(1, "the appliance answered no job id"))?;
        if wait { self.wait_job(job, quiet) } else { Ok(job) }
    }

    /// Waits for job `job` to end, showing its progress on standard error (a progress bar
    /// on a terminal, a line per change otherwise; nothing if `quiet`); a failed job is a
    /// failure with its message.
    pub fn wait_job(&self, mut job: api::JobInfo, quiet: bool) -> Result<api::JobInfo, Failure> {
        use std::io::IsTerminal as _;
        let id = job.id;
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let style = indicatif::ProgressStyle::with_template(
                "job {prefix} [{bar:30}] {percent:>3}% {msg}",
            )
            .map_err(|e| fail(1, format!("progress bar: {e}")))?;
            let b = indicatif::ProgressBar::new(1000);
            b.set_style(style.progress_chars("=> "));
            b.set_prefix(id.to_string());
            Some(b)
        } else {
            None
        };
        let mut last = String::new();
        loop {
            let progress = job.progress.clamp(0.0, 1.0);
            let message = job.message.clone();
            if let Some(b) = &bar {
                b.set_position(permille(progress));
                b.set_message(message.clone());
            } else {
                let line = format!("job {id}: {:>3.0} % {message}", progress * 100.0);
                if !quiet && line != last {
                    eprintln!("{line}");
                    last = line;
                }
            }
            match job.state.as_str() {
                "succeeded" => {
                    if let Some(b) = &bar {
                        b.finish_with_message(message);
                    }
                    return Ok(job);
                }
                "failed" => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    return Err(fail(1, format!("job {id} failed: {message}")));
                }
                _ => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
            job = self.get(&format!("/api/v1/jobs/{id}"))?;
        }
    }
}

/// A job's progress (0 to 1) in thousandths, the progress bar's unit.
#[expect(
    clippy::cast_possible_truncation,
    reason = "float to int saturates; the fraction is dropped on purpose"
)]
fn permille(progress: f64) -> u64 {
    (progress * 1000.0) as u64
}

/// Job `job`'s result as `T`: none while it has none, or if it is not a `T`.
pub fn job_result<T: DeserializeOwned>(job: &api::JobInfo) -> Option<T> {
    job.result.as_ref().and_then(|r| T::deserialize(r).ok())
}
