//! HTTPS server loop shared by the configuration server and the process server.
//!
//! [`serve`] accepts TCP connections, does the TLS handshake (with a timeout, in the
//! connection's own task so a slow client never stalls the accept loop), and serves
//! HTTP/2 or HTTP/1.1 on it with hyper-util's auto builder. Every request reaches the
//! handler with:
//!
//! * a [`PeerInfo`] in its extensions: the remote address and, on an mTLS listener, the
//!   machine id of the verified client certificate. Authorisation decisions ("an agent
//!   writes only its own machine's disks") are made from this, never from anything the
//!   client says in the request;
//! * its body wrapped in [`Limited`] ([`RequestBody`]): reading more than
//!   [`ServeOptions::max_body_bytes`] fails, and [`read_body`] turns that into a 413. A
//!   request whose `Content-Length` already exceeds the limit is answered 413 without
//!   calling the handler.
//!
//! Handlers return `Result<Response<ResponseBody>, ApiError>`; an [`ApiError`] becomes a
//! JSON body `{"error": "...", "code": "..."}` with its status. A handler that panics
//! answers 500 for that request only.
//!
//! Shutdown: when the `shutdown` future completes the listener is closed, every
//! connection is told to finish (HTTP/2 GOAWAY, HTTP/1.1 closes after the current
//! response), in-flight requests run to completion for up to
//! [`ServeOptions::shutdown_grace`], then the remaining connections are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::tls;

/// Default limit of a request body: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// Errors boxed in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body a handler receives: the request body, limited.
pub type RequestBody = Limited<Incoming>;
/// The body a handler returns (any body, boxed; see [`full`] and [`json`]).
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Who is on the other end of the connection a request came on. Inserted into every
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The machine id from the verified client certificate; `None` on a listener without
    /// client authentication.
    pub machine_id: Option<String>,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The verified client certificate (DER), if one was presented.
    pub cert_der: Option<Arc<Vec<u8>>>,
}

/// Tunables of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body a handler can read.
    pub max_body_bytes: usize,
    /// Most connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Most HTTP/2 requests in flight on one connection.
    pub max_streams: u32,
    /// HTTP/2 flow-control window of one request, and of a whole connection: how much a
    /// client may send before a handler reads it. Large for batches (the default,
    /// [`H2_STREAM_WINDOW`]); small where bodies are small, so that a flood of requests
    /// nobody reads holds little memory.
    pub h2_windows: (u32, u32),
    /// How long in-flight requests may run after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_streams: 64,
            h2_windows: (H2_STREAM_WINDOW, 2 * H2_STREAM_WINDOW),
            shutdown_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// An error answered to the client as `{"error": message, "code": code}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`snake_case`).
    pub code: &'static str,
    /// What was wrong and what to do, for a person.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 403: the peer may not do this (for example write another machine's disks).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404: no such resource.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 413: the request body is larger than `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 500: a fault on our side; the details belong in the log, not the response.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON response for this error.
    pub fn into_response(self) -> Response<ResponseBody> {
        let body = ErrorBody { error: &self.message, code: self.code };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(full(bytes));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(
    status: StatusCode,
    value: &T,
) -> Result<Response<ResponseBody>, ApiError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Reads a whole (limited) body: over the limit is a 413 [`ApiError`], a broken stream a 400.
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            let e: BoxError = e.into();
            // The limit may be reached by an inner body that another layer wrapped (a
            // router's body type): look through the whole chain of sources.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            let mut over_limit = false;
            while let Some(c) = cause {
                if c.is::<LengthLimitError>() {
                    over_limit = true;
                    break;
                }
                cause = c.source();
            }
            if over_limit {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than this endpoint accepts",
                ))
            } else {
                Err(ApiError::bad_request(
                    "bad_body",
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

/// Reads a whole (limited) body as JSON; malformed JSON is a 400 `bad_json`.
pub async fn read_json<T, B>(body: B) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = read_body(body).await?;
    // Every body of the API is one JSON object: serde would also take a struct from an
    // array, and leave text after the value unread.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "bad_json",
            "the request body is not valid JSON for this endpoint: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        // The field the error is at, so the message names it (`name: invalid type …`).
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { format!("{path}: ") };
        ApiError::bad_request(
            "bad_json",
            format!(
                "the request body is not valid JSON for this endpoint: {field}{}",
                e.into_inner()
            ),
        )
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the request body is not valid JSON for this endpoint: {e}"),
        )
    })?;
    Ok(value)
}

/// HTTP/2 flow-control window of a request stream the server advertises.
pub const H2_STREAM_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame the server accepts (the protocol allows up to 16 MiB - 1).
pub const H2_MAX_FRAME: u32 = 1 << 20;

/// [`serve_with`] with [`ServeOptions::default`].
pub async fn serve<H, Fut, S>(
    listener: TcpListener,
    tls: impl Into<TlsSource>,
    handler: H,
    shutdown: S,
) where
    H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, ApiError>> + Send + 'static,
    S: Future,
{
    serve_with(listener, tls, handler, shutdown, ServeOptions::default()).await;
}

/// The TLS configuration a server uses for each new connection: fixed, or replaceable
/// while it runs (a renewed server certificate, a changed set of trusted CAs); connections
/// already open keep theirs.
#[derive(Clone)]
pub struct TlsSource(Arc<std::sync::RwLock<Arc<ServerConfig>>>);

impl TlsSource {
    /// A source starting with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsSource(Arc::new(std::sync::RwLock::new(config)))
    }

    /// New connections use `config` from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource").finish_non_exhaustive()
    }
}

impl From<Arc<ServerConfig>> for TlsSource {
    fn from(c: Arc<ServerConfig>) -> Self {
        TlsSource::new(c)
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes, then drains (see the module
/// documentation). Returns when every connection is closed or the grace period ran out.
pub async fn serve_with<H, Fut, S>(
    listener: TcpListener,
    tls: impl Into<TlsSource>,
    handler: H,
    shutdown: S,
    options: ServeOptions,
) where
    H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, ApiError>> + Send + 'static,
    S: Future,
{
    let tls: TlsSource = tls.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_streams)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // Batches are megabytes: windows that hold a whole default batch, and large frames,
        // so an upload is not a series of 1 MiB round trips of 16 KiB frames.
        .initial_stream_window_size(options.h2_windows.0)
        .initial_connection_window_size(options.h2_windows.1)
        .max_frame_size(H2_MAX_FRAME);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let mut refused_logged: Option<std::time::Instant> = None;
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, remote_addr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Bounded connections, in all and per address: past either, the new
                // connection is closed before any TLS work is done for it.
                let slot = {
                    let mut m = per_ip.lock().unwrap_or_else(|p| p.into_inner());
                    let n = m.get(&remote_addr.ip()).copied().unwrap_or(0);
                    if connections.len() >= options.max_connections
                        || n >= options.max_connections_per_ip
                    {
                        None
                    } else {
                        m.insert(remote_addr.ip(), n + 1);
                        Some(IpSlot { map: per_ip.clone(), ip: remote_addr.ip() })
                    }
                };
                let Some(slot) = slot else {
                    if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        refused_logged = Some(std::time::Instant::now());
                        tracing::warn!(%remote_addr, open = connections.len(), "too many connections: closing new ones");
                    }
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let connection = Connection {
                    acceptor: tokio_rustls::TlsAcceptor::from(tls.current()),
                    builder: builder.clone(),
                    handler: handler.clone(),
                    options: options.clone(),
                    remote_addr,
                };
                let watcher = graceful.watcher();
                connections.spawn(async move {
                    connection.run(tcp, watcher).await;
                    drop(slot);
                });
            }
        }
    }

    drop(listener);
    tracing::info!(addr = ?local, open = connections.len(), "shutting down: draining connections");
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            addr = ?local,
            grace = ?options.shutdown_grace,
            "requests still running after the shutdown grace period: closing their connections"
        );
    }
    connections.shutdown().await;
}

/// One connection counted against its address; uncounted when dropped.
struct IpSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

struct Connection<H> {
    acceptor: tokio_rustls::TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    options: ServeOptions,
    remote_addr: SocketAddr,
}

impl<H, Fut> Connection<H>
where
    H: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, ApiError>> + Send + 'static,
{
    async fn run(self, tcp: tokio::net::TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        let remote_addr = self.remote_addr;
        let handshake =
            tokio::time::timeout(self.options.handshake_timeout, self.acceptor.accept(tcp));
        let stream = match handshake.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                log_handshake_error(remote_addr, &e);
                return;
            }
            Err(_) => {
                tracing::debug!(%remote_addr, "TLS handshake timed out");
                return;
            }
        };
        let cert_der = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.as_ref().to_vec()));
        let peer = PeerInfo { machine_id: tls::peer_machine_id(&stream), remote_addr, cert_der };
        let handler = self.handler;
        let limit = self.options.max_body_bytes;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(handle(handler, peer, limit, request).await) }
        });
        let connection = self.builder.serve_connection(TokioIo::new(stream), service).into_owned();
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
        }
    }
}

async fn handle<H, Fut>(
    handler: H,
    peer: PeerInfo,
    limit: usize,
    request: Request<Incoming>,
) -> Response<ResponseBody>
where
    H: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<ResponseBody>, ApiError>>,
{
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return ApiError::body_too_large(limit).into_response();
    }
    let (mut parts, body) = request.into_parts();
    let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
    parts.extensions.insert(peer.clone());
    let request = Request::from_parts(parts, Limited::new(body, limit));
    match AssertUnwindSafe(handler(request)).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            if error.status.is_server_error() {
                tracing::warn!(%method, path, peer = ?peer, error = %error, "request failed");
            }
            error.into_response()
        }
        Err(_) => {
            tracing::error!(%method, path, peer = ?peer, "request handler panicked");
            ApiError::internal("the server failed while handling this request; see its log")
                .into_response()
        }
    }
}

fn log_handshake_error(remote_addr: SocketAddr, error: &std::io::Error) {
    let certificate_problem =
        error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if certificate_problem {
        tracing::info!(%remote_addr, error = %error, "refused a client certificate");
    } else {
        tracing::debug!(%remote_addr, error = %error, "TLS handshake failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_body_maps_the_limit_to_413() {
        let body = Limited::new(Full::new(Bytes::from(vec![0u8; 2048])), 1024);
        let err = read_body(body).await.expect_err("over the limit");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, "body_too_large");

        let body = Limited::new(Full::new(Bytes::from_static(b"ok")), 1024);
        assert_eq!(read_body(body).await.expect("under the limit"), Bytes::from_static(b"ok"));
    }

    #[tokio::test]
    async fn read_json_takes_one_object_and_nothing_else() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct B {
            #[serde(default)]
            point: Option<String>,
        }
        let read =
            |text: &'static str| read_json::<B, _>(Full::new(Bytes::from_static(text.as_bytes())));
        assert_eq!(read(" {\"point\":\"x\"} \n").await.unwrap().point.as_deref(), Some("x"));
        for bad in ["", "[]", "[\"x\"]", "null", "{} {}", "{}x", "{\"point\":1}", "{\"p\":1}", "{"]
        {
            let e = read(bad).await.expect_err(bad);
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_json"), "{bad}");
        }
        let e = read("{\"point\":1}").await.unwrap_err();
        assert!(e.message.contains("point"), "{e:?}");
    }

    #[tokio::test]
    async fn api_errors_are_json() {
        let response = ApiError::forbidden("not_your_disk", "machine m1 may not write disk d9")
            .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let bytes = read_body(response.into_body()).await.expect("body");
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["code"], "not_your_disk");
        assert_eq!(value["error"], "machine m1 may not write disk d9");
    }
}
