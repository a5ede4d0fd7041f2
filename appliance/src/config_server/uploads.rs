//! Plugins uploaded from the API (the web UI's Plugins screen): quarantined until an
//! administrator trusts them.
//!
//! An upload (manifest text and `.wasm`) is written to `<data_dir>/plugin-uploads/<name>/`
//! only after it is checked: the manifest parses and validates, the build's sha256 is the
//! manifest's, and loading it pinned (compiling it, never running it) finds a component of
//! the world it claims. What loading would do once trusted (load, or be refused for a
//! capability the configuration file does not grant) is recorded beside it. Nothing in
//! quarantine is ever instantiated.
//!
//! Trusting it takes the sha256 the administrator read: the files are re-hashed, copied
//! into the plugins directory under temporary names and synced, the pin is stored
//! (`plugin_pins`, schema 21; it replaces the grant's `sha256`), the files are renamed into
//! place and the plugins reloaded. The pin authorises that build's code; what it may reach
//! (directories, hosts, commands, sockets, the clock) stays the configuration file's grant.

use crate::store::{State, StateError};
use lifeboat_api as api;
use lifeboat_plugin_host::manifest::valid_name;
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::{LoadError, Refusal};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// Largest `.wasm` accepted.
pub const MAX_WASM_BYTES: usize = 16 << 20;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// Why an upload or a trust was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The request is wrong: `field: why`.
    #[error("{0}")]
    Invalid(String),
    /// No such upload.
    #[error("name: no uploaded plugin {0:?} in quarantine")]
    NotFound(String),
    /// The files could not be written or read.
    #[error("{0}")]
    Io(String),
    /// The state store refused.
    #[error(transparent)]
    State(#[from] StateError),
}

/// What is recorded beside an upload.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Inspection {
    once_trusted: String,
    uploaded_unix_ms: u64,
}

/// The quarantine folder.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("plugin-uploads")
}

fn io(what: &str, e: std::io::Error) -> UploadError {
    UploadError::Io(format!("{what}: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Checks an upload and puts it in quarantine (replacing an earlier upload of the same
/// name). Returns what the plugins list shows for it.
pub fn receive(
    registry: &Registry,
    data_dir: &Path,
    manifest: &str,
    wasm: &[u8],
) -> Result<api::QuarantinedPlugin, UploadError> {
    if manifest.len() > MAX_MANIFEST_BYTES {
        return Err(UploadError::Invalid(format!(
            "manifest: larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    if wasm.is_empty() || wasm.len() > MAX_WASM_BYTES {
        return Err(UploadError::Invalid(format!(
            "wasm_base64: expected 1 to {MAX_WASM_BYTES} bytes once decoded"
        )));
    }
    let root = dir(data_dir);
    std::fs::create_dir_all(&root).map_err(|e| io("cannot create the quarantine folder", e))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| UploadError::Io(e.to_string()))?;
    let incoming = root.join(format!(".incoming-{}", hex::encode(nonce)));
    std::fs::create_dir(&incoming).map_err(|e| io("cannot create the upload's folder", e))?;
    let result = check_and_keep(registry, &root, &incoming, manifest, wasm);
    let _ = std::fs::remove_dir_all(&incoming);
    result
}

fn check_and_keep(
    registry: &Registry,
    root: &Path,
    incoming: &Path,
    manifest: &str,
    wasm: &[u8],
) -> Result<api::QuarantinedPlugin, UploadError> {
    // The manifest first, under a neutral name: its own name is not trusted yet.
    let probe = incoming.join("upload.toml");
    std::fs::write(&probe, manifest).map_err(|e| io("cannot write the manifest", e))?;
    let m = lifeboat_plugin_host::manifest::Manifest::load(&probe)
        .map_err(|e| UploadError::Invalid(format!("manifest: {}", e.message)))?;
    let _ = std::fs::remove_file(&probe);
    let actual = sha256_hex(wasm);
    if !m.sha256.eq_ignore_ascii_case(&actual) {
        return Err(UploadError::Invalid(format!(
            "manifest: sha256 {} is not the uploaded .wasm's ({actual}); upload the build the \
             manifest was made for",
            m.sha256
        )));
    }
    let name = m.name.clone();
    let wasm_path = incoming.join(format!("{name}.wasm"));
    std::fs::write(&wasm_path, wasm).map_err(|e| io("cannot write the .wasm", e))?;
    std::fs::write(wasm_path.with_extension("toml"), manifest)
        .map_err(|e| io("cannot write the manifest", e))?;
    // Compiled (never run), as if pinned: a build that is not a component of the world it
    // claims goes no further; one that asks for what is not granted is kept, saying so.
    let once_trusted = match registry.load_file(&wasm_path, Some(&actual)) {
        Ok(_) => "loads".to_owned(),
        Err(LoadError {
            refusal: Refusal::Capability | Refusal::Untrusted | Refusal::Io,
            message,
            ..
        }) => format!("refused: {message}"),
        Err(e) => return Err(UploadError::Invalid(format!("wasm_base64: {}", e.message))),
    };
    let inspection = Inspection { once_trusted, uploaded_unix_ms: crate::store::now_ms() };
    std::fs::write(
        incoming.join("inspection.json"),
        serde_json::to_vec(&inspection).map_err(|e| UploadError::Io(e.to_string()))?,
    )
    .map_err(|e| io("cannot write the inspection", e))?;
    let kept = root.join(&name);
    if kept.exists() {
        std::fs::remove_dir_all(&kept).map_err(|e| io("cannot replace the earlier upload", e))?;
    }
    std::fs::rename(incoming, &kept).map_err(|e| io("cannot keep the upload", e))?;
    describe(registry, root, &name)
}

fn describe(
    registry: &Registry,
    root: &Path,
    name: &str,
) -> Result<api::QuarantinedPlugin, UploadError> {
    let folder = root.join(name);
    let wasm = folder.join(format!("{name}.wasm"));
    let m = lifeboat_plugin_host::manifest::Manifest::load(&wasm.with_extension("toml"))
        .map_err(|e| UploadError::Io(e.to_string()))?;
    let inspection: Inspection = std::fs::read(folder.join("inspection.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| UploadError::Io(format!("{}: no inspection record", folder.display())))?;
    let r = &m.capabilities;
    let mut requests = vec![
        format!("memory {} MiB", r.memory_mib.unwrap_or(256)),
        format!("deadline {} ms", r.deadline_ms.unwrap_or(30_000)),
    ];
    for (what, list) in [
        ("directories", &r.directories),
        ("HTTP hosts", &r.http_hosts),
        ("commands", &r.commands),
        ("sockets", &r.sockets),
    ] {
        if !list.is_empty() {
            requests.push(format!("{what} {}", list.join(", ")));
        }
    }
    if r.clock {
        requests.push("the clock".into());
    }
    Ok(api::QuarantinedPlugin {
        name: m.name.clone(),
        kind: m.kind.to_string(),
        version: m.version.clone(),
        sha256: m.sha256.to_ascii_lowercase(),
        signed_by: lifeboat_plugin_host::signed_by(&m, registry.trusted_keys()).ok().flatten(),
        requests: requests.join("; "),
        once_trusted: inspection.once_trusted,
        replaces: registry.get(&m.name).map(|p| format!("{} {}", p.name(), p.manifest().version)),
        uploaded_unix_ms: inspection.uploaded_unix_ms,
    })
}

/// Every upload in quarantine, by name.
pub fn list(registry: &Registry, data_dir: &Path) -> Vec<api::QuarantinedPlugin> {
    let root = dir(data_dir);
    let Ok(rd) = std::fs::read_dir(&root) else { return Vec::new() };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| match describe(registry, &root, n) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(upload = %n, error = %e, "unreadable upload in quarantine");
                None
            }
        })
        .collect()
}

/// Discards the upload `name`.
pub fn discard(data_dir: &Path, name: &str) -> Result<(), UploadError> {
    let folder = dir(data_dir).join(name);
    if !valid_name(name) || !folder.is_dir() {
        return Err(UploadError::NotFound(name.to_owned()));
    }
    std::fs::remove_dir_all(&folder).map_err(|e| io("cannot remove the upload", e))
}

/// Trusts the upload `name` whose build has the sha256 `confirmed`: pins it and moves it
/// into the plugins directory, then reloads. `admin` is recorded with the pin.
pub fn trust(
    state: &State,
    registry: &Registry,
    data_dir: &Path,
    name: &str,
    confirmed: &str,
    admin: &str,
) -> Result<(), UploadError> {
    let folder = dir(data_dir).join(name);
    if !valid_name(name) || !folder.is_dir() {
        return Err(UploadError::NotFound(name.to_owned()));
    }
    let wasm = std::fs::read(folder.join(format!("{name}.wasm")))
        .map_err(|e| io("cannot read the upload", e))?;
    let manifest = std::fs::read(folder.join(format!("{name}.toml")))
        .map_err(|e| io("cannot read the upload's manifest", e))?;
    let actual = sha256_hex(&wasm);
    if !confirmed.trim().eq_ignore_ascii_case(&actual) {
        return Err(UploadError::Invalid(format!(
            "sha256: {confirmed:?} is not the quarantined build's ({actual}); nothing was trusted"
        )));
    }
    // Checked again now (grants or trusted keys may have changed since the upload): a build
    // that would not load, or is of another kind than the plugin it replaces, would leave
    // that plugin's role without one at the next start.
    let wasm_path = folder.join(format!("{name}.wasm"));
    let loaded = registry.load_file(&wasm_path, Some(&actual)).map_err(|e| {
        UploadError::Invalid(format!(
            "name: {name} would be refused once installed ({}); grant what it asks for in the \
             configuration, or discard it",
            e.message
        ))
    })?;
    if let Some(old) = registry.get(name)
        && old.kind() != loaded.kind()
    {
        return Err(UploadError::Invalid(format!(
            "name: {name} is a {} plugin; the {name} loaded now is a {}: it would be replaced by \
             a plugin of another kind",
            loaded.kind(),
            old.kind()
        )));
    }
    let plugins = registry.dir();
    let tmp = |ext: &str| plugins.join(format!(".{name}.{ext}.incoming"));
    for (ext, bytes) in [("wasm", &wasm), ("toml", &manifest)] {
        lifeboat_common::fs::write_atomic(&tmp(ext), bytes, Some(0o644))
            .map_err(|e| io(&format!("cannot write into {}", plugins.display()), e))?;
    }
    // The manifest before the .wasm: a reload in between sees the old .wasm refused by the
    // new manifest's sha256 and keeps the old version loaded until the new one is there.
    for ext in ["toml", "wasm"] {
        std::fs::rename(tmp(ext), plugins.join(format!("{name}.{ext}")))
            .map_err(|e| io(&format!("cannot install into {}", plugins.display()), e))?;
    }
    lifeboat_common::fs::sync_dir(plugins)
        .map_err(|e| io(&format!("cannot sync {}", plugins.display()), e))?;
    // Pinned once the files are in place.
    state.set_plugin_pin(name, &actual, admin)?;
    registry.set_pin(name, &actual);
    let _ = std::fs::remove_dir_all(&folder);
    let set = registry.reload();
    tracing::warn!(plugin = %name, sha256 = %actual, %admin, generation = set.generation, "uploaded plugin trusted and installed");
    Ok(())
}
