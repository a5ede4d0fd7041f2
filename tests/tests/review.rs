//! Regression tests of the review in issue 11 that need the real binaries: each failed on
//! the code before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use lifeboat_e2e::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Finding 3: sizes were sent only at agent start, so a disk grown online got extents
/// past its announced end. A disk grown by 1 GiB under a running agent is announced again
/// and replicated whole.
#[test]
fn a_disk_grown_by_1_gib_under_a_running_agent_is_replicated_whole() {
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let disk = site.root().join("disk0.img");
    make_disk(&disk, 16, 7);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    let mut agent = site.start_agent(&agent_cfg);
    wait_for(Duration::from_secs(120), "the first point", || {
        (!site.points(&cfg).is_empty()).then_some(())
    });

    // Grow by 1 GiB while the agent runs, with data at the new end.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let old = f.metadata().unwrap().len();
    f.set_len(old + (1 << 30)).unwrap();
    let tail: Vec<u8> =
        (0..65536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    f.write_all_at(&tail, old + (1 << 30) - tail.len() as u64).unwrap();
    f.write_all_at(&tail, old + (512 << 20)).unwrap();
    f.sync_all().unwrap();
    let want = sha256_file(&disk);

    let seen = std::cell::Cell::new(0usize);
    wait_for(Duration::from_secs(300), "a point holding the grown disk", || {
        let points = site.points(&cfg);
        let new = &points[seen.get()..];
        seen.set(points.len());
        new.iter().any(|(_, id)| site.point_checksum(&cfg, id, 0) == want).then_some(())
    });
    assert!(agent.running(), "the agent keeps running");
    let log = std::fs::read_to_string(site.root().join("agent.log")).unwrap();
    assert!(log.contains("announcing its new size"), "{log}");
}

/// Finding 3: the master target returned on the first error of a pass, so one machine
/// whose log could not be opened stopped the points of every machine after it. With a
/// garbage log in the way of one machine's disk, the other machine still gets points, and
/// an alert names the broken disk.
#[test]
fn one_machine_whose_log_cannot_be_opened_does_not_stop_the_others() {
    let site = Site::new();
    let (cfg, mut appliance) = site.start_all();
    site.lifeboat_setup(&cfg);
    let mut agents = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let disk = site.root().join(format!("{name}.img"));
        make_disk(&disk, 8, i as u64 + 20);
        let state = site.root().join(format!("state-{name}"));
        site.register_agent(&cfg, &state);
        let agent_cfg = site.agent_config_as(
            &format!("agent-{name}"),
            &state,
            std::slice::from_ref(&disk),
            1,
            "",
        );
        site.agent_once(&agent_cfg);
        agents.push((Site::machine_id(&state), agent_cfg, disk));
    }
    wait_for(Duration::from_secs(120), "a point of each machine", || {
        let points = site.points_json(&cfg);
        agents
            .iter()
            .all(|(m, _, _)| points.iter().any(|p| p["machine"] == m.as_str()))
            .then_some(())
    });
    // The machine the master target visits first (ids in order) is the one broken, so a
    // pass that stops at the first error stops the other machine's points.
    agents.sort_by(|a, b| a.0.cmp(&b.0));
    let (broken, _, _) = &agents[0];
    let (healthy, healthy_cfg, healthy_disk) = &agents[1];
    // Garbage where the broken disk's next logs go: the ones already applied are deleted,
    // the next one cannot be opened.
    let logs = site.root().join("target/logs");
    for seq in 0..200u64 {
        std::fs::write(logs.join(format!("{broken}-d0.{seq:020}")), b"not a log object").unwrap();
    }
    let before = site.points_json(&cfg).iter().filter(|p| p["machine"] == healthy.as_str()).count();
    for round in 0..2u64 {
        random_writes(healthy_disk, 50, 100 + round);
        site.agent_once(healthy_cfg);
    }
    wait_for(Duration::from_secs(120), "new points of the healthy machine", || {
        let n = site.points_json(&cfg).iter().filter(|p| p["machine"] == healthy.as_str()).count();
        (n >= before + 2).then_some(())
    });
    let alerts = wait_for(Duration::from_secs(60), "an alert naming the broken disk", || {
        let v = site.lifeboat_json(&["alerts"]);
        let list = v["alerts"].as_array().cloned().unwrap_or_default();
        list.iter()
            .any(|a| a["kind"] == "apply-failed" && a["machine_id"] == broken.as_str())
            .then_some(list)
    });
    let a = alerts.iter().find(|a| a["kind"] == "apply-failed").unwrap();
    assert!(a["message"].as_str().unwrap().contains("disk 0"), "{a}");
    assert_eq!(a["severity"], "critical");
    assert!(
        !alerts.iter().any(|a| a["kind"] == "apply-failed" && a["machine_id"] == healthy.as_str()),
        "{alerts:?}"
    );
    assert!(appliance.running());
}

/// Finding 7: the data directory (clear batches in the cache, password hashes, keys) and
/// the local target's replicas were created with the default umask, readable by every
/// local user. After the first start and after a replica exists, nothing is.
#[test]
fn the_data_directory_and_replicas_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = site.root().join("state");
    assert_eq!(mode(&state), 0o700, "data directory after the first start");
    assert_eq!(mode(&state.join("state.db")) & 0o077, 0, "state.db");
    let disk = site.root().join("disk0.img");
    make_disk(&disk, 8, 3);
    let agent_state = site.root().join("agent-state");
    site.register_agent(&cfg, &agent_state);
    site.agent_once(&site.agent_config(&agent_state, std::slice::from_ref(&disk), 1));
    wait_for(Duration::from_secs(120), "a point", || (!site.points(&cfg).is_empty()).then_some(()));
    let mut checked = 0;
    let mut walk = vec![state.clone(), site.root().join("target")];
    while let Some(p) = walk.pop() {
        // The appliance runs on: a file listed may be gone (a log applied, a temporary
        // file renamed) by the time it is looked at.
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        let m = meta.permissions().mode() & 0o777;
        assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
        checked += 1;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            walk.extend(entries.flatten().map(|e| e.path()));
        }
    }
    assert_eq!(mode(&site.root().join("target")), 0o700);
    assert!(checked > 10, "{checked}");
    // A directory found open to others is closed at the next start.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    site.cli(&cfg, &["fingerprint"]);
    assert_eq!(mode(&state), 0o700);
}

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// Finding 5: every login ran argon2 (19 MiB) with no bound, bodies of 64 MiB were read
/// before authentication, the failure map took names of any size, and five failures
/// locked the administrator out from everywhere. 600 concurrent logins from one address,
/// half with 1 MB names: the appliance stays under 300 MiB, answers each with 4xx, and
/// the administrator logs in from another address meanwhile.
#[test]
fn a_login_flood_neither_exhausts_the_appliance_nor_locks_the_administrator_out() {
    use http::HeaderMap;
    use lifeboat_net::tls::{Trust, client_config};
    let site = Site::new();
    let (cfg, appliance) = site.start_all();
    site.lifeboat_setup(&cfg);
    let pid = appliance.pid().unwrap();
    let before = peak_rss(pid);
    let fingerprint = site.cli(&cfg, &["fingerprint"]).trim().to_owned();
    let url = format!("https://127.0.0.1:{}", site.config_port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (statuses, admin_status) = rt.block_on(async {
        let tls = client_config(Trust::Fingerprint(fingerprint), None).unwrap();
        let clients: Vec<lifeboat_net::Client> = (0..30)
            .map(|_| {
                lifeboat_net::Client::new(&url, tls.clone())
                    .unwrap()
                    .with_timeout(Duration::from_secs(120))
            })
            .collect();
        let big_name = std::sync::Arc::new("n".repeat(1 << 20));
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..600usize {
            let c = clients[i % clients.len()].clone();
            let big_name = big_name.clone();
            flood.spawn(async move {
                let body = if i % 2 == 0 {
                    serde_json::json!({"name": *big_name, "password": "a wrong password"})
                } else {
                    serde_json::json!({"name": "admin", "password": format!("wrong guess {i}")})
                };
                c.post_json("/api/v1/login", &body, HeaderMap::new()).await.map(|r| r.0)
            });
        }
        // The administrator, from another address of this machine, meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let admin = lifeboat_net::Client::with_source(&url, tls, Some(ip))
            .unwrap()
            .with_timeout(Duration::from_secs(60));
        let good = serde_json::json!({"name": "admin", "password": "correct horse battery"});
        let admin_status = admin.post_json("/api/v1/login", &good, HeaderMap::new()).await;
        let mut statuses = Vec::new();
        while let Some(r) = flood.join_next().await {
            statuses.push(r.unwrap());
        }
        (statuses, admin_status.map(|r| r.0))
    });
    assert_eq!(admin_status.unwrap(), 200, "the administrator logs in from another address");
    let mut counts = std::collections::BTreeMap::new();
    for s in &statuses {
        let s = s.as_ref().map(|s| s.as_u16()).map_err(|e| e.to_string());
        *counts.entry(s).or_insert(0) += 1;
    }
    eprintln!("answers to the flood: {counts:?}");
    for (status, n) in &counts {
        match status {
            Ok(s) if (400..500).contains(s) => {}
            other => panic!("{n} answers were {other:?}: {counts:?}"),
        }
    }
    let peak = peak_rss(pid);
    eprintln!(
        "appliance peak RSS: {} MiB before the flood, {} MiB after",
        before >> 20,
        peak >> 20
    );
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
    // The flooding address itself is limited, even with the right password.
    let fp = site.cli(&cfg, &["fingerprint"]).trim().to_owned();
    let o = site.lifeboat(
        &["login", "--url", &url, "--fingerprint", &fp, "--name", "admin"],
        Some("correct horse battery"),
    );
    assert!(!o.status.success(), "the flooding address itself is limited");
    assert!(String::from_utf8_lossy(&o.stderr).contains("try again"), "{o:?}");
}

/// Finding 4: the state store commits with `synchronous = NORMAL`, and the master target
/// deleted applied logs right after recording its cursor, so a power cut could take the
/// cursor back behind logs that no longer exist, and the disk waited for them forever.
/// Simulated: the appliance's state files are copied while logs are shipped but not yet
/// applied (the appliance stopped with SIGSTOP), the logs are then applied and deleted,
/// the appliance is killed and the copy put back. The disk's gap is declared, an alert
/// names it, the agent compares the disk with its replica by hashes (no full resync),
/// and the replica equals the source again.
/// Copies an appliance's state database (its files as they are) from `from` to `to`.
fn copy_state(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(to.join(f));
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// The process server's cursors in the state in `dir`: (machine, disk, next sequence).
fn received_cursors(dir: &std::path::Path) -> Vec<(String, i64, i64)> {
    let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let mut s = c.prepare("SELECT machine_id, disk, next_sequence FROM received").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Puts `cursors` (from [`received_cursors`]) back into the state in `dir`.
fn restore_received(dir: &std::path::Path, cursors: &[(String, i64, i64)]) {
    let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    for (m, d, n) in cursors {
        c.execute(
            "INSERT INTO received (machine_id, disk, next_sequence) VALUES (?1, ?2, ?3)
             ON CONFLICT (machine_id, disk) DO UPDATE SET next_sequence = ?3",
            rusqlite::params![m, d, n],
        )
        .unwrap();
    }
}

/// Where the master target of the state in `dir` stands: its applied cursors, summed
/// over the disks.
fn applied_next(dir: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row("SELECT COALESCE(SUM(next_sequence), 0) FROM applied", [], |r| r.get(0)).unwrap()
}

/// Writes to `disk`, runs an agent cycle and copies the state of the appliance `pid`
/// (stopped meanwhile) from `state` to `copy`, until the copy's master target is behind
/// logs it applied (and deleted) after the copy, before the cycle's point (listed through
/// `cfg`): logs shipped but not applied when the copy was taken. Each cycle's point must
/// equal the source.
fn catch_logs_shipped_not_applied(
    site: &Site,
    pid: u32,
    (cfg, copy_cfg): (&std::path::Path, &std::path::Path),
    (state, copy): (&std::path::Path, &std::path::Path),
    (disk, agent_cfg): (&std::path::Path, &std::path::Path),
    seed: u64,
) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = Pid::from_raw(pid as i32).unwrap();
    for round in 0..4u64 {
        let before = site.points(cfg).len();
        random_writes(disk, 200, seed + round);
        site.agent_once(agent_cfg);
        kill_process(pid, Signal::STOP).unwrap();
        copy_state(state, copy);
        kill_process(pid, Signal::CONT).unwrap();
        let want = sha256_file(disk);
        let points = wait_for(Duration::from_secs(120), "the cycle's point", || {
            let p = site.points(cfg);
            (p.len() > before).then_some(p)
        });
        assert_eq!(site.point_checksum(cfg, &points.last().unwrap().1, 0), want);
        if applied_next(copy) < applied_next(state)
            && site.cli(copy_cfg, &["points"]).lines().count() == before
        {
            return;
        }
    }
    panic!("never caught the logs shipped but not yet applied");
}

#[test]
fn a_cursor_that_went_back_in_a_power_cut_recovers_by_a_hash_compare() {
    let site = Site::new();
    let cfg = site.config("all", Roles::ALL);
    let base = std::fs::read_to_string(&cfg).unwrap();
    // An idle master target that looks for logs every 30 s leaves shipped logs unapplied
    // long enough to copy the state in between.
    std::fs::write(&cfg, base.replace("poll_ms = 100", "poll_ms = 30000\ngap_grace_secs = 2"))
        .unwrap();
    let mut appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    let disk = site.root().join("disk0.img");
    make_disk(&disk, 16, 11);
    let agent_state = site.root().join("agent-state");
    site.register_agent(&cfg, &agent_state);
    let agent_cfg = site.agent_config_with(
        &agent_state,
        std::slice::from_ref(&disk),
        1,
        "trust_check_secs = 10\n",
    );
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(120), "the first point", || {
        (!site.points(&cfg).is_empty()).then_some(())
    });

    let state = site.root().join("state");
    let copy = site.root().join("state-copy");
    let copy_cfg = site.root().join("appliance-copy.toml");
    std::fs::write(&copy_cfg, base.replace("data_dir = \"state\"", "data_dir = \"state-copy\""))
        .unwrap();
    catch_logs_shipped_not_applied(
        &site,
        appliance.pid().unwrap(),
        (&cfg, &copy_cfg),
        (&state, &copy),
        (&disk, &agent_cfg),
        40,
    );

    // Power cut: the master target's state goes back to the copy; the logs applied since
    // are gone. The process server's cursors do not go back: it syncs them before a
    // shipped batch leaves its cache, so a power cut cannot take them behind what the
    // cache no longer holds (restoring the whole copy would, which no power cut does).
    appliance.kill9();
    let received = received_cursors(&state);
    copy_state(&copy, &state);
    restore_received(&state, &received);
    std::fs::write(&cfg, base.replace("poll_ms = 100", "poll_ms = 100\ngap_grace_secs = 2"))
        .unwrap();
    let mut appliance = site.start("appliance", &cfg);
    site.wait_port(site.ps_port);
    random_writes(&disk, 100, 99);
    let want = sha256_file(&disk);
    let mut agent = site.start_agent(&agent_cfg);
    let seen = std::cell::Cell::new(0usize);
    wait_for(Duration::from_secs(240), "a point equal to the source", || {
        let points = site.points(&cfg);
        let new = &points[seen.get().min(points.len())..];
        seen.set(points.len());
        new.iter().any(|(_, id)| site.point_checksum(&cfg, id, 0) == want).then_some(())
    });
    agent.stop();
    let log = std::fs::read_to_string(site.root().join("appliance.log")).unwrap();
    assert!(log.contains("are missing at the target"), "the gap was not declared");
    let agent_log = std::fs::read_to_string(site.root().join("agent.log")).unwrap();
    assert!(agent_log.contains("compared the disk with its replica"), "{agent_log}");
    assert!(!agent_log.contains("full hash-compare resync"), "a full resync ran: {agent_log}");
    assert!(appliance.running());
}

/// Finding 4, split deployment: the master target at a target site has its own state and
/// the agents talk only to the source site. A gap it finds is still repaired: it asks for
/// the comparison through the target (a sealed control object), the source's process
/// server hands it to the agent, and the agent's answer comes back the same way.
#[test]
fn in_a_split_deployment_a_lost_log_is_repaired_through_the_target() {
    let site = Site::new();
    let source = site.config(
        "source",
        Roles { config_server: true, process_server: true, master_target: false },
    );
    let target = site.config(
        "target",
        Roles { config_server: false, process_server: false, master_target: true },
    );
    let base = std::fs::read_to_string(&target)
        .unwrap()
        .replace("data_dir = \"state\"", "data_dir = \"state-target\"");
    std::fs::write(&target, base.replace("poll_ms = 100", "poll_ms = 30000\ngap_grace_secs = 2"))
        .unwrap();
    let _src = site.start("source", &source);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    // The target site opens the logs with the same data key (copied, as in split.rs).
    let keys = site.root().join("state/keys");
    let tkeys = site.root().join("state-target/keys");
    std::fs::create_dir_all(&tkeys).unwrap();
    for e in std::fs::read_dir(&keys).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tkeys.join(e.file_name())).unwrap();
    }
    let mut tgt = site.start("target", &target);
    let disk = site.root().join("disk0.img");
    make_disk(&disk, 16, 12);
    let agent_state = site.root().join("agent-state");
    site.register_agent(&source, &agent_state);
    let agent_cfg = site.agent_config_with(
        &agent_state,
        std::slice::from_ref(&disk),
        1,
        "trust_check_secs = 10\n",
    );
    site.agent_once(&agent_cfg);
    wait_for(Duration::from_secs(120), "the first point at the target site", || {
        (!site.points(&target).is_empty()).then_some(())
    });

    let state = site.root().join("state-target");
    let copy = site.root().join("state-target-copy");
    let copy_cfg = site.root().join("appliance-target-copy.toml");
    std::fs::write(&copy_cfg, base.replace("state-target", "state-target-copy")).unwrap();
    catch_logs_shipped_not_applied(
        &site,
        tgt.pid().unwrap(),
        (&target, &copy_cfg),
        (&state, &copy),
        (&disk, &agent_cfg),
        60,
    );

    // Power cut at the target site only: its state goes back, the logs it applied are gone.
    tgt.kill9();
    copy_state(&copy, &state);
    std::fs::write(&target, base.replace("poll_ms = 100", "poll_ms = 100\ngap_grace_secs = 2"))
        .unwrap();
    let _tgt = site.start("target", &target);
    random_writes(&disk, 100, 98);
    let want = sha256_file(&disk);
    let mut agent = site.start_agent(&agent_cfg);
    let seen = std::cell::Cell::new(0usize);
    wait_for(Duration::from_secs(300), "a point at the target site equal to the source", || {
        let points = site.points(&target);
        let new = &points[seen.get().min(points.len())..];
        seen.set(points.len());
        new.iter().any(|(_, id)| site.point_checksum(&target, id, 0) == want).then_some(())
    });
    agent.stop();
    let log = |name: &str| std::fs::read_to_string(site.root().join(name)).unwrap();
    assert!(log("target.log").contains("are missing at the target"), "no gap declared");
    assert!(log("source.log").contains("asks for a comparison"), "the source never heard");
    assert!(log("target.log").contains("reported through the target"), "no answer came back");
    let agent_log = log("agent.log");
    assert!(agent_log.contains("compared the disk with its replica"), "{agent_log}");
    assert!(!agent_log.contains("full hash-compare resync"), "a full resync ran");
}
