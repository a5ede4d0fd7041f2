//! Reading a cache directory back after a restart or a crash: segment scans,
//! torn-tail repair and release-log loading.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::RecordKey;
use crate::error::{Error, Result, io};
use crate::format::{
    self, HeaderProblem, RECORD_HEADER_LEN, RECORD_HEADER_LEN_USIZE, RECORD_MAGIC,
    RELEASE_ENTRY_LEN_USIZE, RELEASE_HEADER_LEN, RELEASE_HEADER_LEN_USIZE, RecordHeader,
    SEGMENT_HEADER_LEN, SEGMENT_HEADER_LEN_USIZE,
};

/// A record found intact by a segment scan.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub offset: u64,
    pub header: RecordHeader,
}

/// What a segment scan found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub records: Vec<Scanned>,
    /// File length after any torn-tail truncation.
    pub len: u64,
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read (fewer
/// only at end of file).
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Why the record at some offset is not intact.
struct Damage {
    reason: String,
    /// An intact header of an unknown version: never a torn write.
    unsupported: bool,
}

fn damaged(reason: impl Into<String>) -> Damage {
    Damage { reason: reason.into(), unsupported: false }
}

/// Checks the record at `pos` (the reader is positioned there). Verifies the
/// payload checksum unless `skip_payload` (released records need no check: they
/// are never read again).
fn check_record(
    reader: &mut BufReader<File>,
    pos: u64,
    len: u64,
    segment: u64,
    skip_payload: bool,
    buf: &mut [u8],
) -> std::io::Result<Result<RecordHeader, Damage>> {
    let left = len - pos;
    if left < RECORD_HEADER_LEN {
        return Ok(Err(damaged(format!(
            "only {left} bytes left in the file, less than a {RECORD_HEADER_LEN}-byte record header"
        ))));
    }
    let mut raw = [0u8; RECORD_HEADER_LEN_USIZE];
    reader.read_exact(&mut raw)?;
    let header = match format::decode_record_header(&raw) {
        Ok(h) => h,
        Err(HeaderProblem::Damaged(reason)) => return Ok(Err(damaged(reason))),
        Err(HeaderProblem::Unsupported(reason)) => {
            return Ok(Err(Damage { reason, unsupported: true }));
        }
    };
    if header.segment != segment {
        return Ok(Err(damaged(format!(
            "record header names segment {}, but it is in segment {segment} (stale or misplaced data)",
            header.segment
        ))));
    }
    if header.sync_floor < SEGMENT_HEADER_LEN || header.sync_floor > pos {
        return Ok(Err(damaged(format!(
            "record sync floor {} is outside {SEGMENT_HEADER_LEN}..={pos}",
            header.sync_floor
        ))));
    }
    let end = (pos + RECORD_HEADER_LEN).checked_add(header.payload_len);
    if end.is_none_or(|end| end > len) {
        return Ok(Err(damaged(format!(
            "payload of {} bytes runs past the end of the file ({len} bytes)",
            header.payload_len
        ))));
    }
    if skip_payload {
        reader.seek_relative(header.payload_len as i64)?;
        return Ok(Ok(header));
    }
    let mut crc = 0u32;
    let mut left = header.payload_len;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        reader.read_exact(&mut buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        left -= n as u64;
    }
    if crc != header.payload_crc {
        return Ok(Err(damaged(format!(
            "payload checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            header.payload_crc
        ))));
    }
    Ok(Ok(header))
}

/// Looks after `damaged_at` for an intact record header of this segment whose
/// sync floor is beyond `damaged_at`: such a record was written after the bytes
/// at `damaged_at` had been fsynced, which proves the damage is not a torn write.
fn find_commit_proof(
    file: &File,
    segment: u64,
    damaged_at: u64,
    len: u64,
) -> std::io::Result<Option<u64>> {
    const CHUNK: usize = 8 << 20;
    let overlap = RECORD_HEADER_LEN_USIZE - 1;
    let mut start = damaged_at + 1;
    let mut buf = vec![0u8; CHUNK + overlap];
    while start < len {
        let want = usize::try_from(len - start).map_or(buf.len(), |rest| rest.min(buf.len()));
        let got = read_up_to(file, &mut buf[..want], start)?;
        let last = start + got as u64 >= len;
        // Positions owned by this chunk; the overlap is rescanned by the next one.
        let owned = if last { got } else { got - overlap };
        for p in 0..owned {
            if buf[p] != RECORD_MAGIC[0] || p + RECORD_HEADER_LEN_USIZE > got {
                continue;
            }
            let raw = &buf[p..p + RECORD_HEADER_LEN_USIZE];
            if let Ok(h) = format::decode_record_header(raw) {
                let at = start + p as u64;
                if h.segment == segment && h.sync_floor <= at && h.sync_floor > damaged_at {
                    return Ok(Some(at));
                }
            }
        }
        if last {
            break;
        }
        start += owned as u64;
    }
    Ok(None)
}

/// Scans one segment file. `released` are the offsets its release log names.
///
/// In a sealed segment (`is_last == false`) every record was fsynced before the
/// next segment was created, so any damage is an error. In the last segment the
/// first damaged record is a torn write, and is truncated away, unless something
/// proves it was durable: a release entry at or after it, or a later intact
/// record whose sync floor lies beyond it.
pub(crate) fn scan_segment(
    path: &Path,
    segment: u64,
    is_last: bool,
    released: &HashMap<u64, RecordKey>,
) -> Result<SegmentScan> {
    let file = File::open(path).map_err(io("open segment", path))?;
    let len = file.metadata().map_err(io("stat segment", path))?.len();
    let mut raw = [0u8; SEGMENT_HEADER_LEN_USIZE];
    let n = read_up_to(&file, &mut raw, 0).map_err(io("read segment header", path))?;
    let named = format::decode_segment_header(&raw[..n])
        .map_err(|reason| Error::BadSegmentHeader { path: path.to_owned(), reason })?;
    if named != segment {
        return Err(Error::BadSegmentHeader {
            path: path.to_owned(),
            reason: format!("header names segment {named}, but the file name says {segment}"),
        });
    }

    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(SEGMENT_HEADER_LEN)).map_err(io("seek in segment", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut records = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < len {
        let checked =
            check_record(&mut reader, pos, len, segment, released.contains_key(&pos), &mut buf)
                .map_err(io("read segment", path))?;
        match checked {
            Ok(header) => {
                records.push(Scanned { offset: pos, header });
                pos += RECORD_HEADER_LEN + header.payload_len;
            }
            Err(damage) => {
                let file = reader.into_inner();
                repair_or_fail(path, &file, segment, is_last, pos, len, damage, released)?;
                return Ok(SegmentScan { records, len: pos });
            }
        }
    }
    Ok(SegmentScan { records, len })
}

#[allow(clippy::too_many_arguments)]
fn repair_or_fail(
    path: &Path,
    file: &File,
    segment: u64,
    is_last: bool,
    pos: u64,
    len: u64,
    damage: Damage,
    released: &HashMap<u64, RecordKey>,
) -> Result<()> {
    let corrupt = |why: String| Error::CorruptRecord {
        path: path.to_owned(),
        offset: pos,
        reason: format!("{}; {why}", damage.reason),
    };
    if damage.unsupported {
        return Err(corrupt("the header is intact, so this is not a torn write".into()));
    }
    if !is_last {
        return Err(corrupt(
            "a later segment exists, so this segment was fully fsynced before it was sealed: this is not a torn write"
                .into(),
        ));
    }
    if let Some(off) = released.keys().copied().filter(|&o| o >= pos).min() {
        return Err(corrupt(format!(
            "the release log names a record at offset {off}, so this part of the segment had been fsynced: this is not a torn write"
        )));
    }
    if let Some(at) =
        find_commit_proof(file, segment, pos, len).map_err(io("read segment", path))?
    {
        return Err(corrupt(format!(
            "the intact record at offset {at} was written after this offset had been fsynced: this is not a torn write"
        )));
    }
    tracing::warn!(
        file = %path.display(),
        offset = pos,
        dropped_bytes = len - pos,
        reason = %damage.reason,
        "torn write at the tail of the last cache segment (never acknowledged): truncating it away"
    );
    let w =
        File::options().write(true).open(path).map_err(io("open segment for truncation", path))?;
    w.set_len(pos).map_err(io("truncate torn segment tail", path))?;
    w.sync_all().map_err(io("fsync truncated segment", path))?;
    Ok(())
}

/// A release log read back.
#[derive(Debug, Default)]
pub(crate) struct ReleaseLog {
    /// Released record offsets and the keys they were released under.
    pub entries: HashMap<u64, RecordKey>,
    /// File length after any torn-tail truncation.
    pub len: u64,
}

/// Reads one segment's release log. A torn tail (partial or bad-checksum final
/// entries) is truncated away: those releases were never confirmed to the
/// caller, and forgetting a release only means the record is shipped again. A bad
/// entry before a good one is skipped with a warning, for the same reason.
pub(crate) fn load_release_log(path: &Path, segment: u64) -> Result<ReleaseLog> {
    let bytes = std::fs::read(path).map_err(io("read release log", path))?;
    let named = format::decode_release_header(&bytes)
        .map_err(|reason| Error::BadReleaseLog { path: path.to_owned(), reason })?;
    if named != segment {
        return Err(Error::BadReleaseLog {
            path: path.to_owned(),
            reason: format!("header names segment {named}, but the file name says {segment}"),
        });
    }
    let body = &bytes[RELEASE_HEADER_LEN_USIZE..];
    let entry_len = RELEASE_ENTRY_LEN_USIZE;
    let decoded: Vec<_> = body.chunks_exact(entry_len).map(format::decode_release_entry).collect();
    let good_prefix = decoded.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    let mut entries = HashMap::new();
    for (i, e) in decoded[..good_prefix].iter().enumerate() {
        match e {
            Some((offset, key)) => {
                entries.insert(*offset, *key);
            }
            None => tracing::warn!(
                file = %path.display(),
                offset = RELEASE_HEADER_LEN + (i * entry_len) as u64,
                "damaged release-log entry skipped: its record, if still cached, will be shipped again"
            ),
        }
    }
    let keep = RELEASE_HEADER_LEN + (good_prefix * entry_len) as u64;
    let total = bytes.len() as u64;
    if keep < total {
        tracing::warn!(
            file = %path.display(),
            offset = keep,
            dropped_bytes = total - keep,
            "torn write at the tail of a release log: truncating it away (those records will be shipped again)"
        );
        let w = File::options()
            .write(true)
            .open(path)
            .map_err(io("open release log for truncation", path))?;
        w.set_len(keep).map_err(io("truncate torn release-log tail", path))?;
        w.sync_all().map_err(io("fsync truncated release log", path))?;
    }
    Ok(ReleaseLog { entries, len: keep })
}
