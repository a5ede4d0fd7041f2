//! The split deployment: a source-site appliance (configuration + process server) ships
//! compressed, encrypted logs to Azure storage (a real Azurite); a target-site appliance
//! from the same binary, with its own state, runs only the master target and applies
//! them to page-blob replicas, cutting points as blob snapshots.

use lifeboat_e2e::*;
use std::time::Duration;

#[test]
fn a_target_site_appliance_applies_what_the_source_site_shipped_to_azure() {
    let azurite = Azurite::start();
    let site = Site::new();
    let source = site.azure_config(
        "source",
        Roles { config_server: true, process_server: true, master_target: false },
        "source-state",
        &azurite.grant("lifeboat", "00000000-0000-4000-8000-00000000000a"),
    );
    let target = site.azure_config(
        "target",
        Roles { config_server: false, process_server: false, master_target: true },
        "target-state",
        &azurite.grant("lifeboat", "00000000-0000-4000-8000-00000000000b"),
    );
    let _src = site.start("source", &source);
    site.wait_port(site.ps_port);
    // The target site reads the logs with the same data key (sealed under the recovery
    // passphrase in a later release; copied here).
    let keys = site.root().join("source-state/keys");
    let tkeys = site.root().join("target-state/keys");
    std::fs::create_dir_all(&tkeys).unwrap();
    for e in std::fs::read_dir(&keys).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tkeys.join(e.file_name())).unwrap();
    }
    let _tgt = site.start("target", &target);

    let disk = site.root().join("disk0.img");
    make_disk(&disk, 16, 7);
    let state = site.root().join("agent-state");
    site.register_agent(&source, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    for cycle in 0..2u64 {
        if cycle > 0 {
            random_writes(&disk, 200, 99);
        }
        let want = sha256_file(&disk);
        site.agent_once(&agent_cfg);
        let points = wait_for(Duration::from_secs(120), "a point at the target site", || {
            let p = site.points(&target);
            (p.len() as u64 == cycle + 1).then_some(p)
        });
        let (_, id) = points.last().unwrap();
        assert_eq!(site.point_checksum(&target, id, 0), want, "cycle {cycle}");
    }
    // The source site applied nothing itself: it has no master target.
    assert!(site.points(&source).is_empty());
}
