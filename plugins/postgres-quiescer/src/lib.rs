//! The PostgreSQL quiescer: an app-consistent point of a PostgreSQL cluster.
//!
//! Around the agent's filesystem freeze it holds one database session:
//!
//! 1. `prepare`: connect over TCP (the address must be granted) and authenticate
//!    (trust, password, MD5 or SCRAM-SHA-256).
//! 2. `freeze(deadline)`: `SET statement_timeout` to the deadline, `CHECKPOINT` (the data
//!    files hold everything committed, so recovery from the point replays little WAL),
//!    then `pg_backup_start(label, fast => true)` (`pg_start_backup(label, true, false)`
//!    before PostgreSQL 15): a non-exclusive backup, which forces full-page writes so
//!    that pages torn by the copy are repaired from WAL.
//! 3. The agent freezes the filesystems and captures the cut.
//! 4. `thaw`: `pg_backup_stop(false)` (`pg_stop_backup(false, false)` before 15) in the
//!    same session, then the session ends.
//!
//! A non-exclusive backup belongs to its session: if the agent dies or the connection
//! drops between freeze and thaw, PostgreSQL ends the backup itself. Nothing is ever
//! left stuck in backup mode, and the database never stops serving.
//!
//! Settings: `address` (required, `127.0.0.1:5432`; also grant it in `sockets`),
//! `user` (default `postgres`), `password` (optional), `database` (default `postgres`),
//! `label` (default `lifeboat`).

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use lifeboat_sdk::quiescer::Quiescer;
use lifeboat_sdk::{PluginError, Settings, setting};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Largest backend message accepted; larger is a protocol error, not an allocation.
const MAX_MESSAGE: usize = 16 << 20;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Params {
    address: String,
    user: String,
    password: Option<String>,
    database: String,
    label: String,
}

impl Params {
    /// Reads the settings; every error names the key.
    pub fn from_settings(s: &Settings) -> Result<Params, PluginError> {
        let address = setting(s, "address").ok_or_else(|| {
            PluginError::Invalid(
                "setting \"address\" is missing: the server's host:port, e.g. \"127.0.0.1:5432\" (grant it in sockets too)".into(),
            )
        })?;
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(PluginError::Invalid(format!(
                "setting \"address\" = {address:?}: expected an IP address and port such as 127.0.0.1:5432"
            )));
        }
        let label = setting(s, "label").unwrap_or("lifeboat");
        if label.is_empty()
            || label.len() > 64
            || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PluginError::Invalid(format!(
                "setting \"label\" = {label:?}: use 1 to 64 ASCII letters, digits, '-' or '_'"
            )));
        }
        Ok(Params {
            address: address.to_owned(),
            user: setting(s, "user").unwrap_or("postgres").to_owned(),
            password: setting(s, "password").map(str::to_owned),
            database: setting(s, "database").unwrap_or("postgres").to_owned(),
            label: label.to_owned(),
        })
    }
}

/// One authenticated session.
struct Session {
    stream: TcpStream,
    buf: BytesMut,
    /// Major server version (15 for 15.4).
    major: u32,
}

fn io_err(what: &str, e: std::io::Error) -> PluginError {
    PluginError::Retryable(format!("PostgreSQL {what}: {e}"))
}

fn error_text(body: &postgres_protocol::message::backend::ErrorResponseBody) -> String {
    let mut fields = body.fields();
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'S' => severity = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{severity} {code}: {message}")
}

impl Session {
    fn send(&mut self, out: &BytesMut) -> Result<(), PluginError> {
        self.stream.write_all(out).map_err(|e| io_err("send", e))
    }

    fn recv(&mut self) -> Result<Message, PluginError> {
        loop {
            if let Some(m) = Message::parse(&mut self.buf).map_err(|e| {
                PluginError::Internal(format!("PostgreSQL sent a malformed message: {e}"))
            })? {
                return Ok(m);
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(PluginError::Internal("PostgreSQL sent a message over 16 MiB".into()));
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).map_err(|e| io_err("receive", e))?;
            if n == 0 {
                return Err(PluginError::Retryable("PostgreSQL closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn connect(p: &Params) -> Result<Session, PluginError> {
        let stream = TcpStream::connect(p.address.as_str()).map_err(|e| {
            PluginError::Retryable(format!("cannot connect to PostgreSQL at {}: {e}", p.address))
        })?;
        let mut s = Session { stream, buf: BytesMut::new(), major: 0 };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", p.user.as_str()),
                ("database", p.database.as_str()),
                ("application_name", "lifeboat-quiescer"),
            ],
            &mut out,
        )
        .map_err(|e| PluginError::Invalid(format!("startup message: {e}")))?;
        s.send(&out)?;
        let password = || {
            p.password.as_deref().ok_or_else(|| {
                PluginError::Denied(format!(
                    "PostgreSQL asks user {:?} for a password and setting \"password\" is not set",
                    p.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut out = BytesMut::new();
            match s.recv()? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut out)
                        .map_err(|e| PluginError::Internal(e.to_string()))?;
                    s.send(&out)?;
                }
                Message::AuthenticationMd5Password(b) => {
                    let h = md5_hash(p.user.as_bytes(), password()?.as_bytes(), b.salt());
                    frontend::password_message(h.as_bytes(), &mut out)
                        .map_err(|e| PluginError::Internal(e.to_string()))?;
                    s.send(&out)?;
                }
                Message::AuthenticationSasl(b) => {
                    let mechs: Vec<String> =
                        b.mechanisms().map(|m| Ok(m.to_owned())).collect().unwrap_or_default();
                    if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(PluginError::Denied(format!(
                            "PostgreSQL offers SASL mechanisms {mechs:?}; this quiescer speaks SCRAM-SHA-256"
                        )));
                    }
                    let sc =
                        ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut out)
                        .map_err(|e| PluginError::Internal(e.to_string()))?;
                    s.send(&out)?;
                    scram = Some(sc);
                }
                Message::AuthenticationSaslContinue(b) => {
                    let sc = scram.as_mut().ok_or_else(|| {
                        PluginError::Internal("SASL continue without SASL".into())
                    })?;
                    sc.update(b.data()).map_err(|e| PluginError::Denied(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(sc.message(), &mut out)
                        .map_err(|e| PluginError::Internal(e.to_string()))?;
                    s.send(&out)?;
                }
                Message::AuthenticationSaslFinal(b) => {
                    let sc = scram
                        .as_mut()
                        .ok_or_else(|| PluginError::Internal("SASL final without SASL".into()))?;
                    sc.finish(b.data())
                        .map_err(|e| PluginError::Denied(format!("SCRAM server proof: {e}")))?;
                }
                Message::ParameterStatus(b) => {
                    if b.name().ok() == Some("server_version") {
                        let v = b.value().unwrap_or("");
                        s.major = v
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|m| m.parse().ok())
                            .unwrap_or(0);
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(b) => {
                    return Err(PluginError::Denied(format!(
                        "PostgreSQL refused the connection as {:?}: {}",
                        p.user,
                        error_text(&b)
                    )));
                }
                _ => {
                    return Err(PluginError::Denied(
                        "PostgreSQL asks for an authentication method this quiescer does not speak (use trust, password, md5 or scram-sha-256)".into(),
                    ));
                }
            }
        }
        if s.major == 0 {
            return Err(PluginError::Internal("PostgreSQL did not report server_version".into()));
        }
        Ok(s)
    }

    /// Runs `sql` (simple query protocol) and returns the first column of every row.
    fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>, PluginError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| PluginError::Internal(e.to_string()))?;
        self.send(&out)?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            match self.recv()? {
                Message::DataRow(r) => {
                    let first =
                        r.ranges().next().map_err(|e| PluginError::Internal(e.to_string()))?;
                    rows.push(
                        first
                            .flatten()
                            .map(|rg| String::from_utf8_lossy(&r.buffer()[rg]).into_owned()),
                    );
                }
                Message::ErrorResponse(b) => failed = Some(error_text(&b)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(PluginError::Internal(format!("PostgreSQL: {sql}: {e}"))),
            None => Ok(rows),
        }
    }

    fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.write_all(&out);
    }
}

/// The SQL of a backup start and stop for server major version `major`.
pub fn backup_sql(major: u32, label: &str) -> (String, &'static str) {
    if major >= 15 {
        (
            format!("SELECT pg_backup_start('{label}', true)"),
            "SELECT lsn FROM pg_backup_stop(false)",
        )
    } else {
        (
            format!("SELECT pg_start_backup('{label}', true, false)"),
            "SELECT lsn FROM pg_stop_backup(false, false)",
        )
    }
}

/// The quiescer: its settings and the session held from `prepare` to `thaw`.
pub struct Postgres {
    params: Params,
    session: Option<Session>,
    in_backup: bool,
}

impl Quiescer for Postgres {
    fn init(settings: Settings) -> Result<Self, PluginError> {
        Ok(Postgres { params: Params::from_settings(&settings)?, session: None, in_backup: false })
    }

    fn prepare(&mut self) -> Result<(), PluginError> {
        if let Some(old) = self.session.take() {
            old.close();
        }
        self.in_backup = false;
        self.session = Some(Session::connect(&self.params)?);
        Ok(())
    }

    fn freeze(&mut self, deadline_ms: u32) -> Result<(), PluginError> {
        let label = self.params.label.clone();
        let s = self
            .session
            .as_mut()
            .ok_or_else(|| PluginError::Internal("freeze before prepare".into()))?;
        s.query(&format!("SET statement_timeout = {}", deadline_ms.max(1)))?;
        s.query("CHECKPOINT")?;
        let (start, _) = backup_sql(s.major, &label);
        s.query(&start)?;
        self.in_backup = true;
        s.query("SET statement_timeout = 0")?;
        Ok(())
    }

    fn thaw(&mut self) -> Result<(), PluginError> {
        let Some(mut s) = self.session.take() else { return Ok(()) };
        let result = if std::mem::take(&mut self.in_backup) {
            let (_, stop) = backup_sql(s.major, &self.params.label);
            s.query(stop).map(|_| ())
        } else {
            Ok(())
        };
        // Ending the session also ends a backup whose stop failed.
        s.close();
        result
    }
}

lifeboat_sdk::export_quiescer!(Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kv: &[(&str, &str)]) -> Settings {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_are_checked() {
        let e = Params::from_settings(&settings(&[])).unwrap_err();
        assert!(matches!(e, PluginError::Invalid(ref m) if m.contains("address")));
        let e = Params::from_settings(&settings(&[("address", "db:5432")])).unwrap_err();
        assert!(matches!(e, PluginError::Invalid(ref m) if m.contains("address")));
        let e = Params::from_settings(&settings(&[
            ("address", "127.0.0.1:5432"),
            ("label", "x'; DROP"),
        ]))
        .unwrap_err();
        assert!(matches!(e, PluginError::Invalid(ref m) if m.contains("label")));
        let p = Params::from_settings(&settings(&[("address", "127.0.0.1:5432")])).unwrap();
        assert_eq!(
            (p.user.as_str(), p.database.as_str(), p.label.as_str()),
            ("postgres", "postgres", "lifeboat")
        );
    }

    #[test]
    fn backup_functions_follow_the_server_version() {
        assert!(backup_sql(15, "l").0.contains("pg_backup_start('l', true)"));
        assert!(backup_sql(16, "l").1.contains("pg_backup_stop(false)"));
        assert!(backup_sql(14, "l").0.contains("pg_start_backup('l', true, false)"));
        assert!(backup_sql(12, "l").1.contains("pg_stop_backup(false, false)"));
    }
}
