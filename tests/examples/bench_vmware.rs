//! `cargo xtask bench vmware` runs this (after building the plugins and the release
//! binaries): a 1 GiB disk, half full of random data, protected into vcsim through the
//! VMware target, then a test failover, its cleanup, a failover and a failback (reprotect
//! first), each timed by its job's own timestamps. Prints the JSON and writes it to the
//! path given as the first argument.
//!
//! Fields: `protect_s` (from the agent's start to the first point), `test_failover_s`,
//! `cleanup_s`, `failover_s`, `reprotect_s` and `failback_s` (the jobs, the agent's reverse
//! passes included), `replica_equal` (`qemu-img compare` of the source with the replica's
//! flat extent after the initial copy, and of the failed-over disk after failover),
//! `vm_spec_ok` (the failed-over VM's firmware, CPUs, memory, NIC and disks as vSphere has
//! them match the spec).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn half_full_disk(path: &Path, bytes: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for mib in (0..bytes >> 20).step_by(2) {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&buf, mib << 20).unwrap();
    }
    f.sync_all().unwrap();
}

fn job_seconds(job: &serde_json::Value) -> f64 {
    assert_eq!(job["state"], "succeeded", "{job}");
    let a = job["created_unix_ms"].as_u64().unwrap();
    let b = job["finished_unix_ms"].as_u64().unwrap();
    (b - a) as f64 / 1000.0
}

fn main() {
    let out = std::env::args().nth(1).expect("the output path");
    let v = Vcsim::start("lifeboat", "bench", None);
    let site = Site::new();
    let cfg = site.target_config("vmware", Roles::ALL, "state", "vmware", &vmware_grant(&v, &[]));
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    let disk = site.root().join("disk.img");
    half_full_disk(&disk, 1 << 30);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 3600);
    let replica = v.datastore_dir.join(format!("lifeboat/disks/{machine}-d0-flat.vmdk"));

    let t0 = Instant::now();
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(1800), "the first point", || {
        (!site.points(&cfg).is_empty()).then_some(())
    });
    let protect_s = t0.elapsed().as_secs_f64();
    let mut replica_equal = same_raw(&disk, &replica);
    eprintln!(
        "bench: protected 1 GiB (half full) in {protect_s:.1} s; replica equal: {replica_equal}"
    );

    site.lifeboat_setup(&cfg);
    let spec = site.lifeboat_json(&[
        "vm-spec",
        &machine,
        "--cpus",
        "2",
        "--memory-mib",
        "2048",
        "--nic",
        "eth0=VM Network,mac=00:50:56:0a:0b:0d",
    ]);
    let firmware = if spec["firmware"] == "uefi" { "efi" } else { "bios" };

    let tf = site.lifeboat_json(&["test-failover", &machine]);
    let test_failover_s = job_seconds(&tf);
    let tf_id = tf["result"]["test_failover"].as_str().unwrap().to_owned();
    let cleanup_s = job_seconds(&site.lifeboat_json(&["cleanup", &tf_id]));

    let fo = site.lifeboat_json(&["failover", &machine]);
    let failover_s = job_seconds(&fo);
    let location = fo["result"]["disks"][0]["location"].as_str().unwrap().to_owned();
    let fo_flat = v
        .datastore_dir
        .join(location.trim_start_matches("[LocalDS_0] ").replace(".vmdk", "-flat.vmdk"));
    replica_equal &= same_raw(&disk, &fo_flat);
    let vm = fo["result"]["vm"].as_str().unwrap().to_owned();
    let facts = v.vm(&vm).expect("the failed-over VM");
    let vm_spec_ok = facts.firmware == firmware
        && facts.cpus == 2
        && facts.memory_mb == 2048
        && facts.nics == vec![(vmware::NETWORK.to_owned(), "00:50:56:0a:0b:0d".to_owned())]
        && facts.disks == vec![location.clone()]
        && facts.power == "poweredOn";
    eprintln!("bench: failover {failover_s:.3} s; VM as specified: {vm_spec_ok} ({facts:?})");
    site.lifeboat_json(&["commit", &machine]);

    // The failed-over machine writes; reprotect brings the source up to date; failback.
    random_writes(&fo_flat, 500, 5);
    let job = site.lifeboat_json(&["reprotect", &machine, "--no-wait"]);
    site.agent_reprotect(&agent_cfg, &[]);
    let reprotect_s = job_seconds(
        &site.wait_job(&job["id"].as_u64().unwrap().to_string(), Duration::from_secs(1800)),
    );
    random_writes(&fo_flat, 100, 6);
    let job = site.lifeboat_json(&["failback", &machine, "--no-wait"]);
    site.agent_reprotect(&agent_cfg, &["--watch", "--every", "1"]);
    let failback_s = job_seconds(
        &site.wait_job(&job["id"].as_u64().unwrap().to_string(), Duration::from_secs(1800)),
    );
    eprintln!("bench: reprotect {reprotect_s:.1} s, failback {failback_s:.1} s");

    let result = serde_json::json!({
        "disk_gib": 1,
        "data_gib": 0.5,
        "protect_s": protect_s,
        "test_failover_s": test_failover_s,
        "cleanup_s": cleanup_s,
        "failover_s": failover_s,
        "reprotect_s": reprotect_s,
        "failback_s": failback_s,
        "replica_equal": replica_equal,
        "vm_spec_ok": vm_spec_ok,
    });
    let text = serde_json::to_string_pretty(&result).unwrap();
    println!("{text}");
    std::fs::write(&out, text + "\n").unwrap();
}
