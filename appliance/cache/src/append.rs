//! Appending batches: group commit into the active segment, rolling to a new segment, and
//! keeping the cache under its size limit.

use std::collections::HashMap;
use std::io::Write;

use crate::error::io;
use crate::format::{self, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN};
use crate::{
    Active, Cache, Entry, Error, MAX_PAYLOAD_BYTES, RecordKey, RecordRef, Result, Segment,
    create_with_header, segment_name, sync_dir,
};

impl Cache {
    /// Stores one batch durably: returns only after the record is fsynced. If
    /// `key` is already cached with the same payload (an agent re-sending after a
    /// lost acknowledgement), returns the existing record and stores nothing.
    pub fn append(&mut self, key: RecordKey, payload: &[u8]) -> Result<RecordRef> {
        let mut refs = self.append_many(&[(key, payload)])?;
        Ok(refs.remove(0))
    }

    /// Stores several batches with one fsync (group commit) and returns their
    /// records in the same order. All or nothing as far as the caller is
    /// concerned: on error, acknowledge none of them. Duplicates (of cached
    /// records or within `batches`) are handled as in [`Cache::append`].
    pub fn append_many(&mut self, batches: &[(RecordKey, &[u8])]) -> Result<Vec<RecordRef>> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        enum Plan {
            Existing(RecordRef),
            New { key: RecordKey, crc: u32 },
            SameAs(usize),
        }
        /// A plan once its records are written.
        enum Placed {
            Existing(RecordRef),
            Written(RecordRef),
            SameAs(usize),
        }
        let mut plans = Vec::with_capacity(batches.len());
        let mut in_batch: HashMap<RecordKey, usize> = HashMap::new();
        let mut needed = 0u64;
        for (i, &(key, payload)) in batches.iter().enumerate() {
            let len = payload.len() as u64;
            if len > MAX_PAYLOAD_BYTES {
                return Err(Error::PayloadTooLarge { len, max: MAX_PAYLOAD_BYTES });
            }
            let crc = crc32c::crc32c(payload);
            let existing = match self.index.get(&key) {
                Some(e) => Some((e.record.payload_len, e.record.payload_crc)),
                None => in_batch
                    .get(&key)
                    .map(|&j| (batches[j].1.len() as u64, crc32c::crc32c(batches[j].1))),
            };
            if let Some((stored_len, stored_crc)) = existing
                && (stored_len, stored_crc) != (len, crc)
            {
                return Err(Error::KeyConflict {
                    key,
                    stored_len,
                    stored_crc,
                    new_len: len,
                    new_crc: crc,
                });
            }
            plans.push(if let Some(e) = self.index.get(&key) {
                tracing::debug!(record = %e.record, "duplicate append: batch already cached");
                Plan::Existing(e.record)
            } else if let Some(&j) = in_batch.get(&key) {
                Plan::SameAs(j)
            } else {
                in_batch.insert(key, i);
                needed += RECORD_HEADER_LEN + len;
                Plan::New { key, crc }
            });
        }
        if needed > 0 {
            self.ensure_room(needed)?;
        }

        // Write. Records land in the active segment, rolling as needed.
        let mut placed = Vec::with_capacity(batches.len());
        let mut rolled = false;
        for (i, plan) in plans.into_iter().enumerate() {
            let (key, crc) = match plan {
                Plan::Existing(r) => {
                    placed.push(Placed::Existing(r));
                    continue;
                }
                Plan::SameAs(j) => {
                    placed.push(Placed::SameAs(j));
                    continue;
                }
                Plan::New { key, crc } => (key, crc),
            };
            let payload = batches[i].1;
            let stored = RECORD_HEADER_LEN + payload.len() as u64;
            // An active segment that can take `stored` more bytes: a new one when there is
            // none, or when it has records and would grow past `segment_bytes`.
            let full = self.active.as_ref().is_some_and(|a| {
                a.len > SEGMENT_HEADER_LEN && a.len + stored > self.config.segment_bytes
            });
            let active = match self.active.as_mut() {
                Some(a) if !full => a,
                _ => {
                    // The previous highest segment may now be deletable.
                    rolled = true;
                    let next = self.roll()?;
                    self.active.insert(next)
                }
            };
            let header = RecordHeader {
                key,
                payload_len: payload.len() as u64,
                segment: active.number,
                sync_floor: active.synced,
                payload_crc: crc,
            };
            let path = self.dir.join(segment_name(active.number));
            let res = active
                .file
                .write_all(&format::encode_record_header(&header))
                .and_then(|()| active.file.write_all(payload));
            if let Err(e) = res {
                self.poisoned = true;
                return Err(io("write record to", path)(e));
            }
            placed.push(Placed::Written(RecordRef {
                key,
                segment: active.number,
                offset: active.len,
                payload_len: header.payload_len,
                payload_crc: crc,
            }));
            active.len += stored;
            self.usage += stored;
            if let Some(seg) = self.segments.get_mut(&active.number) {
                seg.len = active.len;
            }
        }
        self.sync_active()?;

        // Durable: now make the records visible.
        let mut out: Vec<RecordRef> = Vec::with_capacity(batches.len());
        for plan in placed {
            let r = match plan {
                Placed::Existing(r) => r,
                // `j` is an earlier batch of this append, already in `out`.
                Placed::SameAs(j) => out[j],
                Placed::Written(r) => {
                    self.index.insert(r.key, Entry { record: r, shadows: Vec::new() });
                    if let Some(seg) = self.segments.get_mut(&r.segment) {
                        seg.live += 1;
                    }
                    r
                }
            };
            out.push(r);
        }
        if rolled && self.delete_released_segments()? {
            sync_dir(&self.dir)?;
        }
        Ok(out)
    }

    /// Fails with [`Error::Full`] unless `needed` more bytes fit under
    /// `max_bytes`; first reclaims a fully released active segment if that helps.
    fn ensure_room(&mut self, needed: u64) -> Result<()> {
        // Segment headers of the segments this append may start.
        let overhead = SEGMENT_HEADER_LEN * (1 + needed / self.config.segment_bytes);
        let fits = |usage: u64| usage.saturating_add(needed + overhead) <= self.config.max_bytes;
        if fits(self.usage) {
            return Ok(());
        }
        // Only the highest segment (active, or kept to anchor the numbering) can
        // be fully released and still present.
        let reclaimable = self.segments.values().next_back().and_then(|s| {
            (s.live == 0 && s.len > SEGMENT_HEADER_LEN).then_some(s.len + s.release_len)
        });
        if let Some(bytes) = reclaimable
            && fits(self.usage - bytes)
        {
            self.active = Some(self.roll()?);
            if self.delete_released_segments()? {
                sync_dir(&self.dir)?;
            }
            return Ok(());
        }
        Err(Error::Full { usage: self.usage, needed, max_bytes: self.config.max_bytes })
    }

    /// Fsyncs whatever the active segment has that is not yet durable.
    fn sync_active(&mut self) -> Result<()> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if active.synced == active.len {
            return Ok(());
        }
        if let Err(e) = active.file.sync_data() {
            self.poisoned = true;
            return Err(io("fsync", self.dir.join(segment_name(active.number)))(e));
        }
        active.synced = active.len;
        Ok(())
    }

    /// Seals the active segment (after fsyncing it) and starts the next one, which it
    /// returns for the caller to make active (`self.active`).
    fn roll(&mut self) -> Result<Active> {
        self.sync_active()?;
        let n = self.next_segment;
        let name = segment_name(n);
        let file = match create_with_header(&self.dir, &name, &format::encode_segment_header(n)) {
            Ok(f) => f,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        self.next_segment += 1;
        self.segments.insert(n, Segment { len: SEGMENT_HEADER_LEN, release_len: 0, live: 0 });
        self.usage += SEGMENT_HEADER_LEN;
        tracing::debug!(segment = n, "started a new cache segment");
        Ok(Active { number: n, file, len: SEGMENT_HEADER_LEN, synced: SEGMENT_HEADER_LEN })
    }
}
