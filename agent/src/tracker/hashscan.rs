//! The hash-scan tracker: the universal fallback that needs nothing from the kernel.
//!
//! Every cycle it reads the whole disk (skipping the holes of a sparse image and the free
//! space of a mounted ext4 or XFS filesystem, see [`crate::freespace`]) and compares each
//! 64 KiB block with the *baseline map*, a file holding, per block, a 64-bit hash and
//! sixteen 32-bit hashes of its 4 KiB sub-blocks. A block whose hash changed is reported
//! sub-block by sub-block, so a 4 KiB write ships 4 KiB. See `docs/tracker.md` for the file
//! formats, the map's size per TiB of disk and the collision analysis.
//!
//! State kept beside the map path `P` (one tracker per disk, one directory per agent):
//!
//! - `P`: the baseline map, what the target's replica holds (replaced atomically at commit);
//! - `P.next`: the map being written by the current collect, installed by [`Tracker::commit`];
//! - `P.intent`: the intent log, the sub-blocks handed to the sink since the last commit. It is
//!   made durable *before* the sink sees them, so after a crash the next collect re-sends them
//!   whatever the disk holds then (the journal may already have shipped them);
//! - `P.lock`: an advisory lock so two trackers never share one map.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{Change, CycleStats, ReadThrottle, Sink, Tracker, TrackerError};
use crate::disk::{DataRanges, Disk, DiskKind};
use crate::freespace::{self, FreeExtents, MAX_FREE_EXTENTS};

/// Bytes per block: the unit of the 64-bit hash.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Bytes per sub-block: the unit of the 32-bit hashes and of what is sent.
pub const SUB_BLOCK_SIZE: u64 = 4096;
/// Sub-blocks per block.
pub const SUBS_PER_BLOCK: usize = (BLOCK_SIZE / SUB_BLOCK_SIZE) as usize;
/// Bytes of map per block: an 8-byte block hash and sixteen 4-byte sub-block hashes.
pub const MAP_ENTRY_LEN: u64 = 8 + 4 * SUBS_PER_BLOCK as u64;
/// The map file's first eight bytes. Frozen: never changes, whatever the version.
pub const MAP_MAGIC: [u8; 8] = *b"LBHSMAP\0";
/// The map format version this code writes and reads.
pub const MAP_VERSION: u32 = 1;
/// Bytes of map header before the first entry.
pub const MAP_HEADER_LEN: u64 = 96;
/// Blocks per checksummed map segment (256 MiB of disk, 288 KiB of map).
pub const MAP_SEGMENT_BLOCKS: u64 = 4096;

const INTENT_MAGIC: [u8; 8] = *b"LBHSINT\0";
const INTENT_VERSION: u32 = 1;
const INTENT_HEADER_LEN: u64 = 24;
const INTENT_MASKS: u32 = 1;
const INTENT_RANGE: u32 = 2;
/// The largest intent record: a masks record for a maximal chunk.
const INTENT_MAX_RECORD: u64 = 24 + 2 * (MAX_CHUNK / BLOCK_SIZE);

const MAX_CHUNK: u64 = 256 << 20;
/// Blocks covered by one intent window record (64 MiB of disk).
const INTENT_WINDOW_BLOCKS: u64 = (64 << 20) / BLOCK_SIZE;
const FULL: u16 = u16::MAX;
/// Mixed into the seed of the block-level hash so it differs from a sub-block hash.
const BLOCK_HASH_TAG: u64 = 0x9e37_79b9_7f4a_7c15;
/// How many bad map segments are reported one by one before only counting them.
const SEGMENT_WARNINGS: u64 = 3;

static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

/// Size in bytes of the baseline map for a disk of `disk_size` bytes.
pub fn map_file_size(disk_size: u64) -> u64 {
    let blocks = disk_size.div_ceil(BLOCK_SIZE);
    MAP_HEADER_LEN + blocks * MAP_ENTRY_LEN + blocks.div_ceil(MAP_SEGMENT_BLOCKS) * 8
}

/// How a [`HashScan`] works.
#[derive(Debug, Clone)]
pub struct HashScanConfig {
    /// Where the baseline map lives; `.next`, `.intent` and `.lock` files are kept beside it.
    pub map_path: PathBuf,
    /// The protected disk's identity (e.g. its registration UUID). A map recorded for another
    /// identity is not used (the cycle compares against no baseline).
    pub disk_id: [u8; 16],
    /// Bytes read per request: a multiple of 64 KiB, at most 256 MiB. Default 4 MiB.
    pub chunk_size: u64,
    /// The largest [`Change::Data`] reported: a multiple of 4 KiB, at most `chunk_size`.
    /// Default 1 MiB.
    pub max_change: u64,
    /// With no map at all, assume the target's replica is blank (reads as zeros): the initial
    /// copy then skips zeros and holes. When false, a missing map is treated like a corrupt
    /// one (everything is sent, zeros as [`Change::Zero`]). Default true.
    pub blank_target_without_map: bool,
    /// Drop what the scan read from the page cache, so a full-disk scan does not evict the
    /// server's working set. Default true.
    pub drop_cache: bool,
    /// Neither read nor send the free space of an ext4 or XFS filesystem mounted on the disk
    /// (or on one of its partitions), asked with `FS_IOC_GETFSMAP` at the start of every
    /// collect; see [`crate::freespace`]. Where it is not available the disk is read whole.
    /// Default true.
    pub skip_free_space: bool,
}

impl HashScanConfig {
    /// The defaults, with the map at `map_path`.
    pub fn new(map_path: impl Into<PathBuf>) -> Self {
        Self {
            map_path: map_path.into(),
            disk_id: [0; 16],
            chunk_size: 4 << 20,
            max_change: 1 << 20,
            blank_target_without_map: true,
            drop_cache: true,
            skip_free_space: true,
        }
    }
}

/// The hash-scan tracker; see the module documentation.
#[derive(Debug)]
pub struct HashScan {
    cfg: HashScanConfig,
    throttle: Option<ReadThrottle>,
    /// The read buffer, one chunk, reused every cycle.
    buf: Vec<u8>,
    /// Set by a successful collect, taken by commit.
    pending: Option<Pending>,
    /// Blocks per segment in maps this tracker writes (smaller in tests).
    segment_blocks: u64,
    /// The most free extents kept per collect (smaller in tests).
    free_cap: usize,
    /// The free-space mode last logged at info: which filesystems (None: not skipping).
    free_mode: Option<String>,
    /// Tests: these ranges are free, instead of asking the filesystem.
    #[cfg(test)]
    free_override: Option<Vec<Range<u64>>>,
    /// Holds the advisory lock on `P.lock` while the tracker lives.
    _lock: File,
}

#[derive(Debug)]
struct Pending {
    /// Length of the intent log when the collect finished; records past it came later
    /// (invalidations) and survive the commit.
    intent_len: u64,
}

/// Why an existing map cannot be used. Reported as a warning; the cycle then compares against
/// no baseline, which is always safe.
#[derive(Debug, thiserror::Error)]
enum MapDefect {
    #[error("cannot read its header: {0}")]
    Io(#[from] io::Error),
    #[error("it does not start with the map magic (not a Lifeboat hash-scan map)")]
    Magic,
    #[error("its header checksum does not match (corrupt)")]
    HeaderChecksum,
    #[error("it is format version {0}, this agent reads version {MAP_VERSION}")]
    Version(u32),
    #[error(
        "it uses {block}-byte blocks and {sub}-byte sub-blocks, this agent uses {BLOCK_SIZE} and {SUB_BLOCK_SIZE}"
    )]
    Geometry { block: u32, sub: u32 },
    #[error("its header is inconsistent ({0})")]
    Inconsistent(&'static str),
    #[error("it was recorded for another disk (disk id differs)")]
    OtherDisk,
}

impl HashScan {
    /// A tracker keeping its state at `cfg.map_path`. Creates the directory if needed and
    /// takes an advisory lock so no other tracker uses the same map.
    pub fn new(cfg: HashScanConfig) -> Result<Self, TrackerError> {
        let bad = |reason: String| TrackerError::Config { tracker: "hashscan", reason };
        if cfg.chunk_size == 0
            || !cfg.chunk_size.is_multiple_of(BLOCK_SIZE)
            || cfg.chunk_size > MAX_CHUNK
        {
            return Err(bad(format!(
                "chunk_size {} must be a non-zero multiple of {BLOCK_SIZE} of at most {MAX_CHUNK}",
                cfg.chunk_size
            )));
        }
        if cfg.max_change == 0
            || !cfg.max_change.is_multiple_of(SUB_BLOCK_SIZE)
            || cfg.max_change > cfg.chunk_size
        {
            return Err(bad(format!(
                "max_change {} must be a non-zero multiple of {SUB_BLOCK_SIZE} of at most chunk_size ({})",
                cfg.max_change, cfg.chunk_size
            )));
        }
        if cfg.map_path.file_name().is_none() {
            return Err(bad(format!("map_path {} must name a file", cfg.map_path.display())));
        }
        let dir = parent_dir(&cfg.map_path);
        fs::create_dir_all(&dir).map_err(state(&dir, "create the state directory"))?;
        let lock_path = sibling(&cfg.map_path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(state(&lock_path, "open the lock file"))?;
        lifeboat_common::lock::lock_exclusive(&lock).map_err(|e| TrackerError::State {
            path: lock_path.clone(),
            action: "lock (is another agent or tracker using this map?)",
            source: e.into(),
        })?;
        // Leftovers of a collect that was never committed, or of an interrupted commit.
        for leftover in [sibling(&cfg.map_path, ".next"), sibling(&cfg.map_path, ".intent.tmp")] {
            match fs::remove_file(&leftover) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(state(&leftover, "remove the leftover")(e)),
            }
        }
        Ok(Self {
            cfg,
            throttle: None,
            buf: Vec::new(),
            pending: None,
            segment_blocks: MAP_SEGMENT_BLOCKS,
            free_cap: MAX_FREE_EXTENTS,
            free_mode: None,
            #[cfg(test)]
            free_override: None,
            _lock: lock,
        })
    }

    /// Caps the tracker's disk reads (None: no cap).
    pub fn set_throttle(&mut self, throttle: Option<ReadThrottle>) {
        self.throttle = throttle;
    }

    /// Caps the tracker's disk reads at `bytes_per_sec` (None: no cap), keeping an existing
    /// throttle's credit.
    pub fn set_read_rate(&mut self, bytes_per_sec: Option<NonZeroU64>) {
        match (bytes_per_sec, &mut self.throttle) {
            (None, _) => self.throttle = None,
            (Some(rate), Some(t)) => t.set_rate(rate),
            (Some(rate), None) => self.throttle = Some(ReadThrottle::new(rate)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HashScanConfig {
        &self.cfg
    }

    fn next_path(&self) -> PathBuf {
        sibling(&self.cfg.map_path, ".next")
    }

    fn intent_path(&self) -> PathBuf {
        sibling(&self.cfg.map_path, ".intent")
    }

    /// Opens the old map, or decides there is none. Returns the baseline, the hash seed to
    /// use, and whether this is an initial copy to a blank target.
    fn open_baseline(&self, disk: &Disk) -> Result<(Baseline, u64, bool), TrackerError> {
        let path = &self.cfg.map_path;
        let size = disk.size();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let seed = fresh_seed();
                let hasher = Hasher::new(seed);
                return Ok(if self.cfg.blank_target_without_map {
                    tracing::info!(
                        disk = %disk.path().display(),
                        map = %path.display(),
                        "no baseline map: initial copy to a blank replica (holes and zero blocks are not sent)"
                    );
                    (Baseline::blank(&hasher, size), seed, true)
                } else {
                    tracing::warn!(
                        disk = %disk.path().display(),
                        map = %path.display(),
                        "no baseline map and the target is not known to be blank: sending the whole disk (zeros as zero ranges)"
                    );
                    (Baseline::Unknown, seed, false)
                });
            }
            Err(e) => return Err(state(path, "open the baseline map")(e)),
        };
        let header = match Header::read(&file).and_then(|h| {
            if h.disk_id == self.cfg.disk_id { Ok(h) } else { Err(MapDefect::OtherDisk) }
        }) {
            Ok(h) => h,
            Err(defect) => {
                tracing::warn!(
                    disk = %disk.path().display(),
                    map = %path.display(),
                    "baseline map is unusable ({defect}); comparing against no baseline: this cycle re-sends the whole disk (zeros as zero ranges), nothing is lost. If this repeats, check the storage holding the map"
                );
                return Ok((Baseline::Unknown, fresh_seed(), false));
            }
        };
        let blocks = size.div_ceil(BLOCK_SIZE);
        let known_blocks = if header.disk_size == size {
            blocks
        } else {
            tracing::warn!(
                disk = %disk.path().display(),
                map = %path.display(),
                old_size = header.disk_size,
                new_size = size,
                "disk was resized since the last cycle: the part past the old size (and the old last block) is sent whole"
            );
            header.disk_size.min(size) / BLOCK_SIZE
        };
        let reader = MapReader {
            file,
            path: path.clone(),
            seed: header.seed,
            segment_blocks: header.segment_blocks,
            map_blocks: header.block_count,
            known_blocks,
            segment: None,
            segment_ok: false,
            buf: Vec::new(),
            bad_segments: 0,
        };
        Ok((Baseline::Map(reader), header.seed, false))
    }

    /// The ranges of `disk` that its mounted filesystem says are free now, aligned to whole
    /// blocks; empty when that is not known. Logs at info when the mode changes (the first
    /// time free space is skipped, another filesystem, or no longer), at debug otherwise.
    fn free_space(&mut self, disk: &Disk) -> FreeExtents {
        #[cfg(test)]
        if let Some(fixed) = &self.free_override {
            let mut b = freespace::FreeExtentsBuilder::new(BLOCK_SIZE, self.free_cap);
            fixed.iter().for_each(|r| b.push(r.clone()));
            return b.finish();
        }
        if !self.cfg.skip_free_space {
            return FreeExtents::default();
        }
        match freespace::query(disk, BLOCK_SIZE, self.free_cap) {
            Ok(fs) => {
                let key = fs.mode_key();
                let usable = freespace::human_bytes(fs.extents.bytes());
                if self.free_mode.as_ref() != Some(&key) {
                    tracing::info!(
                        disk = %disk.path().display(),
                        "skipping free space of {fs} ({usable} in whole {} KiB blocks): neither read nor sent",
                        BLOCK_SIZE / 1024
                    );
                    self.free_mode = Some(key);
                } else {
                    tracing::debug!(disk = %disk.path().display(), "skipping free space of {fs} ({usable} in whole blocks)");
                }
                if let Some(min) = fs.extents.dropped_below() {
                    tracing::debug!(
                        disk = %disk.path().display(),
                        "free space is fragmented: keeping {} extents, those shorter than {} are read",
                        fs.extents.ranges().len(),
                        freespace::human_bytes(min)
                    );
                }
                fs.extents
            }
            Err(reason) => {
                if self.free_mode.take().is_some() {
                    tracing::info!(
                        disk = %disk.path().display(),
                        "no longer skipping free space, the whole disk is read: {reason}"
                    );
                } else {
                    tracing::debug!(
                        disk = %disk.path().display(),
                        "free space not known, the whole disk is read: {reason}"
                    );
                }
                FreeExtents::default()
            }
        }
    }

    fn collect_inner(
        &mut self,
        disk: &Disk,
        sink: &mut Sink<'_>,
    ) -> Result<CycleStats, TrackerError> {
        let started = Instant::now();
        self.pending = None;
        let size = disk.size();
        let blocks = size.div_ceil(BLOCK_SIZE);
        let (mut baseline, seed, initial) = self.open_baseline(disk)?;
        let hasher = Hasher::new(seed);
        let intent_path = self.intent_path();
        let (mut intent, mut flux) = IntentLog::load(&intent_path, Some(blocks))?;
        if flux.all {
            tracing::warn!(
                disk = %disk.path().display(),
                intent = %intent_path.display(),
                "intent log is corrupt: the whole disk is sent this cycle (zeros as zero ranges), nothing is lost. If this repeats, check the storage holding it"
            );
        }
        let header = Header {
            disk_size: size,
            block_count: blocks,
            seed,
            disk_id: self.cfg.disk_id,
            segment_blocks: self.segment_blocks,
        };
        let next_path = self.next_path();
        let mut writer = MapWriter::create(&next_path, &header)
            .map_err(state(&next_path, "write the new baseline map"))?;

        let chunk = self.cfg.chunk_size;
        self.buf.resize(chunk as usize, 0);
        let mut stats = CycleStats { disk_size: size, initial, ..CycleStats::default() };
        let mut ranges = DataCursor::new(disk.data_ranges())?;
        let free = self.free_space(disk);
        let mut free_cursor = free.cursor();
        let mut batch = Batch::default();
        let zero_full = hasher.zero_entry(BLOCK_SIZE as usize);
        let mut states: Vec<BlockState> = Vec::with_capacity((chunk / BLOCK_SIZE) as usize);
        let mut masks: Vec<u16> = Vec::with_capacity((chunk / BLOCK_SIZE) as usize);

        // Blocks below this are already uncertain in the intent log (a window record).
        let mut covered_until = 0u64;
        let mut off = 0u64;
        while off < size {
            let end = (off + chunk).min(size);

            // Decide, block by block, where its current content comes from: a read, a hole
            // (zeros), or nowhere because the filesystem says the block is free.
            let span = ranges.span(off, end)?;
            states.clear();
            masks.clear();
            let mut b_off = off;
            while b_off < end {
                let b_end = (b_off + BLOCK_SIZE).min(end);
                let valid = valid_mask((b_end - b_off) as usize);
                let uncertain = flux.get(b_off / BLOCK_SIZE) & valid;
                let old = baseline.entry(b_off / BLOCK_SIZE);
                let source = if free_cursor.covers(b_off, b_end) {
                    // The target keeps what the baseline says it holds; where the baseline
                    // is not trusted, the block is made zeros there (no read, no payload).
                    if uncertain == 0 && old.is_some() {
                        Source::FreeKept
                    } else {
                        Source::FreeZero
                    }
                } else if span.as_ref().is_some_and(|s| s.start < b_end && s.end > b_off) {
                    Source::Read
                } else {
                    Source::Hole
                };
                states.push(BlockState {
                    off: b_off,
                    end: b_end,
                    send: 0,
                    zero: 0,
                    source,
                    old,
                    uncertain,
                });
                b_off = b_end;
            }

            // Read each run of blocks to read in one request, from its first to its last data
            // byte; the partial blocks around that are zero-filled (they are holes).
            let mut i = 0;
            while i < states.len() {
                if states[i].source != Source::Read {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while states.get(j).is_some_and(|st| st.source == Source::Read) {
                    j += 1;
                }
                let s = span.as_ref().expect("a block to read overlaps the data span");
                let (run_start, run_end) = (states[i].off, states[j - 1].end);
                let (r_start, r_end) = (run_start.max(s.start), run_end.min(s.end));
                let buf = &mut self.buf[..(end - off) as usize];
                buf[(run_start - off) as usize..(r_start - off) as usize].fill(0);
                buf[(r_end - off) as usize..(run_end - off) as usize].fill(0);
                if let Some(t) = &mut self.throttle {
                    stats.throttled += t.acquire(r_end - r_start);
                }
                if disk.kind() == DiskKind::BlockDevice {
                    // A mounted filesystem writes its files' data around the device's page
                    // cache, so pages cached earlier (readahead past a previous read, into
                    // space that was free then) may be stale: drop them, read the device.
                    disk.drop_cache(r_start, r_end - r_start);
                }
                disk.read_at(r_start, &mut buf[(r_start - off) as usize..(r_end - off) as usize])?;
                stats.bytes_read += r_end - r_start;
                if self.cfg.drop_cache {
                    disk.drop_cache(r_start, r_end - r_start);
                }
                i = j;
            }

            // Hash and compare every block of the chunk; write the new map entries.
            let buf = &self.buf[..(end - off) as usize];
            let mut last_send: Option<u64> = None;
            let mut send_bytes = 0u64;
            for st in states.iter_mut() {
                let len = (st.end - st.off) as usize;
                let valid = valid_mask(len);
                let block = st.off / BLOCK_SIZE;
                let (cur, zero) = match st.source {
                    Source::Read => hasher.block(&buf[(st.off - off) as usize..][..len]),
                    Source::FreeKept => (st.old.expect("a kept free block has a baseline"), 0),
                    Source::Hole | Source::FreeZero if len == BLOCK_SIZE as usize => {
                        (zero_full, valid)
                    }
                    Source::Hole | Source::FreeZero => (hasher.zero_entry(len), valid),
                };
                let send = match (st.source, st.old) {
                    (Source::FreeKept, _) => 0,
                    (_, None) => {
                        stats.unknown_bytes += len as u64;
                        valid
                    }
                    (_, Some(old)) => {
                        stats.unknown_bytes += mask_bytes(st.uncertain, st.off, st.end);
                        changed_mask(&old, &cur, st.uncertain, valid)
                    }
                };
                writer.push(&cur).map_err(state(&next_path, "write the new baseline map"))?;
                if send != 0 {
                    last_send = Some(block);
                    send_bytes += mask_bytes(send, st.off, st.end);
                }
                masks.push(send);
                st.send = send;
                st.zero = zero;
            }

            for st in &states {
                match st.source {
                    Source::Read => {
                        stats.zero_bytes_skipped += mask_bytes(st.zero & !st.send, st.off, st.end)
                    }
                    Source::Hole => stats.hole_bytes_skipped += st.end - st.off,
                    Source::FreeKept | Source::FreeZero => {
                        stats.free_bytes_skipped += st.end - st.off
                    }
                }
            }
            let Some(last) = last_send else {
                off = end;
                continue;
            };

            // What is handed to the sink is durable in the intent log first. Where most of the
            // chunk changes (an initial copy, heavy churn), one record covers a whole window
            // ahead, and the chunk goes to the sink straight from the read buffer: one fsync
            // per window. Elsewhere the exact sub-blocks are recorded and the changes wait in
            // the batch, so scattered small changes share one fsync per batch. After a crash a
            // window is sent whole: more than needed, never less.
            let first = off / BLOCK_SIZE;
            let buf = &self.buf[..(end - off) as usize];
            let max_change = self.cfg.max_change;
            if send_bytes * 2 >= end - off {
                if last >= covered_until {
                    covered_until = first + INTENT_WINDOW_BLOCKS.max(chunk / BLOCK_SIZE);
                    batch.intent.extend_from_slice(&range_record(first, covered_until));
                }
                batch.flush(&mut intent, sink, &mut stats, disk.path())?;
                chunk_pieces(&states, max_change, |p| {
                    let at = (p.off - off) as usize;
                    emit(p, &buf[at..], sink, &mut stats, disk.path())
                })?;
            } else {
                if last >= covered_until {
                    batch.intent.extend_from_slice(&masks_record(first, &masks));
                }
                chunk_pieces(&states, max_change, |p| {
                    batch.push(p, buf, off, max_change);
                    Ok(())
                })?;
                if batch.is_full() {
                    batch.flush(&mut intent, sink, &mut stats, disk.path())?;
                }
            }
            off = end;
        }
        batch.flush(&mut intent, sink, &mut stats, disk.path())?;
        writer.finish().map_err(state(&next_path, "write the new baseline map"))?;
        if let Baseline::Map(r) = &baseline
            && r.bad_segments > 0
        {
            tracing::warn!(
                disk = %disk.path().display(),
                map = %self.cfg.map_path.display(),
                bad_segments = r.bad_segments,
                "baseline map had corrupt segments; the disk ranges they describe were sent whole, nothing is lost. If this repeats, check the storage holding the map"
            );
        }
        self.pending = Some(Pending { intent_len: intent.len });
        stats.duration = started.elapsed();
        Ok(stats)
    }

    fn commit_inner(&mut self) -> Result<(), TrackerError> {
        let Some(pending) = self.pending.as_ref() else {
            return Err(TrackerError::NothingToCommit { tracker: "hashscan" });
        };
        let intent_len = pending.intent_len;
        let map = &self.cfg.map_path;
        let dir = parent_dir(map);
        fs::rename(self.next_path(), map).map_err(state(map, "install the new baseline map"))?;
        // From here the new baseline is in place: a later failure must not let commit run twice.
        self.pending = None;
        sync_dir(&dir)?;
        // The intent log's records up to the collect are now in the baseline; records appended
        // later (invalidations) must survive.
        let intent_path = self.intent_path();
        let len = match fs::metadata(&intent_path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(state(&intent_path, "inspect the intent log")(e)),
        };
        // Records start after the header, also when the log did not exist at collect time.
        let keep_from = intent_len.max(INTENT_HEADER_LEN);
        if len <= keep_from {
            fs::remove_file(&intent_path).map_err(state(&intent_path, "remove the intent log"))?;
        } else {
            let tmp = sibling(map, ".intent.tmp");
            let keep = (|| -> io::Result<()> {
                let src = File::open(&intent_path)?;
                let mut tail = vec![0u8; (len - keep_from) as usize];
                src.read_exact_at(&mut tail, keep_from)?;
                let mut out = File::create(&tmp)?;
                out.write_all(&intent_header())?;
                out.write_all(&tail)?;
                out.sync_all()
            })();
            keep.map_err(state(&tmp, "rewrite the intent log"))?;
            fs::rename(&tmp, &intent_path)
                .map_err(state(&intent_path, "replace the intent log"))?;
        }
        sync_dir(&dir)
    }

    /// [`Tracker::invalidate`] for many byte ranges at once: one append, one sync.
    pub fn invalidate_many(&mut self, ranges: &[(u64, u64)]) -> Result<(), TrackerError> {
        let mut recs = Vec::new();
        for &(offset, len) in ranges {
            if len == 0 {
                continue;
            }
            let first = offset / BLOCK_SIZE;
            let end = match offset.checked_add(len) {
                Some(e) => e.div_ceil(BLOCK_SIZE),
                None => u64::MAX / BLOCK_SIZE + 1,
            };
            recs.extend_from_slice(&range_record(first, end));
        }
        if recs.is_empty() {
            return Ok(());
        }
        let (mut intent, _) = IntentLog::load(&self.intent_path(), None)?;
        intent.append(&recs)
    }

    /// Whether a baseline map exists (an initial copy was committed).
    pub fn has_baseline(&self) -> bool {
        self.cfg.map_path.exists()
    }

    fn invalidate_inner(&mut self, offset: u64, len: u64) -> Result<(), TrackerError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / BLOCK_SIZE;
        let end = match offset.checked_add(len) {
            Some(e) => e.div_ceil(BLOCK_SIZE),
            None => u64::MAX / BLOCK_SIZE + 1,
        };
        let (mut intent, _) = IntentLog::load(&self.intent_path(), None)?;
        intent.append(&range_record(first, end))
    }
}

impl Tracker for HashScan {
    fn name(&self) -> &'static str {
        "hashscan"
    }

    fn collect(&mut self, disk: &Disk, sink: &mut Sink<'_>) -> Result<CycleStats, TrackerError> {
        let result = self.collect_inner(disk, sink);
        match &result {
            Ok(s) => tracing::debug!(
                disk = %disk.path().display(),
                read = s.bytes_read,
                data = s.data_bytes,
                zero = s.zero_bytes,
                free_skipped = s.free_bytes_skipped,
                extents = s.extents,
                ms = s.duration.as_millis() as u64,
                "hash-scan collect done"
            ),
            Err(e) => {
                tracing::debug!(disk = %disk.path().display(), "hash-scan collect failed: {e}")
            }
        }
        result
    }

    fn commit(&mut self) -> Result<(), TrackerError> {
        self.commit_inner()
    }

    fn invalidate(&mut self, offset: u64, len: u64) -> Result<(), TrackerError> {
        self.invalidate_inner(offset, len)
    }
}

/// One block's hashes as stored in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    hash: u64,
    sub: [u32; SUBS_PER_BLOCK],
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash.to_le_bytes());
        for s in &self.sub {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Self {
        let mut e = Entry {
            hash: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            ..Entry::default()
        };
        for (i, s) in e.sub.iter_mut().enumerate() {
            *s = u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
        }
        e
    }
}

/// The hash functions, keyed by the map's seed.
#[derive(Debug, Clone, Copy)]
struct Hasher {
    seed: u64,
    /// Hash of a full all-zero sub-block, so zero sub-blocks are recognised without hashing.
    zero_sub: u64,
}

impl Hasher {
    fn new(seed: u64) -> Self {
        Self { seed, zero_sub: xxh3_64_with_seed(&ZEROS[..SUB_BLOCK_SIZE as usize], seed) }
    }

    /// Hashes one block (64 KiB, or less at the end of the disk). Returns its map entry and
    /// the mask of its all-zero sub-blocks.
    ///
    /// Each sub-block gets a full xxh3-64; the map keeps its low 32 bits. The block hash is an
    /// xxh3-64 over the sixteen full sub-block hashes: a 64-bit hash of the whole block with
    /// every byte hashed once.
    fn block(&self, data: &[u8]) -> (Entry, u16) {
        let mut entry = Entry::default();
        let mut zero = 0u16;
        let mut subs = [0u8; 8 * SUBS_PER_BLOCK];
        let mut n = 0;
        for (i, s) in data.chunks(SUB_BLOCK_SIZE as usize).enumerate() {
            let h = if is_zero(s) {
                zero |= 1 << i;
                if s.len() == SUB_BLOCK_SIZE as usize {
                    self.zero_sub
                } else {
                    xxh3_64_with_seed(s, self.seed)
                }
            } else {
                xxh3_64_with_seed(s, self.seed)
            };
            entry.sub[i] = h as u32;
            subs[8 * i..8 * i + 8].copy_from_slice(&h.to_le_bytes());
            n = i + 1;
        }
        entry.hash = xxh3_64_with_seed(&subs[..8 * n], self.seed ^ BLOCK_HASH_TAG);
        (entry, zero)
    }

    /// The entry of an all-zero block of `len` bytes.
    fn zero_entry(&self, len: usize) -> Entry {
        self.block(&ZEROS[..len]).0
    }
}

/// Whether `b` is all zeros. Branch-free within 64-byte pieces so it vectorises.
fn is_zero(b: &[u8]) -> bool {
    let mut pieces = b.chunks_exact(64);
    for p in &mut pieces {
        if p.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&x| x == 0)
}

/// Mask of the sub-blocks that exist in a block of `len` bytes.
fn valid_mask(len: usize) -> u16 {
    let n = len.div_ceil(SUB_BLOCK_SIZE as usize);
    if n >= SUBS_PER_BLOCK { FULL } else { (1u16 << n) - 1 }
}

/// Bytes covered by the sub-blocks of `mask` in the block `start .. end`.
fn mask_bytes(mask: u16, start: u64, end: u64) -> u64 {
    let mut total = 0;
    for i in 0..SUBS_PER_BLOCK as u64 {
        if mask & (1 << i) != 0 {
            let s = start + i * SUB_BLOCK_SIZE;
            total += (s + SUB_BLOCK_SIZE).min(end).saturating_sub(s);
        }
    }
    total
}

/// Which sub-blocks of a block with baseline `old` and current hashes `cur` must be sent.
/// `uncertain` sub-blocks are sent whatever they hold. A block whose 64-bit hash changed but
/// whose 32-bit sub-block hashes all still match (a sub-hash collision) is sent whole.
fn changed_mask(old: &Entry, cur: &Entry, uncertain: u16, valid: u16) -> u16 {
    if uncertain == 0 && old.hash == cur.hash {
        return 0;
    }
    let mut m = uncertain;
    for i in 0..SUBS_PER_BLOCK {
        if old.sub[i] != cur.sub[i] {
            m |= 1 << i;
        }
    }
    m &= valid;
    if m == 0 { valid } else { m }
}

#[derive(Debug, Clone, Copy)]
struct BlockState {
    off: u64,
    end: u64,
    /// Sub-blocks to send.
    send: u16,
    /// Sub-blocks that are all zeros.
    zero: u16,
    /// Where the block's current content comes from.
    source: Source,
    /// Its baseline entry (None: unknown).
    old: Option<Entry>,
    /// Its sub-blocks the intent log holds.
    uncertain: u16,
}

/// Where a block's current content comes from in a collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Read from the disk.
    Read,
    /// Not read: a hole of a sparse image, zeros.
    Hole,
    /// Not read: free in the mounted filesystem, and the baseline is trusted there. Nothing is
    /// sent and its map entry stays what the target holds.
    FreeKept,
    /// Not read: free in the mounted filesystem, but the baseline is unknown or uncertain
    /// there. Treated as zeros, like a hole: what the target may hold is replaced by zeros.
    FreeZero,
}

/// Walks the disk's data ranges alongside the chunks.
struct DataCursor<'a> {
    ranges: DataRanges<'a>,
    cur: Option<Range<u64>>,
}

impl<'a> DataCursor<'a> {
    fn new(mut ranges: DataRanges<'a>) -> Result<Self, TrackerError> {
        let cur = ranges.next().transpose()?;
        Ok(Self { ranges, cur })
    }

    /// The smallest range covering all data in `start .. end` (chunks are visited in order).
    fn span(&mut self, start: u64, end: u64) -> Result<Option<Range<u64>>, TrackerError> {
        let mut span: Option<Range<u64>> = None;
        while let Some(r) = self.cur.clone() {
            if r.start >= end {
                break;
            }
            let s = r.start.max(start);
            let e = r.end.min(end);
            if s < e {
                span = Some(match span {
                    None => s..e,
                    Some(sp) => sp.start..e,
                });
            }
            if r.end <= end {
                self.cur = self.ranges.next().transpose()?;
            } else {
                break;
            }
        }
        Ok(span)
    }
}

/// A run of sub-blocks to report: data or zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    off: u64,
    len: u64,
    zero: bool,
}

impl Piece {
    /// Extends `self` with `next` when they are adjacent, of one kind, and data stays within
    /// `max_change`.
    fn merge(&mut self, next: Piece, max_change: u64) -> bool {
        if self.zero == next.zero
            && self.off + self.len == next.off
            && (self.zero || self.len + next.len <= max_change)
        {
            self.len += next.len;
            true
        } else {
            false
        }
    }
}

/// Calls `f` with the coalesced pieces to send in one chunk, in order.
fn chunk_pieces(
    states: &[BlockState],
    max_change: u64,
    mut f: impl FnMut(Piece) -> Result<(), TrackerError>,
) -> Result<(), TrackerError> {
    let mut run: Option<Piece> = None;
    for st in states {
        let mut s_off = st.off;
        let mut bit = 1u16;
        while s_off < st.end {
            let s_end = (s_off + SUB_BLOCK_SIZE).min(st.end);
            if st.send & bit != 0 {
                let p = Piece { off: s_off, len: s_end - s_off, zero: st.zero & bit != 0 };
                let merged = run.as_mut().is_some_and(|r| r.merge(p, max_change));
                if !merged && let Some(r) = run.replace(p) {
                    f(r)?;
                }
            }
            s_off = s_end;
            bit = bit.wrapping_shl(1);
        }
    }
    match run {
        Some(r) => f(r),
        None => Ok(()),
    }
}

/// Hands one piece to the sink; `data` starts with the piece's bytes (ignored for zeros).
fn emit(
    p: Piece,
    data: &[u8],
    sink: &mut Sink<'_>,
    stats: &mut CycleStats,
    disk: &Path,
) -> Result<(), TrackerError> {
    let change = if p.zero {
        stats.zero_bytes += p.len;
        Change::Zero { offset: p.off, len: p.len }
    } else {
        stats.data_bytes += p.len;
        Change::Data { offset: p.off, data: &data[..p.len as usize] }
    };
    stats.extents += 1;
    sink(change).map_err(|source| TrackerError::Sink {
        disk: disk.to_path_buf(),
        offset: p.off,
        source,
    })
}

/// Changes from sparse chunks waiting for their intent records to be made durable together.
/// Their data is copied out of the read buffer; bounded by [`Batch::is_full`].
#[derive(Default)]
struct Batch {
    /// Pieces in order, with where their data starts in `data`.
    pieces: Vec<(Piece, usize)>,
    data: Vec<u8>,
    /// Intent records not yet written.
    intent: Vec<u8>,
}

/// A batch is sent once it holds this much data...
const BATCH_DATA: usize = 8 << 20;
/// ...or this many pieces...
const BATCH_PIECES: usize = 16 * 1024;
/// ...or this many bytes of intent records.
const BATCH_INTENT: usize = 256 << 10;

impl Batch {
    /// Adds a piece whose data is in `buf` (the chunk starting at `buf_off`).
    fn push(&mut self, p: Piece, buf: &[u8], buf_off: u64, max_change: u64) {
        if !p.zero {
            let at = (p.off - buf_off) as usize;
            self.data.extend_from_slice(&buf[at..at + p.len as usize]);
        }
        // Data pieces are merged only with the last piece, whose bytes end `data`.
        if !self.pieces.last_mut().is_some_and(|(last, _)| last.merge(p, max_change)) {
            let at = self.data.len() - if p.zero { 0 } else { p.len as usize };
            self.pieces.push((p, at));
        }
    }

    fn is_full(&self) -> bool {
        self.data.len() >= BATCH_DATA
            || self.pieces.len() >= BATCH_PIECES
            || self.intent.len() >= BATCH_INTENT
    }

    /// Makes the intent records durable, then hands the pieces to the sink.
    fn flush(
        &mut self,
        intent: &mut IntentLog,
        sink: &mut Sink<'_>,
        stats: &mut CycleStats,
        disk: &Path,
    ) -> Result<(), TrackerError> {
        if !self.intent.is_empty() {
            intent.append(&self.intent)?;
            self.intent.clear();
        }
        for (p, at) in self.pieces.drain(..) {
            emit(p, &self.data[at..], sink, stats, disk)?;
        }
        self.data.clear();
        Ok(())
    }
}

/// The map header; see `docs/tracker.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    disk_size: u64,
    block_count: u64,
    seed: u64,
    disk_id: [u8; 16],
    segment_blocks: u64,
}

impl Header {
    fn encode(&self) -> [u8; MAP_HEADER_LEN as usize] {
        let mut h = [0u8; MAP_HEADER_LEN as usize];
        h[0..8].copy_from_slice(&MAP_MAGIC);
        h[8..12].copy_from_slice(&MAP_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(MAP_HEADER_LEN as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(SUB_BLOCK_SIZE as u32).to_le_bytes());
        h[24..28].copy_from_slice(&(self.segment_blocks as u32).to_le_bytes());
        // 28..32: flags, zero.
        h[32..40].copy_from_slice(&self.disk_size.to_le_bytes());
        h[40..48].copy_from_slice(&self.block_count.to_le_bytes());
        h[48..56].copy_from_slice(&self.seed.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_id);
        // 72..88: reserved, zero.
        let sum = xxh3_64(&h[..88]);
        h[88..96].copy_from_slice(&sum.to_le_bytes());
        h
    }

    fn read(file: &File) -> Result<Self, MapDefect> {
        let mut h = [0u8; MAP_HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)?;
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if h[0..8] != MAP_MAGIC {
            return Err(MapDefect::Magic);
        }
        if xxh3_64(&h[..88]) != u64_at(88) {
            return Err(MapDefect::HeaderChecksum);
        }
        let version = u32_at(8);
        if version != MAP_VERSION {
            return Err(MapDefect::Version(version));
        }
        if u64::from(u32_at(12)) != MAP_HEADER_LEN {
            return Err(MapDefect::Inconsistent("header length"));
        }
        let (block, sub) = (u32_at(16), u32_at(20));
        if u64::from(block) != BLOCK_SIZE || u64::from(sub) != SUB_BLOCK_SIZE {
            return Err(MapDefect::Geometry { block, sub });
        }
        let header = Header {
            segment_blocks: u64::from(u32_at(24)),
            disk_size: u64_at(32),
            block_count: u64_at(40),
            seed: u64_at(48),
            disk_id: h[56..72].try_into().expect("16 bytes"),
        };
        if header.segment_blocks == 0 || header.segment_blocks > 1 << 20 {
            return Err(MapDefect::Inconsistent("segment size"));
        }
        if header.block_count != header.disk_size.div_ceil(BLOCK_SIZE) {
            return Err(MapDefect::Inconsistent("block count does not match disk size"));
        }
        Ok(header)
    }
}

/// What the current cycle compares against.
enum Baseline {
    /// No map: the target is blank, every block's baseline is all zeros.
    Blank { full: Entry, last: Entry, last_block: u64 },
    /// No usable map: nothing is known, every block is sent.
    Unknown,
    /// The previous cycle's map.
    Map(MapReader),
}

impl Baseline {
    fn blank(hasher: &Hasher, size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK_SIZE);
        let tail = size % BLOCK_SIZE;
        let full = hasher.zero_entry(BLOCK_SIZE as usize);
        Baseline::Blank {
            full,
            last: if tail == 0 { full } else { hasher.zero_entry(tail as usize) },
            last_block: blocks.saturating_sub(1),
        }
    }

    /// The baseline entry of `block` (blocks are asked for in ascending order), or None when
    /// the baseline does not know it.
    fn entry(&mut self, block: u64) -> Option<Entry> {
        match self {
            Baseline::Blank { full, last, last_block } => {
                Some(if block == *last_block { *last } else { *full })
            }
            Baseline::Unknown => None,
            Baseline::Map(r) => r.entry(block),
        }
    }
}

/// Streams the old map segment by segment, checking each segment before using it.
struct MapReader {
    file: File,
    path: PathBuf,
    seed: u64,
    segment_blocks: u64,
    map_blocks: u64,
    /// Blocks below this are described by the map for the disk's current size.
    known_blocks: u64,
    segment: Option<u64>,
    segment_ok: bool,
    buf: Vec<u8>,
    bad_segments: u64,
}

impl MapReader {
    fn entry(&mut self, block: u64) -> Option<Entry> {
        if block >= self.known_blocks || block >= self.map_blocks {
            return None;
        }
        let seg = block / self.segment_blocks;
        if self.segment != Some(seg) {
            self.load(seg);
        }
        if !self.segment_ok {
            return None;
        }
        let i = ((block - seg * self.segment_blocks) * MAP_ENTRY_LEN) as usize;
        Some(Entry::decode(&self.buf[i..i + MAP_ENTRY_LEN as usize]))
    }

    fn load(&mut self, seg: u64) {
        self.segment = Some(seg);
        let first = seg * self.segment_blocks;
        let n = self.segment_blocks.min(self.map_blocks - first);
        let len = (n * MAP_ENTRY_LEN) as usize;
        let at = MAP_HEADER_LEN + seg * (self.segment_blocks * MAP_ENTRY_LEN + 8);
        self.buf.resize(len + 8, 0);
        let problem = match self.file.read_exact_at(&mut self.buf, at) {
            Err(e) => Some(format!("cannot read it: {e}")),
            Ok(()) => {
                let stored = u64::from_le_bytes(self.buf[len..].try_into().expect("8 bytes"));
                (segment_checksum(&self.buf[..len], self.seed, seg) != stored)
                    .then(|| "checksum mismatch".to_string())
            }
        };
        self.segment_ok = problem.is_none();
        if let Some(problem) = problem {
            self.bad_segments += 1;
            if self.bad_segments <= SEGMENT_WARNINGS {
                tracing::warn!(
                    map = %self.path.display(),
                    segment = seg,
                    disk_range = ?(first * BLOCK_SIZE..(first + n) * BLOCK_SIZE),
                    "baseline map segment is unusable ({problem}); its disk range is sent whole this cycle, nothing is lost"
                );
            }
        }
    }
}

fn segment_checksum(entries: &[u8], seed: u64, segment: u64) -> u64 {
    xxh3_64_with_seed(entries, seed.wrapping_add(segment))
}

/// Writes the new map: header, then checksummed segments.
struct MapWriter {
    out: BufWriter<File>,
    seed: u64,
    segment_blocks: u64,
    segment: u64,
    buf: Vec<u8>,
}

impl MapWriter {
    fn create(path: &Path, header: &Header) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&header.encode())?;
        Ok(Self {
            out,
            seed: header.seed,
            segment_blocks: header.segment_blocks,
            segment: 0,
            buf: Vec::with_capacity((header.segment_blocks * MAP_ENTRY_LEN) as usize),
        })
    }

    fn push(&mut self, e: &Entry) -> io::Result<()> {
        e.encode(&mut self.buf);
        if self.buf.len() as u64 == self.segment_blocks * MAP_ENTRY_LEN {
            self.flush_segment()?;
        }
        Ok(())
    }

    fn flush_segment(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sum = segment_checksum(&self.buf, self.seed, self.segment);
        self.out.write_all(&self.buf)?;
        self.out.write_all(&sum.to_le_bytes())?;
        self.segment += 1;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush_segment()?;
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

/// Sub-blocks that may differ from the baseline on the target, from the intent log.
#[derive(Debug, Default)]
struct Flux {
    /// Everything is uncertain (the intent log itself is corrupt).
    all: bool,
    /// Per-block masks, allocated only when some record has one.
    masks: Vec<u16>,
    /// Whole blocks, sorted and merged.
    ranges: Vec<Range<u64>>,
    next_range: usize,
}

impl Flux {
    /// The uncertain sub-blocks of `block` (blocks are asked for in ascending order).
    fn get(&mut self, block: u64) -> u16 {
        if self.all {
            return FULL;
        }
        let mut m = self.masks.get(block as usize).copied().unwrap_or(0);
        while self.ranges.get(self.next_range).is_some_and(|r| r.end <= block) {
            self.next_range += 1;
        }
        if self.ranges.get(self.next_range).is_some_and(|r| r.start <= block) {
            m = FULL;
        }
        m
    }
}

/// The append-only intent log; see the module documentation and `docs/tracker.md`.
struct IntentLog {
    path: PathBuf,
    file: Option<File>,
    /// Length of the valid log (0: no file yet).
    len: u64,
}

fn intent_header() -> [u8; INTENT_HEADER_LEN as usize] {
    let mut h = [0u8; INTENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&INTENT_MAGIC);
    h[8..12].copy_from_slice(&INTENT_VERSION.to_le_bytes());
    let sum = xxh3_64(&h[..16]);
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    h
}

fn finish_record(mut rec: Vec<u8>) -> Vec<u8> {
    let sum = xxh3_64(&rec);
    rec.extend_from_slice(&sum.to_le_bytes());
    rec
}

fn masks_record(first_block: u64, masks: &[u16]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(24 + 2 * masks.len() + 8);
    rec.extend_from_slice(&INTENT_MASKS.to_le_bytes());
    rec.extend_from_slice(&(masks.len() as u32).to_le_bytes());
    rec.extend_from_slice(&first_block.to_le_bytes());
    for m in masks {
        rec.extend_from_slice(&m.to_le_bytes());
    }
    rec.resize(rec.len().next_multiple_of(8), 0);
    finish_record(rec)
}

fn range_record(first_block: u64, end_block: u64) -> Vec<u8> {
    let mut rec = Vec::with_capacity(32);
    rec.extend_from_slice(&INTENT_RANGE.to_le_bytes());
    rec.extend_from_slice(&0u32.to_le_bytes());
    rec.extend_from_slice(&first_block.to_le_bytes());
    rec.extend_from_slice(&end_block.to_le_bytes());
    finish_record(rec)
}

impl IntentLog {
    /// Reads the log at `path`. With `blocks`, returns the uncertain sub-blocks of a disk of
    /// that many blocks. A torn last record (a crash during its append, so before anything it
    /// describes reached the sink) is cut off; any other damage makes everything uncertain.
    fn load(path: &Path, blocks: Option<u64>) -> Result<(Self, Flux), TrackerError> {
        let mut flux = Flux::default();
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Self { path: path.to_path_buf(), file: None, len: 0 }, flux));
            }
            Err(e) => return Err(state(path, "open the intent log")(e)),
        };
        let file_len = file.metadata().map_err(state(path, "read the intent log"))?.len();
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut valid = 0u64;
        let mut corrupt = false;
        let mut header = [0u8; INTENT_HEADER_LEN as usize];
        match reader.read_exact(&mut header) {
            Ok(()) if header == intent_header() => valid = INTENT_HEADER_LEN,
            Ok(()) => corrupt = true,
            // A torn header: the log was being created, nothing was handed over yet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(state(path, "read the intent log")(e)),
        }
        while valid >= INTENT_HEADER_LEN && valid < file_len {
            match read_record(&mut reader) {
                Ok(Some((rec_len, rec))) => {
                    valid += rec_len;
                    if let Some(blocks) = blocks {
                        flux_add(&mut flux, rec, blocks);
                    }
                }
                Ok(None) => {
                    corrupt = !torn_tail(&file, valid, file_len)
                        .map_err(state(path, "read the intent log"))?;
                    break;
                }
                Err(e) => return Err(state(path, "read the intent log")(e)),
            }
        }
        drop(reader);
        if corrupt {
            flux.all = true;
            // Keep the file as it is (a commit replaces it); append after its end.
            valid = file_len;
        } else if valid < file_len {
            tracing::debug!(
                intent = %path.display(),
                "cutting a torn record off the intent log"
            );
            let cut = if valid < INTENT_HEADER_LEN { 0 } else { valid };
            file.set_len(cut).map_err(state(path, "repair the intent log"))?;
            file.sync_all().map_err(state(path, "repair the intent log"))?;
            valid = cut;
        }
        flux.ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(flux.ranges.len());
        for r in flux.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        flux.ranges = merged;
        Ok((Self { path: path.to_path_buf(), file: Some(file), len: valid }, flux))
    }

    /// Appends one record and makes it durable.
    fn append(&mut self, rec: &[u8]) -> Result<(), TrackerError> {
        let path = self.path.clone();
        let io = |e| state(&path, "append to the intent log")(e);
        if self.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(io)?;
            self.file = Some(f);
        }
        let file = self.file.as_ref().expect("opened above");
        if self.len < INTENT_HEADER_LEN {
            file.write_all_at(&intent_header(), 0).map_err(io)?;
            self.len = INTENT_HEADER_LEN;
            // A new file: its directory entry must be durable too.
            file.sync_all().map_err(io)?;
            sync_dir(&parent_dir(&self.path))?;
        }
        file.write_all_at(rec, self.len).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.len += rec.len() as u64;
        Ok(())
    }
}

/// Whether the damaged bytes from `at` to the end of the intent log are what a crash during
/// one append leaves: a record cut short, or zeros (a size extended before its data). Anything
/// else, a complete record with a wrong checksum included, is corruption.
fn torn_tail(file: &File, at: u64, file_len: u64) -> io::Result<bool> {
    let left = file_len - at;
    if left > INTENT_MAX_RECORD {
        return Ok(false);
    }
    let mut tail = vec![0u8; left as usize];
    file.read_exact_at(&mut tail, at)?;
    if tail.iter().all(|&b| b == 0) || tail.len() < 16 {
        return Ok(true);
    }
    let kind = u32::from_le_bytes(tail[0..4].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(tail[4..8].try_into().expect("4 bytes"));
    Ok(match record_payload_len(kind, count) {
        Some(payload) => (16 + payload + 8) as u64 > left,
        None => false,
    })
}

/// Payload length of a record with this head, or None when the head is invalid.
fn record_payload_len(kind: u32, count: u32) -> Option<usize> {
    match kind {
        INTENT_MASKS if u64::from(count) <= MAX_CHUNK / BLOCK_SIZE => {
            Some((2 * count as usize).next_multiple_of(8))
        }
        INTENT_RANGE if count == 0 => Some(8),
        _ => None,
    }
}

/// A parsed intent record.
enum Record {
    Masks { first: u64, masks: Vec<u16> },
    Range { first: u64, end: u64 },
}

/// Reads one record: Some((length, record)), or None when it is incomplete or damaged.
fn read_record(r: &mut impl Read) -> io::Result<Option<(u64, Record)>> {
    let mut head = [0u8; 16];
    if !read_full(r, &mut head)? {
        return Ok(None);
    }
    let kind = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let first = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let Some(payload_len) = record_payload_len(kind, count) else {
        return Ok(None);
    };
    let mut rest = vec![0u8; payload_len + 8];
    if !read_full(r, &mut rest)? {
        return Ok(None);
    }
    let mut whole = head.to_vec();
    whole.extend_from_slice(&rest[..payload_len]);
    let stored = u64::from_le_bytes(rest[payload_len..].try_into().expect("8 bytes"));
    if xxh3_64(&whole) != stored {
        return Ok(None);
    }
    let len = (16 + payload_len + 8) as u64;
    let payload = &rest[..payload_len];
    Ok(Some((
        len,
        if kind == INTENT_MASKS {
            Record::Masks {
                first,
                masks: payload
                    .chunks_exact(2)
                    .take(count as usize)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            }
        } else {
            Record::Range { first, end: u64::from_le_bytes(payload.try_into().expect("8 bytes")) }
        },
    )))
}

/// Fills `buf`; false at a clean or partial end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn flux_add(flux: &mut Flux, rec: Record, blocks: u64) {
    match rec {
        Record::Masks { first, masks } => {
            for (i, m) in masks.into_iter().enumerate() {
                let block = first.saturating_add(i as u64);
                if m == 0 || block >= blocks {
                    continue;
                }
                if flux.masks.is_empty() {
                    flux.masks = vec![0; blocks as usize];
                }
                flux.masks[block as usize] |= m;
            }
        }
        Record::Range { first, end } => {
            let end = end.min(blocks);
            if first < end {
                flux.ranges.push(first..end);
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), TrackerError> {
    lifeboat_common::fs::sync_dir(dir).map_err(state(dir, "sync the state directory"))
}

/// Maps an I/O error on a state file to [`TrackerError::State`].
pub(crate) fn state(
    path: &Path,
    action: &'static str,
) -> impl Fn(io::Error) -> TrackerError + use<> {
    let path = path.to_path_buf();
    move |source| TrackerError::State { path: path.clone(), action, source }
}

/// A random seed for a new map, so hash collisions cannot be crafted in advance.
fn fresh_seed() -> u64 {
    let mut b = [0u8; 8];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(b),
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            xxh3_64(&[t.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat())
        }
    }
}

#[cfg(test)]
mod tests;
