//! Appending batches: the newest kept in memory within the budget and spilled to files
//! oldest first, and the waits that pace appends (room in the journal, room in memory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    ACK_PATIENCE, DiskQueue, Entry, Inner, Journal, JournalError, RESERVE_STEP, RESERVED,
    batch_name, sync_dir, write_atomic, write_counter, write_file,
};

impl Journal {
    /// Appends a batch for `disk`: `make` gets the sequence number the batch must carry and
    /// returns the encoded batch. Returns the sequence once the batch is durable.
    pub fn append(
        &self,
        disk: u32,
        make: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let seq = q.next_seq;
        let bytes = make(seq);
        match lifeboat_wire::read_header(&bytes) {
            Ok(h) if h.header.sequence == seq && h.header.disk_index == disk => {}
            Ok(h) => {
                return Err(JournalError::BadAppend {
                    disk,
                    seq,
                    what: format!(
                        "it says disk {} sequence {}",
                        h.header.disk_index, h.header.sequence
                    ),
                });
            }
            Err(e) => return Err(JournalError::BadAppend { disk, seq, what: e.to_string() }),
        }
        let len = bytes.len() as u64;
        if len > inner.mem_budget {
            // Too large to keep: everything older goes to files first (files before memory).
            Self::spill(&mut inner, disk, u64::MAX)?;
            let q = Self::queue(&mut inner, disk)?;
            write_atomic(&q.dir.join(batch_name(seq)), &bytes)?;
            q.entries.push_back(Entry { seq, len, mem: None });
        } else {
            let over = (inner.mem_bytes + len).saturating_sub(inner.mem_budget);
            if over > 0 {
                Self::spill_any(&mut inner, over)?;
            }
            let q = Self::queue(&mut inner, disk)?;
            if seq >= q.reserved {
                let reserved = seq + RESERVE_STEP;
                write_counter(&q.dir.join(RESERVED), reserved)?;
                q.reserved = reserved;
            }
            q.entries.push_back(Entry { seq, len, mem: Some(bytes::Bytes::from(bytes)) });
            inner.mem_bytes += len;
        }
        let q = Self::queue(&mut inner, disk)?;
        q.next_seq = seq + 1;
        inner.bytes += len;
        self.bump(&mut inner);
        Ok(seq)
    }

    /// Writes the oldest batches of `disk` held in memory to files until at least `bytes`
    /// bytes were freed (all of them with `u64::MAX`). Returns the bytes freed.
    fn spill(inner: &mut Inner, disk: u32, bytes: u64) -> Result<u64, JournalError> {
        let q = Self::queue(inner, disk)?;
        let mut freed = 0;
        let mut wrote = false;
        for e in q.entries.iter_mut() {
            if freed >= bytes {
                break;
            }
            let Some(b) = &e.mem else { continue };
            write_file(&q.dir.join(batch_name(e.seq)), b)?;
            wrote = true;
            e.mem = None;
            freed += e.len;
        }
        if wrote {
            sync_dir(&q.dir)?;
        }
        inner.mem_bytes -= freed;
        Ok(freed)
    }

    /// Spills at least `bytes` bytes, oldest-first within each disk, from the disks holding
    /// the most in memory.
    fn spill_any(inner: &mut Inner, bytes: u64) -> Result<(), JournalError> {
        let mut left = bytes;
        while left > 0 {
            let held = |q: &DiskQueue| {
                q.entries.iter().filter(|e| e.mem.is_some()).map(|e| e.len).sum::<u64>()
            };
            let Some((disk, _)) = (0u32..)
                .zip(&inner.disks)
                .map(|(i, q)| (i, held(q)))
                .filter(|(_, h)| *h > 0)
                .max_by_key(|(_, h)| *h)
            else {
                break;
            };
            left = left.saturating_sub(Self::spill(inner, disk, left)?);
        }
        Ok(())
    }

    /// Sets the most bytes of unacknowledged batches kept in memory (0, the default: every
    /// batch is written to a file when appended). See the module documentation.
    pub fn set_memory_budget(&self, bytes: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        inner.mem_budget = bytes;
        let over = inner.mem_bytes.saturating_sub(bytes);
        if over > 0 {
            Self::spill_any(&mut inner, over)?;
        }
        Ok(())
    }

    /// Writes every batch of `disk` held in memory to its file, durably. Call it before the
    /// disk's tracker commits.
    pub fn persist(&self, disk: u32) -> Result<(), JournalError> {
        Self::spill(&mut self.lock(), disk, u64::MAX).map(|_| ())
    }

    /// Bytes of batches held in memory, all disks.
    pub fn memory_bytes(&self) -> u64 {
        self.lock().mem_bytes
    }

    /// Before appending `incoming` bytes: while the memory budget has no room for them but
    /// the appliance is acknowledging (an ack in the last [`ACK_PATIENCE`]), waits for
    /// acknowledgements instead of letting the append spill batches to files. So an agent
    /// whose appliance keeps up, only a little slower than the disks are read, is paced by
    /// it and writes nothing; one whose appliance stopped answering spills at once. Returns
    /// false when `stop` is set.
    pub fn wait_for_memory(&self, incoming: u64, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if incoming > inner.mem_budget
                || inner.mem_bytes + incoming <= inner.mem_budget
                || inner.last_ack.elapsed() > ACK_PATIENCE
            {
                return true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Blocks while the journal holds more than `max_bytes - incoming` bytes (and is not
    /// empty), until acks make room or `stop` is set. Returns false when stopped.
    pub fn wait_for_room(&self, max_bytes: u64, incoming: u64, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if inner.bytes == 0 || inner.bytes.saturating_add(incoming) <= max_bytes {
                return true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
