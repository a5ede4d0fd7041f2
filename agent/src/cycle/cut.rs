//! Cutting a point under a freeze: pre-copy passes, the applications quiesced when an
//! app-consistent point is due, then every disk's remaining changes captured while the
//! machine's filesystems are frozen (and, in a consistency group, the steps where the cut
//! waits for the other members).

use std::time::{Duration, Instant};

use super::collect::Batcher;
use super::{CutPolicy, CycleError, Cycler, GroupCut};
use crate::disk::Disk;
use crate::tracker::Capture;

/// What [`Cycler::cut`] did.
pub(super) enum Cut {
    /// Every disk's remaining changes are captured; the filesystems were held this long;
    /// `app`: the quiescers held the applications frozen around it; `point`: the number a
    /// consistency group agreed on.
    Frozen { held: Duration, app: bool, point: Option<u64> },
    /// Some tracker cannot capture: the cycle goes on unfrozen.
    Unsupported,
    /// Abandoned (and thawed); no point this cycle.
    Deferred(String),
}

impl Cycler {
    /// A pre-copy pass: every disk collected and committed, no point. Returns the bytes of
    /// data it collected.
    fn precopy(&mut self) -> Result<u64, CycleError> {
        let mut bytes = 0;
        for i in 0..self.disks.len() {
            let (report, pending) = self.collect_one(i)?;
            bytes += report.stats.data_bytes;
            let (machine, disk) = (self.machine, self.disks[i].index);
            if !pending.is_empty() {
                self.journal
                    .append(disk, |seq| Batcher::encode(machine, disk, seq, None, &pending))?;
            }
            self.journal.persist(disk)?;
            let err = self.tracker_err(i);
            self.disks[i].tracker.commit().map_err(err)?;
        }
        Ok(bytes)
    }

    /// Pre-copies until little is left, quiesces the applications when an app-consistent
    /// point is due, then freezes the machine's filesystems and captures the rest of every
    /// disk under the freeze; see the module documentation. A quiescer failure is written to
    /// `quiesce_failed` (the point is then crash-consistent).
    pub(super) fn cut(
        &mut self,
        policy: CutPolicy,
        quiesce_failed: &mut Option<String>,
        mut group: Option<&mut (dyn GroupCut + 'static)>,
    ) -> Result<Cut, CycleError> {
        if !self.disks.iter().all(|d| d.tracker.name() == "ebpf") {
            if self.quiescers.as_ref().is_some_and(|q| q.due()) {
                tracing::warn!(
                    alert = "quiesce-unsupported",
                    "an app-consistent point is due but not every disk uses the eBPF tracker, which app-consistent points need (the capture must happen while the applications are frozen): cutting a crash-consistent point"
                );
            }
            return Ok(Cut::Unsupported);
        }
        for pass in 0..policy.max_precopy_passes {
            let bytes = self.precopy()?;
            tracing::debug!(pass, bytes, "pre-copy pass");
            if bytes <= policy.precopy_target_bytes {
                break;
            }
        }
        // Applications are quiesced before a group's prepare is answered, so that the
        // freeze phase that follows is only the filesystem freeze and capture, of about
        // the same length on every member, and the members' holds stay short.
        let quiesced = match self.quiescers.as_mut() {
            Some(q) => q.freeze(),
            None => crate::quiesce::Quiesced::NotDue,
        };
        let app = quiesced == crate::quiesce::Quiesced::App;
        if let crate::quiesce::Quiesced::Failed(e) = &quiesced {
            *quiesce_failed = Some(e.clone());
            self.progress.raise(lifeboat_api::AgentAlert {
                kind: "quiesce-failed".into(),
                message: e.chars().take(1000).collect(),
            });
        }
        let point = match group.as_deref_mut() {
            Some(g) => match g.ready(self.journal.next_point()) {
                Ok(p) => Some(p),
                Err(e) => {
                    if let Some(q) = self.quiescers.as_mut() {
                        q.thaw_after(false);
                    }
                    return Ok(Cut::Deferred(format!("consistency group: {e}")));
                }
            },
            None => None,
        };
        let result = if app {
            // What the applications flushed while quiescing (a database checkpoint) is
            // copied now, not under the filesystem freeze.
            self.precopy().map(|bytes| tracing::debug!(bytes, "pre-copy pass after quiescing"))
        } else {
            Ok(())
        };
        let result = result.and_then(|()| self.cut_frozen(policy, app, point, group));
        if let Some(q) = self.quiescers.as_mut() {
            q.thaw_after(app && matches!(result, Ok(Cut::Frozen { .. })));
        }
        result
    }

    /// The filesystem-freeze part of [`Cycler::cut`].
    fn cut_frozen(
        &mut self,
        policy: CutPolicy,
        app: bool,
        point: Option<u64>,
        mut group: Option<&mut (dyn GroupCut + 'static)>,
    ) -> Result<Cut, CycleError> {
        let mut disks = Vec::with_capacity(self.disks.len());
        for slot in &self.disks {
            let disk = Disk::open(&slot.path)?;
            self.announce_size(slot.index, disk.size());
            disks.push(disk);
        }
        let mut prepared = 0;
        for (i, disk) in disks.iter().enumerate() {
            let err = self.tracker_err(i);
            let ready = match self.disks[i].tracker.prepare_cut(disk) {
                Ok(r) => r,
                Err(e) => {
                    self.abort_cut(prepared)?;
                    return Err(err(e));
                }
            };
            if !ready {
                self.abort_cut(prepared)?;
                return Ok(Cut::Deferred(format!(
                    "disk {} must first be compared whole (tracking was interrupted)",
                    self.disks[i].index
                )));
            }
            prepared += 1;
        }
        let mounts = if policy.freeze {
            crate::freeze::mounts_of(&disks.iter().collect::<Vec<_>>())
        } else {
            Vec::new()
        };
        if let Some(g) = group.as_deref_mut()
            && let Err(e) = g.before_freeze()
        {
            self.abort_cut(prepared)?;
            return Ok(Cut::Deferred(format!("consistency group: {e}")));
        }
        // Nothing below writes to any filesystem until the thaw: the agent's own state may be
        // on one of the frozen filesystems.
        let frozen = match crate::freeze::freeze(&mounts, policy.max_freeze * 2) {
            Ok(f) => f,
            Err(e) => {
                self.abort_cut(prepared)?;
                return Ok(Cut::Deferred(e));
            }
        };
        let started = Instant::now();
        let mut refused = None;
        if group.is_some() && frozen.is_empty() {
            // Nothing holds this member's writes (no filesystem it could freeze, or
            // `freeze = false`): its capture is not an instant shared with the others.
            refused = Some(
                "consistency group: no filesystem of this member could be frozen, and a group point needs every member's writes held".to_owned(),
            );
        }
        let mut used = 0u64;
        for (i, disk) in disks.iter().enumerate() {
            if refused.is_some() {
                break;
            }
            if started.elapsed() > policy.max_freeze || frozen.fired() {
                refused = Some(format!(
                    "capturing under the freeze took longer than {:?}",
                    policy.max_freeze
                ));
                break;
            }
            let left = policy.capture_max_bytes.saturating_sub(used);
            match self.disks[i].tracker.capture(disk, left) {
                Ok(Capture::Captured { bytes }) => used += bytes,
                Ok(Capture::Refused(r)) => {
                    refused = Some(format!("disk {}: {r}", self.disks[i].index));
                    break;
                }
                Err(e) => {
                    refused = Some(format!("disk {}: {e}", self.disks[i].index));
                    break;
                }
            }
            if started.elapsed() > policy.max_freeze {
                refused = Some(format!(
                    "capturing under the freeze took longer than {:?}",
                    policy.max_freeze
                ));
                break;
            }
        }
        if refused.is_none()
            && let Some(g) = group
        {
            // Held until the group decides, never past the watchdog.
            let limit = (policy.max_freeze * 2)
                .saturating_sub(started.elapsed())
                .saturating_sub(Duration::from_millis(50));
            if let Err(e) = g.frozen(limit) {
                refused = Some(format!("consistency group: {e}"));
            }
        }
        let (held, fired) = if frozen.is_empty() {
            (started.elapsed(), frozen.fired())
        } else {
            frozen.thaw_checked()
        };
        if fired && refused.is_none() {
            refused = Some("the freeze watchdog thawed the filesystems during the capture".into());
        }
        if let Some(reason) = refused {
            self.abort_cut(prepared)?;
            return Ok(Cut::Deferred(format!("{reason} (held {} ms)", held.as_millis())));
        }
        tracing::debug!(
            filesystems = mounts.len(),
            held_ms = crate::millis(held),
            "captured every disk under a freeze"
        );
        Ok(Cut::Frozen { held, app, point })
    }

    fn abort_cut(&mut self, prepared: usize) -> Result<(), CycleError> {
        for i in 0..prepared {
            let err = self.tracker_err(i);
            self.disks[i].tracker.abort_cut().map_err(err)?;
        }
        Ok(())
    }
}
