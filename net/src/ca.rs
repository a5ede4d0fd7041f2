//! The appliance's private certificate authority, and the key pairs it certifies.
//!
//! The CA is created once, on the appliance's first start, in a directory of the
//! appliance's state (`ca.crt` + `ca.key`) and loaded on every later start. It signs:
//!
//! * server certificates for the appliance's own HTTPS listeners ([`Ca::issue_server`]):
//!   extended key usage `serverAuth` only;
//! * client certificates for agents ([`Ca::sign_client_csr`]): extended key usage
//!   `clientAuth` only, subject CN and a URI SAN `lifeboat:machine:<id>` carrying the
//!   machine id the appliance assigned. Whatever names the request asked for are ignored:
//!   the CA decides the identity, the request only proves possession of the key.
//!
//! Because the two kinds of leaf have disjoint extended key usages, an agent's
//! certificate cannot be used to impersonate the appliance (rustls/webpki check the EKU),
//! and a leaked server key cannot be used to write as some machine.
//!
//! Keys are ECDSA P-256: rustls, rcgen and every browser an operator may point at the
//! configuration server's web UI handle it (browsers still refuse Ed25519 server
//! certificates). The CA may sign leaves only (`pathLenConstraint = 0`).

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate (PEM) inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key (PKCS#8 PEM, mode 0600) inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Prefix of the URI SAN that carries an agent's machine id in its client certificate.
pub const MACHINE_URI_PREFIX: &str = "lifeboat:machine:";
/// Validity of a newly created CA.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Validity of a server certificate from [`Ca::issue_server`].
pub const SERVER_CERT_VALIDITY_DAYS: u32 = 397;
/// Longest validity [`Ca::sign_client_csr`] accepts.
pub const MAX_CLIENT_VALIDITY_DAYS: u32 = 3650;
/// Longest machine id accepted (it travels in a certificate and in URLs).
pub const MAX_MACHINE_ID_LEN: usize = 128;

/// Certificates start this long in the past, so that a peer whose clock is a little
/// behind ours does not reject a certificate issued a second ago.
const BACKDATE: Duration = Duration::minutes(10);

/// What went wrong in the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Only one of `ca.crt` and `ca.key` exists.
    #[error(
        "the CA directory {} has {present} but not {missing}: restore {missing} from a backup \
         (a new CA would make every registered agent re-register); only if no agent was ever \
         registered, delete {present} to create a new CA",
        dir.display()
    )]
    HalfCreated {
        /// The CA directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },
    /// The CA key file can be read by other users.
    #[error(
        "{} is readable by other users (mode {mode:04o}): run `chmod 600 {}` and check who \
         could have copied it",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM file or string could not be parsed.
    #[error("{what} is not valid: {detail}")]
    Malformed {
        /// What was being parsed, with its path if it came from a file.
        what: String,
        /// Why it was rejected.
        detail: String,
    },
    /// `ca.key` does not belong to `ca.crt`.
    #[error(
        "{} does not hold the private key of {}: restore both files from the same backup",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Generating a key or signing a certificate failed.
    #[error("cannot {action}: {source}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: cannot draw a certificate serial number")]
    Random,
    /// A DNS name or IP address given for a server certificate is not usable.
    #[error("{name:?} cannot be put in the appliance's certificate: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A machine id is not usable in a certificate.
    #[error(
        "machine id {id:?} is not valid: {reason} (1 to {MAX_MACHINE_ID_LEN} characters out of \
         A-Z a-z 0-9 . _ -)"
    )]
    InvalidMachineId {
        /// The id as given.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The validity asked for a client certificate is out of range.
    #[error(
        "a client certificate must be valid for 1 to {MAX_CLIENT_VALIDITY_DAYS} days, not {days}"
    )]
    InvalidValidity {
        /// The number of days asked for.
        days: u32,
    },
    /// The CSR uses a key type the CA does not certify.
    #[error(
        "the certificate signing request uses an unsupported key ({alg}): the agent must use \
         ECDSA P-256, ECDSA P-384 or Ed25519"
    )]
    UnsupportedKey {
        /// The key algorithm found.
        alg: String,
    },
}

/// Result of this module's functions.
pub type Result<T, E = CaError> = std::result::Result<T, E>;

/// A certificate chain and its private key, both PEM.
///
/// For a server identity `cert_pem` holds the leaf followed by the CA certificate, so
/// that a client pinning the CA fingerprint finds the CA in the presented chain. For a
/// client identity it holds the leaf only.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate chain, leaf first, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Never logged.
    pub key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Generates a fresh ECDSA P-256 key pair and a certificate signing request for it.
    ///
    /// Returns `(key_pem, csr_pem)`. `machine_hint` (for example the host name) only
    /// goes into the request's subject for the operator's information: the CA ignores
    /// it and certifies the machine id the appliance assigns.
    pub fn generate_csr(machine_hint: &str) -> Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::Crypto { action: "generate a key pair", source })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // The subject is informational only; keep it printable whatever the hint holds.
        let hint: String =
            machine_hint.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect();
        dn.push(DnType::CommonName, if hint.is_empty() { "lifeboat-agent".into() } else { hint });
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .map_err(|source| CaError::Crypto { action: "create a certificate request", source })?;
        let csr_pem = csr
            .pem()
            .map_err(|source| CaError::Crypto { action: "encode a certificate request", source })?;
        Ok((key.serialize_pem(), csr_pem))
    }

    /// Reads `<stem>.crt` and `<stem>.key` from `dir`.
    pub fn load(dir: &Path, stem: &str) -> Result<Identity> {
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        check_key_permissions(&key_path)?;
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let identity = Identity { cert_pem, key_pem };
        // Fail here, naming the files, rather than later in a TLS config.
        identity.check(&cert_path.display().to_string(), &key_path.display().to_string())?;
        Ok(identity)
    }

    /// Checks that the chain parses and the key is one [`Identity::load`] reads back (a
    /// PKCS#8 key); `cert_what` and `key_what` name them in errors.
    pub fn check(&self, cert_what: &str, key_what: &str) -> Result<()> {
        parse_cert_chain(&self.cert_pem, cert_what)?;
        KeyPair::from_pem(&self.key_pem)
            .map_err(|e| CaError::Malformed { what: key_what.to_owned(), detail: e.to_string() })?;
        Ok(())
    }

    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`, each atomically.
    pub fn store(&self, dir: &Path, stem: &str) -> Result<()> {
        create_private_dir(dir)?;
        write_atomic(&dir.join(format!("{stem}.key")), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(format!("{stem}.crt")), self.cert_pem.as_bytes(), 0o644)
    }
}

/// The appliance's certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    fingerprint: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir`, creating it there first if neither `ca.crt` nor `ca.key`
    /// exists.
    ///
    /// `common_name` is used only when creating. A directory holding only one of the two
    /// files is an error (never silently replaced: a new CA strands every registered
    /// agent), and so is a key file readable by other users.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {}
            (false, false) => {
                create(dir, common_name)?;
                tracing::info!(dir = %dir.display(), "created the appliance certificate authority");
            }
            (true, false) => {
                return Err(CaError::HalfCreated {
                    dir: dir.to_owned(),
                    present: CA_CERT_FILE,
                    missing: CA_KEY_FILE,
                });
            }
            (false, true) => {
                return Err(CaError::HalfCreated {
                    dir: dir.to_owned(),
                    present: CA_KEY_FILE,
                    missing: CA_CERT_FILE,
                });
            }
        }
        check_key_permissions(&key_path)?;
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let ca = Ca::from_pem(&cert_pem, &key_pem, &cert_path, &key_path)?;
        if ca.not_after - OffsetDateTime::now_utc() < Duration::days(365) {
            tracing::warn!(
                not_after = %ca.not_after,
                "the appliance CA expires within a year: plan its rotation"
            );
        }
        Ok(ca)
    }

    fn from_pem(cert_pem: &str, key_pem: &str, cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Malformed {
            what: key_path.display().to_string(),
            detail: e.to_string(),
        })?;
        let chain = parse_cert_chain(cert_pem, &cert_path.display().to_string())?;
        let cert_der = chain.into_iter().next().ok_or_else(|| CaError::Malformed {
            what: cert_path.display().to_string(),
            detail: "no CERTIFICATE block".into(),
        })?;
        let malformed =
            |detail: String| CaError::Malformed { what: cert_path.display().to_string(), detail };
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| malformed(e.to_string()))?;
        if !x509.is_ca() {
            return Err(malformed("the certificate is not a CA certificate".into()));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch { cert: cert_path.into(), key: key_path.into() });
        }
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| malformed(format!("cannot use it as an issuer: {e}")))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            fingerprint: fingerprint_der(&cert_der),
            cert_der,
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM: what clients and the mTLS server trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `sha256:<hex>` of the CA certificate's DER: what the operator copies from the
    /// appliance to an agent for its first contact.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues a server certificate (and a fresh key) for the appliance's HTTPS listeners.
    ///
    /// Each entry is an IP address (v4, v6, optionally in brackets) or a DNS name;
    /// `localhost`, `127.0.0.1` and `::1` are always added, so that tools and agents on
    /// the appliance itself can connect. The first entry, if any, is the subject CN.
    pub fn issue_server(&self, dns_names_and_ips: &[String]) -> Result<Identity> {
        let mut sans: Vec<SanType> = Vec::new();
        let defaults = ["localhost", "127.0.0.1", "::1"].map(String::from);
        for name in dns_names_and_ips.iter().chain(defaults.iter()) {
            let san = server_san(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let cn = dns_names_and_ips.first().map_or("localhost", |s| s.trim());
        let mut params = self.leaf_params(cn, SERVER_CERT_VALIDITY_DAYS)?;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::Crypto { action: "generate a key pair", source })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Crypto { action: "sign a server certificate", source })?;
        Ok(Identity {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem_block()),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate signing request, returning the client certificate
    /// (PEM, leaf only).
    ///
    /// The request's signature is checked (proof that the agent holds the key); its
    /// subject and requested extensions are ignored. The certificate carries `machine_id`
    /// as subject CN and as the URI SAN `lifeboat:machine:<machine_id>`, is valid for
    /// `validity_days` (at most until the CA itself expires) and for client
    /// authentication only.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        machine_id: &str,
        validity_days: u32,
    ) -> Result<String> {
        validate_machine_id(machine_id)?;
        if validity_days == 0 || validity_days > MAX_CLIENT_VALIDITY_DAYS {
            return Err(CaError::InvalidValidity { days: validity_days });
        }
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Malformed {
                what: "the certificate signing request".into(),
                detail: match e {
                    rcgen::Error::CouldNotParseCertificationRequest => {
                        "expected one PEM block `CERTIFICATE REQUEST` (PKCS#10)".into()
                    }
                    rcgen::Error::InvalidCertificationRequestSignature => {
                        "its signature does not match its key".into()
                    }
                    other => other.to_string(),
                },
            })?;
        let alg = csr.public_key.algorithm();
        let allowed =
            [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];
        if !allowed.contains(&alg) {
            return Err(CaError::UnsupportedKey { alg: format!("{alg:?}") });
        }
        let mut params = self.leaf_params(machine_id, validity_days)?;
        let uri = format!("{MACHINE_URI_PREFIX}{machine_id}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|_| {
            CaError::InvalidMachineId { id: machine_id.into(), reason: "not ASCII" }
        })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| CaError::Crypto { action: "sign a client certificate", source })?;
        Ok(cert.pem())
    }

    /// Parameters shared by every leaf: subject CN, validity, serial, key usage.
    fn leaf_params(&self, common_name: &str, validity_days: u32) -> Result<CertificateParams> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.not_before = now - BACKDATE;
        params.not_after = (now + Duration::days(i64::from(validity_days))).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn cert_pem_block(&self) -> String {
        let mut pem = self.cert_pem.trim_end().to_owned();
        pem.push('\n');
        pem
    }
}

/// Creates a new CA in `dir`: the key first, then the certificate, each atomically.
fn create(dir: &Path, common_name: &str) -> Result<()> {
    create_private_dir(dir)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CaError::Crypto { action: "generate the CA key pair", source })?;
    let now = OffsetDateTime::now_utc();
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Lifeboat");
    // Two appliances' CAs must never share a subject: verifiers look issuers up by name,
    // and a clash turns "signed by another CA" into a confusing bad-signature error.
    let unique: String = serial.to_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    dn.push(DnType::OrganizationalUnitName, format!("ca-{unique}"));
    params.distinguished_name = dn;
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(CA_VALIDITY_DAYS));
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|source| CaError::Crypto { action: "self-sign the CA certificate", source })?;
    write_atomic(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), 0o644)
}

/// `sha256:<lowercase hex>` of a DER certificate.
pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The fingerprint of the first certificate in a PEM string.
///
/// An agent uses it after its first contact, to check that the CA certificate the
/// appliance handed over is the one whose fingerprint the operator pinned.
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    let chain = parse_cert_chain(pem, "the certificate")?;
    Ok(fingerprint_der(&chain[0]))
}

/// A certificate's validity as (not before, not after), seconds since the Unix epoch.
pub fn cert_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = x509.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The DNS names and IP addresses a certificate is for (its subject alternative names).
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = x509.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Parses a fingerprint as an operator may type it: `sha256:` prefix optional, hex in
/// either case, optionally with `:` or spaces between bytes (`AB:CD:...`).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let hex = match text.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &text[7..],
        _ => text,
    };
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':' && *b != b' ').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Checks that a machine id can be put in a certificate: 1 to [`MAX_MACHINE_ID_LEN`]
/// characters out of `A-Z a-z 0-9 . _ -`.
pub fn validate_machine_id(id: &str) -> Result<()> {
    let invalid = |reason| CaError::InvalidMachineId { id: id.into(), reason };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_MACHINE_ID_LEN {
        return Err(invalid("it is too long"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(invalid("it holds a character that is not allowed"));
    }
    Ok(())
}

/// Parses every `CERTIFICATE` block of a PEM string; at least one is required.
pub fn parse_cert_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let malformed = |detail: String| CaError::Malformed { what: what.to_owned(), detail };
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(malformed("no `-----BEGIN CERTIFICATE-----` block found".into()));
    }
    for der in &chain {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| malformed(format!("not an X.509 certificate: {e}")))?;
    }
    Ok(chain)
}

fn server_san(name: &str) -> Result<SanType> {
    let invalid = |reason| CaError::InvalidName { name: name.into(), reason };
    let trimmed = name.trim();
    let unbracketed =
        trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let dns = trimmed.trim_end_matches('.').to_ascii_lowercase();
    let labels_ok = dns.len() <= 253
        && dns.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        });
    if !labels_ok {
        return Err(invalid("it is neither an IP address nor a DNS name"));
    }
    let ia5 = dns.try_into().map_err(|_| invalid("it is not ASCII"))?;
    Ok(SanType::DnsName(ia5))
}

/// A random, positive, 16-byte serial number (RFC 5280 wants unique serials per issuer).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and minimally encoded: top bit clear, second bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|source| CaError::Io {
        action: "look for",
        path: path.into(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.into(),
        source,
    })
}

fn check_key_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = fs::metadata(path).map_err(|source| CaError::Io {
            action: "read",
            path: path.into(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions { path: path.into(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates `dir` (mode 0700 where created) and its parents.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CaError::Io {
        action: "create directory",
        path: dir.into(),
        source,
    })
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, created
/// with `mode` (so a key is never readable by others, not even for an instant), synced,
/// renamed over `path`, and the directory synced.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let io_err = |action, p: &Path| {
        let p = p.to_owned();
        move |source| CaError::Io { action, path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    // A leftover from a crash of this very process id; it was never renamed into place.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(data).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing_accepts_operator_spellings() {
        let fp = fingerprint_der(b"hello");
        let raw = parse_fingerprint(&fp).expect("own format");
        let upper_colons: String = fp[7..]
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&upper_colons), Some(raw));
        assert_eq!(parse_fingerprint(&format!("SHA256:{}", &fp[7..])), Some(raw));
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint(&format!("sha256:{}", "zz".repeat(32))), None);
    }

    #[test]
    fn machine_ids_are_validated() {
        assert!(validate_machine_id("m-42.site_a").is_ok());
        assert!(validate_machine_id("").is_err());
        assert!(validate_machine_id("a/b").is_err());
        assert!(validate_machine_id("é").is_err());
        assert!(validate_machine_id(&"a".repeat(MAX_MACHINE_ID_LEN + 1)).is_err());
    }

    #[test]
    fn server_names_are_classified() {
        assert!(matches!(server_san("10.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(server_san("[::1]"), Ok(SanType::IpAddress(_))));
        assert!(
            matches!(server_san("Appliance.Example."), Ok(SanType::DnsName(n)) if n.as_str() == "appliance.example")
        );
        assert!(matches!(server_san("*.example.org"), Ok(SanType::DnsName(_))));
        assert!(server_san("bad name").is_err());
        assert!(server_san("").is_err());
    }
}
