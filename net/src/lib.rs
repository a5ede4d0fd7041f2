//! TLS, certificate authority and HTTP/2 plumbing shared by the agent and the appliance.
//!
//! # Trust model in one paragraph
//!
//! The appliance owns a private certificate authority ([`ca::Ca`]), created on its first
//! start. Its listeners present server certificates from that CA: the configuration
//! server (443) with server-side TLS only, the process server (9443) with mutual TLS. An
//! agent's first contact is the registration on 443: it does not have the CA certificate
//! yet, so it pins the CA *fingerprint* the operator copied from the appliance
//! ([`tls::Trust::Fingerprint`]), proves the operator's one-time passphrase, and sends a
//! certificate signing request for a key it generated itself ([`ca::Identity::generate_csr`]).
//! The appliance assigns the machine id and the CA signs a client certificate carrying it
//! ([`ca::Ca::sign_client_csr`]); the agent keeps the CA certificate and from then on
//! trusts exactly that ([`tls::Trust::Ca`]). On the process server every request carries
//! the verified machine id ([`server::PeerInfo`]), and the appliance lets a machine write
//! only its own disks. The full story, key storage and what rotates is in
//! `docs/security.md`.
//!
//! # Modules
//!
//! * [`ca`]: the CA on disk, server certificates, signing agents' CSRs, fingerprints.
//! * [`tls`]: rustls server and client configs (explicit ring provider, ALPN), the
//!   fingerprint-pinning verifier, reading the machine id from a peer certificate.
//! * [`server`]: the HTTPS accept loop (HTTP/2 and HTTP/1.1), body limits, JSON errors,
//!   graceful shutdown.
//! * [`client`]: an HTTP/2 client with connection reuse, per-request timeouts and errors
//!   that say what to check.
//!
//! # Design choices
//!
//! * **No process-global state.** Every rustls config is built with
//!   [`tls::provider`] (ring) explicitly; nothing installs or depends on a default
//!   provider, so linking another TLS user into the same binary cannot change ours.
//! * **The CA decides identities.** A CSR only proves key possession; its names are
//!   ignored. Server and client leaves have disjoint extended key usages, so one can
//!   never stand in for the other.
//! * **Identity travels with the connection, not the request.** The machine id is read
//!   once per connection from the verified certificate and attached to each request;
//!   handlers never parse identities from headers or bodies.
//! * **Errors say what to do.** Each module has its own error enum; client errors name
//!   the appliance address and the likely cause (not running, wrong fingerprint,
//!   certificate refused so re-register).
#![deny(missing_docs)]

pub mod ca;
pub mod client;
pub mod server;
pub mod tls;

pub use ca::{Ca, CaError, Identity};
pub use client::{Client, ClientError};
pub use server::{
    ApiError, PeerInfo, RequestBody, ResponseBody, ServeOptions, TlsSource, serve, serve_with,
};
pub use tls::{ClientAuth, TlsError, Trust, client_config, peer_machine_id, server_config};
