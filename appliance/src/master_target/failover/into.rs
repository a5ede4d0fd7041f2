//! Reprotect and failback into another target: a machine failed over to one target (the
//! local target's VM) goes back into a new VM at another (a VMware datastore) instead of
//! into its original machine.
//!
//! **Reprotect** (`POST …/reprotect` with `to`): the master target makes one disk per
//! machine disk at the destination (`fb-<machine>-d<d>`, thin, the machine disk's size) and
//! copies the failed-over disks into them: each 4 MiB range is read from both targets and
//! only the [`REVERSE_BLOCK`] blocks that differ are written (blocks that read as zeros as
//! zero ranges, so the destination stays thin). The first pass writes the data; a pass
//! again (after a failed one, or failback's final pass) writes only what changed since.
//! Both sides are read whole each pass, the same price as the agent's reverse pass.
//!
//! **Failback**: the failed-over VM is deleted (its disks kept), the final pass copies what
//! it wrote since the last pass, the VM is made at the destination from the machine's VM
//! spec (the `network` of the request over every interface, if given) on those disks and
//! powered on; then the replicas are made anew from the failed-over disks (clones at the
//! failover target), the failed-over disks deleted and the failover ended. The machine is
//! now the destination's VM; the agent installed in it carries a journal from a recovery
//! point, so the appliance's numbering of each disk moves [`RENUMBER`] ahead: the agent
//! reads that as its state being older than the appliance's and resyncs each disk in full
//! (its documented answer). A comparison of each disk with its new replica is asked for
//! too, so no point is cut before the agent has compared the disk and sent what differs:
//! the first point after failback is whole, as after logs lost at the target.

use super::*;
use lifeboat_api::{REVERSE_BLOCK, ReprotectDestination};
use lifeboat_plugin_host::target::{Extent, ZeroRange};
use lifeboat_wire::MachineId;

/// How far failback into another target moves each disk's numbering past what the
/// appliance received: beyond any reservation the agent's journal can hold, so the agent
/// in the new VM resyncs in full.
pub const RENUMBER: u64 = 1 << 32;

/// Bytes compared per read of both sides.
const RANGE: u64 = 4 << 20;

/// A disk to copy: from the failover target, to the destination.
struct Pair {
    /// The machine's disk index.
    disk: u32,
    /// The failed-over disk at the failover target.
    from: String,
    /// The disk at the destination.
    to: String,
    /// Bytes.
    size: u64,
}

/// Both ends of the copies: the machine's failover, its disks paired with the
/// destination's, and an instance of each target.
struct Ends {
    fo: crate::store::FailoverRow,
    pairs: Vec<Pair>,
    /// The target the machine failed over to.
    from: TargetInstance,
    /// The destination.
    to: TargetInstance,
}

/// What a copy pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PassStats {
    /// Bytes read from each side.
    compared: u64,
    /// Bytes written (data) at the destination.
    written: u64,
    /// Bytes made zero at the destination.
    zeroed: u64,
}

/// Reads `len` bytes, failing on a short read (a target that returned less is broken).
async fn read_exact(
    t: &mut TargetInstance,
    disk: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, MasterError> {
    let len32 = u32::try_from(len).map_err(|_| MasterError::msg("read too large"))?;
    let data = t.read_extent(disk, offset, len32).await?;
    if data.len() as u64 != len {
        return Err(MasterError::msg(format!(
            "the target read {} of {len} bytes of {disk} at {offset}",
            data.len()
        )));
    }
    Ok(data)
}

/// The extents and zero ranges that make `have` (the destination's bytes at `offset`) equal
/// `want`, block by block, adjacent blocks merged.
fn differences(offset: u64, want: &[u8], have: &[u8]) -> (Vec<Extent>, Vec<ZeroRange>) {
    let b = REVERSE_BLOCK as usize;
    let (mut extents, mut zeros): (Vec<Extent>, Vec<ZeroRange>) = (Vec::new(), Vec::new());
    for (i, (w, h)) in want.chunks(b).zip(have.chunks(b)).enumerate() {
        if w == h {
            continue;
        }
        let at = offset + (i * b) as u64;
        if w.iter().all(|x| *x == 0) {
            match zeros.last_mut() {
                Some(z) if z.offset + z.length == at => z.length += w.len() as u64,
                _ => zeros.push(ZeroRange { offset: at, length: w.len() as u64 }),
            }
        } else {
            match extents.last_mut() {
                Some(e) if e.offset + e.data.len() as u64 == at => e.data.extend_from_slice(w),
                _ => extents.push(Extent { offset: at, data: w.to_vec() }),
            }
        }
    }
    (extents, zeros)
}

impl Failover {
    /// A new instance of target plugin `name`.
    async fn instance_of(&self, name: &str) -> Result<TargetInstance, MasterError> {
        let plugin = self
            .registry
            .get(name)
            .ok_or_else(|| MasterError::msg(format!("target plugin {name:?} is not loaded")))?;
        Ok(TargetInstance::new(plugin).await?)
    }

    /// The machine's reprotect destination, if it is reprotected into another target.
    pub(super) fn destination(
        &self,
        machine: MachineId,
    ) -> Result<Option<ReprotectDestination>, MasterError> {
        match self.state.reverse(machine)?.and_then(|r| r.destination) {
            Some(text) => Ok(Some(serde_json::from_str(&text)?)),
            None => Ok(None),
        }
    }

    /// The failed-over disks of `fo` paired with the destination's, by disk index.
    fn pairs(
        &self,
        machine: MachineId,
        fo: &crate::store::FailoverRow,
        dest: &ReprotectDestination,
    ) -> Result<Vec<Pair>, MasterError> {
        let mut v = Vec::new();
        for (d, size) in self.state.disks(machine)? {
            let suffix = format!("-d{d}");
            let from = fo.disks.iter().find(|x| x.ends_with(&suffix)).ok_or_else(|| {
                MasterError::msg(format!("the failed-over disks have no disk {d}"))
            })?;
            let to = dest.disks.iter().find(|x| x.disk == d).ok_or_else(|| {
                MasterError::msg(format!("the destination has no disk {d} (reprotect again)"))
            })?;
            v.push(Pair { disk: d, from: from.clone(), to: to.id.clone(), size });
        }
        Ok(v)
    }

    /// Both ends of the copies for `machine` into `dest`; an existing VM's disks adopted
    /// (again) first.
    async fn ends(
        &self,
        machine: MachineId,
        dest: &ReprotectDestination,
    ) -> Result<Ends, MasterError> {
        let fo = self.failover_row(machine)?;
        let pairs = self.pairs(machine, &fo, dest)?;
        let from = self.instance().await?;
        let to = self.instance_of(&dest.target).await?;
        let mut e = Ends { fo, pairs, from, to };
        if dest.existing {
            self.adopt(machine, dest, &mut e).await?;
        }
        Ok(e)
    }

    /// An existing VM at the destination: its disks taken as the destination's disks, in
    /// the VM spec's disk order (boot disk first), each at least as large as the machine's;
    /// refused while the VM runs. Repeated before failback's final pass, so a VM started
    /// meanwhile is never written.
    async fn adopt(
        &self,
        machine: MachineId,
        dest: &ReprotectDestination,
        e: &mut Ends,
    ) -> Result<(), MasterError> {
        let (to, pairs) = (&mut e.to, &e.pairs);
        let order = vm_spec(&self.state, machine)?.disks;
        let mut ids = Vec::new();
        for d in &order {
            let p = pairs
                .iter()
                .find(|p| p.disk == *d)
                .ok_or_else(|| MasterError::msg(format!("the destination has no disk {d}")))?;
            ids.push(p.to.clone());
        }
        let sizes = to.adopt_vm_disks(&dest.vm_name, &ids).await.map_err(|e| {
            MasterError::msg(format!(
                "taking the disks of VM {} in {}: {e}",
                dest.vm_name, dest.target
            ))
        })?;
        for ((d, id), size) in order.iter().zip(&ids).zip(&sizes) {
            let want = pairs.iter().find(|p| p.disk == *d).map_or(0, |p| p.size);
            if *size < want {
                return Err(MasterError::msg(format!(
                    "disk {id} of VM {} has {size} bytes, fewer than the machine's disk {d} ({want}): grow it in {} first",
                    dest.vm_name, dest.target
                )));
            }
        }
        Ok(())
    }

    /// One pass: every destination disk made equal to its failed-over disk, writing only
    /// the blocks that differ; flushed. `what` names the pass in the job's progress.
    async fn copy_pass(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        e: &mut Ends,
        what: &str,
        create: bool,
    ) -> Result<PassStats, MasterError> {
        let Ends { from, to, pairs, .. } = e;
        let total: u64 = pairs.iter().map(|p| p.size).sum();
        // Writes of at most what the destination takes in one call, whole blocks.
        let max = to.capabilities().map_or(RANGE, |c| u64::from(c.max_write_bytes));
        let range = RANGE
            .min(max / u64::from(REVERSE_BLOCK) * u64::from(REVERSE_BLOCK))
            .max(u64::from(REVERSE_BLOCK));
        let mut s = PassStats::default();
        let mut shown = std::time::Instant::now();
        for (i, p) in pairs.iter().enumerate() {
            if create {
                to.create_disk(&p.to, p.size).await.map_err(|e| {
                    MasterError::msg(format!("making disk {} for disk {}: {e}", p.to, p.disk))
                })?;
            }
            let mut at = 0;
            while at < p.size {
                let len = range.min(p.size - at);
                let want = read_exact(from, &p.from, at, len).await?;
                let have = read_exact(to, &p.to, at, len).await?;
                let (extents, zeros) = differences(at, &want, &have);
                if !extents.is_empty() || !zeros.is_empty() {
                    to.write_extents(&p.to, &extents, &zeros).await?;
                }
                let written: u64 = extents.iter().map(|e| e.data.len() as u64).sum();
                let zeroed: u64 = zeros.iter().map(|z| z.length).sum();
                s.written += written;
                s.zeroed += zeroed;
                s.compared += len;
                self.state.reverse_progress(machine, i == 0 && at == 0, len, written)?;
                at += len;
                if shown.elapsed() > std::time::Duration::from_millis(500) {
                    shown = std::time::Instant::now();
                    self.state.job_progress(
                        job,
                        (s.compared as f64 / total.max(1) as f64).min(0.99),
                        &format!(
                            "{what}: {} of {} MiB compared, {} MiB written",
                            s.compared >> 20,
                            total >> 20,
                            s.written >> 20
                        ),
                    )?;
                }
            }
            to.flush_disk(&p.to).await?;
        }
        Ok(s)
    }

    /// Reprotect into `dest`: one complete copy pass.
    pub(super) async fn reprotect_into(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        dest: &ReprotectDestination,
    ) -> Result<serde_json::Value, MasterError> {
        let mut e = self.ends(machine, dest).await?;
        let what = format!("copying the failed-over disks into {}", dest.target);
        let s = self.copy_pass(job, machine, &mut e, &what, !dest.existing).await?;
        self.state.reverse_pass_done(machine, false, "[]")?;
        Ok(serde_json::json!({
            "machine": machine.to_string(), "target": dest.target, "vm_name": dest.vm_name,
            "disks": dest.disks.iter().map(|d| &d.id).collect::<Vec<_>>(),
            "passes": 1, "received_bytes": s.written, "zeroed_bytes": s.zeroed,
            "disk_bytes": s.compared,
        }))
    }

    /// Failback into `dest`: the failed-over VM stopped, the final pass, the VM made at
    /// the destination, the replicas made anew, the failover ended.
    pub(super) async fn failback_into(
        &self,
        job: lifeboat_api::JobId,
        machine: MachineId,
        dest: &ReprotectDestination,
    ) -> Result<serde_json::Value, MasterError> {
        let mut e = self.ends(machine, dest).await?;
        self.stop_failed_over(job, machine, &e.fo, &mut e.from).await?;
        let what = format!("the final pass into {}", dest.target);
        let s = self.copy_pass(job, machine, &mut e, &what, !dest.existing).await?;
        let Ends { fo, pairs, from: mut t, mut to } = e;
        self.state.reverse_pass_done(machine, true, "[]")?;

        // The VM at the destination, boot disk first: made, or (an existing VM) started.
        let doing = if dest.existing { "starting" } else { "making" };
        self.state.job_progress(
            job,
            0.99,
            &format!("{doing} VM {} in {}", dest.vm_name, dest.target),
        )?;
        let mut spec = vm_spec(&self.state, machine)?;
        if let Some(n) = &dest.network {
            for nic in &mut spec.nics {
                nic.network.clone_from(n);
            }
        }
        let disks: Vec<String> = spec
            .disks
            .iter()
            .map(|d| {
                pairs
                    .iter()
                    .find(|p| p.disk == *d)
                    .map(|p| p.to.clone())
                    .ok_or_else(|| MasterError::msg(format!("the destination has no disk {d}")))
            })
            .collect::<Result<_, _>>()?;
        let vm = to
            .create_vm(&plugin_spec(dest.vm_name.clone(), &spec, disks.clone(), false))
            .await
            .map_err(|e| {
                MasterError::msg(format!("{doing} VM {} in {}: {e}", dest.vm_name, dest.target))
            })?;

        // The replicas anew from the failed-over disks (what the VM started from), numbered
        // past anything the agent in the VM holds.
        self.state.job_progress(job, 0.99, "making the replicas from the failed-over disks")?;
        let point = format!("fb{job}-{machine}");
        t.create_point(&point, "failback", &fo.disks).await?;
        let r: Result<(), MasterError> = async {
            for p in &pairs {
                let replica = crate::logobj::disk_id(machine, p.disk);
                gone(t.delete_disk(&replica).await)?;
                t.materialize(&point, &p.from, &replica).await?;
                let next = self.state.received_next(machine, p.disk)?.saturating_add(RENUMBER);
                self.state.rebase_disk(machine, p.disk, next)?;
                // No point until the agent compared the disk with this replica and sent
                // what differs (as after logs lost at the target).
                self.state.request_compare(machine, p.disk)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = gone(t.delete_point(&point).await) {
            tracing::warn!(%job, %machine, %point, "failback's point was not deleted: {e:#}");
        }
        r?;
        self.state.end_failover(machine)?;
        for d in &fo.disks {
            if let Err(e) = gone(t.delete_disk(d).await) {
                tracing::warn!(%job, %machine, disk = %d, "a disk failback no longer needs was not deleted: {e:#}");
            }
        }
        Ok(serde_json::json!({
            "machine": machine.to_string(), "target": dest.target, "vm_name": dest.vm_name,
            "vm": vm, "disks": disks, "final_pass_received_bytes": s.written,
            "disk_bytes": s.compared,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_writes_only_differing_blocks_and_zeros_as_ranges() {
        let b = REVERSE_BLOCK as usize;
        let mut want = vec![0u8; 6 * b];
        let mut have = vec![0u8; 6 * b];
        want[b..3 * b].fill(7); // blocks 1-2 differ: one extent
        have[4 * b..5 * b].fill(9); // block 4: zero it
        want[5 * b + 10] = 1; // block 5: data, not adjacent to 1-2
        let (e, z) = differences(1 << 30, &want, &have);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].offset, e[0].data.len()), ((1 << 30) + b as u64, 2 * b));
        assert_eq!((e[1].offset, e[1].data.len()), ((1 << 30) + 5 * b as u64, b));
        assert_eq!(z.len(), 1);
        assert_eq!((z[0].offset, z[0].length), ((1 << 30) + 4 * b as u64, b as u64));
        let (e, z) = differences(0, &want, &want);
        assert!(e.is_empty() && z.is_empty());
        // A last, shorter block.
        let (e, _) = differences(0, &[1, 2, 3], &[1, 2, 4]);
        assert_eq!(e[0].data, vec![1, 2, 3]);
    }
}
