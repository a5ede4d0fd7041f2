//! Opening a cache directory: taking its lock, sorting out its files, and replaying every
//! segment and release log into the index (see "What replay does" in the crate
//! documentation).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use crate::error::io;
use crate::{
    Cache, CacheConfig, Entry, Error, FileKind, LOCK_FILE, Pending, RecordKey, RecordRef, Result,
    Segment, classify, release_name, replay, segment_name, sync_dir,
};

impl Cache {
    /// Opens (creating if needed) the cache in `dir`, repairs a torn tail left by
    /// a crash, and returns the unreleased records, sorted by machine, disk and
    /// sequence. See "What replay does" in the crate documentation.
    pub fn open(dir: impl AsRef<Path>, config: CacheConfig) -> Result<(Cache, Vec<Pending>)> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io("create cache directory", &dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("create lock file", &lock_path))?;
        match lifeboat_common::lock::lock_exclusive(&lock) {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &lock_path)(e)),
        }

        // Sort out the directory's contents.
        let mut segment_numbers = Vec::new();
        let mut release_numbers = Vec::new();
        let mut dir_changed = false;
        for entry in std::fs::read_dir(&dir).map_err(io("list cache directory", &dir))? {
            let entry = entry.map_err(io("list cache directory", &dir))?;
            let path = entry.path();
            let is_file = entry.file_type().map_err(io("stat", &path))?.is_file();
            let kind = match entry.file_name().to_str() {
                Some(name) if is_file => classify(name),
                _ => FileKind::Foreign,
            };
            match kind {
                FileKind::Segment(n) => segment_numbers.push(n),
                FileKind::Release(n) => release_numbers.push(n),
                FileKind::Lock => {}
                FileKind::Temp => {
                    tracing::info!(file = %path.display(), "removing a file left half-created by a crash");
                    std::fs::remove_file(&path).map_err(io("remove", &path))?;
                    dir_changed = true;
                }
                FileKind::Foreign => tracing::warn!(
                    file = %path.display(),
                    "ignoring an entry in the cache directory that is not a cache file; move it elsewhere"
                ),
            }
        }
        segment_numbers.sort_unstable();
        for n in release_numbers {
            if segment_numbers.binary_search(&n).is_err() {
                let path = dir.join(release_name(n));
                tracing::info!(file = %path.display(), "removing the release log of a deleted segment");
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                dir_changed = true;
            }
        }

        // Replay.
        let last = segment_numbers.last().copied();
        let mut segments = BTreeMap::new();
        let mut index: HashMap<RecordKey, Entry> = HashMap::new();
        for &n in &segment_numbers {
            let seg_path = dir.join(segment_name(n));
            let rel_path = dir.join(release_name(n));
            let released = if rel_path.exists() {
                replay::load_release_log(&rel_path, n)?
            } else {
                replay::ReleaseLog::default()
            };
            let scan = replay::scan_segment(&seg_path, n, Some(n) == last, &released.entries)?;
            let mut live = 0;
            let mut matched = 0;
            for rec in &scan.records {
                let h = rec.header;
                if released.entries.get(&rec.offset) == Some(&h.key) {
                    matched += 1;
                    continue;
                }
                live += 1;
                let record = RecordRef {
                    key: h.key,
                    segment: n,
                    offset: rec.offset,
                    payload_len: h.payload_len,
                    payload_crc: h.payload_crc,
                };
                match index.get_mut(&h.key) {
                    None => {
                        index.insert(h.key, Entry { record, shadows: Vec::new() });
                    }
                    Some(e) => {
                        tracing::warn!(
                            key = %h.key,
                            first = %e.record,
                            again = %record,
                            "batch cached twice; it will be shipped once and both copies released together"
                        );
                        e.shadows.push(record);
                    }
                }
            }
            if matched != released.entries.len() {
                tracing::warn!(
                    file = %rel_path.display(),
                    ignored = released.entries.len() - matched,
                    "release-log entries that match no record in the segment were ignored"
                );
            }
            segments.insert(n, Segment { len: scan.len, release_len: released.len, live });
        }

        let usage = segments.values().map(|s| s.len + s.release_len).sum();
        let mut cache = Cache {
            dir,
            config,
            _lock: lock,
            segments,
            active: None,
            next_segment: last.map_or(1, |n| n + 1),
            index,
            usage,
            poisoned: false,
        };
        dir_changed |= cache.delete_released_segments()?;
        if dir_changed {
            sync_dir(&cache.dir)?;
        }
        let pending = cache.pending();
        tracing::info!(
            dir = %cache.dir.display(),
            segments = cache.segments.len(),
            pending = pending.len(),
            usage = cache.usage,
            "cache opened"
        );
        Ok((cache, pending))
    }
}
