//! Releasing batches the target holds durably: the segments' release logs, and deleting
//! segments with nothing left unreleased.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use crate::error::io;
use crate::format::{self, RELEASE_ENTRY_LEN, RELEASE_HEADER_LEN};
use crate::{
    Cache, Error, RecordRef, Result, create_with_header, release_name, remove_if_present,
    segment_name, sync_dir,
};

impl Cache {
    /// Forgets a batch that the target now holds durably: records the release
    /// durably, then deletes the record's segment if nothing in it is left
    /// unreleased. Releasing a batch that is no longer cached is a no-op.
    pub fn release(&mut self, record: &RecordRef) -> Result<()> {
        self.release_many(std::slice::from_ref(record))
    }

    /// Releases several records with one fsync per segment involved.
    pub fn release_many(&mut self, records: &[RecordRef]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        // Group the release entries by segment.
        let mut by_segment: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut keys = Vec::new();
        for r in records {
            let Some(entry) = self.index.get(&r.key) else {
                tracing::debug!(record = %r, "release of a record that is no longer cached");
                continue;
            };
            if entry.record != *r {
                return Err(Error::UnknownRecord { record: *r });
            }
            if keys.contains(&r.key) {
                continue;
            }
            keys.push(r.key);
            for copy in std::iter::once(&entry.record).chain(&entry.shadows) {
                by_segment
                    .entry(copy.segment)
                    .or_default()
                    .extend_from_slice(&format::encode_release_entry(copy.offset, copy.key));
            }
        }

        for (&n, bytes) in &by_segment {
            self.append_release_entries(n, bytes)?;
        }

        // Durable: forget them.
        for key in keys {
            if let Some(entry) = self.index.remove(&key) {
                for copy in std::iter::once(&entry.record).chain(&entry.shadows) {
                    if let Some(seg) = self.segments.get_mut(&copy.segment) {
                        seg.live -= 1;
                    }
                }
            }
        }
        if self.delete_released_segments()? {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Appends entries to segment `n`'s release log (creating it if needed) and
    /// fsyncs it.
    fn append_release_entries(&mut self, n: u64, bytes: &[u8]) -> Result<()> {
        let name = release_name(n);
        let path = self.dir.join(&name);
        let Some(seg) = self.segments.get_mut(&n) else {
            return Ok(());
        };
        let result = (|| {
            let mut file = if seg.release_len == 0 {
                let f = create_with_header(&self.dir, &name, &format::encode_release_header(n))?;
                seg.release_len = RELEASE_HEADER_LEN;
                self.usage += RELEASE_HEADER_LEN;
                f
            } else {
                File::options().append(true).open(&path).map_err(io("open release log", &path))?
            };
            file.write_all(bytes).map_err(io("append to release log", &path))?;
            file.sync_data().map_err(io("fsync release log", &path))?;
            debug_assert_eq!(bytes.len() as u64 % RELEASE_ENTRY_LEN, 0);
            seg.release_len += bytes.len() as u64;
            self.usage += bytes.len() as u64;
            Ok(())
        })();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Deletes every segment without unreleased records, except the highest
    /// numbered one. Returns whether anything was deleted (the caller fsyncs the
    /// directory).
    pub(crate) fn delete_released_segments(&mut self) -> Result<bool> {
        let Some(&highest) = self.segments.keys().next_back() else {
            return Ok(false);
        };
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&n, s)| n != highest && s.live == 0)
            .map(|(&n, _)| n)
            .collect();
        for &n in &doomed {
            // Segment first: a release log without its segment is cleaned up on
            // open, a segment without its release log would be replayed.
            remove_if_present(&self.dir.join(segment_name(n)), "delete released segment")?;
            remove_if_present(&self.dir.join(release_name(n)), "delete release log")?;
            if let Some(seg) = self.segments.remove(&n) {
                self.usage -= seg.len + seg.release_len;
            }
            tracing::debug!(segment = n, "deleted a fully released cache segment");
        }
        Ok(!doomed.is_empty())
    }
}
