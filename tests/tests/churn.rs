//! The churn profiler on a real block device: `lifeboat-agent churn --report` measures what
//! a writer really wrote and the appliance lists it with the bandwidth it needs. Root only;
//! skipped (and said so) elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::process::Command;

#[test]
fn a_churn_profile_measures_the_writes_and_reaches_the_appliance() {
    if !root_or_skip("the eBPF tracker") {
        return;
    }
    let site = Site::new();
    let mut undo = Undo(Vec::new());
    let Some(dev) = loop_device(site.root(), "disk", 64, &mut undo) else { return };
    let (cfg, _appliance) = site.start_all();
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let agent_cfg = site.agent_config(&state, &[dev.clone().into()], 60);

    let profiler = Command::new(site.bin.join("lifeboat-agent"))
        .args(["churn", "--seconds", "4", "--every", "1", "--report", "--config"])
        .arg(&agent_cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Write 32 MiB straight to the device while it measures.
    std::thread::sleep(std::time::Duration::from_millis(800));
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={dev}"),
            "bs=1M",
            "count=32",
            "oflag=direct",
            "status=none",
        ],
    )
    .unwrap();
    let out = profiler.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let line = site.cli(&cfg, &["churn", "--link-mbps", "1"]);
    let v: serde_json::Value =
        serde_json::from_str(line.lines().next().expect("a report")).unwrap();
    let d = &v["disks"][0];
    let total_mb = d["mean_mb_per_s"].as_f64().unwrap() * v["seconds"].as_f64().unwrap();
    let want = 32.0 * 1.048_576;
    assert!((total_mb - want).abs() < want * 0.1, "measured {total_mb} MB, wrote {want}: {v}");
    assert!(d["peak_mb_per_s"].as_f64().unwrap() >= d["mean_mb_per_s"].as_f64().unwrap());
    assert!(d["sizes"].as_array().unwrap().iter().any(|n| n.as_u64().unwrap() > 0));
    assert_eq!(v["fits_link"], false, "a 1 Mbit/s link cannot carry {v}");
    let line = site.cli(&cfg, &["churn", "--link-mbps", "100000"]);
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["fits_link"], true);
}
