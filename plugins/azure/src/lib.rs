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
pub mod vhd;
pub mod xml;

use blob::{BlobService, Props, code_of, error_of};
use lifeboat_sdk::target::*;
use lifeboat_sdk::{PluginError, Settings, required_setting, setting};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Page blobs are written in 512-byte pages.
pub const PAGE: u64 = 512;
/// Most bytes one Put Page may carry.
pub const MAX_PUT_PAGE: u64 = 4 << 20;

fn invalid(m: String) -> PluginError {
    PluginError::Invalid(m)
}

/// Host-chosen ids are restricted (see the WIT); check again so no id escapes its folder.
pub fn check_id(id: &str) -> Result<&str, PluginError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(id) } else { Err(invalid(format!("bad identifier {id:?}"))) }
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

impl Azure {
    fn ready(&mut self) -> Result<&BlobService, PluginError> {
        if !self.container_ready {
            self.blob.ensure_container()?;
            self.container_ready = true;
        }
        Ok(&self.blob)
    }

    fn disk_props(&mut self, disk: &str) -> Result<Props, PluginError> {
        let name = disk_blob(disk)?;
        self.ready()?
            .head(&name, &format!("reading disk {disk}"))?
            .ok_or_else(|| PluginError::NotFound(format!("disk {disk} does not exist")))
    }

    fn size_of(p: &Props) -> u64 {
        p.logical_size.unwrap_or(p.content_length)
    }

    /// Takes (or renews) this instance's lease on a disk before writing it; returns
    /// the disk's size.
    fn writer(&mut self, disk: &str) -> Result<u64, PluginError> {
        if let Some(h) = self.held.get(disk) {
            let fresh = self.lease_duration.is_none_or(|d| h.taken.elapsed() < d / 2);
            if fresh {
                return Ok(h.size);
            }
        }
        let name = disk_blob(disk)?;
        let what = format!("taking the write lease on disk {disk}");
        let duration = match self.lease_duration {
            Some(d) => d.as_secs().to_string(),
            None => "-1".into(),
        };
        let taken = Instant::now();
        let lease_id = self.lease_id.clone();
        // Acquiring again with our own id renews the lease (and works after a restart
        // when the lease id is configured).
        let r = self.ready()?.send(
            "PUT",
            Some(&name),
            &[("comp", "lease")],
            &[
                ("x-ms-lease-action", "acquire".into()),
                ("x-ms-lease-duration", duration),
                ("x-ms-proposed-lease-id", lease_id),
            ],
            Vec::new(),
            &what,
        )?;
        if r.status == 404 {
            self.held.remove(disk);
            return Err(PluginError::NotFound(format!("disk {disk} does not exist")));
        }
        if !(200..300).contains(&r.status) {
            self.held.remove(disk);
            return Err(match error_of(&r, &what) {
                PluginError::Retryable(m) if code_of(&r) == "LeaseAlreadyPresent" => {
                    PluginError::Retryable(format!(
                        "disk {disk} is being written by another appliance (its blob is \
                         leased under another lease id): {m}"
                    ))
                }
                e => e,
            });
        }
        let size = match self.held.get(disk) {
            Some(h) => h.size,
            None => Self::size_of(&self.disk_props(disk)?),
        };
        self.held.insert(disk.to_owned(), Held { taken, size });
        Ok(size)
    }

    fn lease_header(&self, disk: &str) -> Vec<(&'static str, String)> {
        if self.held.contains_key(disk) {
            vec![("x-ms-lease-id", self.lease_id.clone())]
        } else {
            Vec::new()
        }
    }

    /// One Put Page (update or clear) under the lease; a lost lease is forgotten.
    fn put_page(
        &mut self,
        disk: &str,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<(), PluginError> {
        let name = disk_blob(disk)?;
        let mut h = self.lease_header(disk);
        h.push(("x-ms-range", format!("bytes={}-{}", offset, offset + len - 1)));
        h.push(("x-ms-page-write", if data.is_some() { "update" } else { "clear" }.into()));
        let what = format!("writing disk {disk} at {offset}+{len}");
        let body = data.map(<[u8]>::to_vec).unwrap_or_default();
        let r = self.blob.send("PUT", Some(&name), &[("comp", "page")], &h, body, &what)?;
        if (200..300).contains(&r.status) {
            return Ok(());
        }
        if code_of(&r).starts_with("Lease") {
            self.held.remove(disk);
        }
        Err(error_of(&r, &what))
    }

    fn read_point(&mut self, point: &str) -> Result<Option<PointMeta>, PluginError> {
        let name = point_blob(point)?;
        let what = format!("reading point {point}");
        let r = self.ready()?.send("GET", Some(&name), &[], &[], Vec::new(), &what)?;
        if r.status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&r.status) {
            return Err(error_of(&r, &what));
        }
        PointMeta::from_json(&r.body).map(Some).map_err(|e| {
            PluginError::Internal(format!("point {point}: metadata blob {name} is corrupt: {e}"))
        })
    }

    /// Deletes snapshots of `disk` tagged with `point` (left by an interrupted create-point).
    fn delete_orphan_snapshots(&mut self, disk: &str, point: &str) -> Result<(), PluginError> {
        let name = disk_blob(disk)?;
        let items = self.ready()?.list(&name, "snapshots,metadata")?;
        for it in items {
            let tagged = it.metadata.iter().any(|(k, v)| k == "lifeboatpoint" && v == point);
            if it.name == name
                && tagged
                && let Some(s) = &it.snapshot
            {
                self.delete_snapshot(&name, s)?;
            }
        }
        Ok(())
    }

    fn delete_snapshot(&mut self, name: &str, snapshot: &str) -> Result<(), PluginError> {
        let what = format!("deleting snapshot {snapshot} of {name}");
        let r = self.ready()?.send(
            "DELETE",
            Some(name),
            &[("snapshot", snapshot)],
            &[],
            Vec::new(),
            &what,
        )?;
        if (200..300).contains(&r.status) || r.status == 404 {
            Ok(())
        } else {
            Err(error_of(&r, &what))
        }
    }

    /// Waits (within `copy_wait`) for a server-side copy into `name` to finish.
    fn wait_copy(&mut self, name: &str, disk: &str) -> Result<(), PluginError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let p =
                self.ready()?.head(name, &format!("checking the copy into {disk}"))?.ok_or_else(
                    || PluginError::Retryable(format!("copy into {disk}: the new blob vanished")),
                )?;
            match p.copy_status.as_deref() {
                Some("success") | None => return Ok(()),
                Some("pending") if start.elapsed() < self.copy_wait => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Some("pending") => {
                    return Err(PluginError::Retryable(format!(
                        "copy into {disk} is still running; materialize again to wait for it"
                    )));
                }
                Some(other) => {
                    return Err(PluginError::Internal(format!(
                        "copy into {disk} ended with status {other}: {}",
                        p.copy_description.unwrap_or_default()
                    )));
                }
            }
        }
    }

    fn arm(&mut self) -> Result<&mut arm::Arm, PluginError> {
        self.arm.as_mut().ok_or_else(|| {
            invalid(
                "VMs need Azure Resource Manager settings: `subscription`, `resource_group`, \
                 `location` and `arm_token` (or `tenant_id`, `client_id`, `client_secret`)"
                    .into(),
            )
        })
    }
}

impl Target for Azure {
    fn init(settings: Settings) -> Result<(Self, TargetCapabilities), PluginError> {
        let me = parse_settings(&settings)?;
        let caps = TargetCapabilities {
            alignment: PAGE as u32,
            max_write_bytes: MAX_PUT_PAGE as u32,
            instant_points: true,
            instant_materialize: true,
            // Data in a cloud account leaves the site: always sealed.
            requires_encryption: true,
        };
        Ok((me, caps))
    }

    fn health(&mut self) -> Result<String, PluginError> {
        let b = self.ready()?;
        let probe = format!("health/{}", uuid4());
        b.call(
            "PUT",
            Some(&probe),
            &[],
            &[("x-ms-blob-type", "BlockBlob".into())],
            b"ok".to_vec(),
            "writing a health probe",
        )?;
        b.call("DELETE", Some(&probe), &[], &[], Vec::new(), "deleting the health probe")?;
        Ok(format!(
            "container {} at {}://{}{} is writable (account {})",
            b.container, b.scheme, b.authority, b.base_path, b.key.account
        ))
    }

    fn create_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        let name = disk_blob(disk)?;
        let same = |p: &Props| {
            let have = Self::size_of(p);
            if have == size {
                Ok(())
            } else {
                Err(invalid(format!("disk {disk} exists with size {have}, not {size}")))
            }
        };
        let what = format!("creating disk {disk}");
        if let Some(p) = self.ready()?.head(&name, &what)? {
            return same(&p);
        }
        let r = self.blob.send(
            "PUT",
            Some(&name),
            &[],
            &[
                ("x-ms-blob-type", "PageBlob".into()),
                ("x-ms-blob-content-length", round_up(size, PAGE).to_string()),
                ("x-ms-meta-lifeboatsize", size.to_string()),
                ("if-none-match", "*".into()),
            ],
            Vec::new(),
            &what,
        )?;
        match r.status {
            200..=299 => Ok(()),
            // Someone created it between our HEAD and PUT.
            409 | 412 => match self.blob.head(&name, &what)? {
                Some(p) => same(&p),
                None => Err(error_of(&r, &what)),
            },
            _ => Err(error_of(&r, &what)),
        }
    }

    fn resize_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        let name = disk_blob(disk)?;
        self.writer(disk)?;
        let lease = self.lease_header(disk);
        let what = format!("resizing disk {disk} to {size} bytes");
        let mut h = lease.clone();
        h.push(("x-ms-blob-content-length", round_up(size, PAGE).to_string()));
        self.blob.call("PUT", Some(&name), &[("comp", "properties")], &h, Vec::new(), &what)?;
        let mut h = lease;
        h.push(("x-ms-meta-lifeboatsize", size.to_string()));
        self.blob.call("PUT", Some(&name), &[("comp", "metadata")], &h, Vec::new(), &what)?;
        if let Some(held) = self.held.get_mut(disk) {
            held.size = size;
        }
        Ok(())
    }

    fn delete_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        let name = disk_blob(disk)?;
        let h = self.lease_header(disk);
        let what = format!("deleting disk {disk}");
        let r = self.ready()?.send("DELETE", Some(&name), &[], &h, Vec::new(), &what)?;
        if (200..300).contains(&r.status) || r.status == 404 {
            self.held.remove(disk);
        }
        if (200..300).contains(&r.status) { Ok(()) } else { Err(error_of(&r, &what)) }
    }

    fn list_disks(&mut self) -> Result<Vec<DiskInfo>, PluginError> {
        let items = self.ready()?.list("disks/", "metadata")?;
        Ok(items
            .into_iter()
            .filter(|i| i.snapshot.is_none())
            .filter_map(|i| {
                let id = i.name.strip_prefix("disks/")?.to_owned();
                let size = i
                    .metadata
                    .iter()
                    .find(|(k, _)| k == "lifeboatsize")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(i.content_length);
                Some(DiskInfo { id, size })
            })
            .collect())
    }

    fn write_extents(
        &mut self,
        disk: &str,
        extents: Vec<Extent>,
        zeros: Vec<ZeroRange>,
    ) -> Result<(), PluginError> {
        disk_blob(disk)?;
        let ranges = extents
            .iter()
            .map(|e| (e.offset, e.data.len() as u64))
            .chain(zeros.iter().map(|z| (z.offset, z.length)));
        for (off, len) in ranges.clone() {
            if off % PAGE != 0 || len % PAGE != 0 {
                return Err(invalid(format!(
                    "write to disk {disk} at {off}+{len} is not aligned to {PAGE}-byte pages \
                     (page blobs are written in whole pages)"
                )));
            }
        }
        if extents.is_empty() && zeros.is_empty() {
            return Ok(());
        }
        let size = self.writer(disk)?;
        for (off, len) in ranges {
            if off.checked_add(len).is_none_or(|end| end > size) {
                return Err(invalid(format!(
                    "write at {off}+{len} runs past the end of disk {disk} ({size} bytes)"
                )));
            }
        }
        for e in &extents {
            for (i, chunk) in e.data.chunks(MAX_PUT_PAGE as usize).enumerate() {
                let off = e.offset + i as u64 * MAX_PUT_PAGE;
                // All-zero data is cleared instead: nothing sent, and the pages stay sparse.
                let data = if chunk.iter().all(|b| *b == 0) { None } else { Some(chunk) };
                self.put_page(disk, off, chunk.len() as u64, data)?;
            }
        }
        for z in &zeros {
            if z.length > 0 {
                self.put_page(disk, z.offset, z.length, None)?;
            }
        }
        Ok(())
    }

    fn read_extent(
        &mut self,
        disk: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, PluginError> {
        let name = disk_blob(disk)?;
        let size = match self.held.get(disk) {
            Some(h) => h.size,
            None => Self::size_of(&self.disk_props(disk)?),
        };
        let len = u64::from(length);
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(invalid(format!(
                "read at {offset}+{len} runs past the end of disk {disk} ({size} bytes)"
            )));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let what = format!("reading disk {disk} at {offset}+{len}");
        let r = self.ready()?.call(
            "GET",
            Some(&name),
            &[],
            &[("x-ms-range", format!("bytes={}-{}", offset, offset + len - 1))],
            Vec::new(),
            &what,
        )?;
        if r.body.len() as u64 != len {
            return Err(PluginError::Retryable(format!(
                "{what}: got {} bytes instead of {len}",
                r.body.len()
            )));
        }
        Ok(r.body)
    }

    fn flush_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        // A Put Page is durable when it is acknowledged; only check the disk is there.
        self.disk_props(disk).map(|_| ())
    }

    fn create_point(
        &mut self,
        point: &str,
        tag: &str,
        disks: Vec<String>,
    ) -> Result<PointInfo, PluginError> {
        let meta_name = point_blob(point)?;
        for d in &disks {
            check_id(d)?;
        }
        if let Some(existing) = self.read_point(point)? {
            let have: Vec<&String> = existing.disks.iter().map(|(d, _, _)| d).collect();
            if have.iter().copied().eq(disks.iter()) {
                return Ok(existing.info(point));
            }
            return Err(invalid(format!("point {point} exists with other disks: {have:?}")));
        }
        let mut taken = Vec::new();
        for d in &disks {
            self.delete_orphan_snapshots(d, point)?;
            let size = Self::size_of(&self.disk_props(d)?);
            let name = disk_blob(d)?;
            let what = format!("snapshotting disk {d} for point {point}");
            let r = self.blob.call(
                "PUT",
                Some(&name),
                &[("comp", "snapshot")],
                &[
                    ("x-ms-meta-lifeboatpoint", point.to_owned()),
                    ("x-ms-meta-lifeboatsize", size.to_string()),
                ],
                Vec::new(),
                &what,
            )?;
            let snap = r.header("x-ms-snapshot").ok_or_else(|| {
                PluginError::Internal(format!("{what}: no x-ms-snapshot in the answer"))
            })?;
            taken.push((d.clone(), snap.to_owned(), size));
        }
        let meta = PointMeta { tag: tag.to_owned(), created_unix_ms: now_ms(), disks: taken };
        let what = format!("recording point {point}");
        let r = self.blob.send(
            "PUT",
            Some(&meta_name),
            &[],
            &[
                ("x-ms-blob-type", "BlockBlob".into()),
                ("content-type", "application/json".into()),
                ("if-none-match", "*".into()),
            ],
            meta.to_json(),
            &what,
        )?;
        if !(200..300).contains(&r.status) {
            // Made meanwhile by another call: that one stands.
            if matches!(r.status, 409 | 412)
                && let Some(existing) = self.read_point(point)?
            {
                for (d, s, _) in &meta.disks {
                    self.delete_snapshot(&disk_blob(d)?, s)?;
                }
                return Ok(existing.info(point));
            }
            return Err(error_of(&r, &what));
        }
        Ok(meta.info(point))
    }

    fn list_points(&mut self, prefix: &str) -> Result<Vec<PointInfo>, PluginError> {
        let items = self.ready()?.list(&format!("points/{prefix}"), "")?;
        let mut out = Vec::new();
        for it in items {
            let Some(id) = it.name.strip_prefix("points/") else { continue };
            if check_id(id).is_err() {
                continue;
            }
            // Deleted between the list and the read: not a point any more.
            if let Some(m) = self.read_point(id)? {
                out.push(m.info(id));
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    fn delete_point(&mut self, point: &str) -> Result<(), PluginError> {
        let name = point_blob(point)?;
        let meta = self
            .read_point(point)?
            .ok_or_else(|| PluginError::NotFound(format!("point {point} does not exist")))?;
        // Metadata first: a half-deleted point is never listed.
        let what = format!("deleting point {point}");
        let r = self.blob.send("DELETE", Some(&name), &[], &[], Vec::new(), &what)?;
        if !(200..300).contains(&r.status) && r.status != 404 {
            return Err(error_of(&r, &what));
        }
        for (d, snap, _) in &meta.disks {
            self.delete_snapshot(&disk_blob(d)?, snap)?;
        }
        Ok(())
    }

    fn materialize(
        &mut self,
        point: &str,
        disk: &str,
        new_disk: &str,
    ) -> Result<MaterializedDisk, PluginError> {
        let new_name = disk_blob(new_disk)?;
        let meta = self
            .read_point(point)?
            .ok_or_else(|| PluginError::NotFound(format!("point {point} does not exist")))?;
        let (_, snap, size) =
            meta.disks.iter().find(|(d, _, _)| d == disk).cloned().ok_or_else(|| {
                PluginError::NotFound(format!("disk {disk} is not in point {point}"))
            })?;
        let source = self.blob.url(&disk_blob(disk)?, Some(&snap));
        let what = format!("materialising disk {disk} of point {point} as {new_disk}");
        match self.blob.head(&new_name, &what)? {
            // A repeated call: the copy we started before.
            Some(p) if p.copy_source.as_deref().is_some_and(|s| same_url(s, &source)) => {}
            Some(_) => {
                return Err(invalid(format!("{what}: disk {new_disk} already exists")));
            }
            None => {
                self.blob.call(
                    "PUT",
                    Some(&new_name),
                    &[],
                    &[
                        ("x-ms-copy-source", source.clone()),
                        ("x-ms-meta-lifeboatsize", size.to_string()),
                    ],
                    Vec::new(),
                    &what,
                )?;
            }
        }
        self.wait_copy(&new_name, new_disk)?;
        // Make it importable as an Azure managed disk: a fixed VHD is the raw image,
        // padded to whole MiB, followed by a 512-byte footer.
        let vhd_size = vhd::virtual_size(size);
        let lease = self.lease_header(new_disk);
        let mut h = lease.clone();
        h.push(("x-ms-blob-content-length", (vhd_size + PAGE).to_string()));
        self.blob.call("PUT", Some(&new_name), &[("comp", "properties")], &h, Vec::new(), &what)?;
        let mut h = lease;
        h.push(("x-ms-range", format!("bytes={}-{}", vhd_size, vhd_size + PAGE - 1)));
        h.push(("x-ms-page-write", "update".into()));
        let footer = vhd::footer(vhd_size, blob::now_secs(), new_disk);
        self.blob.call("PUT", Some(&new_name), &[("comp", "page")], &h, footer.to_vec(), &what)?;
        Ok(MaterializedDisk {
            id: new_disk.to_owned(),
            location: self.blob.url(&new_name, None),
            instant: true,
        })
    }

    fn put_log(&mut self, name: &str, data: Vec<u8>) -> Result<(), PluginError> {
        let b = log_blob(name)?;
        self.ready()?
            .call(
                "PUT",
                Some(&b),
                &[],
                &[("x-ms-blob-type", "BlockBlob".into())],
                data,
                &format!("storing log {name}"),
            )
            .map(|_| ())
    }

    fn get_log(&mut self, name: &str) -> Result<Vec<u8>, PluginError> {
        let b = log_blob(name)?;
        Ok(self
            .ready()?
            .call("GET", Some(&b), &[], &[], Vec::new(), &format!("reading log {name}"))?
            .body)
    }

    fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let items = self.ready()?.list(&format!("logs/{prefix}"), "")?;
        let mut names: Vec<String> = items
            .into_iter()
            .filter_map(|i| i.name.strip_prefix("logs/").map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete_log(&mut self, name: &str) -> Result<(), PluginError> {
        let b = log_blob(name)?;
        self.ready()?
            .call("DELETE", Some(&b), &[], &[], Vec::new(), &format!("deleting log {name}"))
            .map(|_| ())
    }

    fn create_vm(&mut self, spec: VmSpec) -> Result<String, PluginError> {
        check_id(&spec.name)?;
        let mut disks = Vec::new();
        for d in &spec.disks {
            disks.push((check_id(d)?.to_owned(), self.blob.url(&disk_blob(d)?, None)));
        }
        let account = self.blob.key.account.clone();
        self.arm()?.create_vm(&spec, &disks, &account)
    }

    fn delete_vm(&mut self, vm: &str) -> Result<(), PluginError> {
        check_id(vm)?;
        self.arm()?.delete_vm(vm)
    }

    fn vm_state(&mut self, vm: &str) -> Result<PowerState, PluginError> {
        check_id(vm)?;
        self.arm()?.vm_state(vm)
    }
}

/// Compares copy-source URLs, which the service may echo with a different encoding.
fn same_url(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace("%3A", ":").replace("%3a", ":");
    norm(a) == norm(b)
}

lifeboat_sdk::export_target!(Azure);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut s: Settings = vec![
            ("account".into(), "devstoreaccount1".into()),
            ("key".into(), "a2V5".into()),
            ("endpoint".into(), "http://127.0.0.1:10000/devstoreaccount1".into()),
        ];
        for (k, v) in extra {
            s.retain(|(kk, _)| kk != k);
            s.push((k.to_string(), v.to_string()));
        }
        s
    }

    #[test]
    fn settings_parse_and_bad_ones_are_named() {
        let a = parse_settings(&settings(&[])).unwrap();
        assert_eq!(a.blob.authority, "127.0.0.1:10000");
        assert_eq!(a.blob.base_path, "/devstoreaccount1");
        assert_eq!(a.blob.container, "lifeboat");
        assert!(is_uuid(&a.lease_id));
        assert_eq!(a.lease_duration, Some(Duration::from_secs(60)));
        assert!(a.arm.is_none());
        let inf = parse_settings(&settings(&[("lease_seconds", "infinite")])).unwrap();
        assert_eq!(inf.lease_duration, None);
        for (k, v) in [
            ("endpoint", "127.0.0.1:10000"),
            ("container", "Bad_Name"),
            ("key", "%%%"),
            ("lease_seconds", "5"),
            ("lease_id", "me"),
        ] {
            let e = parse_settings(&settings(&[(k, v)])).err().unwrap();
            assert!(matches!(&e, PluginError::Invalid(m) if m.contains(k)), "{k}: {e}");
        }
        let e = parse_settings(&vec![("account".into(), "a".into())]).err().unwrap();
        assert!(e.to_string().contains("`key`"), "{e}");
    }

    #[test]
    fn point_metadata_round_trips_and_corruption_is_reported() {
        let m = PointMeta {
            tag: "crash:1 \"q\"".into(),
            created_unix_ms: 1_700_000_000_123,
            disks: vec![("d0".into(), "2024-01-01T00:00:00.1234567Z".into(), 4096)],
        };
        assert_eq!(PointMeta::from_json(&m.to_json()).unwrap(), m);
        assert!(PointMeta::from_json(b"{").unwrap_err().contains("JSON"));
        assert!(PointMeta::from_json(b"{\"tag\":\"x\"}").unwrap_err().contains("disks"));
    }

    #[test]
    fn ids_uuids_and_urls() {
        assert!(check_id("m1-d0.img").is_ok());
        assert!(check_id("../x").is_err() && check_id(".x").is_err() && check_id("a/b").is_err());
        let u = uuid4();
        assert!(is_uuid(&u) && &u[14..15] == "4", "{u}");
        assert!(same_url(
            "http://h/c/b?snapshot=2024-01-01T00%3A00%3A00Z",
            "http://h/c/b?snapshot=2024-01-01T00:00:00Z"
        ));
        assert_eq!(round_up(1, 512), 512);
        assert_eq!(round_up(1024, 512), 1024);
    }
}
