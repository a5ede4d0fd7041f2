//! The agent's static binary (`cargo xtask package`: x86_64 musl, libbpf, libelf and zlib
//! linked in) on the Debian releases the archive serves, each a fresh minbase root made with
//! mmdebstrap (cached outside the clone):
//! - the binary has no program interpreter and links no shared library;
//! - `lifeboat-agent --version` runs in Debian 11, 12 and 13;
//! - in the Debian 11 root (glibc 2.31, older than the 2.34 a binary built here needs), the
//!   agent registers with a real appliance and replicates a loop device by hash scan; the
//!   recovery point equals the disk; then, the disk changed, the eBPF tracker (the static
//!   libbpf) loads and the next point equals the disk again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The static binary among the packages (`lifeboat-agent-<version>-x86_64-linux-musl`).
fn static_agent() -> PathBuf {
    std::fs::read_dir(packages_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with("-x86_64-linux-musl"))
        .expect("the static agent among the packages: run `cargo xtask package`")
}

#[test]
fn the_static_agent_runs_on_debian_11_12_and_13_and_replicates_from_11() {
    if !root_or_skip("Debian roots (mmdebstrap, chroot, mounts)") {
        return;
    }
    let binary = static_agent();

    // No interpreter, no shared library: nothing for an older system to lack.
    let o = Command::new("readelf").args(["--program-headers", "--dynamic"]).arg(&binary).output();
    let o = o.expect("readelf (binutils)");
    let headers = text(&o);
    assert!(o.status.success(), "{headers}");
    assert!(!headers.contains("INTERP"), "a static binary has no interpreter: {headers}");
    assert!(!headers.contains("(NEEDED)"), "a static binary needs no library: {headers}");
    let sums = std::fs::read_to_string(packages_dir().join("SHA256SUMS")).unwrap();
    let name = binary.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        sums.lines().any(|l| l == format!("{}  {name}", sha256_file(&binary))),
        "SHA256SUMS lists the static binary: {sums}"
    );

    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);

    for (suite, version) in [("bullseye", "11"), ("bookworm", "12"), ("trixie", "13")] {
        let root = site.root().join(suite);
        debian_root(suite, &[], &root);
        let release = std::fs::read_to_string(root.join("etc/debian_version")).unwrap();
        assert!(release.starts_with(version), "{suite} is Debian {version}: {release}");
        let at = root.join("usr/local/bin/lifeboat-agent");
        std::fs::copy(&binary, &at).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = chroot(&root, "lifeboat-agent --version");
        assert!(
            o.status.success() && text(&o).starts_with("lifeboat-agent "),
            "Debian {version}: {}",
            text(&o)
        );
        eprintln!("Debian {version}: {}", text(&o).trim());
    }

    // Debian 11: register, then replicate a loop device by hash scan.
    let mut undo = Undo(vec![]);
    let Some(disk) = loop_device(site.root(), "disk", 64, &mut undo) else { return };
    make_disk(&site.root().join("disk.img"), 64, 23);
    let root = site.root().join("bullseye");
    bind_system_dirs(&root, &mut undo);
    let passphrase = site.cli(&cfg, &["passphrase"]);
    let fingerprint = site.cli(&cfg, &["fingerprint"]);
    let o = chroot(
        &root,
        &format!(
            "LIFEBOAT_PASSPHRASE='{}' lifeboat-agent register --appliance https://127.0.0.1:{} \
             --fingerprint '{}' --state-dir /var/lib/lifeboat-agent",
            passphrase.trim(),
            site.config_port,
            fingerprint.trim()
        ),
    );
    assert!(o.status.success(), "registration from Debian 11: {}", text(&o));
    std::fs::create_dir_all(root.join("etc/lifeboat")).unwrap();
    std::fs::write(
        root.join("etc/lifeboat/agent.toml"),
        format!(
            "config_version = 1\nstate_dir = \"/var/lib/lifeboat-agent\"\ndisks = [\"{disk}\"]\n\
             interval_secs = 5\ntracker = \"hashscan\"\n"
        ),
    )
    .unwrap();
    let o = chroot(&root, "lifeboat-agent run --once --config /etc/lifeboat/agent.toml");
    assert!(o.status.success(), "replication from Debian 11: {}", text(&o));
    let want = sha256_file(&site.root().join("disk.img"));
    let (_, id) =
        wait_for(Duration::from_secs(60), "a recovery point", || site.points(&cfg).last().cloned());
    assert_eq!(site.point_checksum(&cfg, &id, 0), want, "the point is the disk");

    // The statically linked libbpf: the eBPF tracker (no fallback) loads from Debian 11 too.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&[0x5a; 256 << 10], 8 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let conf = root.join("etc/lifeboat/agent.toml");
    let c = std::fs::read_to_string(&conf).unwrap().replace("\"hashscan\"", "\"ebpf\"");
    std::fs::write(&conf, c).unwrap();
    let o = chroot(&root, "lifeboat-agent run --once --config /etc/lifeboat/agent.toml");
    assert!(o.status.success(), "the eBPF tracker from Debian 11: {}", text(&o));
    assert!(text(&o).contains("eBPF tracker"), "the eBPF tracker ran: {}", text(&o));
    let want = sha256_file(&site.root().join("disk.img"));
    let (_, newer) = wait_for(Duration::from_secs(60), "a second recovery point", || {
        site.points(&cfg).last().filter(|(_, i)| *i != id).cloned()
    });
    assert_eq!(site.point_checksum(&cfg, &newer, 0), want, "the second point is the disk");
}
