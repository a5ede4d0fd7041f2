//! The agent's Debian package (`cargo xtask package`) installed the way an administrator is
//! told to, in a real Debian 12 root (made with mmdebstrap: systemd, curl, sudo), against a
//! real appliance serving it at `/downloads/`:
//! - the command `lifeboat install-command` prints refuses an installer that is not the one
//!   it names (nothing installed);
//! - `dpkg -i` without a passphrase installs, writes the configuration, neither registers nor
//!   enables the agent; purge removes it all;
//! - a wrong passphrase: the installer fails and says the agent is not registered, and the
//!   agent is not enabled;
//! - the command with a fresh passphrase installs, registers and enables the agent, whose
//!   configuration lists the disk given; the installed agent (run in the root) replicates a
//!   loop device and the recovery point matches the disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::time::Duration;

const WANTS: &str = "etc/systemd/system/multi-user.target.wants/lifeboat-agent.service";

#[test]
fn the_package_registers_only_with_a_passphrase_and_the_installed_agent_replicates() {
    if !root_or_skip("installing a package in a Debian root (chroot, mounts)") {
        return;
    }
    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    serve_downloads(&cfg, &packages_dir());
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    site.lifeboat_setup(&cfg);

    let mut undo = Undo(vec![]);
    let Some(disk) = loop_device(site.root(), "disk", 64, &mut undo) else { return };
    make_disk(&site.root().join("disk.img"), 64, 14);
    let root = site.root().join("bookworm");
    debian_root("bookworm", MACHINE_PACKAGES, &root);
    bind_system_dirs(&root, &mut undo);

    // The command as `lifeboat install-command` prints it (no passphrase: it would ask).
    let shown = site.lifeboat_json(&["install-command"]);
    let command = shown["install_command"].as_str().unwrap().to_owned();
    let digest = shown["installer_sha256"].as_str().unwrap();
    assert!(
        command.contains(digest) && command.contains(" sudo LIFEBOAT_APPLIANCE=https://127.0.0.1:"),
        "{command}"
    );

    // An installer that is not the one the command names is never run.
    let forged = command.replace(digest, &"0".repeat(64));
    let o = chroot(&root, &forged);
    assert!(!o.status.success(), "a wrong installer digest is refused: {}", text(&o));
    assert!(!root.join("usr/bin/lifeboat-agent").exists(), "nothing installed");

    // The package alone, without a passphrase: installed, configured, not registered, not enabled.
    let deb = std::fs::read_dir(packages_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("_amd64.deb"))
        .unwrap()
        .path();
    std::fs::copy(&deb, root.join("tmp/agent.deb")).unwrap();
    let o = chroot(&root, &format!("LIFEBOAT_DISKS={disk} dpkg -i /tmp/agent.deb"));
    assert!(o.status.success(), "dpkg -i: {}", text(&o));
    assert!(text(&o).contains("installed but not registered, so not started"), "{}", text(&o));
    assert!(root.join("usr/bin/lifeboat-agent").exists());
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/lifeboat-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/lifeboat-agent run"), "{unit}");
    assert!(
        unit.contains("ConditionPathExists=/var/lib/lifeboat-agent/registration.json"),
        "{unit}"
    );
    let conf = std::fs::read_to_string(root.join("etc/lifeboat/agent.toml")).unwrap();
    assert!(conf.contains(&format!("disks = [\"{disk}\"]")), "{conf}");
    assert!(!root.join("var/lib/lifeboat-agent/registration.json").exists());
    assert!(root.join(WANTS).symlink_metadata().is_err(), "an unregistered agent is not enabled");
    let o = chroot(&root, "lifeboat-agent --version");
    assert!(o.status.success() && text(&o).starts_with("lifeboat-agent "), "{}", text(&o));
    let o = chroot(&root, "dpkg --purge lifeboat-agent");
    assert!(o.status.success(), "purge: {}", text(&o));
    assert!(
        !root.join("etc/lifeboat/agent.toml").exists()
            && !root.join("usr/bin/lifeboat-agent").exists()
    );

    // A wrong passphrase: the installer says so and fails; the agent stays disabled.
    let wrong = command.replacen(
        " sudo ",
        &format!(" sudo LIFEBOAT_PASSPHRASE='AAAA-BBBB-CCCC-DDDD-EEEE' LIFEBOAT_DISKS={disk} "),
        1,
    );
    let o = chroot(&root, &wrong);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("installed but not registered"), "{}", text(&o));
    assert!(root.join(WANTS).symlink_metadata().is_err());
    assert!(chroot(&root, "dpkg --purge lifeboat-agent").status.success());

    // The command with a fresh passphrase (as `--with-passphrase` prints it): installed,
    // registered, enabled.
    let shown = site.lifeboat_json(&["install-command", "--with-passphrase"]);
    let command = shown["install_command"].as_str().unwrap();
    assert!(command.contains(" sudo LIFEBOAT_PASSPHRASE='"), "{command}");
    let command = command.replacen(" sudo ", &format!(" sudo LIFEBOAT_DISKS={disk} "), 1);
    let o = chroot(&root, &command);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("done: the agent is installed and registered"), "{}", text(&o));
    assert!(root.join("var/lib/lifeboat-agent/registration.json").exists());
    assert!(root.join(WANTS).symlink_metadata().is_ok(), "a registered agent is enabled");
    let machines = site.lifeboat_json(&["machines"]);
    assert_eq!(machines["machines"].as_array().unwrap().len(), 1, "{machines}");

    // The installed agent replicates the disk (the hash scan: nothing depends on BPF here).
    let conf = root.join("etc/lifeboat/agent.toml");
    let mut c = std::fs::read_to_string(&conf).unwrap();
    c.push_str("tracker = \"hashscan\"\n");
    std::fs::write(&conf, c).unwrap();
    let o = chroot(&root, "lifeboat-agent run --once --config /etc/lifeboat/agent.toml");
    assert!(o.status.success(), "{}", text(&o));
    let want = sha256_file(&site.root().join("disk.img"));
    let (_, id) =
        wait_for(Duration::from_secs(60), "a recovery point", || site.points(&cfg).last().cloned());
    assert_eq!(site.point_checksum(&cfg, &id, 0), want, "the point is the disk");
}
