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

mod append;
mod error;
mod format;
mod open;
mod release;
mod replay;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::io;
pub use crate::error::{Error, Result};
use crate::format::{RECORD_HEADER_LEN, RECORD_HEADER_LEN_USIZE};

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
        let mut raw = [0u8; RECORD_HEADER_LEN_USIZE];
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
        let len = usize::try_from(h.payload_len).map_err(|_| {
            corrupt(format!("payload of {} bytes does not fit in memory", h.payload_len))
        })?;
        let mut payload = vec![0u8; len];
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
