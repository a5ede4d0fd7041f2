//! Replication end to end: real agent, real appliance, real plugins, loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use lifeboat_e2e::*;
use std::time::Duration;

/// Initial copy plus three delta cycles with random writes between them, on a machine
/// with two disks: at every recovery point, every disk of the machine equals the source
/// as it was when the point was cut, and older points keep their own content.
#[test]
fn every_point_of_a_two_disk_machine_equals_the_source_as_it_was() {
    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);

    let disks = [site.root().join("disk0.img"), site.root().join("disk1.img")];
    make_disk(&disks[0], 24, 1);
    make_disk(&disks[1], 12, 2);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let agent_cfg = site.agent_config(&state, &disks, 1);

    let mut history = Vec::new();
    for cycle in 0..4u64 {
        if cycle > 0 {
            random_writes(&disks[0], 300, cycle * 10);
            random_writes(&disks[1], 60, cycle * 10 + 1);
        }
        let sums = [sha256_file(&disks[0]), sha256_file(&disks[1])];
        site.agent_once(&agent_cfg);
        let points = wait_for(Duration::from_secs(120), "the cycle's recovery point", || {
            let p = site.points(&cfg);
            (p.len() as u64 == cycle + 1).then_some(p)
        });
        let (_, id) = points.last().unwrap().clone();
        for (i, want) in sums.iter().enumerate() {
            assert_eq!(
                &site.point_checksum(&cfg, &id, i as u32),
                want,
                "cycle {cycle}: disk {i} at point {id} differs from the source"
            );
        }
        history.push((id, sums));
    }
    for (id, sums) in &history {
        for (i, want) in sums.iter().enumerate() {
            assert_eq!(
                &site.point_checksum(&cfg, id, i as u32),
                want,
                "point {id} disk {i} changed later"
            );
        }
    }
}
