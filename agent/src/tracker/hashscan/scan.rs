//! The collect itself: one pass over the disk that decides where each block's content comes
//! from, reads and hashes it, compares it with the baseline, and hands what differs to the
//! sink (through the intent log); also the free-space query that lets it skip free blocks.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use super::intent::{Flux, IntentLog, masks_record, range_record};
use super::map::{Baseline, Entry, Hasher, Header, MapWriter};
use super::{
    BLOCK_SIZE, BLOCK_SIZE_USIZE, FULL, HashScan, MAX_CHUNK, Pending, SUB_BLOCK_SIZE,
    SUB_BLOCK_SIZE_USIZE, SUBS_PER_BLOCK, state,
};
use crate::disk::{DataRanges, Disk, DiskKind};
use crate::freespace::{self, FreeCursor, FreeExtents};
use crate::tracker::{Change, CycleStats, Sink, TrackerError};

/// Blocks covered by one intent window record (64 MiB of disk).
const INTENT_WINDOW_BLOCKS: u64 = (64 << 20) / BLOCK_SIZE;

/// A length or an offset within one chunk, as a buffer length or index.
#[expect(
    clippy::cast_possible_truncation,
    reason = "within one chunk, so at most MAX_CHUNK (256 MiB), which HashScan::new enforces on chunk_size"
)]
fn in_chunk(n: u64) -> usize {
    debug_assert!(n <= MAX_CHUNK);
    n as usize
}

impl HashScan {
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

    /// One collect: compares every block of `disk` with the baseline, writes the new map to
    /// `P.next` and hands what differs to `sink`, each change made durable in the intent log
    /// first. Leaves the new map pending for [`Tracker::commit`](crate::tracker::Tracker::commit).
    pub(super) fn collect_inner(
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
        self.buf.resize(in_chunk(chunk), 0);
        let mut stats = CycleStats { disk_size: size, initial, ..CycleStats::default() };
        let mut ranges = DataCursor::new(disk.data_ranges())?;
        let free = self.free_space(disk);
        let mut free_cursor = free.cursor();
        let mut batch = Batch::default();
        let zero_full = hasher.zero_entry(BLOCK_SIZE_USIZE);
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
            plan_chunk(
                &mut states,
                off..end,
                span.as_ref(),
                &mut flux,
                &mut baseline,
                &mut free_cursor,
            );
            // `plan_chunk` reads only blocks that overlap the span: without one, none.
            if let Some(span) = &span {
                self.read_runs(disk, &states, span, off..end, &mut stats)?;
            }

            // Hash and compare every block of the chunk; write the new map entries.
            let buf = &self.buf[..in_chunk(end - off)];
            let (last_send, send_bytes) =
                hash_chunk(buf, off, &mut states, &hasher, zero_full, &mut writer, &mut stats)
                    .map_err(state(&next_path, "write the new baseline map"))?;
            masks.clear();
            masks.extend(states.iter().map(|st| st.send));
            count_skipped(&states, &mut stats);
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
            let max_change = self.cfg.max_change;
            if send_bytes * 2 >= end - off {
                if last >= covered_until {
                    covered_until = first + INTENT_WINDOW_BLOCKS.max(chunk / BLOCK_SIZE);
                    batch.intent.extend_from_slice(&range_record(first, covered_until));
                }
                batch.flush(&mut intent, sink, &mut stats, disk.path())?;
                chunk_pieces(&states, max_change, |p| {
                    let at = in_chunk(p.off - off);
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

    /// Reads each run of blocks of the chunk `chunk` whose source is [`Source::Read`] into
    /// the read buffer, in one request, from its first to its last data byte (`span`); the
    /// partial blocks around that are zero-filled (they are holes).
    fn read_runs(
        &mut self,
        disk: &Disk,
        states: &[BlockState],
        span: &Range<u64>,
        chunk: Range<u64>,
        stats: &mut CycleStats,
    ) -> Result<(), TrackerError> {
        let (off, end) = (chunk.start, chunk.end);
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
            let (run_start, run_end) = (states[i].off, states[j - 1].end);
            let (r_start, r_end) = (run_start.max(span.start), run_end.min(span.end));
            let buf = &mut self.buf[..in_chunk(end - off)];
            buf[in_chunk(run_start - off)..in_chunk(r_start - off)].fill(0);
            buf[in_chunk(r_end - off)..in_chunk(run_end - off)].fill(0);
            if let Some(t) = &mut self.throttle {
                stats.throttled += t.acquire(r_end - r_start);
            }
            if disk.kind() == DiskKind::BlockDevice {
                // A mounted filesystem writes its files' data around the device's page
                // cache, so pages cached earlier (readahead past a previous read, into
                // space that was free then) may be stale: drop them, read the device.
                disk.drop_cache(r_start, r_end - r_start);
            }
            disk.read_at(r_start, &mut buf[in_chunk(r_start - off)..in_chunk(r_end - off)])?;
            stats.bytes_read += r_end - r_start;
            if self.cfg.drop_cache {
                disk.drop_cache(r_start, r_end - r_start);
            }
            i = j;
        }
        Ok(())
    }
}

/// Fills `states` with the blocks of the chunk `chunk`, deciding for each where its current
/// content comes from: a read (it overlaps the data `span`), a hole (zeros), or nowhere
/// because the filesystem says the block is free.
fn plan_chunk(
    states: &mut Vec<BlockState>,
    chunk: Range<u64>,
    span: Option<&Range<u64>>,
    flux: &mut Flux,
    baseline: &mut Baseline,
    free_cursor: &mut FreeCursor<'_>,
) {
    states.clear();
    let mut b_off = chunk.start;
    while b_off < chunk.end {
        let b_end = (b_off + BLOCK_SIZE).min(chunk.end);
        let valid = valid_mask(in_chunk(b_end - b_off));
        let uncertain = flux.get(b_off / BLOCK_SIZE) & valid;
        let old = baseline.entry(b_off / BLOCK_SIZE);
        let source = if free_cursor.covers(b_off, b_end) {
            // The target keeps what the baseline says it holds; where the baseline
            // is not trusted, the block is made zeros there (no read, no payload).
            match old {
                Some(old) if uncertain == 0 => Source::FreeKept(old),
                _ => Source::FreeZero,
            }
        } else if span.is_some_and(|s| s.start < b_end && s.end > b_off) {
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
}

/// Hashes and compares every block of the chunk starting at `off` (its bytes in `buf`),
/// writes the new map entries and sets each block's sub-blocks to send and all-zero
/// sub-blocks. Returns the last block with something to send, and how many bytes are sent.
fn hash_chunk(
    buf: &[u8],
    off: u64,
    states: &mut [BlockState],
    hasher: &Hasher,
    zero_full: Entry,
    writer: &mut MapWriter,
    stats: &mut CycleStats,
) -> io::Result<(Option<u64>, u64)> {
    let mut last_send: Option<u64> = None;
    let mut send_bytes = 0u64;
    for st in states.iter_mut() {
        let len = in_chunk(st.end - st.off);
        let valid = valid_mask(len);
        let block = st.off / BLOCK_SIZE;
        let (cur, zero) = match st.source {
            Source::Read => hasher.block(&buf[in_chunk(st.off - off)..][..len]),
            Source::FreeKept(old) => (old, 0),
            Source::Hole | Source::FreeZero if len == BLOCK_SIZE_USIZE => (zero_full, valid),
            Source::Hole | Source::FreeZero => (hasher.zero_entry(len), valid),
        };
        let send = match (st.source, st.old) {
            (Source::FreeKept(_), _) => 0,
            (_, None) => {
                stats.unknown_bytes += len as u64;
                valid
            }
            (_, Some(old)) => {
                stats.unknown_bytes += mask_bytes(st.uncertain, st.off, st.end);
                changed_mask(&old, &cur, st.uncertain, valid)
            }
        };
        writer.push(&cur)?;
        if send != 0 {
            last_send = Some(block);
            send_bytes += mask_bytes(send, st.off, st.end);
        }
        st.send = send;
        st.zero = zero;
    }
    Ok((last_send, send_bytes))
}

/// Counts what the chunk's blocks did not read or send: zero sub-blocks, holes, free space.
fn count_skipped(states: &[BlockState], stats: &mut CycleStats) {
    for st in states {
        match st.source {
            Source::Read => {
                stats.zero_bytes_skipped += mask_bytes(st.zero & !st.send, st.off, st.end)
            }
            Source::Hole => stats.hole_bytes_skipped += st.end - st.off,
            Source::FreeKept(_) | Source::FreeZero => stats.free_bytes_skipped += st.end - st.off,
        }
    }
}

/// Mask of the sub-blocks that exist in a block of `len` bytes.
pub(super) fn valid_mask(len: usize) -> u16 {
    let n = len.div_ceil(SUB_BLOCK_SIZE_USIZE);
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
pub(super) fn changed_mask(old: &Entry, cur: &Entry, uncertain: u16, valid: u16) -> u16 {
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
    /// sent and its map entry stays what the target holds: the baseline's entry.
    FreeKept(Entry),
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
        Change::Data { offset: p.off, data: &data[..in_chunk(p.len)] }
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
            let at = in_chunk(p.off - buf_off);
            self.data.extend_from_slice(&buf[at..at + in_chunk(p.len)]);
        }
        // Data pieces are merged only with the last piece, whose bytes end `data`.
        if !self.pieces.last_mut().is_some_and(|(last, _)| last.merge(p, max_change)) {
            let at = self.data.len() - if p.zero { 0 } else { in_chunk(p.len) };
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
