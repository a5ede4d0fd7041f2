//! Collecting one disk: its tracker's changes cut into batches of the wire format, the full
//! ones journaled, the last one held back for the point's tag.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use lifeboat_wire::{
    Batch, BatchHeader, ConsistencyTag, Extent, MAX_EXTENTS, MachineId, SECTOR_SIZE,
};

use super::{CycleError, CycleLimits, Cycler, DiskReport};
use crate::disk::Disk;
use crate::journal::Journal;
use crate::progress::Phase;
use crate::tracker::{Change, SinkError, TrackerError};

/// Granularity at which an oversized data change is split.
const SPLIT: u64 = 4096;

/// Extents of a batch being filled, owned (the tracker's buffer is only lent per change).
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) extents: Vec<Extent<'static>>,
    pub(super) data_bytes: u64,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }
}

/// Cuts one disk's changes into batches and journals the full ones.
pub(super) struct Batcher<'j> {
    journal: &'j Journal,
    machine: MachineId,
    disk: u32,
    limits: CycleLimits,
    stop: &'j AtomicBool,
    cur: Pending,
    batches: u64,
}

impl Batcher<'_> {
    #[expect(
        clippy::expect_used,
        reason = "every extent of a `Pending` was checked when the batcher took it (aligned, \
                  in order, under MAX_EXTENTS and batch_max_bytes), so the wire builder accepts it"
    )]
    pub(super) fn encode(
        machine: MachineId,
        disk: u32,
        seq: u64,
        tag: Option<ConsistencyTag>,
        p: &Pending,
    ) -> Vec<u8> {
        let mut b = Batch::builder(BatchHeader { machine, disk_index: disk, sequence: seq, tag });
        for e in &p.extents {
            let e = match e {
                Extent::Data { offset, data } => {
                    Extent::Data { offset: *offset, data: Cow::Borrowed(data.as_ref()) }
                }
                Extent::Zero { offset, length } => {
                    Extent::Zero { offset: *offset, length: *length }
                }
            };
            b.push(e).expect("extent checked by the batcher");
        }
        lifeboat_wire::encode(&b.build())
    }

    /// Journals the current batch (untagged) and starts a new one.
    fn flush(&mut self) -> Result<(), SinkError> {
        if self.cur.is_empty() {
            return Ok(());
        }
        if !self.journal.wait_for_room(
            self.limits.journal_max_bytes,
            self.cur.data_bytes,
            self.stop,
        ) || !self.journal.wait_for_memory(self.cur.data_bytes, self.stop)
        {
            return Err(SinkError::new(CycleError::Stopped));
        }
        let p = std::mem::take(&mut self.cur);
        let (machine, disk) = (self.machine, self.disk);
        self.journal
            .append(disk, |seq| Self::encode(machine, disk, seq, None, &p))
            .map_err(SinkError::new)?;
        self.batches += 1;
        Ok(())
    }

    fn aligned(offset: u64, len: u64) -> Result<(), SinkError> {
        if offset.is_multiple_of(SECTOR_SIZE) && len.is_multiple_of(SECTOR_SIZE) {
            Ok(())
        } else {
            Err(SinkError::from(format!(
                "change at offset {offset} of {len} bytes is not sector-aligned (512 bytes)"
            )))
        }
    }

    fn room_for_extent(&mut self) -> Result<(), SinkError> {
        if self.cur.extents.len() >= MAX_EXTENTS {
            self.flush()?;
        }
        Ok(())
    }

    fn take(&mut self, change: Change<'_>) -> Result<(), SinkError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(SinkError::new(CycleError::Stopped));
        }
        match change {
            Change::Zero { offset, len } => {
                Self::aligned(offset, len)?;
                self.room_for_extent()?;
                self.cur.extents.push(Extent::Zero { offset, length: len });
            }
            Change::Data { offset, data } => {
                Self::aligned(offset, data.len() as u64)?;
                let max = self.limits.batch_max_bytes;
                let (mut off, mut rest) = (offset, data);
                while !rest.is_empty() {
                    self.room_for_extent()?;
                    let room = max - self.cur.data_bytes;
                    let len = rest.len() as u64;
                    let n = if len <= room {
                        len
                    } else if !self.cur.is_empty() {
                        // Does not fit in what is left: the next batch.
                        self.flush()?;
                        continue;
                    } else {
                        // Larger than a whole batch: split at a 4 KiB boundary.
                        max - max % SPLIT
                    };
                    // At most `rest.len()`, so it fits.
                    let at = usize::try_from(n).map_err(|_| {
                        SinkError::from(format!("a piece of {n} bytes does not fit in memory"))
                    })?;
                    let (head, tail) = rest.split_at(at);
                    self.cur
                        .extents
                        .push(Extent::Data { offset: off, data: Cow::Owned(head.to_vec()) });
                    self.cur.data_bytes += n;
                    off += n;
                    rest = tail;
                    if self.cur.data_bytes >= max {
                        self.flush()?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Cycler {
    /// Collects disk `i` into batches; returns its report and the held-back last batch.
    pub(super) fn collect_one(&mut self, i: usize) -> Result<(DiskReport, Pending), CycleError> {
        let disk = Disk::open(&self.disks[i].path)?;
        if !disk.size().is_multiple_of(SECTOR_SIZE) {
            return Err(CycleError::UnalignedSize {
                path: self.disks[i].path.clone(),
                size: disk.size(),
            });
        }
        self.announce_size(self.disks[i].index, disk.size());
        let slot = &mut self.disks[i];
        let phase = match &slot.baseline_path {
            Some(p) if !p.exists() => Phase::InitialCopy,
            _ if self.resyncing.contains(&slot.index) => Phase::Resync,
            _ => Phase::Delta,
        };
        self.progress.start(slot.index, phase, disk.size());
        let mut batcher = Batcher {
            journal: &self.journal,
            machine: self.machine,
            disk: slot.index,
            limits: self.limits,
            stop: &self.stop,
            cur: Pending::default(),
            batches: 0,
        };
        let progress = &self.progress;
        let index = slot.index;
        let result = slot.tracker.collect(&disk, &mut |c: Change<'_>| {
            let (end, len) = (c.end(), c.len());
            batcher.take(c)?;
            progress.advance(index, end, len);
            Ok(())
        });
        self.progress.finish(slot.index, result.is_ok());
        let stats = match result {
            Ok(s) => s,
            Err(TrackerError::Sink { .. }) if self.stop.load(Ordering::Relaxed) => {
                return Err(CycleError::Stopped);
            }
            Err(source) => {
                return Err(CycleError::Tracker {
                    index: slot.index,
                    path: slot.path.clone(),
                    source,
                });
            }
        };
        Ok((DiskReport { index: slot.index, stats, batches: batcher.batches }, batcher.cur))
    }
}
