//! The `lifeboat` command line against a real appliance: setup, login, the machines and
//! their points, passphrase rotation, logout, and exit codes that scripts can trust.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

fn lifeboat(site: &Site, args: &[&str], password: Option<&str>) -> Output {
    site.lifeboat(args, password)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// What the phases of the CLI test share: the site and its appliance's configuration, the
/// machine's disk and agent state, and the machine.
struct Env<'a> {
    site: &'a Site,
    cfg: &'a Path,
    disk: &'a PathBuf,
    state: &'a Path,
    machine: &'a str,
}

#[test]
fn the_cli_administers_the_appliance_with_trustworthy_exit_codes() {
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 3);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    site.agent_once(&site.agent_config(&state, std::slice::from_ref(&disk), 1));
    wait_for(std::time::Duration::from_secs(60), "the first point", || {
        (!site.points(&cfg).is_empty()).then_some(())
    });

    let url = format!("https://127.0.0.1:{}", site.config_port);
    let fp = site.cli(&cfg, &["fingerprint"]).trim().to_owned();
    let connect = ["--url", url.as_str(), "--fingerprint", fp.as_str(), "--name", "admin"];
    let pw = Some("correct horse battery");
    let env = &Env { site: &site, cfg: &cfg, disk: &disk, state: &state, machine: &machine };

    phase_setup(env, &connect, pw);
    phase_machines_points_passphrase(env);
    phase_login_logout(env, &connect, pw);
    phase_test_failover(env);
    phase_policies(env);
    phase_plugins_groups_completions(env);
}

/// Setup through the command line, with `connect`'s arguments and the password `pw`.
fn phase_setup(env: &Env, connect: &[&str], pw: Option<&str>) {
    let Env { site, .. } = *env;
    // Not logged in yet.
    let o = lifeboat(site, &["machines"], None);
    assert_eq!(code(&o), 3, "{}", String::from_utf8_lossy(&o.stderr));
    let token = site.cli(env.cfg, &["setup-token"]).trim().to_owned();
    let setup = |token: &str| -> Vec<String> {
        ["setup", "--setup-token", token].iter().chain(connect).map(|a| a.to_string()).collect()
    };
    // A wrong setup token is refused and claims nothing.
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let o = lifeboat(site, &args(&setup("AAAAA-AAAAA-AAAAA-AAAAA")), pw);
    assert_ne!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stderr).contains("setup token"), "{o:?}");
    // A short password is bad input.
    let o = lifeboat(site, &args(&setup(&token)), Some("short"));
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("password"));
    let o = lifeboat(site, &args(&setup(&token)), pw);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let mode = std::fs::metadata(site.root().join("session.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session file is private");
    let o = lifeboat(site, &args(&setup(&token)), pw);
    assert_eq!(code(&o), 5, "a second setup is a conflict");
    let o = std::process::Command::new(site.bin.join("lifeboat-appliance"))
        .args(["setup-token", "--config"])
        .arg(env.cfg)
        .output()
        .unwrap();
    assert!(!o.status.success(), "no setup token after setup");
}

/// The machines, their points, and a passphrase rotation.
fn phase_machines_points_passphrase(env: &Env) {
    let Env { site, machine, .. } = *env;
    let o = lifeboat(site, &["machines", "--json"], None);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["machines"][0]["id"], machine);
    let o = lifeboat(site, &["machines"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains(machine));
    let o = lifeboat(site, &["points", machine, "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v["points"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(code(&lifeboat(site, &["points", "no-such-machine"], None)), 4);

    let o = lifeboat(site, &["passphrase", "rotate"], None);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).trim().len() >= 20);
    let o = lifeboat(site, &["passphrase", "status", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unused"], 1);
}

/// Login and logout, with `connect`'s arguments and the password `pw`.
fn phase_login_logout(env: &Env, connect: &[&str], pw: Option<&str>) {
    let Env { site, .. } = *env;
    // Wrong password: 3; logout ends the session.
    assert_eq!(
        code(&lifeboat(site, &[&["login"][..], connect].concat(), Some("wrong password!!"))),
        3
    );
    assert_eq!(code(&lifeboat(site, &["logout"], None)), 0);
    assert_eq!(code(&lifeboat(site, &["machines"], None)), 3);
    assert_eq!(code(&lifeboat(site, &[&["login"][..], connect].concat(), pw)), 0);
    assert_eq!(code(&lifeboat(site, &["whoami"], None)), 0);
}

/// A test failover, and its cleanup.
fn phase_test_failover(env: &Env) {
    let Env { site, disk, state, machine, .. } = *env;
    // Test failover at the latest point: the isolated disk holds exactly the source disk,
    // the VM is on the test network only; cleanup removes both.
    let want = sha256_file(disk);
    let o = lifeboat(site, &["test-failover", machine, "--json"], None);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = &v["result"];
    let tf = r["test_failover"].as_str().unwrap().to_owned();
    let copy = std::path::PathBuf::from(r["disks"][0]["location"].as_str().unwrap());
    assert_eq!(sha256_file(&copy), want, "the test failover's disk is not the point's content");
    let vm_file =
        site.root().join("target/vms").join(format!("{}.json", r["vm"].as_str().unwrap()));
    let vm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vm_file).unwrap()).unwrap();
    assert_eq!(vm["isolated"], true);
    // Replication goes on meanwhile, and the replica is untouched by the test failover.
    random_writes(disk, 20, 9);
    site.agent_once(&site.agent_config(state, std::slice::from_ref(disk), 1));
    assert_eq!(sha256_file(&copy), want, "later replication does not change the test failover");
    let o = lifeboat(site, &["test-failovers"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{tf}  {machine}")));
    assert_eq!(code(&lifeboat(site, &["test-failover", "no-such-machine"], None)), 4);
    assert_eq!(code(&lifeboat(site, &["test-failover", machine, "--point", "nope"], None)), 4);
    let o = lifeboat(site, &["cleanup", &tf], None);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!copy.exists() && !vm_file.exists(), "cleanup leaves nothing behind");
    assert_eq!(code(&lifeboat(site, &["cleanup", &tf], None)), 5, "cleaned twice");
    let o = lifeboat(site, &["jobs", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> =
        v["jobs"].as_array().unwrap().iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["test-failover-cleanup", "test-failover"]);
}

/// Policies: alerts and retention.
fn phase_policies(env: &Env) {
    let Env { site, cfg, disk, state, machine } = *env;
    // Policies: a strict RPO threshold raises a critical alert; a retention that keeps
    // only the newest point thins the points at the next cut.
    let o = lifeboat(
        site,
        &[
            "policy",
            "set",
            "strict",
            "--rpo-warning",
            "1",
            "--rpo-critical",
            "2",
            "--retention",
            "0:1s",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        code(&lifeboat(
            site,
            &["policy", "set", "bad", "--rpo-warning", "9", "--rpo-critical", "2"],
            None
        )),
        2
    );
    assert_eq!(code(&lifeboat(site, &["policy", "set", "bad", "--retention", "1h"], None)), 2);
    assert_eq!(code(&lifeboat(site, &["policy", "assign", machine, "strict"], None)), 0);
    assert_eq!(code(&lifeboat(site, &["policy", "delete", "strict"], None)), 5, "in use");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let o = lifeboat(site, &["alerts", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "rpo"
            && a["severity"] == "critical"
            && a["machine_id"] == machine),
        "{v}"
    );
    let before = site.points(cfg).len();
    assert!(before >= 2, "several points to thin");
    site.agent_once(&site.agent_config(state, std::slice::from_ref(disk), 1));
    wait_for(std::time::Duration::from_secs(30), "the policy's thinning", || {
        (site.points(cfg).len() == 1).then_some(())
    });
    let o = lifeboat(site, &["alerts"], None);
    assert_eq!(code(&o), 0);
}

/// The plugins, the groups, and the shell completions.
fn phase_plugins_groups_completions(env: &Env) {
    let Env { site, .. } = *env;
    let o = lifeboat(site, &["plugins", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<(&str, &str)> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("aes-gcm", "cipher"), ("local", "target"), ("zstd", "codec")]);
    // The local target declares its settings (manifest_version 2): what init gets now,
    // the grant's values (a secret's would never be shown).
    let local = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "local").unwrap();
    let settings: Vec<(&str, &str, bool)> = local["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["name"].as_str().unwrap(), s["type"].as_str().unwrap(), s["configured"] == true)
        })
        .collect();
    assert_eq!(settings, [("root", "string", true), ("host_root", "string", true)], "{local}");
    assert_eq!(local["settings"][0]["value"], "/target");
    assert_eq!(local["settings"][0]["default"], "/target");
    assert_eq!(code(&lifeboat(site, &["groups"], None)), 0);

    let o = lifeboat(site, &["completions", "bash"], None);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("lifeboat"));
}
