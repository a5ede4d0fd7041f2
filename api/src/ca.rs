//! The certificate authorities and the recovery passphrase.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/ca/rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaRotate {
    /// Retire the old CA even though some machines have not renewed (they are refused).
    #[serde(default)]
    pub force: bool,
}

/// `GET /api/v1/ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaStatus {
    /// `steady`, `introducing` or `retiring`.
    pub phase: String,
    /// The active CA's fingerprint.
    pub active: String,
    /// The CA being introduced.
    pub next: Option<String>,
    /// CAs still trusted, no longer signing.
    pub retiring: Vec<String>,
    /// Each machine's certificate.
    pub machines: Vec<MachineCert>,
}

/// A machine's certificate in [`CaStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineCert {
    /// Machine id.
    pub id: String,
    /// Fingerprint of the CA that signed its current certificate, if known.
    pub ca: Option<String>,
    /// Its certificate is from the active CA.
    pub on_active_ca: bool,
    /// When it expires.
    pub not_after_unix_ms: Option<u64>,
    /// The machine is revoked.
    pub revoked: bool,
}

/// `PUT /api/v1/recovery-passphrase`: the passphrase the catalogue at the target is sealed
/// under (at least 16 characters). Keep it apart from the appliance: with it, a fresh
/// appliance at the target site fails machines over when this one is lost.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPassphrase {
    /// The passphrase.
    pub passphrase: String,
}

impl std::fmt::Debug for RecoveryPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryPassphrase").finish_non_exhaustive()
    }
}

/// `GET /api/v1/recovery-passphrase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryStatus {
    /// A recovery passphrase is set.
    pub set: bool,
    /// When the catalogue was last written at the target.
    pub catalogue_written_unix_ms: Option<u64>,
}
