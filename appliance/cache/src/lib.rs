//! # The process server's durable cache
//!
//! The process server acknowledges a batch to an agent only once the batch is
//! durable on the appliance ("every stage acknowledges only what is durable
//! behind it"). This crate is where it becomes durable: an append-only,
//! checksummed log of batches on the appliance's disk, from which the pipeline
//! (codec, cipher, target plugin) ships them, and which forgets a batch only when
//! the target holds it durably.
//!
//! ## Layout
//!
//! A cache is one directory:
//!
//! ```text
//! <dir>/LOCK                          flock()ed while a Cache has the directory open
//! <dir>/00000000000000000001.segment  sealed segment
//! <dir>/00000000000000000001.released its release log (exists once a record was released)
//! <dir>/00000000000000000002.segment  the active segment (highest number)
//! ```
//!
//! A *segment* is a 32-byte header (magic, version, its own number) followed by
//! records. A *record* is a 64-byte header (magic, version, machine id, disk
//! index, sequence, payload length, segment number, *sync floor*, crc32c of the
//! payload, crc32c of the header) followed by the payload, the agent's batch as
//! opaque bytes. Records are not padded or aligned. The segment being appended to
//! is *active*; when the next record would take it past
//! [`CacheConfig::segment_bytes`] a new segment with the next number is started
//! and the old one is *sealed*. Segment numbers only grow: the highest-numbered
//! segment is never deleted, even when empty, so the next process can't reuse a
//! number.
//!
//! Each segment has its own *release log* (`N.released`): a 32-byte header and
//! then 32-byte entries, each "the record at offset O with key K has been shipped
//! durably". Per-segment logs need no compaction: when every record of a segment
//! is released, the segment and its release log are deleted together. Byte
//! layouts and versioning rules are in `docs/formats/cache.md`; the code is in
//! `format.rs`.
//!
//! ## Fsync ordering, and why it is safe
//!
//! * **New segment (and new release log):** the header is written to
//!   `N.segment.new`, fsynced, renamed to `N.segment`, and the directory is
//!   fsynced. So a file with a final name always has an intact, durable header,
//!   and a bad header is never a crash artefact: it is an error. Leftover `.new`
//!   files are deleted on open.
//! * **Append:** header and payload are written with `write(2)`, then the segment
//!   is `fdatasync`ed (which covers the new file length), and only then does
//!   [`Cache::append`] return. The process server acknowledges the agent after
//!   that. [`Cache::append_many`] writes several records and fsyncs once (group
//!   commit); none of its records is acknowledged before that single fsync.
//! * **Roll:** before a new segment is created, the old one is fsynced. So every
//!   record in a sealed segment was durable before the next segment existed.
//! * **Release:** the entry is appended to the segment's release log and the log
//!   is `fdatasync`ed before [`Cache::release`] returns; only then is the record
//!   forgotten in memory, and the segment deleted if that was its last live
//!   record. Losing a release (crash before the fsync) only means the record is
//!   replayed and shipped again, which the master target tolerates: it applies a
//!   disk's batches in sequence order and skips sequences it already applied.
//! * **Delete:** the segment file is unlinked before its release log, then the
//!   directory is fsynced. If the deletion is lost in a crash, the segment comes
//!   back with its release log, and is deleted again on open. A release log
//!   without a segment is deleted on open.
//!
//! The *sync floor* in each record header is the segment offset up to which the
//! segment was known to be fsynced when the record was written (records of one
//! group commit share it). It is what lets replay tell a torn write from damage to
//! acknowledged data, below.
//!
//! ## What replay does ([`Cache::open`])
//!
//! 1. Takes the directory lock (one process server per cache directory).
//! 2. Deletes leftover `.new` files and release logs whose segment is gone;
//!    reports (`tracing::warn!`) and ignores any other file: the cache never
//!    deletes a file it does not own.
//! 3. Reads each segment's release log, truncating a torn tail.
//! 4. Scans every segment in number order, checking every header and the payload
//!    checksum of every unreleased record.
//!    * In a **sealed** segment any damage is an error naming the file and
//!      offset: those records were fsynced before the next segment was created,
//!      so they may have been acknowledged, and the cache will not skip them
//!      silently.
//!    * In the **last** segment the first damaged record may be a torn write from
//!      the crash: a record (or group) that was being written and never fsynced,
//!      hence never acknowledged. It is truncated away, with a `tracing::warn!`
//!      naming the file and offset, *unless* something proves it had been
//!      fsynced: a release entry at or after it, or a later intact record of the
//!      same segment whose sync floor lies beyond it. Then it is an error too.
//!      Intact records after the damage with a lower sync floor belong to the same
//!      unsynced group and go with it. (The one case this cannot tell apart:
//!      bit rot inside the final, already acknowledged group of the last
//!      segment looks exactly like a torn write of that group. Nothing that is
//!      not written can distinguish them; a disk that rots data fsynced seconds
//!      ago has bigger problems, and later groups prove earlier ones durable.)
//! 5. Returns the unreleased records as [`Pending`], sorted by machine, disk and
//!    sequence, so the pipeline can ship each disk's batches in order. Segments
//!    with no unreleased record are deleted, except the highest-numbered one.
//!    New appends go to a fresh segment, created on the first append.
//!
//! Duplicate appends are detected against the in-memory index of unreleased
//! records, rebuilt by replay: an agent that re-sends a batch after a lost ack
//! gets the existing [`RecordRef`] back and nothing is stored twice. A re-sent
//! batch that was already shipped and released is stored and shipped again; the
//! master target's in-order, skip-if-applied rule makes that harmless.
//!
//! Any failed write or fsync *poisons* the `Cache`: after a failed fsync Linux may
//! have dropped the dirty pages, so the in-memory view can no longer be trusted.
//! Every later write fails with [`Error::Poisoned`] until the directory is opened
//! again, and replay repairs the tail.
//!
//! ## High water, and a full cache
//!
//! [`Cache::usage`] counts the bytes of all cache files (released records still
//! take room until their whole segment is released: space comes back a segment
//! at a time). [`Cache::pressure`] reports [`Pressure::Ok`] below
//! [`CacheConfig::high_water_bytes`], [`Pressure::SlowDown`] from there (the
//! server delays acknowledgements and tells agents to back off; agents keep
//! changes in their own journal meanwhile) and [`Pressure::Full`] at
//! [`CacheConfig::max_bytes`]. An append that would take usage past `max_bytes`
//! is refused with [`Error::Full`] and stores nothing: the server answers with a
//! retry-after, and the agent still has the batch. No data is ever dropped to make
//! room. (If the only thing in the way is a fully released active segment, the
//! cache starts a new segment and deletes that one first.)
//!
//! ## Must the cache be written when the target keeps up?
//!
//! Yes, for now. The agent may forget a batch once it is acknowledged, so the
//! acknowledgement needs the batch durable somewhere; the only durable place the
//! process server controls at that moment is this cache. Shipping first and
//! acknowledging after the target confirmed durability would skip the cache
//! write, but would put the WAN round trip and the target's commit latency into
//! every acknowledgement, and a process-server crash mid-ship would still need
//! the agent to keep and resend the batch. A future optimisation can do exactly
//! that when the target keeps up (ack after the target has it durably, and only
//! write to the cache when the pipeline falls behind); the cache API would not
//! change. Meanwhile, a cache that the target keeps up with holds a few segments
//! and costs one sequential write and one fsync per group commit
//! (`examples/cache_throughput.rs` measures it).
//!
//! ## Using it from async code
//!
//! The API is synchronous (`std::fs`); the server wraps a `Cache` in a mutex and
//! calls it through `spawn_blocking`. To share fsyncs between concurrent
//! requests, it collects the batches that arrive while an fsync is in flight and
//! hands them to one [`Cache::append_many`].
//!
//! Unix only (positioned reads, `flock`, directory fsync).

#![deny(missing_docs)]

mod error;
mod format;
mod replay;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::io;
pub use crate::error::{Error, Result};
use crate::format::{
    RECORD_HEADER_LEN, RELEASE_ENTRY_LEN, RELEASE_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN,
};

/// Largest payload (one agent batch) the cache accepts.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 20;

/// Default [`CacheConfig::segment_bytes`]: 256 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;

/// Smallest [`CacheConfig::segment_bytes`] accepted.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// Identifies one batch: which machine, which of its disks, and the batch's
/// sequence number on that disk. Orders by machine, then disk, then sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    /// The protected machine's id.
    pub machine: u64,
    /// The disk's index on that machine.
    pub disk: u32,
    /// The batch's sequence number on that disk.
    pub sequence: u64,
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(machine {}, disk {}, sequence {})", self.machine, self.disk, self.sequence)
    }
}

/// Where a cached batch is: returned by [`Cache::append`] and [`Cache::open`],
/// passed to [`Cache::read`] and [`Cache::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordRef {
    key: RecordKey,
    segment: u64,
    offset: u64,
    payload_len: u64,
    payload_crc: u32,
}

impl RecordRef {
    /// The batch's key.
    pub fn key(&self) -> RecordKey {
        self.key
    }

    /// The number of the segment that holds the record.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Byte offset of the record header in its segment file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the payload in bytes.
    pub fn payload_len(&self) -> u64 {
        self.payload_len
    }

    /// Bytes the record takes in its segment, header included.
    pub fn stored_len(&self) -> u64 {
        RECORD_HEADER_LEN + self.payload_len
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in segment {} at offset {}", self.key, self.segment, self.offset)
    }
}

/// An unreleased record: found by replay in [`Cache::open`], or listed by
/// [`Cache::pending`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The batch's key.
    pub key: RecordKey,
    /// Where it is; pass it to [`Cache::read`] and [`Cache::release`].
    pub record: RecordRef,
}

/// Sizes that bound the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Hard limit on [`Cache::usage`]: an append that would pass it fails with
    /// [`Error::Full`].
    pub max_bytes: u64,
    /// From this [`Cache::usage`] on, [`Cache::pressure`] says
    /// [`Pressure::SlowDown`]. At most `max_bytes`.
    pub high_water_bytes: u64,
    /// A segment is sealed, and a new one started, when the next record would
    /// take it past this size (a single record bigger than this gets a segment of
    /// its own). At least [`MIN_SEGMENT_BYTES`] and at most `max_bytes`.
    pub segment_bytes: u64,
}

impl CacheConfig {
    /// A configuration with the given hard limit, high water at 80% of it, and
    /// [`DEFAULT_SEGMENT_BYTES`] segments (or `max_bytes / 4` if smaller).
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        CacheConfig {
            max_bytes,
            high_water_bytes: max_bytes / 5 * 4,
            segment_bytes: DEFAULT_SEGMENT_BYTES.min(max_bytes / 4).max(MIN_SEGMENT_BYTES),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return bad(format!(
                "segment_bytes is {}, the minimum is {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return bad(format!(
                "max_bytes ({}) is smaller than segment_bytes ({}); give the cache room for at least a few segments",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.high_water_bytes > self.max_bytes {
            return bad(format!(
                "high_water_bytes ({}) is above max_bytes ({})",
                self.high_water_bytes, self.max_bytes
            ));
        }
        Ok(())
    }
}

impl Default for CacheConfig {
    /// 16 GiB limit, high water at 12.8 GiB, 256 MiB segments.
    fn default() -> Self {
        CacheConfig::with_max_bytes(16 << 30)
    }
}

/// How full the cache is; see the crate documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// Below the high-water mark: acknowledge normally.
    Ok,
    /// At or above the high-water mark: delay acknowledgements and ask agents to
    /// back off.
    SlowDown,
    /// At the limit: refuse new batches with a retry-after.
    Full,
}

/// One segment file, as far as the cache needs to know.
#[derive(Debug)]
struct Segment {
    /// Length of the segment file.
    len: u64,
    /// Length of its release log, 0 if it has none.
    release_len: u64,
    /// Unreleased records in it.
    live: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
    /// Bytes written (the file length).
    len: u64,
    /// Bytes known durable (fsynced).
    synced: u64,
}

/// The unreleased record(s) stored under one key.
#[derive(Debug)]
struct Entry {
    record: RecordRef,
    /// Further unreleased copies found by replay (only possible through a bug
    /// or hand-copied files); released together with `record`.
    shadows: Vec<RecordRef>,
}

/// The durable batch cache. See the crate documentation for the design.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    config: CacheConfig,
    /// Holds the directory's flock for as long as the Cache lives.
    _lock: File,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    next_segment: u64,
    index: HashMap<RecordKey, Entry>,
    usage: u64,
    poisoned: bool,
}

const LOCK_FILE: &str = "LOCK";
const SEGMENT_EXT: &str = "segment";
const RELEASE_EXT: &str = "released";
const TEMP_EXT: &str = "new";

fn segment_name(n: u64) -> String {
    format!("{n:020}.{SEGMENT_EXT}")
}

fn release_name(n: u64) -> String {
    format!("{n:020}.{RELEASE_EXT}")
}

/// What a directory entry is to the cache.
#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    Segment(u64),
    Release(u64),
    Temp,
    Lock,
    Foreign,
}

fn classify(name: &str) -> FileKind {
    if name == LOCK_FILE {
        return FileKind::Lock;
    }
    let (stem, temp) = match name.strip_suffix(&format!(".{TEMP_EXT}")) {
        Some(s) => (s, true),
        None => (name, false),
    };
    let Some((digits, ext)) = stem.split_once('.') else {
        return FileKind::Foreign;
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return FileKind::Foreign;
    }
    let Ok(n) = digits.parse::<u64>() else {
        return FileKind::Foreign;
    };
    match (ext, temp) {
        (SEGMENT_EXT | RELEASE_EXT, true) => FileKind::Temp,
        (SEGMENT_EXT, false) => FileKind::Segment(n),
        (RELEASE_EXT, false) => FileKind::Release(n),
        _ => FileKind::Foreign,
    }
}

fn remove_if_present(path: &Path, op: &'static str) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(op, path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))
}

/// Creates `dir/name` atomically with `header` as its durable content: write to
/// `name.new`, fsync, rename, fsync the directory. Returns the open file,
/// positioned after the header.
fn create_with_header(dir: &Path, name: &str, header: &[u8]) -> Result<File> {
    let tmp = dir.join(format!("{name}.{TEMP_EXT}"));
    let path = dir.join(name);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(header).map_err(io("write header of", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    sync_dir(dir)?;
    Ok(f)
}

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
        let mut written: Vec<Option<RecordRef>> = vec![None; batches.len()];
        let mut rolled = false;
        for (i, plan) in plans.iter().enumerate() {
            let Plan::New { key, crc } = *plan else {
                continue;
            };
            let payload = batches[i].1;
            let stored = RECORD_HEADER_LEN + payload.len() as u64;
            rolled |= self.make_room_in_active(stored)?;
            let active =
                self.active.as_mut().expect("make_room_in_active leaves an active segment");
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
            written[i] = Some(RecordRef {
                key,
                segment: active.number,
                offset: active.len,
                payload_len: header.payload_len,
                payload_crc: crc,
            });
            active.len += stored;
            self.usage += stored;
            if let Some(seg) = self.segments.get_mut(&active.number) {
                seg.len = active.len;
            }
        }
        self.sync_active()?;

        // Durable: now make the records visible.
        let mut out = Vec::with_capacity(batches.len());
        for (i, plan) in plans.iter().enumerate() {
            let r = match *plan {
                Plan::Existing(r) => r,
                Plan::SameAs(j) => written[j].expect("first copy was written"),
                Plan::New { .. } => {
                    let r = written[i].expect("record was written");
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
            self.roll()?;
            if self.delete_released_segments()? {
                sync_dir(&self.dir)?;
            }
            return Ok(());
        }
        Err(Error::Full { usage: self.usage, needed, max_bytes: self.config.max_bytes })
    }

    /// Makes sure an active segment exists and can take `stored` more bytes
    /// (rolling if it has records and would grow past `segment_bytes`). Returns
    /// whether a new segment was started.
    fn make_room_in_active(&mut self, stored: u64) -> Result<bool> {
        match &self.active {
            None => {
                self.roll()?;
                // The previous highest segment may now be deletable.
                Ok(true)
            }
            Some(a) if a.len > SEGMENT_HEADER_LEN && a.len + stored > self.config.segment_bytes => {
                self.roll()?;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
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

    /// Seals the active segment (after fsyncing it) and starts the next one.
    fn roll(&mut self) -> Result<()> {
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
        self.active =
            Some(Active { number: n, file, len: SEGMENT_HEADER_LEN, synced: SEGMENT_HEADER_LEN });
        self.segments.insert(n, Segment { len: SEGMENT_HEADER_LEN, release_len: 0, live: 0 });
        self.usage += SEGMENT_HEADER_LEN;
        tracing::debug!(segment = n, "started a new cache segment");
        Ok(())
    }

    /// Deletes every segment without unreleased records, except the highest
    /// numbered one. Returns whether anything was deleted (the caller fsyncs the
    /// directory).
    fn delete_released_segments(&mut self) -> Result<bool> {
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

    /// Reads a cached batch's payload, verifying both checksums.
    pub fn read(&self, record: &RecordRef) -> Result<Vec<u8>> {
        if !self.is_live(record) {
            return Err(Error::UnknownRecord { record: *record });
        }
        let path = self.dir.join(segment_name(record.segment));
        let corrupt = |reason: String| Error::CorruptRecord {
            path: path.clone(),
            offset: record.offset,
            reason,
        };
        let file = File::open(&path).map_err(io("open segment", &path))?;
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        file.read_exact_at(&mut raw, record.offset)
            .map_err(io("read record header from", &path))?;
        let h = format::decode_record_header(&raw).map_err(|p| match p {
            format::HeaderProblem::Damaged(r) | format::HeaderProblem::Unsupported(r) => corrupt(r),
        })?;
        if h.key != record.key || h.segment != record.segment || h.payload_len != record.payload_len
        {
            return Err(corrupt(format!(
                "header says {} with {} payload bytes in segment {}, expected {} with {} bytes",
                h.key, h.payload_len, h.segment, record.key, record.payload_len
            )));
        }
        let mut payload = vec![0u8; h.payload_len as usize];
        file.read_exact_at(&mut payload, record.offset + RECORD_HEADER_LEN)
            .map_err(io("read record payload from", &path))?;
        let crc = crc32c::crc32c(&payload);
        if crc != h.payload_crc || crc != record.payload_crc {
            return Err(corrupt(format!(
                "payload checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                h.payload_crc
            )));
        }
        Ok(payload)
    }

    fn is_live(&self, record: &RecordRef) -> bool {
        self.index.get(&record.key).is_some_and(|e| e.record == *record)
    }

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

    /// The unreleased records, sorted by machine, disk and sequence.
    pub fn pending(&self) -> Vec<Pending> {
        let mut v: Vec<Pending> =
            self.index.values().map(|e| Pending { key: e.record.key, record: e.record }).collect();
        v.sort_unstable_by_key(|p| p.key);
        v
    }

    /// Bytes the cache's files take on disk (segments and release logs).
    pub fn usage(&self) -> u64 {
        self.usage
    }

    /// How full the cache is, against the high-water mark and the limit.
    pub fn pressure(&self) -> Pressure {
        if self.usage >= self.config.max_bytes {
            Pressure::Full
        } else if self.usage >= self.config.high_water_bytes {
            Pressure::SlowDown
        } else {
            Pressure::Ok
        }
    }

    /// The configuration the cache was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests;
