//! Data keys for the cipher plugin, held by the appliance (never by plugins).
//!
//! On first start the appliance draws a 256-bit AES-GCM data key and writes it to
//! `<data_dir>/keys/<id>.key` (mode 0600). Every `*.key` there is loaded at start; the
//! newest (by name order, ids start with a timestamp) is the active key that seals new
//! data, older ones only open old data. Once the administrator sets a recovery
//! passphrase, the keys go into the catalogue at the target, sealed under it
//! (`crate::master_target::catalogue`), so a fresh appliance at the target site recovers them with the
//! passphrase (`lifeboat-appliance recover`).

use lifeboat_plugin_host::keys::{Algorithm, Key, KeyRing};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Loads the key folder, creating the first key if there is none.
pub fn load_or_create(dir: &Path) -> std::io::Result<KeyRing> {
    std::fs::create_dir_all(dir)?;
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".key"))
        .collect();
    if names.is_empty() {
        let mut material = [0u8; 32];
        getrandom::fill(&mut material).map_err(|e| std::io::Error::other(e.to_string()))?;
        let id = format!("dk-{}", crate::store::now_ms());
        let path = dir.join(format!("{id}.key"));
        let tmp = dir.join(format!("{id}.tmp"));
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&material)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        tracing::info!(key = %id, path = %path.display(), "created the data encryption key");
        names.push(format!("{id}.key"));
    }
    names.sort();
    let last = names.len() - 1;
    let mut keys = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let bytes = std::fs::read(dir.join(n))?;
        let material: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: a data key must be exactly 32 bytes", dir.join(n).display()),
            )
        })?;
        let id = n.trim_end_matches(".key");
        keys.push(Key::new(id, Algorithm::Aes256Gcm, &material, i == last));
    }
    Ok(KeyRing::new(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_a_private_key_and_later_starts_reuse_it() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        assert_eq!(a.keys().len(), 1);
        assert!(a.keys()[0].active());
        let f = std::fs::read_dir(d.path()).unwrap().next().unwrap().unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let b = load_or_create(d.path()).unwrap();
        assert_eq!(a.keys()[0].id(), b.keys()[0].id());
    }

    #[test]
    fn a_malformed_key_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("dk-1.key"), b"short").unwrap();
        let e = load_or_create(d.path()).unwrap_err();
        assert!(e.to_string().contains("dk-1.key"), "{e}");
    }
}
