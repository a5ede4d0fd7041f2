//! Batch -> bytes. Infallible because a [`Batch`] is valid by construction.

use xxhash_rust::xxh3::Xxh3;

use crate::layout::*;
use crate::{Batch, Extent, FORMAT_VERSION, MAGIC_BATCH_V1};

/// Payload is copied and hashed in pieces this big so each piece is hashed into the trailer
/// while it is still in L2 from the copy: one trip through memory instead of two.
const COPY_CHUNK: usize = 64 * 1024;

/// Encodes `batch` into a new buffer of exactly [`Batch::encoded_len`] bytes.
pub fn encode(batch: &Batch<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.encoded_len());
    encode_into(batch, &mut out);
    out
}

/// Appends the encoding of `batch` to `out`, growing it at most once.
///
/// Appending (rather than overwriting) lets a caller reuse one buffer across batches with
/// `clear()`, or put a frame of its own in front.
pub fn encode_into(batch: &Batch<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(batch.encoded_len());
    out.extend_from_slice(&header_bytes(batch));

    for extent in &batch.extents {
        let mut entry = [0u8; EXTENT_ENTRY_LEN];
        let (offset, length, kind) = match extent {
            Extent::Data { offset, data } => (*offset, data.len() as u64, KIND_DATA),
            Extent::Zero { offset, length } => (*offset, *length, KIND_ZERO),
        };
        entry[E_OFFSET.0..E_OFFSET.1].copy_from_slice(&offset.to_le_bytes());
        entry[E_LENGTH.0..E_LENGTH.1].copy_from_slice(&length.to_le_bytes());
        entry[E_KIND] = kind;
        out.extend_from_slice(&entry);
    }

    let mut body = Xxh3::new();
    body.update(&out[start..]);
    for data in batch.extents.iter().filter_map(Extent::data) {
        for piece in data.chunks(COPY_CHUNK) {
            out.extend_from_slice(piece);
            body.update(piece);
        }
    }
    out.extend_from_slice(&batch.checksums);
    body.update(&batch.checksums);
    out.extend_from_slice(&body.digest().to_le_bytes());

    debug_assert_eq!(out.len() - start, batch.encoded_len());
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a Batch has at most MAX_EXTENTS (65,536) extents: BatchBuilder::push and decode refuse more"
)]
fn header_bytes(batch: &Batch<'_>) -> [u8; HEADER_LEN] {
    let h = &batch.header;
    let mut b = [0u8; HEADER_LEN];
    b[MAGIC.0..MAGIC.1].copy_from_slice(&MAGIC_BATCH_V1);
    b[VERSION.0..VERSION.1].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let (kind, point_id) = match h.tag {
        None => (TAG_NONE, 0),
        Some(t) => (
            match t.kind {
                crate::PointKind::Crash => TAG_CRASH,
                crate::PointKind::App => TAG_APP,
            },
            t.point_id,
        ),
    };
    b[TAG_KIND] = kind;
    b[FLAGS] = 0;
    b[DISK_INDEX.0..DISK_INDEX.1].copy_from_slice(&h.disk_index.to_le_bytes());
    b[MACHINE_ID.0..MACHINE_ID.1].copy_from_slice(&h.machine.0);
    b[SEQUENCE.0..SEQUENCE.1].copy_from_slice(&h.sequence.to_le_bytes());
    b[POINT_ID.0..POINT_ID.1].copy_from_slice(&point_id.to_le_bytes());
    b[TOTAL_LEN.0..TOTAL_LEN.1].copy_from_slice(&(batch.encoded_len as u64).to_le_bytes());
    b[EXTENT_COUNT.0..EXTENT_COUNT.1].copy_from_slice(&(batch.extents.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER_CRC.0]);
    b[HEADER_CRC.0..HEADER_CRC.1].copy_from_slice(&crc.to_le_bytes());
    b
}
