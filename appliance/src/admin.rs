//! Administrator accounts of the configuration server: first-run setup, argon2id password
//! hashes, session tokens with an expiry, logout, and a login rate limit.
//!
//! - **Setup.** While no administrator exists, `POST /api/v1/setup` creates the first one
//!   (the web wizard's first page). Afterwards it answers 409; nothing else can create an
//!   account without a session.
//! - **Passwords** are hashed with argon2id (the crate's defaults: 19 MiB, 2 passes), stored
//!   as PHC strings. At least [`MIN_PASSWORD`] characters.
//! - **Sessions.** A login returns a random 256-bit token, valid for [`SESSION_TTL`]. The
//!   store keeps only its sha256, so a copy of the database holds no usable token. Every
//!   admin request carries `Authorization: Bearer <token>`.
//! - **Rate limit.** After [`MAX_FAILURES`] failed logins from one address, or for one
//!   account name, within [`FAILURE_WINDOW`], further logins from it (or for it) answer 429
//!   until the window has passed, whether the password is right or not.
//! - **Agents.** The configuration server asks for no client certificate. An agent's
//!   certificate is therefore never an identity here: the admin API needs a session token
//!   whoever connects.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use crate::state::{State, StateError, now_ms};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work per request).
pub const MAX_PASSWORD: usize = 1024;
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per address or account within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The rate limit's window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input; names the field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is expected.
        reason: String,
    },
    /// Setup was already done.
    #[error("the appliance already has an administrator; log in instead")]
    AlreadySetUp,
    /// Wrong name or password (which one is not said).
    #[error("wrong name or password")]
    BadCredentials,
    /// Too many failures lately.
    #[error("too many failed logins; try again in {retry_after_s} s")]
    RateLimited {
        /// Seconds until the window has passed.
        retry_after_s: u64,
    },
    /// No session, or an expired or unknown token.
    #[error(
        "log in first: this endpoint needs `Authorization: Bearer <token>` from POST /api/v1/login"
    )]
    Unauthenticated,
    /// The store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A session handed to a client.
#[derive(Debug, Clone)]
pub struct Session {
    /// The bearer token.
    pub token: String,
    /// The administrator.
    pub name: String,
    /// When it expires.
    pub expires_unix_ms: u64,
}

/// The accounts side of the configuration server.
pub struct Admins {
    state: State,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl std::fmt::Debug for Admins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admins").finish()
    }
}

fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks an account name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(AdminError::Invalid {
            field: "name",
            reason: "expected 1 to 64 ASCII letters, digits, '.', '_' or '-'".into(),
        });
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), AdminError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(AdminError::Invalid {
            field: "password",
            reason: format!("expected {MIN_PASSWORD} to {MAX_PASSWORD} characters, got {n}"),
        });
    }
    Ok(())
}

impl Admins {
    /// The accounts kept in `state`.
    pub fn new(state: State) -> Admins {
        Admins { state, failures: Mutex::new(HashMap::new()) }
    }

    /// Whether the first-run setup is still to be done.
    pub fn setup_needed(&self) -> Result<bool, AdminError> {
        Ok(!self.state.has_admin()?)
    }

    /// Creates the first administrator and logs it in.
    pub fn setup(&self, name: &str, password: &str) -> Result<Session, AdminError> {
        check_name(name)?;
        check_password(password)?;
        if !self.setup_needed()? {
            return Err(AdminError::AlreadySetUp);
        }
        let hash = hash_password(password)?;
        if !self.state.create_first_admin(name, &hash)? {
            return Err(AdminError::AlreadySetUp);
        }
        tracing::info!(admin = name, "first administrator created");
        self.new_session(name)
    }

    fn limited(&self, keys: &[&str]) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
        keys.iter()
            .filter_map(|k| f.get(*k))
            .filter(|(_, n)| *n >= MAX_FAILURES)
            .map(|(since, _)| FAILURE_WINDOW.saturating_sub(since.elapsed()).as_secs().max(1))
            .max()
    }

    fn failed(&self, keys: &[&str]) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            let e = f.entry((*k).to_owned()).or_insert((Instant::now(), 0));
            e.1 += 1;
        }
    }

    /// Checks a password and opens a session; `from` is the client's address.
    pub fn login(&self, name: &str, password: &str, from: &str) -> Result<Session, AdminError> {
        let (by_addr, by_name) = (format!("addr:{from}"), format!("name:{name}"));
        let keys = [by_addr.as_str(), by_name.as_str()];
        if let Some(retry_after_s) = self.limited(&keys) {
            return Err(AdminError::RateLimited { retry_after_s });
        }
        let ok = match self.state.admin_hash(name)? {
            Some(h) if password.len() <= MAX_PASSWORD * 4 => verify_password(password, &h),
            _ => {
                // Same work for unknown names, so timing does not tell which names exist.
                let _ = hash_password(password.get(..MAX_PASSWORD).unwrap_or(password));
                false
            }
        };
        if !ok {
            self.failed(&keys);
            tracing::warn!(admin = name, from, "failed login");
            return Err(AdminError::BadCredentials);
        }
        self.new_session(name)
    }

    fn new_session(&self, name: &str) -> Result<Session, AdminError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| AdminError::Hash(e.to_string()))?;
        let token = hex::encode(raw);
        let expires_unix_ms = now_ms() + SESSION_TTL.as_millis() as u64;
        self.state.add_session(&token_key(&token), name, expires_unix_ms)?;
        Ok(Session { token, name: name.to_owned(), expires_unix_ms })
    }

    /// The administrator of a live session.
    pub fn check(&self, token: &str) -> Result<(String, u64), AdminError> {
        if token.is_empty() || token.len() > 128 {
            return Err(AdminError::Unauthenticated);
        }
        self.state.session(&token_key(token))?.ok_or(AdminError::Unauthenticated)
    }

    /// Ends a session.
    pub fn logout(&self, token: &str) -> Result<(), AdminError> {
        self.check(token)?;
        self.state.delete_session(&token_key(token))?;
        Ok(())
    }
}

fn hash_password(password: &str) -> Result<String, AdminError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AdminError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AdminError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Hash(e.to_string()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admins() -> (tempfile::TempDir, Admins) {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("s.db")).unwrap();
        (d, Admins::new(s))
    }

    #[test]
    fn setup_once_then_login_logout() {
        let (_d, a) = admins();
        assert!(a.setup_needed().unwrap());
        assert!(matches!(
            a.setup("bad name", "long enough pw!"),
            Err(AdminError::Invalid { field: "name", .. })
        ));
        assert!(matches!(
            a.setup("root", "short"),
            Err(AdminError::Invalid { field: "password", .. })
        ));
        assert!(a.setup_needed().unwrap(), "nothing half-written by refused setups");
        let s = a.setup("root", "correct horse battery").unwrap();
        assert_eq!(a.check(&s.token).unwrap().0, "root");
        assert!(matches!(a.setup("other", "correct horse battery"), Err(AdminError::AlreadySetUp)));
        let s2 = a.login("root", "correct horse battery", "127.0.0.1").unwrap();
        assert_ne!(s.token, s2.token);
        a.logout(&s2.token).unwrap();
        assert!(matches!(a.check(&s2.token), Err(AdminError::Unauthenticated)));
        assert!(a.check(&s.token).is_ok(), "other sessions stay");
        assert!(matches!(a.check(""), Err(AdminError::Unauthenticated)));
        assert!(matches!(a.check("nope"), Err(AdminError::Unauthenticated)));
    }

    #[test]
    fn failed_logins_are_rate_limited_per_address_and_name() {
        let (_d, a) = admins();
        a.setup("root", "correct horse battery").unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                a.login("root", "wrong password!", "10.0.0.1"),
                Err(AdminError::BadCredentials)
            ));
        }
        // The right password from that address is refused too, until the window passes.
        let e = a.login("root", "correct horse battery", "10.0.0.1").unwrap_err();
        assert!(matches!(e, AdminError::RateLimited { retry_after_s } if retry_after_s > 0));
        // And the account is limited from elsewhere.
        assert!(matches!(
            a.login("root", "correct horse battery", "10.0.0.2"),
            Err(AdminError::RateLimited { .. })
        ));
        // Another account from another address is not.
        assert!(matches!(
            a.login("nobody", "whatever it is", "10.0.0.3"),
            Err(AdminError::BadCredentials)
        ));
    }
}
