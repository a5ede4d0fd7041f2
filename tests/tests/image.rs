//! The appliance image (`cargo xtask image`, run by `cargo xtask test` as root) booted under
//! qemu (TCG here), port-forwarded to 127.0.0.1:
//! - with BIOS: the console shows the wizard's address, the CA fingerprint and the setup
//!   token; the appliance is claimed with that token; an agent on this host registers and
//!   replicates a disk to the local target on the data disk (formatted at first boot); the
//!   VM is shut down and started again; the administrator, the machine and its points are
//!   still there and replication goes on;
//! - with UEFI (OVMF): the same image boots to the wizard answering on 443;
//! - the OVA holds the descriptor first, its manifest's digests match, and the descriptor
//!   names the files, disks, CPUs, memory and a VMXNET3 adapter consistently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn image_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("images/out")
}

fn image(ext: &str) -> PathBuf {
    image_dir().join(format!("lifeboat-appliance-{}.{ext}", env!("CARGO_PKG_VERSION")))
}

/// Whether the image exists (`cargo xtask test` builds it as root); says why not.
fn built() -> bool {
    if !root_or_skip("booting the appliance image") {
        return false;
    }
    assert!(image("raw").exists(), "{} missing: run `cargo xtask image`", image("raw").display());
    true
}

/// One appliance VM.
struct Vm {
    child: Child,
    serial: PathBuf,
    monitor: PathBuf,
}

impl Vm {
    /// Boots `os` (a qcow2 overlay) with `data` as the second disk.
    fn start(dir: &Path, run: &str, os: &Path, data: &Path, uefi: bool, https: u16, ps: u16) -> Vm {
        let serial = dir.join(format!("serial-{run}.log"));
        let monitor = dir.join(format!("monitor-{run}.sock"));
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-m", "2048", "-smp", "2", "-display", "none", "-no-user-config"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", os.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", data.display()))
            .args(["-netdev"])
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{https}-:443,hostfwd=tcp:127.0.0.1:{ps}-:9443"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"]);
        if uefi {
            let vars = dir.join("OVMF_VARS.fd");
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("OVMF (cargo xtask test installs ovmf)");
            }
            c.arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        let child =
            c.stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("qemu-system-x86_64");
        Vm { child, serial, monitor }
    }

    /// Waits until the serial console shows the appliance's note (its last line is
    /// `Setup token: …` or `Set up: …`); returns the console's text.
    fn wait_note(&mut self, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if text.contains("  Setup token:") || text.contains("  Set up: log in") {
                eprintln!("the console note after {:.0} s", started.elapsed().as_secs_f64());
                return text;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("qemu exited ({status}) before the note; console:\n{}", tail(&text));
            }
            assert!(
                started.elapsed() < limit,
                "no console note in {limit:?}; console:\n{}",
                tail(&text)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// ACPI power button, then waits for the VM to power off.
    fn power_down(&mut self, limit: Duration) {
        let mut m = std::os::unix::net::UnixStream::connect(&self.monitor).unwrap();
        m.write_all(b"system_powerdown\n").unwrap();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < limit, "the VM did not power off in {limit:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The value after `label` on a line of the console note.
fn note_value(text: &str, label: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in the console note:\n{}", tail(text)))
}

/// A qcow2 overlay over the raw image and an empty data disk.
fn disks(dir: &Path) -> (PathBuf, PathBuf) {
    let os = dir.join("os.qcow2");
    let data = dir.join("data.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            image("raw").to_str().unwrap(),
            "-F",
            "raw",
            os.to_str().unwrap(),
        ],
    )
    .unwrap();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "8G"]).unwrap();
    (os, data)
}

fn lifeboat_ok(site: &Site, args: &[&str], password: Option<&str>) -> String {
    let o = site.lifeboat(args, password);
    assert!(o.status.success(), "lifeboat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_image_boots_with_bios_is_claimed_replicates_and_keeps_everything_across_a_reboot() {
    if !built() {
        return;
    }
    let site = Site::new();
    let dir = site.root().to_owned();
    let (os, data) = disks(&dir);
    let (https, ps) = (free_port(), free_port());
    let mut vm = Vm::start(&dir, "1", &os, &data, false, https, ps);
    let note = vm.wait_note(Duration::from_secs(300));
    let token = note_value(&note, "Setup token:");
    let fingerprint = note_value(&note, "CA fingerprint:");
    assert!(note.contains("Setup wizard:   https://10.0.2.15/"), "{}", tail(&note));
    assert!(
        note.contains("lifeboat-data: formatting /dev/vdb"),
        "the data disk is formatted at first boot"
    );
    let url = format!("https://127.0.0.1:{https}");

    // Claimed with the token from the console; agents are told the forwarded port.
    let password = "correct horse battery";
    lifeboat_ok(
        &site,
        &[
            "setup",
            "--url",
            &url,
            "--fingerprint",
            &fingerprint,
            "--name",
            "admin",
            "--setup-token",
            &token,
        ],
        Some(password),
    );
    lifeboat_ok(&site, &["appliance", "--agent-url", &format!("https://127.0.0.1:{ps}")], None);
    // The agent's package is served by the image.
    let v = site.lifeboat_json(&["install-command", "--origin", "https://10.0.2.15"]);
    let files = v["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f["name"].as_str().unwrap().starts_with("lifeboat-agent_")),
        "{v}"
    );

    // An agent on this host registers and replicates a disk.
    let passphrase =
        site.lifeboat_json(&["passphrase", "rotate"])["passphrase"].as_str().unwrap().to_owned();
    let state = dir.join("agent-state");
    let st = Command::new(site.bin.join("lifeboat-agent"))
        .args([
            "register",
            "--appliance",
            &url,
            "--fingerprint",
            &fingerprint,
            "--passphrase",
            &passphrase,
        ])
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success(), "registration with the booted appliance");
    let machine = Site::machine_id(&state);
    let disk = dir.join("disk.img");
    make_disk(&disk, 64, 21);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 2);
    site.agent_once(&agent_cfg);
    let points =
        |site: &Site| site.lifeboat_json(&["points", &machine])["points"].as_array().unwrap().len();
    wait_for(Duration::from_secs(120), "a recovery point", || (points(&site) >= 1).then_some(()));
    let before = points(&site);

    // Shut down and started again with the same disks: everything is still there.
    vm.power_down(Duration::from_secs(120));
    drop(vm);
    let mut vm = Vm::start(&dir, "2", &os, &data, false, https, ps);
    let note = vm.wait_note(Duration::from_secs(300));
    assert!(note.contains("Set up: log in"), "no setup token once an administrator exists");
    assert!(note.contains(&fingerprint), "the same CA after the reboot");
    assert!(!note.contains("formatting"), "the data disk is not formatted again");
    assert_eq!(points(&site), before, "the points survived the reboot");
    // Replication goes on.
    random_writes(&disk, 200, 5);
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(120), "a point after the reboot", || {
        (points(&site) > before).then_some(())
    });
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["id"].as_str(), Some(machine.as_str()), "{v}");
    vm.power_down(Duration::from_secs(120));
}

#[test]
fn the_image_boots_with_uefi_to_the_wizard() {
    if !built() {
        return;
    }
    let site = Site::new();
    let dir = site.root().to_owned();
    let (os, data) = disks(&dir);
    let (https, ps) = (free_port(), free_port());
    let mut vm = Vm::start(&dir, "uefi", &os, &data, true, https, ps);
    let note = vm.wait_note(Duration::from_secs(300));
    let text = std::fs::read_to_string(&vm.serial).unwrap();
    assert!(text.contains("BdsDxe") || text.contains("EFI stub"), "booted by the UEFI firmware");
    assert!(!note_value(&note, "Setup token:").is_empty());
    // The wizard's page answers on 443 (the appliance's own CA: checked by digest elsewhere).
    let page = sh("curl", &["-fsSk", &format!("https://127.0.0.1:{https}/")]).unwrap();
    assert!(page.contains("<title>") && page.contains("/assets/"), "{page}");
    vm.power_down(Duration::from_secs(120));
}

#[test]
fn the_ova_has_the_descriptor_first_and_its_manifest_matches() {
    if !built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let list = sh("tar", &["-tf", image("ova").to_str().unwrap()]).unwrap();
    let names: Vec<&str> = list.lines().collect();
    let base = format!("lifeboat-appliance-{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        names,
        [
            format!("{base}.ovf"),
            format!("{base}.mf"),
            format!("{base}-disk1.vmdk"),
            format!("{base}-data.vmdk")
        ]
    );
    sh("tar", &["-xf", image("ova").to_str().unwrap(), "-C", dir.path().to_str().unwrap()])
        .unwrap();
    let mf = std::fs::read_to_string(dir.path().join(format!("{base}.mf"))).unwrap();
    for line in mf.lines() {
        let (name, digest) =
            line.strip_prefix("SHA256(").and_then(|l| l.split_once(")= ")).unwrap();
        assert_eq!(sha256_file(&dir.path().join(name)), digest, "{name}");
    }
    assert_eq!(mf.lines().count(), 3);
    let ovf_path = dir.path().join(format!("{base}.ovf"));
    sh("xmllint", &["--noout", ovf_path.to_str().unwrap()]).expect("well-formed XML");
    let ovf = std::fs::read_to_string(&ovf_path).unwrap();
    let doc = roxmltree::Document::parse(&ovf).unwrap();
    const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
    const RASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    let root = doc.root_element();
    assert_eq!((root.tag_name().namespace(), root.tag_name().name()), (Some(OVF), "Envelope"));
    // Every file named is in the archive with its size; every disk names a file.
    let files: Vec<_> = root.descendants().filter(|n| n.has_tag_name((OVF, "File"))).collect();
    assert_eq!(files.len(), 2);
    for f in &files {
        let href = f.attribute((OVF, "href")).unwrap();
        let size: u64 = f.attribute((OVF, "size")).unwrap().parse().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(href)).unwrap().len(), size, "{href}");
    }
    let ids: Vec<_> = files.iter().map(|f| f.attribute((OVF, "id")).unwrap()).collect();
    for d in root.descendants().filter(|n| n.has_tag_name((OVF, "Disk"))) {
        assert!(ids.contains(&d.attribute((OVF, "fileRef")).unwrap()));
        assert!(d.attribute((OVF, "format")).unwrap().ends_with("#streamOptimized"));
    }
    // Hardware: CPUs, memory, the disks on the controller, one VMXNET3 adapter; RASD
    // elements in their schema's (alphabetical) order.
    let items: Vec<_> = root.descendants().filter(|n| n.has_tag_name((OVF, "Item"))).collect();
    let value = |item: &roxmltree::Node, name: &str| {
        item.children()
            .find(|c| c.has_tag_name((RASD, name)))
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    let of_type =
        |t: &str| items.iter().filter(|i| value(i, "ResourceType").as_deref() == Some(t)).count();
    assert_eq!(
        (of_type("3"), of_type("4"), of_type("6"), of_type("17"), of_type("10")),
        (1, 1, 1, 2, 1)
    );
    assert!(items.iter().any(|i| value(i, "ResourceSubType").as_deref() == Some("VmxNet3")));
    for i in &items {
        let order: Vec<&str> =
            i.children().filter(|c| c.is_element()).map(|c| c.tag_name().name()).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "RASD elements in schema order");
    }
    for section in [
        "ProductSection",
        "OperatingSystemSection",
        "VirtualHardwareSection",
        "DiskSection",
        "NetworkSection",
    ] {
        assert!(root.descendants().any(|n| n.has_tag_name((OVF, section))), "{section}");
    }
    let ova_bytes = image("ova").metadata().unwrap().len();
    assert!(ova_bytes <= 629_145_600, "the OVA is {ova_bytes} bytes, over 600 MiB");
}
