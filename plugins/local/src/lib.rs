//! The local target: Lifeboat's embedded default. Everything lives as files under one
//! directory granted to the plugin (setting `root`, default `/target`):
//!
//! ```text
//! <root>/disks/<disk>.img            replica disks: sparse raw images
//! <root>/points/<point>/<disk>.img   a recovery point's copy of each disk
//! <root>/points/<point>/point.meta   written last: the point exists once this does
//! <root>/logs/<name>                 replication log objects
//! <root>/vms/<vm>.json               VM specs (qemu can boot the listed disk images;
//!                                    `lifeboat-appliance qemu-command` prints how)
//! ```
//!
//! Points and materialised disks are made with the host's `clone-file`: a reflink on XFS
//! and btrfs (no data copied, O(extents)), a sparse copy elsewhere (correct, O(data);
//! documented in docs/targets/local.md). Logs and metadata are written to a temporary
//! name, synced and renamed, so a crash leaves either the old or the new object.

use lifeboat_sdk::target::files::{self, write_atomic};
use lifeboat_sdk::target::host_fs::{self, CloneMethod};
use lifeboat_sdk::target::*;
use lifeboat_sdk::target::{check_id, now_ms};
use lifeboat_sdk::{PluginError, Settings, setting};
use std::fs;

/// The local target's state: its root, and the same directory as the host sees it.
pub struct Local {
    root: String,
    host_root: Option<String>,
}

fn invalid(m: String) -> PluginError {
    PluginError::Invalid(m)
}

/// A JSON string literal for `s`.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Local {
    fn disk_path(&self, disk: &str) -> Result<String, PluginError> {
        Ok(format!("{}/disks/{}.img", self.root, check_id(disk)?))
    }
    fn point_dir(&self, point: &str) -> Result<String, PluginError> {
        Ok(format!("{}/points/{}", self.root, check_id(point)?))
    }
    fn log_path(&self, name: &str) -> Result<String, PluginError> {
        Ok(format!("{}/logs/{}", self.root, check_id(name)?))
    }
    fn location(&self, guest: &str) -> String {
        match &self.host_root {
            Some(h) => guest.replacen(&self.root, h, 1),
            None => guest.to_owned(),
        }
    }
    fn read_meta(&self, point: &str) -> Result<PointInfo, PluginError> {
        let text = fs::read_to_string(format!("{}/point.meta", self.point_dir(point)?))?;
        let mut info = PointInfo {
            id: point.to_owned(),
            tag: String::new(),
            created_unix_ms: 0,
            disks: Vec::new(),
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("tag", v)) => info.tag = v.to_owned(),
                Some(("created_unix_ms", v)) => info.created_unix_ms = v.parse().unwrap_or(0),
                Some(("disk", v)) => info.disks.push(v.to_owned()),
                _ => {}
            }
        }
        Ok(info)
    }
}

impl Target for Local {
    fn init(settings: Settings) -> Result<(Self, TargetCapabilities), PluginError> {
        let root = setting(&settings, "root").unwrap_or("/target").trim_end_matches('/').to_owned();
        for sub in ["disks", "points", "logs", "vms"] {
            fs::create_dir_all(format!("{root}/{sub}")).map_err(|e| {
                PluginError::Denied(format!(
                    "cannot use {root}/{sub} (is the directory granted?): {e}"
                ))
            })?;
        }
        // Points and materialised disks are instant where the directory's filesystem
        // shares extents (XFS with reflink, btrfs): found out with a probe clone.
        let (a, b) = (format!("{root}/.probe-a"), format!("{root}/.probe-b"));
        let instant = write_atomic(&a, &[0x5a; 4096]).is_ok()
            && host_fs::clone_file(&a, &b).is_ok_and(|m| m == CloneMethod::Reflink);
        let _ = fs::remove_file(&a);
        let _ = fs::remove_file(&b);
        let me = Local { host_root: setting(&settings, "host_root").map(str::to_owned), root };
        let caps = TargetCapabilities {
            alignment: 1,
            max_write_bytes: 64 << 20,
            instant_points: instant,
            instant_materialize: instant,
            requires_encryption: false,
        };
        Ok((me, caps))
    }

    fn health(&mut self) -> Result<String, PluginError> {
        let probe = format!("{}/.health", self.root);
        write_atomic(&probe, b"ok")?;
        fs::remove_file(&probe)?;
        Ok(format!("{} is writable", self.root))
    }

    fn create_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        files::create_sparse(&self.disk_path(disk)?, size)
    }

    fn resize_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError> {
        let f = fs::OpenOptions::new().write(true).open(self.disk_path(disk)?)?;
        f.set_len(size)?;
        Ok(f.sync_all()?)
    }

    fn delete_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        Ok(fs::remove_file(self.disk_path(disk)?)?)
    }

    fn list_disks(&mut self) -> Result<Vec<DiskInfo>, PluginError> {
        let mut out = Vec::new();
        for e in fs::read_dir(format!("{}/disks", self.root))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".img") {
                out.push(DiskInfo { id: id.to_owned(), size: e.metadata()?.len() });
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
        files::write_extents(&self.disk_path(disk)?, &extents, &zeros)
    }

    fn read_extent(
        &mut self,
        disk: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, PluginError> {
        files::read_at(&self.disk_path(disk)?, offset, length)
    }

    fn flush_disk(&mut self, disk: &str) -> Result<(), PluginError> {
        files::sync(&self.disk_path(disk)?)
    }

    fn create_point(
        &mut self,
        point: &str,
        tag: &str,
        disks: Vec<String>,
    ) -> Result<PointInfo, PluginError> {
        if let Ok(existing) = self.read_meta(point) {
            if existing.disks == disks {
                return Ok(existing);
            }
            return Err(invalid(format!("point {point} exists with other disks")));
        }
        let dir = self.point_dir(point)?;
        fs::create_dir_all(&dir)?;
        files::sync_dir(&format!("{}/points", self.root))?;
        for d in &disks {
            self.flush_disk(d)?;
            host_fs::clone_file(&self.disk_path(d)?, &format!("{dir}/{}.img", check_id(d)?))?;
        }
        let info = PointInfo {
            id: point.to_owned(),
            tag: tag.to_owned(),
            created_unix_ms: now_ms(),
            disks,
        };
        let mut meta = format!("tag={}\ncreated_unix_ms={}\n", info.tag, info.created_unix_ms);
        for d in &info.disks {
            meta.push_str(&format!("disk={d}\n"));
        }
        write_atomic(&format!("{dir}/point.meta"), meta.as_bytes())?;
        Ok(info)
    }

    fn list_points(&mut self, prefix: &str) -> Result<Vec<PointInfo>, PluginError> {
        let mut out = Vec::new();
        for e in fs::read_dir(format!("{}/points", self.root))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                // A point without its meta file was interrupted while being made.
                if let Ok(p) = self.read_meta(&name) {
                    out.push(p);
                }
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    fn delete_point(&mut self, point: &str) -> Result<(), PluginError> {
        let dir = self.point_dir(point)?;
        // Meta first, so a half-deleted point is never listed.
        let _ = fs::remove_file(format!("{dir}/point.meta"));
        Ok(fs::remove_dir_all(dir)?)
    }

    fn materialize(
        &mut self,
        point: &str,
        disk: &str,
        new_disk: &str,
    ) -> Result<MaterializedDisk, PluginError> {
        let info =
            self.read_meta(point).map_err(|_| PluginError::NotFound(format!("point {point}")))?;
        if !info.disks.iter().any(|d| d == disk) {
            return Err(PluginError::NotFound(format!("disk {disk} is not in point {point}")));
        }
        let dst = self.disk_path(new_disk)?;
        let how = host_fs::clone_file(&format!("{}/{disk}.img", self.point_dir(point)?), &dst)?;
        Ok(MaterializedDisk {
            id: new_disk.to_owned(),
            location: self.location(&dst),
            instant: how == CloneMethod::Reflink,
        })
    }

    fn put_log(&mut self, name: &str, data: Vec<u8>) -> Result<(), PluginError> {
        write_atomic(&self.log_path(name)?, &data)
    }

    fn get_log(&mut self, name: &str) -> Result<Vec<u8>, PluginError> {
        Ok(fs::read(self.log_path(name)?)?)
    }

    fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let names = files::list(&format!("{}/logs", self.root), prefix)?;
        Ok(names.into_iter().map(|n| format!("{prefix}{n}")).collect())
    }

    fn delete_log(&mut self, name: &str) -> Result<(), PluginError> {
        Ok(fs::remove_file(self.log_path(name)?)?)
    }

    fn create_vm(&mut self, spec: VmSpec) -> Result<String, PluginError> {
        let name = check_id(&spec.name)?.to_owned();
        let mut disks = Vec::new();
        for d in &spec.disks {
            let path = self.disk_path(d)?;
            if fs::metadata(&path).is_err() {
                return Err(PluginError::NotFound(format!("disk {d}")));
            }
            disks.push(json_str(&self.location(&path)));
        }
        let fw = match spec.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let nics: Vec<String> = spec
            .nics
            .iter()
            .map(|n| {
                let opt = |v: &Option<String>| v.as_deref().map(json_str).unwrap_or("null".into());
                format!(
                    "{{\"network\":{},\"mac\":{},\"ip\":{}}}",
                    json_str(&n.network),
                    opt(&n.mac),
                    opt(&n.ip)
                )
            })
            .collect();
        let json = format!(
            "{{\"format\":1,\"name\":{},\"firmware\":\"{fw}\",\"cpus\":{},\"memory_mib\":{},\"isolated\":{},\"disks\":[{}],\"nics\":[{}]}}\n",
            json_str(&name),
            spec.cpus,
            spec.memory_mib,
            spec.isolated,
            disks.join(","),
            nics.join(",")
        );
        write_atomic(&format!("{}/vms/{name}.json", self.root), json.as_bytes())?;
        Ok(name)
    }

    fn delete_vm(&mut self, vm: &str) -> Result<(), PluginError> {
        Ok(fs::remove_file(format!("{}/vms/{}.json", self.root, check_id(vm)?))?)
    }

    fn vm_state(&mut self, vm: &str) -> Result<PowerState, PluginError> {
        match fs::metadata(format!("{}/vms/{}.json", self.root, check_id(vm)?)) {
            Ok(_) => Ok(PowerState::Stopped),
            Err(_) => Err(PluginError::NotFound(format!("vm {vm}"))),
        }
    }
}

lifeboat_sdk::export_target!(Local);

#[cfg(test)]
mod tests {
    use super::json_str;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("net-1"), "\"net-1\"");
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
