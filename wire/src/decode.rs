//! Bytes -> batch, refusing anything that is not exactly what [`crate::encode`] would write.
//!
//! Order of checks, and why:
//! 1. magic (which names the version), header crc32c, version field: the header sizes
//!    everything else, so it is trusted only once its own checksum holds;
//! 2. the limits and the declared length against the input, before anything is allocated;
//! 3. the extent table's rules, which need no payload access;
//! 4. the trailer's whole-batch xxh3-64 and the per-block xxh3-64s, in one pass over the
//!    payload (each block is hashed twice while it is in L1), reporting a trailer mismatch
//!    before any block mismatch: a flipped bit anywhere is "corrupted in transit", and only a
//!    batch intact as framed but with a bad block is "damaged at the sender".
//!
//! A table that breaks a rule is reported only after the trailer checksum holds, so a bit flip
//! in the table reads as corruption, not as a misbehaving sender.
//!
//! Nothing here indexes without a prior length check and all arithmetic on untrusted numbers is
//! checked or bounded by `MAX_BATCH_BYTES`: the decoder cannot panic (the fuzz target and the
//! truncation tests hold it to that).

use std::borrow::Cow;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::batch::check_extent;
use crate::layout::*;
use crate::version::FUTURE_MAGICS;
use crate::{
    BLOCK_SIZE, Batch, BatchHeader, ConsistencyTag, Extent, FORMAT_VERSIONS, MAGIC_BATCH_V1,
    MAX_BATCH_BYTES, MAX_EXTENTS, MachineId, PointKind, WireError,
};

/// What the 64-byte header of a batch says, for a reader that has only the start of it (for
/// example one reading a batch from a socket, which must know how much to read and must refuse
/// an oversized batch before buffering it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The batch's header fields.
    pub header: BatchHeader,
    /// The batch format version (the one in the header).
    pub format_version: u16,
    /// Size of the whole encoded batch, header and trailer included; at most
    /// [`MAX_BATCH_BYTES`].
    pub encoded_len: usize,
    /// Number of extents, at most [`MAX_EXTENTS`].
    pub extent_count: usize,
}

fn le_u16(b: &[u8], (s, e): (usize, usize)) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[s..e]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], (s, e): (usize, usize)) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[s..e]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], (s, e): (usize, usize)) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[s..e]);
    u64::from_le_bytes(a)
}

/// Reads and checks the header from the first [`crate::HEADER_LEN`] bytes of `bytes` (more
/// may follow and are not looked at).
///
/// The magic is checked as soon as its 8 bytes are there, so a reader can refuse a stream that
/// is not a batch, or is a batch from a newer Lifeboat, before reading the rest.
pub fn read_header(bytes: &[u8]) -> Result<FrameHeader, WireError> {
    if bytes.len() >= MAGIC.1 {
        let mut found = [0u8; 8];
        found.copy_from_slice(&bytes[MAGIC.0..MAGIC.1]);
        if found != MAGIC_BATCH_V1 {
            return Err(match FUTURE_MAGICS.iter().find(|(_, m)| *m == found) {
                Some(&(version, _)) => {
                    WireError::UnsupportedVersion { found: version, supported: FORMAT_VERSIONS }
                }
                None => WireError::BadMagic { found },
            });
        }
    }
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(WireError::Truncated { needed: HEADER_LEN as u64, got: bytes.len() });
    };
    let stored = le_u32(h, HEADER_CRC);
    let computed = crc32c::crc32c(&h[..HEADER_CRC.0]);
    if stored != computed {
        return Err(WireError::HeaderChecksum { stored, computed });
    }
    // The magic already names the version; a v1 magic with another number behind it is a
    // writer bug, still reported as what it claims to be.
    let format_version = le_u16(h, VERSION);
    if !FORMAT_VERSIONS.contains(&format_version) {
        return Err(WireError::UnsupportedVersion {
            found: format_version,
            supported: FORMAT_VERSIONS,
        });
    }

    let total = le_u64(h, TOTAL_LEN);
    let encoded_len = match usize::try_from(total) {
        Ok(len) if len <= MAX_BATCH_BYTES => len,
        _ => return Err(WireError::TooLarge { len: total }),
    };
    let count = le_u32(h, EXTENT_COUNT);
    if count as usize > MAX_EXTENTS {
        return Err(WireError::TooManyExtents { count: count.into() });
    }
    // Both factors are bounded above, so this cannot overflow; comparing here keeps the
    // extent Vec the decoder allocates smaller than the input it came from.
    let needed = FIXED_LEN + u64::from(count) * EXTENT_ENTRY_LEN as u64;
    if needed > total {
        return Err(WireError::LayoutMismatch { declared: total, needed });
    }
    if h[FLAGS] != 0 {
        return Err(WireError::ReservedNotZero {
            field: "header flags (byte 11)",
            value: h[FLAGS].into(),
        });
    }
    let point_id = le_u64(h, POINT_ID);
    let tag = match h[TAG_KIND] {
        TAG_NONE if point_id != 0 => return Err(WireError::PointIdWithoutTag { point_id }),
        TAG_NONE => None,
        TAG_CRASH => Some(ConsistencyTag { kind: PointKind::Crash, point_id }),
        TAG_APP => Some(ConsistencyTag { kind: PointKind::App, point_id }),
        kind => return Err(WireError::UnknownTagKind { kind }),
    };
    let mut machine = [0u8; 16];
    machine.copy_from_slice(&h[MACHINE_ID.0..MACHINE_ID.1]);
    Ok(FrameHeader {
        header: BatchHeader {
            machine: MachineId(machine),
            disk_index: le_u32(h, DISK_INDEX),
            sequence: le_u64(h, SEQUENCE),
            tag,
        },
        format_version,
        encoded_len,
        extent_count: count as usize,
    })
}

/// Decodes and fully verifies one batch that fills `bytes` exactly.
///
/// Zero-copy: the data of every data extent borrows from `bytes`. The only allocation is the
/// extent list, bounded by the input size. Verification costs one pass over the payload.
pub fn decode(bytes: &[u8]) -> Result<Batch<'_>, WireError> {
    let frame = read_header(bytes)?;
    let total = frame.encoded_len;
    if bytes.len() < total {
        return Err(WireError::Truncated { needed: total as u64, got: bytes.len() });
    }
    if bytes.len() > total {
        return Err(WireError::TrailingBytes { declared: total as u64, got: bytes.len() as u64 });
    }
    let body_len = total - TRAILER_LEN;
    let (body, trailer) = bytes.split_at(body_len);
    let stored_body = le_u64(trailer, (0, TRAILER_LEN));
    // read_header checked that the table fits in `total`.
    let table_end = HEADER_LEN + frame.extent_count * EXTENT_ENTRY_LEN;
    let table = &body[HEADER_LEN..table_end];

    let payload_len = match check_table(table, total as u64) {
        Ok(payload_len) => payload_len,
        Err(rule) => {
            let computed = xxh3_64(body);
            if computed != stored_body {
                return Err(WireError::BodyChecksum { stored: stored_body, computed });
            }
            return Err(rule);
        }
    };
    let payload_end = table_end + payload_len;
    let checksums = &body[payload_end..];

    let mut extents = Vec::with_capacity(frame.extent_count);
    let mut hasher = Xxh3::new();
    hasher.update(&body[..table_end]);
    let mut stored_sums = checksums.chunks_exact(CHECKSUM_LEN);
    let mut first_bad_block = None;
    let mut pos = table_end;
    for (index, entry) in table.chunks_exact(EXTENT_ENTRY_LEN).enumerate() {
        let offset = le_u64(entry, E_OFFSET);
        let length = le_u64(entry, E_LENGTH);
        if entry[E_KIND] == KIND_ZERO {
            extents.push(Extent::Zero { offset, length });
            continue;
        }
        // check_table bounded every data length by `total`, so this always fits.
        let Ok(length) = usize::try_from(length) else {
            return Err(WireError::TooLarge { len: length });
        };
        let data = &body[pos..pos + length];
        pos += length;
        for (block, bytes) in data.chunks(BLOCK_SIZE).enumerate() {
            hasher.update(bytes);
            // check_table made the checksum region exactly one entry per block.
            let Some(stored) = stored_sums.next() else {
                break;
            };
            if first_bad_block.is_none() {
                let stored = le_u64(stored, (0, 8));
                let computed = xxh3_64(bytes);
                if stored != computed {
                    first_bad_block = Some(WireError::BlockChecksum {
                        extent: index,
                        block,
                        disk_offset: offset + (block * BLOCK_SIZE) as u64,
                        stored,
                        computed,
                    });
                }
            }
        }
        extents.push(Extent::Data { offset, data: Cow::Borrowed(data) });
    }
    hasher.update(checksums);
    let computed = hasher.digest();
    if computed != stored_body {
        return Err(WireError::BodyChecksum { stored: stored_body, computed });
    }
    if let Some(err) = first_bad_block {
        return Err(err);
    }
    Ok(Batch {
        header: frame.header,
        extents,
        checksums: Cow::Borrowed(checksums),
        encoded_len: total,
    })
}

/// Checks every table entry and that the table accounts for exactly `total` bytes; returns the
/// payload length.
fn check_table(table: &[u8], total: u64) -> Result<usize, WireError> {
    let fixed = FIXED_LEN + table.len() as u64;
    let mut payload = 0u64;
    let mut blocks = 0u64;
    let mut prev = None;
    for (index, entry) in table.chunks_exact(EXTENT_ENTRY_LEN).enumerate() {
        let offset = le_u64(entry, E_OFFSET);
        let length = le_u64(entry, E_LENGTH);
        let kind = entry[E_KIND];
        if kind != KIND_DATA && kind != KIND_ZERO {
            return Err(WireError::UnknownExtentKind { index, offset, kind });
        }
        let reserved = &entry[E_RESERVED.0..E_RESERVED.1];
        if reserved.iter().any(|&b| b != 0) {
            return Err(WireError::ReservedNotZero {
                field: "extent entry bytes 17..24",
                value: reserved.iter().rev().fold(0, |v, &b| v << 8 | u64::from(b)),
            });
        }
        let end = check_extent(index, offset, length, prev)?;
        prev = Some((offset, end));
        if kind == KIND_DATA {
            // Each step is bounded by `total` (at most 64 MiB) before the next, so u64 cannot
            // overflow: `length` alone may be huge, hence the saturating adds.
            payload = payload.saturating_add(length);
            blocks = blocks.saturating_add(length.div_ceil(BLOCK_SIZE as u64));
            let needed = fixed
                .saturating_add(payload)
                .saturating_add(blocks.saturating_mul(CHECKSUM_LEN as u64));
            if needed > total {
                return Err(WireError::LayoutMismatch { declared: total, needed });
            }
        }
    }
    let needed = fixed + payload + blocks * CHECKSUM_LEN as u64;
    if needed != total {
        return Err(WireError::LayoutMismatch { declared: total, needed });
    }
    // `payload` is part of `total`, which read_header bounded by MAX_BATCH_BYTES.
    usize::try_from(payload).map_err(|_| WireError::TooLarge { len: payload })
}
