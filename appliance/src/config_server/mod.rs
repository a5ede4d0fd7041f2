//! The configuration server role: the control plane on HTTPS 443.
//!
//! It owns who may do what and what the appliance protects: the administrators and their
//! sessions ([`admin`]), the certificate authorities that agents trust and the appliance
//! signs with ([`pki`]), the data keys the other roles seal with ([`keys`]), replication
//! policies and alerts ([`policy`]) and recovery plans ([`plan`]). Its routes are in
//! [`crate::http`]; what it stores is in [`crate::store`].

pub mod admin;
pub mod downloads;
pub mod history;
pub mod keys;
pub mod pki;
pub mod plan;
pub mod policy;
pub mod push;
pub mod targets;
pub mod uploads;

use crate::store::{State, StateError};

/// Why no registration passphrase was made.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The operating system gave no random bytes.
    #[error("no random source: {0}")]
    Random(String),
    /// The state database refused.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A new one-time registration passphrase: 20 random base-32 characters in groups.
pub fn new_passphrase(state: &State) -> Result<String, PassphraseError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| PassphraseError::Random(e.to_string()))?;
    let chars: Vec<char> =
        raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    let p = chars.chunks(5).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-");
    state.add_passphrase(&p)?;
    Ok(p)
}
