//! Encryption off by policy, in one appliance: the process server ships the machine's logs
//! unsealed (log-object flag bit 1) and the master target, reading each log back from the
//! target (`read_back`), opens them because the machine's policy says so; the points equal
//! the source. (The refusal of unsealed logs a policy does not allow is in split.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::time::Duration;

#[test]
fn a_policy_without_encryption_ships_and_applies_unsealed_logs() {
    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("[master_target]\n", "[master_target]\nread_back = true\n"))
        .unwrap();
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    site.lifeboat_setup(&cfg);
    // Before the machine ships anything: the process server looks its policy up then.
    let o = site.lifeboat(&["policy", "set", "default", "--encryption", "off"], None);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 31);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    for n in 1..=2 {
        if n > 1 {
            random_writes(&disk, 40, 32);
        }
        let want = sha256_file(&disk);
        site.agent_once(&agent_cfg);
        let points = wait_for(Duration::from_secs(60), "a point", || {
            let p = site.points(&cfg);
            (p.len() == n).then_some(p)
        });
        assert_eq!(site.point_checksum(&cfg, &points[n - 1].1, 0), want, "point {n}");
    }
    let log = std::fs::read_to_string(site.root().join("appliance.log")).unwrap();
    assert!(!log.contains("is not sealed"), "nothing was refused");
    let stats = site.stats(&cfg);
    assert!(stats["unsealed_logs"].as_u64().unwrap_or(0) >= 2, "the logs were unsealed: {stats}");
}
