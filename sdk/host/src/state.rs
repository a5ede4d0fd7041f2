//! The per-instance store data: WASI context built from the plugin's effective
//! capabilities, the HTTP allow-list, the memory limiter and the host keys.

use crate::keys::KeyRing;
use crate::load::Effective;
use std::path::PathBuf;
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

/// Checks every outgoing HTTP request against the granted authorities.
pub(crate) struct HttpHooks {
    plugin: String,
    allowed: Vec<String>,
}

impl HttpHooks {
    fn allows(&self, authority: &str, https: bool) -> bool {
        let with_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        self.allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority) || a.eq_ignore_ascii_case(&with_port))
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
        let authority =
            request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        if !self.allows(&authority, https) {
            tracing::warn!(plugin = %self.plugin, %authority, "denied HTTP request to a host the plugin was not granted");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
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
            b.socket_addr_check(move |addr, _use| {
                let ok = allowed.contains(&addr);
                Box::pin(async move { ok })
            });
        }
        Ok(HostState {
            plugin: plugin.to_owned(),
            wasi: b.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: HttpHooks { plugin: plugin.to_owned(), allowed: caps.http_hosts.clone() },
            limits: Limits { max_bytes: caps.memory_bytes, exceeded: false },
            dirs: caps.dirs.clone(),
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
    fn http_allow_list_matches_host_and_default_ports() {
        let h = HttpHooks {
            plugin: "azure".into(),
            allowed: vec!["127.0.0.1:10000".into(), "acct.blob.example:443".into()],
        };
        assert!(h.allows("127.0.0.1:10000", false));
        assert!(h.allows("acct.blob.example", true));
        assert!(!h.allows("acct.blob.example", false));
        assert!(!h.allows("127.0.0.1:10001", false));
        assert!(!h.allows("evil.example", true));
    }
}
