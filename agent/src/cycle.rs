//! One replication cycle: collect every disk's changes, cut them into batches, make them
//! durable in the journal, cut a crash-consistent recovery point across all disks, and only
//! then let each tracker advance its baseline.
//!
//! # Order of a cycle
//!
//! 1. Resync marks first: a disk the journal marked (the appliance lost what the agent had
//!    already dropped) is invalidated whole in its tracker, durably, before the mark is
//!    cleared.
//! 2. If the journal is over `journal_max_bytes` (the appliance is unreachable or slow), the
//!    cycle is skipped. The trackers' baselines do not move, so the next cycle that runs
//!    reports exactly what changed meanwhile: the hash-scan map *is* the dirty-block map, and
//!    only those blocks are resent, never the whole disk.
//! 3. Each disk in index order: `collect` hands changes to a batcher that cuts batches of at
//!    most `batch_max_bytes` of data (a data change larger than the room left goes to the next
//!    batch, split at 4 KiB boundaries when it is larger than a whole batch; zero ranges become
//!    zero extents that carry no payload) and appends each full batch to the journal. While the
//!    journal is full in the middle of a collect, the batcher waits for acknowledgements
//!    (backpressure) instead of failing, so even an initial copy far larger than the journal
//!    completes. The last, partly filled batch of every disk is held back.
//! 4. Once every disk was collected, a point number is reserved (durably, never reused) and
//!    each disk's held-back batch is appended carrying `ConsistencyTag { kind: Crash,
//!    point_id }` (an empty batch when the disk had no change). The point therefore covers
//!    every disk of the machine. Right after a disk's tagged batch and every batch before it
//!    still unacknowledged are durable in files ([`Journal::persist`]; batches stay in memory
//!    while the appliance keeps up), that disk's tracker commits.
//!
//! # What a failure leaves
//!
//! A collect that fails (disk error, journal error, shutdown) commits nothing: the batches it
//! already journaled stay (they may be shipped; the tracker's intent log makes sure the next
//! collect reports those ranges again whatever the disk holds then), no tag is written for the
//! cycle, and the next cycle starts over. A crash between two disks' tagged appends leaves a
//! point tagged on some disks only; the appliance never completes it, and the number is not
//! reused.

mod collect;
mod cut;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lifeboat_wire::{ConsistencyTag, MachineId, PointKind};

use self::collect::Batcher;
use self::cut::Cut;
use crate::disk::{Disk, DiskError};
use crate::journal::{Journal, JournalError};
use crate::progress::ProgressBoard;
use crate::tracker::{CycleStats, Tracker, TrackerError};

/// One protected disk and its tracker.
pub struct DiskSlot {
    /// The disk's index in the machine.
    pub index: u32,
    /// Its device or image path.
    pub path: PathBuf,
    /// Its change tracker.
    pub tracker: Box<dyn Tracker>,
    /// The tracker's baseline file, if it has one: its absence means an initial copy (for
    /// progress reporting only).
    pub baseline_path: Option<PathBuf>,
}

impl std::fmt::Debug for DiskSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSlot")
            .field("index", &self.index)
            .field("path", &self.path)
            .field("tracker", &self.tracker.name())
            .finish()
    }
}

/// Limits of a cycle.
#[derive(Debug, Clone, Copy)]
pub struct CycleLimits {
    /// Most bytes of data per batch (a multiple of 4096).
    pub batch_max_bytes: u64,
    /// Journal size above which no cycle starts, and at which a running collect waits.
    pub journal_max_bytes: u64,
}

/// Errors of a cycle. Nothing is lost by any of them: the next cycle reports the changes again.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// A disk could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The disk's size cannot be carried by the batch format.
    #[error(
        "disk {path} is {size} bytes, not a multiple of 512: batches carry whole 512-byte sectors; use a block device or an image file whose size is a multiple of 512"
    )]
    UnalignedSize {
        /// The disk.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The tracker failed (reading the disk, its state files, or the sink refused a change).
    #[error("disk {index} ({path}): {source}")]
    Tracker {
        /// Disk index.
        index: u32,
        /// Disk path.
        path: PathBuf,
        /// The tracker's error.
        source: TrackerError,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The agent is stopping; the cycle was interrupted.
    #[error("the cycle was interrupted because the agent is stopping; nothing is lost")]
    Stopped,
}

/// What a disk's part of a cycle did.
#[derive(Debug, Clone)]
pub struct DiskReport {
    /// Disk index.
    pub index: u32,
    /// The tracker's statistics.
    pub stats: CycleStats,
    /// Batches journaled, the tagged one included.
    pub batches: u64,
}

/// How points are cut when every disk's tracker can capture under a freeze (the eBPF
/// tracker); see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    /// Freeze the filesystems mounted from the disks for the capture.
    pub freeze: bool,
    /// Longest capture under the freeze; a longer one is abandoned (thawed, no point).
    pub max_freeze: Duration,
    /// Most bytes read under the freeze, over all disks.
    pub capture_max_bytes: u64,
    /// Pre-copy passes stop once one collects at most this many bytes.
    pub precopy_target_bytes: u64,
    /// Most pre-copy passes before the freeze.
    pub max_precopy_passes: u32,
}

impl Default for CutPolicy {
    fn default() -> Self {
        CutPolicy {
            freeze: true,
            max_freeze: Duration::from_millis(500),
            capture_max_bytes: 256 << 20,
            precopy_target_bytes: 4 << 20,
            max_precopy_passes: 4,
        }
    }
}

/// A consistency-group round this cut belongs to (see [`crate::group`]): the steps at
/// which the cut waits for, or tells, the other members.
pub trait GroupCut {
    /// After the pre-copy passes: this machine is ready and its next point number would be
    /// `next_point`. Returns the group's point number (at least `next_point`), or why the
    /// round is off.
    fn ready(&mut self, next_point: u64) -> Result<u64, String>;
    /// Right before this machine's filesystems freeze (its applications are quiesced, its
    /// trackers prepared). An error abandons the cut.
    fn before_freeze(&mut self) -> Result<(), String>;
    /// Under the freeze, every disk captured: returns within `limit` whether to record the
    /// point (`Ok`) or abandon it.
    fn frozen(&mut self, limit: Duration) -> Result<(), String>;
    /// The round ended for this machine: the point recorded (durable in the journal), or
    /// why not.
    fn done(&mut self, result: Result<u64, String>);
}

/// What a cycle did.
#[derive(Debug, Clone)]
pub enum CycleOutcome {
    /// Every disk was collected and tagged with `point`.
    Done {
        /// The recovery point number.
        point: u64,
        /// Per disk.
        disks: Vec<DiskReport>,
        /// Wall-clock time.
        duration: Duration,
        /// How long the filesystems were held frozen, when the point was cut under a freeze.
        freeze: Option<Duration>,
        /// Crash- or app-consistent.
        kind: PointKind,
        /// An app-consistent point was due and a quiescer failed (an alert was raised):
        /// this point is crash-consistent instead.
        quiesce_failed: Option<String>,
    },
    /// No point: the cut was abandoned (a capture too large or too slow for the freeze, a
    /// disk written around the freeze, a filesystem that refused to freeze).
    Deferred {
        /// Why.
        reason: String,
    },
    /// The journal was over its limit; nothing was collected.
    Skipped {
        /// Bytes in the journal.
        journal_bytes: u64,
    },
}

/// Runs cycles over a machine's disks; see the module documentation.
pub struct Cycler {
    machine: MachineId,
    disks: Vec<DiskSlot>,
    journal: Arc<Journal>,
    limits: CycleLimits,
    stop: Arc<AtomicBool>,
    progress: Arc<ProgressBoard>,
    cuts: Option<CutPolicy>,
    quiescers: Option<crate::quiesce::Quiescers>,
    /// Disks whose next cycle is a full resync (reported as such until one completes).
    resyncing: std::collections::BTreeSet<u32>,
    /// The disks' sizes as the sender announces them: a disk found at another size is
    /// published here before any batch for it is journaled, so the sender announces the
    /// new size (a new hello) before it sends data past the old end.
    sizes: Option<Arc<tokio::sync::watch::Sender<Vec<lifeboat_api::DiskDescriptor>>>>,
    /// Comparisons of disks with their replicas the appliance asked for.
    comparisons: Option<crate::compare::Comparisons>,
}

impl std::fmt::Debug for Cycler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cycler")
            .field("machine", &self.machine)
            .field("disks", &self.disks)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Cycler {
    /// A cycler over `disks` (in index order), journaling into `journal`.
    pub fn new(
        machine: MachineId,
        disks: Vec<DiskSlot>,
        journal: Arc<Journal>,
        limits: CycleLimits,
        stop: Arc<AtomicBool>,
        progress: Arc<ProgressBoard>,
    ) -> Self {
        Self {
            machine,
            disks,
            journal,
            limits,
            stop,
            progress,
            cuts: None,
            quiescers: None,
            resyncing: Default::default(),
            sizes: None,
            comparisons: None,
        }
    }

    /// Answers the appliance's requests to compare disks with their replicas (see
    /// [`crate::compare`]).
    pub fn set_comparisons(&mut self, c: Option<crate::compare::Comparisons>) {
        self.comparisons = c;
    }

    /// Runs the comparisons asked for: each disk's differing blocks are invalidated, so
    /// this cycle sends them.
    fn run_comparisons(&mut self) -> Result<(), CycleError> {
        let Some(c) = &mut self.comparisons else { return Ok(()) };
        let asked: Vec<_> =
            std::mem::take(&mut *c.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for r in asked {
            let Some(slot) = self.disks.iter_mut().find(|s| s.index == r.disk) else {
                tracing::warn!(
                    disk = r.disk,
                    "the appliance asked to compare a disk this agent does not protect"
                );
                continue;
            };
            let disk = Disk::open(&slot.path)?;
            let started = Instant::now();
            match crate::compare::compare_disk(
                &disk,
                slot.index,
                r.token,
                slot.tracker.as_mut(),
                c.client.as_ref(),
            ) {
                Ok(differing) => {
                    tracing::info!(
                        disk = r.disk,
                        size = disk.size(),
                        differing,
                        ms = crate::millis(started.elapsed()),
                        "compared the disk with its replica: this cycle sends the blocks that differ"
                    );
                    c.compared.push(r);
                }
                Err(e) => {
                    tracing::warn!(
                        disk = r.disk,
                        "comparing the disk with its replica failed (tried again next cycle): {e}"
                    );
                    c.pending.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            }
        }
        Ok(())
    }

    /// Tells the appliance the compared disks are whole from `point` on.
    fn comparisons_done(&mut self, point: u64) {
        let Some(c) = &mut self.comparisons else { return };
        let mut left = Vec::new();
        for r in std::mem::take(&mut c.compared) {
            let d = lifeboat_api::CompareDone { disk: r.disk, token: r.token, point };
            if let Err(e) = c.client.done(&d) {
                tracing::warn!(
                    disk = r.disk,
                    "cannot tell the appliance the comparison is done (told again after the next cycle): {e}"
                );
                left.push(r);
            }
        }
        c.compared = left;
    }

    /// Publishes each disk's size when it changes (see the `sizes` field).
    pub fn set_sizes(
        &mut self,
        sizes: Option<Arc<tokio::sync::watch::Sender<Vec<lifeboat_api::DiskDescriptor>>>>,
    ) {
        self.sizes = sizes;
    }

    /// Disk `index` is `size` bytes now: announced before anything past its old end is
    /// journaled.
    fn announce_size(&self, index: u32, size: u64) {
        if let Some(tx) = &self.sizes {
            tx.send_if_modified(|disks| match disks.iter_mut().find(|d| d.index == index) {
                Some(d) if d.size != size => {
                    tracing::warn!(disk = index, from = d.size, to = size, "the disk was resized while protected: announcing its new size to the appliance");
                    d.size = size;
                    true
                }
                _ => false,
            });
        }
    }

    /// Runs `quiescers` around the cuts that are due to be app-consistent (only cuts under a
    /// freeze, see [`Cycler::set_cuts`], can be).
    pub fn set_quiescers(&mut self, quiescers: Option<crate::quiesce::Quiescers>) {
        self.quiescers = quiescers;
    }

    /// The quiescers, if any.
    pub fn quiescers(&self) -> Option<&crate::quiesce::Quiescers> {
        self.quiescers.as_ref()
    }

    /// Cuts points under a freeze, with pre-copy, whenever every disk's tracker can (`None`,
    /// the default: collect and tag without freezing).
    pub fn set_cuts(&mut self, policy: Option<CutPolicy>) {
        self.cuts = policy;
    }

    /// The disks.
    pub fn disks(&self) -> &[DiskSlot] {
        &self.disks
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Runs one cycle; see the module documentation.
    pub fn run_cycle(&mut self) -> Result<CycleOutcome, CycleError> {
        self.run_cycle_in(None)
    }

    /// Runs one cycle whose point is a consistency group's (see [`crate::group`]): the
    /// point gets the number the group agreed on, and the cut waits for the group at the
    /// steps of [`GroupCut`]. `group.done` is called in every case.
    pub fn run_group_cycle(
        &mut self,
        group: &mut (dyn GroupCut + 'static),
    ) -> Result<CycleOutcome, CycleError> {
        let r = if self.cuts.is_none() || !self.disks.iter().all(|d| d.tracker.name() == "ebpf") {
            Ok(CycleOutcome::Deferred {
                reason: "a consistency-group point needs every disk on the eBPF tracker, with cuts under a freeze".into(),
            })
        } else {
            self.run_cycle_in(Some(&mut *group))
        };
        group.done(match &r {
            Ok(CycleOutcome::Done { point, .. }) => Ok(*point),
            Ok(CycleOutcome::Deferred { reason }) => Err(reason.clone()),
            Ok(CycleOutcome::Skipped { .. }) => {
                Err("this member's journal is full (its appliance link is behind)".into())
            }
            Err(e) => Err(e.to_string()),
        });
        r
    }

    fn run_cycle_in(
        &mut self,
        group: Option<&mut (dyn GroupCut + 'static)>,
    ) -> Result<CycleOutcome, CycleError> {
        let started = Instant::now();
        for slot in &mut self.disks {
            if let Some(token) = self.journal.resync_requested(slot.index)? {
                tracing::warn!(
                    disk = slot.index,
                    path = %slot.path.display(),
                    "the appliance does not hold everything this disk's journal had: comparing the whole disk again (full hash-compare resync)"
                );
                slot.tracker.invalidate(0, u64::MAX).map_err(|source| CycleError::Tracker {
                    index: slot.index,
                    path: slot.path.clone(),
                    source,
                })?;
                self.journal.clear_resync(slot.index, token)?;
                self.resyncing.insert(slot.index);
            }
        }
        self.run_comparisons()?;
        if !self.journal.wait_until_settled(&self.stop) {
            return Err(CycleError::Stopped);
        }
        let journal_bytes = self.journal.bytes();
        if journal_bytes > self.limits.journal_max_bytes {
            tracing::warn!(
                journal_bytes,
                journal_max_bytes = self.limits.journal_max_bytes,
                "journal is full (the appliance is not acknowledging fast enough): skipping this cycle; the trackers keep the changed blocks and the next cycle sends only those"
            );
            return Ok(CycleOutcome::Skipped { journal_bytes });
        }

        let mut freeze = None;
        let mut kind = PointKind::Crash;
        let mut quiesce_failed = None;
        let mut group_point = None;
        if let Some(policy) = self.cuts {
            match self.cut(policy, &mut quiesce_failed, group)? {
                Cut::Frozen { held, app, point } => {
                    freeze = Some(held);
                    group_point = point;
                    if app {
                        kind = PointKind::App;
                    }
                }
                Cut::Unsupported => {}
                Cut::Deferred(reason) => {
                    tracing::warn!(
                        "no recovery point this cycle: {reason}; the changes are kept and the next cycle tries again"
                    );
                    return Ok(CycleOutcome::Deferred { reason });
                }
            }
        }

        let mut held = Vec::with_capacity(self.disks.len());
        let mut reports = Vec::with_capacity(self.disks.len());
        for i in 0..self.disks.len() {
            let (report, pending) = self.collect_one(i)?;
            reports.push(report);
            held.push(pending);
        }
        // Every disk is collected: cut the point on all of them.
        let point = match group_point {
            Some(p) => self.journal.reserve_point_at(p)?,
            None => self.journal.reserve_point()?,
        };
        let tag = Some(ConsistencyTag { kind, point_id: point });
        for ((slot, pending), report) in self.disks.iter_mut().zip(held).zip(&mut reports) {
            let machine = self.machine;
            let disk = slot.index;
            self.journal.append(disk, |seq| Batcher::encode(machine, disk, seq, tag, &pending))?;
            report.batches += 1;
            // A committed change must be acknowledged or in a file, never only in memory.
            self.journal.persist(disk)?;
            slot.tracker.commit().map_err(|source| CycleError::Tracker {
                index: slot.index,
                path: slot.path.clone(),
                source,
            })?;
        }
        // The whole disks were compared and committed: a resync is over.
        self.resyncing.clear();
        self.comparisons_done(point);
        Ok(CycleOutcome::Done {
            point,
            disks: reports,
            duration: started.elapsed(),
            freeze,
            kind,
            quiesce_failed,
        })
    }

    fn tracker_err(&self, i: usize) -> impl FnOnce(TrackerError) -> CycleError + use<> {
        let (index, path) = (self.disks[i].index, self.disks[i].path.clone());
        move |source| CycleError::Tracker { index, path, source }
    }
}

#[cfg(test)]
mod tests;
