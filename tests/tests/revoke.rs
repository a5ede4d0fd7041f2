//! An administrator revokes a protected machine through the API: the process server refuses
//! its agent at once, and nothing it sends afterwards is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use lifeboat_e2e::*;
use lifeboat_net::tls::{self, Trust};
use std::time::Duration;

fn received_batches(site: &Site, cfg: &std::path::Path) -> u64 {
    site.stats(cfg)["received_batches"].as_u64().unwrap_or(0)
}

#[test]
fn a_revoked_machine_is_refused_at_once() {
    let site = Site::new();
    let (cfg, _appliance) = site.start_all();
    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 1);
    let state = site.root().join("agent-state");
    site.register_agent(&cfg, &state);
    let machine = Site::machine_id(&state);
    let agent_cfg = site.agent_config(&state, std::slice::from_ref(&disk), 1);
    site.agent_once(&agent_cfg);
    let before = received_batches(&site, &cfg);
    assert!(before > 0);

    // The administrator sets up the appliance and revokes the machine.
    let fingerprint = site.cli(&cfg, &["fingerprint"]).trim().to_owned();
    let setup = format!(
        r#"{{"setup_token":"{}","name":"admin","password":"correct horse battery"}}"#,
        site.cli(&cfg, &["setup-token"]).trim()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = tls::client_config(Trust::Fingerprint(fingerprint), None).unwrap();
        let c =
            lifeboat_net::Client::new(&format!("https://127.0.0.1:{}", site.config_port), config)
                .unwrap();
        let mut json = HeaderMap::new();
        json.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (st, _, body) = c.post("/api/v1/setup", Bytes::from(setup), json).await.unwrap();
        assert_eq!(st, 201, "{body:?}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut h = HeaderMap::new();
        let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&bearer).unwrap());
        let (st, _, body) =
            c.post(&format!("/api/v1/machines/{machine}/revoke"), Bytes::new(), h).await.unwrap();
        assert_eq!(st, 200, "{body:?}");
    });

    // The agent runs on with new changes: every request is refused.
    random_writes(&disk, 50, 2);
    let mut agent = site.start_agent(&agent_cfg);
    let log = site.root().join("agent.log");
    wait_for(Duration::from_secs(60), "the agent to be refused", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("was revoked by an administrator").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.running(), "the agent keeps running (and retrying) until someone acts");
    agent.stop();
    assert_eq!(received_batches(&site, &cfg), before, "nothing was accepted after the revocation");
}
