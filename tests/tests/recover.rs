//! Failover without the source site: the appliance keeps its catalogue at the target,
//! sealed under the administrator's recovery passphrase. After the appliance and its whole
//! data directory are lost, a fresh appliance with the same target and that passphrase
//! (`lifeboat-appliance recover`) lists the machines and points and fails over, with the
//! disk exactly as the source was at the newest point; a wrong passphrase imports nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::process::Command;
use std::time::Duration;

const RECOVERY: &str = "the recovery passphrase kept offsite";

fn recover(
    site: &Site,
    cfg: &std::path::Path,
    passphrase: &str,
    dry_run: bool,
) -> std::process::Output {
    let mut c = Command::new(site.bin.join("lifeboat-appliance"));
    c.args(["recover", "--config"]).arg(cfg).env("LIFEBOAT_RECOVERY_PASSPHRASE", passphrase);
    if dry_run {
        c.arg("--dry-run");
    }
    c.output().unwrap()
}

#[test]
fn a_fresh_appliance_fails_over_from_the_catalogue_at_the_target() {
    let site = Site::new();
    let (cfg, mut appliance) = site.start_all();
    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 5);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(60), "the first point", || {
        (site.points(&cfg).len() == 1).then_some(())
    });

    site.lifeboat_setup(&cfg);
    let o = Command::new(site.bin.join("lifeboat"))
        .arg("--session")
        .arg(site.root().join("session.json"))
        .args(["recovery-passphrase", "set"])
        .env("LIFEBOAT_RECOVERY_PASSPHRASE", RECOVERY)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    random_writes(&disk, 50, 7);
    site.agent_once(&agent_cfg);
    let points = wait_for(Duration::from_secs(60), "the second point", || {
        let p = site.points(&cfg);
        (p.len() == 2).then_some(p)
    });
    let newest = points[1].1.clone();
    let want = sha256_file(&disk);

    // The catalogue reaches the target with the newest point.
    wait_for(Duration::from_secs(30), "the catalogue at the target", || {
        let o = recover(&site, &cfg, RECOVERY, true);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["machines"][0]["newest_point"] == newest.as_str()).then_some(())
    });
    let v = site.lifeboat_json(&["recovery-passphrase", "status"]);
    assert!(v["catalogue_written_unix_ms"].as_u64().is_some(), "{v}");

    // The source site is lost: the appliance and its whole data directory.
    appliance.kill9();
    std::fs::remove_dir_all(site.root().join("state")).unwrap();

    // A wrong passphrase imports nothing; the right one imports the catalogue.
    let o = recover(&site, &cfg, "not the recovery passphrase", false);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong recovery passphrase"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = recover(&site, &cfg, RECOVERY, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["imported"].as_bool(), v["machines"][0]["id"].as_str()),
        (Some(true), Some(machine.as_str()))
    );
    let o = recover(&site, &cfg, RECOVERY, false);
    assert!(!o.status.success(), "a second import into the same appliance is refused");

    // The new appliance fails the machine over at the newest point.
    let _appliance = site.start("appliance-recovered", &cfg);
    site.wait_port(site.config_port);
    site.lifeboat_setup(&cfg);
    let v = site.lifeboat_json(&["points", &machine]);
    assert_eq!(v["points"].as_array().unwrap().len(), 2, "{v}");
    let v = site.lifeboat_json(&["failover", &machine, "--point", "latest-processed"]);
    assert_eq!(v["result"]["point"], newest.as_str(), "{v}");
    let copy = std::path::PathBuf::from(v["result"]["disks"][0]["location"].as_str().unwrap());
    assert_eq!(sha256_file(&copy), want, "the failed-over disk is the source at the newest point");
    let v = site.lifeboat_json(&["recovery-passphrase", "status"]);
    assert_eq!(v["set"], true, "the new appliance seals its catalogue under the same passphrase");
}
