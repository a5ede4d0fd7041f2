//! The certificate authority on disk, server certificates and CSR signing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use lifeboat_net::ca::{self, Ca, CaError, Identity, MACHINE_URI_PREFIX};
use lifeboat_net::tls::{self, ClientAuth, TlsError, Trust};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use x509_parser::extensions::GeneralName;

fn new_ca(dir: &std::path::Path) -> Ca {
    Ca::load_or_create(dir, "Lifeboat test CA").expect("create CA")
}

#[test]
fn create_then_reload_gives_the_same_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("state/ca");
    let first = new_ca(&ca_dir);
    let fp = first.fingerprint().to_owned();
    assert!(fp.starts_with("sha256:"), "{fp}");
    assert_eq!(fp.len(), 7 + 64);
    assert!(fp[7..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(ca::fingerprint_pem(first.cert_pem()).expect("fingerprint"), fp);

    let key_before = std::fs::read(ca_dir.join(ca::CA_KEY_FILE)).expect("key");
    let second = Ca::load_or_create(&ca_dir, "ignored on reload").expect("reload CA");
    assert_eq!(second.fingerprint(), fp);
    assert_eq!(second.cert_pem(), first.cert_pem());
    assert_eq!(std::fs::read(ca_dir.join(ca::CA_KEY_FILE)).expect("key"), key_before);

    // A certificate issued by the reloaded CA verifies against the original certificate.
    let identity = second.issue_server(&["appliance.example".into()]).expect("issue");
    verify_server(first.cert_pem(), &identity, "appliance.example").expect("verifies");
    // No temporary files are left behind.
    let mut names: Vec<_> = std::fs::read_dir(&ca_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"]);
}

#[cfg(unix)]
#[test]
fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    new_ca(dir.path());
    let key = dir.path().join(ca::CA_KEY_FILE);
    let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A key others can read is refused on load, with the fix in the message.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Ca::load_or_create(dir.path(), "x").expect_err("must refuse");
    assert!(matches!(err, CaError::KeyPermissions { mode: 0o644, .. }), "{err:?}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn half_created_ca_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    new_ca(dir.path());
    std::fs::remove_file(dir.path().join(ca::CA_KEY_FILE)).expect("rm");
    let err = Ca::load_or_create(dir.path(), "x").expect_err("must refuse");
    assert!(matches!(err, CaError::HalfCreated { missing: "ca.key", .. }), "{err:?}");
    assert!(err.to_string().contains("restore ca.key"), "{err}");
    assert!(dir.path().join(ca::CA_CERT_FILE).exists(), "the certificate must be left alone");
}

#[test]
fn key_not_matching_certificate_is_detected() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    new_ca(a.path());
    new_ca(b.path());
    std::fs::copy(b.path().join(ca::CA_KEY_FILE), a.path().join(ca::CA_KEY_FILE)).expect("copy");
    let err = Ca::load_or_create(a.path(), "x").expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn malformed_ca_files_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    new_ca(dir.path());
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), "not a certificate\n").expect("write");
    let err = Ca::load_or_create(dir.path(), "x").expect_err("malformed");
    let text = err.to_string();
    assert!(text.contains("ca.crt") && text.contains("BEGIN CERTIFICATE"), "{text}");
}

fn verify_server(ca_pem: &str, identity: &Identity, name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.expect("ca pem")).expect("add root");
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .build()
        .expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
    let name = ServerName::try_from(name.to_owned()).expect("name");
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
}

#[test]
fn server_certificate_verifies_against_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let identity = ca
        .issue_server(&["appliance.example".into(), "10.1.2.3".into(), "[fd00::7]".into()])
        .expect("issue");
    // The chain is leaf + CA, so a fingerprint-pinning client finds the CA in it.
    let chain: Vec<_> = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(ca::fingerprint_der(&chain[1]), ca.fingerprint());

    for name in ["appliance.example", "10.1.2.3", "fd00::7", "localhost", "127.0.0.1", "::1"] {
        verify_server(ca.cert_pem(), &identity, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = verify_server(ca.cert_pem(), &identity, "other.example").expect_err("wrong name");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );

    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = new_ca(other_dir.path());
    let err =
        verify_server(other.cert_pem(), &identity, "appliance.example").expect_err("other CA");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        "{err:?}"
    );

    let err = ca.issue_server(&["not a name".into()]).expect_err("bad name");
    assert!(matches!(err, CaError::InvalidName { .. }), "{err:?}");
}

#[test]
fn csr_signing_ignores_requested_names_and_uses_the_assigned_machine_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());

    // A hostile request: asks to be the appliance, another machine, and a CA.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["appliance.example".to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("{MACHINE_URI_PREFIX}someone-else").try_into().expect("uri"),
    ));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let csr_pem = params.serialize_request(&key).expect("csr").pem().expect("pem");

    let cert_pem = ca.sign_client_csr(&csr_pem, "m-42", 30).expect("sign");
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");

    let cns: Vec<_> =
        cert.subject().iter_common_name().map(|cn| cn.as_str().expect("cn")).collect();
    assert_eq!(cns, ["m-42"]);
    let san = cert.subject_alternative_name().expect("san ext").expect("san present");
    assert_eq!(san.value.general_names, [GeneralName::URI("lifeboat:machine:m-42")]);
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().expect("eku ext").expect("eku present").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    // The certificate certifies the requester's key, not another one.
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 30, "30 days plus the small backdating");
    assert_eq!(tls::machine_id_from_cert(&der).as_deref(), Some("m-42"));

    // The agent-side helper produces a CSR the CA accepts.
    let (key_pem, csr_pem) = Identity::generate_csr("db01.corp").expect("generate");
    assert!(key_pem.contains("PRIVATE KEY") && csr_pem.contains("CERTIFICATE REQUEST"));
    let cert_pem = ca.sign_client_csr(&csr_pem, "m-43", 365).expect("sign");
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
    assert_eq!(tls::machine_id_from_cert(&der).as_deref(), Some("m-43"));
}

#[test]
fn bad_csrs_and_arguments_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let (_, csr_pem) = Identity::generate_csr("host").expect("generate");

    let err = ca.sign_client_csr("garbage", "m-1", 30).expect_err("garbage");
    assert!(matches!(err, CaError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("CERTIFICATE REQUEST"), "{err}");

    // Flip one byte of the signed content: the proof of possession fails.
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .expect("csr der");
    let mut bytes = der.as_ref().to_vec();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64(&bytes)
    );
    let err = ca.sign_client_csr(&tampered, "m-1", 30).expect_err("tampered");
    assert!(matches!(err, CaError::Malformed { .. }), "{err:?}");

    let err = ca.sign_client_csr(&csr_pem, "../etc", 30).expect_err("bad id");
    assert!(matches!(err, CaError::InvalidMachineId { .. }), "{err:?}");
    let err = ca.sign_client_csr(&csr_pem, "m-1", 0).expect_err("zero days");
    assert!(matches!(err, CaError::InvalidValidity { days: 0 }), "{err:?}");
}

#[test]
fn malformed_pem_gives_clear_tls_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let good = ca.issue_server(&[]).expect("issue");

    let bad_cert = Identity {
        cert_pem: "-----BEGIN CERTIFICATE-----\n!!!\n".into(),
        key_pem: good.key_pem.clone(),
    };
    let err = tls::server_config(&bad_cert, ClientAuth::None).expect_err("bad cert");
    assert!(matches!(err, TlsError::Certificate(_)), "{err:?}");
    assert!(err.to_string().contains("the server certificate is not valid"), "{err}");

    let bad_key = Identity { cert_pem: good.cert_pem.clone(), key_pem: "no key here".into() };
    let err = tls::server_config(&bad_key, ClientAuth::None).expect_err("bad key");
    assert!(matches!(err, TlsError::PrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");

    let other = ca.issue_server(&[]).expect("issue");
    let mismatched = Identity { cert_pem: good.cert_pem.clone(), key_pem: other.key_pem };
    let err = tls::server_config(&mismatched, ClientAuth::None).expect_err("mismatch");
    assert!(matches!(err, TlsError::Rustls { .. }), "{err:?}");

    let err =
        tls::server_config(&good, ClientAuth::Required { ca_pem: "junk".into() }).expect_err("ca");
    assert!(err.to_string().contains("appliance CA certificate"), "{err}");

    let err = tls::client_config(Trust::Fingerprint("sha256:1234".into()), None).expect_err("fp");
    assert!(matches!(err, TlsError::BadFingerprint { .. }), "{err:?}");
    let err = tls::client_config(Trust::Ca(String::new()), None).expect_err("empty ca");
    assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
}

#[test]
fn identity_store_and_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let identity = ca.issue_server(&["a.example".into()]).expect("issue");
    let id_dir = dir.path().join("tls");
    identity.store(&id_dir, "server").expect("store");
    assert_eq!(Identity::load(&id_dir, "server").expect("load"), identity);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(id_dir.join("server.key")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!format!("{identity:?}").contains("PRIVATE KEY"), "Debug must not print the key");
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
