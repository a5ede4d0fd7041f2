//! A codec plugin that traps in the process server: the appliance keeps running, the
//! agent's batches stay in the cache (acknowledged as durable, never as shipped), and
//! once a working codec is configured and the appliance restarted, they are shipped and
//! applied with nothing lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::time::Duration;

#[test]
fn a_trapping_codec_loses_nothing_and_the_appliance_keeps_running() {
    let site = Site::new();
    let (_, plugins) = build_dirs();
    for ext in ["wasm", "toml"] {
        std::fs::copy(
            plugins.join(format!("hostile.{ext}")),
            site.root().join(format!("plugins/hostile.{ext}")),
        )
        .unwrap();
    }
    let good = site.config("good", Roles::ALL);
    let text = std::fs::read_to_string(&good).unwrap();
    let bad_text =
        text.replacen("[process_server]\n", "[process_server]\ncodec = \"hostile\"\n", 1)
            + &format!(
                "\n[plugins.grants.hostile]\nsha256 = \"{}\"\nsettings = {{ mode = \"trap\" }}\n",
                sha256_file(&site.root().join("plugins/hostile.wasm"))
            );
    let bad = site.root().join("appliance-bad.toml");
    std::fs::write(&bad, bad_text).unwrap();

    let mut appliance = site.start("bad", &bad);
    site.wait_port(site.ps_port);
    let disk = site.root().join("disk0.img");
    make_disk(&disk, 8, 11);
    let want = sha256_file(&disk);
    let state = site.root().join("agent-state");
    site.register_agent(&bad, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    // The agent finishes: every batch is durable in the appliance's cache.
    site.agent_once(&agent_cfg);
    std::thread::sleep(Duration::from_secs(3));
    assert!(appliance.running(), "the appliance must survive a trapping plugin");
    assert!(site.points(&bad).is_empty(), "nothing may be shipped through a trapping codec");
    let log = std::fs::read_to_string(site.root().join("bad.log")).unwrap();
    assert!(
        log.contains("plugin hostile") && log.contains("trapped"),
        "the log names the plugin and the reason"
    );

    // A working codec: the cached batches ship and the point appears, intact.
    assert!(appliance.stop());
    let _appliance = site.start("good", &good);
    let points = wait_for(Duration::from_secs(120), "the point after the fix", || {
        let p = site.points(&good);
        (!p.is_empty()).then_some(p)
    });
    assert_eq!(site.point_checksum(&good, &points[0].1, 0), want);
}
