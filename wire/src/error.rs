//! The one error type of this crate.
//!
//! Every variant is a reason to refuse a batch, and its message names the field, extent or block
//! at fault with the numbers involved, because the person reading it is usually an operator
//! looking at a process-server log, not at the bytes. Extent and block indexes count from 0;
//! offsets are byte offsets on the protected disk.

use crate::MAX_BATCH_BYTES;

/// Why a batch could not be decoded or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ends before the batch does.
    #[error("batch truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed to go on (the header size, or the length the header declares).
        needed: u64,
        /// Bytes available.
        got: usize,
    },

    /// The first 8 bytes are not the magic of any batch format this build knows.
    #[error(
        "not a Lifeboat batch: magic {} is not the v1 batch magic {} \
         (not a batch, or damaged at its very start)",
        hex8(.found),
        hex8(&crate::MAGIC_BATCH_V1)
    )]
    BadMagic {
        /// The 8 bytes found where the magic should be.
        found: [u8; 8],
    },

    /// The magic is known but the version field names a format this build does not decode.
    #[error(
        "batch format version {found} is not supported by this build, which reads {supported:?} \
         (a newer Lifeboat wrote it: upgrade this side)"
    )]
    UnsupportedVersion {
        /// The version field as found.
        found: u16,
        /// The versions this build decodes.
        supported: &'static [u16],
    },

    /// The header's crc32c does not match its first 60 bytes.
    #[error(
        "batch header checksum mismatch: stored crc32c {stored:#010x}, computed {computed:#010x} \
         (the header was corrupted in transit or storage)"
    )]
    HeaderChecksum {
        /// The crc32c stored in the header.
        stored: u32,
        /// The crc32c computed over the header.
        computed: u32,
    },

    /// The whole-batch xxh3-64 in the trailer does not match the bytes before it.
    #[error(
        "batch body checksum mismatch: stored xxh3-64 {stored:#018x}, computed {computed:#018x} \
         (the batch was corrupted in transit or storage)"
    )]
    BodyChecksum {
        /// The checksum stored in the trailer.
        stored: u64,
        /// The checksum computed over the batch.
        computed: u64,
    },

    /// A data block does not match its own checksum although the whole batch does: the data
    /// was damaged before it was framed (at the sender, between reading and encoding).
    #[error(
        "checksum mismatch in extent {extent}, block {block} (disk offset {disk_offset}): \
         stored xxh3-64 {stored:#018x}, computed {computed:#018x}"
    )]
    BlockChecksum {
        /// Index of the extent in the batch.
        extent: usize,
        /// Index of the 4 KiB block within the extent.
        block: usize,
        /// Disk offset of the block's first byte.
        disk_offset: u64,
        /// The checksum carried in the batch.
        stored: u64,
        /// The checksum of the block as received.
        computed: u64,
    },

    /// The batch is, or would become, larger than [`MAX_BATCH_BYTES`].
    #[error("batch of {len} bytes exceeds the limit of {MAX_BATCH_BYTES} bytes (MAX_BATCH_BYTES)")]
    TooLarge {
        /// The declared (decoding) or resulting (building) size in bytes.
        len: u64,
    },

    /// The batch has, or would get, more than [`crate::MAX_EXTENTS`] extents.
    #[error("batch has {count} extents, over the limit of {max} (MAX_EXTENTS)", max = crate::MAX_EXTENTS)]
    TooManyExtents {
        /// The declared (decoding) or resulting (building) extent count.
        count: u64,
    },

    /// The input goes on after the end of the batch.
    #[error(
        "{} trailing bytes after the batch's declared length of {declared}",
        .got.saturating_sub(*.declared)
    )]
    TrailingBytes {
        /// The length the header declares.
        declared: u64,
        /// Bytes in the input.
        got: u64,
    },

    /// The header's total length disagrees with what its extent table describes.
    #[error(
        "batch header declares {declared} bytes but its header, extent table, payload, \
         checksums and trailer need {needed}"
    )]
    LayoutMismatch {
        /// The total length from the header.
        declared: u64,
        /// The length the extent table implies (a lower bound when it overflowed the declared).
        needed: u64,
    },

    /// A reserved field holds something other than zero: a newer writer, or a bug.
    #[error("reserved field {field} is {value:#x}, must be 0 in format v1")]
    ReservedNotZero {
        /// Which field.
        field: &'static str,
        /// What it holds.
        value: u64,
    },

    /// The consistency tag kind is not one of none (0), crash (1), app (2).
    #[error("unknown consistency tag kind {kind} (expected 0 none, 1 crash or 2 app)")]
    UnknownTagKind {
        /// The kind byte found.
        kind: u8,
    },

    /// The header has no consistency tag but a non-zero point id.
    #[error("batch has no consistency tag but point id {point_id} (must be 0 without a tag)")]
    PointIdWithoutTag {
        /// The point id found.
        point_id: u64,
    },

    /// An extent's kind byte is not data (0) or zero (1).
    #[error(
        "extent {index} at offset {offset} has unknown kind {kind} (expected 0 data or 1 zero)"
    )]
    UnknownExtentKind {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
        /// The kind byte found.
        kind: u8,
    },

    /// An extent's disk offset is not sector (512-byte) aligned.
    #[error("extent {index} at offset {offset}: offset is not a multiple of 512")]
    UnalignedOffset {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
    },

    /// An extent's length is zero or not a multiple of 512.
    #[error(
        "extent {index} at offset {offset} has length {length}, not a non-zero multiple of 512"
    )]
    BadLength {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
        /// Its length in bytes.
        length: u64,
    },

    /// `offset + length` does not fit in a u64.
    #[error("extent {index} at offset {offset} with length {length} ends past 2^64")]
    ExtentOverflow {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
        /// Its length in bytes.
        length: u64,
    },

    /// An extent starts before the previous one: extents must be sorted by offset.
    #[error(
        "extent {index} at offset {offset} comes after extent {prev} at offset {prev_offset}: \
         extents must be sorted by offset"
    )]
    Unsorted {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
        /// Index of the previous extent.
        prev: usize,
        /// The previous extent's offset.
        prev_offset: u64,
    },

    /// An extent starts inside the previous one.
    #[error("extent {index} at offset {offset} overlaps extent {prev} ending at {prev_end}")]
    Overlap {
        /// Index of the extent.
        index: usize,
        /// Its disk offset.
        offset: u64,
        /// Index of the previous extent.
        prev: usize,
        /// The previous extent's end offset (exclusive).
        prev_end: u64,
    },
}

/// Formats 8 bytes as 16 hex digits, the way they appear in a hex dump of the batch.
fn hex8(bytes: &[u8; 8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
