//! The eBPF tracker: block-layer write tracking with no kernel module.
//!
//! A BPF program (`src/bpf/tracker.bpf.c`, loaded through libbpf, CO-RE) on the
//! `block_bio_queue` and `block_rq_complete` tracepoints sets a bit per written 4 KiB block
//! in a per-disk bitmap kept in the kernel, double-buffered in *epochs*. A collect flips the
//! disk's epoch, waits for programs still in the old one, takes the old bitmap (clearing it)
//! and reads exactly those blocks, so the bytes shipped follow the bytes written. The maps
//! and links are pinned in bpffs (`/sys/fs/bpf/lifeboat/v<layout>-<name>/`): tracking goes
//! on while the agent restarts or is upgraded.
//!
//! # Never losing a write
//!
//! - Blocks are marked when a write is queued *and* when it completes; the disk is read with
//!   `O_DIRECT` after the flip. A write that landed before the read is seen by the read; one
//!   still in flight is marked again in the new epoch when it completes.
//! - What a collect took from the kernel is first written durably to `P.ebpf-pending` (`P`
//!   the disk's hash-scan map path) and removed only at commit, so a crash or a failed cycle
//!   reports it again (the kernel bitmap no longer has it).
//! - *Gaps*: tracking may not have been continuous — first start, the tracker reloaded, a
//!   reboot, the disk re-registered, or the program could not record something (overflow).
//!   Each registration carries a random token; the agent keeps the token it last committed
//!   in `P.ebpf-token`. Any mismatch, or an overflow, is answered by a hash-compare collect
//!   of the hash-scan tracker ([`HashScan`]), never by a blind full copy: it reads the disk,
//!   compares every 64 KiB block with its baseline map, and sends what differs plus every
//!   block the eBPF tracker shipped since that map was made (`P.ebpf-shipped`, a bit per
//!   64 KiB block: the map does not know what those hold at the target). The first collect
//!   of a disk is such a collect: the initial copy.
//!
//! Devices: whole block devices with a request queue (disks, NVMe, virtio, loop devices).
//! Bio-based devices (device-mapper/LVM, md) complete writes without a request, so a write
//! in flight during a read would not be marked again: they use the hash scan (the agent says
//! so). Writes are seen on the device they are issued to: writes to a loop device's
//! *backing file* that bypass the loop device are not.

mod kernel;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use self::kernel::{Bpf, BpfError, Harvest, SlotCounters, SlotInfo, kernel_dev, merge};
use super::hashscan::{parent_dir, sibling, state, sync_dir};
use super::{Capture, Change, CycleStats, HashScan, Sink, Tracker, TrackerError};
use crate::disk::Disk;

/// Bytes per tracked block.
pub const BLOCK: u64 = BLOCK_USIZE as u64;
/// [`BLOCK`] as a buffer length.
const BLOCK_USIZE: usize = 4096;
/// Bytes per bit of the shipped map (the hash-scan block).
const SHIPPED_BLOCK: u64 = super::hashscan::BLOCK_SIZE;
/// Bytes read at once.
const CHUNK: usize = 1 << 20;

const PENDING_MAGIC: [u8; 8] = *b"LBEBPND\0";
const SHIPPED_MAGIC: [u8; 8] = *b"LBEBSHP\0";
const FILE_VERSION: u32 = 1;
const MAX_PENDING_RANGES: u64 = 1 << 24;

/// Bitmap words the kernel needs to follow disks of these sizes (both epochs).
pub fn words_for(disk_sizes: &[u64]) -> u64 {
    disk_sizes.iter().map(|s| 2 * s.div_ceil(BLOCK).div_ceil(64).max(1)).sum()
}

/// What the last collect did, for commit.
#[derive(Debug)]
struct Last {
    /// It was a hash-compare collect of the hash-scan tracker.
    delegated: bool,
    /// The 4 KiB block ranges it reported (not delegated).
    ranges: Vec<(u64, u64)>,
    /// The registration token the collect started from.
    token: u64,
}

/// The eBPF tracker of one disk; see the module documentation.
pub struct Ebpf {
    hs: HashScan,
    bpf: Arc<Bpf>,
    path: PathBuf,
    dev: u32,
    info: SlotInfo,
    map_path: PathBuf,
    last: Option<Last>,
    buf: Vec<u8>,
    /// Pending ranges loaded by `prepare_cut` (the file now says incomplete).
    cut: Option<Vec<(u64, u64)>>,
    /// What `capture` took under the freeze, for the next collect.
    captured: Option<Captured>,
}

/// Changes taken under a freeze, waiting for the thaw.
#[derive(Debug)]
struct Captured {
    ranges: Vec<(u64, u64)>,
    harvest: Harvest,
    /// (offset, bytes) as read.
    data: Vec<(u64, Vec<u8>)>,
}

impl std::fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ebpf").field("path", &self.path).field("info", &self.info).finish()
    }
}

fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let off = buf.as_ptr().align_offset(BLOCK_USIZE);
    &mut buf[off..off + CHUNK]
}

impl Ebpf {
    /// Follows the block device at `path` with `bpf`; `hs` is the disk's hash-scan tracker
    /// (its map path decides where this tracker keeps its files), used for gaps.
    pub fn new(hs: HashScan, bpf: Arc<Bpf>, path: &Path) -> Result<Ebpf, TrackerError> {
        let config = |reason: String| TrackerError::Config { tracker: "ebpf", reason };
        let meta = fs::metadata(path).map_err(state(path, "inspect the disk"))?;
        if !meta.file_type().is_block_device() {
            return Err(config(format!(
                "{} is not a block device: block-layer tracking sees block devices only",
                path.display()
            )));
        }
        let (major, minor) = (rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev()));
        if !Path::new(&format!("/sys/dev/block/{major}:{minor}/mq")).exists() {
            return Err(config(format!(
                "{} is a bio-based device (device-mapper, md): its writes complete without a request, so a write in flight during a read could be missed",
                path.display()
            )));
        }
        let size = Disk::open(path)?.size();
        let dev = kernel_dev(meta.rdev());
        let info = bpf
            .register(dev, size.div_ceil(BLOCK))
            .map_err(|e| config(format!("cannot follow {}: {e}", path.display())))?;
        let map_path = hs.config().map_path.clone();
        Ok(Ebpf {
            hs,
            bpf,
            path: path.to_path_buf(),
            dev,
            info,
            map_path,
            last: None,
            buf: vec![0u8; CHUNK + BLOCK_USIZE],
            cut: None,
            captured: None,
        })
    }

    /// The disk's counters in the kernel (writes, discards, …) since it was registered.
    pub fn counters(&self) -> SlotCounters {
        self.bpf.counters(self.info.slot)
    }

    fn pending_path(&self) -> PathBuf {
        sibling(&self.map_path, ".ebpf-pending")
    }
    fn token_path(&self) -> PathBuf {
        sibling(&self.map_path, ".ebpf-token")
    }
    fn shipped_path(&self) -> PathBuf {
        sibling(&self.map_path, ".ebpf-shipped")
    }

    /// Why the next collect must compare the whole disk, if it must.
    fn gap(&mut self, harvest: &Harvest, incomplete: bool) -> Result<Option<String>, TrackerError> {
        if !self.hs.has_baseline() {
            return Ok(Some("no baseline yet: initial copy".into()));
        }
        if harvest.overflow > 0 {
            return Ok(Some("the kernel program could not record every write (overflow)".into()));
        }
        if incomplete {
            return Ok(Some(
                "the agent stopped while it was taking changes from the kernel".into(),
            ));
        }
        let saved = match fs::read_to_string(self.token_path()) {
            Ok(t) => t.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(state(&self.token_path(), "read the tracking token")(e)),
        };
        Ok(match saved {
            None => Some("tracking has no committed start on this disk".into()),
            Some(t) if t != self.info.token => Some(
                "tracking was interrupted (tracker reloaded, reboot, or the disk was registered again)".into(),
            ),
            Some(_) => None,
        })
    }

    /// Follows the disk again if the kernel's table lost it or its size changed.
    fn ensure_registered(&mut self, blocks: u64) -> Result<(), TrackerError> {
        if self.bpf.token(self.dev).ok().flatten() != Some(self.info.token)
            || self.info.blocks != blocks
        {
            self.info = self.bpf.register(self.dev, blocks).map_err(|e| TrackerError::Config {
                tracker: "ebpf",
                reason: format!("cannot follow {}: {e}", self.path.display()),
            })?;
        }
        Ok(())
    }

    fn harvest(&self) -> Result<Harvest, TrackerError> {
        self.bpf.harvest(&self.info).map_err(|e| TrackerError::Config {
            tracker: "ebpf",
            reason: format!("cannot read the write tracker for {}: {e}", self.path.display()),
        })
    }

    fn collect_inner(
        &mut self,
        disk: &Disk,
        sink: &mut Sink<'_>,
    ) -> Result<CycleStats, TrackerError> {
        let started = Instant::now();
        self.last = None;
        if let Some(c) = self.captured.take() {
            return self.collect_captured(disk, c, sink, started);
        }
        self.cut = None;
        let blocks = disk.size().div_ceil(BLOCK);
        self.ensure_registered(blocks)?;
        let (old, incomplete) = load_pending(&self.pending_path(), blocks)?;
        // Ring-buffer ranges are consumed by the harvest: until they are in the pending file,
        // the file says it is incomplete (a crash in between is then a gap).
        store_pending(&self.pending_path(), &old, true)?;
        let harvest = self.harvest()?;
        let mut ranges = old;
        ranges.extend_from_slice(&harvest.ranges);
        let ranges = merge(ranges);
        let gap = self.gap(&harvest, incomplete)?;
        // Durable before the kernel forgets them, and before anything reaches the sink. A gap
        // keeps the file incomplete until the whole-disk compare is committed, so an
        // interrupted compare is not forgotten.
        store_pending(&self.pending_path(), &ranges, gap.is_some())?;
        self.bpf.release(&self.info, &harvest);
        let token = self.info.token;
        if let Some(reason) = gap {
            tracing::info!(
                disk = %self.path.display(),
                "eBPF tracker: comparing the whole disk with its hash map ({reason}); only blocks that differ, or that were shipped since the map was made, are sent"
            );
            // Uncertain at the target: what was shipped since the map was made, and what
            // the last, uncommitted collects handed on (pending).
            let mut uncertain: Vec<(u64, u64)> = match load_shipped(&self.shipped_path()) {
                Shipped::Missing => Vec::new(),
                Shipped::Bits(bits) => bit_ranges(&bits)
                    .map(|(a, b)| (a * SHIPPED_BLOCK, (b - a) * SHIPPED_BLOCK))
                    .collect(),
                Shipped::Damaged => {
                    tracing::warn!(
                        file = %self.shipped_path().display(),
                        "the eBPF tracker's shipped-blocks map is damaged: every block is sent again"
                    );
                    vec![(0, u64::MAX)]
                }
            };
            uncertain.extend(ranges.iter().map(|&(a, b)| (a * BLOCK, (b - a) * BLOCK)));
            self.hs.invalidate_many(&uncertain)?;
            let mut stats = self.hs.collect(disk, sink)?;
            stats.duration = started.elapsed();
            self.last = Some(Last { delegated: true, ranges: Vec::new(), token });
            return Ok(stats);
        }
        let mut stats =
            CycleStats { disk_size: disk.size(), initial: false, ..CycleStats::default() };
        self.read_ranges(disk.size(), &ranges, sink, &mut stats)?;
        stats.duration = started.elapsed();
        self.last = Some(Last { delegated: false, ranges, token });
        Ok(stats)
    }

    /// After a cut: makes the captured ranges durable, lets the kernel forget them, and
    /// hands the data read under the freeze to the sink.
    fn collect_captured(
        &mut self,
        disk: &Disk,
        c: Captured,
        sink: &mut Sink<'_>,
        started: Instant,
    ) -> Result<CycleStats, TrackerError> {
        store_pending(&self.pending_path(), &c.ranges, false)?;
        self.bpf.release(&self.info, &c.harvest);
        let mut stats =
            CycleStats { disk_size: disk.size(), initial: false, ..CycleStats::default() };
        let path = self.path.clone();
        for (off, data) in &c.data {
            stats.bytes_read += data.len() as u64;
            emit(data, *off, sink, &mut stats, &path)?;
        }
        stats.duration = started.elapsed();
        self.last = Some(Last { delegated: false, ranges: c.ranges, token: self.info.token });
        Ok(stats)
    }

    fn prepare_cut_inner(&mut self, disk: &Disk) -> Result<bool, TrackerError> {
        self.captured = None;
        let blocks = disk.size().div_ceil(BLOCK);
        self.ensure_registered(blocks)?;
        let (old, incomplete) = load_pending(&self.pending_path(), blocks)?;
        if incomplete || !self.hs.has_baseline() {
            // A whole-disk compare comes first; it cannot run under a freeze.
            return Ok(false);
        }
        store_pending(&self.pending_path(), &old, true)?;
        self.cut = Some(old);
        Ok(true)
    }

    fn capture_inner(&mut self, disk: &Disk, max_bytes: u64) -> Result<Capture, TrackerError> {
        let Some(old) = self.cut.clone() else {
            return Ok(Capture::Refused("the cut was not prepared".into()));
        };
        let writes_before = self.bpf.writes(self.info.slot);
        let harvest = self.harvest()?;
        let mut ranges = old;
        ranges.extend_from_slice(&harvest.ranges);
        let ranges = merge(ranges);
        // The harvest is kept even if the capture is refused: `abort_cut` persists it.
        self.captured =
            Some(Captured { ranges: ranges.clone(), harvest: harvest.clone(), data: Vec::new() });
        if harvest.overflow > 0 {
            return Ok(Capture::Refused("the kernel program overflowed".into()));
        }
        if self.gap(&harvest, false)?.is_some() {
            return Ok(Capture::Refused(
                "tracking was interrupted: a whole-disk compare comes first".into(),
            ));
        }
        let size = disk.size();
        let total: u64 =
            ranges.iter().map(|&(a, b)| ((b * BLOCK).min(size)).saturating_sub(a * BLOCK)).sum();
        if total > max_bytes {
            return Ok(Capture::Refused(format!(
                "{total} bytes changed since the last pass, more than {max_bytes} may be read under a freeze"
            )));
        }
        let mut data = Vec::new();
        self.read_chunks(size, &ranges, |off, chunk| {
            data.push((off, chunk.to_vec()));
            Ok(())
        })?;
        if self.bpf.writes(self.info.slot) != writes_before {
            return Ok(Capture::Refused(
                "the disk was written during the capture (writes that a filesystem freeze does not hold)".into(),
            ));
        }
        if let Some(c) = &mut self.captured {
            c.data = data;
        }
        Ok(Capture::Captured { bytes: total })
    }

    fn abort_cut_inner(&mut self) -> Result<(), TrackerError> {
        match (self.captured.take(), self.cut.take()) {
            (Some(c), _) => {
                // An overflow seen here still needs its whole-disk compare.
                store_pending(&self.pending_path(), &c.ranges, c.harvest.overflow > 0)?;
                self.bpf.release(&self.info, &c.harvest);
                Ok(())
            }
            (None, Some(old)) => store_pending(&self.pending_path(), &old, false),
            (None, None) => Ok(()),
        }
    }

    fn read_ranges(
        &mut self,
        size: u64,
        ranges: &[(u64, u64)],
        sink: &mut Sink<'_>,
        stats: &mut CycleStats,
    ) -> Result<(), TrackerError> {
        let path = self.path.clone();
        self.read_chunks(size, ranges, |off, chunk| {
            stats.bytes_read += chunk.len() as u64;
            emit(chunk, off, sink, stats, &path)
        })
    }

    /// Reads `ranges` (4 KiB blocks, clipped to `size`) with direct I/O, chunk by chunk.
    fn read_chunks(
        &mut self,
        size: u64,
        ranges: &[(u64, u64)],
        mut f: impl FnMut(u64, &[u8]) -> Result<(), TrackerError>,
    ) -> Result<(), TrackerError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&self.path)
            .map_err(state(&self.path, "open the disk for direct reads"))?;
        for &(first, end) in ranges {
            let mut off = first * BLOCK;
            let end = (end * BLOCK).min(size);
            while off < end {
                let len = usize::try_from(end - off).map_or(CHUNK, |left| left.min(CHUNK));
                let buf = aligned(&mut self.buf);
                file.read_exact_at(&mut buf[..len], off).map_err(|source| {
                    TrackerError::Disk(crate::disk::DiskError::Read {
                        path: self.path.clone(),
                        offset: off,
                        len,
                        source,
                    })
                })?;
                f(off, &buf[..len])?;
                off += len as u64;
            }
        }
        Ok(())
    }

    fn commit_inner(&mut self) -> Result<(), TrackerError> {
        let Some(last) = self.last.take() else {
            return Err(TrackerError::NothingToCommit { tracker: "ebpf" });
        };
        let dir = parent_dir(&self.map_path);
        if last.delegated {
            self.hs.commit()?;
            // The new map knows every block: nothing shipped is uncertain any more.
            remove(&self.shipped_path())?;
        } else if !last.ranges.is_empty() {
            mark_shipped(&self.shipped_path(), &last.ranges, self.info.blocks)?;
        }
        write_atomic(&self.token_path(), format!("{}\n", last.token).as_bytes())?;
        remove(&self.pending_path())?;
        sync_dir(&dir)
    }

    fn invalidate_inner(&mut self, offset: u64, len: u64) -> Result<(), TrackerError> {
        if len == 0 {
            return Ok(());
        }
        self.hs.invalidate(offset, len)?;
        let end = offset.saturating_add(len).div_ceil(BLOCK).min(self.info.blocks);
        let (mut ranges, incomplete) = load_pending(&self.pending_path(), self.info.blocks)?;
        ranges.push((offset / BLOCK, end));
        store_pending(&self.pending_path(), &merge(ranges), incomplete)
    }
}

/// Hands a chunk read at `off` to the sink: zero 4 KiB pieces as zero ranges, the rest as
/// data, contiguous pieces together.
fn emit(
    buf: &[u8],
    off: u64,
    sink: &mut Sink<'_>,
    stats: &mut CycleStats,
    path: &Path,
) -> Result<(), TrackerError> {
    let mut i = 0;
    while i < buf.len() {
        let piece = |j: usize| &buf[j..(j + BLOCK_USIZE).min(buf.len())];
        let zero = piece(i).iter().all(|&b| b == 0);
        let mut j = i;
        while j < buf.len() && piece(j).iter().all(|&b| b == 0) == zero {
            j = (j + BLOCK_USIZE).min(buf.len());
        }
        let at = off + i as u64;
        let change = if zero {
            stats.zero_bytes += (j - i) as u64;
            Change::Zero { offset: at, len: (j - i) as u64 }
        } else {
            stats.data_bytes += (j - i) as u64;
            Change::Data { offset: at, data: &buf[i..j] }
        };
        stats.extents += 1;
        sink(change).map_err(|source| TrackerError::Sink {
            disk: path.to_path_buf(),
            offset: at,
            source,
        })?;
        i = j;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), TrackerError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state(path, "remove")(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrackerError> {
    lifeboat_common::fs::write_atomic(path, bytes, None).map_err(state(path, "write"))
}

/// Pending-file flag: the ranges may lack what a harvest in progress took from the kernel.
const INCOMPLETE: u32 = 1;

/// Encodes the pending ranges (format: magic, version, flags, count, ranges, xxh3 of the
/// rest).
fn encode_pending(ranges: &[(u64, u64)], incomplete: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + ranges.len() * 16 + 8);
    out.extend_from_slice(&PENDING_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&(if incomplete { INCOMPLETE } else { 0 }).to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    for &(a, b) in ranges {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes pending ranges and the incomplete flag; `None` for anything malformed.
fn decode_pending(bytes: &[u8]) -> Option<(Vec<(u64, u64)>, bool)> {
    if bytes.len() < 32 || bytes[..8] != PENDING_MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    if u32::from_le_bytes(body[8..12].try_into().ok()?) != FILE_VERSION {
        return None;
    }
    let flags = u32::from_le_bytes(body[12..16].try_into().ok()?);
    if flags & !INCOMPLETE != 0 {
        return None;
    }
    let count = u64::from_le_bytes(body[16..24].try_into().ok()?);
    if count > MAX_PENDING_RANGES || body.len() as u64 != 24 + count * 16 {
        return None;
    }
    let mut out = Vec::with_capacity(usize::try_from(count).ok()?);
    for c in body[24..].chunks_exact(16) {
        let a = u64::from_le_bytes(c[..8].try_into().ok()?);
        let b = u64::from_le_bytes(c[8..].try_into().ok()?);
        if a >= b {
            return None;
        }
        out.push((a, b));
    }
    Some((out, flags & INCOMPLETE != 0))
}

/// The pending ranges and whether they may be incomplete.
fn load_pending(path: &Path, blocks: u64) -> Result<(Vec<(u64, u64)>, bool), TrackerError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(state(path, "read the pending blocks")(e)),
    };
    Ok(decode_pending(&bytes).unwrap_or_else(|| {
        tracing::warn!(
            file = %path.display(),
            "the eBPF tracker's pending-blocks file is damaged: the whole disk is read and sent again this cycle"
        );
        (vec![(0, blocks)], false)
    }))
}

fn store_pending(path: &Path, ranges: &[(u64, u64)], incomplete: bool) -> Result<(), TrackerError> {
    if ranges.is_empty() && !incomplete {
        return remove(path);
    }
    write_atomic(path, &encode_pending(ranges, incomplete))
}

/// The shipped map (a bit per 64 KiB block the eBPF tracker shipped since the hash map was
/// made): magic, version, bit count, bits.
#[derive(Debug, PartialEq, Eq)]
enum Shipped {
    /// No file: nothing was shipped since the map was made.
    Missing,
    /// A file that does not parse: anything may have been shipped.
    Damaged,
    /// The bits.
    Bits(Vec<u8>),
}

fn decode_shipped(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 24 || bytes[..8] != SHIPPED_MAGIC {
        return None;
    }
    if u32::from_le_bytes(bytes[8..12].try_into().ok()?) != FILE_VERSION {
        return None;
    }
    let bits = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    (bytes.len() as u64 == 24 + bits.div_ceil(8)).then(|| bytes[24..].to_vec())
}

fn load_shipped(path: &Path) -> Shipped {
    match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Shipped::Missing,
        Err(_) => Shipped::Damaged,
        Ok(b) => decode_shipped(&b).map_or(Shipped::Damaged, Shipped::Bits),
    }
}

/// Sets the bits of the 64 KiB blocks holding `ranges` (4 KiB blocks) in the shipped map,
/// creating it when missing, durably.
fn mark_shipped(path: &Path, ranges: &[(u64, u64)], blocks: u64) -> Result<(), TrackerError> {
    let per = SHIPPED_BLOCK / BLOCK;
    let bits = blocks.div_ceil(per);
    let len = usize::try_from(bits.div_ceil(8)).map_err(|_| {
        state(path, "hold the shipped map in memory")(io::Error::other(format!(
            "{bits} bits do not fit in memory"
        )))
    })?;
    let (mut map, fresh) = match load_shipped(path) {
        Shipped::Bits(m) if m.len() == len => (m, false),
        Shipped::Missing => (vec![0u8; len], true),
        // Damaged or for another size: every block is uncertain.
        _ => (vec![0xff; len], true),
    };
    for &(a, b) in ranges {
        for bit in a / per..b.div_ceil(per).min(bits) {
            map[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    let mut out = Vec::with_capacity(24 + map.len());
    out.extend_from_slice(&SHIPPED_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(&map);
    if fresh {
        tracing::debug!(file = %path.display(), "starting the shipped-blocks map");
    }
    write_atomic(path, &out)
}

/// Ranges `[first, end)` of set bits.
fn bit_ranges(bits: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let n = bits.len() as u64 * 8;
    let get = move |i: u64| bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
    let mut i = 0u64;
    std::iter::from_fn(move || {
        while i < n && !get(i) {
            i += 1;
        }
        if i >= n {
            return None;
        }
        let start = i;
        while i < n && get(i) {
            i += 1;
        }
        Some((start, i))
    })
}

impl Tracker for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn collect(&mut self, disk: &Disk, sink: &mut Sink<'_>) -> Result<CycleStats, TrackerError> {
        let r = self.collect_inner(disk, sink);
        if let Ok(s) = &r {
            tracing::debug!(
                disk = %disk.path().display(),
                read = s.bytes_read,
                data = s.data_bytes,
                zero = s.zero_bytes,
                ms = crate::millis(s.duration),
                "eBPF collect done"
            );
        }
        r
    }

    fn commit(&mut self) -> Result<(), TrackerError> {
        self.commit_inner()
    }

    fn invalidate(&mut self, offset: u64, len: u64) -> Result<(), TrackerError> {
        self.invalidate_inner(offset, len)
    }

    fn prepare_cut(&mut self, disk: &Disk) -> Result<bool, TrackerError> {
        self.prepare_cut_inner(disk)
    }

    fn capture(&mut self, disk: &Disk, max_bytes: u64) -> Result<Capture, TrackerError> {
        self.capture_inner(disk, max_bytes)
    }

    fn abort_cut(&mut self) -> Result<(), TrackerError> {
        self.abort_cut_inner()
    }
}

#[cfg(test)]
mod tests;
