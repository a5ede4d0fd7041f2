//! Certificate renewal and CA rotation without registering agents again: the appliance
//! introduces a new CA, makes it active, and retires the old one; the agent follows at each
//! start (trusted CAs updated, certificate renewed) and keeps replicating. Retiring is
//! refused while a machine that is not revoked still holds an old certificate; afterwards
//! the old certificate is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::path::Path;
use std::time::Duration;

fn ca(site: &Site) -> serde_json::Value {
    site.lifeboat_json(&["ca", "status"])
}

/// What the phases of the rotation share: the site and its appliance's configuration, the
/// first machine's disk, agent state and configuration, and the two machines.
struct Env<'a> {
    site: &'a Site,
    cfg: &'a Path,
    disk: &'a Path,
    state: &'a Path,
    machine: &'a str,
    machine2: &'a str,
    agent_cfg: &'a Path,
}

#[test]
fn the_ca_rotates_while_the_agent_keeps_replicating() {
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 11);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    let mut points = 0;
    let mut cycle = |what: &str| {
        random_writes(&disk, 10, points as u64 + 100);
        site.agent_once(&agent_cfg);
        points += 1;
        let n = points;
        wait_for(Duration::from_secs(60), what, || (site.points(&cfg).len() == n).then_some(()));
    };
    cycle("a point before the rotation");
    site.lifeboat_setup(&cfg);
    let v = ca(&site);
    assert_eq!(v["phase"], "steady", "{v}");
    let old_ca = v["active"].as_str().unwrap().to_owned();
    assert_eq!(v["machines"][0]["on_active_ca"], true, "{v}");
    // What the agent holds before the rotation, to try it once the old CA is gone.
    let old_state = site.root().join("agent-state-before");
    std::fs::create_dir(&old_state).unwrap();
    for f in ["agent.crt", "agent.key", "ca.crt", "registration.json"] {
        std::fs::copy(state.join(f), old_state.join(f)).unwrap();
    }

    // A second machine that will never renew: it blocks the retirement until revoked.
    let state2 = site.root().join("agent2-state");
    site.register_agent(&cfg, &state2);
    let machine2 = Site::machine_id(&state2);

    let env = &Env {
        site: &site,
        cfg: &cfg,
        disk: &disk,
        state: &state,
        machine: &machine,
        machine2: &machine2,
        agent_cfg: &agent_cfg,
    };

    let new_ca = phase_introduce(env, &mut cycle, &old_ca);
    phase_promote(env, &mut cycle, &new_ca);
    phase_retire(env, &mut cycle);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    phase_old_identity_refused(env, &rt, &old_state);
    phase_new_identity_and_policy(env, &rt);
    phase_forced_renewal(env, &mut cycle);
}

/// The rotation's first step: a new CA is introduced and the agent trusts it; its id.
fn phase_introduce(env: &Env, cycle: &mut impl FnMut(&str), old_ca: &str) -> String {
    let Env { site, state, .. } = *env;
    // 1. Introduce: the agent now trusts both CAs; certificates still come from the old one.
    let v = site.lifeboat_json(&["ca", "rotate"]);
    assert_eq!(
        (v["phase"].as_str(), v["active"].as_str()),
        (Some("introducing"), Some(old_ca)),
        "{v}"
    );
    let new_ca = v["next"].as_str().unwrap().to_owned();
    cycle("a point while introducing");
    let trusted = std::fs::read_to_string(state.join("ca.crt")).unwrap();
    assert_eq!(trusted.matches("BEGIN CERTIFICATE").count(), 2, "the agent trusts both CAs");
    new_ca
}

/// The rotation's second step: the new CA made active (forced past machine 2); the agent
/// renews.
fn phase_promote(env: &Env, cycle: &mut impl FnMut(&str), new_ca: &str) {
    let Env { site, state, machine, machine2, .. } = *env;
    // 2. Promote: refused while machine 2 has not fetched the new CA (it would be locked
    // out); forced. The servers present the new CA's certificates; the agent renews.
    let o = site.lifeboat(&["ca", "rotate"], None);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(machine2));
    assert!(!String::from_utf8_lossy(&o.stderr).contains(machine), "machine 1 has the new CA");
    let v = site.lifeboat_json(&["ca", "rotate", "--force"]);
    assert_eq!(
        (v["phase"].as_str(), v["active"].as_str()),
        (Some("retiring"), Some(new_ca)),
        "{v}"
    );
    let cert_before = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    cycle("a point after the promotion");
    assert_ne!(std::fs::read_to_string(state.join("agent.crt")).unwrap(), cert_before, "renewed");
    let v = ca(site);
    let on_active = |v: &serde_json::Value, id: &str| {
        v["machines"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap()["on_active_ca"]
            .clone()
    };
    assert_eq!(on_active(&v, machine), true, "{v}");
    assert_eq!(on_active(&v, machine2), false, "{v}");
}

/// The rotation's last step: the old CA retired once machine 2 is revoked.
fn phase_retire(env: &Env, cycle: &mut impl FnMut(&str)) {
    let Env { site, machine2, .. } = *env;
    // 3. Retire: refused while machine 2 holds an old certificate; allowed once revoked.
    let o = site.lifeboat(&["ca", "rotate"], None);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(machine2));
    assert_eq!(site.lifeboat(&["revoke", machine2], None).status.code(), Some(0));
    let v = site.lifeboat_json(&["ca", "rotate"]);
    assert_eq!(v["phase"], "steady", "{v}");
    assert_eq!(v["retiring"].as_array().unwrap().len(), 0);
    cycle("a point after the retirement");
}

/// After the rotation the agent's identity from before it is refused by the process server.
fn phase_old_identity_refused(env: &Env, rt: &tokio::runtime::Runtime, old_state: &Path) {
    let Env { site, state, .. } = *env;
    // The pre-rotation identity is refused now: neither its certificate nor its trust works.
    let cert = std::fs::read_to_string(old_state.join("agent.crt")).unwrap();
    let key = std::fs::read_to_string(old_state.join("agent.key")).unwrap();
    let identity = lifeboat_net::Identity { cert_pem: cert, key_pem: key };
    // Trusting the new CA (so only the old certificate is at fault):
    let new_trust = std::fs::read_to_string(state.join("ca.crt")).unwrap();
    let tls =
        lifeboat_net::client_config(lifeboat_net::Trust::Ca(new_trust), Some(&identity)).unwrap();
    let c = lifeboat_net::Client::new(&format!("https://127.0.0.1:{}", site.ps_port), tls).unwrap();
    let r = rt.block_on(c.request(
        http::Method::GET,
        "/api/v1/trust",
        bytes::Bytes::new(),
        http::HeaderMap::new(),
    ));
    assert!(
        r.is_err() || !r.as_ref().unwrap().0.is_success(),
        "an old-CA certificate was accepted: {r:?}"
    );
}

/// The renewed identity works, and what the process server tells it carries the machine's
/// policy.
fn phase_new_identity_and_policy(env: &Env, rt: &tokio::runtime::Runtime) {
    let Env { site, state, machine, .. } = *env;
    // And the new agent certificate works.
    let fresh = lifeboat_net::Identity {
        cert_pem: std::fs::read_to_string(state.join("agent.crt")).unwrap(),
        key_pem: std::fs::read_to_string(state.join("agent.key")).unwrap(),
    };
    let tls = lifeboat_net::client_config(
        lifeboat_net::Trust::Ca(std::fs::read_to_string(state.join("ca.crt")).unwrap()),
        Some(&fresh),
    )
    .unwrap();
    let c = lifeboat_net::Client::new(&format!("https://127.0.0.1:{}", site.ps_port), tls).unwrap();
    let trust = || {
        rt.block_on(c.request(
            http::Method::GET,
            "/api/v1/trust",
            bytes::Bytes::new(),
            http::HeaderMap::new(),
        ))
        .unwrap()
    };
    assert!(trust().0.is_success());
    // A point every 7 s is refused where the target copies each point (no reflinks in
    // the test's folder); where it clones, it is allowed.
    let o = site.lifeboat(&["policy", "set", "fast", "--crash-interval", "7"], None);
    if o.status.code() == Some(2) {
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("instant points"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The same check carries the machine's policy's interval.
    let o = site.lifeboat(
        &[
            "policy",
            "set",
            "fast",
            "--crash-interval",
            "90",
            "--encryption",
            "off",
            "--compression-level",
            "3",
            "--app-interval",
            "1h",
            "--bandwidth-mbps",
            "800",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(site.lifeboat(&["policy", "assign", machine, "fast"], None).status.code(), Some(0));
    let t: serde_json::Value = serde_json::from_slice(&trust().2).unwrap();
    assert_eq!(t["interval_secs"], 90, "{t}");
    assert_eq!(t["app_interval_secs"], 3600, "{t}");
    assert_eq!(t["bandwidth"]["mbps"], 800.0, "{t}");
}

/// A forced renewal, then an unsealed point.
fn phase_forced_renewal(env: &Env, cycle: &mut impl FnMut(&str)) {
    let Env { site, cfg, disk, agent_cfg, .. } = *env;
    // A forced renewal works from the command line as well.
    let o = std::process::Command::new(site.bin.join("lifeboat-agent"))
        .args(["renew", "--config"])
        .arg(agent_cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // With encryption off by the policy, the logs travel unsealed and the point is right.
    cycle("a point after a forced renewal, unsealed");
    let points = site.points(cfg);
    let (_, id) = points.last().unwrap();
    assert_eq!(site.point_checksum(cfg, id, 0), sha256_file(disk), "the unsealed point");
}
