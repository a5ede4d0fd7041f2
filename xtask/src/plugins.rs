//! Building the wasm plugins and installing them with their manifests.

use crate::{cargo, root, run, target_dir};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Plugin crates: (folder under plugins/, package name).
pub const PLUGINS: &[(&str, &str)] = &[
    ("zstd", "lifeboat-plugin-zstd"),
    ("aes-gcm", "lifeboat-plugin-aes-gcm"),
    ("local", "lifeboat-plugin-local"),
    ("azure", "lifeboat-plugin-azure"),
    ("vmware", "lifeboat-plugin-vmware"),
    ("examples/dirtarget", "lifeboat-plugin-dirtarget"),
    ("script-quiescer", "lifeboat-plugin-script-quiescer"),
    ("postgres-quiescer", "lifeboat-plugin-postgres-quiescer"),
    ("examples/log-action", "lifeboat-plugin-log-action"),
    ("fixtures/hostile", "lifeboat-plugin-hostile"),
    ("fixtures/quiesce-probe", "lifeboat-plugin-quiesce-probe"),
    ("fixtures/hostile-target", "lifeboat-plugin-hostile-target"),
];

/// Where built plugins are installed: `<target>/plugins`.
pub fn dir() -> PathBuf {
    target_dir().join("plugins")
}

/// Builds every plugin for wasm32-wasip2 and installs `<name>.wasm` + `<name>.toml`.
pub fn build() -> Result<PathBuf> {
    crate::setup::toolchain()?;
    let out = dir();
    std::fs::create_dir_all(&out)?;
    for (folder, package) in PLUGINS {
        // One cargo invocation per plugin: each enables a different world feature of
        // the SDK, and a component must implement exactly the world compiled into it.
        run(cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2", "--package", package])
            // Plugins ship without debug info: smaller files, faster compile at load.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"))?;
        let wasm_name = format!("{}.wasm", package.replace('-', "_"));
        let built = target_dir().join("wasm32-wasip2/release").join(&wasm_name);
        let bytes =
            std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let template_path = root().join("plugins").join(folder).join("plugin.toml");
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        let name = template
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .with_context(|| format!("{} has no name", template_path.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let manifest = manifest_from_template(&template, &sha);
        std::fs::write(out.join(format!("{name}.wasm")), &bytes)?;
        std::fs::write(out.join(format!("{name}.toml")), manifest)?;
        eprintln!(
            "xtask: plugin {name} -> {} ({} KiB, sha256 {sha})",
            out.display(),
            bytes.len() / 1024
        );
    }
    Ok(out)
}

/// The installed manifest: the template with the plugin's version and sha256 added
/// before its `[capabilities]` table (top-level keys must precede tables in TOML).
fn manifest_from_template(template: &str, sha: &str) -> String {
    let top = format!("version = \"{}\"\nsha256 = \"{sha}\"\n", env!("CARGO_PKG_VERSION"));
    match template.find("\n[") {
        Some(i) => format!("{}\n{top}{}", &template[..i], &template[i..]),
        None => format!("{}\n{top}", template.trim_end()),
    }
}
