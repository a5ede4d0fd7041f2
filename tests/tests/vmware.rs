//! The VMware target end to end: one appliance (every role) whose target is the `vmware`
//! plugin against vcsim (govmomi's vSphere simulator, scripts/vcsim.sh) over HTTPS with a
//! private CA. Replica disks are VMDKs on vcsim's datastore, hot-added to the "appliance
//! VM" and written in place through `host-disks` (here: the flat extents in the datastore's
//! folder). A two-disk machine is protected; points; the flat extents equal the source
//! (`qemu-img compare`); a test failover makes a VM with the spec on the isolated network
//! and its cleanup removes it; failover and commit; reprotect and failback into the
//! original disks, then forward replication again without a full copy. A wrong password
//! stops nothing from being kept: once corrected, every acknowledged write arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::path::PathBuf;
use std::time::Duration;

/// The flat extent, in vcsim's datastore folder, of a disk at datastore path `location`
/// (`[LocalDS_0] lifeboat/disks/x.vmdk`).
fn flat(v: &Vcsim, location: &str) -> PathBuf {
    let rel = location.strip_prefix("[LocalDS_0] ").unwrap_or(location);
    v.datastore_dir.join(rel.replace(".vmdk", "-flat.vmdk"))
}

fn result_disks(v: &serde_json::Value) -> Vec<String> {
    v["result"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["location"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_two_disk_machine_protected_into_vmware_fails_over_and_back() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let site = Site::new();
    let cfg = site.target_config("vmware", Roles::ALL, "state", "vmware", &vmware_grant(&v, &[]));
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);

    let d0 = site.root().join("disk0.img");
    let d1 = site.root().join("disk1.img");
    make_disk(&d0, 16, 1);
    make_disk(&d1, 8, 2);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, &[d0.clone(), d1.clone()], 1);
    let replica = |d: u32| flat(&v, &format!("lifeboat/disks/{machine}-d{d}.vmdk"));

    // Protect: the initial copy, then a cycle of changes; each point equals the source and
    // so do the replicas' flat extents on the datastore.
    for cycle in 0..2usize {
        if cycle > 0 {
            random_writes(&d0, 300, 11);
            random_writes(&d1, 100, 12);
        }
        let want = (sha256_file(&d0), sha256_file(&d1));
        site.agent_once(&agent_cfg);
        let points = wait_for(Duration::from_secs(120), "the cycle's point", || {
            let p = site.points(&cfg);
            (p.len() == cycle + 1).then_some(p)
        });
        let id = &points.last().unwrap().1;
        assert_eq!(site.point_checksum(&cfg, id, 0), want.0, "cycle {cycle} disk 0");
        assert_eq!(site.point_checksum(&cfg, id, 1), want.1, "cycle {cycle} disk 1");
        assert!(same_raw(&d0, &replica(0)), "replica 0's flat extent equals the source");
        assert!(same_raw(&d1, &replica(1)), "replica 1's flat extent equals the source");
    }
    // The replicas are on the appliance VM; no point copy stays attached.
    let attached = v.appliance_disks();
    for d in 0..2 {
        let want = format!("[LocalDS_0] lifeboat/disks/{machine}-d{d}.vmdk");
        assert!(attached.contains(&want), "{want} attached: {attached:?}");
    }
    assert!(!attached.iter().any(|a| a.contains("/points/")), "{attached:?}");

    site.lifeboat_setup(&cfg);
    let spec = site.lifeboat_json(&[
        "vm-spec",
        &machine,
        "--cpus",
        "2",
        "--memory-mib",
        "1536",
        "--nic",
        "eth0=VM Network,mac=00:50:56:0a:0b:0c",
    ]);
    let firmware = if spec["firmware"] == "uefi" { "efi" } else { "bios" };

    // Test failover at the first point: a VM on the isolated network only; cleanup removes
    // exactly what it made.
    let first = site.points(&cfg)[0].1.clone();
    let want_first = (site.point_checksum(&cfg, &first, 0), site.point_checksum(&cfg, &first, 1));
    let tf = site.lifeboat_json(&["test-failover", &machine, "--point", &first]);
    let tf_disks = result_disks(&tf);
    assert_eq!(tf_disks.len(), 2, "{tf}");
    assert_eq!(sha256_file(&flat(&v, &tf_disks[0])), want_first.0, "test failover disk 0");
    assert_eq!(sha256_file(&flat(&v, &tf_disks[1])), want_first.1, "test failover disk 1");
    let tf_vm = tf["result"]["vm"].as_str().unwrap().to_owned();
    let facts = v.vm(&tf_vm).expect("the test-failover VM exists");
    assert_eq!(facts.power, "poweredOn");
    let isolated = v.portgroup_key(vmware::TEST_NETWORK);
    assert!(!facts.nics.is_empty() && facts.nics.iter().all(|(n, _)| *n == isolated), "{facts:?}");
    assert_eq!(facts.disks, tf_disks, "the test VM's disks, boot disk first");
    let id = tf["result"]["test_failover"].as_str().unwrap().to_owned();
    site.lifeboat_json(&["cleanup", &id]);
    assert!(v.vm(&tf_vm).is_none(), "cleanup deleted the test VM");
    assert!(tf_disks.iter().all(|d| !flat(&v, d).exists()), "cleanup deleted the test disks");

    // Failover at the latest point, then commit.
    let fo = site.lifeboat_json(&["failover", &machine]);
    let fo_disks = result_disks(&fo);
    assert!(same_raw(&d0, &flat(&v, &fo_disks[0])) && same_raw(&d1, &flat(&v, &fo_disks[1])));
    let fo_vm = fo["result"]["vm"].as_str().unwrap().to_owned();
    let facts = v.vm(&fo_vm).expect("the failed-over VM exists");
    let vm_spec_ok = facts.firmware == firmware
        && facts.cpus == 2
        && facts.memory_mb == 1536
        && facts.nics == vec![(vmware::NETWORK.to_owned(), "00:50:56:0a:0b:0c".to_owned())]
        && facts.disks == fo_disks
        && facts.power == "poweredOn";
    assert!(
        vm_spec_ok,
        "the failed-over VM matches the spec ({firmware}, 2 CPUs, 1536 MiB): {facts:?}"
    );
    let c = site.lifeboat_json(&["commit", &machine]);
    assert_eq!(c["result"]["points_deleted"], 2, "{c}");
    assert!(v.vm(&fo_vm).is_some(), "commit keeps the VM");

    // The failed-over machine writes (its disks' flat extents); the source changed after
    // the failover point too. Reprotect moves only what differs.
    random_writes(&flat(&v, &fo_disks[1]), 50, 21);
    random_writes(&d0, 50, 22);
    let job = site.lifeboat_json(&["reprotect", &machine, "--no-wait"]);
    let pass = site.agent_reprotect(&agent_cfg, &[]);
    assert!(pass.contains("1 reverse pass(es)"), "{pass}");
    site.wait_job(&job["id"].as_u64().unwrap().to_string(), Duration::from_secs(180));
    assert!(same_raw(&d0, &flat(&v, &fo_disks[0])), "the original disk 0 after reprotect");
    assert!(same_raw(&d1, &flat(&v, &fo_disks[1])), "the original disk 1 after reprotect");

    // Failback: a last change, the VM stopped and deleted, the final pass, the replicas made
    // anew; forward replication again without a full copy.
    random_writes(&flat(&v, &fo_disks[0]), 30, 23);
    let want0 = sha256_file(&flat(&v, &fo_disks[0]));
    let job = site.lifeboat_json(&["failback", &machine, "--no-wait"]);
    let pass = site.agent_reprotect(&agent_cfg, &["--watch", "--every", "1"]);
    assert!(pass.contains("final pass"), "{pass}");
    site.wait_job(&job["id"].as_u64().unwrap().to_string(), Duration::from_secs(180));
    assert!(v.vm(&fo_vm).is_none(), "failback deleted the failed-over VM");
    assert_eq!(sha256_file(&d0), want0, "the original disk 0 after failback");
    assert!(
        fo_disks.iter().all(|d| !flat(&v, d).exists()),
        "failback deleted the failed-over disks"
    );
    let total = std::fs::metadata(&d0).unwrap().len() + std::fs::metadata(&d1).unwrap().len();
    let before = site.stats(&cfg)["received_bytes"].as_u64().unwrap_or(0);
    site.agent_once(&agent_cfg);
    let points = wait_for(Duration::from_secs(120), "a point after failback", || {
        let p = site.points(&cfg);
        (!p.is_empty()).then_some(p)
    });
    let sent = site.stats(&cfg)["received_bytes"].as_u64().unwrap_or(0) - before;
    assert!(sent < total / 8, "forward again sent {sent} of {total} bytes: a full copy");
    assert_eq!(site.point_checksum(&cfg, &points[0].1, 0), sha256_file(&d0));
    assert!(
        same_raw(&d0, &replica(0)) && same_raw(&d1, &replica(1)),
        "the replicas after failback"
    );
}

#[test]
fn a_wrong_vsphere_password_is_reported_and_loses_nothing() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let site = Site::new();
    let bad = site.target_config(
        "vmware",
        Roles::ALL,
        "state",
        "vmware",
        &vmware_grant(&v, &[("password", "wrong")]),
    );
    let mut appliance = site.start("appliance", &bad);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    let d0 = site.root().join("disk0.img");
    make_disk(&d0, 8, 3);
    let state = site.root().join("agent-state");
    site.register_agent(&bad, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&d0), 1);
    // The agent replicates (the process server's cache keeps what it sends) while vSphere
    // refuses the appliance; the log says why in the plugin's words.
    let want = sha256_file(&d0);
    let mut agent = site.start_agent(&agent_cfg);
    wait_for(Duration::from_secs(60), "the refusal in the appliance's log", || {
        std::fs::read_to_string(site.root().join("appliance.log"))
            .unwrap_or_default()
            .contains("vSphere refused the user name or password")
            .then_some(())
    });
    assert!(site.points(&bad).is_empty(), "no point without the target");
    // The administrator corrects the password; the appliance restarts: everything arrives.
    assert!(appliance.stop());
    let good = site.target_config("vmware", Roles::ALL, "state", "vmware", &vmware_grant(&v, &[]));
    let _appliance = site.start("appliance2", &good);
    site.wait_port(site.ps_port);
    let points =
        wait_for(Duration::from_secs(120), "the point once vSphere takes the login", || {
            let p = site.points(&good);
            (!p.is_empty()).then_some(p)
        });
    assert_eq!(site.point_checksum(&good, &points[0].1, 0), want, "nothing was lost");
    agent.stop();
}

/// Failback into VMware of a machine that failed over to the local target: the appliance's
/// target is the local one, the `vmware` plugin (vcsim) is loaded beside it. After failover
/// and commit, `reprotect --to vmware` copies the failed-over disks into new VMDKs (only
/// blocks that differ), failback stops the local VM, makes the final pass, makes the VMware
/// VM from the spec on the mapped port group and powers it on; the replicas are made anew,
/// and the agent in the new VM (its disks: the VMDKs' flat extents) replicates forward with
/// a full resync, every point equal to the VM's disks. Then the same machine fails over to
/// the local target again and back into that (its original) VM, whose own disks are written.
#[test]
fn a_machine_failed_over_to_the_local_target_fails_back_into_vmware() {
    let v = Vcsim::start("lifeboat", "s3cret", None);
    let site = Site::new();
    let sha = site.install_plugin("vmware", &site.root().join("plugins"));
    let grant = format!("\n[plugins.grants.vmware]\nsha256 = \"{sha}\"\n{}", vmware_grant(&v, &[]));
    let cfg = site.config_with("all", Roles::ALL, &grant);
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);

    let d0 = site.root().join("disk0.img");
    let d1 = site.root().join("disk1.img");
    make_disk(&d0, 16, 41);
    make_disk(&d1, 8, 42);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, &[d0.clone(), d1.clone()], 1);
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(120), "the first point", || {
        (!site.points(&cfg).is_empty()).then_some(())
    });
    site.lifeboat_setup(&cfg);
    let spec = site.lifeboat_json(&[
        "vm-spec",
        &machine,
        "--cpus",
        "2",
        "--memory-mib",
        "1024",
        "--nic",
        "eth0=default,mac=00:50:56:0a:0b:0d",
    ]);
    let firmware = if spec["firmware"] == "uefi" { "efi" } else { "bios" };

    // Failover to the local target, commit; the failed-over machine writes.
    let fo = site.lifeboat_json(&["failover", &machine]);
    let fo_disks: Vec<PathBuf> = result_disks(&fo).into_iter().map(PathBuf::from).collect();
    assert!(same_raw(&d0, &fo_disks[0]) && same_raw(&d1, &fo_disks[1]), "{fo}");
    site.lifeboat_json(&["commit", &machine]);
    random_writes(&fo_disks[1], 40, 43);

    // A bad destination is refused before anything changes.
    let bad = site.lifeboat(&["reprotect", &machine, "--to", "nope"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no target plugin \"nope\""), "{bad:?}");
    let bad = site.lifeboat(&["reprotect", &machine, "--to", "local"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("failed over to \"local\""), "{bad:?}");
    let bad = site.lifeboat(&["reprotect", &machine, "--to", "zstd"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a target plugin"), "{bad:?}");
    let bad = site.lifeboat(&["reprotect", &machine, "--to", "vmware", "--vm-name", "a b"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("vm_name"), "{bad:?}");
    let still = site.lifeboat_json(&["failovers"]);
    assert_eq!(still["failovers"][0]["state"], "committed", "nothing changed: {still}");

    // Reprotect into VMware: new disks there equal the failed-over ones.
    let vm_name = "web-fb";
    let r = site.lifeboat_json(&[
        "reprotect",
        &machine,
        "--to",
        "vmware",
        "--vm-name",
        vm_name,
        "--network",
        vmware::NETWORK,
    ]);
    assert_eq!(r["state"], "succeeded", "{r}");
    let dest = |d: u32| flat(&v, &format!("lifeboat/disks/fb-{machine}-d{d}.vmdk"));
    assert!(same_raw(&fo_disks[0], &dest(0)), "destination disk 0 after reprotect");
    assert!(same_raw(&fo_disks[1], &dest(1)), "destination disk 1 after reprotect");
    let written = r["result"]["received_bytes"].as_u64().unwrap();
    assert!(written > 0 && written <= (24 << 20), "{r}");

    // The failed-over machine writes again; failback: its VM stopped, the final pass (only
    // what changed), the VMware VM made from the spec and powered on.
    random_writes(&fo_disks[0], 20, 44);
    let want = (sha256_file(&fo_disks[0]), sha256_file(&fo_disks[1]));
    let fb = site.lifeboat_json(&["failback", &machine]);
    assert_eq!(fb["state"], "succeeded", "{fb}");
    let final_bytes = fb["result"]["final_pass_received_bytes"].as_u64().unwrap();
    assert!(final_bytes > 0 && final_bytes < written, "the final pass moved only changes: {fb}");
    assert_eq!(sha256_file(&dest(0)), want.0, "the VM's disk 0 is the failed-over disk 0");
    assert_eq!(sha256_file(&dest(1)), want.1, "the VM's disk 1 is the failed-over disk 1");
    assert!(fo_disks.iter().all(|d| !d.exists()), "failback deleted the failed-over disks");
    let vm = fb["result"]["vm"].as_str().unwrap().to_owned();
    let facts = v.vm(&vm).expect("the VMware VM exists");
    let ds = |d: u32| format!("[LocalDS_0] lifeboat/disks/fb-{machine}-d{d}.vmdk");
    assert_eq!(facts.name, vm_name);
    assert_eq!(facts.power, "poweredOn");
    assert_eq!((facts.firmware.as_str(), facts.cpus, facts.memory_mb), (firmware, 2, 1024));
    assert_eq!(facts.nics, vec![(vmware::NETWORK.to_owned(), "00:50:56:0a:0b:0d".to_owned())]);
    assert_eq!(facts.disks, vec![ds(0), ds(1)], "the VM's disks, boot disk first");
    assert!(
        !v.appliance_disks().iter().any(|d| d.contains("/fb-")),
        "the VM's disks left the appliance VM"
    );
    let failovers = site.lifeboat_json(&["failovers"]);
    assert!(failovers["failovers"].as_array().unwrap().is_empty(), "{failovers}");

    // The machine is the VMware VM now: its agent (disks: the flat extents) replicates
    // forward; the appliance's numbering moved past its journal, so it resyncs in full,
    // and the point equals the VM's disks.
    random_writes(&dest(1), 10, 45);
    let vm_cfg = site.agent_config_as("vm-agent", &state, &[dest(0), dest(1)], 1, "");
    site.agent_once(&vm_cfg);
    let points = wait_for(Duration::from_secs(120), "a point from the VMware VM", || {
        let p = site.points(&cfg);
        (!p.is_empty()).then_some(p)
    });
    let id = &points.last().unwrap().1;
    assert_eq!(site.point_checksum(&cfg, id, 0), sha256_file(&dest(0)), "disk 0 forward");
    assert_eq!(site.point_checksum(&cfg, id, 1), sha256_file(&dest(1)), "disk 1 forward");
    // No point before the agent compared each disk with its new replica.
    let log = std::fs::read_to_string(site.root().join("appliance.log")).unwrap();
    assert_eq!(
        log.matches("whole again after its comparison: points resume").count(),
        2,
        "each disk compared before points resumed"
    );

    // Again, into its original VM this time: the machine (now the VMware VM) fails over to
    // the local target and commits; its VM is found running (refused, nothing changed),
    // then powered off; reprotect writes that VM's own disks and failback starts it.
    let fo2 = site.lifeboat_json(&["failover", &machine]);
    let fo2_disks: Vec<PathBuf> = result_disks(&fo2).into_iter().map(PathBuf::from).collect();
    site.lifeboat_json(&["commit", &machine]);
    random_writes(&fo2_disks[0], 15, 46);
    let into_original =
        ["reprotect", machine.as_str(), "--to", "vmware", "--vm-name", vm_name, "--existing-vm"];
    let running = site.lifeboat(&into_original, None);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("power it off"), "{running:?}");
    let still = site.lifeboat_json(&["failovers"]);
    assert_eq!(still["failovers"][0]["state"], "committed", "{still}");
    v.power_off(&vm);
    let r = site.lifeboat_json(&into_original);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(same_raw(&fo2_disks[0], &dest(0)) && same_raw(&fo2_disks[1], &dest(1)));
    random_writes(&fo2_disks[1], 5, 47);
    let want = (sha256_file(&fo2_disks[0]), sha256_file(&fo2_disks[1]));
    let fb = site.lifeboat_json(&["failback", &machine]);
    assert_eq!(fb["result"]["vm"], vm.as_str(), "the same VM: {fb}");
    let facts = v.vm(&vm).unwrap();
    assert_eq!((facts.power.as_str(), facts.disks.clone()), ("poweredOn", vec![ds(0), ds(1)]));
    assert_eq!(
        (sha256_file(&dest(0)), sha256_file(&dest(1))),
        want,
        "its disks hold the failed-over data"
    );
    assert!(fo2_disks.iter().all(|d| !d.exists()), "failback deleted the failed-over disks");
}
