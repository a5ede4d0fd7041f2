//! Loading a plugin: verify, trust, grant, compile (cached), pre-link.

use crate::caps::Effective;
use crate::config::{DEFAULT_MAX_DEADLINE_MS, DEFAULT_MAX_MEMORY_MIB, Grant, PluginsConfig};
use crate::engine::Host;
use crate::engine::Pre;
use crate::manifest::{Manifest, PluginKind};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;

/// The wasmtime release this host is pinned to; part of the compiled-artifact cache key.
const WASMTIME_VERSION: &str = "48.0.8";
const DEFAULT_MEMORY_MIB: u64 = 256;
const DEFAULT_DEADLINE_MS: u64 = 30_000;

/// Why the host believes a plugin is what the operator wants to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustBasis {
    /// Its sha256 is pinned in the configuration.
    Pinned,
    /// Signed by this trusted publisher key (hex).
    Signed(String),
    /// Neither; loaded because the configuration allows unsigned plugins.
    Unsigned,
}

/// What kind of refusal a [`LoadError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or unreadable files.
    Io,
    /// The manifest is malformed or unsupported.
    Manifest,
    /// The `.wasm` does not match the manifest's sha256 or the pinned sha256.
    Corrupt,
    /// Neither pinned nor signed by a trusted key, and unsigned plugins are not allowed.
    Untrusted,
    /// It requests something the configuration does not grant.
    Capability,
    /// Not a valid WebAssembly component.
    InvalidWasm,
    /// It does not export the world its manifest claims.
    WrongWorld,
}

/// A plugin the host refused to load.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} ({path}) refused: {message}")]
pub struct LoadError {
    /// Plugin name (from the file name when the manifest is unreadable).
    pub plugin: String,
    /// The `.wasm` path.
    pub path: String,
    /// The kind of refusal.
    pub refusal: Refusal,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// A verified, compiled, pre-linked plugin, ready to instantiate.
pub struct LoadedPlugin {
    pub(crate) host: Host,
    pub(crate) manifest: Manifest,
    pub(crate) path: PathBuf,
    pub(crate) trust: TrustBasis,
    pub(crate) caps: Effective,
    pub(crate) pre: Pre,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("kind", &self.manifest.kind)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
    /// The world it implements.
    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }
    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Why it was trusted.
    pub fn trust(&self) -> &TrustBasis {
        &self.trust
    }
    /// The `.wasm` it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The settings `init` gets, by name (with declared defaults filled in).
    pub fn settings(&self) -> &[(String, String)] {
        &self.caps.settings
    }
    /// Why no instance of it can be made yet (a required setting has no value), if so.
    pub fn unconfigured(&self) -> Option<&str> {
        self.caps.unconfigured.as_deref()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Host {
    /// Loads the plugin at `wasm` (its manifest is the same path with `.toml`) under the
    /// trust settings and grants of `config`.
    pub fn load(
        &self,
        wasm: &Path,
        config: &PluginsConfig,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let stem = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let fail = |plugin: &str, refusal: Refusal, message: String| LoadError {
            plugin: plugin.to_owned(),
            path: wasm.display().to_string(),
            refusal,
            message,
        };
        let manifest = Manifest::load(&wasm.with_extension("toml"))
            .map_err(|e| fail(&stem, Refusal::Manifest, e.to_string()))?;
        let name = manifest.name.clone();
        let bytes = std::fs::read(wasm)
            .map_err(|e| fail(&name, Refusal::Io, format!("cannot read the .wasm: {e}")))?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(fail(
                &name,
                Refusal::Corrupt,
                format!(
                    "sha256 of the .wasm is {actual} but the manifest says {}: the file is \
                     corrupt or was replaced without its manifest",
                    manifest.sha256
                ),
            ));
        }
        let default_grant = Grant::default();
        let grant = config.grants.get(&name).unwrap_or(&default_grant);
        let trust = trust(&manifest, &actual, grant, config).map_err(|(r, m)| fail(&name, r, m))?;
        let caps = effective(&manifest, grant).map_err(|m| fail(&name, Refusal::Capability, m))?;

        let component =
            self.compile(&bytes, &actual, config.cache_dir.as_deref()).map_err(|e| {
                fail(&name, Refusal::InvalidWasm, format!("not a valid component: {e:#}"))
            })?;
        let want = format!("lifeboat:plugins/{}@", manifest.kind.interface());
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.inner.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        if !exports.iter().any(|e| e.starts_with(&want)) {
            return Err(fail(
                &name,
                Refusal::WrongWorld,
                format!(
                    "the manifest says kind = \"{}\" but the component exports {exports:?}, \
                     not {want}…",
                    manifest.kind
                ),
            ));
        }
        let pre = Pre::new(self, manifest.kind, &component).map_err(|e| {
            fail(
                &name,
                Refusal::Capability,
                format!("cannot link: it imports something this host does not offer: {e:#}"),
            )
        })?;
        tracing::info!(plugin = %name, kind = %manifest.kind, version = %manifest.version, trust = ?trust, "plugin loaded");
        Ok(Arc::new(LoadedPlugin {
            host: self.clone(),
            manifest,
            path: wasm.to_owned(),
            trust,
            caps,
            pre,
        }))
    }

    /// Compiles `bytes`, or loads the artifact cached for this engine and sha256 when
    /// there is a usable cache directory (see [`cache`]).
    fn compile(
        &self,
        bytes: &[u8],
        sha: &str,
        cache_dir: Option<&Path>,
    ) -> wasmtime::Result<Component> {
        let engine = &self.inner.engine;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let key = sha256_hex(format!("{WASMTIME_VERSION}:{:016x}:{sha}", h.finish()).as_bytes());
        let dir = cache_dir.and_then(|d| match cache::usable_dir(d) {
            Ok(()) => Some(d),
            Err(why) => {
                tracing::warn!(dir = %d.display(), %why, "not using the compiled-plugin cache; plugins are compiled at every load");
                None
            }
        });
        let Some(dir) = dir else {
            return Component::new(engine, bytes);
        };
        let cached = dir.join(format!("{key}.cwasm"));
        match cache::read(&cached, &key) {
            Ok(Some(artifact)) => {
                // SAFETY: `artifact` is exactly what `Component::serialize` of an engine
                // with this configuration produced for the `.wasm` whose sha256 is in
                // `key`: `cache::read` checked the file's digest, which commits to `key`
                // (wasmtime version, engine compatibility hash, plugin sha256) and to
                // every byte of the artifact, and the file lives in a directory that
                // `usable_dir` checked only this user can write. The bytes are in our
                // memory, so nothing can change them between the check and this call.
                // Wasmtime checks its version and configuration again while
                // deserialising.
                match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(path = %cached.display(), error = %e, "discarding unusable compiled plugin");
                    }
                }
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(path = %cached.display(), %why, "refusing a compiled plugin that does not match what this host compiled; compiling again");
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = cache::write(&cached, &key, &component.serialize()?) {
            tracing::warn!(path = %cached.display(), error = %e, "cannot cache compiled plugin; it will be compiled again next time");
        }
        Ok(component)
    }
}

/// The compiled-plugin cache: native code, so it is trusted only as far as whoever can
/// write it.
///
/// - **Where.** Only in a directory the configuration names (`plugins.cache_dir`; the
///   appliance and the agent default it to `<data_dir>/plugin-cache`), never in the
///   drop-in plugins directory: whoever may drop plugins there (exactly whom signatures
///   are meant to stop) must not be able to swap the native code of a trusted one. The
///   directory is created 0700 and used only while it is owned by this user and writable
///   by nobody else; otherwise plugins are compiled at every load, with a warning.
/// - **What.** `<key>.cwasm`, format 1: the magic `LBCWASM\x01`, the sha256 of `key`
///   followed by the artifact, then the artifact (`Component::serialize`). `key` is the
///   sha256 of the wasmtime version, the engine's compatibility hash and the plugin's
///   sha256, so the digest binds the native code to the checked `.wasm` and to this
///   engine: an artifact copied from another plugin, a truncated or edited one, or one
///   without the header is refused and compiled again, never run.
pub(crate) mod cache {
    use sha2::{Digest, Sha256};
    use std::path::Path;

    /// Magic of cache format 1. Frozen: a new format gets a new magic.
    pub(crate) const MAGIC: &[u8; 8] = b"LBCWASM\x01";

    fn digest(key: &str, artifact: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update(artifact);
        h.finalize().into()
    }

    /// Creates `dir` (0700) if missing; refuses one that another user owns or that
    /// group or others may write.
    pub(crate) fn usable_dir(dir: &Path) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create it: {e}"))?;
        }
        let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat it: {e}"))?;
        if !m.is_dir() {
            return Err("it is not a directory (a symbolic link is not accepted)".into());
        }
        let me = rustix::process::geteuid().as_raw();
        if m.uid() != me {
            return Err(format!("it is owned by uid {}, not this process's uid {me}", m.uid()));
        }
        if m.mode() & 0o022 != 0 {
            return Err(format!(
                "group or others may write it (mode {:o}): chmod 700 it",
                m.mode() & 0o777
            ));
        }
        Ok(())
    }

    /// The artifact cached under `key`, if there is one that passes the digest; an
    /// error says why a file that is there was refused (and removes it).
    pub(crate) fn read(path: &Path, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let refuse = |why: &str| {
            let _ = std::fs::remove_file(path);
            Err(why.to_owned())
        };
        if bytes.len() < 40 || &bytes[..8] != MAGIC {
            return refuse("not a compiled plugin of this host (no format-1 header)");
        }
        let artifact = bytes.split_off(40);
        if bytes[8..40] != digest(key, &artifact) {
            return refuse("its digest does not match the plugin and engine it is cached for");
        }
        Ok(Some(artifact))
    }

    /// Writes `artifact` under `key` (temporary file 0600, renamed).
    pub(crate) fn write(path: &Path, key: &str, artifact: &[u8]) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(40 + artifact.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&digest(key, artifact));
        data.extend_from_slice(artifact);
        lifeboat_common::fs::write_atomic(path, &data, Some(0o600))
    }
}

fn trust(
    m: &Manifest,
    actual: &str,
    grant: &Grant,
    config: &PluginsConfig,
) -> Result<TrustBasis, (Refusal, String)> {
    if let Some(pin) = &grant.sha256 {
        return if pin.eq_ignore_ascii_case(actual) {
            Ok(TrustBasis::Pinned)
        } else {
            Err((
                Refusal::Corrupt,
                format!(
                    "sha256 {actual} does not match the sha256 pinned in the configuration \
                     ({pin}); install the pinned build or update the pin"
                ),
            ))
        };
    }
    if m.signature.is_some() {
        if let Some(key) = signed_by(m, &config.trusted_keys).map_err(|e| (Refusal::Manifest, e))? {
            return Ok(TrustBasis::Signed(key));
        }
        if !config.allow_unsigned {
            return Err((
                Refusal::Untrusted,
                "its signature is not by any trusted key; add the publisher's key to \
                 plugins.trusted_keys or pin the sha256 in its grant"
                    .to_owned(),
            ));
        }
    }
    if config.allow_unsigned {
        tracing::warn!(plugin = %m.name, "loading an untrusted plugin because plugins.allow_unsigned = true");
        return Ok(TrustBasis::Unsigned);
    }
    Err((
        Refusal::Untrusted,
        "it is neither signed by a trusted key nor pinned by sha256; pin it with \
         plugins.grants.<name>.sha256 or add its publisher to plugins.trusted_keys"
            .to_owned(),
    ))
}

/// The trusted key (hex, lower case) whose signature the manifest carries, if any; an error
/// for a malformed signature.
pub fn signed_by(m: &Manifest, trusted_keys: &[String]) -> Result<Option<String>, String> {
    let Some(sig) = &m.signature else { return Ok(None) };
    let sig_bytes = hex::decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| "signature: expected 128 hex digits".to_owned())?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    for key_hex in trusted_keys {
        let Some(key) = hex::decode(key_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        else {
            tracing::warn!(key = %key_hex, "ignoring malformed trusted key (expected 64 hex digits)");
            continue;
        };
        if key.verify_strict(&m.signed_message(), &sig).is_ok() {
            return Ok(Some(key_hex.to_ascii_lowercase()));
        }
    }
    Ok(None)
}

fn effective(m: &Manifest, g: &Grant) -> Result<Effective, String> {
    let r = &m.capabilities;
    let memory_mib = r.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    let max_memory = g.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB);
    if memory_mib > max_memory {
        return Err(format!(
            "it asks for {memory_mib} MiB of memory; the grant allows {max_memory} MiB \
             (raise plugins.grants.{}.max_memory_mib)",
            m.name
        ));
    }
    let memory_bytes =
        usize::try_from(memory_mib).ok().and_then(|mib| mib.checked_mul(1 << 20)).ok_or_else(
            || format!("it asks for {memory_mib} MiB of memory, more than this host can address"),
        )?;
    let deadline_ms = r.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS);
    let max_deadline = g.max_deadline_ms.unwrap_or(DEFAULT_MAX_DEADLINE_MS);
    if deadline_ms > max_deadline {
        return Err(format!(
            "it asks for a {deadline_ms} ms call deadline; the grant allows {max_deadline} ms \
             (raise plugins.grants.{}.max_deadline_ms)",
            m.name
        ));
    }
    let denied = |what: &str, item: &str, key: &str| {
        format!(
            "it requests {what} {item:?}, which the configuration does not grant \
             (add it to plugins.grants.{}.{key})",
            m.name
        )
    };
    let mut dirs = Vec::new();
    for d in &r.directories {
        let host = g.directories.get(d).ok_or_else(|| denied("directory", d, "directories"))?;
        dirs.push((d.clone(), host.clone()));
    }
    // `"*"` asks for "the hosts the site grants": targets whose endpoints depend on the
    // site (a storage account, a vCenter) cannot name them in the manifest. Still
    // deny-by-default: nothing granted, nothing reachable.
    use crate::caps::HttpAuthority;
    let granted = g
        .http_hosts
        .iter()
        .map(|h| HttpAuthority::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("plugins.grants.{}.http_hosts: {e}", m.name))?;
    let http_hosts = if r.http_hosts.iter().any(|h| h == "*") {
        granted
    } else {
        let mut wanted = Vec::new();
        for h in &r.http_hosts {
            let a =
                HttpAuthority::parse(h).map_err(|e| format!("the manifest's http_hosts: {e}"))?;
            if !granted.contains(&a) {
                return Err(denied("HTTP authority", &a.to_string(), "http_hosts"));
            }
            wanted.push(a);
        }
        wanted
    };
    // The same `"*"` for quiescers whose commands and database addresses belong to the
    // site (the script quiescer, the PostgreSQL quiescer).
    let commands = if r.commands.iter().any(|c| c == "*") {
        g.commands.clone()
    } else {
        for c in &r.commands {
            if !g.commands.contains(c) {
                return Err(denied("command", c, "commands"));
            }
        }
        r.commands.clone()
    };
    let requested_sockets =
        if r.sockets.iter().any(|s| s == "*") { &g.sockets } else { &r.sockets };
    let mut sockets = Vec::new();
    for s in requested_sockets {
        if !g.sockets.contains(s) {
            return Err(denied("socket", s, "sockets"));
        }
        sockets
            .push(s.parse().map_err(|_| {
                format!("socket {s:?}: expected an address such as 127.0.0.1:5432")
            })?);
    }
    if r.clock && !g.clock {
        return Err(denied("capability", "clock", "clock"));
    }
    let attached = match (&g.attached_disks, r.attached_disks) {
        (_, false) => None,
        (None, true) => return Err(denied("capability", "attached_disks", "attached_disks")),
        (Some(a), true) => {
            for (name, dir) in &a.datastores {
                if name.is_empty() || !dir.is_absolute() {
                    return Err(format!(
                        "plugins.grants.{}.attached_disks.datastores: {name:?} = {:?}: \
                         name a datastore and an absolute folder",
                        m.name,
                        dir.display()
                    ));
                }
            }
            Some(std::sync::Arc::new(a.clone()))
        }
    };
    let tls = if g.tls_roots.is_empty() {
        None
    } else {
        let mut roots = Vec::new();
        for path in &g.tls_roots {
            roots.extend(read_pem_roots(path)?);
        }
        Some(crate::state::tls_client_config(roots).map_err(|e| {
            format!("plugins.grants.{}.tls_roots: cannot build a TLS configuration: {e}", m.name)
        })?)
    };
    let (settings, unconfigured) = resolve_settings(m, g)?;
    Ok(Effective {
        memory_bytes,
        deadline: Duration::from_millis(deadline_ms),
        dirs,
        http_hosts,
        commands,
        sockets,
        clock: r.clock,
        attached,
        settings,
        unconfigured,
        tls,
    })
}

/// What `init` gets: the grant's settings, checked against the settings the manifest
/// declares when it declares any (manifest_version 2): every key declared, every value of
/// its type, the defaults of the others filled in. A manifest that declares none gets the
/// grant's settings as they are.
///
/// A required setting with no value does not refuse the plugin: it loads (so that the
/// appliance can show its form and be given the value) but is *not configured*: the second
/// value says why, and no instance of it is made until it is.
type Resolved = (Vec<(String, String)>, Option<String>);

fn resolve_settings(m: &Manifest, g: &Grant) -> Result<Resolved, String> {
    if m.settings.is_empty() {
        return Ok((g.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), None));
    }
    let at = |k: &str| format!("plugins.grants.{}.settings.{k}", m.name);
    for (k, v) in &g.settings {
        let spec = m.setting_spec(k).map_err(|takes| {
            format!("{}: the plugin declares no such setting (it takes: {takes})", at(k))
        })?;
        spec.check_given(v).map_err(|e| format!("{}: {e}", at(k)))?;
    }
    let mut out = Vec::new();
    let mut missing = None;
    for spec in &m.settings {
        match g.settings.get(&spec.name).cloned().or_else(|| spec.default_text()) {
            Some(v) => out.push((spec.name.clone(), v)),
            None if spec.required && missing.is_none() => {
                missing = Some(format!(
                    "not configured: {}: required by the plugin ({})",
                    at(&spec.name),
                    spec.label
                ));
            }
            None => {}
        }
    }
    Ok((out, missing))
}

/// Reads the root certificates of one `tls_roots` file, refusing a file that is missing,
/// not PEM, holds no certificate, or holds a certificate that cannot be a trust anchor.
fn read_pem_roots(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |detail: String| {
        format!("tls_roots file {}: {detail}; grant a PEM file of CA certificates", path.display())
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    for c in &certs {
        let mut store = rustls::RootCertStore::empty();
        store.add(c.clone()).map_err(|e| bad(format!("not a usable certificate: {e}")))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Requested;

    fn manifest(http: &[&str]) -> Manifest {
        Manifest {
            manifest_version: 1,
            name: "azure".into(),
            version: "0.1.0".into(),
            kind: PluginKind::Target,
            wit: "lifeboat:plugins@0.1.0".into(),
            sha256: "0".repeat(64),
            signature: None,
            capabilities: Requested {
                http_hosts: http.iter().map(|s| s.to_string()).collect(),
                ..Requested::default()
            },
            settings: Vec::new(),
        }
    }

    #[test]
    fn declared_settings_are_checked_and_defaults_filled_in() {
        use crate::manifest::{SettingSpec, SettingType};
        let spec = |name: &str, kind, default: Option<toml::Value>, required| SettingSpec {
            name: name.into(),
            kind,
            label: name.into(),
            help: None,
            default,
            secret: false,
            required,
            advanced: false,
        };
        let mut m = manifest(&[]);
        m.manifest_version = 2;
        m.settings = vec![
            spec("root", SettingType::String, Some(toml::Value::String("/target".into())), false),
            spec("endpoint", SettingType::Url, None, true),
            spec("parallel", SettingType::Integer, None, false),
        ];
        let grant = |pairs: &[(&str, &str)]| Grant {
            settings: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Grant::default()
        };
        assert_eq!(
            resolve_settings(&m, &grant(&[("endpoint", "https://a.example")])).unwrap(),
            (
                vec![
                    ("root".to_string(), "/target".to_string()),
                    ("endpoint".into(), "https://a.example".into())
                ],
                None
            )
        );
        // A required setting without a value: loaded, not configured, saying which.
        let (_, missing) = resolve_settings(&m, &grant(&[])).unwrap();
        let missing = missing.unwrap();
        assert!(missing.contains("plugins.grants.azure.settings.endpoint: required"), "{missing}");
        for (pairs, want) in [
            (
                &[("endpoint", "https://a.example"), ("colour", "red")][..],
                "settings.colour: the plugin declares no such setting",
            ),
            (&[("endpoint", "nowhere")][..], "settings.endpoint: \"nowhere\""),
            (&[("endpoint", "https://a.example"), ("parallel", "many")][..], "settings.parallel"),
        ] {
            let e = resolve_settings(&m, &grant(pairs)).unwrap_err();
            assert!(e.contains(want) && e.contains("plugins.grants.azure"), "want {want:?}: {e}");
        }
        // Without declarations, the grant's settings pass as they are.
        m.settings.clear();
        assert_eq!(resolve_settings(&m, &grant(&[("anything", "x")])).unwrap().0.len(), 1);
    }

    #[test]
    fn star_means_what_the_site_grants_and_nothing_by_default() {
        let g = Grant { http_hosts: vec!["acct.blob.example:443".into()], ..Grant::default() };
        let e = effective(&manifest(&["*"]), &g).unwrap();
        let want = crate::caps::HttpAuthority::parse("https://acct.blob.example").unwrap();
        assert_eq!(e.http_hosts, vec![want.clone()]);
        // The same authority written another way is the same grant.
        let e = effective(&manifest(&["https://acct.blob.example:443"]), &g).unwrap();
        assert_eq!(e.http_hosts, vec![want]);
        assert!(effective(&manifest(&["http://acct.blob.example:443"]), &g).is_err());
        let bad = Grant { http_hosts: vec!["ftp://x".into()], ..Grant::default() };
        assert!(effective(&manifest(&[]), &bad).unwrap_err().contains("http_hosts"));
        let e = effective(&manifest(&["*"]), &Grant::default()).unwrap();
        assert!(e.http_hosts.is_empty());
        assert!(effective(&manifest(&["evil.example:443"]), &g).is_err());
        let e = effective(&manifest(&[]), &g).unwrap();
        assert!(e.http_hosts.is_empty(), "granted but not requested: not given");
    }

    #[test]
    fn tls_roots_that_cannot_be_read_or_parsed_refuse_the_plugin_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n")
            .unwrap();
        let not_der = dir.path().join("not-der.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, why) in [
            (&missing, "cannot read"),
            (&empty, "no CERTIFICATE"),
            (&broken, "PEM"),
            (&not_der, "not a usable certificate"),
        ] {
            let g = Grant { tls_roots: vec![path.clone()], ..Grant::default() };
            let e = effective(&manifest(&[]), &g).unwrap_err();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(why), "{why}: {e}");
        }
        // Nothing granted: no custom TLS configuration, the default sender is used.
        assert!(effective(&manifest(&[]), &Grant::default()).unwrap().tls.is_none());
    }
}
