//! The configuration server's administrator API over real HTTPS on 127.0.0.1: every endpoint
//! with valid and invalid input and with the wrong identity (none, an expired or logged-out
//! token, an agent's client certificate), every answer checked against the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use lifeboat_appliance::http::{ConfigServer, ConfigServerCtx, openapi_document};
use lifeboat_appliance::store::State;
use lifeboat_net::tls::{self, ClientAuth, Trust};
use lifeboat_net::{Ca, Client, Identity};
use lifeboat_plugin_host::registry::Registry;
use lifeboat_wire::MachineId;
use serde_json::Value;

// Machines of the tests; their text form is in the paths and bodies below
// (`11111111-1111-1111-1111-111111111111` is M1); `99999999-…` is never registered.
const M1: MachineId = MachineId([0x11; 16]);
const M2: MachineId = MachineId([0x22; 16]);
const MA: MachineId = MachineId([0xaa; 16]);
const MB: MachineId = MachineId([0xbb; 16]);
const MC: MachineId = MachineId([0xcc; 16]);
const MX: MachineId = MachineId([0xee; 16]);

struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    ca: Arc<Ca>,
    state: State,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start() -> Server {
    start_with(None).await
}

async fn start_with(registry: Option<Arc<Registry>>) -> Server {
    start_full(registry, None).await
}

async fn start_full(
    registry: Option<Arc<Registry>>,
    downloads: Option<lifeboat_appliance::config_server::downloads::Downloads>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(lifeboat_appliance::config_server::pki::Pki::load(dir.path(), &[]).unwrap());
    let ca = pki.active();
    let state = State::open(&dir.path().join("state.db")).unwrap();
    let id = ca.issue_server(&[]).unwrap();
    let ctx = Arc::new(ConfigServerCtx {
        state: state.clone(),
        admins: lifeboat_appliance::config_server::admin::Admins::new(state.clone()),
        failover: None,
        pki: pki.clone(),
        process_server_url: "https://127.0.0.1:9443".into(),
        data_dir: dir.path().to_owned(),
        plans: Arc::new(lifeboat_appliance::config_server::plan::Plans::default()),
        registry,
        sample_secs: 60,
        keys: lifeboat_plugin_host::keys::KeyRing::new(vec![lifeboat_plugin_host::keys::Key::new(
            "dk-1",
            lifeboat_plugin_host::keys::Algorithm::Aes256Gcm,
            &[9; 32],
            true,
        )]),
        target: "local".into(),
        downloads: downloads.map(Arc::new),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The configuration server's own TLS source, so that an uploaded certificate is used.
    let _ = (&id, ClientAuth::None);
    let server_tls = pki.config_tls().unwrap();
    let server = Arc::new(ConfigServer::new(ctx));
    tokio::spawn(lifeboat_net::serve(
        listener,
        server_tls,
        move |req| {
            let server = server.clone();
            async move { server.serve(req).await }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Server { dir, addr, ca, state, stop: Some(stop) }
}

impl Server {
    fn client(&self, identity: Option<&Identity>) -> Client {
        let config = tls::client_config(Trust::Ca(self.ca.cert_pem().into()), identity).unwrap();
        Client::new(&format!("https://{}", self.addr), config).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A request; returns the status and the JSON body, checked against the OpenAPI document's
/// schema for that (method, path, status).
async fn call(
    c: &Client,
    method: Method,
    path: &str,
    template: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    if !body.is_empty() {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let (status, _, bytes) =
        c.request(method.clone(), path, Bytes::from(body.to_owned()), headers).await.unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    conforms(&method, template, status, &v);
    (status, v)
}

/// Issue 11, findings 5 and 8: what reaches the configuration server before anyone is
/// authenticated is bounded, paths that are no route are 404 (they used to panic in
/// string slicing), JSON must say it is JSON, pages of other origins are refused, and
/// wrong registration passphrases are limited like failed logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layer_refuses_what_it_should() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let auth = |extra: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    for (method, path) in [
        (Method::POST, "/api/v1/machines/revoke"),
        (Method::GET, "/api/v1/machines/points"),
        (Method::POST, "/api/v1/test-failovers/cleanup"),
        (Method::POST, "/api/v1/plans/run"),
        (Method::POST, "/api/v1/jobs/continue"),
        (Method::PUT, "/api/v1/plans/"),
        (Method::GET, "/api/v1/jobs/"),
    ] {
        let (st, _, body) = c.request(method.clone(), path, Bytes::new(), auth(&[])).await.unwrap();
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}: {body:?}");
    }
    // A JSON body not declared as such (what an HTML form sends) is refused.
    let policy = Bytes::from_static(br#"{"rpo_warning_secs":600}"#);
    let (st, _, body) =
        c.request(Method::PUT, "/api/v1/policies/p1", policy.clone(), auth(&[])).await.unwrap();
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body:?}");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (st, _, _) =
        c.request(Method::PUT, "/api/v1/policies/p1", policy.clone(), auth(&form)).await.unwrap();
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Another origin is refused; the appliance's own is not.
    let json = ("content-type", "application/json; charset=utf-8");
    let evil = [json, ("origin", "https://evil.example")];
    let (st, _, body) =
        c.request(Method::PUT, "/api/v1/policies/p1", policy.clone(), auth(&evil)).await.unwrap();
    assert_eq!(st, StatusCode::FORBIDDEN, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("origin_mismatch"));
    let own = format!("https://{}", s.addr);
    let ours = [json, ("origin", own.as_str())];
    let (st, _, body) =
        c.request(Method::PUT, "/api/v1/policies/p1", policy, auth(&ours)).await.unwrap();
    assert_eq!(st, StatusCode::OK, "{body:?}");
    // Unauthenticated bodies are read only up to a few KiB.
    let big = format!(r#"{{"name":"{}","password":"correct horse battery"}}"#, "n".repeat(8192));
    let (st, v) = call(&c, Method::POST, "/api/v1/login", "/api/v1/login", None, &big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // Wrong registration passphrases: five, then 429 whatever is sent.
    let (_, csr) = Identity::generate_csr("agent").unwrap();
    let register = |p: &str| {
        serde_json::json!({
            "passphrase": p, "csr_pem": csr, "hostname": "web01",
            "protocol_versions": lifeboat_wire::PROTOCOL_VERSIONS,
        })
        .to_string()
    };
    for i in 0..5 {
        let (st, v) = call(
            &c,
            Method::POST,
            "/api/v1/register",
            "/api/v1/register",
            None,
            &register(&format!("wrong-{i}")),
        )
        .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    }
    s.state.add_passphrase("right-one").unwrap();
    let (st, v) = call(
        &c,
        Method::POST,
        "/api/v1/register",
        "/api/v1/register",
        None,
        &register("right-one"),
    )
    .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(!s.state.register_machine("wrong-0", MX, "h").unwrap());
}

/// The generated OpenAPI document, as JSON.
fn doc() -> Value {
    serde_json::to_value(openapi_document()).expect("the OpenAPI document is JSON")
}

/// The answer must be a documented status of the operation, and valid against its
/// schema (checked by the `jsonschema` crate, the document's components alongside so
/// that its references resolve).
fn conforms(method: &Method, template: &str, status: StatusCode, v: &Value) {
    let d = doc();
    let op = &d["paths"][template][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the OpenAPI document");
    let resp = &op["responses"][status.as_str()];
    assert!(
        resp.is_object(),
        "{method} {template} answered {status}, which the document does not list: {v}"
    );
    if let Some(schema) = resp.pointer("/content/application~1json/schema") {
        let mut root = schema.clone();
        root["components"] = d["components"].clone();
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{method} {template} {status}: {errors:?} in {v}");
    }
}

/// The appliance's setup token, as `lifeboat-appliance setup-token` shows it.
fn setup_token(state: &State) -> String {
    lifeboat_appliance::config_server::admin::setup_token(state).unwrap().unwrap()
}

/// The first administrator, set up through the API; its session token.
async fn setup_admin(c: &Client, state: &State) -> String {
    let body = format!(
        r#"{{"setup_token":"{}","name":"root","password":"correct horse battery"}}"#,
        setup_token(state)
    );
    let (st, v) = call(c, Method::POST, "/api/v1/setup", "/api/v1/setup", None, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// The router and the document come from the same handlers; this checks it from
/// outside: every documented operation is served (whatever it answers without a session,
/// it is not the router's "no such endpoint"), and what is not documented is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_documented_operations() {
    let s = start().await;
    let c = s.client(None);
    let d = doc();
    let mut operations = 0;
    for (template, ops) in d["paths"].as_object().unwrap() {
        let path = template.replace("{id}", "x").replace("{name}", "x");
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (_, _, bytes) =
                c.request(m.clone(), &path, Bytes::new(), HeaderMap::new()).await.unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_ne!(v["code"], "not_found", "{m} {template} is documented but not served");
            operations += 1;
        }
    }
    assert_eq!(operations, 66, "the document lists every operation of the configuration server");
    for (m, path) in [
        (Method::GET, "/api/v1/nothing"),
        (Method::DELETE, "/api/v1/machines"),
        (Method::PUT, "/api/v1/health"),
        (Method::GET, "/api/v1/machines/x/y/z"),
    ] {
        let (st, _, bytes) =
            c.request(m.clone(), path, Bytes::new(), HeaderMap::new()).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{m} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_login_sessions_and_identities() {
    let s = start().await;
    let c = s.client(None);
    let (st, v) = call(&c, Method::GET, "/api/v1/setup", "/api/v1/setup", None, "").await;
    assert_eq!((st, &v["needed"]), (StatusCode::OK, &Value::Bool(true)));

    // Nothing is served to anyone before setup, and bad setups write nothing.
    let (st, _) = call(&c, Method::GET, "/api/v1/machines", "/api/v1/machines", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let t = setup_token(&s.state);
    for (body, field) in [
        (r#"{"setup_token":"T","name":"root","password":"short"}"#, "password"),
        (r#"{"setup_token":"T","name":"bad name","password":"long enough password"}"#, "name"),
        (r#"{"setup_token":"T","name":"root"}"#, "password"),
        (r#"{"name":"root","password":"long enough password"}"#, "setup_token"),
        (r#"{"setup_token":"T","name":"root","password":"long enough pw","admin":1}"#, "admin"),
        (r#"{"setup_token":"T","name":1,"password":"long enough password"}"#, "name"),
        ("{", ""),
    ] {
        let body = body.replace(r#""T""#, &format!("{t:?}"));
        let (st, v) = call(&c, Method::POST, "/api/v1/setup", "/api/v1/setup", None, &body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    // Whoever reaches 443 first cannot claim the appliance without its token.
    for wrong in ["", "AAAAA-AAAAA-AAAAA-AAAAA"] {
        let body = format!(
            r#"{{"setup_token":"{wrong}","name":"root","password":"correct horse battery"}}"#
        );
        let (st, v) = call(&c, Method::POST, "/api/v1/setup", "/api/v1/setup", None, &body).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("bad_setup_token")),
            "{v}"
        );
    }
    let (_, v) = call(&c, Method::GET, "/api/v1/setup", "/api/v1/setup", None, "").await;
    assert_eq!(v["needed"], true, "a refused setup left nothing behind");

    let good =
        format!(r#"{{"setup_token":"{t}","name":"root","password":"correct horse battery"}}"#);
    let good = good.as_str();
    let (st, v) = call(&c, Method::POST, "/api/v1/setup", "/api/v1/setup", None, good).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let (st, _) = call(&c, Method::POST, "/api/v1/setup", "/api/v1/setup", None, good).await;
    assert_eq!(st, StatusCode::CONFLICT);

    session_and_machines(&s, &c, &token).await;
    passphrases_and_revocation(&s, &c, &token).await;
    jobs_and_test_failovers(&s, &c, &token).await;
    wrong_identities(&s, &c).await;
    login_logout_and_lockout(
        &s,
        &c,
        &token,
        r#"{"name":"root","password":"correct horse battery"}"#,
    )
    .await;
    metrics_and_document(&s, &c, &token).await;
}

/// [`setup_login_sessions_and_identities`]: the session and the machines list.
async fn session_and_machines(s: &Server, c: &Client, token: &str) {
    // The session works; the machines list is served.
    let (st, v) = call(c, Method::GET, "/api/v1/session", "/api/v1/session", Some(token), "").await;
    assert_eq!((st, v["name"].as_str()), (StatusCode::OK, Some("root")));
    assert!(v.get("token").is_none(), "the session endpoint does not repeat the token");
    s.state.add_passphrase("p").unwrap();
    s.state.register_machine("p", M1, "web01").unwrap();
    s.state.upsert_disk(M1, 0, 1 << 30, "/dev/sda").unwrap();
    let (st, v) =
        call(c, Method::GET, "/api/v1/machines", "/api/v1/machines", Some(token), "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["machines"][0]["hostname"], "web01");
    assert_eq!(v["machines"][0]["disks"][0]["size"], 1u64 << 30);
    let (st, v) = call(
        c,
        Method::GET,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/points",
        "/api/v1/machines/{id}/points",
        Some(token),
        "",
    )
    .await;
    assert_eq!((st, v["points"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) = call(
        c,
        Method::GET,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/points",
        "/api/v1/machines/{id}/points",
        Some(token),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The machine's history: what the sampler stored, of the hours asked for.
    let now = lifeboat_appliance::store::now_ms();
    let sample = |unix_ms, rpo_secs| lifeboat_appliance::store::SampleRow {
        machine_id: M1,
        unix_ms,
        span_secs: 60,
        rpo_secs,
        received_bytes: 6_000_000,
        backlog_batches: 2,
    };
    s.state
        .add_samples(&[
            sample(now - 30 * 3600 * 1000, Some(9)),
            sample(now - 60_000, None),
            sample(now, Some(4)),
        ])
        .unwrap();
    let h = "/api/v1/machines/{id}/history";
    let m1 = "/api/v1/machines/11111111-1111-1111-1111-111111111111/history";
    let (st, v) = call(c, Method::GET, m1, h, Some(token), "").await;
    assert_eq!((st, v["sample_secs"].as_u64()), (StatusCode::OK, Some(60)), "{v}");
    let got: Vec<_> =
        v["samples"].as_array().unwrap().iter().map(|x| x["rpo_secs"].clone()).collect();
    assert_eq!(got, vec![Value::Null, serde_json::json!(4)], "24 hours by default: {v}");
    assert_eq!(v["samples"][1]["received_bytes"], 6_000_000);
    let (st, v) = call(c, Method::GET, &format!("{m1}?hours=48"), h, Some(token), "").await;
    assert_eq!((st, v["samples"].as_array().map(Vec::len)), (StatusCode::OK, Some(3)));
    for bad in ["hours=0", "hours=9999", "hours=x", "since=1"] {
        let (st, v) = call(c, Method::GET, &format!("{m1}?{bad}"), h, Some(token), "").await;
        assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_query")), "{bad}");
    }
    let other = "/api/v1/machines/99999999-9999-9999-9999-999999999999/history";
    let (st, _) = call(c, Method::GET, other, h, Some(token), "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(c, Method::GET, m1, h, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Testing a plugin this appliance has not loaded (it loads none here).
    let t = "/api/v1/plugins/{name}/health";
    let (st, v) = call(c, Method::POST, "/api/v1/plugins/local/health", t, Some(token), "").await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_plugin")), "{v}");
    let (st, _) = call(c, Method::POST, "/api/v1/plugins/local/health", t, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// [`setup_login_sessions_and_identities`]: registration passphrases and the revocation of machines.
async fn passphrases_and_revocation(s: &Server, c: &Client, token: &str) {
    // Passphrases: counted, rotated (the old one stops working), revocation of machines.
    let (st, v) =
        call(c, Method::GET, "/api/v1/passphrases", "/api/v1/passphrases", Some(token), "").await;
    assert_eq!((st, v["unused"].as_u64()), (StatusCode::OK, Some(0)));
    s.state.add_passphrase("old-one").unwrap();
    let (st, v) =
        call(c, Method::POST, "/api/v1/passphrases", "/api/v1/passphrases", Some(token), "").await;
    assert_eq!((st, v["dropped"].as_u64()), (StatusCode::CREATED, Some(1)), "{v}");
    let fresh = v["passphrase"].as_str().unwrap().to_owned();
    assert!(!s.state.register_machine("old-one", M2, "x").unwrap(), "rotated away");
    assert!(s.state.register_machine(&fresh, M2, "db01").unwrap());
    let (st, _) =
        call(c, Method::POST, "/api/v1/passphrases", "/api/v1/passphrases", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/revoke",
        "/api/v1/machines/{id}/revoke",
        Some(token),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/22222222-2222-2222-2222-222222222222/revoke",
        "/api/v1/machines/{id}/revoke",
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(!s.state.is_revoked(M2).unwrap());
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/22222222-2222-2222-2222-222222222222/revoke",
        "/api/v1/machines/{id}/revoke",
        Some(token),
        "",
    )
    .await;
    assert_eq!((st, &v["revoked"]), (StatusCode::OK, &Value::Bool(true)));
    assert!(s.state.is_revoked(M2).unwrap());
}

/// [`setup_login_sessions_and_identities`]: jobs and test failovers.
async fn jobs_and_test_failovers(s: &Server, c: &Client, token: &str) {
    // Jobs and test failovers: listed (none yet), bad input and unknown ids refused; without
    // a master target on this appliance a test failover is a conflict.
    let (st, v) = call(c, Method::GET, "/api/v1/jobs", "/api/v1/jobs", Some(token), "").await;
    assert_eq!((st, v["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) =
        call(c, Method::GET, "/api/v1/jobs/x", "/api/v1/jobs/{id}", Some(token), "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) =
        call(c, Method::GET, "/api/v1/jobs/99", "/api/v1/jobs/{id}", Some(token), "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) =
        call(c, Method::GET, "/api/v1/test-failovers", "/api/v1/test-failovers", Some(token), "")
            .await;
    assert_eq!((st, v["test_failovers"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/test-failovers/tf1/cleanup",
        "/api/v1/test-failovers/{id}/cleanup",
        Some(token),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let tfo = "/api/v1/machines/{id}/test-failover";
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        Some(token),
        r#"{"pointt":"x"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/test-failover",
        tfo,
        Some(token),
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        Some(token),
        "{}",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_point")), "{v}");
    s.state
        .add_point(&lifeboat_appliance::store::PointRow {
            id: "11111111-1111-1111-1111-111111111111-p1".into(),
            machine_id: M1,
            point: 1,
            kind: lifeboat_api::PointKind::Crash,
            created_unix_ms: 1,
            disks: vec![0],
        })
        .unwrap();
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        Some(token),
        r#"{"point":"11111111-1111-1111-1111-111111111111-p7"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        Some(token),
        r#"{"point":"latest-app"}"#,
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_point")),
        "only a crash point: {v}"
    );
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        Some(token),
        "{}",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("no_master_target")), "{v}");
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/test-failover",
        tfo,
        None,
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// [`setup_login_sessions_and_identities`]: what is not an administrator's identity.
async fn wrong_identities(s: &Server, c: &Client) {
    // Wrong identities: no token, a made-up one, an agent's client certificate.
    for t in [None, Some("0000"), Some("not a token at all")] {
        let (st, _) = call(c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{t:?}");
    }
    let (key_pem, csr) = Identity::generate_csr("agent").unwrap();
    let agent = Identity {
        cert_pem: s.ca.sign_client_csr(&csr, "11111111-1111-1111-1111-111111111111", 30).unwrap(),
        key_pem,
    };
    let as_agent = s.client(Some(&agent));
    let (st, _) =
        call(&as_agent, Method::GET, "/api/v1/machines", "/api/v1/machines", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "an agent certificate is not an admin identity");
}

/// [`setup_login_sessions_and_identities`]: login, logout, expired sessions and the limit on
/// failed logins; `good` is the administrator's right credentials.
async fn login_logout_and_lockout(s: &Server, c: &Client, token: &str, good: &str) {
    // Login and logout.
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/login",
        "/api/v1/login",
        None,
        r#"{"name":"root","password":"wrong password!!"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(c, Method::POST, "/api/v1/login", "/api/v1/login", None, good).await;
    assert_eq!(st, StatusCode::OK);
    let second = v["token"].as_str().unwrap().to_owned();
    let (st, _) =
        call(c, Method::POST, "/api/v1/logout", "/api/v1/logout", Some(&second), "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) =
        call(c, Method::GET, "/api/v1/session", "/api/v1/session", Some(&second), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "a logged-out token is dead");
    let (st, _) = call(c, Method::POST, "/api/v1/logout", "/api/v1/logout", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // An expired session is dead too.
    let expired = "e".repeat(64);
    use sha2::Digest as _;
    let key = hex::encode(sha2::Sha256::digest(expired.as_bytes()));
    let hash = s.state.admin_hash("root").unwrap().unwrap();
    assert!(s.state.add_session(&key, "root", 1, &hash).unwrap());
    // A session is recorded only while the password checked is still the administrator's
    // (a login racing a password change or a removal gets none).
    assert!(!s.state.add_session(&"f".repeat(64), "root", u64::MAX / 2, "an-old-hash").unwrap());
    assert!(!s.state.add_session(&"f".repeat(64), "nobody", u64::MAX / 2, &hash).unwrap());
    let (st, _) =
        call(c, Method::GET, "/api/v1/session", "/api/v1/session", Some(&expired), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Five failures, then 429 even with the right password.
    for _ in 0..5 {
        call(
            c,
            Method::POST,
            "/api/v1/login",
            "/api/v1/login",
            None,
            r#"{"name":"root","password":"wrong password!!"}"#,
        )
        .await;
    }
    let (st, v) = call(c, Method::POST, "/api/v1/login", "/api/v1/login", None, good).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // The first session is still valid.
    let (st, _) = call(c, Method::GET, "/api/v1/session", "/api/v1/session", Some(token), "").await;
    assert_eq!(st, StatusCode::OK);
}

/// [`setup_login_sessions_and_identities`]: the Prometheus metrics and the served document.
async fn metrics_and_document(s: &Server, c: &Client, token: &str) {
    // Prometheus metrics, for an authenticated scraper only.
    s.state.count(&[(lifeboat_appliance::store::Counter::ReceivedBatches, 3)]).unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (st, _, body) = c.get("/metrics", h).await.unwrap();
    assert_eq!(st, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("lifeboat_received_batches_total 3"), "{text}");
    assert!(text.contains("lifeboat_machines 2"), "{text}");
    assert!(
        text.contains("lifeboat_points{machine=\"11111111-1111-1111-1111-111111111111\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "lifeboat_last_point_age_seconds{machine=\"11111111-1111-1111-1111-111111111111\"}"
        ),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() && !name.is_empty(), "not a sample: {line}");
    }
    let (st, _) = call(c, Method::GET, "/metrics", "/metrics", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The document itself is served.
    let (st, _, body) = c.get("/api/v1/openapi.json", HeaderMap::new()).await.unwrap();
    assert_eq!(st, StatusCode::OK);
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, doc());
    assert_eq!(served["openapi"].as_str().map(|v| &v[..2]), Some("3."), "{}", served["openapi"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_and_vm_specs() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    s.state.add_passphrase("p").unwrap();
    s.state.register_machine("p", M1, "web01").unwrap();
    s.state.upsert_disk(M1, 0, 1 << 30, "/dev/sda").unwrap();
    s.state.upsert_disk(M1, 1, 1 << 30, "/dev/sdb").unwrap();
    let spec = "/api/v1/machines/{id}/vm-spec";
    let cm = "/api/v1/machines/{id}/commit";

    vm_spec_defaults_and_detected(&s, &c, t, spec).await;
    vm_spec_settings(&s, &c, t, spec).await;
    failover_and_commit_checks(&s, &c, t, cm).await;
    failover_under_way_reprotect_failback(&s, &c, t, cm).await;
    recovery_passphrase(&s, &c, t).await;
}

/// [`failovers_and_vm_specs`]: the VM specification before and after the agent's detection.
async fn vm_spec_defaults_and_detected(s: &Server, c: &Client, t: Option<&str>, spec: &str) {
    // Nothing detected yet: defaults.
    let (st, v) = call(
        c,
        Method::GET,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
        spec,
        t,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["firmware"].as_str(), v["cpus"].as_u64()), (Some("bios"), Some(2)));
    assert_eq!(v["disks"], serde_json::json!([0, 1]));
    assert!(v["detected"].is_null());
    let (st, _) = call(
        c,
        Method::GET,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/vm-spec",
        spec,
        t,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A path id that is not a machine id at all names no machine either.
    for bad in [
        "m-1",
        "11111111-1111-1111-1111-11111111111",
        "..%2F..",
        "zz111111-1111-1111-1111-111111111111",
    ] {
        let (st, v) =
            call(c, Method::GET, &format!("/api/v1/machines/{bad}/vm-spec"), spec, t, "").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_machine")),
            "{bad}: {v}"
        );
    }
    let (st, _) = call(
        c,
        Method::GET,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
        spec,
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // What the agent detected.
    s.state
        .set_machine_facts(
            M1,
            r#"{"firmware":"uefi","cpus":8,"memory_mib":16384,"nics":[{"name":"eth0","mac":"52:54:00:aa:bb:cc","addresses":["10.1.2.3/24"]}]}"#,
        )
        .unwrap();
    let (_, v) = call(
        c,
        Method::GET,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
        spec,
        t,
        "",
    )
    .await;
    assert_eq!((v["firmware"].as_str(), v["cpus"].as_u64()), (Some("uefi"), Some(8)), "{v}");
    assert_eq!(v["nics"][0]["network"], "default");
    assert_eq!(v["nics"][0]["mac"], "52:54:00:aa:bb:cc");
    assert_eq!(v["detected"]["nics"][0]["addresses"][0], "10.1.2.3/24");
}

/// [`failovers_and_vm_specs`]: the administrator's VM settings, bad and good.
async fn vm_spec_settings(s: &Server, c: &Client, t: Option<&str>, spec: &str) {
    // Bad settings are refused, naming the field, and change nothing.
    for (body, field) in [
        (r#"{"firmware":"coreboot"}"#, "firmware"),
        (r#"{"cpus":0}"#, "cpus"),
        (r#"{"cpus":-1}"#, "cpus"),
        (r#"{"memory_mib":64}"#, "memory_mib"),
        (r#"{"boot_disk":7}"#, "boot_disk"),
        (r#"{"nics":[{"source":"eth0","network":"dr\tnet"}]}"#, "nics[0].network"),
        (r#"{"nics":[{"source":"eth0","network":"dr","mac":"52:54"}]}"#, "nics[0].mac"),
        (r#"{"nics":[{"source":"eth0","network":"dr","ip":"10.0.0.300/24"}]}"#, "nics[0].ip"),
        (r#"{"nics":[{"source":"eth0","network":"dr","ip":"10.0.0.3/33"}]}"#, "nics[0].ip"),
        (r#"{"nics":[{"source":"","network":"dr"}]}"#, "nics[0].source"),
        (
            r#"{"nics":[{"source":"eth0","network":"a"},{"source":"eth0","network":"b"}]}"#,
            "nics[1].source",
        ),
        (r#"{"nics":[{"network":"dr"}]}"#, "source"),
        (r#"{"cores":4}"#, "cores"),
        ("[]", ""),
    ] {
        let (st, v) = call(
            c,
            Method::PUT,
            "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
            spec,
            t,
            body,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    assert!(s.state.vm_settings(M1).unwrap().is_none());
    let (st, _) = call(
        c,
        Method::PUT,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
        spec,
        None,
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(
        c,
        Method::PUT,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/vm-spec",
        spec,
        t,
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Good settings: over the detected values; the boot disk goes first; an interface keeps
    // its detected MAC unless one is given.
    let (st, v) = call(
        c,
        Method::PUT,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/vm-spec",
        spec,
        t,
        r#"{"firmware":"bios","memory_mib":4096,"boot_disk":1,
            "nics":[{"source":"eth0","network":"dr-lan","ip":"192.0.2.7/24"},
                    {"source":"backup","network":"dr-backup","mac":"52:54:00:00:00:01"}]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["firmware"].as_str(), v["cpus"].as_u64()), (Some("bios"), Some(8)));
    assert_eq!(v["memory_mib"], 4096);
    assert_eq!(v["disks"], serde_json::json!([1, 0]));
    assert_eq!(v["nics"][0]["mac"], "52:54:00:aa:bb:cc");
    assert_eq!(v["nics"][0]["ip"], "192.0.2.7/24");
    assert_eq!(v["nics"][1]["network"], "dr-backup");
}

/// [`failovers_and_vm_specs`]: failover and commit refused without a master target.
async fn failover_and_commit_checks(s: &Server, c: &Client, t: Option<&str>, cm: &str) {
    // Failover and commit: state checks; this appliance has no master target.
    let fo = "/api/v1/machines/{id}/failover";
    let (st, v) = call(c, Method::GET, "/api/v1/failovers", "/api/v1/failovers", t, "").await;
    assert_eq!((st, v["failovers"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) = call(c, Method::GET, "/api/v1/failovers", "/api/v1/failovers", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/failover",
        fo,
        t,
        "{}",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_point")), "{v}");
    for (body, code) in [
        (r#"{"point":"latest-processed"}"#, "no_point"),
        (r#"{"point":"latest-group"}"#, "no_point"),
        (r#"{"point":"11111111-1111-1111-1111-111111111111-p9"}"#, "unknown_point"),
    ] {
        let (st, v) = call(
            c,
            Method::POST,
            "/api/v1/machines/11111111-1111-1111-1111-111111111111/failover",
            fo,
            t,
            body,
        )
        .await;
        assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some(code)), "{body}: {v}");
    }
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/failover",
        fo,
        t,
        r#"{"point":1}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/failover",
        fo,
        t,
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/failover",
        fo,
        None,
        "{}",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.state
        .add_point(&lifeboat_appliance::store::PointRow {
            id: "11111111-1111-1111-1111-111111111111-p1".into(),
            machine_id: M1,
            point: 1,
            kind: lifeboat_api::PointKind::App,
            created_unix_ms: 1,
            disks: vec![0, 1],
        })
        .unwrap();
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/failover",
        fo,
        t,
        "{}",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("no_master_target")), "{v}");
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/commit",
        cm,
        t,
        "",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("failover_state")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("protected"), "{v}");
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/commit",
        cm,
        t,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/commit",
        cm,
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// [`failovers_and_vm_specs`]: a recorded failover, then reprotect and failback.
async fn failover_under_way_reprotect_failback(s: &Server, c: &Client, t: Option<&str>, cm: &str) {
    // A failover under way (as a master target's appliance records it) is listed, shows in
    // the machine's state, and blocks a second one and a commit.
    assert!(s.state.start_failover(M1, lifeboat_api::JobId(42)).unwrap());
    assert!(
        !s.state.start_failover(M1, lifeboat_api::JobId(43)).unwrap(),
        "one failover at a time"
    );
    let (_, v) = call(c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
    assert_eq!(v["machines"][0]["state"], "failing-over", "{v}");
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/commit",
        cm,
        t,
        "",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("failover_state")), "{v}");
    s.state
        .set_failover(
            M1,
            lifeboat_api::FailoverState::FailedOver,
            Some("11111111-1111-1111-1111-111111111111-p1"),
            Some("fo-11111111-1111-1111-1111-111111111111"),
            &["fo42-11111111-1111-1111-1111-111111111111-d1".into()],
        )
        .unwrap();
    let (st, v) = call(c, Method::GET, "/api/v1/failovers", "/api/v1/failovers", t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["failovers"][0]["state"], "failed-over", "{v}");
    assert_eq!(v["failovers"][0]["job"], 42);
    assert_eq!(v["failovers"][0]["disks"][0], "fo42-11111111-1111-1111-1111-111111111111-d1");
    let (st, v) = call(
        c,
        Method::POST,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/commit",
        cm,
        t,
        "",
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("no_master_target")), "{v}");
    // Reprotect and failback: identity, unknown machines, and (with no master target here)
    // nothing started.
    let rp = "/api/v1/machines/{id}/reprotect";
    let fb = "/api/v1/machines/{id}/failback";
    for (path, template) in [
        ("/api/v1/machines/11111111-1111-1111-1111-111111111111/reprotect", rp),
        ("/api/v1/machines/11111111-1111-1111-1111-111111111111/failback", fb),
    ] {
        let (st, _) = call(c, Method::POST, path, template, None, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, v) = call(c, Method::POST, path, template, t, "").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::CONFLICT, Some("no_master_target")),
            "{v}"
        );
        let bad = path.replace(
            "11111111-1111-1111-1111-111111111111",
            "99999999-9999-9999-9999-999999999999",
        );
        let (st, _) = call(c, Method::POST, &bad, template, t, "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    assert_eq!(s.state.failover_state(M1).unwrap(), Some(lifeboat_api::FailoverState::FailedOver));
    s.state
        .set_failover(
            M1,
            lifeboat_api::FailoverState::Committed,
            Some("11111111-1111-1111-1111-111111111111-p1"),
            Some("fo-11111111-1111-1111-1111-111111111111"),
            &[],
        )
        .unwrap();
    assert!(
        !s.state.start_failover(M1, lifeboat_api::JobId(44)).unwrap(),
        "a committed failover stays"
    );
    let (_, v) = call(c, Method::GET, "/api/v1/failovers", "/api/v1/failovers", t, "").await;
    assert!(v["failovers"][0]["committed_unix_ms"].as_u64().is_some(), "{v}");
}

/// [`failovers_and_vm_specs`]: the recovery passphrase.
async fn recovery_passphrase(s: &Server, c: &Client, t: Option<&str>) {
    // The recovery passphrase: unset, refused when short or malformed, set (only a derived
    // key is kept, private), and never for an anonymous caller.
    let rp = "/api/v1/recovery-passphrase";
    let (st, v) = call(c, Method::GET, rp, rp, t, "").await;
    assert_eq!((st, &v["set"]), (StatusCode::OK, &Value::Bool(false)), "{v}");
    for (body, field) in [
        (r#"{"passphrase":"too short"}"#, "passphrase"),
        (r#"{"passphrase":17}"#, "passphrase"),
        (r#"{"pass":"long enough recovery passphrase"}"#, "pass"),
        ("", ""),
    ] {
        let (st, v) = call(c, Method::PUT, rp, rp, t, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let good = r#"{"passphrase":"long enough recovery passphrase"}"#;
    let (st, _) = call(c, Method::PUT, rp, rp, None, good).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(c, Method::GET, rp, rp, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(c, Method::PUT, rp, rp, t, good).await;
    assert_eq!((st, &v["set"]), (StatusCode::OK, &Value::Bool(true)), "{v}");
    let (_, v) = call(c, Method::GET, rp, rp, t, "").await;
    assert_eq!(v["set"], true);
    let stored = std::fs::read_to_string(s.dir.path().join("keys/recovery.seal")).unwrap();
    assert!(!stored.contains("long enough"), "the passphrase itself is not kept");
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        std::fs::metadata(s.dir.path().join("keys/recovery.seal")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_alerts() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    s.state.add_passphrase("p").unwrap();
    s.state.register_machine("p", M1, "web01").unwrap();
    let pl = "/api/v1/policies";
    let one = "/api/v1/policies/{name}";
    let mp = "/api/v1/machines/{id}/policy";

    let (st, v) = call(&c, Method::GET, pl, pl, t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["policies"][0]["name"], "default");
    assert_eq!(v["policies"][0]["policy"]["rpo_warning_secs"], 900);
    assert_eq!(v["policies"][0]["machines"][0], "11111111-1111-1111-1111-111111111111");
    let (st, _) = call(&c, Method::GET, pl, pl, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Bad policies and names are refused, naming the field.
    for (path, body, field) in [
        ("/api/v1/policies/gold", r#"{"rpo_warning_secs":0}"#, "rpo_warning_secs"),
        (
            "/api/v1/policies/gold",
            r#"{"rpo_warning_secs":600,"rpo_critical_secs":60}"#,
            "rpo_critical_secs",
        ),
        ("/api/v1/policies/gold", r#"{"retention":[]}"#, "retention"),
        (
            "/api/v1/policies/gold",
            r#"{"retention":[{"every_secs":0,"for_secs":100},{"every_secs":0,"for_secs":50}]}"#,
            "retention[1].for_secs",
        ),
        ("/api/v1/policies/gold", r#"{"retention":[{"every_secs":5}]}"#, "for_secs"),
        ("/api/v1/policies/gold", r#"{"rpo":5}"#, "rpo"),
        ("/api/v1/policies/g%20old", "{}", "name"),
    ] {
        let (st, v) = call(&c, Method::PUT, path, one, t, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let (st, _) = call(&c, Method::PUT, "/api/v1/policies/gold", one, None, "{}").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let gold = r#"{"rpo_warning_secs":60,"rpo_critical_secs":120,
                   "retention":[{"every_secs":0,"for_secs":14400},{"every_secs":3600,"for_secs":86400}]}"#;
    let (st, v) = call(&c, Method::PUT, "/api/v1/policies/gold", one, t, gold).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["policies"][1]["name"], "gold");
    assert_eq!(v["policies"][1]["policy"]["silent_secs"], 900, "defaults fill what is left out");

    // Assigning: unknown policy or machine refused; then the machine shows it.
    let (st, v) = call(
        &c,
        Method::PUT,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/policy",
        mp,
        t,
        r#"{"policy":"silver"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) = call(
        &c,
        Method::PUT,
        "/api/v1/machines/99999999-9999-9999-9999-999999999999/policy",
        mp,
        t,
        r#"{"policy":"gold"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        &c,
        Method::PUT,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/policy",
        mp,
        None,
        r#"{"policy":"gold"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(
        &c,
        Method::PUT,
        "/api/v1/machines/11111111-1111-1111-1111-111111111111/policy",
        mp,
        t,
        r#"{"policy":"gold"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, v) = call(&c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
    assert_eq!(v["machines"][0]["policy"], "gold");

    // A policy in use, or the default, is not deleted; an unused one is.
    let (st, _) = call(&c, Method::DELETE, "/api/v1/policies/gold", one, t, "").await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = call(&c, Method::DELETE, "/api/v1/policies/default", one, t, "").await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = call(&c, Method::DELETE, "/api/v1/policies/nope", one, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    call(&c, Method::PUT, "/api/v1/policies/spare", one, t, "{}").await;
    let (st, v) = call(&c, Method::DELETE, "/api/v1/policies/spare", one, t, "").await;
    assert_eq!((st, v["policies"].as_array().unwrap().len()), (StatusCode::OK, 2), "{v}");

    // Alerts: an old newest point is critical under gold's thresholds.
    let al = "/api/v1/alerts";
    let (st, v) = call(&c, Method::GET, al, al, t, "").await;
    assert_eq!((st, v["alerts"].as_array().unwrap().len()), (StatusCode::OK, 0), "{v}");
    s.state
        .add_point(&lifeboat_appliance::store::PointRow {
            id: "11111111-1111-1111-1111-111111111111-p1".into(),
            machine_id: M1,
            point: 1,
            kind: lifeboat_api::PointKind::Crash,
            created_unix_ms: lifeboat_appliance::store::now_ms() - 300_000,
            disks: vec![0],
        })
        .unwrap();
    let (_, v) = call(&c, Method::GET, al, al, t, "").await;
    assert_eq!(v["alerts"][0]["kind"], "rpo", "{v}");
    assert_eq!(v["alerts"][0]["severity"], "critical", "{v}");
    assert_eq!(v["alerts"][0]["machine_id"], "11111111-1111-1111-1111-111111111111", "{v}");
    s.state.upsert_disk(M1, 0, 1 << 20, "/dev/sda").unwrap();
    s.state.set_received_next(M1, 0, 4).unwrap();
    s.state.set_applied(M1, 0, 1, None).unwrap();
    let (_, v) = call(&c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
    assert!(v["machines"][0]["rpo_secs"].as_u64().unwrap() >= 300, "{v}");
    assert_eq!(v["machines"][0]["backlog_batches"], 3, "{v}");
    assert_eq!(v["machines"][0]["state"], "protected", "{v}");
    let resync = lifeboat_api::Progress {
        disk: 0,
        phase: "resync".into(),
        done_bytes: 1,
        total_bytes: 2,
        sent_bytes: 0,
    };
    s.state.set_progress(M1, &resync).unwrap();
    let (_, v) = call(&c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
    assert_eq!(v["machines"][0]["state"], "resyncing", "{v}");
    assert_eq!(v["machines"][0]["health"], "critical", "{v}");
    let (st, _) = call(&c, Method::GET, al, al, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_plans() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    s.state.add_passphrase("p").unwrap();
    s.state.register_machine("p", M1, "web01").unwrap();
    let (pl, one, run) = ("/api/v1/plans", "/api/v1/plans/{name}", "/api/v1/plans/{name}/run");
    let (st, v) = call(&c, Method::GET, pl, pl, t, "").await;
    assert_eq!((st, v["plans"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) = call(&c, Method::GET, pl, pl, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    for (body, field) in [
        (
            r#"{"groups":[{"machines":["99999999-9999-9999-9999-999999999999"]}]}"#,
            "99999999-9999-9999-9999-999999999999",
        ),
        (r#"{"groups":[{"pre":[{"script":"notify"}]}]}"#, "notify"),
        (r#"{"groups":[{"pre":[{"plugin":"log-action"}]}]}"#, "log-action"),
        (r#"{"groups":[{"pre":[{}]}]}"#, "exactly one"),
        (r#"{"groups":[]}"#, "groups"),
        (r#"{"group":[]}"#, "group"),
    ] {
        let (st, v) = call(&c, Method::PUT, "/api/v1/plans/web", one, t, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let good = r#"{"groups":[{"machines":["11111111-1111-1111-1111-111111111111"],"pre":[{"manual":"check"}]}]}"#;
    let (st, _) = call(&c, Method::PUT, "/api/v1/plans/web", one, None, good).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(&c, Method::PUT, "/api/v1/plans/web", one, t, good).await;
    assert_eq!((st, &v["plans"][0]["name"]), (StatusCode::OK, &Value::from("web")), "{v}");

    let (st, _) =
        call(&c, Method::POST, "/api/v1/plans/nope/run", run, t, r#"{"mode":"failover"}"#).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plans/web/run", run, t, r#"{"mode":"drill"}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) =
        call(&c, Method::POST, "/api/v1/plans/web/run", run, None, r#"{"mode":"failover"}"#).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plans/web/run", run, t, r#"{"mode":"test-failover"}"#)
            .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("no_master_target")), "{v}");

    let cont = "/api/v1/jobs/{id}/continue";
    let (st, _) = call(&c, Method::POST, "/api/v1/jobs/77/continue", cont, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&c, Method::POST, "/api/v1/jobs/x/continue", cont, t, "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let job = s.state.create_job(lifeboat_api::JobKind::Plan, None, "not waiting").unwrap();
    let (st, v) =
        call(&c, Method::POST, &format!("/api/v1/jobs/{job}/continue"), cont, t, "").await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("not_waiting")), "{v}");
    let (st, _) =
        call(&c, Method::POST, &format!("/api/v1/jobs/{job}/continue"), cont, None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Plugins (none on this appliance) and consistency groups.
    let (st, v) = call(&c, Method::GET, "/api/v1/plugins", "/api/v1/plugins", t, "").await;
    assert_eq!((st, v["plugins"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (st, _) = call(&c, Method::GET, "/api/v1/plugins", "/api/v1/plugins", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.state.add_passphrase("q").unwrap();
    s.state.register_machine("q", M2, "db01").unwrap();
    s.state.add_group_point("shop", 3, &[M1, M2]).unwrap();
    // A group point counts once every member reported it (issue 11, finding 6).
    for m in [M1, M2] {
        s.state.add_member_point("shop", m, 3).unwrap();
    }
    for m in [M1, M2] {
        if m == M2 {
            let (_, v) = call(&c, Method::GET, "/api/v1/groups", "/api/v1/groups", t, "").await;
            assert_eq!(v["groups"][0]["points"][0]["complete"], false, "{v}");
        }
        s.state
            .add_point(&lifeboat_appliance::store::PointRow {
                id: format!("{m}-p3"),
                machine_id: m,
                point: 3,
                kind: lifeboat_api::PointKind::Crash,
                created_unix_ms: 1,
                disks: vec![0],
            })
            .unwrap();
    }
    let (st, v) = call(&c, Method::GET, "/api/v1/groups", "/api/v1/groups", t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["groups"][0]["name"], "shop");
    assert_eq!(v["groups"][0]["points"][0]["complete"], true, "{v}");
    assert_eq!(
        v["groups"][0]["points"][0]["point_ids"][1],
        "22222222-2222-2222-2222-222222222222-p3"
    );
    let (_, v) = call(&c, Method::GET, "/api/v1/machines", "/api/v1/machines", t, "").await;
    assert_eq!(v["machines"][0]["groups"][0], "shop", "{v}");
    let (_, v) = call(
        &c,
        Method::GET,
        "/api/v1/machines/22222222-2222-2222-2222-222222222222/points",
        "/api/v1/machines/{id}/points",
        t,
        "",
    )
    .await;
    assert_eq!(v["points"][0]["groups"][0], "shop", "a group point says so: {v}");

    // The CAs: status for administrators only; a rotation body is checked.
    let (st, v) = call(&c, Method::GET, "/api/v1/ca", "/api/v1/ca", t, "").await;
    assert_eq!((st, v["phase"].as_str()), (StatusCode::OK, Some("steady")), "{v}");
    let (st, _) = call(&c, Method::GET, "/api/v1/ca", "/api/v1/ca", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let rot = "/api/v1/ca/rotate";
    let (st, _) = call(&c, Method::POST, rot, rot, None, "{}").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(&c, Method::POST, rot, rot, t, r#"{"force":"yes"}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("force"), "{v}");
    let (st, v) = call(&c, Method::POST, rot, rot, t, "{}").await;
    assert_eq!((st, v["phase"].as_str()), (StatusCode::OK, Some("introducing")), "{v}");
    // Promotion waits for machines that have not fetched the new CA.
    let (st, v) = call(&c, Method::POST, rot, rot, t, "{}").await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("not_introduced")), "{v}");
    let (st, _) = call(&c, Method::GET, "/api/v1/groups", "/api/v1/groups", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, _) = call(&c, Method::DELETE, "/api/v1/plans/nope", one, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(&c, Method::DELETE, "/api/v1/plans/web", one, t, "").await;
    assert_eq!((st, v["plans"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
}

/// Issue 11, finding 6: consistency groups are the administrator's to define.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_groups_are_defined_by_the_administrator() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    for (p, m) in [("p1", MA), ("p2", MB), ("p3", MC)] {
        s.state.add_passphrase(p).unwrap();
        s.state.register_machine(p, m, "host").unwrap();
    }
    let t = "/api/v1/groups/{name}";
    let put = |body: &'static str| {
        let c = &c;
        let token = &token;
        async move { call(c, Method::PUT, "/api/v1/groups/erp", t, Some(token), body).await }
    };
    let (st, v) = put(r#"{"coordinator":"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","members":["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"]}"#).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["groups"][0]["coordinator"], "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa");
    assert_eq!(
        v["groups"][0]["members"],
        serde_json::json!([
            "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
            "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
        ])
    );
    for bad in [
        r#"{"coordinator":"cccccccc-cccc-cccc-cccc-cccccccccccc","members":["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"]}"#,
        r#"{"coordinator":"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","members":["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"]}"#,
        r#"{"coordinator":"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","members":["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"]}"#,
        r#"{"coordinator":"aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","members":["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa","bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"],"extra":1}"#,
    ] {
        let (st, v) = put(bad).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (st, v) = call(
        &c,
        Method::PUT,
        "/api/v1/groups/crm",
        t,
        Some(&token),
        r#"{"coordinator":"cccccccc-cccc-cccc-cccc-cccccccccccc","members":["cccccccc-cccc-cccc-cccc-cccccccccccc","bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"]}"#,
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("in_another_group")), "{v}");
    let (st, _) = call(&c, Method::PUT, "/api/v1/groups/erp", t, None, "{}").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(&c, Method::GET, "/api/v1/groups", "/api/v1/groups", Some(&token), "").await;
    assert_eq!((st, v["groups"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let (st, _) = call(&c, Method::DELETE, "/api/v1/groups/erp", t, Some(&token), "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&c, Method::DELETE, "/api/v1/groups/erp", t, Some(&token), "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// `appliance/openapi.json` is the generated document, committed so that changes of the
/// API show in review (and the web UI and other clients can be built from it). Run with
/// `LIFEBOAT_BLESS=1` to write it after changing a route or an API type.
#[test]
fn the_committed_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = openapi_document().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("LIFEBOAT_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the generated OpenAPI document: run this test with LIFEBOAT_BLESS=1 and commit it",
        path.display()
    );
}

/// Issue 13: the browser's session is an `HttpOnly; Secure; SameSite=Strict` cookie the
/// page never sees; a change made with it needs the `X-Lifeboat-Csrf` header; every answer
/// carries the browser security headers; the UI's page and assets are served (gzip when
/// taken); the wizard's identity step refuses bad input and changes nothing then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sessions_pages_and_the_identity_step() {
    let s = start().await;
    let c = s.client(None);
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    // The page, before anything is set up.
    let (st, h, page) = c.request(Method::GET, "/", Bytes::new(), HeaderMap::new()).await.unwrap();
    assert_eq!(st, StatusCode::OK);
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(h["strict-transport-security"].to_str().unwrap().starts_with("max-age="));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = String::from_utf8(page.to_vec()).unwrap();
    // With the UI built, its page names a hashed script; it is served, gzip when taken.
    if let Some(at) = page.find("/assets/") {
        let name: String = page[at..].chars().take_while(|c| *c != '"').collect();
        let (st, h, plain) =
            c.request(Method::GET, &name, Bytes::new(), HeaderMap::new()).await.unwrap();
        assert_eq!(st, StatusCode::OK, "{name}");
        assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
        assert!(h.get("content-encoding").is_none());
        let gz = headers(&[("accept-encoding", "br, gzip;q=0.9")]);
        let (st, h, packed) = c.request(Method::GET, &name, Bytes::new(), gz).await.unwrap();
        assert_eq!(
            (st, &h["content-encoding"]),
            (StatusCode::OK, &HeaderValue::from_static("gzip"))
        );
        assert!(packed.len() < plain.len() && packed.starts_with(&[0x1f, 0x8b]));
    } else {
        assert!(page.contains("cargo xtask ui"), "the page without a built UI says how: {page}");
    }
    for bad in ["/assets/..%2Fstate.db", "/assets/nothing.js", "/index.php"] {
        let (st, h, _) = c.request(Method::GET, bad, Bytes::new(), HeaderMap::new()).await.unwrap();
        assert_eq!(st, StatusCode::NOT_FOUND, "{bad}");
        assert!(h.contains_key("content-security-policy"), "{bad}: headers on errors too");
    }

    // Setup asking for a cookie: the body has no token, the cookie is locked down.
    let body = format!(
        r#"{{"setup_token":"{}","name":"root","password":"correct horse battery"}}"#,
        setup_token(&s.state)
    );
    let json = [("content-type", "application/json"), ("x-lifeboat-session", "cookie")];
    let (st, h, b) =
        c.request(Method::POST, "/api/v1/setup", Bytes::from(body), headers(&json)).await.unwrap();
    assert_eq!(st, StatusCode::CREATED);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(v.get("token").is_none(), "{v}");
    let set = h["set-cookie"].to_str().unwrap().to_owned();
    for part in ["lifeboat_session=", "HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();

    // Reading with the cookie works; a change needs the header; another origin is refused.
    let (st, _, b) = c
        .request(Method::GET, "/api/v1/appliance", Bytes::new(), headers(&[("cookie", &cookie)]))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    let a: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (a["wizard_step"].as_str(), a["name"].as_str()),
        (Some("identity"), Some("lifeboat"))
    );
    assert!(a["ca_fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let identity = r#"{"name":"dr-site-a","agent_url":"https://dr.example.com:9443"}"#;
    let put = |extra: &[(&'static str, &str)]| {
        let mut h = headers(&[("cookie", &cookie), ("content-type", "application/json")]);
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    let (st, _, b) =
        c.request(Method::PUT, "/api/v1/appliance", Bytes::from(identity), put(&[])).await.unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!((st, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    let foreign = [("x-lifeboat-csrf", "1"), ("origin", "https://evil.example")];
    let (st, _, _) = c
        .request(Method::PUT, "/api/v1/appliance", Bytes::from(identity), put(&foreign))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Bad input: 400 naming the field, nothing changed.
    for (bad, field) in [
        (r#"{"name":"","agent_url":"https://a:9443"}"#, "name"),
        (r#"{"name":"x","agent_url":"http://a:9443"}"#, "agent_url"),
        (r#"{"name":"x","agent_url":"https://a:9443/x"}"#, "agent_url"),
        (r#"{"name":"x"}"#, "agent_url"),
    ] {
        let (st, _, b) = c
            .request(
                Method::PUT,
                "/api/v1/appliance",
                Bytes::from(bad),
                put(&[("x-lifeboat-csrf", "1")]),
            )
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{bad}: {v}");
    }
    assert_eq!(s.state.setting("agent_url").unwrap(), None, "nothing changed");
    let (st, _, b) = c
        .request(
            Method::PUT,
            "/api/v1/appliance",
            Bytes::from(identity),
            put(&[("x-lifeboat-csrf", "1")]),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agent_url"], "https://dr.example.com:9443");
    // The wizard's step is kept; `claim` is not a step to go back to.
    let csrf = [("x-lifeboat-csrf", "1")];
    for (step, want) in [
        ("machines", StatusCode::OK),
        ("claim", StatusCode::BAD_REQUEST),
        ("nope", StatusCode::BAD_REQUEST),
    ] {
        let body = format!(r#"{{"step":"{step}"}}"#);
        let (st, _, _) =
            c.request(Method::PUT, "/api/v1/wizard", Bytes::from(body), put(&csrf)).await.unwrap();
        assert_eq!(st, want, "{step}");
    }
    assert_eq!(s.state.setting("wizard_step").unwrap().as_deref(), Some("machines"));
    // Logging out clears the cookie and ends the session.
    let (st, h, _) = c
        .request(
            Method::POST,
            "/api/v1/logout",
            Bytes::new(),
            headers(&[("cookie", &cookie), ("x-lifeboat-csrf", "1")]),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (st, _, _) = c
        .request(Method::GET, "/api/v1/session", Bytes::new(), headers(&[("cookie", &cookie)]))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// A registry of the local and Azure targets and the zstd codec, each pinned, the local
/// target granted `<dir>/target`, Azure granted no host at all.
fn registry(dir: &std::path::Path) -> Arc<Registry> {
    use lifeboat_plugin_host::config::PluginsConfig;
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let mut config = PluginsConfig {
        dir: plugins.clone(),
        cache_dir: Some(dir.join("plugin-cache")),
        trusted_keys: vec![],
        allow_unsigned: false,
        grants: Default::default(),
    };
    for n in ["local", "azure", "zstd"] {
        for ext in ["wasm", "toml"] {
            let to = plugins.join(format!("{n}.{ext}"));
            std::fs::copy(
                lifeboat_plugin_host::contract::built_plugins("local.wasm")
                    .join(format!("{n}.{ext}")),
                &to,
            )
            .unwrap();
        }
        let m = lifeboat_plugin_host::manifest::Manifest::load(&plugins.join(format!("{n}.toml")))
            .unwrap();
        let g = config.grants.entry(n.to_string()).or_default();
        g.sha256 = Some(m.sha256.clone());
        g.clock = m.capabilities.clock;
    }
    std::fs::create_dir_all(dir.join("target")).unwrap();
    let local = config.grants.get_mut("local").unwrap();
    local.directories.insert("/target".into(), dir.join("target"));
    local.settings.insert("host_root".into(), dir.join("target").display().to_string());
    let keys = lifeboat_plugin_host::keys::KeyRing::new(vec![]);
    let host = lifeboat_plugin_host::Host::new(keys).unwrap();
    let r = Arc::new(Registry::new(host, config));
    assert_eq!(r.current().plugins.len(), 3, "{:?}", r.current().refused);
    r
}

/// Issue 13, the wizard's target step: the target plugin is chosen and set up from the API,
/// its settings checked against its manifest and by its own init before anything is kept,
/// secrets sealed at rest and never shown, the choice locked once machines register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_is_chosen_and_set_up_with_its_settings_checked_and_secrets_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let s = start_with(Some(reg.clone())).await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    let tp = "/api/v1/target";
    let put = |body: serde_json::Value| {
        let c = &c;
        async move { call(c, Method::PUT, tp, tp, t, &body.to_string()).await }
    };
    let (st, v) = call(&c, Method::GET, tp, tp, t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["plugin"].as_str(), v["stored"].as_bool(), v["locked"].as_bool()),
        (Some("local"), Some(false), Some(false))
    );

    // Bad input is refused, naming the setting, and changes nothing.
    let key = "c2VjcmV0LWFjY291bnQta2V5LWZvci10ZXN0cw==";
    for (body, status, code, starts) in [
        (serde_json::json!({"plugin": "azure"}), 400, "invalid", "settings.account: required"),
        (
            serde_json::json!({"plugin": "azure", "settings": {"account": "acct", "key": key, "timeout_ms": "soon"}}),
            400,
            "invalid",
            "settings.timeout_ms: ",
        ),
        (
            serde_json::json!({"plugin": "azure", "settings": {"account": "acct", "key": key, "endpoint": "ftp://x"}}),
            400,
            "invalid",
            "settings.endpoint: ",
        ),
        (
            serde_json::json!({"plugin": "azure", "settings": {"account": "acct", "key": key, "colour": "red"}}),
            400,
            "invalid",
            "settings.colour: azure declares no such setting",
        ),
        (
            serde_json::json!({"plugin": "azure", "settings": {"account": "acct", "key": key, "container": "Not_Valid"}}),
            400,
            "target_refused",
            "azure refused these settings: ",
        ),
        (
            serde_json::json!({"plugin": "zstd"}),
            400,
            "not_a_target",
            "plugin: zstd is a codec plugin",
        ),
        (
            serde_json::json!({"plugin": "nosuch"}),
            404,
            "unknown_plugin",
            "plugin: no loaded plugin",
        ),
        (
            serde_json::json!({"plugin": "local", "settings": {"root": "/elsewhere"}}),
            400,
            "target_refused",
            "local refused these settings: ",
        ),
        (serde_json::json!({"plugin": "local", "extra": 1}), 400, "bad_json", ""),
    ] {
        let (st, v) = put(body.clone()).await;
        assert_eq!((st.as_u16(), v["code"].as_str()), (status, Some(code)), "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(starts), "{body}: {v}");
    }
    let (_, v) = call(&c, Method::GET, tp, tp, t, "").await;
    assert_eq!((v["plugin"].as_str(), v["stored"].as_bool()), (Some("local"), Some(false)));
    assert!(s.state.plugin_settings().unwrap().is_empty());
    let (st, _) = call(&c, Method::PUT, tp, tp, None, r#"{"plugin":"azure"}"#).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Azure is installed with no settings: loaded (its form can be shown), not configured.
    let hp = "/api/v1/plugins/{name}/health";
    let (_, v) = call(&c, Method::POST, "/api/v1/plugins/azure/health", hp, t, "").await;
    assert_eq!(v["ok"].as_bool(), Some(false), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not configured: plugins.grants.azure.settings.account: required"),
        "{v}"
    );
    // Test connection with settings that are not kept: the plugin's own words come back.
    let body = serde_json::json!({"settings": {"account": "acct", "key": key, "endpoint": "http://127.0.0.1:9/acct"}});
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plugins/azure/health", hp, t, &body.to_string()).await;
    assert_eq!((st, v["ok"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("http_hosts"), "not granted: {v}");
    let body = r#"{"settings": {"root": "/nowhere"}}"#;
    let (_, v) = call(&c, Method::POST, "/api/v1/plugins/local/health", hp, t, body).await;
    assert_eq!(v["ok"].as_bool(), Some(false), "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("init: "), "{v}");
    let (_, v) =
        call(&c, Method::POST, "/api/v1/plugins/local/health", hp, t, r#"{"settings":{}}"#).await;
    assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    let (st, v) = call(
        &c,
        Method::POST,
        "/api/v1/plugins/local/health",
        hp,
        t,
        r#"{"settings":{"nope":"1"}}"#,
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{v}");

    // Choosing Azure (no machine yet): kept, the key sealed, never shown.
    let (st, v) = put(serde_json::json!({"plugin": "azure", "settings": {"account": "acct", "key": key, "container": "dr-site"}})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["plugin"].as_str(), v["configured"].as_str(), v["stored"].as_bool()),
        (Some("azure"), Some("local"), Some(true))
    );
    let gen_after = reg.current().generation;
    let got = |name: &str| {
        reg.get("azure").unwrap().settings().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    assert_eq!((got("key").as_deref(), got("container").as_deref()), (Some(key), Some("dr-site")));
    assert_eq!(got("lease_seconds").as_deref(), Some("60"), "the declared default");
    let (_, v) = call(&c, Method::GET, "/api/v1/plugins", "/api/v1/plugins", t, "").await;
    let az =
        v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "azure").unwrap().clone();
    let setting = |n: &str| {
        az["settings"].as_array().unwrap().iter().find(|x| x["name"] == n).unwrap().clone()
    };
    assert_eq!(setting("key")["value"], Value::Null);
    assert_eq!(
        (setting("key")["configured"].as_bool(), setting("key")["secret"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(setting("account")["value"].as_str(), Some("acct"));
    assert_eq!(setting("lease_id")["advanced"].as_bool(), Some(true));
    assert!(!v.to_string().contains(key), "a secret never leaves the appliance");
    let rows = s.state.plugin_settings().unwrap();
    let sealed = rows.iter().find(|r| r.1 == "key").unwrap();
    assert!(sealed.3 && !String::from_utf8_lossy(&sealed.2).contains(key));
    // Setting it again without the key keeps the key; a non-secret left out takes its default.
    let (st, _) =
        put(serde_json::json!({"plugin": "azure", "settings": {"account": "acct2", "key": ""}}))
            .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (got("key").as_deref(), got("account").as_deref(), got("container").as_deref()),
        (Some(key), Some("acct2"), Some("lifeboat"))
    );
    assert!(reg.current().generation > gen_after);

    // Back to the local target; once a machine registers, no other target may be chosen,
    // but the settings of this one may change.
    let root = tmp.path().join("target").display().to_string();
    let (st, v) =
        put(serde_json::json!({"plugin": "local", "settings": {"host_root": root}})).await;
    assert_eq!((st, v["plugin"].as_str()), (StatusCode::OK, Some("local")), "{v}");
    s.state.add_passphrase("p").unwrap();
    s.state.register_machine("p", M1, "web01").unwrap();
    let (st, v) = put(serde_json::json!({"plugin": "azure", "settings": {"account": "a"}})).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("target_locked")), "{v}");
    let (_, v) = call(&c, Method::GET, tp, tp, t, "").await;
    assert_eq!((v["plugin"].as_str(), v["locked"].as_bool()), (Some("local"), Some(true)));
    let (st, _) =
        put(serde_json::json!({"plugin": "local", "settings": {"host_root": format!("{root}/")}}))
            .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        reg.get("local").unwrap().settings().contains(&("host_root".into(), format!("{root}/")))
    );
}

/// Issue 13: a plugin uploaded from the API waits in quarantine — checked, compiled, never
/// run or loaded — until an administrator trusts the build with the sha256 they read; it is
/// then pinned, installed and loaded, with only what the configuration file grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_plugins_wait_in_quarantine_until_an_administrator_trusts_them() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path());
    let s = start_with(Some(reg.clone())).await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    let up = "/api/v1/plugin-uploads";
    let read = |n: &str| {
        let wasm = std::fs::read(
            lifeboat_plugin_host::contract::built_plugins("local.wasm").join(format!("{n}.wasm")),
        )
        .unwrap();
        let toml = std::fs::read_to_string(
            lifeboat_plugin_host::contract::built_plugins("local.wasm").join(format!("{n}.toml")),
        )
        .unwrap();
        (wasm, toml)
    };
    let (wasm, toml) = read("hostile");
    let sha = hex::encode(sha2::Sha256::digest(&wasm));
    let garbage = b"\0asm not a component at all".to_vec();
    let garbage_sha = hex::encode(sha2::Sha256::digest(&garbage));
    for (body, starts) in [
        (serde_json::json!({"manifest": toml, "wasm_base64": "%%%"}), "wasm_base64: not base64"),
        (serde_json::json!({"manifest": toml, "wasm_base64": ""}), "wasm_base64: expected 1 to"),
        (serde_json::json!({"manifest": "name = 1", "wasm_base64": b64(&wasm)}), "manifest: "),
        (
            serde_json::json!({"manifest": toml.replace(&sha, &"0".repeat(64)), "wasm_base64": b64(&wasm)}),
            "manifest: sha256 0000",
        ),
        (
            serde_json::json!({"manifest": toml.replace(&sha, &garbage_sha), "wasm_base64": b64(&garbage)}),
            "wasm_base64: ",
        ),
    ] {
        let (st, v) = call(&c, Method::POST, up, up, t, &body.to_string()).await;
        assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{v}");
        assert!(v["error"].as_str().unwrap().starts_with(starts), "want {starts:?}: {v}");
    }
    let quarantined = |v: &Value| v["quarantined"].as_array().unwrap().clone();
    let (_, v) = call(&c, Method::GET, "/api/v1/plugins", "/api/v1/plugins", t, "").await;
    assert!(quarantined(&v).is_empty(), "refused uploads leave nothing: {v}");
    let body = serde_json::json!({"manifest": toml, "wasm_base64": b64(&wasm)}).to_string();
    let (st, _) = call(&c, Method::POST, up, up, None, &body).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Accepted into quarantine: described, not loaded, not even by a reload.
    let (st, v) = call(&c, Method::POST, up, up, t, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["kind"].as_str(), v["sha256"].as_str()),
        (Some("hostile"), Some("codec"), Some(sha.as_str()))
    );
    assert_eq!((v["once_trusted"].as_str(), v["signed_by"].as_str()), (Some("loads"), None));
    assert!(v["requests"].as_str().unwrap().contains("memory 64 MiB"), "{v}");
    let (_, v) =
        call(&c, Method::POST, "/api/v1/plugins/reload", "/api/v1/plugins/reload", t, "").await;
    assert_eq!(quarantined(&v).len(), 1);
    assert!(!v["plugins"].as_array().unwrap().iter().any(|p| p["name"] == "hostile"));
    assert!(reg.get("hostile").is_none() && !tmp.path().join("plugins/hostile.wasm").exists());

    // Trusting needs the sha256 of the build in quarantine.
    let tp = "/api/v1/plugin-uploads/{name}/trust";
    let wrong = serde_json::json!({"sha256": "ab".repeat(32)}).to_string();
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plugin-uploads/hostile/trust", tp, t, &wrong).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("sha256: "), "{v}");
    let right = serde_json::json!({"sha256": sha}).to_string();
    let (st, _) =
        call(&c, Method::POST, "/api/v1/plugin-uploads/nosuch/trust", tp, t, &right).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) =
        call(&c, Method::POST, "/api/v1/plugin-uploads/hostile/trust", tp, None, &right).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(reg.get("hostile").is_none());
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plugin-uploads/hostile/trust", tp, t, &right).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let p =
        v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap().clone();
    assert_eq!(p["trust"].as_str(), Some("pinned"));
    assert!(quarantined(&v).is_empty());
    assert!(reg.get("hostile").is_some());
    assert_eq!(s.state.plugin_pins().unwrap(), vec![("hostile".to_string(), sha.clone())]);
    assert_eq!(std::fs::read(tmp.path().join("plugins/hostile.wasm")).unwrap(), wasm);

    // A plugin asking for what the configuration does not grant: kept in quarantine saying
    // so, refused (saying what to grant) once trusted; or discarded.
    let (wasm, toml) = read("dirtarget");
    let body = serde_json::json!({"manifest": toml, "wasm_base64": b64(&wasm)}).to_string();
    let (st, v) = call(&c, Method::POST, up, up, t, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let once = v["once_trusted"].as_str().unwrap();
    assert!(once.starts_with("refused: ") && once.contains("/data"), "{v}");
    // Trusting it is refused: installed, it would not load.
    let dsha = hex::encode(sha2::Sha256::digest(&wasm));
    let body = serde_json::json!({"sha256": dsha}).to_string();
    let (st, v) =
        call(&c, Method::POST, "/api/v1/plugin-uploads/dirtarget/trust", tp, t, &body).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("would be refused once installed"), "{v}");
    assert!(!tmp.path().join("plugins/dirtarget.wasm").exists());
    assert!(!s.state.plugin_pins().unwrap().iter().any(|p| p.0 == "dirtarget"));
    let dp = "/api/v1/plugin-uploads/{name}";
    let (st, v) = call(&c, Method::DELETE, "/api/v1/plugin-uploads/dirtarget", dp, t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(quarantined(&v).is_empty());
    let (st, _) = call(&c, Method::DELETE, "/api/v1/plugin-uploads/dirtarget", dp, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&c, Method::DELETE, "/api/v1/plugin-uploads/..", dp, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(reg.get("dirtarget").is_none());
}

/// Issue 13, settings: administrators added, their passwords changed (their other sessions
/// end), removed (never oneself, never the last); live sessions listed and ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_and_their_sessions() {
    let s = start().await;
    let c = s.client(None);
    let root = setup_admin(&c, &s.state).await;
    let t = Some(root.as_str());
    let (ap, sp) = ("/api/v1/admins", "/api/v1/sessions");
    let login = |name: &'static str, password: &'static str| {
        let c = &c;
        async move {
            let body = serde_json::json!({"name": name, "password": password}).to_string();
            let (st, v) =
                call(c, Method::POST, "/api/v1/login", "/api/v1/login", None, &body).await;
            (st, v["token"].as_str().map(str::to_owned))
        }
    };
    let (st, v) = call(&c, Method::GET, ap, ap, t, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["admins"].as_array().unwrap().len(), 1);
    assert_eq!(
        (v["admins"][0]["name"].as_str(), v["admins"][0]["sessions"].as_u64()),
        (Some("root"), Some(1))
    );
    for (body, field) in [
        (r#"{"name":"no spaces","password":"long enough password"}"#, "name: "),
        (r#"{"name":"ops","password":"short"}"#, "password: "),
        (r#"{"name":"ops"}"#, ""),
    ] {
        let (st, v) = call(&c, Method::POST, ap, ap, t, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{v}");
    }
    let ops = r#"{"name":"ops","password":"another long password"}"#;
    let (st, _) = call(&c, Method::POST, ap, ap, None, ops).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(&c, Method::POST, ap, ap, t, ops).await;
    assert_eq!((st, v["admins"].as_array().unwrap().len()), (StatusCode::CREATED, 2), "{v}");
    let (st, v) = call(&c, Method::POST, ap, ap, t, ops).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("admin_exists")));

    // Sessions: listed with the caller's marked; ending one logs it out.
    let (st, ops_token) = login("ops", "another long password").await;
    assert_eq!(st, StatusCode::OK);
    let ops_token = ops_token.unwrap();
    let (_, v) = call(&c, Method::GET, sp, sp, t, "").await;
    let sessions = v["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    let mine: Vec<_> = sessions.iter().filter(|x| x["current"] == true).collect();
    assert_eq!((mine.len(), mine[0]["admin"].as_str()), (1, Some("root")));
    assert!(!v.to_string().contains(&ops_token) && !v.to_string().contains(&root));
    let theirs =
        sessions.iter().find(|x| x["admin"] == "ops").unwrap()["id"].as_str().unwrap().to_owned();
    let one = "/api/v1/sessions/{id}";
    let (st, _) = call(&c, Method::DELETE, "/api/v1/sessions/0123456789abcdef", one, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&c, Method::DELETE, "/api/v1/sessions/..", one, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(&c, Method::DELETE, &format!("/api/v1/sessions/{theirs}"), one, t, "").await;
    assert_eq!((st, v["sessions"].as_array().unwrap().len()), (StatusCode::OK, 1), "{v}");
    let (st, _) = call(&c, Method::GET, sp, sp, Some(&ops_token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "an ended session no longer works");

    // A new password ends the administrator's other sessions, not the caller's.
    let (_, ops_token) = login("ops", "another long password").await;
    let ops_token = ops_token.unwrap();
    let pp = "/api/v1/admins/{name}/password";
    let (st, v) =
        call(&c, Method::PUT, "/api/v1/admins/ops/password", pp, t, r#"{"password":"short"}"#)
            .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) = call(
        &c,
        Method::PUT,
        "/api/v1/admins/nosuch/password",
        pp,
        t,
        r#"{"password":"a new long password"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        &c,
        Method::PUT,
        "/api/v1/admins/ops/password",
        pp,
        t,
        r#"{"password":"a new long password"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&c, Method::GET, sp, sp, Some(&ops_token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(login("ops", "another long password").await.0, StatusCode::UNAUTHORIZED);
    let (st, ops_token) = login("ops", "a new long password").await;
    assert_eq!(st, StatusCode::OK);
    let ops_token = ops_token.unwrap();
    let (st, _) = call(
        &c,
        Method::PUT,
        "/api/v1/admins/ops/password",
        pp,
        Some(&ops_token),
        r#"{"password":"a third long password"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&c, Method::GET, sp, sp, Some(&ops_token), "").await;
    assert_eq!(st, StatusCode::OK, "changing one's own password keeps one's session");

    // Removal: never oneself; another one, with their sessions.
    let dp = "/api/v1/admins/{name}";
    let (st, v) = call(&c, Method::DELETE, "/api/v1/admins/root", dp, t, "").await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("self")));
    let (st, _) = call(&c, Method::DELETE, "/api/v1/admins/nosuch", dp, t, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(&c, Method::DELETE, "/api/v1/admins/ops", dp, t, "").await;
    assert_eq!((st, v["admins"].as_array().unwrap().len()), (StatusCode::OK, 1), "{v}");
    let (st, _) = call(&c, Method::GET, sp, sp, Some(&ops_token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(login("ops", "a third long password").await.0, StatusCode::UNAUTHORIZED);
    // The store never removes the last administrator.
    assert_eq!(s.state.delete_admin("root").unwrap(), Some(false));
}

/// Issue 13, the identity step: a certificate for 443 from the site's own CA is checked
/// (parses, the key is the leaf's), used from the next connection on, and dropped again for
/// one issued by the appliance's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_for_443_is_uploaded_checked_and_used() {
    let s = start().await;
    let c = s.client(None);
    let token = setup_admin(&c, &s.state).await;
    let t = Some(token.as_str());
    let cp = "/api/v1/appliance/certificate";
    let (st, v) = call(&c, Method::GET, cp, cp, t, "").await;
    assert_eq!((st, v["source"].as_str()), (StatusCode::OK, Some("appliance-ca")), "{v}");
    let first = v["fingerprint"].as_str().unwrap().to_owned();
    let site = tempfile::tempdir().unwrap();
    let site_ca = Ca::load_or_create(site.path(), "Site CA").unwrap();
    let id = site_ca.issue_server(&["appliance.example".into(), "127.0.0.1".into()]).unwrap();
    let other = site_ca.issue_server(&["other.example".into()]).unwrap();
    for (cert, key, starts) in [
        ("junk".to_string(), id.key_pem.clone(), "certificate_pem: "),
        (id.cert_pem.clone(), other.key_pem.clone(), "key_pem: "),
        (
            id.cert_pem.clone(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            "key_pem: ",
        ),
    ] {
        let body = serde_json::json!({"certificate_pem": cert, "key_pem": key}).to_string();
        let (st, v) = call(&c, Method::PUT, cp, cp, t, &body).await;
        assert_eq!((st, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{v}");
        assert!(v["error"].as_str().unwrap().starts_with(starts), "want {starts}: {v}");
        assert!(!v.to_string().contains("PRIVATE KEY"), "the key is never echoed: {v}");
    }
    let (_, v) = call(&c, Method::GET, cp, cp, t, "").await;
    assert_eq!(
        (v["source"].as_str(), v["fingerprint"].as_str()),
        (Some("appliance-ca"), Some(first.as_str()))
    );
    let body =
        serde_json::json!({"certificate_pem": id.cert_pem, "key_pem": id.key_pem}).to_string();
    let (st, _) = call(&c, Method::PUT, cp, cp, None, &body).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = call(&c, Method::PUT, cp, cp, t, &body).await;
    assert_eq!((st, v["source"].as_str()), (StatusCode::OK, Some("uploaded")), "{v}");
    assert!(v["names"].as_array().unwrap().iter().any(|n| n == "appliance.example"), "{v}");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(s.dir.path().join("https/server.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // New connections of browsers (no Lifeboat ALPN marker) get it: one trusting only the
    // site's CA gets in, one trusting only the appliance's CA no longer does. Lifeboat's own
    // clients (agents registering, the CLI: they pin the appliance CA) still get the
    // appliance CA's certificate.
    let browser = |trust: Trust| {
        let mut cfg = (*tls::client_config(trust, None).unwrap()).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Client::new(&format!("https://{}", s.addr), Arc::new(cfg)).unwrap()
    };
    let site_client = browser(Trust::Ca(site_ca.cert_pem().into()));
    let (st, _) = call(&site_client, Method::GET, cp, cp, t, "").await;
    assert_eq!(st, StatusCode::OK);
    let old_browser = browser(Trust::Ca(s.ca.cert_pem().into()));
    let r =
        old_browser.request(Method::GET, "/api/v1/health", Bytes::new(), HeaderMap::new()).await;
    assert!(
        r.is_err(),
        "a browser trusting only the appliance CA refuses the uploaded certificate"
    );
    let (st, _) = call(&s.client(None), Method::GET, cp, cp, t, "").await;
    assert_eq!(st, StatusCode::OK, "Lifeboat's clients keep the appliance CA's certificate");
    // An agent registering pins the CA by its fingerprint, as `lifeboat-agent register` does.
    let registering = Client::new(
        &format!("https://{}", s.addr),
        tls::client_config(Trust::Fingerprint(s.ca.fingerprint().to_owned()), None).unwrap(),
    )
    .unwrap();
    let r =
        registering.request(Method::GET, "/api/v1/health", Bytes::new(), HeaderMap::new()).await;
    assert_eq!(r.unwrap().0, StatusCode::OK, "an agent pinning the appliance CA still registers");
    // Back to the appliance CA's.
    let (st, v) = call(&site_client, Method::DELETE, cp, cp, t, "").await;
    assert_eq!((st, v["source"].as_str()), (StatusCode::OK, Some("appliance-ca")));
    assert!(!s.dir.path().join("https/server.key").exists());
    let (st, _) = call(&s.client(None), Method::GET, cp, cp, t, "").await;
    assert_eq!(st, StatusCode::OK);
}

/// `/downloads/`: the packages with their digests for anyone, nothing else of the folder;
/// the installer names the package's digest and the CA; the command administrators are
/// shown pins the installer's digest and takes only a well-formed origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_packages_are_served_with_their_digests_and_the_command_pins_them() {
    use lifeboat_appliance::config_server::downloads::{Downloads, sha256_hex};
    let folder = tempfile::tempdir().unwrap();
    let deb = "lifeboat-agent_0.1.0_amd64.deb";
    std::fs::write(folder.path().join(deb), b"!<arch>\npretend package").unwrap();
    std::fs::write(folder.path().join(".hidden"), b"secret").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", folder.path().join("hostname")).unwrap();
    let s = start_full(None, Some(Downloads::scan(folder.path()).unwrap())).await;
    let c = s.client(None);
    let get = |path: &'static str| {
        let c = &c;
        async move {
            let (st, h, b) =
                c.request(Method::GET, path, Bytes::new(), HeaderMap::new()).await.unwrap();
            (st, h, b)
        }
    };
    let digest = sha256_hex("!<arch>\npretend package");
    let (st, _, b) = get("/downloads/").await;
    assert_eq!(
        (st, String::from_utf8_lossy(&b).into_owned()),
        (StatusCode::OK, format!("{digest}  {deb}\n"))
    );
    let (st, _, b) = get("/downloads/SHA256SUMS").await;
    assert_eq!((st, b.len()), (StatusCode::OK, 64 + 2 + deb.len() + 1));
    let (st, h, b) = get("/downloads/lifeboat-agent_0.1.0_amd64.deb").await;
    assert_eq!((st, &b[..]), (StatusCode::OK, &b"!<arch>\npretend package"[..]));
    assert_eq!(h[http::header::CONTENT_TYPE], "application/vnd.debian.binary-package");
    for path in [
        "/downloads/.hidden",
        "/downloads/hostname",
        "/downloads/..%2Fstate.db",
        "/downloads/%2e%2e",
        "/downloads/nothing.deb",
    ] {
        let (st, _, b) = get(path).await;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}");
    }
    let (st, _, script) = get("/downloads/install.sh").await;
    let script = String::from_utf8(script.to_vec()).unwrap();
    assert_eq!(st, StatusCode::OK);
    assert!(script.contains(&format!("DEB_SHA256='{digest}'")), "{script}");
    assert!(script.contains(&format!("FINGERPRINT='{}'", s.ca.fingerprint())), "{script}");

    // The administrators' view.
    let token = setup_admin(&c, &s.state).await;
    let (st, _) = call(&c, Method::GET, "/api/v1/downloads", "/api/v1/downloads", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) =
        call(&c, Method::GET, "/api/v1/downloads", "/api/v1/downloads", Some(&token), "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["installer_sha256"].as_str(),
        Some(sha256_hex(&script).as_str()),
        "the digest is of what is served"
    );
    assert_eq!(
        (v["files"][0]["name"].as_str(), v["files"][0]["sha256"].as_str()),
        (Some(deb), Some(digest.as_str()))
    );
    let cmd = v["install_command"].as_str().unwrap();
    let origin = format!("https://{}", s.addr);
    assert!(cmd.starts_with(&format!("curl -fsSko /tmp/lifeboat-install.sh {origin}/downloads/install.sh && echo '{}  /tmp/lifeboat-install.sh' | sha256sum -c", sha256_hex(&script))), "{cmd}");
    assert!(
        cmd.ends_with(&format!("sudo LIFEBOAT_APPLIANCE={origin} sh /tmp/lifeboat-install.sh")),
        "{cmd}"
    );
    let path = "/api/v1/downloads?origin=https%3A%2F%2Fdr.example.com%3A8443";
    let (st, v) = call(&c, Method::GET, path, "/api/v1/downloads", Some(&token), "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["install_command"]
            .as_str()
            .unwrap()
            .contains("https://dr.example.com:8443/downloads/install.sh"),
        "{v}"
    );
    for bad in ["https%3A%2F%2Fa%3Brm", "http%3A%2F%2Fa", "https%3A%2F%2Fa%24(id)", "%zz"] {
        let path = format!("/api/v1/downloads?origin={bad}");
        let (st, v) = call(&c, Method::GET, &path, "/api/v1/downloads", Some(&token), "").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_origin")),
            "{bad}: {v}"
        );
    }

    // Push install: checked before a job starts; a machine that does not answer fails the job.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ok_body =
        format!(r#"{{"host":"127.0.0.1","port":{closed},"user":"root","password":"pw"}}"#);
    let (st, _) = call(
        &c,
        Method::POST,
        "/api/v1/machines/install",
        "/api/v1/machines/install",
        None,
        &ok_body,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    for (body, field) in [
        (r#"{"host":"a;b","user":"root","password":"pw"}"#, "host"),
        (r#"{"host":"","user":"root","password":"pw"}"#, "host"),
        (r#"{"host":"h","user":"","password":"pw"}"#, "user"),
        (r#"{"host":"h","user":"root","password":"pw","host_key":"MD5:aa"}"#, "host_key"),
        (r#"{"host":"h","user":"root","password":"pw","disks":["sda"]}"#, "disks"),
        (r#"{"host":"h","user":"root"}"#, "password or private_key"),
        (
            r#"{"host":"h","user":"root","password":"pw","appliance_url":"http://x"}"#,
            "appliance_url",
        ),
        (r#"{"host":"h","user":"root","password":"pw","port":0}"#, "port"),
    ] {
        let (st, v) = call(
            &c,
            Method::POST,
            "/api/v1/machines/install",
            "/api/v1/machines/install",
            Some(&token),
            body,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    let (st, v) = call(
        &c,
        Method::POST,
        "/api/v1/machines/install",
        "/api/v1/machines/install",
        Some(&token),
        &ok_body,
    )
    .await;
    assert_eq!((st, v["kind"].as_str()), (StatusCode::ACCEPTED, Some("install")), "{v}");
    let path = format!("/api/v1/jobs/{}", v["id"]);
    let mut job = v;
    for _ in 0..200 {
        if job["state"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        job = call(&c, Method::GET, &path, "/api/v1/jobs/{id}", Some(&token), "").await.1;
    }
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("unreachable: cannot connect to 127.0.0.1:{closed}")),
        "{job}"
    );

    // An appliance that serves no packages says so.
    let s2 = start().await;
    let c2 = s2.client(None);
    let (st, _, b) = c2
        .request(Method::GET, "/downloads/install.sh", Bytes::new(), HeaderMap::new())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_downloads")));
    let token2 = setup_admin(&c2, &s2.state).await;
    let (st, v) =
        call(&c2, Method::GET, "/api/v1/downloads", "/api/v1/downloads", Some(&token2), "").await;
    assert_eq!(
        (st, &v["enabled"], v["install_command"].as_str()),
        (StatusCode::OK, &Value::Bool(false), Some(""))
    );
    let (st, v) = call(
        &c2,
        Method::POST,
        "/api/v1/machines/install",
        "/api/v1/machines/install",
        Some(&token2),
        &ok_body,
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("no_package")), "{v}");
}
