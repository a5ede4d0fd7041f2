//! Idempotent installation of what the build needs.

use crate::run;
use anyhow::{Context, Result};
use std::process::Command;

/// Debian packages the build needs: clang and wasi-libc's headers compile the C zstd inside
/// the zstd plugin for wasm32-wasip2; clang and the kernel's UAPI headers (linux-libc-dev)
/// compile the agent's eBPF tracker; make, libelf, zlib and pkg-config build and link
/// libbpf (libbpf-sys builds its vendored copy with make).
const BUILD_PACKAGES: &[&str] =
    &["clang", "wasi-libc", "linux-libc-dev", "libelf-dev", "zlib1g-dev", "pkg-config", "make"];

/// Debian packages the tests need besides the build: e2fsprogs and xfsprogs make the
/// filesystems the agent's free-space and eBPF tracker tests mount; util-linux has losetup,
/// blkdiscard and fsfreeze; squashfs-tools makes a filesystem that cannot be frozen (the
/// agent must skip it); postgresql is the real database the PostgreSQL quiescer's test
/// quiesces (started by the test on 127.0.0.1 as the postgres user).
pub const TEST_PACKAGES: &[&str] =
    &["e2fsprogs", "xfsprogs", "util-linux", "postgresql", "squashfs-tools"];

/// Makes sure the wasm32-wasip2 Rust target and the build's Debian packages exist.
pub fn toolchain() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") {
        eprintln!("xtask: installing the Rust target wasm32-wasip2 (plugins are built for it)");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    apt(BUILD_PACKAGES)
}

/// Installs the Debian packages in `pkgs` that are missing (apt-get update first).
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian packages: {} (needed by the build and tests)",
        missing.join(" ")
    );
    let sudo = !is_root();
    let apt_get = |args: &[&str]| {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    run(&mut apt_get(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    run(&mut apt_get(&args))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
