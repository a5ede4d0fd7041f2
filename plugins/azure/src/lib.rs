//! The Azure target: replica disks, recovery points and replication logs in one Blob
//! storage container, failed-over VMs through Azure Resource Manager.
//!
//! ```text
//! <container>/disks/<disk>     page blob: a replica disk (or a materialised one);
//!                              metadata lifeboatsize = its size before rounding to 512
//! <container>/disks/<disk>?snapshot=<time>
//!                              blob snapshot: the disk at one recovery point
//! <container>/points/<point>   block blob, JSON: tag, creation time, disk -> snapshot;
//!                              written last, so a point exists once this does
//! <container>/logs/<name>      block blob: a replication log object
//! ```
//!
//! Every request is signed with Shared Key (see [`auth`]) and sent through the host's
//! `wasi:http`, which only lets it reach the authorities granted to the plugin. Writes
//! to a replica disk carry a lease this instance holds on its blob, so two appliances
//! cannot write one disk. See docs/targets/azure.md.

pub mod arm;
pub mod auth;
pub mod blob;
pub mod http;
mod replica;
mod target;
pub mod vhd;
pub mod xml;

use blob::BlobService;
use lifeboat_sdk::target::*;
pub use lifeboat_sdk::target::{check_id, now_ms};
use lifeboat_sdk::{PluginError, Settings, required_setting, setting};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Page blobs are written in 512-byte pages.
pub const PAGE: u64 = PAGE_U32 as u64;
/// [`PAGE`] as the host interface's u32.
pub const PAGE_U32: u32 = 512;
/// Most bytes one Put Page may carry.
pub const MAX_PUT_PAGE: u64 = MAX_PUT_PAGE_U32 as u64;
/// [`MAX_PUT_PAGE`] as the host interface's u32.
pub const MAX_PUT_PAGE_U32: u32 = 4 << 20;

fn invalid(m: String) -> PluginError {
    PluginError::Invalid(m)
}

fn disk_blob(disk: &str) -> Result<String, PluginError> {
    Ok(format!("disks/{}", check_id(disk)?))
}

fn point_blob(point: &str) -> Result<String, PluginError> {
    Ok(format!("points/{}", check_id(point)?))
}

fn log_blob(name: &str) -> Result<String, PluginError> {
    Ok(format!("logs/{}", check_id(name)?))
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// 16 random bytes from the host (wasi:random), for lease ids.
fn random16() -> [u8; 16] {
    #[cfg(target_arch = "wasm32")]
    {
        let v = wasi::random::random::get_random_bytes(16);
        let mut out = [0u8; 16];
        out.copy_from_slice(&v[..16]);
        out
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; 16];
        for half in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ms());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    }
}

/// A version-4 UUID string.
fn uuid4() -> String {
    let mut b = random16();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A lease this instance holds on a replica disk, and what it learnt when taking it.
#[derive(Debug, Clone)]
struct Held {
    taken: Instant,
    /// The disk's size (logical, before rounding).
    size: u64,
}

/// A recovery point's metadata blob.
#[derive(Debug, Clone, PartialEq)]
pub struct PointMeta {
    pub tag: String,
    pub created_unix_ms: u64,
    /// (disk, snapshot time, disk size)
    pub disks: Vec<(String, String, u64)>,
}

impl PointMeta {
    pub fn to_json(&self) -> Vec<u8> {
        let disks: Vec<serde_json::Value> = self
            .disks
            .iter()
            .map(|(d, s, n)| serde_json::json!({"disk": d, "snapshot": s, "size": n}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "version": 1,
            "tag": self.tag,
            "created_unix_ms": self.created_unix_ms,
            "disks": disks,
        }))
        .unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<PointMeta, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let s =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64());
        let mut disks = Vec::new();
        for d in v.get("disks").and_then(|d| d.as_array()).ok_or("no `disks` list")? {
            disks.push((
                s(d, "disk").ok_or("a disk without `disk`")?,
                s(d, "snapshot").ok_or("a disk without `snapshot`")?,
                n(d, "size").ok_or("a disk without `size`")?,
            ));
        }
        Ok(PointMeta {
            tag: s(&v, "tag").ok_or("no `tag`")?,
            created_unix_ms: n(&v, "created_unix_ms").ok_or("no `created_unix_ms`")?,
            disks,
        })
    }

    fn info(&self, id: &str) -> PointInfo {
        PointInfo {
            id: id.to_owned(),
            tag: self.tag.clone(),
            created_unix_ms: self.created_unix_ms,
            disks: self.disks.iter().map(|(d, _, _)| d.clone()).collect(),
        }
    }
}

/// The Azure target's state.
pub struct Azure {
    blob: BlobService,
    container_ready: bool,
    lease_id: String,
    /// `None`: infinite leases.
    lease_duration: Option<Duration>,
    held: HashMap<String, Held>,
    arm: Option<arm::Arm>,
    /// Longest a call waits for a server-side copy before answering `retryable`.
    copy_wait: Duration,
}

/// The target's settings, parsed; public for tests.
pub fn parse_settings(settings: &Settings) -> Result<Azure, PluginError> {
    let account = required_setting(settings, "account")?;
    let key = auth::SharedKey::new(account, required_setting(settings, "key")?).map_err(invalid)?;
    let default_endpoint = format!("https://{account}.blob.core.windows.net");
    let endpoint = setting(settings, "endpoint").unwrap_or(&default_endpoint);
    let (scheme, authority, base_path) = http::split_url(endpoint).ok_or_else(|| {
        invalid(format!(
            "setting `endpoint` = {endpoint:?}: expected http(s)://host[:port][/path], e.g. \
             http://127.0.0.1:10000/devstoreaccount1"
        ))
    })?;
    let container = setting(settings, "container").unwrap_or("lifeboat");
    let container_ok = (3..=63).contains(&container.len())
        && container.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if !container_ok {
        return Err(invalid(format!(
            "setting `container` = {container:?}: use 3-63 lowercase letters, digits and single \
             hyphens (Azure container naming rules)"
        )));
    }
    let num = |k: &str, default: u64| -> Result<u64, PluginError> {
        match setting(settings, k) {
            None => Ok(default),
            Some(v) => {
                v.parse().map_err(|_| invalid(format!("setting `{k}` = {v:?}: expected a number")))
            }
        }
    };
    let lease_duration = match setting(settings, "lease_seconds") {
        Some("infinite") | Some("-1") => None,
        _ => {
            let s = num("lease_seconds", 60)?;
            if !(15..=60).contains(&s) {
                return Err(invalid(format!(
                    "setting `lease_seconds` = {s}: Azure leases last 15 to 60 seconds, or \"infinite\""
                )));
            }
            Some(Duration::from_secs(s))
        }
    };
    let lease_id = match setting(settings, "lease_id") {
        Some(id) if is_uuid(id) => id.to_ascii_lowercase(),
        Some(id) => {
            return Err(invalid(format!("setting `lease_id` = {id:?}: expected a GUID")));
        }
        None => uuid4(),
    };
    let blob = BlobService {
        key,
        scheme,
        authority,
        base_path,
        container: container.to_owned(),
        api_version: setting(settings, "api_version")
            .unwrap_or(blob::DEFAULT_API_VERSION)
            .to_owned(),
        timeout_ms: num("timeout_ms", 50_000)?,
    };
    Ok(Azure {
        blob,
        container_ready: false,
        lease_id,
        lease_duration,
        held: HashMap::new(),
        arm: arm::Arm::from_settings(settings)?,
        copy_wait: Duration::from_millis(num("copy_wait_ms", 40_000)?),
    })
}

lifeboat_sdk::export_target!(Azure);

#[cfg(test)]
mod tests;
