//! The failover lifecycle end to end on loopback, through the `lifeboat` command line:
//! a machine whose boot disk is a real bootable Linux disk (kernel, initramfs, BusyBox
//! root filesystem; `make_bootable_disk`) and whose second disk is an ext4 data
//! filesystem is protected; a test failover, its cleanup, a failover at the latest point,
//! a change to an older (custom) point, and the commit follow, with the disks compared
//! with the source at every step. Last, the failed-over VM is booted with qemu under
//! software emulation and reports, from inside the guest, the data it found.

use lifeboat_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes generation `n` into the data filesystem (a file naming it and 1 MiB of data
/// seeded by it), through a loop mount, and unmounts so the image is clean.
fn write_generation(img: &Path, mnt: &Path, n: u64) -> String {
    use rand::{RngCore, SeedableRng};
    sh("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]).unwrap();
    let text = format!("generation {n}\n");
    std::fs::write(mnt.join("gen"), &text).unwrap();
    let mut blob = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(n).fill_bytes(&mut blob);
    std::fs::write(mnt.join("blob"), &blob).unwrap();
    sh("umount", &[mnt.to_str().unwrap()]).unwrap();
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The sha256 of each disk of a job's result, by disk index.
fn result_disks(v: &serde_json::Value) -> Vec<(u64, PathBuf)> {
    v["result"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["disk"].as_u64().unwrap(), PathBuf::from(d["location"].as_str().unwrap())))
        .collect()
}

#[test]
fn protect_test_failover_failover_change_point_commit_and_boot() {
    if !root_or_skip("the lifecycle test (loop mounts to build the disks)") {
        return;
    }
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let boot = site.root().join("boot.img");
    make_bootable_disk(&boot, site.root());
    let data = site.root().join("data.img");
    std::fs::File::create(&data).unwrap().set_len(32 << 20).unwrap();
    sh("mkfs.ext4", &["-q", "-F", data.to_str().unwrap()]).unwrap();
    let mnt = site.root().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, &[boot.clone(), data.clone()], 1);

    // Three points, each with a new generation of data; what the source held at each.
    let mut at: Vec<(String, String, String, String)> = Vec::new(); // (point id, boot, data, gen sha)
    for n in 1..=3 {
        let gen_sha = write_generation(&data, &mnt, n);
        site.agent_once(&agent_cfg);
        let points = wait_for(Duration::from_secs(60), "the cycle's point", || {
            let p = site.points(&cfg);
            (p.len() == n as usize).then_some(p)
        });
        let id = points.last().unwrap().1.clone();
        at.push((id, sha256_file(&boot), sha256_file(&data), gen_sha));
    }

    site.lifeboat_setup(&cfg);
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["state"], "protected", "{v}");

    // The VM: what the agent detected, a smaller memory, and a network mapping with a new
    // address (the interface name is the source's first detected one, or a new one).
    let spec = site.lifeboat_json(&["vm-spec", &machine]);
    assert!(
        spec["detected"]["cpus"].as_u64().unwrap() >= 1,
        "the agent reported its machine: {spec}"
    );
    let nic = spec["detected"]["nics"][0]["name"].as_str().unwrap_or("eth0").to_owned();
    let spec = site.lifeboat_json(&[
        "vm-spec",
        &machine,
        "--memory-mib",
        "256",
        "--cpus",
        "1",
        "--nic",
        &format!("{nic}=dr-lan,ip=192.0.2.7/24"),
    ]);
    assert_eq!(
        (spec["memory_mib"].as_u64(), spec["disks"].clone()),
        (Some(256), serde_json::json!([0, 1]))
    );
    let bad = site.lifeboat(&["vm-spec", &machine, "--nic", "eth0=dr lan"], None);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));

    // Test failover at the first point: exactly the source as it was then; cleanup.
    let v = site.lifeboat_json(&["test-failover", &machine, "--point", &at[0].0]);
    let disks = result_disks(&v);
    assert_eq!(disks.len(), 2);
    assert_eq!(sha256_file(&disks[0].1), at[0].1, "test failover boot disk");
    assert_eq!(sha256_file(&disks[1].1), at[0].2, "test failover data disk");
    let tf = v["result"]["test_failover"].as_str().unwrap().to_owned();
    site.lifeboat_json(&["cleanup", &tf]);
    assert!(disks.iter().all(|(_, p)| !p.exists()), "cleanup removed the test disks");

    // Failover at the latest point (everything received is processed first).
    let v = site.lifeboat_json(&["failover", &machine]);
    assert_eq!(v["result"]["point"], at[2].0.as_str(), "{v}");
    let disks = result_disks(&v);
    assert_eq!(sha256_file(&disks[0].1), at[2].1, "failed-over boot disk");
    assert_eq!(sha256_file(&disks[1].1), at[2].2, "failed-over data disk");
    let vm = v["result"]["vm"].as_str().unwrap().to_owned();
    let vm_file = site.root().join("target/vms").join(format!("{vm}.json"));
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vm_file).unwrap()).unwrap();
    assert_eq!(spec["isolated"], false);
    assert_eq!((spec["memory_mib"].as_u64(), spec["cpus"].as_u64()), (Some(256), Some(1)));
    assert_eq!(spec["nics"][0]["network"], "dr-lan");
    assert_eq!(spec["nics"][0]["ip"], "192.0.2.7/24");
    assert_eq!(spec["disks"][0], disks[0].1.to_str().unwrap(), "the boot disk first");
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["state"], "failed-over", "{v}");

    // The source is refused from now on: nothing it writes becomes a point.
    let before = site.points(&cfg).len();
    let mut agent = site.start_agent_as("source-after-failover", &agent_cfg);
    wait_for(Duration::from_secs(30), "the process server refusing the source", || {
        std::fs::read_to_string(site.root().join("source-after-failover.log"))
            .unwrap_or_default()
            .contains("failed-over")
            .then_some(())
    });
    agent.stop();
    assert_eq!(site.points(&cfg).len(), before);
    // A second failover at the same time is refused; a test failover is still allowed.
    let again = site.lifeboat(&["failover", &machine, "--point", "nope"], None);
    assert_eq!(
        again.status.code(),
        Some(4),
        "an unknown point: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Another point before commit: the second one. The first failover's disks go.
    let v = site.lifeboat_json(&["failover", &machine, "--point", &at[1].0]);
    let new_disks = result_disks(&v);
    assert_eq!(sha256_file(&new_disks[0].1), at[1].1);
    assert_eq!(sha256_file(&new_disks[1].1), at[1].2, "failed-over data disk at point 2");
    assert!(disks.iter().all(|(_, p)| !p.exists()), "the earlier failover's disks were removed");

    // Commit: the points go, the VM and its disks stay; no more failovers or commits.
    let v = site.lifeboat_json(&["commit", &machine]);
    assert_eq!(v["result"]["points_deleted"], 3, "{v}");
    let v = site.lifeboat_json(&["points", &machine]);
    assert_eq!(v["points"].as_array().unwrap().len(), 0, "{v}");
    let v = site.lifeboat_json(&["failovers"]);
    assert_eq!(v["failovers"][0]["state"], "committed", "{v}");
    assert!(new_disks.iter().all(|(_, p)| p.exists()));
    assert_eq!(site.lifeboat(&["commit", &machine], None).status.code(), Some(5));
    assert_eq!(site.lifeboat(&["failover", &machine], None).status.code(), Some(5));

    // The failed-over machine boots, and its data disk holds generation 2.
    let console = boot_vm(&site.bin, &vm_file, Duration::from_secs(180));
    assert!(console.contains(BOOTED), "the VM did not boot:\n{console}");
    assert!(console.contains(BOOT_DONE), "the VM did not finish:\n{console}");
    assert!(
        console.contains(&format!("{}  /data/gen", at[1].3)),
        "the guest does not see generation 2 on its data disk:\n{console}"
    );
}
