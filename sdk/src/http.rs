//! A small blocking HTTP/1.1 client over `wasi:http/outgoing-handler` (cargo feature
//! `http`), for plugins that talk to a service.
//!
//! The host checks every request against the authorities granted to the plugin and
//! opens the connection itself; here we only build requests and read responses. On
//! native targets (unit tests of the pure parts) there is no transport.

/// An HTTP request the plugin sends.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, `POST`, …
    pub method: &'static str,
    /// `http` or `https`.
    pub scheme: String,
    /// `host:port`.
    pub authority: String,
    /// Path and query, already percent-encoded, starting with `/`.
    pub path_and_query: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The whole body (empty for none).
    pub body: Vec<u8>,
}

/// A response: status, headers (names lowercased) and the whole body.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The host refused: the authority is not granted to the plugin.
    Denied(String),
    /// Connection refused, reset, timed out, DNS …: worth retrying.
    Unavailable(String),
    /// A request the host could not send (bad URI, header …).
    Invalid(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Denied(m)
            | TransportError::Unavailable(m)
            | TransportError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Splits `http(s)://host:port/path` into (scheme, authority, path without trailing `/`).
pub fn split_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), authority.to_owned(), path.trim_end_matches('/').to_owned()))
}

/// Percent-encodes a query value or path segment (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `req` and waits for the whole response, at most `timeout_ms` per phase.
#[cfg(target_arch = "wasm32")]
pub fn send(req: &Request, timeout_ms: u64) -> Result<Response, TransportError> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasi::io::streams::StreamError;

    let map_err = |e: ErrorCode| match e {
        ErrorCode::HttpRequestDenied => TransportError::Denied(format!(
            "the host refused the request to {}: grant it in plugins.grants.<name>.http_hosts \
             and list it in the plugin manifest's http_hosts",
            req.authority
        )),
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::ConfigurationError => {
            TransportError::Invalid(format!("{} {}: {e:?}", req.authority, req.path_and_query))
        }
        // Everything else, a protocol error included (the peer cut the connection while
        // the body was sent, or answered garbage), is the service's side: worth retrying.
        other => TransportError::Unavailable(format!("{}: {other:?}", req.authority)),
    };

    let entries: Vec<(String, Vec<u8>)> =
        req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
    let fields = Fields::from_list(&entries)
        .map_err(|e| TransportError::Invalid(format!("bad request header: {e:?}")))?;
    let r = OutgoingRequest::new(fields);
    let method = match req.method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_owned()),
    };
    let bad = |what: &str| TransportError::Invalid(format!("bad request {what}"));
    r.set_method(&method).map_err(|_| bad("method"))?;
    let scheme = if req.scheme == "https" { Scheme::Https } else { Scheme::Http };
    r.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    r.set_authority(Some(&req.authority)).map_err(|_| bad("authority"))?;
    r.set_path_with_query(Some(&req.path_and_query)).map_err(|_| bad("path"))?;
    let body = if req.body.is_empty() { None } else { Some(r.body().map_err(|_| bad("body"))?) };

    let opts = RequestOptions::new();
    let ns = timeout_ms.saturating_mul(1_000_000);
    let _ = opts.set_connect_timeout(Some(ns.min(10_000_000_000)));
    let _ = opts.set_first_byte_timeout(Some(ns));
    let _ = opts.set_between_bytes_timeout(Some(ns));
    let future = outgoing_handler::handle(r, Some(opts)).map_err(map_err)?;

    // The body is written after `handle`: the host streams it to the connection.
    if let Some(body) = body {
        {
            let out = body.write().map_err(|_| bad("body stream"))?;
            let mut rest = &req.body[..];
            while !rest.is_empty() {
                let n = match out.check_write() {
                    Ok(0) => {
                        out.subscribe().block();
                        continue;
                    }
                    Ok(n) => usize::try_from(n).map_or(rest.len(), |n| n.min(rest.len())),
                    Err(_) => break, // the host gave up; the response says why
                };
                if out.write(&rest[..n]).is_err() {
                    break;
                }
                rest = &rest[n..];
            }
            let _ = out.blocking_flush();
        }
        OutgoingBody::finish(body, None).map_err(map_err)?;
    }

    let resp = loop {
        match future.get() {
            Some(Ok(Ok(resp))) => break resp,
            Some(Ok(Err(e))) => return Err(map_err(e)),
            Some(Err(())) => {
                return Err(TransportError::Unavailable("response already taken".into()));
            }
            None => future.subscribe().block(),
        }
    };
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut data = Vec::new();
    if req.method != "HEAD" {
        let incoming = resp
            .consume()
            .map_err(|_| TransportError::Unavailable("response body unavailable".into()))?;
        {
            let stream = incoming
                .stream()
                .map_err(|_| TransportError::Unavailable("response body unavailable".into()))?;
            loop {
                match stream.blocking_read(1 << 20) {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(TransportError::Unavailable(format!(
                            "{}: response body cut short: {}",
                            req.authority,
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        let _ = wasi::http::types::IncomingBody::finish(incoming);
    }
    Ok(Response { status, headers, body: data })
}

/// No transport outside wasm: the plugin only talks HTTP through the host.
#[cfg(not(target_arch = "wasm32"))]
pub fn send(req: &Request, _timeout_ms: u64) -> Result<Response, TransportError> {
    Err(TransportError::Unavailable(format!(
        "{}: wasi:http is only available inside the wasm component",
        req.authority
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_encode() {
        assert_eq!(
            split_url("http://127.0.0.1:10000/devstoreaccount1/").unwrap(),
            ("http".into(), "127.0.0.1:10000".into(), "/devstoreaccount1".into())
        );
        assert_eq!(
            split_url("https://acct.blob.core.windows.net").unwrap(),
            ("https".into(), "acct.blob.core.windows.net".into(), String::new())
        );
        assert!(split_url("ftp://x/y").is_none());
        assert!(split_url("http:///y").is_none());
        assert_eq!(encode("2024-01-02T03:04:05.1234567Z"), "2024-01-02T03%3A04%3A05.1234567Z");
        assert_eq!(encode("points/a b"), "points%2Fa%20b");
    }
}
