//! A small HTTPS client for talking to the appliance: HTTP/2 over rustls, one pooled,
//! multiplexed connection per appliance address, a timeout per request, and errors that
//! tell the operator what to check.
//!
//! The TCP connect and TLS handshake are done by our own connector rather than by
//! hyper-util's `HttpConnector`, so that each failure is classified where it happens
//! (refused, unresolvable, timed out, certificate not trusted, our certificate refused)
//! instead of being guessed from a nested error chain afterwards.
//!
//! With TLS 1.3 a server checks the client's certificate only after the client considers
//! the handshake done, so a refused certificate shows up as an alert on the first read,
//! inside the HTTP/2 machinery, which keeps only the alert's text. Our IO wrapper
//! therefore records the last rustls error it saw ([`TlsFailures`]), and a failed request
//! is classified from it when the error chain itself no longer carries the type.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig};
use tokio::net::TcpStream;

use crate::server::BoxError;
use crate::tls::{self, PinMismatch};

/// Default timeout of one request (connect, send, and read the whole response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit of a response body: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Timeout of the TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the appliance.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The appliance URL or a request path is not usable.
    #[error("{url:?} is not a usable appliance URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The appliance's host name does not resolve.
    #[error("cannot resolve the appliance's host name {host}: {source}; check the address")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The TCP connection was refused or failed.
    #[error(
        "cannot reach the appliance at {addr}: is it running? ({source}); check the address, \
         and that no firewall between here and there blocks the port"
    )]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The TCP connect or TLS handshake took too long.
    #[error(
        "cannot reach the appliance at {addr}: no answer within {after:?}; check the address \
         and the network path (a firewall dropping packets looks like this)"
    )]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The server's certificate chain does not contain / is not signed by the pinned CA.
    #[error(
        "the appliance's certificate is not signed by the pinned CA: {detail}. Check the CA \
         fingerprint you copied from the appliance (its console and web UI show it); if it \
         is right, something between here and {addr} is intercepting the connection"
    )]
    PinMismatch {
        /// `host:port`.
        addr: String,
        /// Expected and presented fingerprints.
        detail: PinMismatch,
    },
    /// The server's certificate is not signed by the trusted CA.
    #[error(
        "the appliance at {addr} presented a certificate this machine does not trust \
         ({source}): it is not signed by the appliance CA this machine registered with. If \
         the appliance's CA was replaced, register this machine again"
    )]
    Untrusted {
        /// `host:port`.
        addr: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The server's certificate does not name the host we connected to.
    #[error(
        "the appliance's certificate is not valid for {host} ({source}): connect with a name or \
         address listed in it, or add {host} to the appliance's server names"
    )]
    WrongName {
        /// The host we connected to.
        host: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The server refused our client certificate (or its absence).
    #[error(
        "the appliance at {addr} refused this machine's certificate ({alert:?}): this machine \
         must register with this appliance (again) to get a valid certificate"
    )]
    CertificateRefused {
        /// `host:port`.
        addr: String,
        /// The TLS alert the server sent.
        alert: AlertDescription,
    },
    /// Another TLS failure.
    #[error("TLS with the appliance at {addr} failed: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The request did not complete in time.
    #[error("{method} {url} did not complete within {after:?}; the appliance may be overloaded")]
    Timeout {
        /// The request method.
        method: Method,
        /// The request URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The response body is larger than the client accepts.
    #[error("the response to {method} {url} is larger than the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The request method.
        method: Method,
        /// The request URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The HTTP exchange failed for another reason (connection reset, protocol error).
    #[error("{method} {url} failed: {detail}")]
    Http {
        /// The request method.
        method: Method,
        /// The request URL.
        url: String,
        /// The error chain, flattened.
        detail: String,
    },
    /// A request body could not be written as JSON (a map with keys that are not strings,
    /// a `Serialize` implementation that fails).
    #[error("the body of POST {path} cannot be written as JSON: {source}")]
    Body {
        /// The request path.
        path: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

/// Result of this module's functions.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An HTTPS client bound to one appliance address (`https://host:port`).
#[derive(Clone)]
pub struct Client {
    scheme: Scheme,
    authority: Authority,
    inner: hyper_util::client::legacy::Client<TlsConnector, Full<Bytes>>,
    tls_failures: TlsFailures,
    timeout: Duration,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the appliance at `base_url` (`https://host[:port]`, port 443 if
    /// omitted; a bare `host:port` is taken as HTTPS), using `tls` (see
    /// [`tls::client_config`]).
    pub fn new(base_url: &str, tls: Arc<ClientConfig>) -> Result<Client> {
        Self::with_source(base_url, tls, None)
    }

    /// [`Client::new`], connecting from the local address `source` (on a machine with
    /// several addresses, to choose the one the appliance sees).
    pub fn with_source(
        base_url: &str,
        tls: Arc<ClientConfig>,
        source: Option<std::net::IpAddr>,
    ) -> Result<Client> {
        let invalid =
            |reason: &str| ClientError::InvalidUrl { url: base_url.into(), reason: reason.into() };
        let text = if base_url.contains("://") {
            base_url.to_owned()
        } else {
            format!("https://{base_url}")
        };
        let uri: Uri = text.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme() != Some(&Scheme::HTTPS) {
            return Err(invalid("only https:// is supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
            return Err(invalid("give the address only (https://host:port), without a path"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user names in the URL are not supported"));
        }
        let tls_failures = TlsFailures::default();
        let connector = TlsConnector {
            tls: tokio_rustls::TlsConnector::from(tls),
            failures: tls_failures.clone(),
            source,
        };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .build(connector);
        Ok(Client {
            scheme: Scheme::HTTPS,
            authority,
            inner,
            tls_failures,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// Sets the timeout of each request (connect, send, read the whole response).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the largest response body accepted.
    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// `GET path`.
    pub async fn get(
        &self,
        path: &str,
        headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        self.request(Method::GET, path, Bytes::new(), headers).await
    }

    /// `POST path` with `body`.
    pub async fn post(
        &self,
        path: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        self.request(Method::POST, path, body, headers).await
    }

    /// `POST path` with `body` as JSON (`content-type: application/json` added to
    /// `headers`). A body that does not serialise (not plain data) is [`ClientError::Body`].
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        mut headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let bytes = serde_json::to_vec(body)
            .map_err(|source| ClientError::Body { path: path.to_owned(), source })?;
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.request(Method::POST, path, Bytes::from(bytes), headers).await
    }

    /// Any request; `path` is the path and query (`/v1/machines?x=y`). Returns the status,
    /// headers and whole body of the response, whatever the status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let url = format!("{}://{}{}", self.scheme, self.authority, path);
        if !path.starts_with('/') {
            return Err(ClientError::InvalidUrl {
                url,
                reason: "the path must start with /".into(),
            });
        }
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| ClientError::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        let started = Instant::now();
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| self.classify(&method, &url, started, &e))?;
            let (parts, body) = response.into_parts();
            let bytes =
                Limited::new(body, self.max_response_bytes).collect().await.map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        ClientError::ResponseTooLarge {
                            method: method.clone(),
                            url: url.clone(),
                            limit: self.max_response_bytes,
                        }
                    } else {
                        self.classify(&method, &url, started, &*e)
                    }
                })?;
            Ok((parts.status, parts.headers, bytes.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { method, url, after: self.timeout }),
        }
    }

    /// Turns a hyper(-util) error into the most specific [`ClientError`] its chain allows.
    fn classify(
        &self,
        method: &Method,
        url: &str,
        started: Instant,
        error: &(dyn std::error::Error + 'static),
    ) -> ClientError {
        let addr = self.authority.to_string();
        let mut detail = error.to_string();
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = current {
            if let Some(failure) = e.downcast_ref::<ConnectFailure>() {
                return failure.to_client_error();
            }
            if let Some(rustls_error) = rustls_error_in(e) {
                return tls_error(&addr, self.authority.host(), rustls_error.clone());
            }
            if !detail.contains(&e.to_string()) {
                detail = format!("{detail}: {e}");
            }
            current = e.source();
        }
        if let Some(rustls_error) = self.tls_failures.since(started) {
            return tls_error(&addr, self.authority.host(), rustls_error);
        }
        ClientError::Http { method: method.clone(), url: url.to_owned(), detail }
    }
}

/// `rustls::Error` directly, or inside an `io::Error` (whose `source()` skips it).
fn rustls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn tls_error(addr: &str, host: &str, error: rustls::Error) -> ClientError {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(ref other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(pin) => ClientError::PinMismatch { addr: addr.into(), detail: pin.clone() },
                None => ClientError::Untrusted { addr: addr.into(), source: error },
            }
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => ClientError::WrongName { host: host.into(), source: error },
        rustls::Error::InvalidCertificate(_) => {
            ClientError::Untrusted { addr: addr.into(), source: error }
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => ClientError::CertificateRefused { addr: addr.into(), alert },
        other => ClientError::Tls { addr: addr.into(), source: other },
    }
}

/// A connect failure, classified where it happened; travels through hyper-util's error
/// chain and is turned back into a [`ClientError`] by [`Client::classify`].
#[derive(Debug)]
struct ConnectFailure {
    addr: String,
    host: String,
    kind: FailureKind,
}

#[derive(Debug)]
enum FailureKind {
    BadUri(&'static str),
    Resolve(io::Error),
    Connect(io::Error),
    Timeout,
    Handshake(io::Error),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_client_error())
    }
}

impl std::error::Error for ConnectFailure {}

impl ConnectFailure {
    fn to_client_error(&self) -> ClientError {
        let addr = self.addr.clone();
        let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match &self.kind {
            FailureKind::BadUri(reason) => {
                ClientError::InvalidUrl { url: addr, reason: (*reason).into() }
            }
            FailureKind::Resolve(e) => {
                ClientError::Resolve { host: self.host.clone(), source: copy(e) }
            }
            FailureKind::Connect(e) => ClientError::Unreachable { addr, source: copy(e) },
            FailureKind::Timeout => ClientError::ConnectTimeout { addr, after: CONNECT_TIMEOUT },
            FailureKind::Handshake(e) => {
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(r) => tls_error(&addr, &self.host, r.clone()),
                    None if e.kind() == io::ErrorKind::UnexpectedEof
                        || e.kind() == io::ErrorKind::ConnectionReset =>
                    {
                        ClientError::Tls {
                            addr,
                            source: rustls::Error::General(format!(
                                "the connection was closed during the TLS handshake ({e}): is this \
                             the appliance's HTTPS port?"
                            )),
                        }
                    }
                    None => ClientError::Unreachable { addr, source: copy(e) },
                }
            }
        }
    }
}

/// The last rustls error seen on any of a client's connections, and when.
#[derive(Clone, Default)]
struct TlsFailures(Arc<Mutex<Option<(Instant, rustls::Error)>>>);

impl TlsFailures {
    fn record(&self, error: &io::Error) {
        if let Some(r) = error.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), r.clone()));
        }
    }

    fn since(&self, started: Instant) -> Option<rustls::Error> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|(at, _)| *at >= started).map(|(_, e)| e.clone())
    }
}

/// TCP + TLS connector for hyper-util's legacy client.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    failures: TlsFailures,
    source: Option<std::net::IpAddr>,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, failures, source) = (self.tls.clone(), self.failures.clone(), self.source);
        Box::pin(async move { connect(tls, failures, source, uri).await.map_err(BoxError::from) })
    }
}

/// A TCP connection to `addr`, from `source` when one is given.
async fn tcp_connect(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    let Some(ip) = source else { return TcpStream::connect(addr).await };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

async fn connect(
    tls: tokio_rustls::TlsConnector,
    failures: TlsFailures,
    source: Option<std::net::IpAddr>,
    uri: Uri,
) -> std::result::Result<TlsIo, ConnectFailure> {
    let host =
        uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let addr = uri.authority().map_or_else(
        || format!("{host}:{port}"),
        |a| {
            if a.port().is_some() { a.to_string() } else { format!("{a}:{port}") }
        },
    );
    let fail = |kind| ConnectFailure { addr: addr.clone(), host: host.clone(), kind };
    if host.is_empty() {
        return Err(fail(FailureKind::BadUri("no host")));
    }
    let server_name = ServerName::try_from(host.clone()).map_err(|_| {
        fail(FailureKind::BadUri("the host is neither a DNS name nor an IP address"))
    })?;

    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| fail(FailureKind::Resolve(e)))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut tcp = None;
        for a in addrs {
            match tcp_connect(a, source).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| fail(FailureKind::Connect(last)))?;
        let _ = tcp.set_nodelay(true);
        tls.connect(server_name, tcp).await.map_err(|e| fail(FailureKind::Handshake(e)))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| fail(FailureKind::Timeout))??;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2);
    Ok(TlsIo { inner: TokioIo::new(stream), h2, failures })
}

/// A client TLS stream as hyper IO, telling the pool whether ALPN chose h2 and recording
/// TLS errors for [`Client::classify`].
struct TlsIo {
    inner: TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    h2: bool,
    failures: TlsFailures,
}

impl TlsIo {
    fn note<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            self.failures.record(e);
        }
        poll
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        if self.h2 { Connected::new().negotiated_h2() } else { Connected::new() }
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(poll)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(poll)
    }
}
