//! Real servers and clients on 127.0.0.1: mTLS, fingerprint pinning, body limits,
//! errors, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use lifeboat_net::server::{self, ApiError, PeerInfo, RequestBody, ResponseBody, ServeOptions};
use lifeboat_net::tls::{self, ClientAuth, Trust};
use lifeboat_net::{Ca, Client, ClientError, Identity};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server: Identity,
}

fn new_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::load_or_create(dir.path(), "Lifeboat test CA").expect("ca");
    let server = ca.issue_server(&["appliance.test".into()]).expect("server identity");
    Pki { _dir: dir, ca, server }
}

/// A client identity for `machine_id`, the way an agent gets one.
fn agent_identity(ca: &Ca, machine_id: &str) -> Identity {
    let (key_pem, csr_pem) = Identity::generate_csr("agent-host").expect("csr");
    let cert_pem = ca.sign_client_csr(&csr_pem, machine_id, 30).expect("sign");
    Identity { cert_pem, key_pem }
}

struct Running {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops")
            .expect("join");
    }
}

/// The test application: echoes who called and how, or fails on demand.
async fn app(
    calls: Arc<AtomicUsize>,
    request: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    calls.fetch_add(1, Ordering::SeqCst);
    let peer = request.extensions().get::<PeerInfo>().cloned().expect("PeerInfo is always set");
    let version = format!("{:?}", request.version());
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/forbidden" => {
            return Err(ApiError::forbidden("not_your_disk", "machine m-1 may not write disk d-9"));
        }
        "/panic" => panic!("handler bug"),
        "/slow" => tokio::time::sleep(Duration::from_millis(600)).await,
        "/very-slow" => tokio::time::sleep(Duration::from_secs(20)).await,
        _ => {}
    }
    let body = server::read_body(request.into_body()).await?;
    server::json(
        StatusCode::OK,
        &serde_json::json!({
            "machine_id": peer.machine_id,
            "remote_port": peer.remote_addr.port(),
            "version": version,
            "len": body.len(),
        }),
    )
}

async fn start(
    server_identity: &Identity,
    client_auth: ClientAuth,
    options: ServeOptions,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_on(listener, server_identity, client_auth, options)
}

fn start_on(
    listener: TcpListener,
    server_identity: &Identity,
    client_auth: ClientAuth,
    options: ServeOptions,
) -> Running {
    let addr = listener.local_addr().expect("addr");
    let config = tls::server_config(server_identity, client_auth).expect("server config");
    let calls = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let handler_calls = calls.clone();
    let task = tokio::spawn(server::serve_with(
        listener,
        config,
        move |request| app(handler_calls.clone(), request),
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    Running { addr, calls, stop: Some(stop), task }
}

fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

#[tokio::test]
async fn mtls_round_trip_over_http2_carries_the_machine_id() {
    let pki = new_pki();
    let running = start(
        &pki.server,
        ClientAuth::Required { ca_pem: pki.ca.cert_pem().into() },
        ServeOptions::default(),
    )
    .await;
    let agent = agent_identity(&pki.ca, "m-42");
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), Some(&agent))
        .expect("client config");
    let client = Client::new(&running.url(), config).expect("client");

    let (status, headers, body) = client
        .post("/v1/batches", Bytes::from_static(b"0123456789"), HeaderMap::new())
        .await
        .expect("post");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["content-type"], "application/json");
    let first = json(&body);
    assert_eq!(first["machine_id"], "m-42");
    assert_eq!(first["version"], "HTTP/2.0");
    assert_eq!(first["len"], 10);

    // The connection is reused: same client port.
    let (_, _, body) = client.get("/v1/whoami", HeaderMap::new()).await.expect("get");
    assert_eq!(json(&body)["remote_port"], first["remote_port"]);

    // Handler errors are JSON with their status.
    let (status, _, body) = client.get("/forbidden", HeaderMap::new()).await.expect("get");
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error = json(&body);
    assert_eq!(error["code"], "not_your_disk");
    assert_eq!(error["error"], "machine m-1 may not write disk d-9");

    // A panicking handler fails its own request only.
    let (status, _, body) = client.get("/panic", HeaderMap::new()).await.expect("get");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json(&body)["code"], "internal");
    let (status, _, _) = client.get("/after-panic", HeaderMap::new()).await.expect("get");
    assert_eq!(status, StatusCode::OK);

    running.stop().await;
}

#[tokio::test]
async fn required_server_refuses_a_client_without_certificate() {
    let pki = new_pki();
    let running = start(
        &pki.server,
        ClientAuth::Required { ca_pem: pki.ca.cert_pem().into() },
        ServeOptions::default(),
    )
    .await;
    let config =
        tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("client config");
    let client = Client::new(&running.url(), config).expect("client");
    let err = client.get("/v1/whoami", HeaderMap::new()).await.expect_err("must be refused");
    assert!(matches!(err, ClientError::CertificateRefused { .. }), "{err:?}: {err}");
    assert!(err.to_string().contains("register"), "{err}");
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
    running.stop().await;
}

#[tokio::test]
async fn required_server_refuses_a_certificate_from_another_ca() {
    let pki = new_pki();
    let rogue = new_pki();
    let running = start(
        &pki.server,
        ClientAuth::Required { ca_pem: pki.ca.cert_pem().into() },
        ServeOptions::default(),
    )
    .await;
    // The client trusts the right appliance but holds a certificate from another CA.
    let impostor = agent_identity(&rogue.ca, "m-42");
    let config =
        tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), Some(&impostor)).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let err = client.get("/v1/whoami", HeaderMap::new()).await.expect_err("must be refused");
    assert!(matches!(err, ClientError::CertificateRefused { .. }), "{err:?}: {err}");

    // A server certificate of our own CA cannot be used as a client certificate either.
    let config =
        tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), Some(&pki.server)).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let err = client.get("/v1/whoami", HeaderMap::new()).await.expect_err("must be refused");
    assert!(matches!(err, ClientError::CertificateRefused { .. }), "{err:?}: {err}");

    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
    running.stop().await;
}

#[tokio::test]
async fn first_contact_pins_the_ca_fingerprint() {
    let pki = new_pki();
    let other = new_pki();
    let running = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;

    // The right fingerprint, typed the way an operator might.
    let typed = pki.ca.fingerprint()[7..].to_ascii_uppercase();
    let config = tls::client_config(Trust::Fingerprint(typed), None).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let (status, _, body) = client
        .post("/v1/register", Bytes::from_static(b"{}"), HeaderMap::new())
        .await
        .expect("post");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["machine_id"], serde_json::Value::Null, "no client certificate on 443");

    // A wrong fingerprint is refused, with the message that names the pin.
    let config = tls::client_config(Trust::Fingerprint(other.ca.fingerprint().into()), None)
        .expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let err =
        client.post("/v1/register", Bytes::new(), HeaderMap::new()).await.expect_err("wrong pin");
    assert!(matches!(err, ClientError::PinMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("the appliance's certificate is not signed by the pinned CA"), "{text}");
    assert!(text.contains(other.ca.fingerprint()) && text.contains(pki.ca.fingerprint()), "{text}");

    // Trusting the wrong CA certificate is refused too.
    let config = tls::client_config(Trust::Ca(other.ca.cert_pem().into()), None).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let err = client.get("/", HeaderMap::new()).await.expect_err("wrong CA");
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");

    assert_eq!(running.calls.load(Ordering::SeqCst), 1);
    running.stop().await;
}

#[tokio::test]
async fn pinned_ca_still_checks_the_server_name() {
    let pki = new_pki();
    // 127.0.0.2 is loopback on Linux but not in the certificate (only 127.0.0.1 is).
    let Ok(listener) = TcpListener::bind("127.0.0.2:0").await else {
        eprintln!("127.0.0.2 cannot be bound here: skipping");
        return;
    };
    let running = start_on(listener, &pki.server, ClientAuth::None, ServeOptions::default());
    let config =
        tls::client_config(Trust::Fingerprint(pki.ca.fingerprint().into()), None).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    match client.get("/", HeaderMap::new()).await {
        Err(ClientError::WrongName { host, .. }) => assert_eq!(host, "127.0.0.2"),
        other => panic!("expected a name mismatch, got {other:?}"),
    }
    assert_eq!(running.calls.load(Ordering::SeqCst), 0);
    running.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let pki = new_pki();
    let running = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config");
    let client =
        Client::new(&running.url(), config).expect("client").with_timeout(Duration::from_secs(120));

    let limit = server::DEFAULT_MAX_BODY_BYTES;
    let (status, _, body) = client
        .post("/v1/batches", Bytes::from(vec![7u8; limit]), HeaderMap::new())
        .await
        .expect("at limit");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["len"], limit);

    let (status, _, body) = client
        .post("/v1/batches", Bytes::from(vec![7u8; limit + 1]), HeaderMap::new())
        .await
        .expect("over limit");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&body)["code"], "body_too_large");
    running.stop().await;
}

#[tokio::test]
async fn streamed_body_without_length_is_limited_while_read() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let pki = new_pki();
    let options = ServeOptions { max_body_bytes: 1000, ..ServeOptions::default() };
    let running = start(&pki.server, ClientAuth::None, options).await;

    // A raw HTTP/2 connection so that the body has no Content-Length.
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config");
    let tcp = tokio::net::TcpStream::connect(running.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("tls");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);

    let send = |chunks: usize| {
        let frames = (0..chunks)
            .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![1u8; 300]))));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Request::post(format!("https://localhost:{}/v1/batches", running.addr.port()))
            .body(body)
            .expect("request")
    };
    let response = sender.send_request(send(3)).await.expect("under the limit");
    assert_eq!(response.status(), StatusCode::OK);
    let response = sender.send_request(send(4)).await.expect("over the limit");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = server::read_body(response.into_body()).await.expect("body");
    assert_eq!(json(&body)["code"], "body_too_large");
    running.stop().await;
}

#[tokio::test]
async fn http11_clients_are_served_too() {
    let pki = new_pki();
    let running = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes())
                    .expect("pem"),
            )
            .expect("root");
        roots
    };
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(running.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("h1 handshake");
    tokio::spawn(connection);
    let request = Request::get("/v1/whoami")
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = server::read_body(response.into_body()).await.expect("body");
    assert_eq!(json(&body)["version"], "HTTP/1.1");
    running.stop().await;
}

#[tokio::test]
async fn unreachable_appliance_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let pki = new_pki();
    let config =
        tls::client_config(Trust::Fingerprint(pki.ca.fingerprint().into()), None).expect("config");
    let client = Client::new(&format!("https://{addr}"), config).expect("client");
    let err = client.get("/", HeaderMap::new()).await.expect_err("nothing listens");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the appliance at {addr}: is it running?")),
        "{text}"
    );

    let err = Client::new(
        "http://appliance:80",
        tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config"),
    )
    .expect_err("http");
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn requests_time_out() {
    let pki = new_pki();
    let running = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config");
    let client = Client::new(&running.url(), config)
        .expect("client")
        .with_timeout(Duration::from_millis(150));
    let err = client.get("/slow", HeaderMap::new()).await.expect_err("too slow");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    running.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let pki = new_pki();
    let running = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;
    let addr = running.addr;
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config");
    let client = Client::new(&running.url(), config.clone()).expect("client");

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get("/slow", HeaderMap::new()).await }
    });
    // Let the request reach the handler, then ask for shutdown.
    for _ in 0..100 {
        if running.calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.calls.load(Ordering::SeqCst), 1);
    running.stop().await;

    let (status, _, _) = in_flight.await.expect("join").expect("the in-flight request completed");
    assert_eq!(status, StatusCode::OK);
    let fresh = Client::new(&format!("https://{addr}"), config).expect("client");
    let err = fresh.get("/", HeaderMap::new()).await.expect_err("no longer listening");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn shutdown_grace_is_capped() {
    let pki = new_pki();
    let options =
        ServeOptions { shutdown_grace: Duration::from_millis(100), ..ServeOptions::default() };
    let running = start(&pki.server, ClientAuth::None, options).await;
    let config = tls::client_config(Trust::Ca(pki.ca.cert_pem().into()), None).expect("config");
    let client = Client::new(&running.url(), config).expect("client");
    let in_flight = tokio::spawn(async move { client.get("/very-slow", HeaderMap::new()).await });
    for _ in 0..100 {
        if running.calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    running.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
    assert!(in_flight.await.expect("join").is_err(), "the slow request was cut off");
}

#[tokio::test]
async fn peers_authenticate_each_other_with_their_agent_certificates() {
    let pki = new_pki();
    let a = agent_identity(&pki.ca, "m-a");
    let b = agent_identity(&pki.ca, "m-b");
    // Agent A serves with its own (client-auth) certificate, as group members do.
    let running = start(
        &a,
        ClientAuth::Required { ca_pem: pki.ca.cert_pem().into() },
        ServeOptions::default(),
    )
    .await;
    let config = tls::peer_client_config(pki.ca.cert_pem(), &b, "m-a").expect("peer config");
    let client = Client::new(&running.url(), config).expect("client");
    let (status, _, body) = client.get("/v1/whoami", HeaderMap::new()).await.expect("get");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["machine_id"], "m-b", "the server sees the calling machine");

    // Expecting another machine at that address: refused.
    let wrong = tls::peer_client_config(pki.ca.cert_pem(), &b, "m-c").expect("peer config");
    let client = Client::new(&running.url(), wrong).expect("client");
    let e = client.get("/v1/whoami", HeaderMap::new()).await.unwrap_err();
    assert!(e.to_string().contains("m-a"), "{e}");

    // A peer whose certificate comes from another appliance: refused both ways.
    let other = new_pki();
    let stranger = agent_identity(&other.ca, "m-a");
    let theirs = tls::peer_client_config(other.ca.cert_pem(), &stranger, "m-a").expect("config");
    let client = Client::new(&running.url(), theirs).expect("client");
    assert!(client.get("/v1/whoami", HeaderMap::new()).await.is_err());
    // The appliance's own server certificate (serverAuth, no machine id) is not a peer.
    let server = start(&pki.server, ClientAuth::None, ServeOptions::default()).await;
    let config = tls::peer_client_config(pki.ca.cert_pem(), &b, "m-a").expect("peer config");
    let client = Client::new(&server.url(), config).expect("client");
    assert!(client.get("/v1/whoami", HeaderMap::new()).await.is_err());
    server.stop().await;
    running.stop().await;
}
