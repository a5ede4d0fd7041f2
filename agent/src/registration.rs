//! Registration: how an agent gets its identity from the appliance, and where it keeps it.
//!
//! The operator gives the agent the appliance's address, the appliance CA's fingerprint (shown
//! on the appliance's console and web UI) and a one-time passphrase. The agent generates its
//! own key (it never leaves the machine) and a certificate signing request, connects to the
//! configuration server trusting only a CA with that fingerprint, and posts
//! [`RegisterRequest`]. The answer carries the machine id the appliance assigned, the signed
//! client certificate, the CA certificate (checked against the pinned fingerprint again) and
//! the process server's address. From then on the agent trusts exactly that CA and proves its
//! identity with that certificate (mutual TLS).
//!
//! State directory after registration:
//!
//! ```text
//! agent.key           the agent's private key, PKCS#8 PEM, mode 0600
//! agent.crt           its client certificate, PEM
//! ca.crt              the appliance CA, PEM
//! registration.json   machine id, appliance and process server URLs, protocol version
//! ```
//!
//! Each file is written atomically (temp file, fsync, rename), and `registration.json` last:
//! it is the commit mark, so an interrupted registration leaves no registration at all rather
//! than a half one, and running it again simply starts over.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use lifeboat_api::{RegisterRequest, RegisterResponse};
use lifeboat_net::tls::{Trust, client_config};
use lifeboat_net::{Client, ClientError, Identity, TlsError};
use lifeboat_wire::MachineId;
use serde::{Deserialize, Serialize};

/// File name of the registration record in the state directory.
pub const REGISTRATION_FILE: &str = "registration.json";
/// Stem of the agent's certificate and key files (`agent.crt`, `agent.key`).
pub const IDENTITY_STEM: &str = "agent";
/// File name of the appliance CA certificate.
pub const CA_FILE: &str = "ca.crt";

/// What `registration.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRecord {
    /// The machine id the appliance assigned (UUID).
    pub machine_id: String,
    /// The configuration server the agent registered with.
    pub appliance_url: String,
    /// Where batches go (`https://host:9443`).
    pub process_server_url: String,
    /// The protocol version agreed at registration.
    pub protocol_version: u16,
    /// The appliance CA's fingerprint (`sha256:…`).
    pub ca_fingerprint: String,
}

/// A complete registration, loaded from the state directory.
#[derive(Debug, Clone)]
pub struct Registration {
    /// What `registration.json` says.
    pub record: RegistrationRecord,
    /// The machine id in the batch format's form.
    pub machine: MachineId,
    /// The agent's certificate and key.
    pub identity: Identity,
    /// The appliance CA certificate, PEM.
    pub ca_pem: String,
}

/// Errors of registration. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// No registration in the state directory.
    #[error(
        "this machine is not registered (no {path}); run `lifeboat-agent register --appliance https://HOST:443 --fingerprint sha256:… --passphrase …` first, with the same state directory"
    )]
    NotRegistered {
        /// The missing record.
        path: PathBuf,
    },
    /// A state file could not be read or written.
    #[error("cannot {action} {path}: {source}; check permissions of the state directory")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A state file is damaged.
    #[error(
        "{path} is damaged ({detail}); register again with `lifeboat-agent register --force …`"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The certificate or key files could not be used.
    #[error("{0}; register again with `lifeboat-agent register --force …`")]
    Identity(#[source] lifeboat_net::CaError),
    /// An argument is not usable (fingerprint, URL).
    #[error("{0}")]
    BadArgument(String),
    /// The TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The appliance could not be reached or the exchange failed.
    #[error(transparent)]
    Network(#[from] ClientError),
    /// The appliance refused the registration.
    #[error("the appliance refused the registration (HTTP {status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The appliance's message, or the body.
        message: String,
    },
    /// The appliance's answer is not what the protocol says.
    #[error("the appliance's answer to the registration is not usable: {0}")]
    BadAnswer(String),
    /// The registration record could not be written as JSON.
    #[error("cannot write the registration record as JSON: {0}")]
    Record(#[source] serde_json::Error),
}

impl RegistrationError {
    /// Whether the error is in what the user typed (exit code 2) rather than at run time.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BadArgument(_))
            || matches!(self, Self::Tls(TlsError::BadFingerprint { .. }))
            || matches!(self, Self::Network(ClientError::InvalidUrl { .. }))
    }
}

fn io_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> RegistrationError + use<> {
    let path = path.to_path_buf();
    move |source| RegistrationError::Io { path, action, source }
}

/// Writes `bytes` to `path` atomically and durably, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RegistrationError> {
    lifeboat_common::fs::write_atomic(path, bytes, Some(mode)).map_err(io_err(path, "write"))
}

/// Stem of a renewed identity while it replaces the current one.
pub const RENEWED_STEM: &str = "agent-renewed";

/// Completes or undoes a renewal a crash interrupted. The renewed pair is written key
/// first, then certificate; only then is the key moved into place, then the certificate.
/// So a renewed key alone is an incomplete write (deleted: the old pair is intact), and a
/// renewed certificate alone means the key was moved already (the move is finished).
fn finish_renewal(state_dir: &Path) -> Result<(), RegistrationError> {
    let key = state_dir.join(format!("{RENEWED_STEM}.key"));
    let crt = state_dir.join(format!("{RENEWED_STEM}.crt"));
    let (has_key, has_crt) = (key.exists(), crt.exists());
    if has_key && !has_crt {
        fs::remove_file(&key).map_err(io_err(&key, "remove"))?;
        return Ok(());
    }
    if has_key {
        let to = state_dir.join(format!("{IDENTITY_STEM}.key"));
        fs::rename(&key, &to).map_err(io_err(&key, "rename"))?;
    }
    if has_crt {
        let to = state_dir.join(format!("{IDENTITY_STEM}.crt"));
        fs::rename(&crt, &to).map_err(io_err(&crt, "rename"))?;
    }
    if has_key || has_crt {
        let dir = fs::File::open(state_dir).map_err(io_err(state_dir, "open"))?;
        dir.sync_all().map_err(io_err(state_dir, "sync"))?;
    }
    Ok(())
}

impl Registration {
    /// Replaces the agent's identity with `identity` and the trusted CAs with `ca_pem`,
    /// so that a crash at any moment leaves the old pair or the new one.
    pub fn replace_identity(
        &mut self,
        state_dir: &Path,
        identity: Identity,
        ca_pem: String,
    ) -> Result<(), RegistrationError> {
        identity.store(state_dir, RENEWED_STEM).map_err(RegistrationError::Identity)?;
        finish_renewal(state_dir)?;
        self.identity = identity;
        self.replace_trust(state_dir, ca_pem)
    }

    /// Replaces the trusted CA certificates (a CA rotation).
    pub fn replace_trust(
        &mut self,
        state_dir: &Path,
        ca_pem: String,
    ) -> Result<(), RegistrationError> {
        write_atomic(&state_dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
        self.ca_pem = ca_pem;
        Ok(())
    }

    /// Whether `state_dir` holds a registration record.
    pub fn exists(state_dir: &Path) -> bool {
        state_dir.join(REGISTRATION_FILE).exists()
    }

    /// Loads the registration from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Self, RegistrationError> {
        let path = state_dir.join(REGISTRATION_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RegistrationError::NotRegistered { path });
            }
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let record: RegistrationRecord = serde_json::from_str(&text).map_err(|e| {
            RegistrationError::Damaged { path: path.clone(), detail: e.to_string() }
        })?;
        let machine = MachineId::from_str(&record.machine_id)
            .map_err(|detail| RegistrationError::Damaged { path: path.clone(), detail })?;
        finish_renewal(state_dir)?;
        let identity =
            Identity::load(state_dir, IDENTITY_STEM).map_err(RegistrationError::Identity)?;
        let ca_path = state_dir.join(CA_FILE);
        let ca_pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path, "read"))?;
        Ok(Self { record, machine, identity, ca_pem })
    }

    /// Stores the registration in `state_dir` (created 0700 if needed); the record last.
    pub fn store(&self, state_dir: &Path) -> Result<(), RegistrationError> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err(state_dir, "create"))?;
        self.identity.store(state_dir, IDENTITY_STEM).map_err(RegistrationError::Identity)?;
        write_atomic(&state_dir.join(CA_FILE), self.ca_pem.as_bytes(), 0o644)?;
        let json = serde_json::to_vec_pretty(&self.record).map_err(RegistrationError::Record)?;
        write_atomic(&state_dir.join(REGISTRATION_FILE), &json, 0o644)
    }

    /// The TLS client configuration for the process server: trust the appliance CA, present
    /// the agent's certificate.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_config(Trust::Ca(self.ca_pem.clone()), Some(&self.identity))
    }
}

/// What `lifeboat-agent register` was asked to do.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// The configuration server, `https://HOST[:PORT]`.
    pub appliance_url: String,
    /// The appliance CA's fingerprint, `sha256:…`.
    pub fingerprint: String,
    /// The one-time registration passphrase.
    pub passphrase: String,
    /// Where to keep the registration.
    pub state_dir: PathBuf,
    /// Register again even if already registered.
    pub force: bool,
    /// The host name to report; `None`: this machine's.
    pub hostname: Option<String>,
}

/// What `register` did.
#[derive(Debug)]
pub enum RegisterOutcome {
    /// A new registration was stored.
    Registered(Box<Registration>),
    /// A registration existed and `force` was not given; nothing changed.
    AlreadyRegistered(RegistrationRecord),
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Registers with the appliance; see the module documentation.
pub async fn register(opts: &RegisterOptions) -> Result<RegisterOutcome, RegistrationError> {
    if !opts.force && Registration::exists(&opts.state_dir) {
        let existing = Registration::load(&opts.state_dir)?;
        return Ok(RegisterOutcome::AlreadyRegistered(existing.record));
    }
    let pinned = lifeboat_net::ca::parse_fingerprint(&opts.fingerprint).ok_or_else(|| {
        RegistrationError::BadArgument(format!(
            "--fingerprint {:?} is not a CA fingerprint: copy it from the appliance's console or web UI, it looks like sha256: followed by 64 hexadecimal digits",
            opts.fingerprint
        ))
    })?;
    if opts.passphrase.trim().is_empty() {
        return Err(RegistrationError::BadArgument(
            "--passphrase is empty: give the one-time registration passphrase the appliance shows"
                .into(),
        ));
    }
    let hostname = opts.hostname.clone().unwrap_or_else(hostname);
    let (key_pem, csr_pem) =
        Identity::generate_csr(&hostname).map_err(RegistrationError::Identity)?;
    let tls = client_config(Trust::Fingerprint(opts.fingerprint.clone()), None)?;
    let client = Client::new(&opts.appliance_url, tls)?;
    let request = RegisterRequest {
        passphrase: opts.passphrase.clone(),
        hostname: hostname.clone(),
        protocol_versions: lifeboat_wire::PROTOCOL_VERSIONS.to_vec(),
        csr_pem,
    };
    let (status, _, body) =
        client.post_json("/api/v1/register", &request, HeaderMap::new()).await?;
    if status != StatusCode::OK {
        return Err(RegistrationError::Refused {
            status: status.as_u16(),
            message: crate::sender::error_message(&body),
        });
    }
    let answer: RegisterResponse = serde_json::from_slice(&body)
        .map_err(|e| RegistrationError::BadAnswer(format!("not a registration answer: {e}")))?;
    if !lifeboat_wire::PROTOCOL_VERSIONS.contains(&answer.protocol_version) {
        return Err(RegistrationError::BadAnswer(format!(
            "the appliance chose protocol version {}, this agent speaks {:?}: upgrade the agent",
            answer.protocol_version,
            lifeboat_wire::PROTOCOL_VERSIONS
        )));
    }
    let ca_fingerprint = lifeboat_net::ca::fingerprint_pem(&answer.ca_pem)
        .map_err(|e| RegistrationError::BadAnswer(format!("its CA certificate: {e}")))?;
    if lifeboat_net::ca::parse_fingerprint(&ca_fingerprint) != Some(pinned) {
        return Err(RegistrationError::BadAnswer(format!(
            "it handed over a CA certificate with fingerprint {ca_fingerprint}, not the pinned {}",
            opts.fingerprint
        )));
    }
    let machine = MachineId::from_str(&answer.machine_id)
        .map_err(|e| RegistrationError::BadAnswer(format!("machine id: {e}")))?;
    let identity = Identity { cert_pem: answer.cert_pem, key_pem };
    // The certificate must carry the machine id it was issued for, and fit our key.
    let leaf = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()).next().and_then(Result::ok)
    };
    let cert_id = leaf.and_then(|c| lifeboat_net::tls::machine_id_from_cert(&c));
    if cert_id.as_deref() != Some(answer.machine_id.as_str()) {
        return Err(RegistrationError::BadAnswer(format!(
            "the certificate carries machine id {cert_id:?}, the answer says {}",
            answer.machine_id
        )));
    }
    client_config(Trust::Ca(answer.ca_pem.clone()), Some(&identity))?;
    if opts.force {
        crate::layout::forget_replication_state(&opts.state_dir)
            .map_err(|(path, source)| RegistrationError::Io { path, action: "remove", source })?;
    }
    let registration = Registration {
        record: RegistrationRecord {
            machine_id: answer.machine_id,
            appliance_url: opts.appliance_url.clone(),
            process_server_url: answer.process_server_url,
            protocol_version: answer.protocol_version,
            ca_fingerprint,
        },
        machine,
        identity,
        ca_pem: answer.ca_pem,
    };
    registration.store(&opts.state_dir)?;
    Ok(RegisterOutcome::Registered(Box::new(registration)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use lifeboat_net::Ca;
    use lifeboat_net::server::{self, ApiError, RequestBody, ResponseBody};
    use lifeboat_net::tls::ClientAuth;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct ConfigServer {
        url: String,
        fingerprint: String,
        _dir: tempfile::TempDir,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Drop for ConfigServer {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
        }
    }

    /// A configuration server that registers agents with the passphrase "open sesame".
    async fn config_server() -> ConfigServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::load_or_create(dir.path(), "test CA").unwrap());
        let server_id = ca.issue_server(&[]).unwrap();
        let tls = lifeboat_net::tls::server_config(&server_id, ClientAuth::None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let counter = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fingerprint = ca.fingerprint().to_string();
        tokio::spawn(server::serve(
            listener,
            tls,
            move |req: Request<RequestBody>| {
                let (ca, counter) = (ca.clone(), counter.clone());
                async move {
                    if req.uri().path() != "/api/v1/register" {
                        return Err(ApiError::not_found("not_found", "no such endpoint"));
                    }
                    let r: RegisterRequest = server::read_json(req.into_body()).await?;
                    if r.passphrase != "open sesame" {
                        return Err(ApiError::forbidden("bad_passphrase", "wrong passphrase"));
                    }
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let id = format!("00000000-0000-0000-0000-{n:012}");
                    let cert_pem = ca
                        .sign_client_csr(&r.csr_pem, &id, 30)
                        .map_err(|e| ApiError::bad_request("bad_csr", e.to_string()))?;
                    let answer = RegisterResponse {
                        machine_id: id,
                        cert_pem,
                        ca_pem: ca.cert_pem().to_string(),
                        protocol_version: 1,
                        process_server_url: "https://127.0.0.1:9443".into(),
                    };
                    let resp: Response<ResponseBody> = server::json(StatusCode::OK, &answer)?;
                    Ok(resp)
                }
            },
            async move {
                let _ = stopped.await;
            },
        ));
        ConfigServer { url, fingerprint, _dir: dir, stop: Some(stop) }
    }

    fn opts(server: &ConfigServer, state: &Path) -> RegisterOptions {
        RegisterOptions {
            appliance_url: server.url.clone(),
            fingerprint: server.fingerprint.clone(),
            passphrase: "open sesame".into(),
            state_dir: state.to_path_buf(),
            force: false,
            hostname: Some("test-host".into()),
        }
    }

    #[tokio::test]
    async fn registers_stores_and_refuses_to_register_twice_without_force() {
        let server = config_server().await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let err = Registration::load(&state).unwrap_err();
        assert!(matches!(err, RegistrationError::NotRegistered { .. }), "{err}");
        assert!(err.to_string().contains("lifeboat-agent register"), "{err}");

        let RegisterOutcome::Registered(reg) = register(&opts(&server, &state)).await.unwrap()
        else {
            panic!("expected a registration");
        };
        assert_eq!(reg.record.machine_id, "00000000-0000-0000-0000-000000000001");
        let mode = fs::metadata(state.join("agent.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Registration::load(&state).unwrap();
        assert_eq!(loaded.record, reg.record);
        assert_eq!(loaded.machine, MachineId::from_str(&reg.record.machine_id).unwrap());
        loaded.tls().unwrap();

        // Again: nothing changes.
        let again = register(&opts(&server, &state)).await.unwrap();
        assert!(
            matches!(again, RegisterOutcome::AlreadyRegistered(ref r) if r.machine_id.ends_with('1'))
        );

        // --force: a new identity, and the old replication state is forgotten.
        fs::create_dir_all(state.join("journal/d0")).unwrap();
        fs::write(state.join("hashscan-d0.map"), b"old").unwrap();
        let mut o = opts(&server, &state);
        o.force = true;
        let RegisterOutcome::Registered(reg) = register(&o).await.unwrap() else { panic!() };
        assert!(reg.record.machine_id.ends_with('2'));
        assert!(!state.join("journal").exists());
        assert!(!state.join("hashscan-d0.map").exists());
    }

    #[tokio::test]
    async fn wrong_fingerprint_or_passphrase_is_refused_with_advice() {
        let server = config_server().await;
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(&server, dir.path());
        o.fingerprint = format!("sha256:{}", "ab".repeat(32));
        let err = register(&o).await.unwrap_err();
        assert!(
            matches!(err, RegistrationError::Network(ClientError::PinMismatch { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("fingerprint"), "{err}");

        let mut o = opts(&server, dir.path());
        o.passphrase = "guess".into();
        let err = register(&o).await.unwrap_err();
        assert!(matches!(err, RegistrationError::Refused { status: 403, .. }), "{err}");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");

        let mut o = opts(&server, dir.path());
        o.fingerprint = "nonsense".into();
        let err = register(&o).await.unwrap_err();
        assert!(err.is_usage(), "{err}");
        assert!(!Registration::exists(dir.path()));
    }
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    fn files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_interrupted_renewal_leaves_one_matching_pair() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let write = |name: &str, text: &str| fs::write(p.join(name), text).unwrap();
        let read = |name: &str| fs::read_to_string(p.join(name)).unwrap();
        // Crash while writing the renewed pair (only its key): the old pair stays.
        write("agent.key", "old key");
        write("agent.crt", "old crt");
        write("agent-renewed.key", "new key");
        finish_renewal(p).unwrap();
        assert_eq!((read("agent.key"), read("agent.crt")), ("old key".into(), "old crt".into()));
        assert_eq!(files(p), ["agent.crt", "agent.key"]);
        // Crash after the key was moved: the certificate follows.
        write("agent.key", "new key");
        write("agent-renewed.crt", "new crt");
        finish_renewal(p).unwrap();
        assert_eq!((read("agent.key"), read("agent.crt")), ("new key".into(), "new crt".into()));
        // Crash before either was moved: both move.
        write("agent-renewed.key", "newer key");
        write("agent-renewed.crt", "newer crt");
        finish_renewal(p).unwrap();
        assert_eq!(
            (read("agent.key"), read("agent.crt")),
            ("newer key".into(), "newer crt".into())
        );
        assert_eq!(files(p), ["agent.crt", "agent.key"]);
    }
}
