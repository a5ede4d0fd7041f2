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
//!
//! The code is split by what it handles: `scan` is the collect itself (reading, hashing,
//! comparing, handing changes to the sink), `map` the baseline map file and its hashes, and
//! `intent` the intent log.

mod intent;
mod map;
mod scan;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use self::intent::{INTENT_HEADER_LEN, IntentLog, intent_header, range_record};
pub use self::map::map_file_size;
use super::{CycleStats, ReadThrottle, Sink, Tracker, TrackerError};
use crate::disk::Disk;
use crate::freespace::MAX_FREE_EXTENTS;

// The sizes the map header records are defined as u32, their type there, and widened.
const BLOCK_SIZE_U32: u32 = 64 * 1024;
const SUB_BLOCK_SIZE_U32: u32 = 4096;
const MAP_HEADER_LEN_U32: u32 = 96;

/// Bytes per block: the unit of the 64-bit hash.
pub const BLOCK_SIZE: u64 = BLOCK_SIZE_U32 as u64;
/// [`BLOCK_SIZE`] as a buffer length.
const BLOCK_SIZE_USIZE: usize = BLOCK_SIZE_U32 as usize;
/// Bytes per sub-block: the unit of the 32-bit hashes and of what is sent.
pub const SUB_BLOCK_SIZE: u64 = SUB_BLOCK_SIZE_U32 as u64;
/// [`SUB_BLOCK_SIZE`] as a buffer length.
const SUB_BLOCK_SIZE_USIZE: usize = SUB_BLOCK_SIZE_U32 as usize;
/// Sub-blocks per block.
pub const SUBS_PER_BLOCK: usize = BLOCK_SIZE_USIZE / SUB_BLOCK_SIZE_USIZE;
/// [`MAP_ENTRY_LEN`] as a buffer length.
const MAP_ENTRY_LEN_USIZE: usize = 8 + 4 * SUBS_PER_BLOCK;
/// Bytes of map per block: an 8-byte block hash and sixteen 4-byte sub-block hashes.
pub const MAP_ENTRY_LEN: u64 = MAP_ENTRY_LEN_USIZE as u64;
/// The map file's first eight bytes. Frozen: never changes, whatever the version.
pub const MAP_MAGIC: [u8; 8] = *b"LBHSMAP\0";
/// The map format version this code writes and reads.
pub const MAP_VERSION: u32 = 1;
/// Bytes of map header before the first entry.
pub const MAP_HEADER_LEN: u64 = MAP_HEADER_LEN_U32 as u64;
/// [`MAP_HEADER_LEN`] as a buffer length.
const MAP_HEADER_LEN_USIZE: usize = MAP_HEADER_LEN_U32 as usize;
/// Blocks per checksummed map segment (256 MiB of disk, 288 KiB of map).
pub const MAP_SEGMENT_BLOCKS: u64 = 4096;

/// The largest chunk read at once.
const MAX_CHUNK: u64 = 256 << 20;
/// A mask with every sub-block of a block.
const FULL: u16 = u16::MAX;

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
    /// The largest [`Change::Data`](super::Change::Data) reported: a multiple of 4 KiB, at most `chunk_size`.
    /// Default 1 MiB.
    pub max_change: u64,
    /// With no map at all, assume the target's replica is blank (reads as zeros): the initial
    /// copy then skips zeros and holes. When false, a missing map is treated like a corrupt
    /// one (everything is sent, zeros as [`Change::Zero`](super::Change::Zero)). Default true.
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
    free_override: Option<Vec<std::ops::Range<u64>>>,
    /// Holds the advisory lock on `P.lock` while the tracker lives.
    _lock: File,
}

#[derive(Debug)]
struct Pending {
    /// Length of the intent log when the collect finished; records past it came later
    /// (invalidations) and survive the commit.
    intent_len: u64,
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
                let tail_len = usize::try_from(len - keep_from).map_err(|_| {
                    io::Error::other(format!(
                        "{} bytes of intent records to keep do not fit in memory",
                        len - keep_from
                    ))
                })?;
                let mut tail = vec![0u8; tail_len];
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
                ms = crate::millis(s.duration),
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

#[cfg(test)]
mod tests;
