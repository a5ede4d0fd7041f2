//! The appliance's certificate authorities and the recovery passphrase.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session, save_session, stdin_line};
use crate::{CaCmd, Cli, RecoveryCmd};

/// `lifeboat ca status|rotate`.
pub fn ca(cli: &Cli, cmd: &CaCmd) -> Result<Output, Failure> {
    let mut s = Session::load(cli)?;
    let v: api::CaStatus = match cmd {
        CaCmd::Status => s.get("/api/v1/ca")?,
        CaCmd::Rotate { force } => {
            let v: api::CaStatus =
                s.send(Method::POST, "/api/v1/ca/rotate", &api::CaRotate { force: *force })?;
            // The configuration server presents the active CA's certificates: the session
            // pins it from now on.
            if v.active != s.file.fingerprint {
                s.file.fingerprint = v.active.clone();
                save_session(cli, &s.file)?;
            }
            v
        }
    };
    let behind = v.machines.iter().filter(|m| !m.on_active_ca && !m.revoked).count();
    let t = format!(
        "phase {}; active CA {}{}; {behind} machine(s) not yet on the active CA",
        v.phase,
        v.active,
        v.next.as_deref().map(|n| format!(", next {n}")).unwrap_or_default()
    );
    Ok(Output::new(&v, t))
}

/// `lifeboat recovery-passphrase status|set`.
pub fn recovery_passphrase(cli: &Cli, cmd: &RecoveryCmd) -> Result<Output, Failure> {
    match cmd {
        RecoveryCmd::Status => {
            let v: api::RecoveryStatus = Session::load(cli)?.get("/api/v1/recovery-passphrase")?;
            let t = match (v.set, v.catalogue_written_unix_ms) {
                (true, Some(ms)) => format!("set; catalogue written at the target at {ms} ms"),
                (true, None) => "set; the catalogue is not written yet".into(),
                (false, _) => {
                    "not set: a fresh appliance could not recover this site's catalogue".into()
                }
            };
            Ok(Output::new(&v, t))
        }
        RecoveryCmd::Set => {
            let passphrase = match std::env::var("LIFEBOAT_RECOVERY_PASSPHRASE") {
                Ok(p) => p,
                Err(_) => stdin_line("passphrase")?,
            };
            let body = api::RecoveryPassphrase { passphrase };
            let v: api::RecoveryStatus =
                Session::load(cli)?.send(Method::PUT, "/api/v1/recovery-passphrase", &body)?;
            Ok(Output::new(&v, "recovery passphrase set; keep it away from this appliance"))
        }
    }
}
