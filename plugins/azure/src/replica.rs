//! The Azure target's own operations behind the [`Target`] methods: the container on first
//! use, this instance's write lease on a replica disk, page writes, point metadata, blob
//! snapshots, server-side copies, and the ARM client.

use std::time::{Duration, Instant};

use lifeboat_sdk::PluginError;

use crate::blob::{BlobService, Props, code_of, error_of};
use crate::{Azure, Held, PointMeta, arm, disk_blob, invalid, point_blob};

impl Azure {
    pub(crate) fn ready(&mut self) -> Result<&BlobService, PluginError> {
        if !self.container_ready {
            self.blob.ensure_container()?;
            self.container_ready = true;
        }
        Ok(&self.blob)
    }

    pub(crate) fn disk_props(&mut self, disk: &str) -> Result<Props, PluginError> {
        let name = disk_blob(disk)?;
        self.ready()?
            .head(&name, &format!("reading disk {disk}"))?
            .ok_or_else(|| PluginError::NotFound(format!("disk {disk} does not exist")))
    }

    pub(crate) fn size_of(p: &Props) -> u64 {
        p.logical_size.unwrap_or(p.content_length)
    }

    /// Takes (or renews) this instance's lease on a disk before writing it; returns
    /// the disk's size.
    pub(crate) fn writer(&mut self, disk: &str) -> Result<u64, PluginError> {
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

    pub(crate) fn lease_header(&self, disk: &str) -> Vec<(&'static str, String)> {
        if self.held.contains_key(disk) {
            vec![("x-ms-lease-id", self.lease_id.clone())]
        } else {
            Vec::new()
        }
    }

    /// One Put Page (update or clear) under the lease; a lost lease is forgotten.
    pub(crate) fn put_page(
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

    pub(crate) fn read_point(&mut self, point: &str) -> Result<Option<PointMeta>, PluginError> {
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
    pub(crate) fn delete_orphan_snapshots(
        &mut self,
        disk: &str,
        point: &str,
    ) -> Result<(), PluginError> {
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

    pub(crate) fn delete_snapshot(
        &mut self,
        name: &str,
        snapshot: &str,
    ) -> Result<(), PluginError> {
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
    pub(crate) fn wait_copy(&mut self, name: &str, disk: &str) -> Result<(), PluginError> {
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

    pub(crate) fn arm(&mut self) -> Result<&mut arm::Arm, PluginError> {
        self.arm.as_mut().ok_or_else(|| {
            invalid(
                "VMs need Azure Resource Manager settings: `subscription`, `resource_group`, \
                 `location` and `arm_token` (or `tenant_id`, `client_id`, `client_secret`)"
                    .into(),
            )
        })
    }
}
