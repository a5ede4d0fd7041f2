//! The plugin host against the real plugins built by `cargo xtask plugins` (run by
//! `cargo xtask test`): the four worlds' happy paths, trust, grants, limits, hostile
//! plugins, the compiled-artifact cache and reloading.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use ed25519_dalek::Signer;
use lifeboat_plugin_host::config::{Grant, PluginsConfig};
use lifeboat_plugin_host::keys::{Algorithm, Key, KeyRing};

use lifeboat_plugin_host::manifest::Manifest;
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::target::{Firmware, VmSpec};
use lifeboat_plugin_host::{
    CallError, CipherInstance, CodecInstance, FailReason, Host, PluginError, QuiescerInstance,
    Refusal, TargetInstance, TrustBasis,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PluginsConfig,
}

/// A private plugins directory with copies of `names`, everything pinned by sha256
/// unless `pin` is false.
fn setup(names: &[&str], pin: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = PluginsConfig {
        dir: dir.clone(),
        cache_dir: Some(tmp.path().join("cache")),
        trusted_keys: vec![],
        allow_unsigned: false,
        grants: Default::default(),
    };
    for n in names {
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                lifeboat_plugin_host::contract::built_plugins("zstd.wasm")
                    .join(format!("{n}.{ext}")),
                dir.join(format!("{n}.{ext}")),
            )
            .unwrap();
        }
        let m = Manifest::load(&dir.join(format!("{n}.toml"))).unwrap();
        let grant = config.grants.entry(n.to_string()).or_default();
        if pin {
            grant.sha256 = Some(m.sha256.clone());
        }
        for d in &m.capabilities.directories {
            grant.directories.insert(d.clone(), tmp.path().join(format!("granted{}", d)));
        }
        grant.clock = m.capabilities.clock;
    }
    Setup { _tmp: tmp, dir, config }
}

fn keys() -> KeyRing {
    KeyRing::new(vec![Key::new("k1", Algorithm::Aes256Gcm, &[3; 32], true)])
}

fn host() -> Host {
    Host::new(keys()).unwrap()
}

fn mixed_data(len: usize) -> Vec<u8> {
    lifeboat_plugin_host::contract::mixed_data(len, 0)
}

#[tokio::test]
async fn zstd_codec_round_trips_and_stores_incompressible_data_raw() {
    let s = setup(&["zstd"], true);
    let p = host().load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    assert_eq!(*p.trust(), TrustBasis::Pinned);
    let mut c = CodecInstance::new(p).await.unwrap();
    let data = mixed_data(1 << 20);
    let enc = c.compress(1, &data).await.unwrap();
    assert!(!enc.raw && enc.data.len() < data.len() / 2, "{}", enc.data.len());
    assert_eq!(c.decompress(&enc.data, data.len() as u32).await.unwrap(), data);

    let noise: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ (i >> 3) as u8)
        .collect();
    let enc = c.compress(1, &noise).await.unwrap();
    if enc.raw {
        assert_eq!(enc.data, noise);
    } else {
        assert!(enc.data.len() < noise.len());
    }
    // A corrupt frame is the plugin's error, and the instance keeps working.
    let e = c.decompress(b"definitely not zstd", 100).await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::Invalid(_))), "{e}");
    assert!(c.compress(3, &data).await.is_ok());
}

#[tokio::test]
async fn aes_gcm_cipher_seals_with_host_keys_and_detects_tampering() {
    let s = setup(&["aes-gcm"], true);
    let h = host();
    let p = h.load(&s.dir.join("aes-gcm.wasm"), &s.config).unwrap();
    let mut c = CipherInstance::new(p).await.unwrap();
    let data = mixed_data(100_000);
    let env = c.seal(b"disk-0/seq-7", &data).await.unwrap();
    assert_eq!(&env[..4], b"LBS1");
    assert!(!env.windows(32).any(|w| w == &data[..32]), "plaintext visible");
    assert_eq!(c.open(b"disk-0/seq-7", &env).await.unwrap(), data);
    // Same plaintext twice: different nonces, different envelopes.
    assert_ne!(c.seal(b"disk-0/seq-7", &data).await.unwrap(), env);
    // Moved to another place, or altered: refused.
    let e = c.open(b"disk-0/seq-8", &env).await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::Invalid(_))), "{e}");
    let mut bad = env.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(c.open(b"disk-0/seq-7", &bad).await.is_err());
    let mut bad = env.clone();
    bad[0] = b'X';
    assert!(c.open(b"disk-0/seq-7", &bad).await.is_err());

    // Rotation: a new active key seals new data; the old one still opens old data.
    let rotated = Host::new(KeyRing::new(vec![
        Key::new("k1", Algorithm::Aes256Gcm, &[3; 32], false),
        Key::new("k2", Algorithm::ChaCha20Poly1305, &[4; 32], true),
    ]))
    .unwrap();
    let p2 = rotated.load(&s.dir.join("aes-gcm.wasm"), &s.config).unwrap();
    let mut c2 = CipherInstance::new(p2).await.unwrap();
    assert_eq!(c2.open(b"disk-0/seq-7", &env).await.unwrap(), data);
    let env2 = c2.seal(b"a", b"new data").await.unwrap();
    assert_eq!(&env2[6..8], b"k2");
    // A host without that key cannot open it, and says which key is missing.
    let e = c.open(b"a", &env2).await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::NotFound(m)) if m.contains("k2")), "{e}");
}

#[tokio::test]
async fn local_target_keeps_disks_points_logs_and_vm_specs() {
    let s = setup(&["local"], true);
    let p = host().load(&s.dir.join("local.wasm"), &s.config).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    assert_eq!(t.capabilities().unwrap().alignment, 1);
    lifeboat_plugin_host::contract::exercise_target(
        &mut t,
        &lifeboat_plugin_host::contract::Expect::default(),
    )
    .await;
    // Identifiers cannot climb out of the granted directory.
    let e = t.create_disk("../escape", 10).await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::Invalid(_))), "{e}");
    let vm = t
        .create_vm(&VmSpec {
            name: "web01-test".into(),
            firmware: Firmware::Uefi,
            cpus: 2,
            memory_mib: 2048,
            disks: vec!["m1-d0".into()],
            nics: vec![],
            isolated: true,
        })
        .await
        .unwrap();
    let granted = s.config.grants["local"].directories["/target"].clone();
    let spec = std::fs::read_to_string(granted.join(format!("vms/{vm}.json"))).unwrap();
    assert!(spec.contains("\"uefi\"") && spec.contains("m1-d0.img"), "{spec}");
    // Points are created with the time the plugin was granted.
    t.create_point("m1-p2", "crash:2", &["m1-d0".into()]).await.unwrap();
    let p = &t.list_points("m1-p2").await.unwrap()[0];
    assert!(p.created_unix_ms > 1_700_000_000_000);
}

#[tokio::test]
async fn example_target_from_the_sdk_docs_builds_and_loads() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/examples/dirtarget/src");
    let lines: usize = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count())
        .sum();
    assert!(lines < 100, "the example must stay under 100 lines; it has {lines}");
    let s = setup(&["dirtarget"], true);
    let p = host().load(&s.dir.join("dirtarget.wasm"), &s.config).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    lifeboat_plugin_host::contract::exercise_target(
        &mut t,
        &lifeboat_plugin_host::contract::Expect::default(),
    )
    .await;
}

fn refusal(
    r: Result<std::sync::Arc<lifeboat_plugin_host::LoadedPlugin>, lifeboat_plugin_host::LoadError>,
) -> (Refusal, String) {
    let e = r.expect_err("the plugin must be refused");
    let msg = e.to_string();
    (e.refusal, msg)
}

#[test]
fn untrusted_corrupt_invalid_and_wrong_world_plugins_are_refused() {
    let h = host();
    // Neither pinned nor signed.
    let s = setup(&["zstd"], false);
    let (r, m) = refusal(h.load(&s.dir.join("zstd.wasm"), &s.config));
    assert_eq!(r, Refusal::Untrusted, "{m}");
    assert!(m.contains("zstd") && m.contains("pin"), "{m}");

    // Allowed explicitly: loads, and says so.
    let mut open = s.config.clone();
    open.allow_unsigned = true;
    assert_eq!(*h.load(&s.dir.join("zstd.wasm"), &open).unwrap().trust(), TrustBasis::Unsigned);

    // Pinned to another build.
    let mut pinned = s.config.clone();
    pinned.grants.entry("zstd".into()).or_default().sha256 = Some("ab".repeat(32));
    let (r, m) = refusal(h.load(&s.dir.join("zstd.wasm"), &pinned));
    assert_eq!(r, Refusal::Corrupt, "{m}");

    // The .wasm changed after its manifest was written.
    let s2 = setup(&["zstd"], true);
    let wasm = s2.dir.join("zstd.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xFF;
    std::fs::write(&wasm, &bytes).unwrap();
    let (r, m) = refusal(h.load(&wasm, &s2.config));
    assert_eq!(r, Refusal::Corrupt, "{m}");
    assert!(m.contains("corrupt"), "{m}");

    // Not wasm at all, with a matching sha256 so only validation can catch it.
    let s3 = setup(&["zstd"], false);
    let garbage = b"\0asm this is not a component".to_vec();
    std::fs::write(s3.dir.join("zstd.wasm"), &garbage).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&garbage));
    rewrite_manifest(&s3.dir.join("zstd.toml"), |t| replace_sha(t, &sha));
    let mut cfg = s3.config.clone();
    cfg.allow_unsigned = true;
    let (r, m) = refusal(h.load(&s3.dir.join("zstd.wasm"), &cfg));
    assert_eq!(r, Refusal::InvalidWasm, "{m}");

    // A codec whose manifest claims it is a target.
    let s4 = setup(&["zstd"], true);
    rewrite_manifest(&s4.dir.join("zstd.toml"), |t| {
        t.replace("kind = \"codec\"", "kind = \"target\"")
    });
    let (r, m) = refusal(h.load(&s4.dir.join("zstd.wasm"), &s4.config));
    assert_eq!(r, Refusal::WrongWorld, "{m}");
    assert!(m.contains("lifeboat:plugins/codec"), "{m}");

    // A malformed manifest.
    let s5 = setup(&["zstd"], true);
    rewrite_manifest(&s5.dir.join("zstd.toml"), |t| format!("{t}\nsurprise = 1\n"));
    let (r, m) = refusal(h.load(&s5.dir.join("zstd.wasm"), &s5.config));
    assert_eq!(r, Refusal::Manifest, "{m}");
    assert!(m.contains("surprise"), "{m}");
}

fn rewrite_manifest(path: &Path, f: impl FnOnce(&str) -> String) {
    let t = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(&t)).unwrap();
}

fn replace_sha(t: &str, sha: &str) -> String {
    t.lines()
        .map(
            |l| {
                if l.starts_with("sha256 = ") {
                    format!("sha256 = \"{sha}\"")
                } else {
                    l.to_owned()
                }
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn signatures_by_trusted_keys_are_the_other_way_to_trust() {
    let h = host();
    let s = setup(&["zstd"], false);
    let publisher = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[43; 32]);
    let manifest_path = s.dir.join("zstd.toml");
    let sign = |key: &ed25519_dalek::SigningKey| {
        let m = Manifest::load(&manifest_path).unwrap();
        hex::encode(key.sign(&m.signed_message()).to_bytes())
    };
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let with_sig = |sig: &str| original.replacen("\n", &format!("\nsignature = \"{sig}\"\n"), 1);
    let mut cfg = s.config.clone();
    cfg.trusted_keys = vec![hex::encode(publisher.verifying_key().to_bytes())];

    std::fs::write(&manifest_path, with_sig(&sign(&publisher))).unwrap();
    let p = h.load(&s.dir.join("zstd.wasm"), &cfg).unwrap();
    assert!(matches!(p.trust(), TrustBasis::Signed(_)));

    std::fs::write(&manifest_path, with_sig(&sign(&stranger))).unwrap();
    let (r, m) = refusal(h.load(&s.dir.join("zstd.wasm"), &cfg));
    assert_eq!(r, Refusal::Untrusted, "{m}");

    // A signature does not survive a change of what it signed (here: the version).
    std::fs::write(
        &manifest_path,
        with_sig(&sign(&publisher)).replace("version = \"0.1.0\"", "version = \"0.1.1\""),
    )
    .unwrap();
    let (r, m) = refusal(h.load(&s.dir.join("zstd.wasm"), &cfg));
    assert_eq!(r, Refusal::Untrusted, "{m}");
}

#[test]
fn capabilities_not_granted_are_refused_at_load() {
    let h = host();
    let s = setup(&["local"], true);
    // The local target asks for /target; take the grant away.
    let mut cfg = s.config.clone();
    cfg.grants.get_mut("local").unwrap().directories.clear();
    let (r, m) = refusal(h.load(&s.dir.join("local.wasm"), &cfg));
    assert_eq!(r, Refusal::Capability, "{m}");
    assert!(m.contains("/target") && m.contains("grants.local.directories"), "{m}");

    let mut cfg = s.config.clone();
    cfg.grants.get_mut("local").unwrap().clock = false;
    let (r, m) = refusal(h.load(&s.dir.join("local.wasm"), &cfg));
    assert_eq!(r, Refusal::Capability, "{m}");

    let mut cfg = s.config.clone();
    cfg.grants.get_mut("local").unwrap().max_memory_mib = Some(16);
    let (r, m) = refusal(h.load(&s.dir.join("local.wasm"), &cfg));
    assert_eq!(r, Refusal::Capability, "{m}");
    assert!(m.contains("MiB"), "{m}");
}

async fn hostile(mode: &str) -> CodecInstance {
    let s = setup(&["hostile"], true);
    let mut cfg = s.config.clone();
    cfg.grants.get_mut("hostile").unwrap().settings.insert("mode".into(), mode.into());
    let p = host().load(&s.dir.join("hostile.wasm"), &cfg).unwrap();
    // The temp dir may go: the plugin is compiled and held in memory.
    CodecInstance::new(p).await.unwrap()
}

fn failed(e: CallError) -> FailReason {
    match e {
        CallError::Failed { plugin, reason, .. } => {
            assert_eq!(plugin, "hostile");
            reason
        }
        other => panic!("expected the plugin to be stopped, got {other}"),
    }
}

#[tokio::test]
async fn a_trapping_plugin_is_stopped_and_replaced() {
    let mut c = hostile("trap").await;
    let r = failed(c.compress(1, b"data").await.unwrap_err());
    assert!(
        matches!(&r, FailReason::Trap(m) if m.contains("unreachable") || m.contains("panic")),
        "{r}"
    );
    // The next call runs on a fresh instance.
    assert_eq!(c.decompress(b"data", 4).await.unwrap(), b"data");
}

#[tokio::test]
async fn a_looping_plugin_is_stopped_at_its_deadline() {
    let mut c = hostile("spin").await;
    let r = failed(c.compress(1, b"data").await.unwrap_err());
    assert_eq!(r, FailReason::Deadline(1000));
    assert_eq!(c.decompress(b"ok", 2).await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_plugin_over_its_memory_limit_is_stopped() {
    let mut c = hostile("hog").await;
    let r = failed(c.compress(1, b"data").await.unwrap_err());
    assert_eq!(r, FailReason::Memory(64));
    assert_eq!(c.decompress(b"ok", 2).await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_plugin_cannot_read_host_files_it_was_not_granted() {
    let mut c = hostile("snoop").await;
    let e = c.compress(1, b"data").await.unwrap_err();
    assert!(
        matches!(e.plugin_error(), Some(PluginError::Denied(m)) if m.contains("sandboxed")),
        "{e}"
    );
}

#[tokio::test]
async fn a_plugin_of_the_wrong_kind_is_not_instantiated_for_a_role() {
    let s = setup(&["zstd"], true);
    let p = host().load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    let e = TargetInstance::new(p).await.unwrap_err();
    assert!(e.to_string().contains("codec plugin"), "{e}");
}

#[test]
fn compiled_plugins_are_cached_and_a_bad_cache_entry_is_rebuilt() {
    let h = host();
    let s = setup(&["zstd"], true);
    let cache = s.config.cache_dir.clone().unwrap();
    h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    let entries: Vec<PathBuf> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].extension().unwrap(), "cwasm");
    h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    std::fs::write(&entries[0], b"garbage").unwrap();
    h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    assert!(std::fs::read(&entries[0]).unwrap().len() > 1000, "rebuilt");
}

#[tokio::test]
async fn reload_swaps_plugins_while_old_instances_finish() {
    let s = setup(&["zstd", "hostile"], true);
    let reg = Registry::new(host(), s.config.clone());
    let set = reg.current();
    assert_eq!(set.plugins.len(), 2, "{:?}", set.refused);
    let mut old = CodecInstance::new(reg.get("zstd").unwrap()).await.unwrap();

    // Install a broken build of hostile and remove zstd, then reload.
    std::fs::write(s.dir.join("hostile.wasm"), b"broken").unwrap();
    std::fs::remove_file(s.dir.join("zstd.wasm")).unwrap();
    let set2 = reg.reload();
    assert_eq!(set2.generation, set.generation + 1);
    assert!(reg.get("zstd").is_none());
    assert_eq!(set2.refused.len(), 1);
    assert_eq!(set2.refused[0].plugin, "hostile");
    // The refused new files do not drop the version that worked (issue 11, finding 8):
    // it keeps serving until new files load.
    let kept = reg.get("hostile").expect("the working version is kept");
    assert!(Arc::ptr_eq(&kept, &set.plugins["hostile"]));
    assert_eq!(CodecInstance::new(kept).await.unwrap().decompress(b"ok", 2).await.unwrap(), b"ok");
    // The instance made before the reload keeps working.
    let data = mixed_data(10_000);
    let enc = old.compress(1, &data).await.unwrap();
    assert_eq!(old.decompress(&enc.data, data.len() as u32).await.unwrap(), data);
    let _: &Grant = &s.config.grants["zstd"];
}

#[tokio::test]
async fn a_quiescer_runs_granted_commands_and_holds_its_socket_from_freeze_to_thaw() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = setup(&["quiesce-probe"], true);
    rewrite_manifest(&s.dir.join("quiesce-probe.toml"), |t| {
        t.replace("sockets = []", &format!("sockets = [\"{addr}\"]"))
    });
    let mut cfg = s.config.clone();
    let g = cfg.grants.get_mut("quiesce-probe").unwrap();
    g.commands = vec!["/bin/echo".into()];
    g.sockets = vec![addr.clone()];
    g.settings.insert("socket".into(), addr.clone());
    let h = host();
    let p = h.load(&s.dir.join("quiesce-probe.wasm"), &cfg).unwrap();
    let mut q = QuiescerInstance::new(p).await.unwrap();
    q.prepare().await.unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    q.freeze(2000).await.unwrap();
    q.thaw().await.unwrap();
    // The same connection carried prepare, freeze and thaw, and was closed at thaw.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut seen = String::new();
    conn.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "prepare\nfreeze\nthaw\n");

    // A program that is not granted is refused by the host.
    let mut cfg2 = cfg.clone();
    let g = cfg2.grants.get_mut("quiesce-probe").unwrap();
    g.settings.insert("command".into(), "/bin/cat".into());
    g.settings.remove("socket");
    let mut q = QuiescerInstance::new(h.load(&s.dir.join("quiesce-probe.wasm"), &cfg2).unwrap())
        .await
        .unwrap();
    let e = q.freeze(2000).await.unwrap_err();
    assert!(
        matches!(e.plugin_error(), Some(PluginError::Denied(m)) if m.contains("/bin/cat")),
        "{e}"
    );

    // An address that is not granted cannot be reached.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg3 = cfg.clone();
    let g = cfg3.grants.get_mut("quiesce-probe").unwrap();
    g.settings.insert("socket".into(), other.local_addr().unwrap().to_string());
    let mut q = QuiescerInstance::new(h.load(&s.dir.join("quiesce-probe.wasm"), &cfg3).unwrap())
        .await
        .unwrap();
    let e = q.prepare().await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::Denied(_))), "{e}");
}

#[tokio::test]
async fn a_quiescer_asking_for_star_gets_exactly_what_the_site_grants() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = setup(&["quiesce-probe"], true);
    rewrite_manifest(&s.dir.join("quiesce-probe.toml"), |t| {
        t.replace("commands = [\"/bin/echo\"]", "commands = [\"*\"]")
            .replace("sockets = []", "sockets = [\"*\"]")
    });
    let h = host();
    // Granted: /bin/echo and the listener's address; the probe uses both.
    let mut cfg = s.config.clone();
    let g = cfg.grants.get_mut("quiesce-probe").unwrap();
    g.commands = vec!["/bin/echo".into()];
    g.sockets = vec![addr.clone()];
    g.settings.insert("socket".into(), addr.clone());
    let mut q = QuiescerInstance::new(h.load(&s.dir.join("quiesce-probe.wasm"), &cfg).unwrap())
        .await
        .unwrap();
    q.prepare().await.unwrap();
    let _conn = listener.accept().unwrap();
    q.freeze(2000).await.unwrap();
    q.thaw().await.unwrap();

    // Nothing granted: "*" reaches nothing.
    let mut cfg2 = s.config.clone();
    let g = cfg2.grants.get_mut("quiesce-probe").unwrap();
    g.settings.insert("socket".into(), addr.clone());
    let mut q = QuiescerInstance::new(h.load(&s.dir.join("quiesce-probe.wasm"), &cfg2).unwrap())
        .await
        .unwrap();
    let e = q.prepare().await.unwrap_err();
    assert!(matches!(e.plugin_error(), Some(PluginError::Denied(_))), "{e}");
    let e = q.freeze(2000).await.unwrap_err();
    assert!(
        matches!(e.plugin_error(), Some(PluginError::Denied(m)) if m.contains("/bin/echo")),
        "{e}"
    );
}

/// Finding 1 of the review (issue 11): a target plugin granted one directory planted
/// links out of it and had `clone-file` read and write any host file. Every way of doing
/// it is refused with a clear error, nothing outside changes, and the instance (and the
/// host) keep working.
#[tokio::test]
async fn a_target_plugin_cannot_escape_its_directory_through_links() {
    let s = setup(&["hostile-target"], true);
    let data = s._tmp.path().join("granted/data");
    let outside = s._tmp.path().join("outside");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"the CA key").unwrap();
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    let mut cfg = s.config.clone();
    let g = cfg.grants.get_mut("hostile-target").unwrap();
    assert_eq!(g.directories["/data"], data);
    g.settings.insert("outside".into(), "../../outside".into());
    g.settings.insert("outside_abs".into(), outside.display().to_string());
    let p = host().load(&s.dir.join("hostile-target.wasm"), &cfg).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    let report = |bytes: Vec<u8>| -> Vec<(String, String, String)> {
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.splitn(3, '\t').map(str::to_owned);
                (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or_default())
            })
            .collect()
    };

    // The plugin plants its links through WASI; any WASI refuses is planted here
    // instead (the target storage's other writers can plant links too).
    let planted = report(t.get_log("links").await.unwrap());
    for (link, how, msg) in &planted {
        if how == "refused-by-wasi" {
            let target = match link.as_str() {
                "up" | "chain2" => "../../outside".into(),
                "abs" => outside.display().to_string(),
                "chain1" => "chain2".into(),
                "secretlink" => "../../outside/secret".into(),
                _ => "../../outside/victim".into(),
            };
            eprintln!("WASI refused {link} ({msg}); planting it from the host");
            std::os::unix::fs::symlink(target, data.join(link)).unwrap();
        }
    }
    assert!(
        planted.iter().any(|(_, how, _)| how == "ok"),
        "the plugin could plant no link at all: {planted:?}"
    );
    for (label, kind, msg) in report(t.get_log("attack").await.unwrap()) {
        if label == "legit-with-tmp-link" {
            assert_eq!(kind, "ok", "{label}: {msg}");
        } else {
            assert_eq!(kind, "denied", "{label}: {msg}");
            assert!(msg.contains("symbolic link"), "{label}: {msg}");
        }
    }
    let swapped = report(t.get_log("swap").await.unwrap());
    assert_eq!(swapped[0].1, "ok", "{swapped:?}");
    for (label, kind, msg) in &swapped[1..] {
        assert_eq!(kind, "denied", "{label}: {msg}");
    }
    // Nothing outside changed; nothing secret came in.
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"untouched");
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"the CA key");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
    assert!(!data.join("got").exists());
    assert_eq!(std::fs::read(data.join("t")).unwrap(), b"the plugin's own data");
    // The instance keeps serving: a legitimate clone works after all that.
    let again = report(t.get_log("attack").await.unwrap());
    assert!(again.iter().any(|(l, k, _)| l == "legit-with-tmp-link" && k == "ok"), "{again:?}");
}

/// Finding 2 of the review (issue 11): the host ran whatever `.cwasm` sat in the cache
/// under a trusted plugin's name. Native code swapped in (another plugin's valid
/// artifact, a headerless artifact) is refused and compiled again, never run; a cache
/// directory others may write is not used at all.
#[tokio::test]
async fn a_swapped_compiled_plugin_is_never_run() {
    use std::os::unix::fs::PermissionsExt;
    let h = host();
    let s = setup(&["zstd", "hostile"], true);
    let cache = s.config.cache_dir.clone().unwrap();
    let cached = |h: &Host, name: &str| -> PathBuf {
        let before: Vec<PathBuf> =
            std::fs::read_dir(&cache).map_or(vec![], |d| d.map(|e| e.unwrap().path()).collect());
        h.load(&s.dir.join(format!("{name}.wasm")), &s.config).unwrap();
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !before.contains(p))
            .expect("a new cache entry")
    };
    let zstd_entry = cached(&h, "zstd");
    let hostile_entry = cached(&h, "hostile");
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&zstd_entry).unwrap().permissions().mode() & 0o777, 0o600);
    let data = mixed_data(1 << 16);
    let is_zstd = |enc: &lifeboat_plugin_host::Encoded| !enc.raw && enc.data.len() < data.len();

    // Another plugin's artifact (valid for its own key) under zstd's name.
    let zstd_artifact = std::fs::read(&zstd_entry).unwrap();
    std::fs::copy(&hostile_entry, &zstd_entry).unwrap();
    let p = h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    let enc = CodecInstance::new(p).await.unwrap().compress(1, &data).await.unwrap();
    assert!(is_zstd(&enc), "the swapped native code ran under zstd's name");
    assert_eq!(std::fs::read(&zstd_entry).unwrap(), zstd_artifact, "recompiled and rewritten");

    // The bare wasmtime artifact of the other plugin (no header): refused too.
    std::fs::write(&zstd_entry, &std::fs::read(&hostile_entry).unwrap()[40..]).unwrap();
    let p = h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    let enc = CodecInstance::new(p).await.unwrap().compress(1, &data).await.unwrap();
    assert!(is_zstd(&enc), "a headerless artifact ran");

    // A cache directory others may write is not used: nothing is read from it or
    // written to it.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::copy(&hostile_entry, &zstd_entry).unwrap();
    let p = h.load(&s.dir.join("zstd.wasm"), &s.config).unwrap();
    let enc = CodecInstance::new(p).await.unwrap().compress(1, &data).await.unwrap();
    assert!(is_zstd(&enc), "an artifact from a world-writable cache ran");
    assert_eq!(std::fs::read(&zstd_entry).unwrap(), std::fs::read(&hostile_entry).unwrap());
}

/// The work [`renames_and_creates_are_followed_by_a_sync_of_their_directory`] traces: the
/// local target stores a log, creates a disk and makes a point (SDK helpers), and the host
/// clones a file. Runs only when that test starts it under strace.
#[tokio::test]
async fn syscall_probe_workload() {
    let Some(dir) = std::env::var_os("LIFEBOAT_SYSCALL_PROBE") else { return };
    let s = setup(&["local"], true);
    let mut cfg = s.config.clone();
    cfg.grants.get_mut("local").unwrap().directories.insert("/target".into(), dir.into());
    let p = host().load(&s.dir.join("local.wasm"), &cfg).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    t.put_log("probe-log", b"a log").await.unwrap();
    t.create_disk("probe-disk", 1 << 20).await.unwrap();
    t.create_point("probe-point", "crash:1", &["probe-disk".into()]).await.unwrap();
}

/// Issue 11, finding 4: the SDK's `write_atomic` and `create_sparse` renamed or created
/// without syncing the directory, so a power cut could lose a log the process server had
/// already released from its cache. Traced with strace: every rename into place and every
/// creation of a disk is followed by an fsync of its directory.
#[test]
fn renames_and_creates_are_followed_by_a_sync_of_their_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let trace = tmp.path().join("trace");
    let out = std::process::Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=rename,renameat,renameat2,fsync,fdatasync,openat,openat2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "syscall_probe_workload", "--nocapture"])
        .env("LIFEBOAT_SYSCALL_PROBE", &target)
        .output()
        .expect("strace runs (cargo xtask test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> =
        std::fs::read_to_string(&trace).unwrap().lines().map(str::to_owned).collect();
    let t = target.canonicalize().unwrap().display().to_string();
    // The index of the first line at or after `from` containing every needle.
    let find = |from: usize, needles: &[&str]| {
        lines[from..].iter().position(|l| needles.iter().all(|n| l.contains(n))).map(|i| i + from)
    };
    let synced_after =
        |from: usize, dir: &str| find(from, &["fsync(", &format!("<{dir}>")]).is_some();
    // write_atomic: the log renamed into place, then its directory synced.
    let renamed = find(0, &["rename", "probe-log.tmp"]).expect("the log was renamed into place");
    assert!(synced_after(renamed, &format!("{t}/logs")), "no fsync of logs/ after the rename");
    // create_sparse: the disk created and synced, then its directory synced.
    let created = find(0, &["fsync(", "/disks/probe-disk.img>"]).expect("the new disk was synced");
    assert!(synced_after(created, &format!("{t}/disks")), "no fsync of disks/ after the create");
    // The point's metadata (write_atomic) and the host's clone-file (renameat of its
    // temporary file): each followed by a sync of the point's directory.
    let cloned = find(0, &["rename", "probe-disk.img.clone-tmp"]).expect("the host cloned");
    assert!(synced_after(cloned, &format!("{t}/points/probe-point")), "clone-file did not sync");
    let meta = find(0, &["rename", "point.meta.tmp"]).expect("the point's metadata");
    assert!(synced_after(meta, &format!("{t}/points/probe-point")), "point.meta not synced");
}

#[tokio::test]
async fn settings_given_to_the_registry_replace_the_grants_and_are_checked_first() {
    let s = setup(&["local"], true);
    let mut config = s.config.clone();
    config
        .grants
        .get_mut("local")
        .unwrap()
        .settings
        .insert("host_root".into(), "/from-file".into());
    let reg = Registry::new(host(), config);
    let setting = |reg: &Registry, k: &str| {
        reg.get("local").unwrap().settings().iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(setting(&reg, "host_root").as_deref(), Some("/from-file"));
    assert_eq!(setting(&reg, "root").as_deref(), Some("/target"), "the declared default");

    // A candidate is checked against the manifest without being swapped in.
    let bad = [("root".to_string(), "/target".to_string()), ("colour".into(), "red".into())];
    let e = reg.load_with("local", bad.into_iter().collect()).unwrap_err();
    assert!(e.message.contains("plugins.grants.local.settings.colour"), "{e}");
    let generation = reg.current().generation;
    let good = [("host_root".to_string(), "/stored".to_string())];
    let p = reg.load_with("local", good.iter().cloned().collect()).unwrap();
    assert!(p.settings().contains(&("host_root".into(), "/stored".into())));
    assert_eq!(reg.current().generation, generation, "load_with swaps nothing in");
    assert_eq!(setting(&reg, "host_root").as_deref(), Some("/from-file"));
    // The candidate's init runs against the granted directory.
    TargetInstance::new(p).await.unwrap();

    // Given to the registry, the settings replace the grant's whole from the next reload.
    reg.set_settings("local", Some(good.iter().cloned().collect()));
    assert_eq!(setting(&reg, "host_root").as_deref(), Some("/from-file"));
    reg.reload();
    assert_eq!(setting(&reg, "host_root").as_deref(), Some("/stored"));
    reg.set_settings("local", None);
    reg.reload();
    assert_eq!(setting(&reg, "host_root").as_deref(), Some("/from-file"));
    assert!(reg.load_with("nosuch", Default::default()).is_err());
}

#[tokio::test]
async fn a_plugin_loses_a_required_setting_without_losing_its_working_version() {
    let s = setup(&["azure"], true);
    let reg = Registry::new(host(), s.config.clone());
    // Installed with no settings: loaded (so its form can be shown), not configured.
    let why = reg.get("azure").unwrap().unconfigured().map(str::to_owned).unwrap();
    assert!(why.contains("plugins.grants.azure.settings.account: required"), "{why}");
    let e = TargetInstance::new(reg.get("azure").unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("not configured"), "{e}");
    let good: std::collections::BTreeMap<String, String> = [("account", "acct"), ("key", "a2V5")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    reg.set_settings("azure", Some(good));
    reg.reload();
    let working = reg.get("azure").unwrap();
    assert!(working.unconfigured().is_none());
    // Its settings lose the required value: the configured version stays loaded.
    reg.set_settings("azure", Some(Default::default()));
    reg.reload();
    assert!(Arc::ptr_eq(&reg.get("azure").unwrap(), &working));
}
