//! The administrator's session: setup, login, logout, whoami.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session, SessionFile, call, client, password, save_session};
use crate::{Cli, Connect};

/// `lifeboat setup`: creates the first administrator and logs in.
pub fn setup(cli: &Cli, c: &Connect, setup_token: &str) -> Result<Output, Failure> {
    let request = api::SetupRequest {
        setup_token: setup_token.to_owned(),
        name: c.name.clone(),
        password: password()?,
    };
    let shown = open_session(cli, c, "/api/v1/setup", &request)?;
    Ok(Output::new(&shown, format!("administrator {} created and logged in", c.name)))
}

/// `lifeboat login`.
pub fn login(cli: &Cli, c: &Connect) -> Result<Output, Failure> {
    let credentials = api::Credentials { name: c.name.clone(), password: password()? };
    let shown = open_session(cli, c, "/api/v1/login", &credentials)?;
    Ok(Output::new(&shown, format!("logged in as {}", c.name)))
}

/// Opens a session through `path` (setup or login) with `body` and keeps it; the answer
/// without its token.
fn open_session<B: serde::Serialize>(
    cli: &Cli,
    c: &Connect,
    path: &str,
    body: &B,
) -> Result<api::SessionInfo, Failure> {
    let client = client(&c.url, &c.fingerprint)?;
    let mut v: api::SessionInfo = call(&client, Method::POST, path, None, Some(body))?;
    let s = SessionFile {
        url: c.url.clone(),
        fingerprint: c.fingerprint.clone(),
        token: v.token.take().unwrap_or_default(),
        name: v.name.clone(),
        expires_unix_ms: v.expires_unix_ms,
    };
    save_session(cli, &s)?;
    Ok(v)
}

/// `lifeboat logout`: ends the session and forgets it.
pub fn logout(cli: &Cli) -> Result<Output, Failure> {
    let v: api::Empty = Session::load(cli)?.ask(Method::POST, "/api/v1/logout")?;
    let _ = std::fs::remove_file(crate::client::session_path(cli)?);
    Ok(Output::new(&v, "logged out"))
}

/// `lifeboat whoami`.
pub fn whoami(cli: &Cli) -> Result<Output, Failure> {
    let v: api::SessionInfo = Session::load(cli)?.get("/api/v1/session")?;
    // The name quoted, as it always was shown.
    let t = format!("{:?} (session ends at {} ms)", v.name, v.expires_unix_ms);
    Ok(Output::new(&v, t))
}
