//! The VMware target plugin, loaded by the real plugin host, against vcsim (govmomi's
//! vSphere simulator, built by scripts/vcsim.sh) over HTTPS with a private CA. Replica
//! I/O goes through `host-disks` to the flat extents of vcsim's datastore folder. Needs
//! `cargo xtask plugins` first (it builds the .wasm).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use lifeboat_plugin_host::config::{AttachedDisksGrant, PluginsConfig};
use lifeboat_plugin_host::contract::{Expect, exercise_target, mixed_data};
use lifeboat_plugin_host::target::{Extent, Firmware, NicSpec, PowerState, VmSpec};
use lifeboat_plugin_host::{CallError, Host, PluginError, TargetInstance};
use lifeboat_plugin_vmware::testkit::{self, Vcsim};
use std::path::{Path, PathBuf};

/// A private plugins directory with the vmware plugin and a grant for one vcsim.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PluginsConfig,
    host: Host,
}

impl Site {
    fn new(v: &Vcsim) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                lifeboat_plugin_host::contract::built_plugins("vmware.wasm")
                    .join(format!("vmware.{ext}")),
                dir.join(format!("vmware.{ext}")),
            )
            .unwrap();
        }
        let m = lifeboat_plugin_host::manifest::Manifest::load(&dir.join("vmware.toml")).unwrap();
        let mut config = PluginsConfig {
            dir: dir.clone(),
            cache_dir: Some(tmp.path().join("cache")),
            trusted_keys: vec![],
            allow_unsigned: false,
            grants: Default::default(),
        };
        let g = config.grants.entry("vmware".into()).or_default();
        g.sha256 = Some(m.sha256.clone());
        g.http_hosts = vec![v.authority()];
        g.tls_roots = vec![v.ca_pem.clone()];
        g.clock = true;
        g.attached_disks = Some(AttachedDisksGrant {
            devices: false,
            datastores: [(testkit::DATASTORE.to_owned(), v.datastore_dir.clone())].into(),
        });
        g.settings = v.settings().into_iter().collect();
        let host = Host::new(lifeboat_plugin_host::keys::KeyRing::new(vec![])).unwrap();
        Site { _tmp: tmp, dir, config, host }
    }

    async fn instance(&self) -> TargetInstance {
        self.instance_with(&[]).await
    }

    async fn instance_with(&self, extra: &[(&str, &str)]) -> TargetInstance {
        let mut cfg = self.config.clone();
        let g = cfg.grants.get_mut("vmware").unwrap();
        for (k, v) in extra {
            g.settings.insert(k.to_string(), v.to_string());
        }
        let p = self.host.load(&self.dir.join("vmware.wasm"), &cfg).unwrap();
        TargetInstance::new(p).await.unwrap()
    }
}

#[track_caller]
fn plugin_err(e: &CallError) -> &PluginError {
    e.plugin_error().unwrap_or_else(|| panic!("expected a plugin error, got {e}"))
}

fn flat(v: &Vcsim, path: &str) -> PathBuf {
    v.datastore_dir.join(path)
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    std::fs::File::open(p).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread")]
async fn vmware_target_keeps_the_target_contract_on_vcsim() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let s = Site::new(&v);
    let mut t = s.instance().await;
    let caps = *t.capabilities().unwrap();
    assert_eq!(
        (caps.alignment, caps.instant_points, caps.instant_materialize),
        (512, false, false)
    );
    let h = t.health().await.unwrap();
    assert!(
        h.contains("LocalDS_0") && h.contains("writable") && h.contains(testkit::APPLIANCE_VM),
        "{h}"
    );
    let expect = Expect {
        clock: true,
        instant_materialize: Some(false),
        location_suffix: Some("[LocalDS_0] lifeboat/disks/m1-d0-tf.vmdk".into()),
    };
    exercise_target(&mut t, &expect).await;

    // The data path: writes landed in place in the replica's flat extent on the datastore,
    // the disk is hot-added to the appliance VM, and no point copy stays attached.
    let extent = flat(&v, "lifeboat/disks/m1-d0-flat.vmdk");
    assert_eq!(std::fs::metadata(&extent).unwrap().len(), 4 << 20);
    assert!(read_at(&extent, 8192, 4096).iter().all(|b| *b == 0xEE));
    let attached = v.appliance_disks();
    assert!(attached.contains(&"[LocalDS_0] lifeboat/disks/m1-d0.vmdk".to_owned()), "{attached:?}");
    assert!(
        !attached.iter().any(|d| d.contains("/points/") || d.contains("m1-d0-tf")),
        "{attached:?}"
    );
    // Deleting the disk detaches it and removes its files.
    t.delete_disk("m1-d0").await.unwrap();
    assert!(!extent.exists());
    assert!(!v.appliance_disks().iter().any(|d| d.contains("lifeboat/")));
    assert!(t.list_disks().await.unwrap().is_empty());
    let e = t.delete_disk("m1-d0").await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    // Identifiers cannot reach other files.
    let e = t.create_disk("../escape", 512).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn disks_grow_points_hold_two_disks_and_a_restarted_instance_finds_its_attached_disks() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let s = Site::new(&v);
    let mut t = s.instance().await;
    let size = 3u64 << 20;
    for d in ["m-d0", "m-d1"] {
        t.create_disk(d, size).await.unwrap();
    }
    let a = mixed_data(1 << 20, 7);
    let b = mixed_data(512 << 10, 8);
    t.write_extents("m-d0", &[Extent { offset: 0, data: a.clone() }], &[]).await.unwrap();
    t.write_extents("m-d1", &[Extent { offset: 1 << 20, data: b.clone() }], &[]).await.unwrap();
    t.create_point("m-p1", "app:1", &["m-d0".into(), "m-d1".into()]).await.unwrap();
    // Repeating with other disks is refused.
    let e = t.create_point("m-p1", "app:1", &["m-d0".into()]).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(_)), "{e}");
    t.write_extents("m-d0", &[Extent { offset: 0, data: vec![1; 4096] }], &[]).await.unwrap();

    // Growing follows the source: the extent grows, the data stays, the end moves.
    t.resize_disk("m-d1", 5 << 20).await.unwrap();
    let e = t.resize_disk("m-d1", 1 << 20).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("shrink")), "{e}");
    t.write_extents("m-d1", &[Extent { offset: (5 << 20) - 512, data: vec![9; 512] }], &[])
        .await
        .unwrap();
    assert_eq!(t.read_extent("m-d1", 1 << 20, b.len() as u32).await.unwrap(), b);

    // vCenter ends the session (it expired, or an administrator ended it): the plugin logs
    // in again and the call succeeds.
    assert!(v.terminate_other_sessions() >= 1, "the plugin's session was there to end");
    assert_eq!(t.read_extent("m-d1", 1 << 20, b.len() as u32).await.unwrap(), b);
    t.list_disks().await.unwrap();

    // A new instance (the appliance restarted) finds the disks attached and keeps using them.
    drop(t);
    let mut t = s.instance().await;
    let sizes: Vec<(String, u64)> =
        t.list_disks().await.unwrap().into_iter().map(|d| (d.id, d.size)).collect();
    assert_eq!(sizes, vec![("m-d0".into(), size), ("m-d1".into(), 5 << 20)]);
    assert_eq!(t.read_extent("m-d1", (5 << 20) - 512, 512).await.unwrap(), vec![9; 512]);
    let before = v.appliance_disks().len();
    t.write_extents("m-d0", &[Extent { offset: 4096, data: vec![2; 512] }], &[]).await.unwrap();
    assert_eq!(v.appliance_disks().len(), before, "no disk attached twice");

    // Another instance (another role) makes a disk anew, bigger: this one's cached size is
    // read again rather than refusing a write past the old end.
    let mut other = s.instance().await;
    other.delete_disk("m-d1").await.unwrap();
    other.create_disk("m-d1", 7 << 20).await.unwrap();
    t.write_extents("m-d1", &[Extent { offset: (7 << 20) - 512, data: vec![6; 512] }], &[])
        .await
        .unwrap();
    assert_eq!(other.read_extent("m-d1", (7 << 20) - 512, 512).await.unwrap(), vec![6; 512]);
    let e = t.read_extent("m-d1", 7 << 20, 512).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("past the end")), "{e}");

    // The point has both disks as they were.
    for (disk, off, want) in [("m-d0", 0u64, &a), ("m-d1", 1 << 20, &b)] {
        let copy = format!("{disk}-fo");
        t.materialize("m-p1", disk, &copy).await.unwrap();
        assert_eq!(&t.read_extent(&copy, off, want.len() as u32).await.unwrap(), want);
        // Materialising again replaces the copy.
        t.write_extents(&copy, &[Extent { offset: off, data: vec![3; 512] }], &[]).await.unwrap();
        t.materialize("m-p1", disk, &copy).await.unwrap();
        assert_eq!(&t.read_extent(&copy, off, 512).await.unwrap()[..], &want[..512]);
    }
    let e = t.materialize("m-p1", "m-d9", "x").await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    let e = t.materialize("nope", "m-d0", "x").await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    t.delete_point("m-p1").await.unwrap();
    assert!(!flat(&v, "lifeboat/points/m-p1").exists());
    let e = t.delete_point("m-p1").await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
}

fn spec(name: &str, disks: &[&str], isolated: bool) -> VmSpec {
    VmSpec {
        name: name.into(),
        firmware: Firmware::Uefi,
        cpus: 2,
        memory_mib: 3072,
        disks: disks.iter().map(|d| (*d).to_owned()).collect(),
        nics: vec![
            NicSpec {
                network: testkit::NETWORK.into(),
                mac: Some("00:50:56:01:02:03".into()),
                ip: None,
            },
            NicSpec { network: "DC0_DVPG0".into(), mac: None, ip: Some("192.0.2.7/24".into()) },
        ],
        isolated,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_are_made_from_the_spec_test_failover_is_isolated_and_deleting_keeps_the_disks() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let s = Site::new(&v);
    let mut t = s.instance().await;
    for d in ["fo-d0", "fo-d1"] {
        t.create_disk(d, 2 << 20).await.unwrap();
    }
    let id = t.create_vm(&spec("fo-m1", &["fo-d0", "fo-d1"], false)).await.unwrap();
    assert_eq!(t.vm_state(&id).await.unwrap(), PowerState::Running);
    let vm = v.vm(&id).expect("the VM exists in vSphere");
    assert_eq!(
        (vm.name.as_str(), vm.firmware.as_str(), vm.cpus, vm.memory_mb),
        ("fo-m1", "efi", 2, 3072)
    );
    assert_eq!(vm.power, "poweredOn");
    assert_eq!(
        vm.disks,
        vec!["[LocalDS_0] lifeboat/disks/fo-d0.vmdk", "[LocalDS_0] lifeboat/disks/fo-d1.vmdk"],
        "boot disk first"
    );
    assert_eq!(vm.nics.len(), 2);
    assert_eq!(vm.nics[0], (testkit::NETWORK.to_owned(), "00:50:56:01:02:03".to_owned()));
    assert_eq!(vm.nics[1].0, v.portgroup_key("DC0_DVPG0"));
    assert!(!vm.nics[1].1.is_empty(), "a generated MAC");
    // Its disks left the appliance VM.
    assert!(!v.appliance_disks().iter().any(|d| d.contains("fo-d")));
    // Creating it again (a repeated call after a crash) finds it.
    assert_eq!(t.create_vm(&spec("fo-m1", &["fo-d0", "fo-d1"], false)).await.unwrap(), id);
    // Another VM of that name (other disks) is not taken for ours, nor powered on.
    v.power_off(&id);
    let e = t.create_vm(&spec("fo-m1", &["fo-d1"], false)).await.unwrap_err();
    assert!(
        matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("already") && m.contains("fo-d0")),
        "{e}"
    );
    assert_eq!(v.vm(&id).unwrap().power, "poweredOff", "the other VM was left alone");
    t.create_vm(&spec("fo-m1", &["fo-d0", "fo-d1"], false)).await.unwrap();

    // Test failover: every NIC on the isolated network.
    t.create_disk("tf-d0", 1 << 20).await.unwrap();
    let tf = t.create_vm(&spec("tf-m1", &["tf-d0"], true)).await.unwrap();
    let isolated = v.portgroup_key(testkit::TEST_NETWORK);
    let tf_vm = v.vm(&tf).unwrap();
    assert!(tf_vm.nics.iter().all(|(n, _)| *n == isolated), "{:?}", tf_vm.nics);
    assert_eq!(tf_vm.firmware, "efi");

    // Deleting a VM keeps its disks (failback reads them), and the disks can be written
    // again through the appliance.
    t.delete_vm(&id).await.unwrap();
    assert!(v.vm(&id).is_none());
    let e = t.vm_state(&id).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    let e = t.delete_vm(&id).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(_)), "{e}");
    assert!(flat(&v, "lifeboat/disks/fo-d0-flat.vmdk").exists());
    t.write_extents("fo-d0", &[Extent { offset: 0, data: vec![4; 512] }], &[]).await.unwrap();
    assert_eq!(t.read_extent("fo-d0", 0, 512).await.unwrap(), vec![4; 512]);
    t.delete_vm(&tf).await.unwrap();

    // A BIOS VM.
    let bios = t
        .create_vm(&VmSpec { firmware: Firmware::Bios, ..spec("fo-m2", &["fo-d1"], false) })
        .await
        .unwrap();
    assert_eq!(v.vm(&bios).unwrap().firmware, "bios");
    // Bad specs are refused with the plugin's words.
    let e = t.create_vm(&spec("fo-m3", &["nope"], false)).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(m) if m.contains("nope")), "{e}");
    let mut bad = spec("fo-m4", &["fo-d0"], false);
    bad.nics[0].network = "no-such-net".into();
    let e = t.create_vm(&bad).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(m) if m.contains("no-such-net")), "{e}");
    let mut no_test_net = s.instance_with(&[("test_network", "")]).await;
    let e = no_test_net.create_vm(&spec("tf-m2", &["fo-d0"], true)).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("test_network")), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vsphere_errors_reach_the_administrator_in_the_plugins_words() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let s = Site::new(&v);
    // Wrong password.
    let mut t = s.instance_with(&[("password", "wrong")]).await;
    let e = t.health().await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Denied(m) if m.contains("password")), "{e}");
    assert!(t.create_disk("d", 1 << 20).await.is_err());
    // A datastore, datacenter or appliance VM that is not there.
    for (k, val, names) in [
        ("datastore", "NoSuchDS", "datastore"),
        ("datacenter", "DC9", "datacenter"),
        ("appliance_vm", "ghost", "appliance_vm"),
    ] {
        let mut t = s.instance_with(&[(k, val)]).await;
        let e = t.create_disk("d", 1 << 20).await.unwrap_err();
        assert!(
            matches!(plugin_err(&e), PluginError::NotFound(m) if m.contains(names)),
            "{k}: {e}"
        );
    }
    // A datastore the grant does not give host-disks access to.
    let mut cfg = s.config.clone();
    cfg.grants.get_mut("vmware").unwrap().attached_disks =
        Some(AttachedDisksGrant { devices: false, datastores: Default::default() });
    let p = s.host.load(&s.dir.join("vmware.wasm"), &cfg).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    let e = t.create_disk("d", 1 << 20).await.unwrap_err();
    assert!(
        matches!(plugin_err(&e), PluginError::Denied(m) if m.contains("attached_disks")),
        "{e}"
    );
    // Without attached_disks granted at all, the plugin is refused at load.
    let mut cfg = s.config.clone();
    cfg.grants.get_mut("vmware").unwrap().attached_disks = None;
    let err = s.host.load(&s.dir.join("vmware.wasm"), &cfg).unwrap_err().to_string();
    assert!(err.contains("attached_disks"), "{err}");
    // vCenter not reachable (granted, nothing listening).
    let dead = format!("https://127.0.0.1:{}/sdk", free_port());
    let mut cfg = s.config.clone();
    let g = cfg.grants.get_mut("vmware").unwrap();
    g.http_hosts.push(dead.trim_start_matches("https://").trim_end_matches("/sdk").to_owned());
    g.settings.insert("url".into(), dead);
    let p = s.host.load(&s.dir.join("vmware.wasm"), &cfg).unwrap();
    let mut t = TargetInstance::new(p).await.unwrap();
    let e = t.health().await.unwrap_err();
    assert!(
        matches!(plugin_err(&e), PluginError::Retryable(m) if m.contains("cannot reach")),
        "{e}"
    );
    // An authority that is not granted.
    let mut t = s.instance_with(&[("url", "https://127.0.0.2:9/sdk")]).await;
    let e = t.health().await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Denied(m) if m.contains("http_hosts")), "{e}");
    // A VM with no disks is refused before vSphere is asked. (vcsim accepts what vCenter's
    // tasks refuse, so task faults are checked on vCenter's XML in the unit tests:
    // `task_errors_become_the_plugins_errors`.)
    let mut t = s.instance().await;
    let e = t.create_vm(&spec("fo-x", &[], false)).await.unwrap_err();
    assert!(
        matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("at least one disk")),
        "{e}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The datastore full: vcsim's datastore folder on a 16 MiB tmpfs. A write that does not
/// fit fails `retryable` saying the datastore is full; nothing written before is lost, and
/// once space is freed the same write succeeds. Needs root (mount); skipped otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_datastore_is_retryable_and_loses_nothing() {
    if !rustix_is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.path().to_owned());
    let v = Vcsim::start("lifeboat", "s3cret", Some(mnt.path()));
    let s = Site::new(&v);
    let mut t = s.instance().await;
    t.create_disk("big-d0", 64 << 20).await.unwrap();
    let first = mixed_data(4 << 20, 9);
    t.write_extents("big-d0", &[Extent { offset: 0, data: first.clone() }], &[]).await.unwrap();
    t.flush_disk("big-d0").await.unwrap();
    // 16 MiB more cannot fit in what is left of 16 MiB.
    let e = t
        .write_extents("big-d0", &[Extent { offset: 8 << 20, data: vec![0x5a; 16 << 20] }], &[])
        .await
        .unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Retryable(m) if m.contains("full")), "{e}");
    assert_eq!(t.read_extent("big-d0", 0, first.len() as u32).await.unwrap(), first);
    // A log that does not fit either.
    let e = t.put_log("big-d0.0000000001", &vec![7; 32 << 20]).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Retryable(_)), "{e}");
    // Space freed (the administrator grows the datastore): the same write succeeds.
    let ok = std::process::Command::new("mount")
        .args(["-o", "remount,size=96m"])
        .arg(mnt.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    t.write_extents("big-d0", &[Extent { offset: 8 << 20, data: vec![0x5a; 16 << 20] }], &[])
        .await
        .unwrap();
    assert_eq!(t.read_extent("big-d0", 0, first.len() as u32).await.unwrap(), first);
    assert!(t.read_extent("big-d0", 8 << 20, 4096).await.unwrap().iter().all(|b| *b == 0x5a));
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Failback into a machine's original VM: an existing VM (made here by another instance, on
/// disks this instance knows under other ids), powered off, has its disks adopted, written
/// and read through the appliance, and is started by `create-vm` with its name. Running,
/// missing, and a wrong disk count are refused; deleting an adopted disk forgets it and
/// keeps the VM's file.
#[tokio::test(flavor = "multi_thread")]
async fn an_existing_vms_disks_are_adopted_written_and_the_vm_started() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let s = Site::new(&v);
    let mut t = s.instance().await;
    t.create_disk("user-d0", 2 << 20).await.unwrap();
    let id = t.create_vm(&spec("user-vm", &["user-d0"], false)).await.unwrap();
    let file = "[LocalDS_0] lifeboat/disks/user-d0.vmdk".to_owned();
    let rel = "lifeboat/disks/user-d0-flat.vmdk";
    let ids = vec!["orig-d0".to_owned()];

    // Running: refused, nothing adopted.
    let e = t.adopt_vm_disks("user-vm", &ids).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("power it off")), "{e}");
    assert!(t.read_extent("orig-d0", 0, 512).await.is_err());
    v.power_off(&id);
    let e = t.adopt_vm_disks("no-such-vm", &ids).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::NotFound(m) if m.contains("no-such-vm")), "{e}");
    let two = vec!["orig-d0".to_owned(), "orig-d1".to_owned()];
    let e = t.adopt_vm_disks("user-vm", &two).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("has 1 disks")), "{e}");

    // Adopted (by a fresh instance, as the master target would be): written and read like
    // a replica, in the VM's own file.
    let mut t = s.instance().await;
    assert_eq!(t.adopt_vm_disks("user-vm", &ids).await.unwrap(), vec![2 << 20]);
    let data = mixed_data(1 << 20, 5);
    t.write_extents("orig-d0", &[Extent { offset: 0, data: data.clone() }], &[]).await.unwrap();
    t.flush_disk("orig-d0").await.unwrap();
    assert_eq!(t.read_extent("orig-d0", 0, 1 << 20).await.unwrap(), data);
    assert_eq!(read_at(&flat(&v, rel), 0, 1 << 20), data, "written in the VM's own file");
    assert!(v.appliance_disks().contains(&file), "attached to the appliance while written");
    // Adopting again (a repeated call) is fine; an id naming another VMDK is not taken over.
    t.adopt_vm_disks("user-vm", &ids).await.unwrap();
    t.create_disk("taken", 1 << 20).await.unwrap();
    let e = t.adopt_vm_disks("user-vm", &["taken".to_owned()]).await.unwrap_err();
    assert!(matches!(plugin_err(&e), PluginError::Invalid(m) if m.contains("names")), "{e}");

    // create-vm with its name and disks starts it, its disk off the appliance first.
    assert_eq!(t.create_vm(&spec("user-vm", &["orig-d0"], false)).await.unwrap(), id);
    let after = v.vm(&id).unwrap();
    assert_eq!((after.power.as_str(), after.disks.clone()), ("poweredOn", vec![file.clone()]));
    assert!(!v.appliance_disks().contains(&file));
    // Forgetting an adopted disk keeps the VM's file.
    t.delete_disk("orig-d0").await.unwrap();
    assert!(flat(&v, rel).exists(), "the VM's disk stays");
    assert!(t.read_extent("orig-d0", 0, 512).await.is_err());
}
