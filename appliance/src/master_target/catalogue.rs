//! The catalogue at the target: what a fresh appliance at the target site needs to fail
//! machines over when the source site (and its appliance) is gone — machines, disks,
//! recovery points, consistency-group points, what the agents detected and the VM settings,
//! and the data keys that open logs still at the target — sealed under the administrator's
//! recovery passphrase.
//!
//! The administrator sets the passphrase (`PUT /api/v1/recovery-passphrase`); the appliance
//! keeps only the key derived from it (argon2id, in `<data_dir>/keys/recovery.seal`, mode
//! 0600). The master target then writes the catalogue as the target object
//! [`OBJECT`] whenever it changed (at most every [`WRITE_EVERY`]). `lifeboat-appliance
//! recover` on a fresh appliance with the same target reads it with the passphrase and
//! imports it.
//!
//! Sealed format, version 1 (all integers little-endian):
//!
//! ```text
//! magic "LBCAT\0\0\x01" (8) | m_cost u32 | t_cost u32 | p_cost u32 | salt (16) | nonce (12)
//! | AES-256-GCM ciphertext of the catalogue JSON, with the 48 header bytes as associated data
//! ```
//!
//! The key is argon2id(passphrase, salt, m_cost KiB, t_cost, p_cost), 32 bytes. A wrong
//! passphrase and a changed byte both fail authentication; nothing is imported then.

use crate::master_target::MasterError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use lifeboat_wire::MachineId;
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::store::{PointRow, State};

/// The catalogue's object name at the target.
pub const OBJECT: &str = "lifeboat-catalogue";
/// Magic and version of the sealed format.
pub const MAGIC: &[u8; 8] = b"LBCAT\0\0\x01";
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 8 + 12 + 16 + 12;
/// The catalogue is written at most this often.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Shortest recovery passphrase.
pub const MIN_PASSPHRASE: usize = 16;
/// Largest sealed catalogue read back (a corrupt length cannot make the reader allocate more).
pub const MAX_SEALED: usize = 256 << 20;

/// argon2id cost: 64 MiB, 3 passes, 1 lane (OWASP's floor is 19 MiB, 2 passes).
const M_COST: u32 = 64 << 10;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

/// Why a catalogue cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// Not a sealed catalogue of a version this build reads.
    #[error("not a Lifeboat catalogue of a known version: {0}")]
    Format(String),
    /// Authentication failed.
    #[error("wrong recovery passphrase, or the catalogue was changed")]
    Open,
    /// The JSON inside is not a catalogue.
    #[error("the catalogue's contents are not understood: {0}")]
    Contents(String),
}

/// A key derived from the recovery passphrase, with its salt and costs.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealer {
    /// argon2id memory cost in KiB.
    pub m_cost: u32,
    /// argon2id passes.
    pub t_cost: u32,
    /// argon2id lanes.
    pub p_cost: u32,
    /// Salt, hex.
    pub salt: String,
    /// The derived key, hex.
    pub key: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("m_cost", &self.m_cost).finish_non_exhaustive()
    }
}

fn derive(passphrase: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32], String> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| e.to_string())?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    a.hash_password_into(passphrase.as_bytes(), salt, &mut key).map_err(|e| e.to_string())?;
    Ok(key)
}

impl Sealer {
    /// A new key from `passphrase` with a fresh salt.
    pub fn new(passphrase: &str) -> Result<Sealer, MasterError> {
        Self::with_costs(passphrase, M_COST, T_COST, P_COST)
    }

    fn with_costs(passphrase: &str, m: u32, t: u32, p: u32) -> Result<Sealer, MasterError> {
        if passphrase.chars().count() < MIN_PASSPHRASE {
            return Err(MasterError::msg(format!(
                "the recovery passphrase must be at least {MIN_PASSPHRASE} characters"
            )));
        }
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| MasterError::msg(format!("no random source: {e}")))?;
        let key = derive(passphrase, &salt, m, t, p).map_err(MasterError::msg)?;
        Ok(Sealer {
            m_cost: m,
            t_cost: t,
            p_cost: p,
            salt: hex::encode(salt),
            key: hex::encode(key),
        })
    }

    /// Seals `plain` (the catalogue JSON).
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, MasterError> {
        let key: [u8; 32] =
            hex::decode(&self.key)?.try_into().map_err(|_| MasterError::msg("bad key"))?;
        let salt: [u8; 16] =
            hex::decode(&self.salt)?.try_into().map_err(|_| MasterError::msg("bad salt"))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce)
            .map_err(|e| MasterError::msg(format!("no random source: {e}")))?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        for v in [self.m_cost, self.t_cost, self.p_cost] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let cipher = Aes256Gcm::new(&key.into());
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &out[..HEADER_LEN] })
            .map_err(|_| MasterError::msg("sealing failed"))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Where the appliance keeps it.
    pub fn path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("keys/recovery.seal")
    }

    /// The stored sealer, if a recovery passphrase was set.
    pub fn load(data_dir: &Path) -> Result<Option<Sealer>, MasterError> {
        match std::fs::read_to_string(Self::path(data_dir)) {
            Ok(t) => Ok(Some(serde_json::from_str(&t)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores it (mode 0600, atomically).
    pub fn store(&self, data_dir: &Path) -> Result<(), MasterError> {
        let p = Self::path(data_dir);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        lifeboat_common::fs::write_atomic(
            &p,
            serde_json::to_string(self)?.as_bytes(),
            Some(0o600),
        )?;
        Ok(())
    }
}

/// Opens a sealed catalogue with `passphrase`.
pub fn open(passphrase: &str, sealed: &[u8]) -> Result<Catalogue, CatalogueError> {
    if sealed.len() > MAX_SEALED {
        return Err(CatalogueError::Format(format!("{} bytes is too large", sealed.len())));
    }
    if sealed.len() < HEADER_LEN + 16 {
        return Err(CatalogueError::Format(format!("{} bytes is too short", sealed.len())));
    }
    if &sealed[..8] != MAGIC {
        return Err(CatalogueError::Format("bad magic or version".into()));
    }
    let u = |i: usize| u32::from_le_bytes(std::array::from_fn(|j| sealed[8 + 4 * i + j]));
    let (m, t, p) = (u(0), u(1), u(2));
    // Costs come from the file: bounded, so a forged header cannot ask for a huge derivation.
    if !(8..=(1 << 21)).contains(&m) || !(1..=16).contains(&t) || !(1..=16).contains(&p) {
        return Err(CatalogueError::Format(format!(
            "argon2 costs m={m} t={t} p={p} are out of range"
        )));
    }
    let salt = &sealed[20..36];
    let nonce = &sealed[36..48];
    let key = derive(passphrase, salt, m, t, p).map_err(CatalogueError::Format)?;
    let cipher = Aes256Gcm::new(&key.into());
    let plain = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload { msg: &sealed[HEADER_LEN..], aad: &sealed[..HEADER_LEN] },
        )
        .map_err(|_| CatalogueError::Open)?;
    let c: Catalogue =
        serde_json::from_slice(&plain).map_err(|e| CatalogueError::Contents(e.to_string()))?;
    if c.format != 1 {
        return Err(CatalogueError::Contents(format!("format {} is not known", c.format)));
    }
    Ok(c)
}

/// The catalogue, format 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// 1.
    pub format: u32,
    /// When it was written.
    pub written_unix_ms: u64,
    /// Protected machines.
    pub machines: Vec<CatalogueMachine>,
    /// Consistency-group points.
    pub group_points: Vec<CatalogueGroupPoint>,
    /// The data keys (id, 32 bytes hex) that open logs at the target.
    pub data_keys: Vec<(String, String)>,
}

/// A machine in the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueMachine {
    /// Machine id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// When it registered.
    pub registered_unix_ms: u64,
    /// (index, size, path).
    pub disks: Vec<(u32, u64, String)>,
    /// What its agent detected (`SystemInfo` JSON).
    pub system: Option<serde_json::Value>,
    /// The administrator's VM settings (`VmSpecSettings` JSON).
    pub vm_settings: Option<serde_json::Value>,
    /// Its recovery points, oldest first.
    pub points: Vec<CataloguePoint>,
}

/// A recovery point in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CataloguePoint {
    /// Point id at the target.
    pub id: String,
    /// The agent's point number.
    pub point: u64,
    /// `crash` or `app`.
    pub kind: String,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Disk indexes.
    pub disks: Vec<u32>,
}

/// A consistency-group point in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueGroupPoint {
    /// Group.
    pub group: String,
    /// Point number.
    pub point: u64,
    /// Members.
    pub members: Vec<String>,
    /// When it was recorded.
    pub created_unix_ms: u64,
}

/// A machine id of the catalogue.
fn parse_id(id: &str) -> Result<MachineId, MasterError> {
    id.parse().map_err(|e: String| MasterError::msg(format!("the catalogue is malformed: {e}")))
}

/// The catalogue of `state` now, with the data keys in `keys_dir`.
pub fn build(state: &State, keys_dir: &Path) -> Result<Catalogue, MasterError> {
    let mut machines = Vec::new();
    for (id, hostname, registered_unix_ms) in state.machines()? {
        let disks = state.disk_rows(id)?;
        let system = state.machine_facts(id)?.map(|t| serde_json::from_str(&t)).transpose()?;
        let vm_settings = state.vm_settings(id)?.map(|t| serde_json::from_str(&t)).transpose()?;
        let points = state
            .points(id)?
            .into_iter()
            .map(|p| CataloguePoint {
                id: p.id,
                point: p.point,
                kind: p.kind.to_string(),
                created_unix_ms: p.created_unix_ms,
                disks: p.disks,
            })
            .collect();
        machines.push(CatalogueMachine {
            id: id.to_string(),
            hostname,
            registered_unix_ms,
            disks,
            system,
            vm_settings,
            points,
        });
    }
    let group_points = state
        .group_points(None)?
        .into_iter()
        .map(|g| CatalogueGroupPoint {
            group: g.group,
            point: g.point,
            members: g.members.iter().map(MachineId::to_string).collect(),
            created_unix_ms: g.created_unix_ms,
        })
        .collect();
    let mut data_keys = Vec::new();
    if let Ok(rd) = std::fs::read_dir(keys_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".key") {
                data_keys.push((id.to_owned(), hex::encode(std::fs::read(e.path())?)));
            }
        }
    }
    data_keys.sort();
    Ok(Catalogue { format: 1, written_unix_ms: 0, machines, group_points, data_keys })
}

/// Imports `c` into a fresh appliance's `state` and `keys_dir`. Refuses a state that
/// already knows machines (importing into a live appliance would mix two sites).
pub fn import(state: &State, keys_dir: &Path, c: &Catalogue) -> Result<(), MasterError> {
    if !state.machines()?.is_empty() {
        return Err(MasterError::msg(
            "this appliance already has machines: recover into a fresh data directory",
        ));
    }
    // Everything is checked before anything is written.
    for m in &c.machines {
        lifeboat_net::ca::validate_machine_id(&m.id)
            .map_err(|e| MasterError::msg(format!("the catalogue's machine {:?}: {e}", m.id)))?;
        if let Some(s) = &m.system {
            let s: lifeboat_api::SystemInfo = serde_json::from_value(s.clone())?;
            s.check().map_err(MasterError::msg)?;
        }
        if let Some(v) = &m.vm_settings {
            let v: lifeboat_api::VmSpecSettings = serde_json::from_value(v.clone())?;
            v.check().map_err(MasterError::msg)?;
        }
        for p in &m.points {
            let ok = !p.id.is_empty()
                && p.id.len() <= 200
                && p.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok || p.kind.parse::<lifeboat_api::PointKind>().is_err() {
                return Err(MasterError::msg(format!(
                    "the catalogue's point {:?} of {} is malformed",
                    p.id, m.id
                )));
            }
        }
    }
    for g in &c.group_points {
        for m in &g.members {
            lifeboat_net::ca::validate_machine_id(m).map_err(|e| {
                MasterError::msg(format!("the catalogue's group {:?}: {e}", g.group))
            })?;
        }
    }
    for (id, key_hex) in &c.data_keys {
        let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok || hex::decode(key_hex).ok().filter(|k| k.len() == 32).is_none() {
            return Err(MasterError::msg(format!("the catalogue's data key {id:?} is malformed")));
        }
    }
    for (id, key_hex) in &c.data_keys {
        let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let key = hex::decode(key_hex).ok().filter(|k| k.len() == 32);
        let (true, Some(key)) = (ok, key) else {
            return Err(MasterError::msg(format!("the catalogue's data key {id:?} is malformed")));
        };
        std::fs::create_dir_all(keys_dir)?;
        lifeboat_common::fs::write_atomic(&keys_dir.join(format!("{id}.key")), &key, Some(0o600))?;
    }
    for m in &c.machines {
        let id = parse_id(&m.id)?;
        state.import_machine(id, &m.hostname, m.registered_unix_ms)?;
        for (index, size, path) in &m.disks {
            state.upsert_disk(id, *index, *size, path)?;
        }
        if let Some(s) = &m.system {
            let s: lifeboat_api::SystemInfo = serde_json::from_value(s.clone())?;
            s.check().map_err(MasterError::msg)?;
            state.set_machine_facts(id, &serde_json::to_string(&s)?)?;
        }
        if let Some(v) = &m.vm_settings {
            let v: lifeboat_api::VmSpecSettings = serde_json::from_value(v.clone())?;
            v.check().map_err(MasterError::msg)?;
            state.set_vm_settings(id, &serde_json::to_string(&v)?)?;
        }
        for p in &m.points {
            state.add_point(&PointRow {
                id: p.id.clone(),
                machine_id: id,
                point: p.point,
                kind: p.kind.parse().map_err(|e| MasterError::msg(format!("{e}")))?,
                created_unix_ms: p.created_unix_ms,
                disks: p.disks.clone(),
            })?;
        }
    }
    for g in &c.group_points {
        let members = g.members.iter().map(|m| parse_id(m)).collect::<Result<Vec<_>, _>>()?;
        state.add_group_point(&g.group, g.point, &members)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: MachineId = MachineId([1; 16]);
    const PASS: &str = "a recovery passphrase";

    fn sample() -> Catalogue {
        Catalogue {
            format: 1,
            written_unix_ms: 5,
            machines: vec![CatalogueMachine {
                id: M1.to_string(),
                hostname: "web01".into(),
                registered_unix_ms: 1,
                disks: vec![(0, 1 << 30, "/dev/sda".into())],
                system: None,
                vm_settings: Some(
                    serde_json::to_value(lifeboat_api::VmSpecSettings {
                        cpus: Some(2),
                        ..Default::default()
                    })
                    .unwrap(),
                ),
                points: vec![CataloguePoint {
                    id: "m-1-p1".into(),
                    point: 1,
                    kind: "app".into(),
                    created_unix_ms: 2,
                    disks: vec![0],
                }],
            }],
            group_points: vec![],
            data_keys: vec![("dk-1".into(), "ab".repeat(32))],
        }
    }

    fn sealed() -> Vec<u8> {
        let s = Sealer::with_costs(PASS, 64, 1, 1).unwrap();
        s.seal(&serde_json::to_vec(&sample()).unwrap()).unwrap()
    }

    #[test]
    fn a_sealed_catalogue_opens_with_its_passphrase_only() {
        let b = sealed();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(open(PASS, &b).unwrap(), sample());
        assert!(matches!(open("another passphrase!", &b), Err(CatalogueError::Open)));
        assert!(Sealer::new("short").is_err());
    }

    #[test]
    fn malformed_or_changed_catalogues_are_refused() {
        let b = sealed();
        for i in [0, 8, 20, 36, 48, b.len() - 1] {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(open(PASS, &x).is_err(), "byte {i} changed");
        }
        for n in [0, 7, HEADER_LEN, HEADER_LEN + 15, b.len() - 1] {
            assert!(open(PASS, &b[..n]).is_err(), "{n} bytes");
        }
        // Costs a forged header asks for are bounded before any derivation.
        let mut x = b.clone();
        x[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(PASS, &x), Err(CatalogueError::Format(_))));
        // Well sealed, but not a catalogue inside.
        let s = Sealer::with_costs(PASS, 64, 1, 1).unwrap();
        for inner in [
            &b"not json"[..],
            b"{}",
            br#"{"format":2,"written_unix_ms":0,"machines":[],"group_points":[],"data_keys":[]}"#,
        ] {
            let x = s.seal(inner).unwrap();
            assert!(matches!(open(PASS, &x), Err(CatalogueError::Contents(_))), "{inner:?}");
        }
    }

    #[test]
    fn import_fills_a_fresh_state_and_refuses_a_used_one() {
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("state.db")).unwrap();
        import(&state, &d.path().join("keys"), &sample()).unwrap();
        assert_eq!(state.points(M1).unwrap()[0].kind, lifeboat_api::PointKind::App);
        assert_eq!(state.disk_rows(M1).unwrap(), vec![(0, 1 << 30, "/dev/sda".to_owned())]);
        assert_eq!(std::fs::read(d.path().join("keys/dk-1.key")).unwrap(), vec![0xab; 32]);
        let again = build(&state, &d.path().join("keys")).unwrap();
        assert_eq!(again.machines, sample().machines);
        assert!(import(&state, &d.path().join("keys"), &sample()).is_err(), "not fresh");

        let d2 = tempfile::tempdir().unwrap();
        let state2 = State::open(&d2.path().join("state.db")).unwrap();
        let mut bad = sample();
        bad.data_keys = vec![("../../etc".into(), "ab".repeat(32))];
        assert!(import(&state2, &d2.path().join("keys"), &bad).is_err());
        bad.data_keys = vec![("dk-2".into(), "ab".repeat(31))];
        assert!(import(&state2, &d2.path().join("keys"), &bad).is_err());
        let mut bad = sample();
        bad.machines[0].vm_settings = Some(serde_json::json!({"cpus": 0}));
        assert!(import(&state2, &d2.path().join("keys"), &bad).is_err());
        let mut bad = sample();
        bad.machines[0].id = "../m".into();
        assert!(import(&state2, &d2.path().join("keys"), &bad).is_err());
        let mut bad = sample();
        bad.machines[0].points[0].kind = "weird".into();
        assert!(import(&state2, &d2.path().join("keys"), &bad).is_err());
        assert!(state2.machines().unwrap().is_empty(), "a refused catalogue wrote nothing");
        assert!(!d2.path().join("keys").exists(), "nor any key");
    }
}
