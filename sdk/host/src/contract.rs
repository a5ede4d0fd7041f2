//! The target contract walk: what every target plugin (local, Azure, VMware, one a user
//! writes) must do, as the WIT `target` interface describes it. The plugins' own tests run
//! it against their real services (a directory, Azurite, vcsim); it is public so that a
//! plugin author's tests can run it too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use crate::target::{Extent, ZeroRange};
use crate::{CallError, PluginError, TargetInstance};

/// What a target does beyond the contract, checked when given.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Points carry the real time (the plugin is granted the clock).
    pub clock: bool,
    /// `materialize` reports `instant` as this.
    pub instant_materialize: Option<bool>,
    /// A materialised disk `m1-d0-tf`'s location ends with this.
    pub location_suffix: Option<String>,
}

/// Where `cargo xtask plugins` put the built plugins, seen from a test binary
/// (`<target>/<profile>/deps/<test>` → `<target>/plugins`), or `LIFEBOAT_PLUGINS_DIR`;
/// panics saying what to run when `expect` (a file such as `zstd.wasm`) is not there.
pub fn built_plugins(expect: &str) -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("LIFEBOAT_PLUGINS_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.ancestors().nth(3).unwrap_or(std::path::Path::new(".")).join("plugins");
    assert!(
        dir.join(expect).exists(),
        "built plugins not found in {}: run `cargo xtask plugins` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// Deterministic data that compresses partly: runs of zeros, text and noise.
pub fn mixed_data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match (v.len() / 4096) % 3 {
            0 => v.extend_from_slice(&[0; 64]),
            1 => v.extend_from_slice(b"the quick brown fox jumps over the lazy dog, again; "),
            _ => v.extend_from_slice(&x.to_le_bytes()),
        }
    }
    v.truncate(len);
    v
}

#[track_caller]
fn plugin_err(e: &CallError) -> &PluginError {
    e.plugin_error().unwrap_or_else(|| panic!("expected a plugin error, got {e}"))
}

/// Walks the contract on a fresh target: disks (idempotent creation, writes, zero ranges,
/// reads, refusals past the end), a point that keeps its content after later writes,
/// materialising it, listing, logs, deleting. Panics on the first broken promise. Leaves
/// disk `m1-d0` and log `m1-d0.0000000002`, `m2-d0.0000000001` behind.
pub async fn exercise_target(t: &mut TargetInstance, expect: &Expect) {
    t.health().await.unwrap();
    let size = 4u64 << 20;
    t.create_disk("m1-d0", size).await.unwrap();
    t.create_disk("m1-d0", size).await.unwrap(); // idempotent
    let e = t.create_disk("m1-d0", size * 2).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(_)), "{e}");
    let first = mixed_data(64 << 10, 1);
    t.write_extents("m1-d0", &[Extent { offset: 8192, data: first.clone() }], &[]).await.unwrap();
    t.flush_disk("m1-d0").await.unwrap();
    t.create_point("m1-p1", "crash:1", &["m1-d0".into()]).await.unwrap();
    t.create_point("m1-p1", "crash:1", &["m1-d0".into()]).await.unwrap(); // idempotent
    t.write_extents(
        "m1-d0",
        &[Extent { offset: 8192, data: vec![0xEE; 4096] }],
        &[ZeroRange { offset: 16384, length: 4096 }],
    )
    .await
    .unwrap();
    let now = t.read_extent("m1-d0", 8192, 12288).await.unwrap();
    assert!(now[..4096].iter().all(|b| *b == 0xEE));
    assert!(now[8192..].iter().all(|b| *b == 0));
    // Past the end is refused, not silently extended.
    for (offset, len) in [(size - 10, 20usize), (size - 512, 1024)] {
        let e = t
            .write_extents("m1-d0", &[Extent { offset, data: vec![1; len] }], &[])
            .await
            .unwrap_err();
        assert!(matches!(plugin_err(&e), PluginError::Invalid(_)), "{e}");
    }

    let points = t.list_points("m1-").await.unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].tag, "crash:1");
    assert_eq!(points[0].disks, vec!["m1-d0".to_owned()]);
    if expect.clock {
        assert!(points[0].created_unix_ms > 1_700_000_000_000);
    }
    let m = t.materialize("m1-p1", "m1-d0", "m1-d0-tf").await.unwrap();
    assert_eq!(m.id, "m1-d0-tf");
    if let Some(instant) = expect.instant_materialize {
        assert_eq!(m.instant, instant);
    }
    if let Some(suffix) = &expect.location_suffix {
        assert!(m.location.ends_with(suffix.as_str()), "{} does not end with {suffix}", m.location);
    }
    let old = t.read_extent("m1-d0-tf", 8192, first.len() as u32).await.unwrap();
    assert_eq!(old, first, "materialised disk has the point's content");
    let disks = t.list_disks().await.unwrap();
    let ids: Vec<&str> = disks.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["m1-d0", "m1-d0-tf"]);
    assert!(disks.iter().all(|d| d.size == size), "{disks:?}");

    t.put_log("m1-d0.0000000002", b"two").await.unwrap();
    t.put_log("m1-d0.0000000001", b"one").await.unwrap();
    t.put_log("m2-d0.0000000001", b"other").await.unwrap();
    assert_eq!(t.list_logs("m1-").await.unwrap(), vec!["m1-d0.0000000001", "m1-d0.0000000002"]);
    assert_eq!(t.get_log("m1-d0.0000000002").await.unwrap(), b"two");
    t.delete_log("m1-d0.0000000001").await.unwrap();
    let e = t.get_log("m1-d0.0000000001").await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    t.delete_point("m1-p1").await.unwrap();
    assert!(t.list_points("m1-").await.unwrap().is_empty());
    t.delete_disk("m1-d0-tf").await.unwrap();
}
