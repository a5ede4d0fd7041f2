//! `cargo xtask ui`: builds the appliance's web UI (appliance/ui) into appliance/ui/dist,
//! which the appliance's build script embeds.
//!
//! Node.js and npm come from Debian when missing; the npm packages are installed with
//! `npm ci` from the committed package-lock.json (npm's download cache lives in ~/.npm,
//! outside the clone) and again only when the lockfile changes. The bundle is rebuilt only
//! when its inputs change, so the appliance is not rebuilt for nothing.

use crate::{root, run, setup};
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ui_dir() -> PathBuf {
    root().join("appliance/ui")
}

/// Node.js and npm, from Debian when missing.
pub fn node() -> Result<()> {
    if Command::new("npm").arg("--version").output().is_err()
        || Command::new("node").arg("--version").output().is_err()
    {
        setup::apt(&["nodejs", "npm"])?;
    }
    Ok(())
}

/// `npm ci` in appliance/ui when its lockfile changed since the last install.
pub fn npm_ci() -> Result<()> {
    node()?;
    let dir = ui_dir();
    let lock = std::fs::read(dir.join("package-lock.json"))?;
    let want = hex::encode(Sha256::digest(&lock));
    let stamp = dir.join("node_modules/.lifeboat-lock-sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    run(Command::new("npm").args([
        "ci",
        "--prefix",
        "appliance/ui",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]))?;
    std::fs::write(stamp, want)?;
    Ok(())
}

/// The digest of everything the bundle is made from.
fn inputs_digest(dir: &Path) -> Result<String> {
    let mut files = vec![dir.join("package-lock.json"), dir.join("build.mjs")];
    for e in std::fs::read_dir(dir.join("src"))? {
        files.push(e?.path());
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().as_bytes());
        h.update(std::fs::read(&f)?);
    }
    Ok(hex::encode(h.finalize()))
}

/// Builds appliance/ui/dist unless it was built from the same inputs.
pub fn build() -> Result<()> {
    npm_ci()?;
    let dir = ui_dir();
    let want = inputs_digest(&dir)?;
    let stamp = dir.join("dist/.inputs-sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        eprintln!("xtask: the web UI is up to date (appliance/ui/dist)");
        return Ok(());
    }
    run(Command::new("node").arg("appliance/ui/build.mjs"))?;
    std::fs::write(stamp, want)?;
    Ok(())
}
