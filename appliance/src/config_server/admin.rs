//! Administrator accounts of the configuration server: first-run setup, argon2id password
//! hashes, session tokens with an expiry, logout, and a login rate limit.
//!
//! - **Setup.** While no administrator exists, `POST /api/v1/setup` creates the first one
//!   (the web wizard's first page), given the appliance's one-time setup token: made on
//!   the appliance itself at first start (about 100 random bits, kept in the state store),
//!   shown on its console and by `lifeboat-appliance setup-token`, so that whoever reaches
//!   443 first cannot claim a fresh appliance. A wrong token answers 403
//!   `bad_setup_token`; setup consumes it. Afterwards setup answers 409; nothing else can
//!   create an account without a session.
//! - **Passwords** are hashed with argon2id (the crate's defaults: 19 MiB, 2 passes), stored
//!   as PHC strings. At least [`MIN_PASSWORD`] characters.
//! - **Sessions.** A login returns a random 256-bit token, valid for [`SESSION_TTL`]. The
//!   store keeps only its sha256, so a copy of the database holds no usable token. Every
//!   admin request carries `Authorization: Bearer <token>`.
//! - **Rate limit, per source.** After [`MAX_FAILURES`] failed logins from one source
//!   (an IPv4 address, or an IPv6 /64) within [`FAILURE_WINDOW`], that source is answered
//!   429 until the window has passed, whether the password is right or not. Checking and
//!   recording are one step: a login reserves its place among the source's failures
//!   before the password is hashed, so parallel guesses from one source get no more tries
//!   than serial ones. There is no per-account lockout: a stranger failing logins for
//!   `admin` from anywhere never locks the administrator out of their own address.
//! - **Bounded work.** Every login checks the password with argon2id exactly once, against
//!   the account's hash or, for a name that does not exist, against a fixed hash with the
//!   same parameters, so the time does not tell names apart. At most
//!   [`MAX_CONCURRENT_HASHES`] hashes run at once and [`MAX_WAITING_HASHES`] wait; more
//!   are answered 429 `busy` at once. Names over 64 characters and passwords over
//!   [`MAX_PASSWORD`] characters are refused before anything is looked up; the HTTP layer
//!   reads at most a few KiB of an unauthenticated request's body.
//! - **Agents.** The configuration server asks for no client certificate. An agent's
//!   certificate is therefore never an identity here: the admin API needs a session token
//!   whoever connects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use crate::store::{State, StateError, now_ms};

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
/// Password hashes (19 MiB of memory each) computed at once.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// Logins waiting for a hash slot; more are refused (429 `busy`) at once.
pub const MAX_WAITING_HASHES: usize = 16;
/// Sources remembered by a [`SourceLimiter`]; past it the expired ones are dropped, and
/// while it is still full new sources are refused.
pub const MAX_SOURCES: usize = 65_536;

/// The setting that holds the setup token until setup consumes it.
const SETUP_TOKEN: &str = "setup_token";

/// The setup token of the appliance whose state is `state`, while setup is still to be
/// done: made the first time it is asked for (20 characters of Crockford base32, about
/// 100 bits, in groups of five); `None` once an administrator exists.
pub fn setup_token(state: &State) -> Result<Option<String>, AdminError> {
    if state.has_admin()? {
        return Ok(None);
    }
    if let Some(t) = state.setting(SETUP_TOKEN)?.filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| AdminError::Hash(e.to_string()))?;
    let chars: Vec<char> = raw.iter().map(|b| char::from(ALPHABET[usize::from(b & 31)])).collect();
    let token = chars.chunks(5).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-");
    state.set_setting(SETUP_TOKEN, &token)?;
    Ok(Some(token))
}

/// A token as typed: case, spaces and dashes do not matter, and the letters Crockford
/// base32 leaves out are read as the digits they look like.
fn normalise_token(t: &str) -> String {
    t.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect()
}

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
    /// The setup token is missing or wrong.
    #[error(
        "wrong setup token: give the token shown on the appliance's console (or by \
         `lifeboat-appliance setup-token` on the appliance)"
    )]
    BadSetupToken,
    /// Wrong name or password (which one is not said).
    #[error("wrong name or password")]
    BadCredentials,
    /// Too many failures lately.
    #[error("too many failed attempts from this address; try again in {retry_after_s} s")]
    RateLimited {
        /// Seconds until the window has passed.
        retry_after_s: u64,
    },
    /// Too many logins are being checked right now.
    #[error("the appliance is busy checking other logins; try again in a few seconds")]
    Busy,
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
    logins: SourceLimiter,
    registrations: SourceLimiter,
    hashing: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    verifications: AtomicU64,
}

impl std::fmt::Debug for Admins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admins").finish()
    }
}

/// The key of a source: its IPv4 address, or the /64 of its IPv6 address (one host
/// usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Failed attempts per source within [`FAILURE_WINDOW`], with the attempts in flight
/// counted as failures until they are decided, so parallel tries get no more than serial
/// ones. Used for logins and for agent registrations.
#[derive(Debug, Default)]
pub struct SourceLimiter {
    sources: Mutex<HashMap<String, Source>>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    since: Instant,
    failures: u32,
    in_flight: u32,
}

/// One attempt's place among its source's failures; dropping it without a verdict
/// gives the place back.
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a SourceLimiter,
    key: String,
    decided: bool,
}

impl SourceLimiter {
    /// Reserves a place for one attempt from `key`, or says how long to wait.
    pub fn begin(&self, key: &str) -> Result<Attempt<'_>, AdminError> {
        let mut m = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_SOURCES {
            m.retain(|_, s| s.in_flight > 0 || s.since.elapsed() < FAILURE_WINDOW);
        }
        if m.len() >= MAX_SOURCES && !m.contains_key(key) {
            return Err(AdminError::RateLimited { retry_after_s: FAILURE_WINDOW.as_secs() });
        }
        let s = m.entry(key.to_owned()).or_insert(Source {
            since: Instant::now(),
            failures: 0,
            in_flight: 0,
        });
        if s.in_flight == 0 && s.since.elapsed() >= FAILURE_WINDOW {
            *s = Source { since: Instant::now(), failures: 0, in_flight: 0 };
        }
        if s.failures + s.in_flight >= MAX_FAILURES {
            let left = FAILURE_WINDOW.saturating_sub(s.since.elapsed()).as_secs().max(1);
            return Err(AdminError::RateLimited { retry_after_s: left });
        }
        s.in_flight += 1;
        Ok(Attempt { limiter: self, key: key.to_owned(), decided: false })
    }

    fn end(&self, key: &str, failed: bool) {
        let mut m = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get_mut(key) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if failed {
                if s.failures == 0 {
                    s.since = Instant::now();
                }
                s.failures += 1;
            } else if s.in_flight == 0 && s.failures == 0 {
                m.remove(key);
            }
        }
    }
}

impl Attempt<'_> {
    /// The attempt failed: it counts against its source.
    pub fn failed(mut self) {
        self.decided = true;
        self.limiter.end(&self.key, true);
    }

    /// The attempt succeeded: its place is given back.
    pub fn succeeded(mut self) {
        self.decided = true;
        self.limiter.end(&self.key, false);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.limiter.end(&self.key, false);
        }
    }
}

/// A hash of a random password with the default parameters: what a login for a name
/// that does not exist is checked against, so it costs what a real check costs.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut pw = [0u8; 32];
        let _ = getrandom::fill(&mut pw);
        hash_password(&hex::encode(pw)).unwrap_or_default()
    })
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
        Admins {
            state,
            logins: SourceLimiter::default(),
            registrations: SourceLimiter::default(),
            hashing: tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES),
            waiting: AtomicUsize::new(0),
            verifications: AtomicU64::new(0),
        }
    }

    /// Failed agent registrations per source (a wrong, used or expired passphrase), limited
    /// like logins.
    pub fn registrations(&self) -> &SourceLimiter {
        &self.registrations
    }

    /// Password verifications (argon2id evaluations of a login) so far, for tests.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether the first-run setup is still to be done.
    pub fn setup_needed(&self) -> Result<bool, AdminError> {
        Ok(!self.state.has_admin()?)
    }

    /// Creates the first administrator and logs it in.
    pub fn setup(&self, token: &str, name: &str, password: &str) -> Result<Session, AdminError> {
        check_name(name)?;
        check_password(password)?;
        if !self.setup_needed()? {
            return Err(AdminError::AlreadySetUp);
        }
        let want = self.state.setting(SETUP_TOKEN)?.unwrap_or_default();
        // Compared as digests, so the time taken says nothing about the token.
        let digest = |t: &str| Sha256::digest(normalise_token(t).as_bytes());
        if want.is_empty() || digest(token) != digest(&want) {
            return Err(AdminError::BadSetupToken);
        }
        let hash = hash_password(password)?;
        if !self.state.create_first_admin(name, &hash)? {
            return Err(AdminError::AlreadySetUp);
        }
        self.state.set_setting(SETUP_TOKEN, "")?;
        tracing::info!(admin = name, "first administrator created");
        self.new_session(name, &hash)
    }

    /// Checks a password and opens a session; `from` is the client's address. See the
    /// module documentation for the limits.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Session, AdminError> {
        check_name(name)?;
        if password.chars().count() > MAX_PASSWORD {
            return Err(AdminError::Invalid {
                field: "password",
                reason: format!("longer than {MAX_PASSWORD} characters"),
            });
        }
        let attempt = self.logins.begin(&source_key(from))?;
        // A bounded queue in front of the hashing slots.
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING_HASHES {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(AdminError::Busy);
        }
        let permit = self.hashing.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.map_err(|e| AdminError::Hash(e.to_string()))?;
        let (state, name2, password2) = (self.state.clone(), name.to_owned(), password.to_owned());
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let checked = tokio::task::spawn_blocking(move || -> Result<Option<String>, AdminError> {
            // One verification either way, with the same parameters.
            Ok(match state.admin_hash(&name2)? {
                Some(h) => verify_password(&password2, &h).then_some(h),
                None => {
                    verify_password(&password2, decoy_hash());
                    None
                }
            })
        })
        .await
        .map_err(|e| AdminError::Hash(e.to_string()))??;
        let Some(hash) = checked else {
            attempt.failed();
            tracing::warn!(admin = name, %from, "failed login");
            return Err(AdminError::BadCredentials);
        };
        attempt.succeeded();
        self.new_session(name, &hash)
    }

    /// The setup token while setup is still to be done (made the first time it is asked
    /// for); `None` once an administrator exists.
    pub fn setup_token(&self) -> Result<Option<String>, AdminError> {
        setup_token(&self.state)
    }

    /// Opens a session for `name`, whose password was checked against `hash`: refused if
    /// the password changed (or the account went) while it was being checked.
    fn new_session(&self, name: &str, hash: &str) -> Result<Session, AdminError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| AdminError::Hash(e.to_string()))?;
        let token = hex::encode(raw);
        let expires_unix_ms = now_ms() + crate::millis(SESSION_TTL);
        if !self.state.add_session(&token_key(&token), name, expires_unix_ms, hash)? {
            return Err(AdminError::BadCredentials);
        }
        Ok(Session { token, name: name.to_owned(), expires_unix_ms })
    }

    /// The administrator of a live session.
    pub fn check(&self, token: &str) -> Result<(String, u64), AdminError> {
        if token.is_empty() || token.len() > 128 {
            return Err(AdminError::Unauthenticated);
        }
        self.state.session(&token_key(token))?.ok_or(AdminError::Unauthenticated)
    }

    /// Hashes a password on a blocking thread, within the hashing slots logins use.
    async fn hash(&self, password: &str) -> Result<String, AdminError> {
        check_password(password)?;
        let _permit = self.hashing.acquire().await.map_err(|e| AdminError::Hash(e.to_string()))?;
        let p = password.to_owned();
        tokio::task::spawn_blocking(move || hash_password(&p))
            .await
            .map_err(|e| AdminError::Hash(e.to_string()))?
    }

    /// Adds an administrator; false if the name is taken (nothing written).
    pub async fn add(&self, name: &str, password: &str) -> Result<bool, AdminError> {
        check_name(name)?;
        let hash = self.hash(password).await?;
        Ok(self.state.add_admin(name, &hash)?)
    }

    /// Sets an administrator's password and ends their other sessions (all but the
    /// session `token`, when it is theirs); false if there is no such administrator.
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        token: &str,
    ) -> Result<bool, AdminError> {
        check_name(name)?;
        let hash = self.hash(password).await?;
        Ok(self.state.set_admin_hash(name, &hash, Some(&token_key(token)))?)
    }

    /// Live sessions: (id, administrator, created, expires, whether it is `token`'s). The id
    /// is the first 16 hex digits of the token's sha256: it names a session without being
    /// able to open one.
    #[allow(clippy::type_complexity)]
    pub fn sessions(
        &self,
        token: &str,
    ) -> Result<Vec<(String, String, Option<u64>, u64, bool)>, AdminError> {
        let own = token_key(token);
        Ok(self
            .state
            .sessions()?
            .into_iter()
            .map(|(key, admin, created, expires)| {
                (key[..16].to_owned(), admin, created, expires, key == own)
            })
            .collect())
    }

    /// Ends the session with this id (see [`Admins::sessions`]); false if none has it.
    pub fn end_session(&self, id: &str) -> Result<bool, AdminError> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let id = id.to_ascii_lowercase();
        match self.state.sessions()?.into_iter().find(|s| s.0.starts_with(&id)) {
            Some((key, ..)) => {
                self.state.delete_session(&key)?;
                Ok(true)
            }
            None => Ok(false),
        }
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
        let token = a.setup_token().unwrap().unwrap();
        assert_eq!(a.setup_token().unwrap().unwrap(), token, "one token until setup");
        assert_eq!(token.len(), 23, "{token}");
        for wrong in ["", "AAAAA-AAAAA-AAAAA-AAAAA", &token[..22]] {
            assert!(
                matches!(
                    a.setup(wrong, "root", "correct horse battery"),
                    Err(AdminError::BadSetupToken)
                ),
                "{wrong:?}"
            );
        }
        assert!(matches!(
            a.setup(&token, "bad name", "long enough pw!"),
            Err(AdminError::Invalid { field: "name", .. })
        ));
        assert!(matches!(
            a.setup(&token, "root", "short"),
            Err(AdminError::Invalid { field: "password", .. })
        ));
        assert!(a.setup_needed().unwrap(), "nothing half-written by refused setups");
        // As typed by a person: lower case, without dashes, an O for a 0.
        let typed = token.replace('-', " ").to_lowercase().replace('0', "o");
        let s = a.setup(&typed, "root", "correct horse battery").unwrap();
        assert_eq!(a.check(&s.token).unwrap().0, "root");
        assert!(matches!(
            a.setup(&token, "other", "correct horse battery"),
            Err(AdminError::AlreadySetUp)
        ));
        assert_eq!(a.setup_token().unwrap(), None, "the token was consumed");
        let s2 = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(a.login("root", "correct horse battery", "127.0.0.1".parse().unwrap()))
            .unwrap();
        assert_ne!(s.token, s2.token);
        a.logout(&s2.token).unwrap();
        assert!(matches!(a.check(&s2.token), Err(AdminError::Unauthenticated)));
        assert!(a.check(&s.token).is_ok(), "other sessions stay");
        assert!(matches!(a.check(""), Err(AdminError::Unauthenticated)));
        assert!(matches!(a.check("nope"), Err(AdminError::Unauthenticated)));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn failed_logins_are_limited_per_source_never_per_account() {
        let (_d, a) = admins();
        a.setup(&a.setup_token().unwrap().unwrap(), "root", "correct horse battery").unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                a.login("root", "wrong password!", ip("10.0.0.1")).await,
                Err(AdminError::BadCredentials)
            ));
        }
        // The right password from that address is refused too, until the window passes.
        let e = a.login("root", "correct horse battery", ip("10.0.0.1")).await.unwrap_err();
        assert!(matches!(e, AdminError::RateLimited { retry_after_s } if retry_after_s > 0));
        // Issue 11, finding 5: the failures of a stranger do not lock the administrator
        // out of their own address.
        a.login("root", "correct horse battery", ip("10.0.0.2")).await.unwrap();
        // The same /64 of IPv6 is one source.
        for i in 0..MAX_FAILURES {
            let from = ip(&format!("2001:db8::{i}"));
            assert!(a.login("root", "wrong password!", from).await.is_err());
        }
        assert!(matches!(
            a.login("root", "correct horse battery", ip("2001:db8::ff")).await,
            Err(AdminError::RateLimited { .. })
        ));
        a.login("root", "correct horse battery", ip("2001:db8:0:1::1")).await.unwrap();
    }

    /// Issue 11, finding 5: the check preceded the recording, so parallel guesses all
    /// passed it. Now at most MAX_FAILURES guesses from one source are ever hashed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_guesses_get_no_more_tries_than_serial_ones() {
        let (_d, a) = admins();
        a.setup(&a.setup_token().unwrap().unwrap(), "root", "correct horse battery").unwrap();
        let a = std::sync::Arc::new(a);
        let before = a.verifications();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                a.login("root", "wrong password!", ip("10.9.9.9")).await
            }));
        }
        let mut limited = 0;
        for t in tasks {
            match t.await.unwrap() {
                Err(AdminError::RateLimited { .. }) => limited += 1,
                Err(AdminError::BadCredentials | AdminError::Busy) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(a.verifications() - before <= u64::from(MAX_FAILURES), "{}", a.verifications());
        assert!(limited >= 40 - MAX_FAILURES as usize, "{limited}");
    }

    /// Issue 11, finding 8: a known name and an unknown one took different paths (the
    /// unknown one hashed, the known one verified, long passwords skipped one). Now each
    /// login is exactly one verification, and over-long input is refused before any.
    #[tokio::test]
    async fn every_login_costs_one_verification_whatever_the_name() {
        let (_d, a) = admins();
        a.setup(&a.setup_token().unwrap().unwrap(), "root", "correct horse battery").unwrap();
        let long = "x".repeat(MAX_PASSWORD);
        for (name, pw, from) in [
            ("root", "wrong password!", "10.1.0.1"),
            ("nobody", "wrong password!", "10.1.0.2"),
            ("root", long.as_str(), "10.1.0.3"),
            ("nobody", long.as_str(), "10.1.0.4"),
        ] {
            let before = a.verifications();
            assert!(matches!(a.login(name, pw, ip(from)).await, Err(AdminError::BadCredentials)));
            assert_eq!(a.verifications() - before, 1, "{name} with {} characters", pw.len());
        }
        let before = a.verifications();
        let too_long = "x".repeat(MAX_PASSWORD + 1);
        for name in ["root", "nobody"] {
            let e = a.login(name, &too_long, ip("10.1.0.5")).await.unwrap_err();
            assert!(matches!(e, AdminError::Invalid { field: "password", .. }), "{e}");
        }
        let e = a.login(&"n".repeat(1 << 20), "wrong password!", ip("10.1.0.6")).await;
        assert!(matches!(e, Err(AdminError::Invalid { field: "name", .. })));
        assert_eq!(a.verifications(), before, "refused before any hashing");
    }
}
