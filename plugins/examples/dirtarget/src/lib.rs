//! Example target: everything flat in one directory, one file per object, named
//! `disk.<id>`, `log.<name>`, `point.<point>.<disk>` and `meta.<point>` (the point's tag
//! and disks, one per line). Written from the `lifeboat-sdk` docs alone.
use lifeboat_sdk::target::{files, host_fs, *};
use lifeboat_sdk::{Result, Settings, setting};
use std::fs;

/// The target: the directory it keeps everything in.
pub struct Dir(String);

impl Dir {
    fn p(&self, kind: &str, id: &str) -> String {
        format!("{}/{kind}.{id}", self.0)
    }
}

impl Target for Dir {
    fn init(s: Settings) -> Result<(Self, TargetCapabilities)> {
        let root = setting(&s, "root").unwrap_or("/data").to_owned();
        fs::create_dir_all(&root)?;
        Ok((Dir(root), TargetCapabilities::default()))
    }
    fn create_disk(&mut self, disk: &str, size: u64) -> Result<()> {
        files::create_sparse(&self.p("disk", disk), size)
    }
    fn delete_disk(&mut self, disk: &str) -> Result<()> {
        Ok(fs::remove_file(self.p("disk", disk))?)
    }
    fn list_disks(&mut self) -> Result<Vec<DiskInfo>> {
        let ids = files::list(&self.0, "disk.")?;
        let size = |id: &str| -> Result<u64> { Ok(fs::metadata(self.p("disk", id))?.len()) };
        ids.into_iter().map(|id| Ok(DiskInfo { size: size(&id)?, id })).collect()
    }
    fn write_extents(&mut self, d: &str, e: Vec<Extent>, z: Vec<ZeroRange>) -> Result<()> {
        files::write_extents(&self.p("disk", d), &e, &z)
    }
    fn read_extent(&mut self, disk: &str, off: u64, len: u32) -> Result<Vec<u8>> {
        files::read_at(&self.p("disk", disk), off, len)
    }
    fn flush_disk(&mut self, disk: &str) -> Result<()> {
        files::sync(&self.p("disk", disk))
    }
    fn create_point(&mut self, pt: &str, tag: &str, disks: Vec<String>) -> Result<PointInfo> {
        for d in &disks {
            host_fs::clone_file(&self.p("disk", d), &self.p("point", &format!("{pt}.{d}")))?;
        }
        let meta = format!("{tag}\n{}", disks.join("\n"));
        files::write_atomic(&self.p("meta", pt), meta.as_bytes())?;
        Ok(PointInfo { id: pt.into(), tag: tag.into(), created_unix_ms: 0, disks })
    }
    fn list_points(&mut self, prefix: &str) -> Result<Vec<PointInfo>> {
        let read = |id: String| {
            let text = fs::read_to_string(self.p("meta", &id))?;
            let mut lines = text.lines().map(str::to_owned);
            let tag = lines.next().unwrap_or_default();
            Ok(PointInfo { id, tag, created_unix_ms: 0, disks: lines.collect() })
        };
        let ids = files::list(&self.0, &format!("meta.{prefix}"))?;
        ids.into_iter().map(|s| read(format!("{prefix}{s}"))).collect()
    }
    fn delete_point(&mut self, pt: &str) -> Result<()> {
        for d in files::list(&self.0, &format!("point.{pt}."))? {
            fs::remove_file(self.p("point", &format!("{pt}.{d}")))?;
        }
        Ok(fs::remove_file(self.p("meta", pt))?)
    }
    fn materialize(&mut self, pt: &str, disk: &str, new: &str) -> Result<MaterializedDisk> {
        let dst = self.p("disk", new);
        let how = host_fs::clone_file(&self.p("point", &format!("{pt}.{disk}")), &dst)?;
        let instant = how == host_fs::CloneMethod::Reflink;
        Ok(MaterializedDisk { id: new.into(), location: dst, instant })
    }
    fn put_log(&mut self, name: &str, data: Vec<u8>) -> Result<()> {
        files::write_atomic(&self.p("log", name), &data)
    }
    fn get_log(&mut self, name: &str) -> Result<Vec<u8>> {
        Ok(fs::read(self.p("log", name))?)
    }
    fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>> {
        let names = files::list(&self.0, &format!("log.{prefix}"))?;
        Ok(names.into_iter().map(|n| format!("{prefix}{n}")).collect())
    }
    fn delete_log(&mut self, name: &str) -> Result<()> {
        Ok(fs::remove_file(self.p("log", name))?)
    }
}

lifeboat_sdk::export_target!(Dir);
