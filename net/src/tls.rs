//! rustls configurations for the appliance's listeners and the agent's connections.
//!
//! * Every config is built with an explicit crypto provider ([`provider`], ring): nothing
//!   here relies on a process-wide default provider being installed, so the agent, the
//!   appliance and tests behave the same whatever else is linked in.
//! * Servers ([`server_config`]) offer ALPN `h2` and `http/1.1` (browsers reach the web
//!   UI on the configuration server). [`ClientAuth::Required`] makes the server demand a
//!   client certificate signed by our CA, with the `clientAuth` usage.
//! * Clients ([`client_config`]) offer ALPN `h2` only: they speak to our own servers.
//!   They trust either the appliance CA ([`Trust::Ca`], normal operation) or, before the
//!   agent has registered and holds the CA certificate, a CA *fingerprint* the operator
//!   copied from the appliance ([`Trust::Fingerprint`]): the presented chain must contain
//!   a certificate with that SHA-256, and the leaf is then verified against it as the only
//!   trust anchor, exactly as with [`Trust::Ca`] (signature, validity, `serverAuth`,
//!   server name). See `docs/security.md`.
//! * [`peer_machine_id`] reads the machine id out of a verified client certificate.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use crate::ca::{self, CaError, Identity, MACHINE_URI_PREFIX};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// Offered by Lifeboat's own clients (agents, the CLI, peers) after `h2`, never selected:
/// it tells a configuration server that presents a certificate of the site's own CA to
/// browsers to present its appliance-CA certificate instead, which these clients pin
/// ([`split_server_config`]).
pub const ALPN_LIFEBOAT: &[u8] = b"x-lifeboat";

/// What went wrong while building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate (chain) PEM could not be parsed.
    #[error(transparent)]
    Certificate(#[from] CaError),
    /// A private key PEM could not be parsed.
    #[error("the private key of {what} is not valid: {detail}")]
    PrivateKey {
        /// Whose key it is.
        what: &'static str,
        /// Why it was rejected.
        detail: String,
    },
    /// A pinned fingerprint is not a SHA-256 fingerprint.
    #[error(
        "{given:?} is not a CA fingerprint: copy it from the appliance, it looks like \
         `sha256:` followed by 64 hexadecimal digits"
    )]
    BadFingerprint {
        /// The fingerprint as given.
        given: String,
    },
    /// rustls refused the configuration (for example a key that does not match its
    /// certificate, or a CA certificate that cannot be a trust anchor).
    #[error("cannot {action}: {source}")]
    Rustls {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("cannot set up client certificate verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Result of this module's functions.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Whether a server asks for client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Server authentication only (configuration server on 443: registration, web UI).
    None,
    /// Mutual TLS: a client certificate issued by this CA is required (process server
    /// on 9443).
    Required {
        /// The appliance CA certificate, PEM.
        ca_pem: String,
    },
}

/// What a client trusts the server's certificate with.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The appliance CA certificate (PEM), as received at registration.
    Ca(String),
    /// The appliance CA's fingerprint (`sha256:<hex>`) as copied by the operator, for the
    /// first contact before registration.
    Fingerprint(String),
}

/// The crypto provider every config of this crate uses (ring), built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// A server config presenting `identity`, with ALPN `h2` and `http/1.1`.
pub fn server_config(identity: &Identity, client_auth: ClientAuth) -> Result<Arc<ServerConfig>> {
    let chain = ca::parse_cert_chain(&identity.cert_pem, "the server certificate")?;
    let key = parse_key(&identity.key_pem, "the server certificate")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { action: "select TLS versions", source })?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required { ca_pem } => {
            let roots = root_store(&ca_pem)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls { action: "use the server certificate", source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A server config (ALPN `h2`, `http/1.1`, no client certificates) presenting `lifeboat`
/// to clients that offer [`ALPN_LIFEBOAT`] (Lifeboat's agents, CLI and peers, which pin the
/// appliance CA) and `browsers` to every other client (a certificate of the site's own CA).
pub fn split_server_config(browsers: &Identity, lifeboat: &Identity) -> Result<Arc<ServerConfig>> {
    let certified =
        |id: &Identity| -> Result<Arc<rustls::sign::CertifiedKey>> {
            let chain = ca::parse_cert_chain(&id.cert_pem, "the server certificate")?;
            let key = parse_key(&id.key_pem, "the server certificate")?;
            Ok(Arc::new(rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(
                |source| TlsError::Rustls { action: "use the server certificate", source },
            )?))
        };
    let resolver = ByAlpn { browsers: certified(browsers)?, lifeboat: certified(lifeboat)? };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { action: "select TLS versions", source })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct ByAlpn {
    browsers: Arc<rustls::sign::CertifiedKey>,
    lifeboat: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let ours = hello.alpn().is_some_and(|mut offered| offered.any(|p| p == ALPN_LIFEBOAT));
        Some(if ours { self.lifeboat.clone() } else { self.browsers.clone() })
    }
}

/// A client config trusting `trust`, presenting `identity` if given, with ALPN `h2`.
pub fn client_config(trust: Trust, identity: Option<&Identity>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { action: "select TLS versions", source })?;
    let builder = match trust {
        Trust::Ca(pem) => builder.with_root_certificates(root_store(&pem)?),
        Trust::Fingerprint(given) => {
            let pinned = ca::parse_fingerprint(&given).ok_or(TlsError::BadFingerprint { given })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pinned)))
        }
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = ca::parse_cert_chain(&identity.cert_pem, "the client certificate")?;
            let key = parse_key(&identity.key_pem, "the client certificate")?;
            builder.with_client_auth_cert(chain, key).map_err(|source| TlsError::Rustls {
                action: "use the client certificate",
                source,
            })?
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_LIFEBOAT.to_vec()];
    Ok(Arc::new(config))
}

/// The handshake-signature methods of a `ServerCertVerifier` whose `provider` field holds
/// the crypto provider: both verifiers here check signatures the same way.
macro_rules! provider_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// A client config for one agent calling another (consistency-group peers, port 20004):
/// both sides present their agent certificates, issued by the appliance CA for client
/// authentication. The server's certificate is verified as a client certificate would be
/// (chain to `ca_pem`, validity, `clientAuth` usage) and must carry `expected_machine` as
/// its machine id; the address dialled is not part of it (agents have no DNS names).
pub fn peer_client_config(
    ca_pem: &str,
    identity: &Identity,
    expected_machine: &str,
) -> Result<Arc<ClientConfig>> {
    let roots = root_store(ca_pem)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let verifier =
        PeerVerifier { inner, expected: expected_machine.to_owned(), provider: provider() };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { action: "select TLS versions", source })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let chain = ca::parse_cert_chain(&identity.cert_pem, "the client certificate")?;
    let key = parse_key(&identity.key_pem, "the client certificate")?;
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Rustls { action: "use the client certificate", source })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_LIFEBOAT.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a peer agent's certificate; see [`peer_client_config`].
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match machine_id_from_cert(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::General(format!(
                "the peer presented the certificate of machine {}, expected {}",
                found.as_deref().unwrap_or("(none)"),
                self.expected
            ))),
        }
    }

    provider_signatures!();
}

/// The machine id of the verified client certificate on an accepted server connection,
/// or `None` if the client presented no certificate (servers with [`ClientAuth::None`])
/// or one without exactly one valid `lifeboat:machine:` URI SAN.
pub fn peer_machine_id<IO>(conn: &tokio_rustls::server::TlsStream<IO>) -> Option<String> {
    let (_, session) = conn.get_ref();
    let leaf = session.peer_certificates()?.first()?;
    machine_id_from_cert(leaf)
}

/// The machine id carried by a certificate's `lifeboat:machine:<id>` URI SAN.
///
/// This does not verify the certificate: call it on certificates a verifier accepted.
pub fn machine_id_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => uri.strip_prefix(MACHINE_URI_PREFIX),
        _ => None,
    });
    let id = ids.next()?;
    if ids.next().is_some() || ca::validate_machine_id(id).is_err() {
        return None;
    }
    Some(id.to_owned())
}

/// The presented chain holds no certificate with the pinned fingerprint, or the leaf is
/// not signed by it. Carried inside `rustls::Error` so that clients can name the problem.
#[derive(Debug, Clone)]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: String,
    /// Fingerprints of the certificates the server presented, leaf first.
    pub presented: Vec<String>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate is not signed by the pinned CA {} (it presented {})",
            self.expected,
            self.presented.join(", ")
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies a server against a pinned CA fingerprint (first contact).
///
/// The CA certificate is taken from the presented chain only if its SHA-256 equals the
/// pin; it then becomes the single trust anchor of a standard webpki verification of the
/// leaf. A chain without the pinned CA, or a leaf not issued by it, fails with
/// [`PinMismatch`].
#[derive(Debug)]
struct PinnedCaVerifier {
    pinned: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    fn new(pinned: [u8; 32]) -> Self {
        PinnedCaVerifier { pinned, provider: provider() }
    }

    fn mismatch(
        &self,
        end_entity: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
    ) -> rustls::Error {
        let presented =
            std::iter::once(end_entity).chain(rest).map(|c| ca::fingerprint_der(c)).collect();
        let mut expected = String::from("sha256:");
        for b in self.pinned {
            expected.push_str(&format!("{b:02x}"));
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            PinMismatch { expected, presented },
        ))))
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::{Digest as _, Sha256};
        let Some(anchor) =
            intermediates.iter().find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pinned)
        else {
            return Err(self.mismatch(end_entity, intermediates));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| *c != anchor).cloned().collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now).map_err(
            |e| match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => self.mismatch(end_entity, intermediates),
                other => other,
            },
        )
    }

    provider_signatures!();
}

fn root_store(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in ca::parse_cert_chain(ca_pem, "the appliance CA certificate")? {
        roots.add(der).map_err(|source| TlsError::Rustls {
            action: "trust the appliance CA certificate",
            source,
        })?;
    }
    Ok(roots)
}

fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::PrivateKey {
        what,
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no `-----BEGIN PRIVATE KEY-----` block found".into()
            }
            other => other.to_string(),
        },
    })
}
