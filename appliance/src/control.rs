//! Control objects: small messages between the roles of a split deployment, kept in the
//! target's log area beside the logs (the one place both sites reach).
//!
//! The master target at a target site has its own state; the agents talk only to the
//! source site. When the master target finds a disk's logs missing (`crate::master_target`), it
//! asks for a comparison of the disk with its replica by writing a *compare request*
//! object; the source's process server reads it and hands the request to the agent
//! (`crate::process_server`); once the agent is done, the process server writes a *compare done*
//! object, which the master target reads. Where one appliance runs both roles the objects
//! are written and read all the same (the state already agrees, so reading them changes
//! nothing).
//!
//! # Format (version 1)
//!
//! Name: `control.<kind>.<machine>-d<disk>`, `kind` being `compare-request` or
//! `compare-done`. Content: the magic `LBCTL\x01\0\0` (frozen), one byte the length of the
//! data key's id, the id, a 12-byte random nonce, then the JSON body sealed with that data
//! key (AES-256-GCM, the associated data being the magic followed by the object's name,
//! so an object cannot be replayed under another name). The target storage is not
//! trusted: an object that does not open under a key this appliance holds is ignored
//! (left where it is), never acted on. See `docs/formats/control-object.md`.

use lifeboat_plugin_host::keys::KeyRing;
use lifeboat_wire::MachineId;

/// Magic of control objects, version 1. Frozen.
pub const MAGIC: &[u8; 8] = b"LBCTL\x01\0\0";

/// Name prefix of compare requests.
pub const COMPARE_REQUEST: &str = "control.compare-request.";
/// Name prefix of compare-done records.
pub const COMPARE_DONE: &str = "control.compare-done.";

/// Why a control object was not opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not a control object of format 1.
    #[error("not a control object (bad magic or truncated)")]
    Format,
    /// Sealed with a key this appliance does not hold.
    #[error("sealed with key {0:?}, which this appliance does not hold")]
    UnknownKey(String),
    /// It does not open: altered, or written under another name.
    #[error("does not open under its key: {0}")]
    Seal(String),
    /// No active key to seal with.
    #[error("no active data key")]
    NoKey,
}

/// The name of a control object of `prefix` for a disk.
pub fn name(prefix: &str, machine: MachineId, disk: u32) -> String {
    format!("{prefix}{}", crate::logobj::disk_id(machine, disk))
}

/// The disk a control object's name is about.
pub fn parse_name(prefix: &str, name: &str) -> Option<(MachineId, u32)> {
    crate::logobj::parse_disk_id(name.strip_prefix(prefix)?)
}

fn aad(name: &str) -> Vec<u8> {
    let mut a = MAGIC.to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

/// Seals `body` as the control object `name` with the active data key.
pub fn seal(keys: &KeyRing, name: &str, body: &[u8]) -> Result<Vec<u8>, ControlError> {
    let key = keys.keys().iter().find(|k| k.active()).ok_or(ControlError::NoKey)?;
    let id = key.id().as_bytes();
    let id_len = u8::try_from(id.len()).map_err(|_| ControlError::NoKey)?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| ControlError::Seal(e.to_string()))?;
    let mut sealed = body.to_vec();
    key.seal_in_place(&nonce, &aad(name), &mut sealed).map_err(ControlError::Seal)?;
    let mut out = MAGIC.to_vec();
    out.push(id_len);
    out.extend_from_slice(id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens the control object `name`: its JSON body.
pub fn open(keys: &KeyRing, name: &str, bytes: &[u8]) -> Result<Vec<u8>, ControlError> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(ControlError::Format)?;
    let (&id_len, rest) = rest.split_first().ok_or(ControlError::Format)?;
    if rest.len() < id_len as usize + 12 {
        return Err(ControlError::Format);
    }
    let (id, rest) = rest.split_at(id_len as usize);
    let (nonce, sealed) = rest.split_at(12);
    let id = String::from_utf8_lossy(id).into_owned();
    let key = keys.get(&id).ok_or(ControlError::UnknownKey(id))?;
    let mut body = sealed.to_vec();
    key.open_in_place(nonce, &aad(name), &mut body).map_err(ControlError::Seal)?;
    Ok(body)
}

/// Body of a compare request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRequested {
    /// The request's token.
    pub token: u64,
}

/// Body of a compare-done record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareFinished {
    /// The request's token.
    pub token: u64,
    /// The point from which the replica is whole.
    pub point: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_plugin_host::keys::{Algorithm, Key};

    fn ring(id: &str, byte: u8) -> KeyRing {
        KeyRing::new(vec![Key::new(id, Algorithm::Aes256Gcm, &[byte; 32], true)])
    }

    #[test]
    fn objects_open_only_under_their_key_and_name() {
        let keys = ring("dk-1", 7);
        let m = MachineId([3; 16]);
        let n = name(COMPARE_DONE, m, 2);
        assert_eq!(parse_name(COMPARE_DONE, &n), Some((m, 2)));
        assert_eq!(parse_name(COMPARE_REQUEST, &n), None);
        let sealed = seal(&keys, &n, br#"{"token":5,"point":9}"#).unwrap();
        assert_eq!(open(&keys, &n, &sealed).unwrap(), br#"{"token":5,"point":9}"#);
        // Under another name (replayed for another disk), with another key, altered,
        // truncated, or not one at all: refused.
        let other = name(COMPARE_DONE, m, 3);
        assert!(matches!(open(&keys, &other, &sealed), Err(ControlError::Seal(_))));
        assert!(matches!(open(&ring("dk-2", 7), &n, &sealed), Err(ControlError::UnknownKey(_))));
        assert!(matches!(open(&ring("dk-1", 8), &n, &sealed), Err(ControlError::Seal(_))));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(open(&keys, &n, &altered).is_err());
        for cut in [0, 5, 8, 9, 12, 20] {
            assert!(open(&keys, &n, &sealed[..cut]).is_err(), "{cut}");
        }
        assert!(matches!(open(&keys, &n, b"{\"token\":5}"), Err(ControlError::Format)));
    }
}
