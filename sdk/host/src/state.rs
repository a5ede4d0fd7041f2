//! The per-instance store data: WASI context built from the plugin's effective
//! capabilities, the HTTP allow-list, the memory limiter and the host keys.

use crate::caps::{Effective, HttpAuthority};
use crate::keys::KeyRing;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Memory limiter that remembers that it refused, so a trap can be reported as
/// "exceeded its memory limit" rather than as a generic failure.
pub(crate) struct Limits {
    pub(crate) max_bytes: usize,
    pub(crate) exceeded: bool,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit exceeded: wanted {} MiB, granted {} MiB",
                desired >> 20,
                self.max_bytes >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl std::fmt::Display for HttpAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Checks every outgoing HTTP request against the granted authorities.
pub(crate) struct HttpHooks {
    plugin: String,
    allowed: Vec<HttpAuthority>,
    /// Set when the grant adds `tls_roots`: HTTPS is then sent by [`send_with_roots`].
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpHooks {
    fn allows(&self, uri: &http::Uri) -> bool {
        HttpAuthority::of_uri(uri).is_some_and(|a| self.allowed.contains(&a))
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        if !self.allows(request.uri()) {
            let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or_default();
            let scheme = request.uri().scheme_str().unwrap_or_default();
            tracing::warn!(plugin = %self.plugin, %scheme, %authority, "denied HTTP request to an authority the plugin was not granted");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let (Some(tls), true) = (&self.tls, https) {
            let tls = tls.clone();
            return Box::new(async move {
                use http_body_util::BodyExt;
                let (res, io) = send_with_roots(request, options, tls).await?;
                Ok((
                    res.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
                ))
            });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// A TLS client configuration trusting the public (webpki) roots plus `extra`.
pub(crate) fn tls_client_config(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for cert in extra {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The `host:port` authority of `uri` (default port by scheme) and whether it is HTTPS.
fn connect_authority(uri: &http::Uri) -> wasmtime_wasi_http::Result<String> {
    let authority = uri.authority().ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    Ok(if authority.port().is_some() { authority.to_string() } else { format!("{authority}:443") })
}

/// The rustls server name for a `host:port` authority (IP literals included).
fn tls_server_name(
    authority: &str,
) -> Result<rustls::pki_types::ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    use rustls::pki_types::ServerName;
    if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
        return Ok(ServerName::from(addr.ip()));
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(ServerName::try_from(host)?.to_owned())
}

/// Maps a TLS handshake failure: certificate problems apart from the rest.
fn tls_error(e: std::io::Error) -> wasmtime_wasi_http::Error {
    let cert =
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if cert {
        wasmtime_wasi_http::Error::TlsCertificateError
    } else {
        wasmtime_wasi_http::Error::Tls(e)
    }
}

/// Wraps a response body to apply the between-bytes timeout, as the default sender does.
struct IncomingResponseBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for IncomingResponseBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::{Poll, ready};
        match std::pin::Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(if err.is_timeout() {
                wasmtime_wasi_http::Error::HttpResponseTimeout
            } else {
                wasmtime_wasi_http::Error::from(err)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.incoming)
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.incoming)
    }
}

/// Sends an HTTPS request trusting `tls`'s roots: `default_send_request` of
/// wasmtime-wasi-http 48 with the root store replaced (that one trusts only the public
/// roots). Same timeouts, same error mapping, same shape of result.
async fn send_with_roots(
    mut req: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
    tls: Arc<rustls::ClientConfig>,
) -> wasmtime_wasi_http::Result<(
    http::Response<IncomingResponseBody>,
    impl std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send,
)> {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Poll, ready};
    use wasmtime_wasi_http::Error;

    let authority = connect_authority(req.uri())?;
    let connect_timeout =
        options.and_then(|o| o.connect_timeout).unwrap_or(Duration::from_secs(600));
    let first_byte_timeout =
        options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(600));
    let between_bytes_timeout =
        options.and_then(|o| o.between_bytes_timeout).unwrap_or(Duration::from_secs(600));

    let tcp =
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&authority))
            .await
        {
            Ok(stream) => stream.map_err(Error::Connect)?,
            Err(_) => return Err(Error::ConnectionTimeout),
        };
    let domain = tls_server_name(&authority)?;
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio_rustls::TlsConnector::from(tls).connect(domain, tcp),
    )
    .await
    {
        Ok(stream) => stream.map_err(tls_error)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request holds scheme and authority; on the wire (no proxy) only the path goes.
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let send = async move {
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        // A zero-period interval panics; 1 ns is effectively zero.
        let between = between_bytes_timeout.max(Duration::from_nanos(1));
        let mut timeout = tokio::time::interval(between);
        timeout.reset();
        Ok::<_, Error>(res.map(|incoming| IncomingResponseBody { incoming, timeout }))
    };
    let mut send = pin!(send);
    let mut conn = Some(conn);
    // Wait for the response while driving the connection's I/O.
    let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(fut) = conn.as_mut() else {
                return Poll::Pending;
            };
            let r = ready!(Pin::new(fut).poll(cx));
            conn = None;
            match r {
                Ok(()) => send.as_mut().poll(cx),
                Err(err) => Poll::Ready(Err(Error::from(err))),
            }
        }
    })
    .await?;
    Ok((res, async move {
        let Some(conn) = conn.take() else {
            return Ok(());
        };
        if let Err(err) = conn.await {
            if err.is_timeout() {
                return Err(Error::HttpResponseTimeout);
            }
            return Err(err.into());
        }
        Ok(())
    }))
}

/// A clock stuck at zero, for plugins that were not granted clocks.
struct ZeroClock;

impl wasmtime_wasi::HostWallClock for ZeroClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for ZeroClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Everything a plugin instance's host calls can reach.
pub(crate) struct HostState {
    pub(crate) plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    pub(crate) limits: Limits,
    pub(crate) dirs: Vec<(String, PathBuf)>,
    pub(crate) attached: Option<Arc<crate::config::AttachedDisksGrant>>,
    pub(crate) commands: Vec<String>,
    pub(crate) keys: KeyRing,
}

impl HostState {
    pub(crate) fn new(
        plugin: &str,
        caps: &Effective,
        keys: KeyRing,
    ) -> wasmtime::Result<HostState> {
        let mut b = WasiCtxBuilder::new();
        // Plugin panics and their own diagnostics reach the appliance's stderr log.
        b.inherit_stderr();
        for (guest, host) in &caps.dirs {
            std::fs::create_dir_all(host).map_err(|e| {
                wasmtime::format_err!("granted directory {} cannot be created: {e}", host.display())
            })?;
            b.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadWrite).map_err(|e| {
                wasmtime::format_err!("granted directory {} cannot be opened: {e}", host.display())
            })?;
        }
        if !caps.clock {
            b.wall_clock(ZeroClock);
            b.monotonic_clock(ZeroClock);
        }
        if !caps.sockets.is_empty() {
            let allowed = caps.sockets.clone();
            b.allow_tcp(true);
            b.socket_addr_check(move |addr, use_| {
                use wasmtime_wasi::sockets::SocketAddrUse as U;
                let ok = match use_ {
                    // Connecting: only to granted addresses.
                    U::TcpConnect => allowed.contains(&addr),
                    // The implicit bind before a connect asks for the wildcard address
                    // with an ephemeral port; any other bind, listening or accepting
                    // would make the plugin a server: refused.
                    U::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        Ok(HostState {
            plugin: plugin.to_owned(),
            wasi: b.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: HttpHooks {
                plugin: plugin.to_owned(),
                allowed: caps.http_hosts.clone(),
                tls: caps.tls.clone(),
            },
            limits: Limits { max_bytes: caps.memory_bytes, exceeded: false },
            dirs: caps.dirs.clone(),
            attached: caps.attached.clone(),
            commands: caps.commands.clone(),
            keys,
        })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_grants_name_the_scheme_https_by_default() {
        let grants = ["http://127.0.0.1:10000", "acct.blob.example", "https://[::1]:8443"];
        let h = HttpHooks {
            plugin: "azure".into(),
            allowed: grants.iter().map(|g| HttpAuthority::parse(g).unwrap()).collect(),
            tls: None,
        };
        let allows = |u: &str| h.allows(&u.parse().unwrap());
        assert!(allows("http://127.0.0.1:10000/x"));
        assert!(!allows("https://127.0.0.1:10000/x"), "granted for http only");
        assert!(allows("https://acct.blob.example/c"));
        assert!(allows("https://ACCT.blob.example:443/c"));
        // Issue 11, finding 8: a bare host name allowed plain HTTP on port 80 as well.
        assert!(!allows("http://acct.blob.example/c"));
        assert!(!allows("http://acct.blob.example:443/c"));
        assert!(allows("https://[::1]:8443/"));
        assert!(!allows("http://127.0.0.1:10001/"));
        assert!(!allows("https://evil.example/"));
        assert!(!allows("ftp://acct.blob.example/"));
        for bad in ["ftp://x", "", "user@host:1", "http://", "host:port", "https://a/b"] {
            assert!(HttpAuthority::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(HttpAuthority::parse("h.example").unwrap().to_string(), "https://h.example:443");
    }

    #[test]
    fn tls_server_names_and_default_port() {
        use rustls::pki_types::ServerName;
        assert_eq!(
            tls_server_name("127.0.0.1:10000").unwrap(),
            ServerName::from(std::net::Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            tls_server_name("[::1]:443").unwrap(),
            ServerName::from(std::net::Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            tls_server_name("acct.blob.example:443").unwrap(),
            ServerName::try_from("acct.blob.example").unwrap()
        );
        let uri: http::Uri = "https://acct.blob.example/c/b?x=1".parse().unwrap();
        assert_eq!(connect_authority(&uri).unwrap(), "acct.blob.example:443");
        let uri: http::Uri = "https://127.0.0.1:10000/".parse().unwrap();
        assert_eq!(connect_authority(&uri).unwrap(), "127.0.0.1:10000");
    }
}
