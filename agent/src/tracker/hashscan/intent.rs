//! The intent log, `P.intent`: the sub-blocks handed to the sink since the last commit, made
//! durable before the sink sees them; and what it says is uncertain on the target.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::{BLOCK_SIZE, FULL, MAX_CHUNK, parent_dir, state, sync_dir};
use crate::tracker::{TrackerError, field};

const INTENT_MAGIC: [u8; 8] = *b"LBHSINT\0";
const INTENT_VERSION: u32 = 1;
/// Bytes of intent log header before the first record.
pub(super) const INTENT_HEADER_LEN: u64 = INTENT_HEADER_LEN_USIZE as u64;
/// [`INTENT_HEADER_LEN`] as a buffer length.
const INTENT_HEADER_LEN_USIZE: usize = 24;
const INTENT_MASKS: u32 = 1;
const INTENT_RANGE: u32 = 2;
/// The largest intent record: a masks record for a maximal chunk.
const INTENT_MAX_RECORD: u64 = 24 + 2 * (MAX_CHUNK / BLOCK_SIZE);

/// Sub-blocks that may differ from the baseline on the target, from the intent log.
#[derive(Debug, Default)]
pub(super) struct Flux {
    /// Everything is uncertain (the intent log itself is corrupt).
    pub(super) all: bool,
    /// Per-block masks, allocated only when some record has one.
    masks: Vec<u16>,
    /// Whole blocks, sorted and merged.
    ranges: Vec<Range<u64>>,
    next_range: usize,
}

impl Flux {
    /// The uncertain sub-blocks of `block` (blocks are asked for in ascending order).
    pub(super) fn get(&mut self, block: u64) -> u16 {
        if self.all {
            return FULL;
        }
        let mut m =
            usize::try_from(block).ok().and_then(|b| self.masks.get(b)).copied().unwrap_or(0);
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
pub(super) struct IntentLog {
    path: PathBuf,
    file: Option<File>,
    /// Length of the valid log (0: no file yet).
    pub(super) len: u64,
}

pub(super) fn intent_header() -> [u8; INTENT_HEADER_LEN_USIZE] {
    let mut h = [0u8; INTENT_HEADER_LEN_USIZE];
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

#[expect(
    clippy::cast_possible_truncation,
    reason = "masks has one entry per block of one chunk: at most MAX_CHUNK / BLOCK_SIZE (4096), which HashScan::new enforces"
)]
pub(super) fn masks_record(first_block: u64, masks: &[u16]) -> Vec<u8> {
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

pub(super) fn range_record(first_block: u64, end_block: u64) -> Vec<u8> {
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
    pub(super) fn load(path: &Path, blocks: Option<u64>) -> Result<(Self, Flux), TrackerError> {
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
        let mut header = [0u8; INTENT_HEADER_LEN_USIZE];
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
    pub(super) fn append(&mut self, rec: &[u8]) -> Result<(), TrackerError> {
        let path = self.path.clone();
        let io = |e| state(&path, "append to the intent log")(e);
        let file = match self.file.take() {
            Some(f) => f,
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(io)?,
        };
        let file = &*self.file.insert(file);
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
    let left = match usize::try_from(file_len - at) {
        Ok(left) if left as u64 <= INTENT_MAX_RECORD => left,
        _ => return Ok(false),
    };
    let mut tail = vec![0u8; left];
    file.read_exact_at(&mut tail, at)?;
    let head = match tail.first_chunk::<16>() {
        Some(head) if !tail.iter().all(|&b| b == 0) => head,
        _ => return Ok(true),
    };
    let kind = u32::from_le_bytes(field(head, 0));
    let count = u32::from_le_bytes(field(head, 4));
    Ok(match record_payload_len(kind, count) {
        Some(payload) => 16 + payload + 8 > left,
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
    let kind = u32::from_le_bytes(field(&head, 0));
    let count = u32::from_le_bytes(field(&head, 4));
    let first = u64::from_le_bytes(field(&head, 8));
    let Some(payload_len) = record_payload_len(kind, count) else {
        return Ok(None);
    };
    let mut payload = vec![0u8; payload_len];
    let mut stored = [0u8; 8];
    if !read_full(r, &mut payload)? || !read_full(r, &mut stored)? {
        return Ok(None);
    }
    let mut whole = head.to_vec();
    whole.extend_from_slice(&payload);
    if xxh3_64(&whole) != u64::from_le_bytes(stored) {
        return Ok(None);
    }
    let len = (16 + payload_len + 8) as u64;
    let record = match (kind, payload.as_slice()) {
        (INTENT_MASKS, _) => Record::Masks {
            first,
            masks: payload
                .chunks_exact(2)
                .take(count as usize)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        },
        (_, &[a, b, c, d, e, f, g, h]) => {
            Record::Range { first, end: u64::from_le_bytes([a, b, c, d, e, f, g, h]) }
        }
        // A range record's payload is 8 bytes (`record_payload_len`): anything else is damaged.
        _ => return Ok(None),
    };
    Ok(Some((len, record)))
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
            // One mask per block of the disk; masks for a disk too large to index them could
            // not be kept, so then everything is uncertain.
            let Ok(len) = usize::try_from(blocks) else {
                flux.all = true;
                return;
            };
            for (i, m) in masks.into_iter().enumerate() {
                // Past the disk (or past u64) when it does not convert: ignored.
                let block = first.checked_add(i as u64).and_then(|b| usize::try_from(b).ok());
                let Some(block) = block.filter(|&b| m != 0 && b < len) else {
                    continue;
                };
                if flux.masks.is_empty() {
                    flux.masks = vec![0; len];
                }
                flux.masks[block] |= m;
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
