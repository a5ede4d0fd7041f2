//! The VMware target: replica disks are thin VMDKs on one vSphere datastore, written in
//! place through the appliance VM (each disk hot-added to it, the host's `host-disks`
//! doing the I/O on the attached device — or, for a datastore that is a folder on the
//! appliance such as vcsim's, on the flat extent); recovery points are copies made the
//! same way; failed-over machines are VMs created from the VM spec. See
//! docs/targets/vmware.md.
//!
//! ```text
//! [ds] <directory>/disks/<disk>.vmdk           a replica (or materialised) disk, thin
//! [ds] <directory>/disks/<disk>.json           its size and UUID; written last: the disk exists once this does
//! [ds] <directory>/points/<point>/<disk>.vmdk  a point's copy of each disk
//! [ds] <directory>/points/<point>/point.json   tag, time, disks; written last
//! [ds] <directory>/logs/<name>                 replication log objects
//! ```

pub mod soap;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod vsphere;

use lifeboat_sdk::target::host_disks::{self, BlockWrite, DiskRef};
use lifeboat_sdk::target::*;
pub use lifeboat_sdk::target::{check_id, now_ms};
use lifeboat_sdk::{PluginError, Settings, required_setting, setting};
use soap::{Client, Moref, esc, find};
use std::collections::HashMap;
use std::time::Duration;
use vsphere::{Device, SCSI_CONTROLLERS, Vsphere};

/// Most disks one SCSI controller takes (units 0-15 but 7, the controller's own).
const PER_CONTROLLER: usize = 15;
/// Most SCSI controllers a VM has.
const MAX_CONTROLLERS: usize = 4;

fn invalid(m: String) -> PluginError {
    PluginError::Invalid(m)
}

/// KiB a disk of `size` bytes takes in vSphere (capacities are whole KiB).
fn kib(size: u64) -> u64 {
    size.div_ceil(1024)
}

/// The settings (docs/targets/vmware.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub url: String,
    pub username: String,
    pub password: String,
    pub datacenter: String,
    pub datastore: String,
    pub appliance_vm: String,
    pub compute: Option<String>,
    pub resource_pool: Option<String>,
    pub folder: Option<String>,
    pub network: Option<String>,
    pub test_network: Option<String>,
    pub directory: String,
    pub guest_id: String,
    pub api_version: String,
    pub timeout_ms: u64,
    pub task_wait_ms: u64,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, PluginError> {
        let opt =
            |k: &str| setting(s, k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let num = |k: &str, d: u64| -> Result<u64, PluginError> {
            match opt(k) {
                None => Ok(d),
                Some(v) => {
                    v.parse().map_err(|_| invalid(format!("setting {k}: {v:?} is not a number")))
                }
            }
        };
        let directory = opt("directory").unwrap_or_else(|| "lifeboat".into());
        let plain = |seg: &str| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !directory.split('/').all(plain) {
            return Err(invalid(format!(
                "setting directory: {directory:?} must be a relative folder of letters, digits, \
                 `-`, `_`, `.` (segments separated by `/`, none starting with `.`)"
            )));
        }
        let url = required_setting(s, "url")?.trim().to_owned();
        if lifeboat_sdk::http::split_url(&url).is_none() {
            return Err(invalid(format!("setting url: {url:?} is not https://host[:port]/sdk")));
        }
        Ok(Config {
            url,
            username: required_setting(s, "username")?.to_owned(),
            password: required_setting(s, "password")?.to_owned(),
            datacenter: required_setting(s, "datacenter")?.trim().to_owned(),
            datastore: required_setting(s, "datastore")?.trim().to_owned(),
            appliance_vm: required_setting(s, "appliance_vm")?.trim().to_owned(),
            compute: opt("compute"),
            resource_pool: opt("resource_pool"),
            folder: opt("folder"),
            network: opt("network"),
            test_network: opt("test_network"),
            directory,
            guest_id: opt("guest_id").unwrap_or_else(|| "otherLinux64Guest".into()),
            api_version: opt("api_version").unwrap_or_else(|| "7.0".into()),
            timeout_ms: num("timeout_ms", 50_000)?,
            task_wait_ms: num("task_wait_ms", 45_000)?,
        })
    }

    /// The datastore's name (the last part of its inventory path).
    pub fn datastore_name(&self) -> &str {
        self.datastore.rsplit('/').next().unwrap_or(&self.datastore)
    }
}

/// Size and UUID of a disk (`disks/<disk>.json`), format 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMeta {
    pub size: u64,
    pub uuid: String,
    /// An adopted VM's disk (`adopt-vm-disks`): its VMDK, datastore-relative. The VM owns
    /// it: deleting the disk forgets it and leaves the file.
    pub path: Option<String>,
}

impl DiskMeta {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({"format": 1, "size": self.size, "uuid": self.uuid});
        if let Some(p) = &self.path {
            v["path"] = serde_json::Value::String(p.clone());
        }
        v.to_string().into_bytes()
    }
    pub fn parse(data: &[u8], what: &str) -> Result<DiskMeta, PluginError> {
        let bad = |why: &str| PluginError::Internal(format!("{what}: {why}"));
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| bad(&format!("not JSON: {e}")))?;
        if v["format"] != 1 {
            return Err(bad("format is not 1"));
        }
        let path = match &v["path"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(p)
                if p.ends_with(".vmdk")
                    && !p.starts_with('/')
                    && !p.split('/').any(|c| c.is_empty() || c == ".." || c == ".") =>
            {
                Some(p.clone())
            }
            _ => return Err(bad("path is not a datastore path of a .vmdk")),
        };
        Ok(DiskMeta {
            size: v["size"].as_u64().ok_or_else(|| bad("no size"))?,
            uuid: v["uuid"].as_str().ok_or_else(|| bad("no uuid"))?.to_owned(),
            path,
        })
    }
}

/// A point's record (`points/<point>/point.json`), format 1.
#[derive(Debug, Clone)]
pub struct PointMeta {
    pub info: PointInfo,
    /// Per disk: size and the point copy's UUID.
    pub disks: Vec<(String, DiskMeta)>,
}

impl PointMeta {
    pub fn to_json(&self) -> Vec<u8> {
        let disks: Vec<serde_json::Value> = self
            .disks
            .iter()
            .map(|(id, m)| serde_json::json!({"id": id, "size": m.size, "uuid": m.uuid}))
            .collect();
        serde_json::json!({
            "format": 1, "tag": self.info.tag, "created_unix_ms": self.info.created_unix_ms,
            "disks": disks,
        })
        .to_string()
        .into_bytes()
    }
    pub fn parse(id: &str, data: &[u8], what: &str) -> Result<PointMeta, PluginError> {
        let bad = |why: &str| PluginError::Internal(format!("{what}: {why}"));
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| bad(&format!("not JSON: {e}")))?;
        if v["format"] != 1 {
            return Err(bad("format is not 1"));
        }
        let mut disks = Vec::new();
        for d in v["disks"].as_array().ok_or_else(|| bad("no disks"))? {
            let id = d["id"].as_str().ok_or_else(|| bad("a disk has no id"))?;
            check_id(id)?;
            disks.push((
                id.to_owned(),
                DiskMeta {
                    size: d["size"].as_u64().ok_or_else(|| bad("a disk has no size"))?,
                    uuid: d["uuid"].as_str().ok_or_else(|| bad("a disk has no uuid"))?.to_owned(),
                    path: None,
                },
            ));
        }
        Ok(PointMeta {
            info: PointInfo {
                id: id.to_owned(),
                tag: v["tag"].as_str().ok_or_else(|| bad("no tag"))?.to_owned(),
                created_unix_ms: v["created_unix_ms"].as_u64().ok_or_else(|| bad("no time"))?,
                disks: disks.iter().map(|(d, _)| d.clone()).collect(),
            },
            disks,
        })
    }
}

/// vSphere objects found once per session.
struct Objects {
    dc: Moref,
    browser: Moref,
    appliance: Moref,
    /// Descriptor path (`[ds] dir/x.vmdk`) -> device key, of our disks attached to the
    /// appliance VM as far as this instance knows.
    attached: HashMap<String, i32>,
}

/// The VMware target's state.
pub struct Vmware {
    cfg: Config,
    vs: Vsphere,
    objs: Option<Objects>,
    disks: HashMap<String, DiskMeta>,
}

/// A virtual disk `[ds] path` of this target.
#[derive(Clone)]
struct Vmdk {
    path: String,
    meta: DiskMeta,
}

impl Vmware {
    fn dir(&self, sub: &str) -> String {
        format!("{}/{sub}", self.cfg.directory)
    }
    fn disk_vmdk(&self, id: &str) -> Result<String, PluginError> {
        Ok(format!("{}/disks/{}.vmdk", self.cfg.directory, check_id(id)?))
    }
    fn disk_meta_path(&self, id: &str) -> Result<String, PluginError> {
        Ok(format!("{}/disks/{}.json", self.cfg.directory, check_id(id)?))
    }
    fn point_dir(&self, point: &str) -> Result<String, PluginError> {
        Ok(format!("{}/points/{}", self.cfg.directory, check_id(point)?))
    }
    fn log_path(&self, name: &str) -> Result<String, PluginError> {
        Ok(format!("{}/logs/{}", self.cfg.directory, check_id(name)?))
    }

    /// The session's objects, found (and the appliance VM's disks read) on first use.
    fn objs(&mut self) -> Result<&mut Objects, PluginError> {
        if self.objs.is_none() {
            let c = self.cfg.clone();
            let dc = self.vs.need_path(&c.datacenter, "datacenter")?;
            let ds = self
                .vs
                .need_path(&format!("{}/datastore/{}", c.datacenter, c.datastore), "datastore")?;
            let body = self.vs.props(&ds, &["browser"])?;
            let browser = {
                let doc = soap::parse(&body)?;
                find(doc.root(), "val").and_then(Moref::of).ok_or_else(|| {
                    PluginError::Internal(format!("datastore {} has no browser", c.datastore))
                })?
            };
            let appliance = self
                .vs
                .need_path(&format!("{}/vm/{}", c.datacenter, c.appliance_vm), "appliance_vm")?;
            let prefix = self.vs.ds_path(&format!("{}/", c.directory));
            let attached = self
                .vs
                .devices(&appliance)?
                .into_iter()
                .filter(|d| d.kind == "VirtualDisk")
                .filter_map(|d| Some((d.file_name.filter(|f| f.starts_with(&prefix))?, d.key)))
                .collect();
            self.objs = Some(Objects { dc, browser, appliance, attached });
        }
        self.objs.as_mut().ok_or_else(|| PluginError::Internal("no vSphere objects".into()))
    }

    fn dc(&mut self) -> Result<Moref, PluginError> {
        Ok(self.objs()?.dc.clone())
    }

    /// The host's name for a disk.
    fn disk_ref(&self, v: &Vmdk) -> DiskRef {
        DiskRef {
            datastore: self.cfg.datastore_name().to_owned(),
            path: v.path.clone(),
            uuid: v.meta.uuid.clone(),
        }
    }

    /// Hot-adds `v` to the appliance VM unless it is attached (the device list is read
    /// again first: another instance, or a previous run, may have attached it).
    fn attach(&mut self, v: &Vmdk, fresh: bool) -> Result<(), PluginError> {
        let file = self.vs.ds_path(&v.path);
        if !fresh && self.objs()?.attached.contains_key(&file) {
            return Ok(());
        }
        let appliance = self.objs()?.appliance.clone();
        let devices = self.vs.devices(&appliance)?;
        if let Some(d) = devices.iter().find(|d| d.file_name.as_deref() == Some(file.as_str())) {
            self.objs()?.attached.insert(file, d.key);
            return Ok(());
        }
        let (controller, unit) = free_slot(&devices).ok_or_else(|| {
            invalid(format!(
                "the appliance VM {} has no free SCSI slot for {file}: give it another SCSI \
                 controller (up to 4, 15 disks each), or spread machines over more appliances",
                self.cfg.appliance_vm
            ))
        })?;
        let change = format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>-1</key>\
             <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{}</fileName>\
             <diskMode>independent_persistent</diskMode></backing><controllerKey>{controller}</controllerKey>\
             <unitNumber>{unit}</unitNumber><capacityInKB>{}</capacityInKB></device></deviceChange>",
            esc(&file),
            kib(v.meta.size)
        );
        self.vs.reconfigure(
            &appliance,
            &format!("attaching {file} to the appliance VM {}", self.cfg.appliance_vm),
            &change,
        )?;
        let key = self
            .vs
            .devices(&appliance)?
            .into_iter()
            .find(|d| d.file_name.as_deref() == Some(file.as_str()))
            .map(|d| d.key)
            .ok_or_else(|| {
                PluginError::Internal(format!(
                    "{file} is not on the appliance VM after attaching it"
                ))
            })?;
        self.objs()?.attached.insert(file, key);
        Ok(())
    }

    /// Removes `[ds] path` from the appliance VM if it is attached (the file stays).
    fn detach(&mut self, path: &str) -> Result<(), PluginError> {
        let file = self.vs.ds_path(path);
        let appliance = self.objs()?.appliance.clone();
        let devices = self.vs.devices(&appliance)?;
        self.objs()?.attached.remove(&file);
        let Some(d) = devices.iter().find(|d| d.file_name.as_deref() == Some(file.as_str())) else {
            return Ok(());
        };
        let change = format!(
            "<deviceChange><operation>remove</operation>{}</deviceChange>",
            disk_device_xml(d, &file)
        );
        self.vs.reconfigure(
            &appliance,
            &format!("detaching {file} from the appliance VM {}", self.cfg.appliance_vm),
            &change,
        )
    }

    /// Runs host I/O on `v`, attached first; if the host cannot find the disk (another
    /// instance detached it), attaches it again and retries once.
    fn io<T>(
        &mut self,
        v: &Vmdk,
        f: impl Fn(&DiskRef) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        self.attach(v, false)?;
        let r = self.disk_ref(v);
        match f(&r) {
            Err(PluginError::NotFound(_)) => {
                self.attach(v, true)?;
                host_disks::open(&r, v.meta.size)?;
                f(&r)
            }
            other => other,
        }
    }

    /// The replica (or materialised) disk `id`; `not-found` if it does not exist.
    fn disk(&mut self, id: &str) -> Result<Vmdk, PluginError> {
        let path = self.disk_vmdk(id)?;
        let meta = match self.disks.get(id) {
            Some(m) => m.clone(),
            None => {
                let meta_path = self.disk_meta_path(id)?;
                let data = self
                    .vs
                    .get_file(&meta_path)?
                    .ok_or_else(|| PluginError::NotFound(format!("disk {id}")))?;
                let meta = DiskMeta::parse(&data, &self.vs.ds_path(&meta_path))?;
                self.disks.insert(id.to_owned(), meta.clone());
                meta
            }
        };
        Ok(Vmdk { path: meta.path.clone().unwrap_or(path), meta })
    }

    /// The disk `id`, checked to reach byte `end`; a cached size that does not is read
    /// again first (another instance of the plugin, in another role, may have grown the
    /// disk or made it anew).
    fn disk_reaching(&mut self, id: &str, end: u64) -> Result<Vmdk, PluginError> {
        let mut v = self.disk(id)?;
        if end > v.meta.size && self.disks.remove(id).is_some() {
            v = self.disk(id)?;
        }
        if end > v.meta.size {
            return Err(invalid(format!(
                "I/O up to byte {end} runs past the end of disk {id} ({} bytes)",
                v.meta.size
            )));
        }
        Ok(v)
    }

    /// Makes a new thin disk at `path` of `size` bytes, attached and sized for I/O;
    /// a leftover of an interrupted attempt there is replaced.
    fn new_vmdk(&mut self, path: &str, size: u64) -> Result<Vmdk, PluginError> {
        let dc = self.dc()?;
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        self.vs.make_dir(&dc, parent)?;
        if let Err(f) = self.vs.create_vmdk(&dc, path, kib(size))? {
            if f.kind != "FileAlreadyExists" {
                return Err(f.error(&format!("creating disk {}", self.vs.ds_path(path))));
            }
            // Left by an attempt that did not finish (its record was never written).
            self.detach(path)?;
            self.vs.delete_vmdk(&dc, path)?;
            if let Err(f) = self.vs.create_vmdk(&dc, path, kib(size))? {
                return Err(f.error(&format!("creating disk {}", self.vs.ds_path(path))));
            }
        }
        let uuid = self.vs.vmdk_uuid(&dc, path)?;
        let v = Vmdk { path: path.to_owned(), meta: DiskMeta { size, uuid, path: None } };
        self.attach(&v, true)?;
        host_disks::open(&self.disk_ref(&v), size)?;
        Ok(v)
    }

    fn read_point(&mut self, point: &str) -> Result<Option<PointMeta>, PluginError> {
        let path = format!("{}/point.json", self.point_dir(point)?);
        match self.vs.get_file(&path)? {
            None => Ok(None),
            Some(data) => Ok(Some(PointMeta::parse(point, &data, &self.vs.ds_path(&path))?)),
        }
    }

    /// The folder of VMs: the `folder` setting, else the datacenter's VM folder.
    fn vm_folder(&mut self) -> Result<(Moref, String), PluginError> {
        let dc_path = self.cfg.datacenter.clone();
        match self.cfg.folder.clone() {
            Some(f) => Ok((
                self.vs.need_path(&format!("{dc_path}/vm/{f}"), "folder")?,
                format!("{dc_path}/vm/{f}"),
            )),
            None => {
                let dc = self.dc()?;
                let body = self.vs.props(&dc, &["vmFolder"])?;
                let doc = soap::parse(&body)?;
                let m = find(doc.root(), "val").and_then(Moref::of).ok_or_else(|| {
                    PluginError::Internal("the datacenter has no VM folder".into())
                })?;
                Ok((m, format!("{dc_path}/vm")))
            }
        }
    }

    /// The resource pool new VMs go to.
    fn pool(&mut self) -> Result<Moref, PluginError> {
        let compute = self.cfg.compute.clone().ok_or_else(|| {
            invalid("creating a VM needs the `compute` setting (a cluster or host)".into())
        })?;
        let base = format!("{}/host/{compute}", self.cfg.datacenter);
        if let Some(p) = self.cfg.resource_pool.clone() {
            return self.vs.need_path(&format!("{base}/Resources/{p}"), "resource_pool");
        }
        let cr = self.vs.need_path(&base, "compute")?;
        let body = self.vs.props(&cr, &["resourcePool"])?;
        let doc = soap::parse(&body)?;
        find(doc.root(), "val").and_then(Moref::of).ok_or_else(|| {
            invalid(format!("{base} has no resource pool: is `compute` a cluster or host?"))
        })
    }

    /// The `<backing>` of a NIC on network (port group) `name`.
    fn nic_backing(&mut self, name: &str) -> Result<String, PluginError> {
        let path = format!("{}/network/{name}", self.cfg.datacenter);
        let net = self.vs.find_path(&path)?.ok_or_else(|| {
            PluginError::NotFound(format!(
                "vSphere has no network {name:?} in datacenter {}: check the network mapping or \
                 the `network`/`test_network` settings",
                self.cfg.datacenter
            ))
        })?;
        match net.kind.as_str() {
            "Network" => Ok(format!(
                "<backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>{}</deviceName></backing>",
                esc(name)
            )),
            "DistributedVirtualPortgroup" => {
                let body = self.vs.props(&net, &["key", "config.distributedVirtualSwitch"])?;
                let (key, switch) = {
                    let doc = soap::parse(&body)?;
                    let mut key = None;
                    let mut switch = None;
                    for p in doc.descendants().filter(|n| n.has_tag_name("propSet")) {
                        let (Some(n), Some(v)) = (soap::text(p, "name"), soap::child(p, "val"))
                        else {
                            continue;
                        };
                        match n.as_str() {
                            "key" => key = v.text().map(|t| t.trim().to_owned()),
                            _ => switch = Moref::of(v),
                        }
                    }
                    (key, switch)
                };
                let (Some(key), Some(switch)) = (key, switch) else {
                    return Err(PluginError::Internal(format!("port group {name} has no switch")));
                };
                let body = self.vs.props(&switch, &["uuid"])?;
                let doc = soap::parse(&body)?;
                let uuid =
                    find(doc.root(), "val").and_then(|n| n.text()).unwrap_or("").trim().to_owned();
                Ok(format!(
                    "<backing xsi:type=\"VirtualEthernetCardDistributedVirtualPortBackingInfo\"><port>\
                     <switchUuid>{}</switchUuid><portgroupKey>{}</portgroupKey></port></backing>",
                    esc(&uuid),
                    esc(&key)
                ))
            }
            other => Err(invalid(format!(
                "network {name:?} is a {other}; only standard and distributed port groups are supported"
            ))),
        }
    }
}

/// A free (controller key, unit number) on the VM's SCSI controllers, lowest bus first.
pub fn free_slot(devices: &[Device]) -> Option<(i32, i32)> {
    let mut controllers: Vec<&Device> =
        devices.iter().filter(|d| SCSI_CONTROLLERS.contains(&d.kind.as_str())).collect();
    controllers.sort_by_key(|c| c.bus_number.unwrap_or(0));
    for c in controllers {
        for unit in (0..16).filter(|u| *u != 7) {
            let taken = devices
                .iter()
                .any(|d| d.controller_key == Some(c.key) && d.unit_number == Some(unit));
            if !taken {
                return Some((c.key, unit));
            }
        }
    }
    None
}

/// The `<device>` of an existing disk, for a remove or an edit.
fn disk_device_xml(d: &Device, file: &str) -> String {
    format!(
        "<device xsi:type=\"VirtualDisk\"><key>{}</key><deviceInfo><label>Hard disk</label><summary>{}</summary></deviceInfo><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">\
         <fileName>{}</fileName><diskMode>independent_persistent</diskMode></backing>{}{}<capacityInKB>{}</capacityInKB></device>",
        d.key,
        esc(file),
        esc(file),
        d.controller_key.map(|k| format!("<controllerKey>{k}</controllerKey>")).unwrap_or_default(),
        d.unit_number.map(|u| format!("<unitNumber>{u}</unitNumber>")).unwrap_or_default(),
        d.capacity_kb.unwrap_or(0),
    )
}

/// The `<config>` of a new VM: firmware, CPUs, memory, PVSCSI controllers with the disks
/// (boot disk at SCSI 0:0), VMXNET3 NICs with their backings and MAC policy.
#[allow(clippy::cast_possible_truncation)] // indexes below 60 (checked first)
pub fn vm_config_xml(
    spec: &VmSpec,
    guest_id: &str,
    vm_path: &str,
    disks: &[(String, u64)],
    nic_backings: &[String],
) -> Result<String, PluginError> {
    if disks.is_empty() {
        return Err(invalid(format!("VM {}: a VM needs at least one disk", spec.name)));
    }
    if disks.len() > PER_CONTROLLER * MAX_CONTROLLERS {
        return Err(invalid(format!(
            "VM {}: {} disks are more than {} (4 SCSI controllers)",
            spec.name,
            disks.len(),
            PER_CONTROLLER * MAX_CONTROLLERS
        )));
    }
    let mut changes = String::new();
    for c in 0..disks.len().div_ceil(PER_CONTROLLER) {
        changes.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"ParaVirtualSCSIController\">\
             <key>{}</key><busNumber>{c}</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>",
            -100 - c as i32
        ));
    }
    for (i, (file, size_kb)) in disks.iter().enumerate() {
        let c = i / PER_CONTROLLER;
        let slot = (i % PER_CONTROLLER) as i32;
        let unit = if slot >= 7 { slot + 1 } else { slot };
        changes.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{}</key>\
             <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{}</fileName>\
             <diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing>\
             <controllerKey>{}</controllerKey><unitNumber>{unit}</unitNumber><capacityInKB>{size_kb}</capacityInKB>\
             </device></deviceChange>",
            -1000 - i as i32,
            esc(file),
            -100 - c as i32
        ));
    }
    for (i, (nic, backing)) in spec.nics.iter().zip(nic_backings).enumerate() {
        let mac = match nic.mac.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => {
                let ok = m.len() == 17
                    && m.split(':')
                        .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
                if !ok {
                    return Err(invalid(format!(
                        "VM {}: MAC address {m:?} is not aa:bb:cc:dd:ee:ff",
                        spec.name
                    )));
                }
                format!(
                    "<addressType>manual</addressType><macAddress>{}</macAddress>",
                    m.to_ascii_lowercase()
                )
            }
            None => "<addressType>generated</addressType>".to_owned(),
        };
        changes.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualVmxnet3\"><key>{}</key>\
             {backing}<connectable><startConnected>true</startConnected><allowGuestControl>true</allowGuestControl>\
             <connected>true</connected></connectable>{mac}</device></deviceChange>",
            -2000 - i as i32
        ));
    }
    let firmware = match spec.firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "efi",
    };
    Ok(format!(
        "<config><name>{}</name><guestId>{}</guestId><files><vmPathName>{}</vmPathName></files>\
         <numCPUs>{}</numCPUs><memoryMB>{}</memoryMB>{changes}<firmware>{firmware}</firmware></config>",
        esc(&spec.name),
        esc(guest_id),
        esc(vm_path),
        spec.cpus.max(1),
        spec.memory_mib.max(4),
    ))
}

impl Target for Vmware {
    fn init(settings: Settings) -> Result<(Self, TargetCapabilities), PluginError> {
        let cfg = Config::from_settings(&settings)?;
        let client =
            Client::new(&cfg.url, &cfg.api_version, cfg.timeout_ms, &cfg.username, &cfg.password)?;
        let vs = Vsphere {
            client,
            task_wait: Duration::from_millis(cfg.task_wait_ms),
            datacenter_path: cfg.datacenter.clone(),
            datastore_name: cfg.datastore_name().to_owned(),
        };
        let caps = TargetCapabilities {
            alignment: 512,
            max_write_bytes: 16 << 20,
            instant_points: false,
            instant_materialize: false,
            requires_encryption: false,
        };
        Ok((Vmware { cfg, vs, objs: None, disks: HashMap::new() }, caps))
    }

    fn health(&mut self) -> Result<String, PluginError> {
        self.objs = None;
        self.vs.client.login()?;
        let about = self.vs.client.content()?.about;
        self.objs()?;
        let ds = self.vs.need_path(
            &format!("{}/datastore/{}", self.cfg.datacenter, self.cfg.datastore),
            "datastore",
        )?;
        let body = self.vs.props(&ds, &["summary.freeSpace", "summary.accessible"])?;
        let (free, accessible) = {
            let doc = soap::parse(&body)?;
            let mut free = 0u64;
            let mut accessible = true;
            for p in doc.descendants().filter(|n| n.has_tag_name("propSet")) {
                let v = soap::text(p, "val").unwrap_or_default();
                match soap::text(p, "name").as_deref() {
                    Some("summary.freeSpace") => free = v.parse().unwrap_or(0),
                    Some("summary.accessible") => accessible = v == "true",
                    _ => {}
                }
            }
            (free, accessible)
        };
        if !accessible {
            return Err(PluginError::Retryable(format!(
                "datastore {} is not accessible",
                self.cfg.datastore
            )));
        }
        let dc = self.dc()?;
        let probe = self.dir("health-probe");
        self.vs.make_dir(&dc, &self.cfg.directory.clone())?;
        self.vs.put_file(&probe, b"ok")?;
        self.vs.delete_file(&dc, &probe)?;
        Ok(format!(
            "{about}: datastore {} writable ({} GiB free), appliance VM {} found",
            self.cfg.datastore,
            free >> 30,
            self.cfg.appliance_vm
        ))
    }

    fn create_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        match self.disk(disk) {
            Ok(v) if v.meta.size == size => {
                self.attach(&v, false)?;
                return Ok(());
            }
            Ok(v) => {
                return Err(invalid(format!("disk {disk} exists with size {}", v.meta.size)));
            }
            Err(PluginError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let path = self.disk_vmdk(disk)?;
        let v = self.new_vmdk(&path, size)?;
        let dc = self.dc()?;
        let meta_path = self.disk_meta_path(disk)?;
        self.vs.put_file_atomic(&dc, &meta_path, &v.meta.to_json())?;
        self.disks.insert(disk.to_owned(), v.meta);
        Ok(())
    }

    fn resize_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        let v = self.disk(disk)?;
        if size == v.meta.size {
            return Ok(());
        }
        if size < v.meta.size {
            return Err(invalid(format!(
                "disk {disk} cannot shrink from {} to {size} bytes: vSphere disks only grow",
                v.meta.size
            )));
        }
        self.attach(&v, true)?;
        let file = self.vs.ds_path(&v.path);
        let appliance = self.objs()?.appliance.clone();
        if kib(size) > kib(v.meta.size) {
            let devices = self.vs.devices(&appliance)?;
            let d = devices
                .iter()
                .find(|d| d.file_name.as_deref() == Some(file.as_str()))
                .cloned()
                .ok_or_else(|| PluginError::Internal(format!("{file} is not attached")))?;
            let grown = Device { capacity_kb: Some(kib(size)), ..d };
            let change = format!(
                "<deviceChange><operation>edit</operation>{}</deviceChange>",
                disk_device_xml(&grown, &file)
            );
            self.vs.reconfigure(&appliance, &format!("growing {file} to {size} bytes"), &change)?;
        }
        let grown = Vmdk {
            path: v.path.clone(),
            meta: DiskMeta { size, uuid: v.meta.uuid.clone(), path: v.meta.path.clone() },
        };
        host_disks::open(&self.disk_ref(&grown), size)?;
        let dc = self.dc()?;
        let meta_path = self.disk_meta_path(disk)?;
        self.vs.put_file_atomic(&dc, &meta_path, &grown.meta.to_json())?;
        self.disks.insert(disk.to_owned(), grown.meta);
        Ok(())
    }

    fn delete_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        let meta_path = self.disk_meta_path(disk)?;
        let (known, path, adopted) = match self.disk(disk) {
            Ok(v) => (true, v.path, v.meta.path.is_some()),
            Err(_) => (false, self.disk_vmdk(disk)?, false),
        };
        self.disks.remove(disk);
        let dc = self.dc()?;
        // The record first: a disk half deleted is not listed.
        match self.vs.delete_file(&dc, &meta_path) {
            Ok(()) | Err(PluginError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.detach(&path)?;
        if adopted {
            // A VM's own disk: forgotten, not deleted.
            return Ok(());
        }
        match self.vs.delete_vmdk(&dc, &path) {
            Err(PluginError::NotFound(_)) if !known => {
                Err(PluginError::NotFound(format!("disk {disk}")))
            }
            Err(PluginError::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    fn list_disks(&mut self) -> Result<Vec<DiskInfo>, PluginError> {
        let browser = self.objs()?.browser.clone();
        let listing = self.vs.list_dir(&browser, &self.dir("disks"), "*.json")?;
        let mut out = Vec::new();
        for f in listing.files {
            let Some(id) = f.strip_suffix(".json") else { continue };
            if check_id(id).is_err() {
                continue;
            }
            match self.disk(id) {
                Ok(v) => out.push(DiskInfo { id: id.to_owned(), size: v.meta.size }),
                Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn write_extents(
        &mut self,
        disk: &str,
        extents: Vec<Extent>,
        zeros: Vec<ZeroRange>,
    ) -> Result<(), PluginError> {
        let end = extents
            .iter()
            .map(|e| e.offset.checked_add(e.data.len() as u64))
            .chain(zeros.iter().map(|z| z.offset.checked_add(z.length)))
            .try_fold(0u64, |m, e| e.map(|e| m.max(e)));
        let v = self.disk_reaching(disk, end.unwrap_or(u64::MAX))?;
        let writes: Vec<BlockWrite> =
            extents.into_iter().map(|e| BlockWrite { offset: e.offset, data: e.data }).collect();
        self.io(&v, |r| {
            if !writes.is_empty() {
                host_disks::write(r, &writes)?;
            }
            for z in &zeros {
                host_disks::zero(r, z.offset, z.length)?;
            }
            Ok(())
        })
    }

    fn read_extent(
        &mut self,
        disk: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, PluginError> {
        let v = self.disk_reaching(disk, offset.saturating_add(u64::from(length)))?;
        self.io(&v, |r| host_disks::read(r, offset, length))
    }

    fn flush_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        let v = self.disk(disk)?;
        self.io(&v, host_disks::flush)
    }

    fn create_point(
        &mut self,
        point: &str,
        tag: &str,
        disks: Vec<String>,
    ) -> Result<PointInfo, PluginError> {
        if let Some(existing) = self.read_point(point)? {
            if existing.info.disks == disks {
                return Ok(existing.info);
            }
            return Err(invalid(format!("point {point} exists with other disks")));
        }
        let dir = self.point_dir(point)?;
        let mut copies = Vec::new();
        for d in &disks {
            let src = self.disk(d)?;
            self.io(&src, host_disks::flush)?;
            let dst = self.new_vmdk(&format!("{dir}/{}.vmdk", check_id(d)?), src.meta.size)?;
            let (s, t) = (self.disk_ref(&src), self.disk_ref(&dst));
            self.io(&src, |_| host_disks::copy(&s, &t, src.meta.size))?;
            self.detach(&dst.path)?;
            copies.push((d.clone(), dst.meta));
        }
        let meta = PointMeta {
            info: PointInfo {
                id: point.to_owned(),
                tag: tag.to_owned(),
                created_unix_ms: now_ms(),
                disks,
            },
            disks: copies,
        };
        let dc = self.dc()?;
        self.vs.put_file_atomic(&dc, &format!("{dir}/point.json"), &meta.to_json())?;
        Ok(meta.info)
    }

    fn list_points(&mut self, prefix: &str) -> Result<Vec<PointInfo>, PluginError> {
        let browser = self.objs()?.browser.clone();
        let listing = self.vs.list_dir(&browser, &self.dir("points"), "*")?;
        let mut out = Vec::new();
        for p in listing.folders.iter().filter(|p| p.starts_with(prefix) && check_id(p).is_ok()) {
            // A folder without its point.json was interrupted while being made.
            if let Some(m) = self.read_point(p)? {
                out.push(m.info);
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    fn delete_point(&mut self, point: &str) -> Result<(), PluginError> {
        let dir = self.point_dir(point)?;
        let meta = self.read_point(point)?;
        let dc = self.dc()?;
        let browser = self.objs()?.browser.clone();
        let listing = self.vs.list_dir(&browser, &dir, "*.vmdk")?;
        if meta.is_none() && listing.files.is_empty() {
            return Err(PluginError::NotFound(format!("point {point}")));
        }
        // The record first, so a half-deleted point is never listed.
        match self.vs.delete_file(&dc, &format!("{dir}/point.json")) {
            Ok(()) | Err(PluginError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        for f in listing.files.iter().filter(|f| !f.ends_with("-flat.vmdk")) {
            let path = format!("{dir}/{f}");
            self.detach(&path)?;
            match self.vs.delete_vmdk(&dc, &path) {
                Ok(()) | Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.vs.delete_file(&dc, &dir) {
            Ok(()) | Err(PluginError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn materialize(
        &mut self,
        point: &str,
        disk: &str,
        new_disk: &str,
    ) -> Result<MaterializedDisk, PluginError> {
        let meta = self
            .read_point(point)?
            .ok_or_else(|| PluginError::NotFound(format!("point {point}")))?;
        let (_, pm) =
            meta.disks.iter().find(|(d, _)| d == disk).cloned().ok_or_else(|| {
                PluginError::NotFound(format!("disk {disk} is not in point {point}"))
            })?;
        let src =
            Vmdk { path: format!("{}/{disk}.vmdk", self.point_dir(point)?), meta: pm.clone() };
        // Materialising again replaces the earlier copy.
        match self.delete_disk(new_disk) {
            Ok(()) | Err(PluginError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let path = self.disk_vmdk(new_disk)?;
        let dst = self.new_vmdk(&path, pm.size)?;
        let (s, t) = (self.disk_ref(&src), self.disk_ref(&dst));
        self.io(&src, |_| host_disks::copy(&s, &t, pm.size))?;
        self.detach(&src.path)?;
        // A VM is what uses it next: it leaves the appliance (attached again on I/O).
        self.detach(&dst.path)?;
        let dc = self.dc()?;
        let meta_path = self.disk_meta_path(new_disk)?;
        self.vs.put_file_atomic(&dc, &meta_path, &dst.meta.to_json())?;
        self.disks.insert(new_disk.to_owned(), dst.meta);
        Ok(MaterializedDisk {
            id: new_disk.to_owned(),
            location: self.vs.ds_path(&path),
            instant: false,
        })
    }

    fn put_log(&mut self, name: &str, data: Vec<u8>) -> Result<(), PluginError> {
        let path = self.log_path(name)?;
        let dc = self.dc()?;
        match self.vs.put_file_atomic(&dc, &path, &data) {
            Err(PluginError::NotFound(_)) => {
                self.vs.make_dir(&dc, &self.dir("logs"))?;
                self.vs.put_file_atomic(&dc, &path, &data)
            }
            r => r,
        }
    }

    fn get_log(&mut self, name: &str) -> Result<Vec<u8>, PluginError> {
        let path = self.log_path(name)?;
        self.vs.get_file(&path)?.ok_or_else(|| PluginError::NotFound(format!("log {name}")))
    }

    fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let browser = self.objs()?.browser.clone();
        let listing = self.vs.list_dir(&browser, &self.dir("logs"), &format!("{prefix}*"))?;
        let mut v: Vec<String> = listing
            .files
            .into_iter()
            .filter(|f| f.starts_with(prefix) && !f.ends_with(".tmp"))
            .collect();
        v.sort();
        Ok(v)
    }

    fn delete_log(&mut self, name: &str) -> Result<(), PluginError> {
        let path = self.log_path(name)?;
        let dc = self.dc()?;
        self.vs.delete_file(&dc, &path)
    }

    fn create_vm(&mut self, spec: VmSpec) -> Result<String, PluginError> {
        check_id(&spec.name)?;
        let (folder, folder_path) = self.vm_folder()?;
        if let Some(vm) = self.vs.find_path(&format!("{folder_path}/{}", spec.name))? {
            // Made by an earlier attempt of this call, if its disks are the spec's; any
            // other VM of that name is not ours to power on.
            let mut paths = Vec::new();
            for d in &spec.disks {
                paths.push(self.disk(d)?.path);
            }
            let mut want: Vec<String> = paths.iter().map(|p| self.vs.ds_path(p)).collect();
            let mut have: Vec<String> = self
                .vs
                .devices(&vm)?
                .into_iter()
                .filter(|d| d.kind == "VirtualDisk")
                .filter_map(|d| d.file_name)
                .collect();
            want.sort();
            have.sort();
            if have != want {
                return Err(invalid(format!(
                    "a VM named {} is in folder {folder_path} already, on other disks ({}): choose another name",
                    spec.name,
                    have.join(", ")
                )));
            }
            // Its disks leave the appliance first (written there by failback into it).
            for p in &paths {
                self.detach(p)?;
            }
            self.vs.power(&vm, true)?;
            return Ok(vm.value);
        }
        let pool = self.pool()?;
        let mut disks = Vec::new();
        for d in &spec.disks {
            let v = self.disk(d)?;
            self.detach(&v.path)?;
            disks.push((self.vs.ds_path(&v.path), kib(v.meta.size)));
        }
        let mut backings = Vec::new();
        for n in &spec.nics {
            let net = if spec.isolated {
                self.cfg.test_network.clone().ok_or_else(|| {
                    invalid(
                        "test failover needs the `test_network` setting (an isolated port group)"
                            .into(),
                    )
                })?
            } else if !n.network.trim().is_empty() {
                n.network.trim().to_owned()
            } else {
                self.cfg.network.clone().ok_or_else(|| {
                    invalid(format!(
                        "VM {}: a NIC names no network and the `network` setting is empty",
                        spec.name
                    ))
                })?
            };
            backings.push(self.nic_backing(&net)?);
        }
        let vm_path = format!("[{}]", self.cfg.datastore_name());
        let config = vm_config_xml(&spec, &self.cfg.guest_id, &vm_path, &disks, &backings)?;
        let what = format!("creating VM {}", spec.name);
        let info = self.vs.task(
            &what,
            &format!(
                "<CreateVM_Task>{}{config}{}</CreateVM_Task>",
                folder.xml("_this"),
                pool.xml("pool")
            ),
        )?;
        let vm = {
            let doc = soap::parse(&info)?;
            find(doc.root(), "result")
                .and_then(Moref::of)
                .ok_or_else(|| PluginError::Internal(format!("{what}: the task gave no VM")))?
        };
        self.vs.power(&vm, true)?;
        Ok(vm.value)
    }

    fn delete_vm(&mut self, vm: &str) -> Result<(), PluginError> {
        let m = Moref::new("VirtualMachine", vm);
        self.vs.power_state(&m).map_err(|e| match e {
            PluginError::NotFound(_) => PluginError::NotFound(format!("vm {vm}")),
            e => e,
        })?;
        self.vs.power(&m, false)?;
        // The disks are the target's (failback reads them): taken off the VM, kept.
        let changes: String = self
            .vs
            .devices(&m)?
            .iter()
            .filter(|d| d.kind == "VirtualDisk")
            .map(|d| {
                format!(
                    "<deviceChange><operation>remove</operation>{}</deviceChange>",
                    disk_device_xml(d, d.file_name.as_deref().unwrap_or(""))
                )
            })
            .collect();
        if !changes.is_empty() {
            self.vs.reconfigure(&m, &format!("taking the disks off VM {vm}"), &changes)?;
        }
        self.vs.task(
            &format!("deleting VM {vm}"),
            &format!("<Destroy_Task>{}</Destroy_Task>", m.xml("_this")),
        )?;
        Ok(())
    }

    fn adopt_vm_disks(&mut self, vm: &str, disks: &[String]) -> Result<Vec<u64>, PluginError> {
        check_id(vm)?;
        for d in disks {
            check_id(d)?;
        }
        let (_, folder_path) = self.vm_folder()?;
        let m = self
            .vs
            .find_path(&format!("{folder_path}/{vm}"))?
            .ok_or_else(|| PluginError::NotFound(format!("VM {vm} (in folder {folder_path})")))?;
        let power = self.vs.power_state(&m)?;
        if power != "poweredOff" {
            return Err(invalid(format!(
                "VM {vm} is {power}: power it off first (failback writes its disks, then starts it)"
            )));
        }
        let found: Vec<_> =
            self.vs.devices(&m)?.into_iter().filter(|d| d.kind == "VirtualDisk").collect();
        if found.len() != disks.len() {
            return Err(invalid(format!(
                "VM {vm} has {} disks, the machine {}: fail back into a VM with as many disks",
                found.len(),
                disks.len()
            )));
        }
        let prefix = format!("[{}] ", self.cfg.datastore_name());
        let dc = self.dc()?;
        let mut sizes = Vec::new();
        for (id, d) in disks.iter().zip(&found) {
            let file = d.file_name.clone().unwrap_or_default();
            let path = file.strip_prefix(&prefix).map(str::to_owned).ok_or_else(|| {
                invalid(format!(
                    "disk {file} of VM {vm} is not on datastore {}, the one this target writes",
                    self.cfg.datastore_name()
                ))
            })?;
            let size = d.capacity_kb.ok_or_else(|| {
                PluginError::Internal(format!("disk {file} of VM {vm}: vSphere gave no capacity"))
            })? * 1024;
            // An id already naming another VMDK is not taken over.
            match self.disk(id) {
                Ok(v) if v.path != path => {
                    return Err(invalid(format!(
                        "disk id {id} names {} already, not {file}",
                        self.vs.ds_path(&v.path)
                    )));
                }
                Ok(_) | Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let uuid = self.vs.vmdk_uuid(&dc, &path)?;
            let meta = DiskMeta { size, uuid, path: Some(path) };
            let meta_path = self.disk_meta_path(id)?;
            match self.vs.put_file_atomic(&dc, &meta_path, &meta.to_json()) {
                Err(PluginError::NotFound(_)) => {
                    self.vs.make_dir(&dc, &self.dir("disks"))?;
                    self.vs.put_file_atomic(&dc, &meta_path, &meta.to_json())?;
                }
                r => r?,
            }
            self.disks.insert(id.clone(), meta);
            sizes.push(size);
        }
        Ok(sizes)
    }

    fn vm_state(&mut self, vm: &str) -> Result<PowerState, PluginError> {
        let m = Moref::new("VirtualMachine", vm);
        match self.vs.power_state(&m) {
            Ok(s) if s == "poweredOn" => Ok(PowerState::Running),
            Ok(s) if s == "poweredOff" || s == "suspended" => Ok(PowerState::Stopped),
            Ok(_) => Ok(PowerState::Unknown),
            Err(PluginError::NotFound(_)) => Err(PluginError::NotFound(format!("vm {vm}"))),
            Err(e) => Err(e),
        }
    }
}

lifeboat_sdk::export_target!(Vmware);

#[cfg(test)]
mod tests;
