//! App-consistent points through quiescer plugins run inside the agent, on a live ext4 on a
//! loop device with the eBPF tracker: a real PostgreSQL (Debian's package, on 127.0.0.1)
//! quiesced by the PostgreSQL quiescer, and the script quiescer failing (a crash-consistent
//! point and an alert, the application thawed) then succeeding. Root only; skipped (and
//! said so) elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/<major>/bin).
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn pg(program: &str) -> String {
    pg_bin().expect("checked at the start of the test").join(program).display().to_string()
}

/// A mounted ext4 on a loop device, undone on drop.
struct Fs {
    dev: String,
    mnt: PathBuf,
    undo: Undo,
}

fn mounted_ext4(site: &Site, mib: u64) -> Option<Fs> {
    if !root_or_skip("the eBPF tracker and filesystem freezes") {
        return None;
    }
    let mut undo = Undo(Vec::new());
    let dev = loop_device(site.root(), "disk", mib, &mut undo)?;
    let mnt = mount_ext4(&dev, site.root(), "mnt", &mut undo);
    Some(Fs { dev, mnt, undo })
}

fn as_postgres(program: &str, args: &[&str]) -> Result<String, String> {
    let mut a = vec!["-u", "postgres", "--", program];
    a.extend_from_slice(args);
    sh("runuser", &a)
}

fn psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(pg("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .env("PGPASSWORD", "lifeboat-test")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Starts a PostgreSQL cluster in `data` on `port` (127.0.0.1 only, no Unix socket).
fn pg_start(data: &Path, port: u16, log: &Path) -> Result<String, String> {
    let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
    as_postgres(
        &pg("pg_ctl"),
        &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"],
    )
}

fn app_points(site: &Site, cfg: &Path) -> Vec<serde_json::Value> {
    site.points_json(cfg).into_iter().filter(|p| p["kind"] == "app").collect()
}

#[test]
fn postgres_points_are_app_consistent_and_start_as_a_database() {
    if pg_bin().is_none() {
        eprintln!("SKIPPED: PostgreSQL is not installed (cargo xtask test installs it)");
        return;
    }
    let site = Site::new();
    let Some(mut fs) = mounted_ext4(&site, 320) else { return };
    // PostgreSQL runs as the postgres user: it must reach its data directory.
    sh("chmod", &["0755", site.root().to_str().unwrap()]).unwrap();
    let data = fs.mnt.join("pgdata");
    std::fs::create_dir(&data).unwrap();
    sh("chown", &["postgres:postgres", data.to_str().unwrap()]).unwrap();
    let pwfile = site.root().join("pw");
    std::fs::write(&pwfile, "lifeboat-test\n").unwrap();
    sh("chmod", &["0644", pwfile.to_str().unwrap()]).unwrap();
    as_postgres(
        &pg("initdb"),
        &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=scram-sha-256"],
    )
    .map(|_| ())
    .or_else(|_| {
        // initdb refuses --auth without a password: give it one.
        as_postgres(
            &pg("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
            ],
        )
        .map(|_| ())
    })
    .unwrap();
    let logs = site.root().join("pglogs");
    std::fs::create_dir(&logs).unwrap();
    sh("chown", &["postgres:postgres", logs.to_str().unwrap()]).unwrap();
    let port = free_port();
    pg_start(&data, port, &logs.join("pg.log")).unwrap();
    fs.undo.0.push((
        "runuser".into(),
        ["-u", "postgres", "--", &pg("pg_ctl"), "-D", data.to_str().unwrap()]
            .into_iter()
            .map(String::from)
            .chain(["-m", "immediate", "stop"].map(String::from))
            .collect(),
    ));
    psql(port, "CREATE TABLE t (id bigserial PRIMARY KEY, v text)").unwrap();

    let (cfg, _appliance) = site.start_all();
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let plugins = site.root().join("agent-plugins");
    let sha = site.install_plugin("postgres-quiescer", &plugins);
    let extra = format!(
        "[plugins]\ndir = \"{}\"\n[plugins.grants.postgres-quiescer]\nsha256 = \"{sha}\"\n\
         sockets = [\"127.0.0.1:{port}\"]\n\
         settings = {{ address = \"127.0.0.1:{port}\", user = \"postgres\", password = \"lifeboat-test\" }}\n\
         [quiesce]\nplugins = [\"postgres-quiescer\"]\ninterval_secs = 0\ndeadline_ms = 10000\n",
        plugins.display()
    );
    let agent_cfg = site.agent_config_with(&state, &[fs.dev.clone().into()], 2, &extra);
    let mut agent = site.start_agent(&agent_cfg);

    // The database is written all along.
    let stop = Arc::new(AtomicBool::new(false));
    let rows = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, rows) = (stop.clone(), rows.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                psql(
                    port,
                    "INSERT INTO t (v) SELECT md5(random()::text) FROM generate_series(1, 500)",
                )
                .unwrap();
                rows.fetch_add(500, Ordering::Relaxed);
            }
        })
    };
    let points = wait_for(Duration::from_secs(240), "two app-consistent points", || {
        let p = app_points(&site, &cfg);
        (p.len() >= 2).then_some(p)
    });
    unpin_agents(&[&Site::machine_id(&state)], &mut fs.undo);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(agent.running());
    agent.stop();
    assert!(rows.load(Ordering::Relaxed) > 0);

    let log = std::fs::read_to_string(site.root().join("agent.log")).unwrap();
    assert!(log.contains("app-consistent points through quiescer plugins"), "{log}");
    assert!(!log.contains("app-consistent point failed"), "a quiescer failed: {log}");
    let pglog = std::fs::read_to_string(logs.join("pg.log")).unwrap_or_default();
    assert!(
        pglog.contains("checkpoint starting: immediate") || pglog.contains("checkpoint complete"),
        "PostgreSQL saw no checkpoint from the quiescer: {pglog}"
    );

    // The newest app-consistent point: a clean filesystem (no journal replay needed) whose
    // PostgreSQL starts and answers.
    let id = points.last().unwrap()["id"].as_str().unwrap().to_owned();
    let copy = site.root().join("check.img");
    sh("cp", &["--sparse=always", site.point_image(&id).to_str().unwrap(), copy.to_str().unwrap()])
        .unwrap();
    let fsck = Command::new("fsck.ext4").args(["-n", "-f"]).arg(&copy).output().unwrap();
    assert!(
        fsck.status.success(),
        "the app-consistent point is not a clean filesystem: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let check = site.root().join("check");
    std::fs::create_dir(&check).unwrap();
    let cdev = sh("losetup", &["--find", "--show", copy.to_str().unwrap()]).unwrap();
    let mut undo = Undo(vec![("losetup".into(), vec!["--detach".into(), cdev.clone()])]);
    sh("mount", &[&cdev, check.to_str().unwrap()]).unwrap();
    undo.0.push(("umount".into(), vec![check.to_str().unwrap().into()]));
    let cdata = check.join("pgdata");
    // What a restore does: the lock file belongs to the source's postmaster.
    let _ = std::fs::remove_file(cdata.join("postmaster.pid"));
    let cport = free_port();
    pg_start(&cdata, cport, &logs.join("pg-restored.log")).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL does not start from the app-consistent point: {e}\n{}",
            std::fs::read_to_string(logs.join("pg-restored.log")).unwrap_or_default()
        )
    });
    undo.0.push((
        "runuser".into(),
        ["-u", "postgres", "--", &pg("pg_ctl"), "-D", cdata.to_str().unwrap()]
            .into_iter()
            .map(String::from)
            .chain(["-m", "fast", "stop"].map(String::from))
            .collect(),
    ));
    let n: u64 = psql(cport, "SELECT count(*) FROM t").unwrap().parse().unwrap();
    assert!(n > 0 && n.is_multiple_of(500), "restored table has {n} rows: not whole transactions");
    let check_ok = psql(cport, "SELECT count(*) = count(DISTINCT id) FROM t").unwrap();
    assert_eq!(check_ok, "t");
    drop(undo);
}

#[test]
fn a_failing_quiescer_gives_a_crash_point_and_an_alert_and_is_thawed() {
    let site = Site::new();
    let Some(mut fs) = mounted_ext4(&site, 96) else { return };
    let (cfg, _appliance) = site.start_all();
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let plugins = site.root().join("agent-plugins");
    let sha = site.install_plugin("script-quiescer", &plugins);
    // The freeze script hangs while `fail` exists (past the deadline), else marks the
    // filesystem; the thaw script logs every thaw.
    let root = site.root();
    let freeze = root.join("freeze.sh");
    std::fs::write(
        &freeze,
        format!(
            "if [ -e {0}/fail ]; then exec sleep 30; fi\ndate +%s%N > {1}/quiesced\nsync {1}/quiesced\n",
            root.display(),
            fs.mnt.display()
        ),
    )
    .unwrap();
    let thaw = root.join("thaw.sh");
    std::fs::write(&thaw, format!("echo thawed >> {}/thaw.log\n", root.display())).unwrap();
    std::fs::write(root.join("fail"), "").unwrap();
    let extra = format!(
        "[plugins]\ndir = \"{}\"\n[plugins.grants.script-quiescer]\nsha256 = \"{sha}\"\n\
         commands = [\"/bin/sh\"]\n\
         settings = {{ freeze = \"/bin/sh {}\", thaw = \"/bin/sh {}\" }}\n\
         [quiesce]\nplugins = [\"script-quiescer\"]\ninterval_secs = 0\ndeadline_ms = 500\n",
        plugins.display(),
        freeze.display(),
        thaw.display()
    );
    let agent_cfg = site.agent_config_with(&state, &[fs.dev.clone().into()], 1, &extra);
    let mut agent = site.start_agent(&agent_cfg);
    std::fs::write(fs.mnt.join("data"), vec![7u8; 1 << 20]).unwrap();

    // While the freeze script hangs: crash-consistent points, alerts, thaws.
    wait_for(Duration::from_secs(120), "crash points while the quiescer fails", || {
        let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
        let points = site.points_json(&cfg);
        (log.matches("app-consistent point failed").count() >= 2 && points.len() >= 2).then_some(())
    });
    unpin_agents(&[&Site::machine_id(&state)], &mut fs.undo);
    assert!(
        site.points_json(&cfg).iter().all(|p| p["kind"] == "crash"),
        "a point was tagged app-consistent although the quiescer failed"
    );
    let thaws = std::fs::read_to_string(root.join("thaw.log")).unwrap_or_default();
    assert!(thaws.lines().count() >= 2, "the thaw script did not run after the failed freezes");
    let log = std::fs::read_to_string(root.join("agent.log")).unwrap();
    assert!(log.contains("was killed (deadline 500 ms"), "{log}");
    // The appliance alerts on it too.
    site.lifeboat_setup(&cfg);
    let quiesce_alert = |site: &Site| {
        site.lifeboat_json(&["alerts"])["alerts"].as_array().unwrap().iter().any(|a| {
            a["kind"] == "plugin"
                && a["message"].as_str().unwrap_or("").contains("a quiescer failed")
        })
    };
    wait_for(Duration::from_secs(30), "the appliance's quiescer alert", || {
        quiesce_alert(&site).then_some(())
    });

    // The application recovers: the next points are app-consistent and hold the marker
    // the freeze script wrote.
    std::fs::remove_file(root.join("fail")).unwrap();
    let app = wait_for(Duration::from_secs(120), "an app-consistent point", || {
        app_points(&site, &cfg).pop()
    });
    assert!(!quiesce_alert(&site), "an app-consistent point ends the alert");
    assert!(agent.running());
    agent.stop();
    let image = site.point_image(app["id"].as_str().unwrap());
    let at = root.join("check");
    std::fs::create_dir(&at).unwrap();
    sh("mount", &["-o", "ro,loop,noload", image.to_str().unwrap(), at.to_str().unwrap()]).unwrap();
    let marker = std::fs::read_to_string(at.join("quiesced"));
    let _ = sh("umount", &[at.to_str().unwrap()]);
    assert!(
        marker.is_ok_and(|m| !m.trim().is_empty()),
        "the app point lacks the freeze script's marker"
    );
}
