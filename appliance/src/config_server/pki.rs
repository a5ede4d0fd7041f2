//! The appliance's certificate authorities: the active CA that signs agent and server
//! certificates, and — while the CA is being rotated — a next or a retiring one. Agents
//! trust the bundle of all of them, and the process server accepts client certificates
//! from any, so the CA changes without registering any agent again.
//!
//! Rotation (`POST /api/v1/ca/rotate`, `lifeboat ca rotate`) goes through three phases:
//!
//! 1. `steady` → `introducing`: a new CA is made in `<data>/ca-next`. The trust bundle is
//!    now the active CA and the new one; agents fetch it (`GET /api/v1/trust`, at start and
//!    every `trust_check_secs`) and trust both. Certificates are still signed by the old CA.
//! 2. `introducing` → `retiring`: the new CA becomes active (the old one's certificate is
//!    kept in `<data>/ca-retiring.pem`, its key removed). The servers present certificates
//!    from the new CA; agents (which trust it since phase 1) see on their next check that
//!    their certificate is not from the active CA and renew it (`POST /api/v1/renew`).
//! 3. `retiring` → `steady`: once every machine that is not revoked has a certificate from
//!    the active CA, the old CA is dropped from the bundle (refused while some machine has
//!    not renewed, unless forced); its certificates are refused from then on.
//!
//! Each phase replaces the running servers' TLS configurations (new connections use them).
//! A promotion is ordered so that an interrupted one completes at the next start (the old
//! directory is renamed away before `ca-next` takes its place; a missing `ca` with a
//! `ca-next` present is that moment).

use lifeboat_wire::MachineId;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use lifeboat_net::{Ca, ClientAuth, Identity, TlsSource};

use crate::store::{State, StateError};

/// Machine ids for a message, comma-separated.
fn list(ids: &[MachineId]) -> String {
    ids.iter().map(MachineId::to_string).collect::<Vec<_>>().join(", ")
}

/// Days an agent certificate is valid.
pub const AGENT_CERT_DAYS: u32 = 825;

/// Why a rotation step is refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Machines still hold certificates of the retiring CA.
    #[error("{} machine(s) still use a certificate from the retiring CA ({}); wait for their agents to renew, revoke them, or force", .0.len(), list(.0))]
    NotRenewed(Vec<MachineId>),
    /// Machines have not fetched the trust bundle with the new CA yet.
    #[error("{} machine(s) have not fetched the new CA yet ({}); promoting it now would lock them out: wait for their agents' next check (trust_check_secs), revoke them, or force", .0.len(), list(.0))]
    NotIntroduced(Vec<MachineId>),
    /// Files, certificates, the state store.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl From<StateError> for RotateError {
    fn from(e: StateError) -> Self {
        RotateError::Pki(PkiError::State(e))
    }
}

impl From<std::io::Error> for RotateError {
    fn from(e: std::io::Error) -> Self {
        RotateError::Pki(PkiError::Io(e))
    }
}

impl From<lifeboat_net::CaError> for RotateError {
    fn from(e: lifeboat_net::CaError) -> Self {
        RotateError::Pki(PkiError::Ca(e))
    }
}

/// A failure of the certificate authorities or of the TLS they feed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A CA's files could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A CA refused (a key, a certificate, a CSR).
    #[error(transparent)]
    Ca(#[from] lifeboat_net::CaError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] lifeboat_net::TlsError),
    /// The state store.
    #[error(transparent)]
    State(#[from] StateError),
    /// A certificate that should be there is not.
    #[error("{0}")]
    Missing(&'static str),
}

struct Cas {
    active: Arc<Ca>,
    next: Option<Arc<Ca>>,
    /// PEM certificates of CAs still trusted but no longer signing.
    retiring: Vec<String>,
}

/// The CAs, and the servers whose TLS follows them.
pub struct Pki {
    data: PathBuf,
    server_names: Vec<String>,
    cas: RwLock<Cas>,
    config_tls: RwLock<Option<TlsSource>>,
    process_tls: RwLock<Option<TlsSource>>,
    /// The certificate an administrator uploaded for the configuration server (443), kept
    /// in `<data>/https/server.{crt,key}`; `None`: one issued by the active CA.
    uploaded: RwLock<Option<Identity>>,
    /// The identity the configuration server presents now.
    serving: RwLock<Option<Identity>>,
    /// One rotation step at a time, from reading the phase to its last file.
    rotating: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("phase", &self.phase()).finish_non_exhaustive()
    }
}

fn https_dir(data: &Path) -> PathBuf {
    data.join("https")
}

/// Why an uploaded certificate was refused (`field: why`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertificateRefused(pub String);

fn retiring_path(data: &Path) -> PathBuf {
    data.join("ca-retiring.pem")
}

fn split_pem(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .map(|b| b.trim().to_owned())
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| format!("{b}\n"))
        .collect()
}

impl Pki {
    /// Loads (or creates) the CAs under `data`; `server_names` go into server certificates.
    pub fn load(data: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        let (active_dir, next_dir) = (data.join("ca"), data.join("ca-next"));
        if !active_dir.join("ca.crt").exists() && next_dir.join("ca.crt").exists() {
            // A promotion stopped between its two renames: finish it.
            std::fs::rename(&next_dir, &active_dir)?;
            tracing::warn!("finished a CA promotion an appliance stop interrupted");
        }
        let active = Arc::new(Ca::load_or_create(&active_dir, "Lifeboat appliance CA")?);
        let next = if next_dir.join("ca.crt").exists() {
            Some(Arc::new(Ca::load_or_create(&next_dir, "Lifeboat appliance CA")?))
        } else {
            None
        };
        let retiring = match std::fs::read_to_string(retiring_path(data)) {
            Ok(t) => split_pem(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let https = https_dir(data);
        // A stored certificate that does not load must not keep the appliance from
        // starting: 443 falls back to the appliance CA's, loudly.
        let uploaded = if https.join("server.crt").exists() {
            match Identity::load(&https, "server") {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::error!(error = %e, dir = %https.display(), "the uploaded certificate for 443 does not load; serving the appliance CA's instead (upload it again)");
                    None
                }
            }
        } else {
            None
        };
        Ok(Pki {
            data: data.to_owned(),
            server_names: server_names.to_vec(),
            cas: RwLock::new(Cas { active, next, retiring }),
            config_tls: RwLock::new(None),
            process_tls: RwLock::new(None),
            uploaded: RwLock::new(uploaded),
            serving: RwLock::new(None),
            rotating: std::sync::Mutex::new(()),
        })
    }

    fn cas(&self) -> std::sync::RwLockReadGuard<'_, Cas> {
        self.cas.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA that signs.
    pub fn active(&self) -> Arc<Ca> {
        self.cas().active.clone()
    }

    /// `steady`, `introducing` or `retiring`.
    pub fn phase(&self) -> &'static str {
        let c = self.cas();
        if c.next.is_some() {
            "introducing"
        } else if !c.retiring.is_empty() {
            "retiring"
        } else {
            "steady"
        }
    }

    /// Every trusted CA certificate, PEM, the active one first.
    pub fn bundle_pem(&self) -> String {
        let c = self.cas();
        let mut out = c.active.cert_pem().to_owned();
        if let Some(n) = &c.next {
            out.push_str(n.cert_pem());
        }
        for r in &c.retiring {
            if lifeboat_net::ca::fingerprint_pem(r).ok().as_deref() != Some(c.active.fingerprint())
            {
                out.push_str(r);
            }
        }
        out
    }

    /// Fingerprints of (active, next, retiring).
    pub fn fingerprints(&self) -> (String, Option<String>, Vec<String>) {
        let c = self.cas();
        (
            c.active.fingerprint().to_owned(),
            c.next.as_ref().map(|n| n.fingerprint().to_owned()),
            c.retiring.iter().filter_map(|r| lifeboat_net::ca::fingerprint_pem(r).ok()).collect(),
        )
    }

    /// A server identity from the active CA.
    pub fn server_identity(&self) -> Result<Identity, PkiError> {
        Ok(self.active().issue_server(&self.server_names)?)
    }

    /// The configuration server's identity: the uploaded certificate, else one issued by
    /// the active CA.
    fn https_identity(&self) -> Result<Identity, PkiError> {
        let id = match &*self.uploaded.read().unwrap_or_else(|p| p.into_inner()) {
            Some(id) => id.clone(),
            None => self.server_identity()?,
        };
        *self.serving.write().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        Ok(id)
    }

    /// The configuration server's TLS: the uploaded certificate for browsers, and for
    /// Lifeboat's own clients (agents registering, the CLI), which pin the appliance CA and
    /// say so in ALPN, one the active CA issued.
    fn config_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let browsers = self.https_identity()?;
        if self.uploaded.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            Ok(lifeboat_net::tls::split_server_config(&browsers, &self.server_identity()?)?)
        } else {
            Ok(lifeboat_net::server_config(&browsers, ClientAuth::None)?)
        }
    }

    /// The configuration server's TLS (server authentication only).
    pub fn config_tls(&self) -> Result<TlsSource, PkiError> {
        let t = TlsSource::new(self.config_server_config()?);
        *self.config_tls.write().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    /// The configuration server's certificate: (uploaded, leaf fingerprint, names, not
    /// after in Unix seconds).
    pub fn https_certificate(&self) -> Result<(bool, String, Vec<String>, i64), PkiError> {
        let uploaded = self.uploaded.read().unwrap_or_else(|p| p.into_inner()).is_some();
        let serving = self.serving.read().unwrap_or_else(|p| p.into_inner()).clone();
        let id = match serving {
            Some(id) => id,
            None => self.https_identity()?,
        };
        let chain = lifeboat_net::ca::parse_cert_chain(&id.cert_pem, "the certificate")?;
        let not_after = lifeboat_net::ca::cert_validity(&chain[0]).map_or(0, |v| v.1);
        Ok((
            uploaded,
            lifeboat_net::ca::fingerprint_der(&chain[0]),
            lifeboat_net::ca::cert_names(&chain[0]),
            not_after,
        ))
    }

    /// Uses `id` (a chain, leaf first, and its key) for the configuration server from the
    /// next connection on, once it is checked: it parses, the key is the leaf's, the leaf
    /// is valid now and names at least one host. `None`: back to one issued by the active
    /// CA. Agents are not affected (9443 keeps the CA's certificate they pin).
    pub fn set_https(&self, id: Option<Identity>) -> Result<(), CertificateRefused> {
        let refused = |m: String| CertificateRefused(m);
        let dir = https_dir(&self.data);
        match &id {
            Some(id) => {
                let chain = lifeboat_net::ca::parse_cert_chain(&id.cert_pem, "the chain")
                    .map_err(|e| refused(format!("certificate_pem: {e}")))?;
                let (not_before, not_after) = lifeboat_net::ca::cert_validity(&chain[0])
                    .ok_or_else(|| refused("certificate_pem: not an X.509 certificate".into()))?;
                let now = (crate::store::now_ms() / 1000) as i64;
                if now < not_before || now >= not_after {
                    return Err(refused(format!(
                        "certificate_pem: not valid now (valid from {not_before} to {not_after}, Unix seconds; check the appliance's clock too)"
                    )));
                }
                if lifeboat_net::ca::cert_names(&chain[0]).is_empty() {
                    return Err(refused(
                        "certificate_pem: it names no host (no DNS name or IP address in its subject alternative names), so no browser would accept it"
                            .into(),
                    ));
                }
                lifeboat_net::server_config(id, ClientAuth::None).map_err(|e| {
                    refused(format!("key_pem: not the certificate's private key, or not a key rustls can use: {e}"))
                })?;
                // Read back at every start: only what that reader takes is kept.
                id.check("certificate_pem", "key_pem").map_err(|e| {
                    refused(format!(
                        "key_pem: {e}; give a PKCS#8 key (BEGIN PRIVATE KEY), e.g. converted with `openssl pkcs8 -topk8 -nocrypt`"
                    ))
                })?;
                id.store(&dir, "server").map_err(|e| refused(format!("cannot keep it: {e}")))?;
            }
            None => {
                for f in ["server.crt", "server.key"] {
                    match std::fs::remove_file(dir.join(f)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(refused(format!("cannot remove it: {e}"))),
                    }
                }
            }
        }
        let before = std::mem::replace(
            &mut *self.uploaded.write().unwrap_or_else(|p| p.into_inner()),
            id.clone(),
        );
        if let Err(e) = self.reload() {
            // Not used now, so not kept for the next start either.
            *self.uploaded.write().unwrap_or_else(|p| p.into_inner()) = before.clone();
            match &before {
                Some(b) => {
                    let _ = b.store(&dir, "server");
                }
                None => {
                    let _ = std::fs::remove_file(dir.join("server.crt"));
                    let _ = std::fs::remove_file(dir.join("server.key"));
                }
            }
            let _ = self.reload();
            return Err(refused(format!("cannot use it: {e}")));
        }
        Ok(())
    }

    /// The process server's TLS (client certificates from any trusted CA).
    pub fn process_tls(&self) -> Result<TlsSource, PkiError> {
        let t = TlsSource::new(self.process_config()?);
        *self.process_tls.write().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    fn process_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        Ok(lifeboat_net::server_config(
            &self.server_identity()?,
            ClientAuth::Required { ca_pem: self.bundle_pem() },
        )?)
    }

    /// New connections of the running servers use the CAs as they are now.
    fn reload(&self) -> Result<(), PkiError> {
        if let Some(t) = &*self.config_tls.read().unwrap_or_else(|p| p.into_inner()) {
            t.replace(self.config_server_config()?);
        }
        if let Some(t) = &*self.process_tls.read().unwrap_or_else(|p| p.into_inner()) {
            t.replace(self.process_config()?);
        }
        Ok(())
    }

    /// Signs an agent's CSR with the active CA and records it as the machine's certificate.
    pub fn sign_agent(
        &self,
        state: &State,
        csr_pem: &str,
        machine: MachineId,
    ) -> Result<String, PkiError> {
        let ca = self.active();
        let cert = ca.sign_client_csr(csr_pem, &machine.to_string(), AGENT_CERT_DAYS)?;
        record_cert(state, machine, &cert, ca.fingerprint())?;
        Ok(cert)
    }

    /// The next rotation step; the phase it reached. `force` retires the old CA even
    /// though some machines have not renewed (they are refused from then on).
    pub fn rotate(&self, state: &State, force: bool) -> Result<&'static str, RotateError> {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        match self.phase() {
            "steady" => {
                let next = Ca::load_or_create(&self.data.join("ca-next"), "Lifeboat appliance CA")?;
                tracing::warn!(next = %next.fingerprint(), "CA rotation: a new CA is introduced; agents trust it from their next check");
                self.cas.write().unwrap_or_else(|p| p.into_inner()).next = Some(Arc::new(next));
            }
            "introducing" => {
                // Every agent must trust the new CA before the servers present it.
                let bundle = bundle_sha(&self.bundle_pem());
                let mut behind = Vec::new();
                for (id, _, _) in state.machines()? {
                    if !state.is_revoked(id)?
                        && state.machine_trust(id)?.as_deref() != Some(bundle.as_str())
                    {
                        behind.push(id);
                    }
                }
                if !behind.is_empty() && !force {
                    return Err(RotateError::NotIntroduced(behind));
                }
                let old = self.active();
                let retiring = retiring_path(&self.data);
                let mut text = std::fs::read_to_string(&retiring).unwrap_or_default();
                text.push_str(old.cert_pem());
                lifeboat_common::fs::write_atomic(&retiring, text.as_bytes(), Some(0o644))?;
                let archive = self.data.join(format!("ca-old-{}", crate::store::now_ms()));
                std::fs::rename(self.data.join("ca"), &archive)?;
                // The old key signs nothing from now on: it goes.
                let _ = std::fs::remove_file(archive.join("ca.key"));
                std::fs::rename(self.data.join("ca-next"), self.data.join("ca"))?;
                let active = Ca::load_or_create(&self.data.join("ca"), "Lifeboat appliance CA")?;
                let mut c = self.cas.write().unwrap_or_else(|p| p.into_inner());
                tracing::warn!(active = %active.fingerprint(), retiring = %old.fingerprint(), "CA rotation: the new CA is active; agents renew their certificates");
                c.active = Arc::new(active);
                c.next = None;
                c.retiring = split_pem(&text);
            }
            _ => {
                let active = self.active();
                let mut behind = Vec::new();
                for (id, _, _) in state.machines()? {
                    if state.is_revoked(id)? {
                        continue;
                    }
                    // On the active CA, and seen using that certificate (the previous
                    // one is dropped once the new one is presented).
                    let (ca, _, prev) = state.machine_certs(id)?;
                    if ca.as_deref() != Some(active.fingerprint()) || prev.is_some() {
                        behind.push(id);
                    }
                }
                if !behind.is_empty() && !force {
                    return Err(RotateError::NotRenewed(behind));
                }
                match std::fs::remove_file(retiring_path(&self.data)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.cas.write().unwrap_or_else(|p| p.into_inner()).retiring.clear();
                tracing::warn!(
                    forced_past = behind.len(),
                    "CA rotation: the old CA is retired; its certificates are refused"
                );
            }
        }
        self.reload()?;
        Ok(self.phase())
    }
}

/// Records `cert_pem` (signed by the CA `ca_fingerprint`) as the machine's certificate.
pub fn record_cert(
    state: &State,
    machine: MachineId,
    cert_pem: &str,
    ca_fingerprint: &str,
) -> Result<(), PkiError> {
    let der = lifeboat_net::ca::parse_cert_chain(cert_pem, "the agent certificate")?
        .into_iter()
        .next()
        .ok_or(PkiError::Missing("no certificate"))?;
    let (_, not_after) = lifeboat_net::ca::cert_validity(&der).unwrap_or((0, 0));
    let sha = lifeboat_net::ca::fingerprint_der(&der);
    state.set_machine_cert(machine, ca_fingerprint, not_after.max(0) as u64 * 1000, &sha)?;
    Ok(())
}

/// The sha256 (hex) of a trust bundle, as recorded per machine.
pub fn bundle_sha(pem: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(pem.as_bytes()))
}

/// Whether the certificate `der` a machine presented on this request may be used: its
/// current certificate, or the previous one until the current one is seen in use. A
/// machine registered before certificates were recorded has its presented one recorded.
/// `Err` with the reason otherwise (a replaced or retired certificate).
pub fn check_presented(
    state: &State,
    pki: &Pki,
    machine: MachineId,
    der: &[u8],
) -> Result<Result<(), String>, StateError> {
    let presented = lifeboat_net::ca::fingerprint_der(der);
    let (_, current, prev) = state.machine_certs(machine)?;
    match current {
        None => {
            // Recorded from before this appliance kept certificates: then one CA existed.
            let (active_fp, _, _) = pki.fingerprints();
            state.set_machine_cert(machine, &active_fp, 0, &presented)?;
            state.machine_cert_in_use(machine)?;
            Ok(Ok(()))
        }
        Some(c) if c == presented => {
            if prev.is_some() {
                state.machine_cert_in_use(machine)?;
            }
            Ok(Ok(()))
        }
        _ if prev.as_deref() == Some(presented.as_str()) => Ok(Ok(())),
        _ => Ok(Err(format!(
            "this certificate of machine {machine} was replaced by a renewal (or its CA retired); \
             use the agent's current certificate, or register the machine again"
        ))),
    }
}

/// Whether the certificate `der` a machine presented should be renewed: it is not the
/// certificate last issued to the machine by the active CA, or less than a third of its
/// validity is left. `None`: keep it.
pub fn renew_reason(
    state: &State,
    pki: &Pki,
    machine: MachineId,
    der: &[u8],
) -> Result<Option<String>, StateError> {
    let (ca, sha) = state.machine_cert(machine)?;
    let presented = lifeboat_net::ca::fingerprint_der(der);
    let active = pki.active();
    if sha.as_deref() != Some(presented.as_str()) || ca.as_deref() != Some(active.fingerprint()) {
        return Ok(Some("the certificate is not the current one from the active CA".into()));
    }
    if let Some((from, to)) = lifeboat_net::ca::cert_validity(der) {
        let now = (crate::store::now_ms() / 1000) as i64;
        if to - now < (to - from) / 3 {
            return Ok(Some(format!("the certificate expires in {} days", (to - now) / 86_400)));
        }
    }
    Ok(None)
}
