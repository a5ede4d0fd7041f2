use super::*;
use bytes::Bytes;
use lifeboat_net::Ca;

fn identity(ca: &Ca, id: &str) -> Identity {
    let (key_pem, csr_pem) = Identity::generate_csr("host").unwrap();
    Identity { cert_pem: ca.sign_client_csr(&csr_pem, id, 30).unwrap(), key_pem }
}

async fn post(c: &Client, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, _, body) =
        c.post(path, Bytes::from(body.to_owned()), HeaderMap::new()).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_listener_refuses_strangers_and_malformed_rounds() {
    let d = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(d.path(), "test CA").unwrap();
    let (a, b, c) = (identity(&ca, "m-a"), identity(&ca, "m-b"), identity(&ca, "m-c"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (round_tx, round_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let assignment = |coordinator: &str| lifeboat_api::GroupAssignment {
        name: "erp".into(),
        coordinator: coordinator.into(),
        members: vec!["m-a".into(), "m-b".into()],
    };
    let view: GroupView = Arc::new(std::sync::RwLock::new(Some(assignment("m-b"))));
    let reported = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reporter: PointReporter = {
        let reported = reported.clone();
        Arc::new(move |g: &str, p: u64| reported.lock().unwrap().push((g.to_owned(), p)))
    };
    let server = tokio::spawn(serve_member(
        listener,
        b.clone(),
        ca.cert_pem().to_owned(),
        MemberSetup {
            group: "erp".into(),
            me: "m-b".into(),
            peers: vec!["m-a".into()],
            view: view.clone(),
            reporter: Some(reporter),
        },
        round_tx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let peer = |who: &Identity| {
        Client::new(&url, lifeboat_net::tls::peer_client_config(ca.cert_pem(), who, "m-b").unwrap())
            .unwrap()
    };
    let (from_a, from_c) = (peer(&a), peer(&c));

    // Not a member.
    let (s, v) =
        post(&from_c, "/group/v1/prepare", r#"{"group":"erp","round":1,"deadline_ms":1000}"#).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Malformed bodies, wrong group, bad deadline, unknown round, unknown path.
    for (path, body, want) in [
        ("/group/v1/prepare", "{", StatusCode::BAD_REQUEST),
        ("/group/v1/prepare", r#"{"group":"erp","round":1}"#, StatusCode::BAD_REQUEST),
        (
            "/group/v1/prepare",
            r#"{"group":"erp","round":1,"deadline_ms":1000,"x":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/group/v1/prepare",
            r#"{"group":"hr","round":1,"deadline_ms":1000}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/group/v1/prepare",
            r#"{"group":"erp","round":1,"deadline_ms":0}"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/group/v1/freeze", r#"{"group":"erp","round":9,"point":3}"#, StatusCode::CONFLICT),
        ("/group/v1/commit", r#"{"group":"erp","round":9}"#, StatusCode::CONFLICT),
        ("/group/v1/nothing", "{}", StatusCode::NOT_FOUND),
    ] {
        let (s, v) = post(&from_a, path, body).await;
        assert_eq!(s, want, "{path} {body}: {v}");
    }
    assert!(round_rx.try_recv().is_err(), "no round was opened by bad requests");

    // Issue 11, finding 8: rounds from a peer the appliance does not name as the
    // group's coordinator (a revoked machine is dropped from its group) are refused,
    // and so is everything while the appliance defines no group.
    let prepare = r#"{"group":"erp","round":1,"deadline_ms":5000}"#;
    let (s, v) = post(&from_a, "/group/v1/prepare", prepare).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("not-in-group")), "{v}");
    *view.write().unwrap() = None;
    let (s, _) = post(&from_a, "/group/v1/prepare", prepare).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(round_rx.try_recv().is_err());
    *view.write().unwrap() = Some(assignment("m-a"));

    // A real round: prepared, then aborted; the cycle side sees both.
    let cycle = std::thread::spawn(move || {
        let mut r = round_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let got = r.ready(5);
        r.done(got.clone().map(|_| 0));
        got
    });
    let (s, v) =
        post(&from_a, "/group/v1/prepare", r#"{"group":"erp","round":1,"deadline_ms":5000}"#).await;
    assert_eq!((s, v["next_point"].as_u64()), (StatusCode::OK, Some(5)), "{v}");
    let (s, _) = post(&from_a, "/group/v1/abort", r#"{"group":"erp","round":1}"#).await;
    assert_eq!(s, StatusCode::OK);
    let got = tokio::task::spawn_blocking(move || cycle.join().unwrap()).await.unwrap();
    assert!(got.is_err_and(|e| e.contains("aborted")));
    assert!(reported.lock().unwrap().is_empty(), "an aborted round is not reported");

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
