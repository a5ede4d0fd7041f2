//! The sender's side: reading the pending batches, deleting them once acknowledged, and
//! reconciling the numbering with the appliance after a restart (advance, skip, reset).

use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    Journal, JournalError, NEXT_SEQUENCE, PendingBatch, RESYNC, batch_name, io_err, sync_dir,
    write_counter,
};

impl Journal {
    /// The durable upper bound of the sequences `disk` handed out (see the module
    /// documentation).
    pub fn reserved(&self, disk: u32) -> Result<u64, JournalError> {
        Ok(Self::queue(&mut self.lock(), disk)?.reserved)
    }

    /// The appliance expects `next_seq`, past this journal's next sequence but within its
    /// reservation: batches that were in memory when the agent stopped, some of which the
    /// appliance acknowledged. Drops the queue (the appliance holds all of it) and continues
    /// at `next_seq`; the lost batches belonged to an uncommitted cycle, so nothing else is
    /// needed.
    pub fn advance_to(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        if next_seq <= q.next_seq {
            drop(inner);
            return self.skip_to(disk, next_seq);
        }
        // Only ever after a restart, before anything was appended (`wait_until_settled`):
        // the queue holds files only, all below `next_seq`.
        if next_seq > q.reserved {
            return Err(JournalError::BadAppend {
                disk,
                seq: next_seq,
                what: format!("beyond the reservation {}", q.reserved),
            });
        }
        write_counter(&q.dir.join(NEXT_SEQUENCE), next_seq)?;
        q.persisted_next = next_seq;
        q.next_seq = next_seq;
        drop(inner);
        self.ack(disk, next_seq - 1)?;
        self.settle(disk)
    }

    /// The sequence the next batch of `disk` gets.
    pub fn next_sequence(&self, disk: u32) -> Result<u64, JournalError> {
        Ok(Self::queue(&mut self.lock(), disk)?.next_seq)
    }

    /// The batches of `disk` not acknowledged yet, in sequence order (a snapshot).
    pub fn pending(&self, disk: u32) -> Result<Vec<PendingBatch>, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        Ok(q.entries.iter().map(|e| PendingBatch { disk, seq: e.seq, len: e.len }).collect())
    }

    /// The oldest batch of `disk` not acknowledged yet.
    pub fn first_pending(&self, disk: u32) -> Result<Option<PendingBatch>, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        Ok(q.entries.front().map(|e| PendingBatch { disk, seq: e.seq, len: e.len }))
    }

    /// The batch of `disk` with sequence `seq`, if still in the journal.
    pub fn read(&self, disk: u32, seq: u64) -> Result<Option<bytes::Bytes>, JournalError> {
        let path = {
            let mut inner = self.lock();
            let q = Self::queue(&mut inner, disk)?;
            let Some(e) = q.entries.iter().find(|e| e.seq == seq) else {
                return Ok(None);
            };
            if let Some(b) = &e.mem {
                return Ok(Some(b.clone()));
            }
            q.dir.join(batch_name(seq))
        };
        match fs::read(&path) {
            Ok(b) => Ok(Some(b.into())),
            // Acknowledged (and deleted) meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    /// The appliance holds every batch of `disk` up to `seq` durably: deletes them.
    pub fn ack(&self, disk: u32, seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let n = q.entries.iter().take_while(|e| e.seq <= seq).count();
        let doomed: Vec<_> = q.entries.drain(..n).collect();
        let Some(last) = doomed.last() else {
            return Ok(());
        };
        // The files say the next sequence; before they go, the counter must. Only up to
        // what is acknowledged: later numbers may belong to batches in memory, which a
        // crash loses (see `advance_to`).
        let acked_next = last.seq + 1;
        if doomed.iter().any(|e| e.mem.is_none()) && q.persisted_next < acked_next {
            write_counter(&q.dir.join(NEXT_SEQUENCE), acked_next)?;
            q.persisted_next = acked_next;
        }
        let (mut freed, mut freed_mem) = (0, 0);
        for e in &doomed {
            freed += e.len;
            if e.mem.is_some() {
                freed_mem += e.len;
                continue;
            }
            let p = q.dir.join(batch_name(e.seq));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "delete the acknowledged batch")(e)),
            }
        }
        // No directory fsync: a deleted file that reappears after a crash is re-sent, and the
        // appliance answers that it is a duplicate.
        inner.bytes -= freed;
        inner.mem_bytes -= freed_mem;
        inner.last_ack = std::time::Instant::now();
        self.bump(&mut inner);
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// The appliance does not hold what the journal already dropped, or expects a sequence
    /// this journal never reached (this agent's state was lost). Marks `disk` for a full
    /// resync (durably, first), drops its queue and continues at `next_seq`.
    pub fn reset(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let token = q.resync.unwrap_or(0) + 1;
        write_counter(&q.dir.join(RESYNC), token)?;
        q.resync = Some(token);
        write_counter(&q.dir.join(NEXT_SEQUENCE), next_seq)?;
        q.persisted_next = next_seq;
        q.next_seq = next_seq;
        q.reserved = q.reserved.max(next_seq);
        let dropped: Vec<_> = q.entries.drain(..).collect();
        let dir = q.dir.clone();
        let (mut freed, mut freed_mem) = (0, 0);
        for e in dropped {
            freed += e.len;
            if e.mem.is_some() {
                freed_mem += e.len;
                continue;
            }
            let p = dir.join(batch_name(e.seq));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "delete the dropped batch")(e)),
            }
        }
        sync_dir(&dir)?;
        inner.bytes -= freed;
        inner.mem_bytes -= freed_mem;
        Self::queue(&mut inner, disk)?.unsure = false;
        self.bump(&mut inner);
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// Drops the batches of `disk` below `next_seq`: the appliance says it holds them.
    pub fn skip_to(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        if next_seq > 0 {
            self.ack(disk, next_seq - 1)?;
        }
        self.settle(disk)
    }

    /// A reconcile with the appliance happened: appends may go on.
    fn settle(&self, disk: u32) -> Result<(), JournalError> {
        let mut inner = self.lock();
        Self::queue(&mut inner, disk)?.unsure = false;
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// Blocks while a disk's numbering waits for the first reconcile with the appliance
    /// after a crash (see `DiskQueue::unsure`), until it happened or `stop` is set. Call it
    /// before a cycle appends anything. Returns false when stopped.
    pub fn wait_until_settled(&self, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        let mut said = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if !inner.disks.iter().any(|q| q.unsure) {
                return true;
            }
            if !said {
                tracing::info!(
                    "waiting for the appliance to confirm the batch numbers before collecting (batches held in memory may have been lost when the agent stopped)"
                );
                said = true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
