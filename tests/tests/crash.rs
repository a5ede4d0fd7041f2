//! kill -9 of the agent, the process server and the master target at random moments
//! while data flows: nothing acknowledged is lost, there is no full resync, and what is
//! re-sent stays within the in-flight window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use rand::{Rng, SeedableRng};
use std::time::Duration;

fn counter(site: &Site, cfg: &std::path::Path, name: &str) -> u64 {
    site.stats(cfg)[name].as_u64().unwrap_or(0)
}

#[test]
fn killing_any_component_at_random_moments_loses_nothing() {
    let site = Site::new();
    // The roles as separate processes on one data directory, so each can be killed alone.
    let front_cfg = site
        .config("front", Roles { config_server: true, process_server: true, master_target: false });
    let back_cfg = site
        .config("back", Roles { config_server: false, process_server: false, master_target: true });
    let mut front = site.start("front", &front_cfg);
    site.wait_port(site.ps_port);
    let mut back = site.start("back", &back_cfg);

    let disk = site.root().join("disk0.img");
    make_disk(&disk, 48, 3);
    let state = site.root().join("agent-state");
    site.register_agent(&front_cfg, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    let mut agent = site.start_agent(&agent_cfg);
    wait_for(Duration::from_secs(180), "the initial copy's point", || {
        (!site.points(&front_cfg).is_empty()).then_some(())
    });
    let initial_bytes = counter(&site, &front_cfg, "received_bytes");

    let seed: u64 = std::env::var("LIFEBOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test seed {seed} (set LIFEBOAT_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    let rounds = 9;
    for round in 0..rounds {
        written += random_writes(&disk, 150, seed ^ round);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        let victim = round % 3; // each component three times, at random moments
        match victim {
            0 => {
                agent.kill9();
                std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
                agent = site.start_agent(&agent_cfg);
            }
            1 => {
                front.kill9();
                std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
                front = site.start("front", &front_cfg);
                site.wait_port(site.ps_port);
            }
            _ => {
                back.kill9();
                std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
                back = site.start("back", &back_cfg);
            }
        }
    }

    // Quiet now: the next complete cycle must bring the replica to exactly the source.
    let want = sha256_file(&disk);
    let last = site.points(&front_cfg).last().map(|p| p.0).unwrap_or(0);
    let points = wait_for(Duration::from_secs(180), "a point after the last write", || {
        let p = site.points(&front_cfg);
        p.last().is_some_and(|l| l.0 >= last + 2).then_some(p)
    });
    let (_, id) = points.last().unwrap();
    assert_eq!(
        site.point_checksum(&front_cfg, id, 0),
        want,
        "replica differs after crashes (seed {seed})"
    );

    let received = counter(&site, &front_cfg, "received_bytes") - initial_bytes;
    let duplicates = counter(&site, &front_cfg, "duplicate_bytes");
    eprintln!(
        "after the initial copy: received {received} bytes for {written} bytes written; {duplicates} duplicate bytes"
    );
    // No full resync: the 48 MiB disk holds about 34 MB of data; what arrives after the
    // initial copy is the writes plus at most the in-flight window per crash.
    assert!(
        received <= written + (12 << 20),
        "received {received} bytes for {written} written: more than the writes and the in-flight windows (seed {seed})"
    );
    // Re-sends stay within the in-flight window: a few 1 MiB batches per agent kill.
    assert!(duplicates <= 3 * 4 * (1 << 20), "{duplicates} duplicate bytes (seed {seed})");
    assert!(agent.running() && front.running() && back.running());
}
