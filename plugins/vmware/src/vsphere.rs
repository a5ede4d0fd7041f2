//! The vSphere calls the target makes, on top of [`crate::soap`]: inventory lookups,
//! properties, tasks, virtual disks, datastore files and folders, VMs and their devices.

use crate::soap::{self, Client, Fault, Moref, child, children, esc, find, text, xsi_type};
use lifeboat_sdk::PluginError;
use lifeboat_sdk::http;
use std::time::{Duration, Instant};

/// A device of a VM, as far as the target cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub key: i32,
    /// The `xsi:type` (`VirtualDisk`, `ParaVirtualSCSIController`, `VirtualVmxnet3`, …).
    pub kind: String,
    pub controller_key: Option<i32>,
    pub unit_number: Option<i32>,
    pub bus_number: Option<i32>,
    /// A disk's backing file (`[ds] dir/x.vmdk`).
    pub file_name: Option<String>,
    pub capacity_kb: Option<u64>,
    /// A NIC's MAC address and network name or port group key.
    pub mac: Option<String>,
    pub network: Option<String>,
}

/// SCSI controller types a disk can be attached to.
pub const SCSI_CONTROLLERS: &[&str] = &[
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
];

/// Reads the devices in a `config.hardware.device` value.
pub fn parse_devices(val: roxmltree::Node) -> Vec<Device> {
    let num = |n: roxmltree::Node, name: &str| text(n, name).and_then(|t| t.parse::<i32>().ok());
    let big = |n: roxmltree::Node, name: &str| text(n, name).and_then(|t| t.parse::<u64>().ok());
    children(val, "VirtualDevice")
        .map(|d| {
            let backing = child(d, "backing");
            Device {
                key: num(d, "key").unwrap_or(0),
                kind: xsi_type(d).unwrap_or("").rsplit(':').next().unwrap_or("").to_owned(),
                controller_key: num(d, "controllerKey"),
                unit_number: num(d, "unitNumber"),
                bus_number: num(d, "busNumber"),
                file_name: backing.and_then(|b| text(b, "fileName")),
                capacity_kb: big(d, "capacityInKB"),
                mac: text(d, "macAddress"),
                network: backing.and_then(|b| {
                    text(b, "deviceName")
                        .or_else(|| child(b, "port").and_then(|p| text(p, "portgroupKey")))
                }),
            }
        })
        .collect()
}

/// What a datastore search found: file and folder names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<String>,
    pub folders: Vec<String>,
}

/// A vSphere session with the objects the target works on.
pub struct Vsphere {
    pub client: Client,
    /// How long one call waits for a task before answering `retryable`.
    pub task_wait: Duration,
    pub datacenter_path: String,
    pub datastore_name: String,
}

impl Vsphere {
    /// `FindByInventoryPath`: the object at `path` (`DC0/datastore/ds1`), if any.
    pub fn find_path(&mut self, path: &str) -> Result<Option<Moref>, PluginError> {
        let si = self.client.content()?.search_index;
        let body = self.client.call(
            &format!("looking up {path}"),
            &format!(
                "<FindByInventoryPath>{}<inventoryPath>{}</inventoryPath></FindByInventoryPath>",
                si.xml("_this"),
                esc(path)
            ),
        )?;
        let doc = soap::parse(&body)?;
        Ok(find(doc.root(), "returnval").and_then(Moref::of))
    }

    /// Like [`Vsphere::find_path`], but a missing object is `not-found` naming `setting`.
    pub fn need_path(&mut self, path: &str, setting: &str) -> Result<Moref, PluginError> {
        self.find_path(path)?.ok_or_else(|| {
            PluginError::NotFound(format!("vSphere has no {path:?}: check the `{setting}` setting"))
        })
    }

    /// `RetrievePropertiesEx` of `paths` on `obj`: the response body (parse it and use
    /// [`prop`]).
    pub fn props(&mut self, obj: &Moref, paths: &[&str]) -> Result<String, PluginError> {
        let pc = self.client.content()?.property_collector;
        let path_set: String =
            paths.iter().map(|p| format!("<pathSet>{}</pathSet>", esc(p))).collect();
        self.client.call(
            &format!("reading {} of {} {}", paths.join(", "), obj.kind, obj.value),
            &format!(
                "<RetrievePropertiesEx>{}<specSet><propSet><type>{}</type>{path_set}</propSet>\
                 <objectSet>{}</objectSet></specSet><options/></RetrievePropertiesEx>",
                pc.xml("_this"),
                esc(&obj.kind),
                obj.xml("obj")
            ),
        )
    }

    /// Runs a task-returning call and waits for the task: the task's `info` response body
    /// on success, the task's error as the plugin's error otherwise.
    pub fn task(&mut self, what: &str, body: &str) -> Result<String, PluginError> {
        match self.task_fault(what, body)? {
            Ok(info) => Ok(info),
            Err(f) => Err(f.error(what)),
        }
    }

    /// Like [`Vsphere::task`], with the fault (of the call or of the task) as a value.
    pub fn task_fault(
        &mut self,
        what: &str,
        body: &str,
    ) -> Result<Result<String, Fault>, PluginError> {
        let resp = match self.client.call_fault(what, body)? {
            Ok(r) => r,
            Err(f) => return Ok(Err(f)),
        };
        let task = {
            let doc = soap::parse(&resp)?;
            find(doc.root(), "returnval")
                .and_then(Moref::of)
                .ok_or_else(|| PluginError::Internal(format!("{what}: vSphere answered no task")))?
        };
        let start = Instant::now();
        // Asked at once first: many tasks (file moves, small disks) are done by then.
        let mut pause = Duration::from_millis(10);
        loop {
            let info = self.props(&task, &["info"])?;
            let doc = soap::parse(&info)?;
            let state = find(doc.root(), "state").and_then(|n| n.text()).unwrap_or("").trim();
            match state {
                "success" => return Ok(Ok(info.clone())),
                "error" => {
                    let err =
                        find(doc.root(), "error").map(soap::parse_task_error).unwrap_or(Fault {
                            kind: "SystemError".into(),
                            message: "the task failed".into(),
                        });
                    return Ok(Err(err));
                }
                _ => {}
            }
            if start.elapsed() > self.task_wait {
                return Err(PluginError::Retryable(format!(
                    "{what}: vSphere task {} still {state} after {} s",
                    task.value,
                    self.task_wait.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `[ds] path`
    pub fn ds_path(&self, path: &str) -> String {
        format!("[{}] {path}", self.datastore_name)
    }

    /// The datastore HTTP path of a file (`/folder/<path>?dcPath=…&dsName=…`).
    fn file_url(&self, path: &str) -> String {
        let segs: Vec<String> = path.split('/').map(http::encode).collect();
        format!(
            "/folder/{}?dcPath={}&dsName={}",
            segs.join("/"),
            http::encode(&self.datacenter_path),
            http::encode(&self.datastore_name)
        )
    }

    /// Reads a datastore file; `None` if it does not exist.
    pub fn get_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        self.client.content()?;
        let mut r = self.client.http("GET", self.file_url(path), Vec::new(), &[])?;
        if r.status == 401 {
            self.client.login()?;
            r = self.client.http("GET", self.file_url(path), Vec::new(), &[])?;
        }
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(file_status(s, &format!("reading {}", self.ds_path(path)))),
        }
    }

    /// Writes a datastore file (created or replaced) with one HTTP PUT.
    pub fn put_file(&mut self, path: &str, data: &[u8]) -> Result<(), PluginError> {
        self.client.content()?;
        let headers = [("content-type", "application/octet-stream")];
        let mut r = self.client.http("PUT", self.file_url(path), data.to_vec(), &headers)?;
        if r.status == 401 {
            self.client.login()?;
            r = self.client.http("PUT", self.file_url(path), data.to_vec(), &headers)?;
        }
        match r.status {
            200 | 201 | 204 => Ok(()),
            s => Err(file_status(s, &format!("writing {}", self.ds_path(path)))),
        }
    }

    /// Writes a file through a temporary name and a move, so a reader finds the old file or
    /// the new one, never a part.
    pub fn put_file_atomic(
        &mut self,
        dc: &Moref,
        path: &str,
        data: &[u8],
    ) -> Result<(), PluginError> {
        let tmp = format!("{path}.tmp");
        let len = data.len() as u64;
        self.put_file(&tmp, data)?;
        // The length it kept: a datastore that fills up during the upload may still answer
        // 200 with a part of it (vcsim does), which must never take the record's place.
        let head = self.client.http("HEAD", self.file_url(&tmp), Vec::new(), &[])?;
        let kept = head.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if head.status != 200 || kept != Some(len) {
            let _ = self.delete_file(dc, &tmp);
            return Err(PluginError::Retryable(format!(
                "writing {}: the datastore kept {} of {len} bytes (is it full?)",
                self.ds_path(path),
                kept.map_or_else(
                    || format!("an unknown length (HTTP {})", head.status),
                    |k| k.to_string()
                )
            )));
        }
        let fm = self.client.content()?.file_manager;
        self.task(
            &format!("moving {} into place", self.ds_path(&tmp)),
            &format!(
                "<MoveDatastoreFile_Task>{}<sourceName>{}</sourceName>{}<destinationName>{}</destinationName>{}<force>true</force></MoveDatastoreFile_Task>",
                fm.xml("_this"),
                esc(&self.ds_path(&tmp)),
                dc.xml("sourceDatacenter"),
                esc(&self.ds_path(path)),
                dc.xml("destinationDatacenter"),
            ),
        )?;
        Ok(())
    }

    /// Deletes a datastore file or folder (with what it holds); `not-found` if missing.
    pub fn delete_file(&mut self, dc: &Moref, path: &str) -> Result<(), PluginError> {
        let fm = self.client.content()?.file_manager;
        self.task(
            &format!("deleting {}", self.ds_path(path)),
            &format!(
                "<DeleteDatastoreFile_Task>{}<name>{}</name>{}</DeleteDatastoreFile_Task>",
                fm.xml("_this"),
                esc(&self.ds_path(path)),
                dc.xml("datacenter")
            ),
        )?;
        Ok(())
    }

    /// Creates a datastore folder and its parents; an existing one is fine.
    pub fn make_dir(&mut self, dc: &Moref, path: &str) -> Result<(), PluginError> {
        let fm = self.client.content()?.file_manager;
        let what = format!("creating folder {}", self.ds_path(path));
        let r = self.client.call_fault(
            &what,
            &format!(
                "<MakeDirectory>{}<name>{}</name>{}<createParentDirectories>true</createParentDirectories></MakeDirectory>",
                fm.xml("_this"),
                esc(&self.ds_path(path)),
                dc.xml("datacenter")
            ),
        )?;
        match r {
            Ok(_) => Ok(()),
            Err(f) if f.kind == "FileAlreadyExists" => Ok(()),
            Err(f) => Err(f.error(&what)),
        }
    }

    /// Files and folders in datastore folder `path` whose names match `pattern` (`*`,
    /// `*.json`); an absent folder lists nothing.
    pub fn list_dir(
        &mut self,
        browser: &Moref,
        path: &str,
        pattern: &str,
    ) -> Result<Listing, PluginError> {
        let what = format!("listing {}", self.ds_path(path));
        let r = self.task_fault(
            &what,
            &format!(
                "<SearchDatastore_Task>{}<datastorePath>{}</datastorePath><searchSpec>\
                 <matchPattern>{}</matchPattern></searchSpec></SearchDatastore_Task>",
                browser.xml("_this"),
                esc(&self.ds_path(path)),
                esc(pattern)
            ),
        )?;
        let info = match r {
            Ok(info) => info,
            Err(f) if f.kind == "FileNotFound" => return Ok(Listing::default()),
            Err(f) => return Err(f.error(&what)),
        };
        let doc = soap::parse(&info)?;
        let mut out = Listing::default();
        if let Some(result) = find(doc.root(), "result") {
            for f in children(result, "file") {
                let Some(name) = text(f, "path") else { continue };
                if xsi_type(f).is_some_and(|t| t.ends_with("FolderFileInfo")) {
                    out.folders.push(name);
                } else {
                    out.files.push(name);
                }
            }
        }
        out.files.sort();
        out.folders.sort();
        Ok(out)
    }

    /// Creates a thin virtual disk of `capacity_kb` KiB at datastore path `path`.
    pub fn create_vmdk(
        &mut self,
        dc: &Moref,
        path: &str,
        capacity_kb: u64,
    ) -> Result<Result<(), Fault>, PluginError> {
        let vdm = self.client.content()?.virtual_disk_manager;
        let what = format!("creating disk {}", self.ds_path(path));
        Ok(self
            .task_fault(
                &what,
                &format!(
                    "<CreateVirtualDisk_Task>{}<name>{}</name>{}<spec xsi:type=\"FileBackedVirtualDiskSpec\">\
                     <diskType>thin</diskType><adapterType>lsiLogic</adapterType><capacityKb>{capacity_kb}</capacityKb>\
                     </spec></CreateVirtualDisk_Task>",
                    vdm.xml("_this"),
                    esc(&self.ds_path(path)),
                    dc.xml("datacenter"),
                ),
            )?
            .map(|_| ()))
    }

    /// Deletes a virtual disk (descriptor and extents).
    pub fn delete_vmdk(&mut self, dc: &Moref, path: &str) -> Result<(), PluginError> {
        let vdm = self.client.content()?.virtual_disk_manager;
        self.task(
            &format!("deleting disk {}", self.ds_path(path)),
            &format!(
                "<DeleteVirtualDisk_Task>{}<name>{}</name>{}</DeleteVirtualDisk_Task>",
                vdm.xml("_this"),
                esc(&self.ds_path(path)),
                dc.xml("datacenter")
            ),
        )?;
        Ok(())
    }

    /// The UUID of the virtual disk at `path`.
    pub fn vmdk_uuid(&mut self, dc: &Moref, path: &str) -> Result<String, PluginError> {
        let vdm = self.client.content()?.virtual_disk_manager;
        let body = self.client.call(
            &format!("reading the UUID of {}", self.ds_path(path)),
            &format!(
                "<QueryVirtualDiskUuid>{}<name>{}</name>{}</QueryVirtualDiskUuid>",
                vdm.xml("_this"),
                esc(&self.ds_path(path)),
                dc.xml("datacenter")
            ),
        )?;
        let doc = soap::parse(&body)?;
        find(doc.root(), "returnval")
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| PluginError::Internal("QueryVirtualDiskUuid answered nothing".into()))
    }

    /// The devices of VM `vm`.
    pub fn devices(&mut self, vm: &Moref) -> Result<Vec<Device>, PluginError> {
        let body = self.props(vm, &["config.hardware.device"])?;
        let doc = soap::parse(&body)?;
        Ok(find(doc.root(), "val").map(parse_devices).unwrap_or_default())
    }

    /// `ReconfigVM_Task` of `vm` with `device_changes` (`<deviceChange>` elements).
    pub fn reconfigure(
        &mut self,
        vm: &Moref,
        what: &str,
        device_changes: &str,
    ) -> Result<(), PluginError> {
        self.task(
            what,
            &format!(
                "<ReconfigVM_Task>{}<spec>{device_changes}</spec></ReconfigVM_Task>",
                vm.xml("_this")
            ),
        )?;
        Ok(())
    }

    /// The power state of `vm` (`poweredOn`, `poweredOff`, `suspended`).
    pub fn power_state(&mut self, vm: &Moref) -> Result<String, PluginError> {
        let body = self.props(vm, &["runtime.powerState"])?;
        let doc = soap::parse(&body)?;
        Ok(find(doc.root(), "val").and_then(|n| n.text()).unwrap_or("").trim().to_owned())
    }

    /// Powers `vm` on or off; already in that state is fine.
    pub fn power(&mut self, vm: &Moref, on: bool) -> Result<(), PluginError> {
        let (method, what) = if on {
            ("PowerOnVM_Task", "powering on")
        } else {
            ("PowerOffVM_Task", "powering off")
        };
        let what = format!("{what} VM {}", vm.value);
        match self.task_fault(&what, &format!("<{method}>{}</{method}>", vm.xml("_this")))? {
            Ok(_) => Ok(()),
            Err(f) if f.kind == "InvalidPowerState" => Ok(()),
            Err(f) => Err(f.error(&what)),
        }
    }
}

/// The plugin's error for an HTTP status of the datastore file service.
fn file_status(status: u16, what: &str) -> PluginError {
    match status {
        401 | 403 => PluginError::Denied(format!(
            "{what}: vSphere answered {status}: the user needs Datastore.FileManagement"
        )),
        404 => PluginError::NotFound(format!("{what}: no such file")),
        507 => PluginError::Retryable(format!("{what}: the datastore is full (507)")),
        429 | 500..=599 => PluginError::Retryable(format!("{what}: vSphere answered {status}")),
        s => PluginError::Invalid(format!("{what}: vSphere answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_read_from_a_device_list() {
        let xml = r#"<val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="ArrayOfVirtualDevice">
          <VirtualDevice X:type="ParaVirtualSCSIController"><key>202</key><busNumber>0</busNumber></VirtualDevice>
          <VirtualDevice X:type="VirtualDisk"><key>204</key><backing X:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] lifeboat/disks/a.vmdk</fileName></backing><controllerKey>202</controllerKey><unitNumber>1</unitNumber><capacityInKB>1024</capacityInKB></VirtualDevice>
          <VirtualDevice X:type="VirtualVmxnet3"><key>4000</key><backing X:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName></backing><macAddress>00:50:56:01:02:03</macAddress></VirtualDevice>
          <VirtualDevice X:type="VirtualVmxnet3"><key>4001</key><backing X:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>u</switchUuid><portgroupKey>dvportgroup-13</portgroupKey></port></backing></VirtualDevice>
        </val>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        let d = parse_devices(doc.root_element());
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].kind, "ParaVirtualSCSIController");
        assert_eq!(d[0].bus_number, Some(0));
        assert_eq!(d[1].file_name.as_deref(), Some("[ds] lifeboat/disks/a.vmdk"));
        assert_eq!(
            (d[1].controller_key, d[1].unit_number, d[1].capacity_kb),
            (Some(202), Some(1), Some(1024))
        );
        assert_eq!(d[2].network.as_deref(), Some("VM Network"));
        assert_eq!(d[2].mac.as_deref(), Some("00:50:56:01:02:03"));
        assert_eq!(d[3].network.as_deref(), Some("dvportgroup-13"));
        // Garbage gives no devices, not a panic.
        let doc =
            roxmltree::Document::parse("<val><VirtualDevice><key>x</key></VirtualDevice></val>")
                .unwrap();
        assert_eq!(parse_devices(doc.root_element())[0].key, 0);
    }

    #[test]
    fn file_statuses_map() {
        assert!(matches!(file_status(404, "w"), PluginError::NotFound(_)));
        assert!(matches!(file_status(403, "w"), PluginError::Denied(_)));
        assert!(matches!(file_status(503, "w"), PluginError::Retryable(_)));
        assert!(matches!(file_status(400, "w"), PluginError::Invalid(_)));
    }
}
