//! Idempotent installation of what the build needs.

use crate::run;
use anyhow::{Context, Result};
use std::process::Command;

/// Debian packages the build needs: clang and wasi-libc's headers compile the C zstd inside
/// the zstd plugin for wasm32-wasip2; clang and the kernel's UAPI headers (linux-libc-dev)
/// compile the agent's eBPF tracker; make, libelf, zlib and pkg-config build and link
/// libbpf (libbpf-sys builds its vendored copy with make).
/// dpkg-dev (dpkg-shlibdeps) and binutils (strip) make the agent's Debian package.
/// The agent's static binary (x86_64-unknown-linux-musl) is compiled with musl-gcc
/// (musl-tools), libbpf-sys building elfutils' libelf and zlib from their vendored sources
/// (autoconf, automake, autopoint, libtool, flex, bison, gawk).
const BUILD_PACKAGES: &[&str] = &[
    "clang",
    "wasi-libc",
    "linux-libc-dev",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
    "make",
    "dpkg-dev",
    "binutils",
    "musl-tools",
    "autoconf",
    "automake",
    "autopoint",
    "libtool",
    "flex",
    "bison",
    "gawk",
];

/// The Rust targets besides the host's: plugins are wasm32-wasip2 components; the agent's
/// static binary is x86_64-unknown-linux-musl.
pub const RUST_TARGETS: &[&str] = &["wasm32-wasip2", "x86_64-unknown-linux-musl"];

/// Debian packages the tests need besides the build: e2fsprogs and xfsprogs make the
/// filesystems the agent's free-space and eBPF tracker tests mount; util-linux has losetup,
/// blkdiscard and fsfreeze; squashfs-tools makes a filesystem that cannot be frozen (the
/// agent must skip it); postgresql is the real database the PostgreSQL quiescer's test
/// quiesces (started by the test on 127.0.0.1 as the postgres user). The lifecycle test
/// builds a bootable Linux disk from Debian's kernel (linux-image-amd64, its modules found
/// with kmod's modprobe), busybox-static, an initramfs packed with cpio and gzip, and
/// SYSLINUX's boot code (extlinux); it boots the failed-over disk with qemu-system-x86
/// ([`BACKPORTS_PACKAGES`]).
pub const TEST_PACKAGES: &[&str] = &[
    // Syscall traces: the SDK helpers' directory syncs are checked with it.
    "strace",
    "e2fsprogs",
    "xfsprogs",
    "util-linux",
    "postgresql",
    "squashfs-tools",
    "linux-image-amd64",
    "kmod",
    "busybox-static",
    "cpio",
    "gzip",
    "extlinux",
    "syslinux-common",
    // The web UI's browser test drives Debian's Chromium (headless, with playwright-core).
    "chromium",
    // ... and checks the login, the dashboard and a machine's plots in Firefox (headless,
    // WebDriver BiDi, with puppeteer-core).
    "firefox-esr",
    // The packages and push-install tests install the agent in a Debian root made with it;
    // the image is built from one.
    "mmdebstrap",
    // The image test boots the appliance image with UEFI firmware and checks its OVF.
    "ovmf",
    "libxml2-utils",
    // The VMware target's tests run vcsim, govmomi's vSphere simulator: Debian ships it as
    // a Go library, built offline into a small launcher by scripts/vcsim.sh.
    "golang-go",
    "golang-github-vmware-govmomi-dev",
    // ... and look at what the plugin made in vSphere with curl.
    "curl",
];

/// Packages taken from bookworm-backports, so they match the backports qemu-utils the
/// machines come with: qemu-system-x86 boots failed-over disks in the lifecycle test.
pub const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86"];

/// Adds the bookworm-backports suite to the Debian apt source (deb822
/// `/etc/apt/sources.list.d/debian.sources`, or a one-line list file beside an old-style
/// `sources.list`) and installs the missing `pkgs` from it. Idempotent.
pub fn apt_backports(pkgs: &[&str]) -> Result<()> {
    if pkgs.iter().all(|p| installed(p)) {
        return Ok(());
    }
    let deb822 = std::path::Path::new("/etc/apt/sources.list.d/debian.sources");
    let text = std::fs::read_to_string(deb822).unwrap_or_default();
    if !text.contains("bookworm-backports") {
        let script = if text.lines().any(|l| l.trim() == "Suites: bookworm bookworm-updates") {
            "sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' /etc/apt/sources.list.d/debian.sources".to_owned()
        } else {
            "grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d || echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list".to_owned()
        };
        eprintln!("xtask: adding bookworm-backports to the apt sources (for {})", pkgs.join(" "));
        run(&mut as_root("sh", &["-c", &script]))?;
    }
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    run(&mut as_root("apt-get", &["update", "-q"]))?;
    let mut args =
        vec!["install", "-y", "-q", "--no-install-recommends", "-t", "bookworm-backports"];
    args.extend(&missing);
    run(&mut as_root("apt-get", &args))
}

/// `program args`, through sudo unless this is root.
fn as_root(program: &str, args: &[&str]) -> Command {
    let mut c = if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    };
    c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    c
}

/// Whether Debian package `p` is installed.
fn installed(p: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", p])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Makes sure the Rust targets ([`RUST_TARGETS`]) and the build's Debian packages exist.
pub fn toolchain() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 and musl targets")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    for target in RUST_TARGETS {
        if !installed.lines().any(|l| l.trim() == *target) {
            eprintln!("xtask: installing the Rust target {target}");
            run(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    apt(BUILD_PACKAGES)
}

/// Installs the Debian packages in `pkgs` that are missing (apt-get update first).
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
