//! The split deployment: a source-site appliance (configuration + process server) ships
//! compressed, encrypted logs to Azure storage (a real Azurite); a target-site appliance
//! from the same binary, with its own state, runs only the master target and applies
//! them to page-blob replicas, cutting points as blob snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

    // A policy turning encryption off at the source (which cannot check it against the
    // target it does not run) makes the logs travel unsealed; the target-site master
    // target, which holds no such policy, refuses to open them: nothing unsealed is applied.
    site.lifeboat_setup(&source);
    let o = site.lifeboat(&["policy", "set", "default", "--encryption", "off"], None);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(11)); // the process server's policy look-up
    random_writes(&disk, 50, 100);
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(60), "the target site to refuse the unsealed log", || {
        std::fs::read_to_string(site.root().join("target.log"))
            .unwrap_or_default()
            .contains("is not sealed")
            .then_some(())
    });
    assert_eq!(site.points(&target).len(), 2, "nothing unsealed was applied");
}
