//! Debian roots for the tests that install the agent on other systems: made once with
//! `mmdebstrap --variant=minbase` from the Debian archive and kept as a tarball in the cache
//! folder (`LIFEBOAT_CACHE_DIR`, default `~/.cache/lifeboat`), outside the clone, keyed by the
//! release and the packages; each test unpacks its own copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cache folder for downloads and built roots.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LIFEBOAT_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/lifeboat"),
    }
}

/// Runs `script` with `sh` inside `root` (a chroot), with a clean environment.
pub fn chroot(root: &Path, script: &str) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap()
}

/// stdout then stderr of `o`, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Unpacks a Debian `suite` root with `include` (and what they depend on) into `dest`,
/// made with mmdebstrap first if the cache has none.
pub fn debian_root(suite: &str, include: &[&str], dest: &Path) {
    let mut sorted = include.to_vec();
    sorted.sort_unstable();
    let key = format!("{suite}-minbase-{}", sorted.join(","));
    use sha2::Digest as _;
    let tag = &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..16];
    let dir = cache_dir().join("roots");
    std::fs::create_dir_all(&dir).unwrap();
    let tarball = dir.join(format!("debian-{suite}-{tag}.tar"));
    if !tarball.exists() {
        eprintln!(
            "mmdebstrap {suite} ({}) into the cache: {}",
            sorted.join(" "),
            tarball.display()
        );
        let part = tarball.with_extension("part.tar");
        let out = Command::new("mmdebstrap")
            .args(["--mode=root", "--variant=minbase", "--format=tar", "--quiet"])
            .args(if sorted.is_empty() {
                vec![]
            } else {
                vec![format!("--include={}", sorted.join(","))]
            })
            .arg("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb")
            .arg(suite)
            .arg(&part)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("mmdebstrap (cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "mmdebstrap {suite} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::fs::rename(&part, &tarball).unwrap();
    }
    std::fs::create_dir_all(dest).unwrap();
    let st = Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tarball)
        .arg("-C")
        .arg(dest)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tarball.display());
    // As an installed system has (mmdebstrap leaves the name service files to the system).
    std::fs::write(
        dest.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .unwrap();
}

/// The packages of the Debian root the package and push-install tests install the agent in
/// (one root for both, made once): systemd (the package enables the agent), an SSH server,
/// sudo, curl (the installer downloads with it). Nothing for the agent: it is static.
pub const MACHINE_PACKAGES: &[&str] = &["systemd", "openssh-server", "sudo", "curl"];

/// Binds the host's /dev, /proc and /sys into `root` (lsblk, loop devices, the agent),
/// unmounted by `undo`.
pub fn bind_system_dirs(root: &Path, undo: &mut crate::Undo) {
    for m in ["dev", "proc", "sys"] {
        let at = root.join(m);
        crate::sh("mount", &["--rbind", &format!("/{m}"), at.to_str().unwrap()]).unwrap();
        crate::sh("mount", &["--make-rslave", at.to_str().unwrap()]).unwrap();
        undo.0.push(("umount".into(), vec!["-R".into(), "-l".into(), at.display().to_string()]));
    }
}
