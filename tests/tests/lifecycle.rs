//! The failover lifecycle end to end on loopback, through the `lifeboat` command line:
//! a machine whose boot disk is a real bootable Linux disk (kernel, initramfs, BusyBox
//! root filesystem; `make_bootable_disk`) and whose second disk is an ext4 data
//! filesystem is protected; a test failover, its cleanup, a failover at the latest point,
//! a change to an older (custom) point, and the commit follow, with the disks compared
//! with the source at every step. The failed-over VM is booted with qemu under software
//! emulation and reports, from inside the guest, the data it found. Then reprotect (the
//! failed-over disks changed, and so did the source after the failover point: only the
//! blocks that differ move), failback (a last change, the final pass, the replicas made
//! anew) and forward replication again, checked against the original disks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

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

/// What the phases of the lifecycle share: the site and its appliance's configuration,
/// the source's disks and the mount point for its data filesystem, the protected machine
/// and its agent's configuration.
#[derive(Clone, Copy)]
struct Env<'a> {
    site: &'a Site,
    cfg: &'a Path,
    boot: &'a Path,
    data: &'a Path,
    mnt: &'a Path,
    machine: &'a str,
    agent_cfg: &'a Path,
}

#[test]
fn protect_test_failover_failover_commit_boot_reprotect_failback_reenable() {
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

    let env = &Env {
        site: &site,
        cfg: &cfg,
        boot: &boot,
        data: &data,
        mnt: &mnt,
        machine: &machine,
        agent_cfg: &agent_cfg,
    };

    let at = phase_protect(env);
    phase_vm_spec(env);
    phase_test_failover(env, &at);
    let (disks, vm_file) = phase_failover(env, &at);
    phase_source_refused(env);
    let (new_disks, vm_file) = phase_change_point(env, &at, &disks, &vm_file);
    phase_commit(env, &new_disks);
    phase_boot(env, &at, &vm_file);
    let (fo_data, total_bytes) = phase_reprotect(env, &new_disks);
    let gen6 = phase_failback(env, &fo_data, &vm_file);
    phase_forward_again(env, total_bytes, &gen6);
}

/// Three points of the source, then the machine is protected; what the source held at each
/// point: (point id, boot disk sha256, data disk sha256, generation sha256).
fn phase_protect(env: &Env) -> Vec<(String, String, String, String)> {
    let Env { site, cfg, boot, data, mnt, agent_cfg, .. } = *env;
    // Three points, each with a new generation of data; what the source held at each.
    let mut at: Vec<(String, String, String, String)> = Vec::new(); // (point id, boot, data, gen sha)
    for n in 1..=3 {
        let gen_sha = write_generation(data, mnt, n);
        site.agent_once(agent_cfg);
        let points = wait_for(Duration::from_secs(60), "the cycle's point", || {
            let p = site.points(cfg);
            (p.len() == n as usize).then_some(p)
        });
        let id = points.last().unwrap().1.clone();
        at.push((id, sha256_file(boot), sha256_file(data), gen_sha));
    }

    site.lifeboat_setup(cfg);
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["state"], "protected", "{v}");
    at
}

/// The failover VM's specification, set through the command line.
fn phase_vm_spec(env: &Env) {
    let Env { site, machine, .. } = *env;
    // The VM: what the agent detected, a smaller memory, and a network mapping with a new
    // address (the interface name is the source's first detected one, or a new one).
    let spec = site.lifeboat_json(&["vm-spec", machine]);
    assert!(
        spec["detected"]["cpus"].as_u64().unwrap() >= 1,
        "the agent reported its machine: {spec}"
    );
    let nic = spec["detected"]["nics"][0]["name"].as_str().unwrap_or("eth0").to_owned();
    let spec = site.lifeboat_json(&[
        "vm-spec",
        machine,
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
    let bad = site.lifeboat(&["vm-spec", machine, "--nic", "eth0=dr\tlan"], None);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// A test failover at the first point, and its cleanup.
fn phase_test_failover(env: &Env, at: &[(String, String, String, String)]) {
    let Env { site, machine, .. } = *env;
    // Test failover at the first point: exactly the source as it was then; cleanup.
    let v = site.lifeboat_json(&["test-failover", machine, "--point", &at[0].0]);
    let disks = result_disks(&v);
    assert_eq!(disks.len(), 2);
    assert_eq!(sha256_file(&disks[0].1), at[0].1, "test failover boot disk");
    assert_eq!(sha256_file(&disks[1].1), at[0].2, "test failover data disk");
    let tf = v["result"]["test_failover"].as_str().unwrap().to_owned();
    site.lifeboat_json(&["cleanup", &tf]);
    assert!(disks.iter().all(|(_, p)| !p.exists()), "cleanup removed the test disks");
}

/// The failover at the latest point; its disks and its VM's file.
fn phase_failover(
    env: &Env,
    at: &[(String, String, String, String)],
) -> (Vec<(u64, PathBuf)>, PathBuf) {
    let Env { site, machine, .. } = *env;
    // Failover at the latest point (everything received is processed first).
    let v = site.lifeboat_json(&["failover", machine]);
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
    (disks, vm_file)
}

/// After the failover the source is refused, a second failover too, and there is nothing
/// to pull back yet.
fn phase_source_refused(env: &Env) {
    let Env { site, cfg, machine, agent_cfg, .. } = *env;
    // The source is refused from now on: nothing it writes becomes a point.
    let before = site.points(cfg).len();
    let mut agent = site.start_agent_as("source-after-failover", agent_cfg);
    wait_for(Duration::from_secs(30), "the process server refusing the source", || {
        std::fs::read_to_string(site.root().join("source-after-failover.log"))
            .unwrap_or_default()
            .contains("failed-over")
            .then_some(())
    });
    agent.stop();
    assert_eq!(site.points(cfg).len(), before);
    // A second failover at the same time is refused; a test failover is still allowed.
    let again = site.lifeboat(&["failover", machine, "--point", "nope"], None);
    assert_eq!(
        again.status.code(),
        Some(4),
        "an unknown point: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Nothing to pull back before reprotect: the agent's reverse pass does nothing.
    let pass = site.agent_reprotect(agent_cfg, &[]);
    assert!(pass.contains("0 reverse pass(es)"), "{pass}");
}

/// The failover moved to the second point; the new disks and the new VM's file.
fn phase_change_point(
    env: &Env,
    at: &[(String, String, String, String)],
    disks: &[(u64, PathBuf)],
    vm_file: &Path,
) -> (Vec<(u64, PathBuf)>, PathBuf) {
    let Env { site, machine, .. } = *env;
    // Another point before commit: the second one. The first failover's disks go.
    let v = site.lifeboat_json(&["failover", machine, "--point", &at[1].0]);
    let new_disks = result_disks(&v);
    assert_eq!(sha256_file(&new_disks[0].1), at[1].1);
    assert_eq!(sha256_file(&new_disks[1].1), at[1].2, "failed-over data disk at point 2");
    assert!(disks.iter().all(|(_, p)| !p.exists()), "the earlier failover's disks were removed");
    assert!(!vm_file.exists(), "the earlier failover's VM was removed");
    let vm = v["result"]["vm"].as_str().unwrap().to_owned();
    let vm_file = site.root().join("target/vms").join(format!("{vm}.json"));
    assert!(vm_file.exists(), "the new VM");
    (new_disks, vm_file)
}

/// The commit.
fn phase_commit(env: &Env, new_disks: &[(u64, PathBuf)]) {
    let Env { site, machine, .. } = *env;
    // Commit: the points go, the VM and its disks stay; no more failovers or commits.
    let v = site.lifeboat_json(&["commit", machine]);
    assert_eq!(v["result"]["points_deleted"], 3, "{v}");
    let v = site.lifeboat_json(&["points", machine]);
    assert_eq!(v["points"].as_array().unwrap().len(), 0, "{v}");
    let v = site.lifeboat_json(&["failovers"]);
    assert_eq!(v["failovers"][0]["state"], "committed", "{v}");
    assert!(new_disks.iter().all(|(_, p)| p.exists()));
    assert_eq!(site.lifeboat(&["commit", machine], None).status.code(), Some(5));
    assert_eq!(site.lifeboat(&["failover", machine], None).status.code(), Some(5));
}

/// The failed-over VM boots under qemu and sees generation 2.
fn phase_boot(env: &Env, at: &[(String, String, String, String)], vm_file: &Path) {
    let Env { site, .. } = *env;
    // The failed-over machine boots, and its data disk holds generation 2.
    let console = boot_vm(&site.bin, vm_file, Duration::from_secs(180));
    assert!(console.contains(BOOTED), "the VM did not boot:\n{console}");
    assert!(console.contains(BOOT_DONE), "the VM did not finish:\n{console}");
    assert!(
        console.contains(&format!("{}  /data/gen", at[1].3)),
        "the guest does not see generation 2 on its data disk:\n{console}"
    );
}

/// Both sides change, then reprotect moves only the blocks that differ; the failed-over
/// data disk and the size of the source's disks.
fn phase_reprotect(env: &Env, new_disks: &[(u64, PathBuf)]) -> (PathBuf, u64) {
    let Env { site, boot, data, mnt, machine, agent_cfg, .. } = *env;
    // The failed-over machine runs on and writes generation 4; the original source had
    // also run on after the failover point (generation 5): reprotect must undo that.
    let (fo_boot, fo_data) = (new_disks[0].1.clone(), new_disks[1].1.clone());
    write_generation(&fo_data, mnt, 4);
    write_generation(data, mnt, 5);
    assert_ne!(sha256_file(data), sha256_file(&fo_data));
    let total_bytes =
        std::fs::metadata(boot).unwrap().len() + std::fs::metadata(data).unwrap().len();

    // Reprotect: the job waits for the original machine's agent, whose pass moves only the
    // blocks that differ.
    let job = site.lifeboat_json(&["reprotect", machine, "--no-wait"]);
    let job = job["id"].as_u64().unwrap().to_string();
    let pass = site.agent_reprotect(agent_cfg, &[]);
    assert!(pass.contains("1 reverse pass(es)"), "{pass}");
    let v = site.wait_job(&job, Duration::from_secs(120));
    let received = v["result"]["received_bytes"].as_u64().unwrap();
    assert!(received > 0, "something differed: {v}");
    eprintln!("reprotect: {received} of {total_bytes} bytes received");
    assert!(
        received < total_bytes / 8,
        "reprotect moved {received} of {total_bytes} bytes: more than the changed blocks"
    );
    assert_eq!(sha256_file(data), sha256_file(&fo_data), "the original data disk after reprotect");
    assert_eq!(sha256_file(boot), sha256_file(&fo_boot), "the original boot disk after reprotect");
    assert_eq!(site.lifeboat_json(&["machines"])["machines"][0]["state"], "reprotected");
    assert_eq!(site.lifeboat(&["reprotect", machine], None).status.code(), Some(5));
    (fo_data, total_bytes)
}

/// A last change on the failed-over machine, then failback; the sha256 of generation 6.
fn phase_failback(env: &Env, fo_data: &Path, vm_file: &Path) -> String {
    let Env { site, data, mnt, machine, agent_cfg, .. } = *env;
    // The failed-over machine writes once more (generation 6); failback stops it, takes
    // the final pass, and replication goes forward again.
    let gen6 = write_generation(fo_data, mnt, 6);
    let want_data = sha256_file(fo_data);
    let job = site.lifeboat_json(&["failback", machine, "--no-wait"]);
    let job = job["id"].as_u64().unwrap().to_string();
    // With --watch the agent makes passes until failback asks for and gets the final one.
    let pass = site.agent_reprotect(agent_cfg, &["--watch", "--every", "1"]);
    assert!(pass.contains("final pass"), "{pass}");
    site.wait_job(&job, Duration::from_secs(120));
    assert_eq!(sha256_file(data), want_data, "the original data disk after failback");
    assert!(
        !fo_data.exists() && !vm_file.exists(),
        "failback removed the failed-over VM and disks"
    );
    let v = site.lifeboat_json(&["machines"]);
    assert_eq!(v["machines"][0]["state"], "initial-copy", "protected again, no point yet: {v}");
    let v = site.lifeboat_json(&["failovers"]);
    assert_eq!(v["failovers"].as_array().unwrap().len(), 0, "{v}");
    gen6
}

/// Forward replication again, without a full copy, back to generation 6.
fn phase_forward_again(env: &Env, total_bytes: u64, gen6: &str) {
    let Env { site, cfg, boot, data, mnt, machine, agent_cfg } = *env;
    // Forward replication: the next cycle is a point equal to the original disks, and it
    // did not copy the disks again.
    let received_before = stat(site, cfg, "received_bytes");
    site.agent_once(agent_cfg);
    let points = wait_for(Duration::from_secs(60), "a point after failback", || {
        let p = site.points(cfg);
        (!p.is_empty()).then_some(p)
    });
    let sent = stat(site, cfg, "received_bytes") - received_before;
    assert!(sent < total_bytes / 8, "re-enabling sent {sent} bytes: a full copy");
    eprintln!("forward again: {sent} bytes sent by the first cycle after failback");
    let v = site.lifeboat_json(&["test-failover", machine, "--point", &points[0].1]);
    let disks = result_disks(&v);
    assert_eq!(sha256_file(&disks[0].1), sha256_file(boot), "replica boot disk after failback");
    assert_eq!(sha256_file(&disks[1].1), sha256_file(data), "replica data disk after failback");
    sh("mount", &["-o", "loop,ro", disks[1].1.to_str().unwrap(), mnt.to_str().unwrap()]).unwrap();
    let text = std::fs::read(mnt.join("gen")).unwrap();
    sh("umount", &[mnt.to_str().unwrap()]).unwrap();
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(&text)), gen6, "generation 6 came back");
}

/// An appliance counter (`lifeboat-appliance stats`).
fn stat(site: &Site, cfg: &Path, name: &str) -> u64 {
    site.stats(cfg)[name].as_u64().unwrap_or(0)
}
