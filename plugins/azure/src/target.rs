//! The [`Target`] interface of the Azure target: what the host calls.

use lifeboat_sdk::target::*;
use lifeboat_sdk::{PluginError, Settings};

use crate::blob::{self, Props, error_of};
use crate::{
    Azure, MAX_PUT_PAGE, MAX_PUT_PAGE_U32, PAGE, PAGE_U32, PointMeta, check_id, disk_blob, invalid,
    log_blob, now_ms, parse_settings, point_blob, round_up, uuid4, vhd,
};

impl Target for Azure {
    fn init(settings: Settings) -> Result<(Self, TargetCapabilities), PluginError> {
        let me = parse_settings(&settings)?;
        let caps = TargetCapabilities {
            alignment: PAGE_U32,
            max_write_bytes: MAX_PUT_PAGE_U32,
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
            for (i, chunk) in e.data.chunks(MAX_PUT_PAGE_U32 as usize).enumerate() {
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
pub(crate) fn same_url(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace("%3A", ":").replace("%3a", ":");
    norm(a) == norm(b)
}
