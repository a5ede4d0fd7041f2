//! A consistency group of two agents on one machine, each protecting its own ext4 on a
//! loop device with the eBPF tracker, coordinated over mutual TLS on loopback.
//!
//! A writer appends sequence numbers to a file on A, then the same number to a file on B,
//! each with fsync, so B holds `n` only after A does. In every complete group point, A's
//! highest number is B's or one more: the two cuts match. Then B is killed: the
//! coordinator's rounds abort, no new group point appears, and A is not left frozen. Root
//! only; skipped (and said so) elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The highest sequence number in `seq` on the filesystem image of a point.
fn highest(site: &Site, id: &str, at: &Path) -> u64 {
    std::fs::create_dir_all(at).unwrap();
    let image = site.point_image(id);
    sh("mount", &["-o", "ro,loop,noload", image.to_str().unwrap(), at.to_str().unwrap()]).unwrap();
    let text = std::fs::read_to_string(at.join("seq")).unwrap_or_default();
    let _ = sh("umount", &[at.to_str().unwrap()]);
    text.lines().filter_map(|l| l.trim().parse().ok()).max().unwrap_or(0)
}

fn complete_group_points(site: &Site, cfg: &Path) -> Vec<serde_json::Value> {
    site.cli(cfg, &["group-points"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|g| g["complete"] == true)
        .collect()
}

/// Two members on their own ext4 loop devices, A coordinating; `b_top` goes into B's
/// configuration before its tables.
struct Pair {
    cfg: PathBuf,
    _appliance: Proc,
    mnt_a: PathBuf,
    mnt_b: PathBuf,
    id_a: String,
    id_b: String,
    a: Proc,
    b: Proc,
}

fn pair(site: &Site, undo: &mut Undo, b_top: &str) -> Option<Pair> {
    let dev_a = loop_device(site.root(), "a", 64, undo)?;
    let dev_b = loop_device(site.root(), "b", 64, undo)?;
    let mnt_a = mount_ext4(&dev_a, site.root(), "mnt-a", undo);
    let mnt_b = mount_ext4(&dev_b, site.root(), "mnt-b", undo);
    let (cfg, appliance) = site.start_all();
    let (state_a, state_b) = (site.root().join("state-a"), site.root().join("state-b"));
    site.register_agent(&cfg, &state_a);
    site.register_agent(&cfg, &state_b);
    let (id_a, id_b) = (Site::machine_id(&state_a), Site::machine_id(&state_b));
    // The appliance owns membership: the administrator defines the group, the agents learn
    // it with their trust check at start.
    site.lifeboat_setup(&cfg);
    let o =
        site.lifeboat(&["group", "set", "erp", "--coordinator", &id_a, "--member", &id_b], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (port_a, port_b) = (free_port(), free_port());
    let group = |listen: u16, coordinator: bool, peer: &str, peer_port: u16| {
        format!(
            "[group]\nname = \"erp\"\nlisten = \"127.0.0.1:{listen}\"\ncoordinator = {coordinator}\n\
             interval_secs = 2\ndeadline_ms = 5000\n\
             members = [{{ machine = \"{peer}\", address = \"127.0.0.1:{peer_port}\" }}]\n"
        )
    };
    let cfg_a = site.agent_config_as(
        "agent-a",
        &state_a,
        &[dev_a.into()],
        30,
        &group(port_a, true, &id_b, port_b),
    );
    let b_extra = format!("{b_top}{}", group(port_b, false, &id_a, port_a));
    let cfg_b = site.agent_config_as("agent-b", &state_b, &[dev_b.into()], 30, &b_extra);
    let b = site.start_agent_as("agent-b", &cfg_b);
    let a = site.start_agent_as("agent-a", &cfg_a);
    Some(Pair { cfg, _appliance: appliance, mnt_a, mnt_b, id_a, id_b, a, b })
}

#[test]
fn a_member_that_cannot_freeze_refuses_group_points() {
    if !root_or_skip("the eBPF tracker and filesystem freezes") {
        return;
    }
    let site = Site::new();
    let mut undo = Undo(Vec::new());
    let Some(p) = pair(&site, &mut undo, "freeze = false\n") else { return };
    let Pair { cfg, id_a, id_b, mut a, mut b, .. } = p;
    let log_b = site.root().join("agent-b.log");
    wait_for(Duration::from_secs(120), "B to refuse a round", || {
        let text = std::fs::read_to_string(&log_b).unwrap_or_default();
        text.contains("no filesystem of this member could be frozen").then_some(())
    });
    unpin_agents(&[&id_a, &id_b], &mut undo);
    assert!(complete_group_points(&site, &cfg).is_empty(), "a group point with an unfrozen member");
    a.stop();
    b.stop();
    let log_a = std::fs::read_to_string(site.root().join("agent-a.log")).unwrap();
    assert!(log_a.contains("group round aborted"), "{log_a}");
}

#[test]
fn two_agents_cut_matching_group_points_and_abort_without_a_member() {
    if !root_or_skip("the eBPF tracker and filesystem freezes") {
        return;
    }
    let site = Site::new();
    let mut undo = Undo(Vec::new());
    let Some(p) = pair(&site, &mut undo, "") else { return };
    let Pair { cfg, _appliance, mnt_a, mnt_b, id_a, id_b, mut a, mut b } = p;

    // The writer: n on A (fsync), then n on B (fsync).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (pa, pb) = (mnt_a.join("seq"), mnt_b.join("seq"));
        std::thread::spawn(move || {
            let open =
                |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
            let (mut fa, mut fb) = (open(&pa), open(&pb));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                writeln!(fa, "{n}").unwrap();
                fa.sync_data().unwrap();
                writeln!(fb, "{n}").unwrap();
                fb.sync_data().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };

    let groups = wait_for(Duration::from_secs(240), "three complete group points", || {
        let g = complete_group_points(&site, &cfg);
        (g.len() >= 3).then_some(g)
    });
    unpin_agents(&[&id_a, &id_b], &mut undo);
    let written = {
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    };
    assert!(written > 0);

    let mut checked = 0;
    for g in &groups {
        let ids: Vec<&str> =
            g["point_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let members: Vec<&str> =
            g["members"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2);
        let of = |m: &str| ids[members.iter().position(|x| *x == m).unwrap()];
        let point = g["point"].as_u64().unwrap();
        assert!(
            of(&id_a).ends_with(&format!("{point:020}"))
                && of(&id_b).ends_with(&format!("{point:020}"))
        );
        let ha = highest(&site, of(&id_a), &site.root().join("check-a"));
        let hb = highest(&site, of(&id_b), &site.root().join("check-b"));
        assert!(
            hb <= ha && ha <= hb + 1,
            "group point {point}: A holds up to {ha}, B up to {hb}: the cuts do not match"
        );
        if ha > 0 {
            checked += 1;
        }
    }
    assert!(checked >= 1, "no group point held any of the writer's records");

    // A member disappears: the coordinator's rounds abort and A is never left frozen.
    b.kill9();
    let n_before = complete_group_points(&site, &cfg).len();
    let log_a = site.root().join("agent-a.log");
    wait_for(Duration::from_secs(60), "an aborted round", || {
        let log = std::fs::read_to_string(&log_a).unwrap_or_default();
        log.contains("group round aborted").then_some(())
    });
    let t = Instant::now();
    std::fs::write(mnt_a.join("after"), b"still writable").unwrap();
    sh("sync", &[mnt_a.join("after").to_str().unwrap()]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "A's filesystem stayed frozen");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(complete_group_points(&site, &cfg).len(), n_before, "a group point without B");
    assert!(a.running());
    a.stop();
    let log = std::fs::read_to_string(&log_a).unwrap();
    assert!(log.contains("this agent coordinates the group's points"), "{log}");
    drop(undo);
}
