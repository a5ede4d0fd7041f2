//! Debian roots for the tests that install the agent on other systems: made once with
//! `debootstrap --variant=minbase` from the Debian archive and kept as a tarball in the cache
//! folder (`LIFEBOAT_CACHE_DIR`, default `~/.cache/lifeboat`), outside the clone, keyed by the
//! release and the packages; each test unpacks its own copy.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache folder for downloads and built roots.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LIFEBOAT_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/lifeboat"),
    }
}

/// Unpacks a Debian `suite` root with `include` (and what they depend on) into `dest`,
/// debootstrapping it first if the cache has none.
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
        let work = tempfile::Builder::new().prefix("root-").tempdir_in(&dir).unwrap();
        let target = work.path().join("root");
        eprintln!(
            "debootstrap {suite} ({}) into the cache: {}",
            sorted.join(" "),
            tarball.display()
        );
        let out = Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={}", sorted.join(","))])
            .arg(suite)
            .arg(&target)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("debootstrap (cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "debootstrap {suite} failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        // apt's lists and downloaded packages are not needed to install a local package.
        let _ = std::fs::remove_dir_all(target.join("var/cache/apt/archives"));
        let part = tarball.with_extension("tar.part");
        let st = Command::new("tar")
            .args(["-C"])
            .arg(&target)
            .args(["--numeric-owner", "-cf"])
            .arg(&part)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the {suite} root");
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
}
