//! What a plugin may do once loaded: its effective capabilities (what it requested and
//! was granted), and the HTTP authorities they name. Shared by loading (which computes
//! them) and the per-instance state (which enforces them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Capabilities in force for one plugin: what it requested and was granted.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) memory_bytes: usize,
    pub(crate) deadline: Duration,
    /// (guest path, host path)
    pub(crate) dirs: Vec<(String, PathBuf)>,
    pub(crate) http_hosts: Vec<HttpAuthority>,
    pub(crate) commands: Vec<String>,
    pub(crate) sockets: Vec<SocketAddr>,
    pub(crate) clock: bool,
    /// What `host-disks` may resolve; `None` when not requested and granted.
    pub(crate) attached: Option<Arc<crate::config::AttachedDisksGrant>>,
    pub(crate) settings: Vec<(String, String)>,
    /// Why the plugin cannot be instantiated yet: a required setting has no value.
    pub(crate) unconfigured: Option<String>,
    /// TLS client configuration trusting the public roots plus the granted `tls_roots`;
    /// `None` when nothing extra is granted (the default sender is used then). Built once
    /// per load and shared by every instance's HTTP hooks.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// One HTTP authority a plugin may reach: scheme, host and port. Written in grants and
/// manifests as `[https://|http://]host[:port]`: HTTPS unless `http://` is written, and the
/// scheme's port (443, 80) unless one is given. A grant of `acct.example` therefore
/// allows `https://acct.example:443` only, never plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpAuthority {
    pub(crate) https: bool,
    /// Lower case; IPv6 literals in brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl HttpAuthority {
    /// Parses a grant or manifest entry.
    pub(crate) fn parse(text: &str) -> Result<HttpAuthority, String> {
        let bad = |why: &str| {
            format!(
                "{text:?}: {why}; write host:port, https://host:port or http://host:port \
                 (HTTPS and port 443 when not written)"
            )
        };
        let (https, rest) = match text.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme:?} is not http or https")));
            }
            None => (true, text),
        };
        let a: http::uri::Authority = rest.parse().map_err(|_| bad("not a host[:port]"))?;
        if a.as_str().contains('@') || a.host().is_empty() {
            return Err(bad("not a host[:port]"));
        }
        let port = &a.as_str()[a.host().len()..];
        if !port.is_empty() && port.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()).is_none()
        {
            return Err(bad("the port is not a number from 0 to 65535"));
        }
        Ok(HttpAuthority {
            https,
            host: a.host().to_ascii_lowercase(),
            port: a.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    /// The authority a request goes to, if its scheme is HTTP or HTTPS.
    pub(crate) fn of_uri(uri: &http::Uri) -> Option<HttpAuthority> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let a = uri.authority()?;
        if a.port().is_some() && a.port_u16().is_none() {
            return None;
        }
        Some(HttpAuthority {
            https,
            host: a.host().to_ascii_lowercase(),
            port: a.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}
