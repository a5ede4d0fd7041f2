//! Push install (`lifeboat machines install --ssh`) against a real OpenSSH server (Debian's
//! openssh-server) running in a Debian 12 root in a network namespace of the test's own,
//! reached over a veth pair; the appliance listens on the host side of it:
//! - every refusal is produced and reported as the job's failure: an unconfirmed host key
//!   (named, so it can be confirmed), a mismatched one, wrong credentials, a user who is not
//!   root and may not sudo, an unsupported distribution, no systemd, a disk not found;
//! - with the host key confirmed and a sudo user's password: the package is copied,
//!   installed and registered with a fresh passphrase, the agent is enabled, and it (run in
//!   the root, in the namespace) replicates a loop device; the point matches the disk;
//! - credentials kept on request are sealed at rest and used by a later install.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const HOST_IP: &str = "10.77.0.1";
const NS_IP: &str = "10.77.0.2";

/// [`lifeboat_e2e::chroot`], which must succeed.
fn chroot_ok(root: &Path, script: &str) -> Output {
    let o = chroot(root, script);
    assert!(o.status.success(), "{script}: {}", text(&o));
    o
}

struct Sshd(Child);
impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lifeboat machines install …` with `password` on stdin (when given); its output.
fn push(site: &Site, args: &[&str], password: Option<&str>) -> Output {
    let mut c = Command::new(site.bin.join("lifeboat"));
    c.arg("--session")
        .arg(site.root().join("session.json"))
        .args(["machines", "install"])
        .args(args);
    if password.is_some() {
        c.arg("--password-stdin");
    }
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(p) = password {
        writeln!(stdin, "{p}").unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn refused(o: &Output, code: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected {code}, it succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(code), "expected {code}: {err}");
    err
}

#[test]
fn push_install_reports_every_refusal_then_installs_registers_and_replicates() {
    if !root_or_skip("network namespaces, chroot and sshd") {
        return;
    }
    let mut undo = Undo(vec![]);
    // The machine's network: a namespace and a veth pair.
    let tag = std::process::id() % 100_000;
    let ns = format!("lbpush{tag}");
    let (veth_h, veth_n) = (format!("lbh{tag}"), format!("lbn{tag}"));
    sh("ip", &["netns", "add", &ns]).unwrap();
    undo.0.push(("ip".into(), vec!["netns".into(), "delete".into(), ns.clone()]));
    sh("ip", &["link", "add", &veth_h, "type", "veth", "peer", "name", &veth_n]).unwrap();
    undo.0.push(("ip".into(), vec!["link".into(), "delete".into(), veth_h.clone()]));
    sh("ip", &["link", "set", &veth_n, "netns", &ns]).unwrap();
    sh("ip", &["addr", "add", &format!("{HOST_IP}/24"), "dev", &veth_h]).unwrap();
    sh("ip", &["link", "set", &veth_h, "up"]).unwrap();
    for args in [
        vec!["addr", "add", &format!("{NS_IP}/24") as &str, "dev", &veth_n],
        vec!["link", "set", &veth_n, "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut full = vec!["netns", "exec", &ns, "ip"];
        full.extend(args);
        sh("ip", &full).unwrap();
    }

    // The appliance, on the host side of the veth.
    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("listen = \"127.0.0.1:", &format!("listen = \"{HOST_IP}:"))
        .replacen(
            "[config_server]\n",
            &format!("[config_server]\nserver_names = [\"{HOST_IP}\"]\n"),
            1,
        );
    std::fs::write(&cfg, text).unwrap();
    serve_downloads(&cfg, &packages_dir());
    let _appliance = site.start("appliance", &cfg);
    for port in [site.config_port, site.ps_port] {
        wait_for(Duration::from_secs(60), "the appliance", || {
            std::net::TcpStream::connect((HOST_IP, port)).ok()
        });
    }
    let url = format!("https://{HOST_IP}:{}", site.config_port);
    let fp = site.cli(&cfg, &["fingerprint"]).trim().to_owned();
    let token = site.cli(&cfg, &["setup-token"]).trim().to_owned();
    let o = site.lifeboat(
        &["setup", "--url", &url, "--fingerprint", &fp, "--name", "admin", "--setup-token", &token],
        Some("correct horse battery"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = site.lifeboat(
        &["appliance", "--agent-url", &format!("https://{HOST_IP}:{}", site.ps_port)],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The machine: a Debian root with OpenSSH, sudo and systemd; alice may sudo, bob may not.
    let root = site.root().join("machine");
    debian_root("bookworm", MACHINE_PACKAGES, &root);
    bind_system_dirs(&root, &mut undo);
    chroot_ok(
        &root,
        "useradd -m -s /bin/sh -G sudo alice && useradd -m -s /bin/sh bob && \
         echo 'alice:alice-pw' | chpasswd && echo 'bob:bob-pw' | chpasswd && \
         rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && mkdir -p /run/sshd",
    );
    let Some(disk) = loop_device(site.root(), "disk", 32, &mut undo) else { return };
    make_disk(&site.root().join("disk.img"), 32, 3);
    let sshd = Command::new("ip")
        .args(["netns", "exec", &ns, "chroot"])
        .arg(&root)
        .args([
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-o",
            &format!("ListenAddress={NS_IP}"),
            "-o",
            "PasswordAuthentication=yes",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(site.root().join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let _sshd = Sshd(sshd);
    wait_for(Duration::from_secs(30), "sshd", || std::net::TcpStream::connect((NS_IP, 22)).ok());
    let ed25519 = chroot_ok(&root, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout;
    let ed25519 = String::from_utf8(ed25519).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    let host_keys: Vec<String> = ["rsa", "ecdsa", "ed25519"]
        .iter()
        .map(|k| {
            let o =
                chroot_ok(&root, &format!("ssh-keygen -lf /etc/ssh/ssh_host_{k}_key.pub")).stdout;
            String::from_utf8(o).unwrap().split_whitespace().nth(1).unwrap().to_owned()
        })
        .collect();
    let alice = format!("alice@{NS_IP}");
    let disk_arg = ["--disk", disk.as_str()];

    // 1. No host key given: refused, naming the key the host presents.
    let err = refused(&push(&site, &["--ssh", &alice], Some("alice-pw")), "host_key_unconfirmed");
    let presented = host_keys
        .iter()
        .find(|k| err.contains(k.as_str()))
        .expect("the presented key is named")
        .clone();
    assert!(host_keys.contains(&ed25519));
    // 2. Another key than the host's.
    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    refused(
        &push(&site, &["--ssh", &alice, "--host-key", other], Some("alice-pw")),
        "host_key_mismatch",
    );
    let key = ["--host-key", presented.as_str()];
    // 3. Wrong password.
    refused(&push(&site, &["--ssh", &alice, key[0], key[1]], Some("wrong")), "wrong_credentials");
    // 4. Not root, no sudo.
    refused(
        &push(&site, &["--ssh", &format!("bob@{NS_IP}"), key[0], key[1]], Some("bob-pw")),
        "no_root",
    );
    // 5. A disk the machine does not have.
    refused(
        &push(
            &site,
            &["--ssh", &alice, key[0], key[1], "--disk", "/dev/no-such-disk"],
            Some("alice-pw"),
        ),
        "disk_not_found",
    );
    // 6. Not a Debian-like system (its os-release says Fedora).
    let os_release = root.join("usr/lib/os-release");
    let saved = std::fs::read_to_string(&os_release).unwrap();
    std::fs::write(
        &os_release,
        "NAME=\"Fedora Linux\"\nID=fedora\nPRETTY_NAME=\"Fedora Linux 41\"\n",
    )
    .unwrap();
    refused(
        &push(&site, &["--ssh", &alice, key[0], key[1]], Some("alice-pw")),
        "unsupported_distribution",
    );
    std::fs::write(&os_release, saved).unwrap();
    // 7. No systemd (neither running nor installed: systemctl is gone).
    let systemctl = root.join("usr/bin/systemctl");
    std::fs::rename(&systemctl, root.join("usr/bin/systemctl.away")).unwrap();
    refused(&push(&site, &["--ssh", &alice, key[0], key[1]], Some("alice-pw")), "no_systemd");
    std::fs::rename(root.join("usr/bin/systemctl.away"), &systemctl).unwrap();
    assert!(
        !root.join("usr/bin/lifeboat-agent").exists(),
        "nothing was installed by a refused job"
    );

    // 8. Installed, registered, enabled, credentials kept.
    let mut args = vec!["--ssh", &alice, key[0], key[1], "--keep-credentials", "--json"];
    args.extend(disk_arg);
    let o = push(&site, &args, Some("alice-pw"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let machine = job["result"]["machine_id"].as_str().unwrap().to_owned();
    let steps = job["result"]["steps"].to_string();
    for s in [
        "is the one confirmed",
        "logged in as alice",
        "becomes root with sudo",
        "Debian GNU/Linux 12",
        "SHA-256 checked",
        "registered as machine",
    ] {
        assert!(steps.contains(s), "step {s:?} reported: {steps}");
    }
    assert!(
        root.join("etc/systemd/system/multi-user.target.wants/lifeboat-agent.service")
            .symlink_metadata()
            .is_ok()
    );
    let conf = std::fs::read_to_string(root.join("etc/lifeboat/agent.toml")).unwrap();
    assert!(conf.contains(&format!("disks = [\"{disk}\"]")), "{conf}");
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["id"].as_str(), Some(machine.as_str()), "{v}");
    // The password is kept sealed, not in clear, in the state.
    for f in std::fs::read_dir(site.root().join("state")).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("state.db") {
            let bytes = std::fs::read(f.path()).unwrap();
            assert!(!bytes.windows(8).any(|w| w == b"alice-pw"), "the password is sealed at rest");
        }
    }

    // The installed agent, on the machine, replicates the disk.
    let mut c = std::fs::read_to_string(root.join("etc/lifeboat/agent.toml")).unwrap();
    c.push_str("tracker = \"hashscan\"\n");
    std::fs::write(root.join("etc/lifeboat/agent.toml"), c).unwrap();
    let st = Command::new("ip")
        .args(["netns", "exec", &ns, "chroot"])
        .arg(&root)
        .args(["lifeboat-agent", "run", "--once", "--config", "/etc/lifeboat/agent.toml"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .status()
        .unwrap();
    assert!(st.success(), "the pushed agent replicates");
    let want = sha256_file(&site.root().join("disk.img"));
    let (_, id) =
        wait_for(Duration::from_secs(60), "a point", || site.points(&cfg).last().cloned());
    assert_eq!(site.point_checksum(&cfg, &id, 0), want);

    // 9. Again, with the kept credentials (no password given): an upgrade in place, the
    // registration kept.
    let o = push(&site, &["--ssh", &alice, key[0], key[1], "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        job["result"]["machine_id"].as_str(),
        Some(machine.as_str()),
        "the same registration"
    );
}
