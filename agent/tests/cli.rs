//! The real `lifeboat-agent` binary against a small appliance on 127.0.0.1 (configuration
//! server for registration, process server with mutual TLS), speaking `lifeboat_api`:
//! register, `run --once` twice, and the exit codes of the common mistakes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use lifeboat_api::{BatchAck, DiskCursor, Hello, HelloResponse, RegisterRequest, RegisterResponse};
use lifeboat_net::server::{self, ApiError, PeerInfo, RequestBody, ResponseBody};
use lifeboat_net::tls::ClientAuth;
use lifeboat_net::{Ca, Identity};
use lifeboat_wire::Extent;

const DISK_SIZE: usize = 1 << 20;

#[derive(Default)]
struct State {
    next: u64,
    replica: Vec<u8>,
    points: Vec<u64>,
    progress_posts: u32,
}

struct Appliance {
    config_url: String,
    fingerprint: String,
    state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
}

async fn start_appliance() -> Appliance {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(dir.path(), "cli test CA").unwrap());
    let server_id: Identity = ca.issue_server(&[]).unwrap();
    let state = Arc::new(Mutex::new(State { replica: vec![0; DISK_SIZE], ..State::default() }));

    let ps_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ps_url = format!("https://{}", ps_listener.local_addr().unwrap());
    let ps_tls = lifeboat_net::tls::server_config(
        &server_id,
        ClientAuth::Required { ca_pem: ca.cert_pem().to_string() },
    )
    .unwrap();
    let st = state.clone();
    tokio::spawn(server::serve(
        ps_listener,
        ps_tls,
        move |req| process_server(st.clone(), req),
        std::future::pending::<()>(),
    ));

    let cs_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config_url = format!("https://{}", cs_listener.local_addr().unwrap());
    let cs_tls = lifeboat_net::tls::server_config(&server_id, ClientAuth::None).unwrap();
    let fingerprint = ca.fingerprint().to_string();
    tokio::spawn(server::serve(
        cs_listener,
        cs_tls,
        move |req: Request<RequestBody>| {
            let (ca, ps_url) = (ca.clone(), ps_url.clone());
            async move {
                let r: RegisterRequest = server::read_json(req.into_body()).await?;
                if r.passphrase != "let me in" {
                    return Err(ApiError::forbidden("bad_passphrase", "wrong passphrase"));
                }
                let id = "11111111-2222-3333-4444-555555555555".to_string();
                let cert_pem = ca
                    .sign_client_csr(&r.csr_pem, &id, 30)
                    .map_err(|e| ApiError::bad_request("bad_csr", e.to_string()))?;
                server::json(
                    StatusCode::OK,
                    &RegisterResponse {
                        machine_id: id,
                        cert_pem,
                        ca_pem: ca.cert_pem().to_string(),
                        protocol_version: 1,
                        process_server_url: ps_url,
                    },
                )
            }
        },
        std::future::pending::<()>(),
    ));
    Appliance { config_url, fingerprint, state, _dir: dir }
}

async fn process_server(
    state: Arc<Mutex<State>>,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    let peer = req.extensions().get::<PeerInfo>().cloned().unwrap();
    assert_eq!(peer.machine_id.as_deref(), Some("11111111-2222-3333-4444-555555555555"));
    let path = req.uri().path().to_string();
    let body = server::read_body(req.into_body()).await?;
    let mut s = state.lock().unwrap();
    match path.as_str() {
        "/api/v1/hello" => {
            let hello: Hello = serde_json::from_slice(&body).unwrap();
            assert_eq!(hello.disks.len(), 1);
            assert_eq!(hello.disks[0].size, DISK_SIZE as u64);
            let disks = vec![DiskCursor { index: 0, next_sequence: s.next }];
            server::json(StatusCode::OK, &HelloResponse { protocol_version: 1, disks })
        }
        "/api/v1/progress" => {
            s.progress_posts += 1;
            server::json(StatusCode::OK, &serde_json::json!({}))
        }
        "/api/v1/batches" => {
            let batch = lifeboat_wire::decode(&body)
                .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
            let h = *batch.header();
            if h.sequence < s.next {
                let ack =
                    BatchAck { disk: 0, sequence: h.sequence, duplicate: true, slow_down_ms: 0 };
                return server::json(StatusCode::OK, &ack);
            }
            if h.sequence > s.next {
                let body = serde_json::json!({
                    "error": "gap", "code": "sequence-gap", "expected_sequence": s.next,
                });
                return server::json(StatusCode::CONFLICT, &body);
            }
            for e in batch.extents() {
                let (o, l) = (e.offset() as usize, e.length() as usize);
                match e {
                    Extent::Data { data, .. } => s.replica[o..o + l].copy_from_slice(data),
                    Extent::Zero { .. } => s.replica[o..o + l].fill(0),
                }
            }
            if let Some(tag) = h.tag {
                s.points.push(tag.point_id);
            }
            s.next += 1;
            let ack = BatchAck { disk: 0, sequence: h.sequence, duplicate: false, slow_down_ms: 0 };
            server::json(StatusCode::OK, &ack)
        }
        _ => Err(ApiError::not_found("not_found", path)),
    }
}

async fn agent(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lifeboat-agent"))
            .args(&args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn register_args(app: &Appliance, state: &Path, passphrase: &str) -> Vec<String> {
    vec![
        "register".into(),
        "--appliance".into(),
        app.config_url.clone(),
        "--fingerprint".into(),
        app.fingerprint.clone(),
        "--passphrase".into(),
        passphrase.into(),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

fn write_config(dir: &Path, state: &Path, disk: &Path, extra: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "config_version = 1\nstate_dir = {:?}\ndisks = [{:?}]\ninterval_secs = 1\nbatch_max_bytes = 65536\n{extra}",
            state.display().to_string(),
            disk.display().to_string()
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_run_once_replicates_the_disk() {
    let app = start_appliance().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let disk = dir.path().join("disk.img");
    let f = File::create(&disk).unwrap();
    f.set_len(DISK_SIZE as u64).unwrap();
    f.write_all_at(&[7u8; 300_000], 4096).unwrap();
    f.write_all_at(b"the end", DISK_SIZE as u64 - 4096).unwrap();

    // Not registered yet: a runtime failure that says what to do.
    let cfg = write_config(dir.path(), &state, &disk, "");
    let out =
        agent(vec!["run".into(), "--config".into(), cfg.display().to_string(), "--once".into()])
            .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("lifeboat-agent register"), "{}", text(&out));

    let out = agent(register_args(&app, &state, "wrong")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));

    let out = agent(register_args(&app, &state, "let me in")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("registered as machine 11111111-2222"), "{}", text(&out));
    let out = agent(register_args(&app, &state, "let me in")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("already registered"), "{}", text(&out));

    let out =
        agent(vec!["run".into(), "--config".into(), cfg.display().to_string(), "--once".into()])
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("change tracker: hash scan, because it is an image file"),
        "{}",
        text(&out)
    );
    {
        let s = app.state.lock().unwrap();
        assert!(s.replica == std::fs::read(&disk).unwrap(), "replica differs after the first run");
        assert_eq!(s.points, vec![1]);
        assert!(s.next >= 5, "300 KB in 64 KiB batches: {}", s.next);
    }

    // A change, then another run: a delta, point 2.
    OpenOptions::new().write(true).open(&disk).unwrap().write_all_at(&[0u8; 8192], 8192).unwrap();
    let out =
        agent(vec!["run".into(), "--config".into(), cfg.display().to_string(), "--once".into()])
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    {
        let s = app.state.lock().unwrap();
        assert!(s.replica == std::fs::read(&disk).unwrap(), "replica differs after the second run");
        assert_eq!(s.points, vec![1, 2]);
    }

    // As a service: a cycle (a point) every interval_secs, until SIGTERM, then exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeboat-agent"))
        .args(["run", "--config", &cfg.display().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.state.lock().unwrap().points.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "no cycles");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let s = app.state.lock().unwrap();
    assert!(s.replica == std::fs::read(&disk).unwrap());
    let points = &s.points;
    assert!(points.windows(2).all(|w| w[1] == w[0] + 1), "{points:?}");
}

#[tokio::test]
async fn configuration_and_argument_mistakes_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    File::create(&disk).unwrap().set_len(4096).unwrap();
    let cfg = write_config(dir.path(), &dir.path().join("s"), &disk, "intervall = 3\n");
    let out = agent(vec!["run".into(), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("intervall"), "{}", text(&out));

    let out = agent(vec!["run".into(), "--config".into(), "/nonexistent/agent.toml".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/agent.toml"), "{}", text(&out));

    let out = agent(vec!["frobnicate".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = agent(vec![
        "register".into(),
        "--appliance".into(),
        "https://127.0.0.1:1".into(),
        "--fingerprint".into(),
        "not-a-fingerprint".into(),
        "--passphrase".into(),
        "x".into(),
        "--state-dir".into(),
        dir.path().join("s").display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("fingerprint"), "{}", text(&out));
}
