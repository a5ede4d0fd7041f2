//! `lifeboat` against a stand-in configuration server on 127.0.0.1 that answers what the
//! appliance answers, written out as JSON text (not through the CLI's types), and parses
//! each request body the way the appliance does: the CLI's typed requests are what the
//! routes take, its typed answers read what they give, and `--json` keeps every field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use lifeboat_api as api;
use lifeboat_net::server::{self, ApiError, RequestBody, ResponseBody};
use lifeboat_net::{Ca, ClientAuth, tls};

const JOB_RUNNING: &str = r#"{"id":7,"kind":"test-failover","machine_id":"m1","state":"running",
    "progress":0.0,"message":"test failover at Latest","created_unix_ms":5,
    "finished_unix_ms":null,"result":null}"#;
const JOB_DONE: &str = r#"{"id":7,"kind":"test-failover","machine_id":"m1","state":"succeeded",
    "progress":1.0,"message":"test failover ready","created_unix_ms":5,"finished_unix_ms":9,
    "result":{"test_failover":"tf7","vm":"tf7-m1","point":"p2","disks":[
        {"disk":0,"id":"tf7-m1-d0","location":"/t/tf7-m1-d0","instant":false}]}}"#;
const MACHINES: &str = r#"{"machines":[{"id":"m1","hostname":"web","registered_unix_ms":1,
    "disks":[{"index":0,"size":8388608}],"last_point":{"id":"p2","point":2,"kind":"crash",
    "created_unix_ms":4,"disks":[0]},"state":"protected","rpo_secs":3,"policy":"default",
    "last_seen_unix_ms":4,"initial_copy":null,"health":"normal","groups":[],
    "backlog_batches":0,"churn_mb_per_s":null}]}"#;

/// JSON text as a value, to compare whole answers.
fn value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("JSON")
}

type Seen = Arc<Mutex<Vec<(Method, String, String)>>>;

/// What the appliance answers `method path` with, after parsing the body as it does.
async fn appliance(
    seen: Seen,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let authed = req.headers().get(http::header::AUTHORIZATION).is_some_and(|v| v == "Bearer tok");
    let body = server::read_body(req.into_body()).await?;
    seen.lock().unwrap().push((
        method.clone(),
        path.clone(),
        String::from_utf8_lossy(&body).into(),
    ));
    // As the appliance's `body_json`: one JSON object of the route's type (400 otherwise).
    macro_rules! takes {
        ($t:ty) => {{
            let _: $t = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
        }};
    }
    if path != "/api/v1/login" && !authed {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "log in"));
    }
    let answer = match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/login") => {
            takes!(api::Credentials);
            r#"{"token":"tok","name":"admin","expires_unix_ms":99}"#
        }
        ("GET", "/api/v1/session") => r#"{"name":"admin","expires_unix_ms":99}"#,
        ("GET", "/api/v1/machines") => MACHINES,
        ("GET", "/api/v1/machines/nope/points") => {
            return Err(ApiError::not_found("unknown_machine", "id: no machine \"nope\""));
        }
        ("POST", "/api/v1/machines/m1/revoke") => r#"{"revoked":true}"#,
        ("GET", "/api/v1/passphrases") => r#"{"unused":1}"#,
        ("POST", "/api/v1/passphrases") => {
            r#"{"passphrase":"correct-horse-battery-staple","dropped":0}"#
        }
        ("POST", "/api/v1/machines/m1/test-failover") => {
            takes!(api::TestFailoverRequest);
            JOB_RUNNING
        }
        ("GET", "/api/v1/jobs/7") => JOB_DONE,
        ("PUT", "/api/v1/policies/strict") => {
            takes!(api::Policy);
            r#"{"policies":[{"name":"default","policy":{"rpo_warning_secs":900,
                "rpo_critical_secs":1800,"silent_secs":900,"retention":null,
                "crash_interval_secs":null,"compression_level":null,"app_interval_secs":null,
                "bandwidth":null,"encryption":null},"machines":["m1"]}]}"#
        }
        ("POST", "/api/v1/jobs/7/continue") => {
            if !body.is_empty() {
                takes!(api::ContinueStep);
            }
            r#"{"continued":true,"step":1}"#
        }
        ("POST", "/api/v1/logout") => "{}",
        _ => return Err(ApiError::not_found("not_found", format!("no such endpoint: {path}"))),
    };
    let status =
        if path.ends_with("/test-failover") { StatusCode::ACCEPTED } else { StatusCode::OK };
    server::json(status, &value(answer))
}

#[test]
fn typed_calls_against_the_appliances_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), "test CA").unwrap();
    let config = tls::server_config(&ca.issue_server(&[]).unwrap(), ClientAuth::None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let handler = move |req| appliance(s2.clone(), req);
    rt.spawn(server::serve(listener, config, handler, std::future::pending::<()>()));

    let session = dir.path().join("session.json");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .arg("--session")
            .arg(&session)
            .args(args)
            .env("LIFEBOAT_PASSWORD", "correct horse battery")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        (o.status.code().unwrap_or(-1), text, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let (code, out, err) = run(&[args, &["--json"]].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };

    let login =
        ["login", "--url", url.as_str(), "--fingerprint", ca.fingerprint(), "--name", "admin"];
    let v = json(&login);
    assert_eq!(v, value(r#"{"name":"admin","expires_unix_ms":99}"#), "no token shown");
    assert_eq!(run(&["whoami"]).1, "\"admin\" (session ends at 99 ms)");

    let v = json(&["machines"]);
    assert_eq!(v, value(MACHINES), "every field");
    assert_eq!(
        run(&["machines"]).1,
        "m1  web  protected  disks 0:8388608 B  point 2 (crash), RPO 3 s"
    );
    assert_eq!(run(&["points", "nope"]).0, 4);
    assert_eq!(json(&["revoke", "m1"]), value(r#"{"revoked":true}"#));
    assert_eq!(json(&["passphrase", "status"]), value(r#"{"unused":1}"#));
    assert_eq!(run(&["passphrase", "rotate"]).1, "correct-horse-battery-staple");

    // A job is waited for; --json shows it whole, its result as the appliance gave it.
    let v = json(&["test-failover", "m1", "--point", "latest-processed"]);
    assert_eq!(v, value(JOB_DONE));
    let (code, text, _) = run(&["test-failover", "m1"]);
    assert_eq!((code, text.as_str()), (0, "test failover tf7 ready: VM tf7-m1 at point p2"));
    assert_eq!(json(&["test-failover", "m1", "--no-wait"]), value(JOB_RUNNING));

    let (code, text, err) =
        run(&["policy", "set", "strict", "--rpo-warning", "1", "--retention", "0:1s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        text,
        "default  rpo 900s/1800s  silent 900s  retention appliance default  machines 1"
    );
    assert_eq!(run(&["plan", "continue", "7", "--step", "1"]).1, "continued");
    assert_eq!(run(&["plan", "continue", "7"]).0, 0, "an empty body");
    assert_eq!(run(&["logout"]), (0, "logged out".into(), String::new()));
    assert_eq!(run(&["machines"]).0, 3, "logged out");

    // The bodies as sent.
    let seen = seen.lock().unwrap();
    let body = |m: &str, p: &str| {
        seen.iter().filter(|s| s.0 == m && s.1 == p).map(|s| s.2.clone()).collect::<Vec<_>>()
    };
    let policy: api::Policy =
        serde_json::from_str(&body("PUT", "/api/v1/policies/strict")[0]).unwrap();
    assert_eq!((policy.rpo_warning_secs, policy.rpo_critical_secs), (1, 1800));
    assert_eq!(policy.retention, Some(vec![api::RetentionTier { every_secs: 0, for_secs: 1 }]));
    let tf = body("POST", "/api/v1/machines/m1/test-failover");
    assert_eq!(tf[0], r#"{"point":"latest-processed"}"#);
    assert_eq!(body("POST", "/api/v1/jobs/7/continue"), [r#"{"step":1}"#, ""]);
    assert_eq!(body("POST", "/api/v1/machines/m1/revoke"), [""]);
}
