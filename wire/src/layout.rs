//! Byte offsets and sizes of format v1, in one place so the encoder and decoder cannot drift.
//! docs/formats/batch.md has the same table for people; a test in `decode.rs` pins the sizes.

/// Header size; the header's crc32c is its last 4 bytes.
pub(crate) const HEADER_LEN: usize = 64;
/// One extent-table entry.
pub(crate) const EXTENT_ENTRY_LEN: usize = 24;
/// One per-block checksum.
pub(crate) const CHECKSUM_LEN: usize = 8;
/// The trailer: xxh3-64 of everything before it.
pub(crate) const TRAILER_LEN: usize = 8;
/// Bytes every batch has whatever its extents: header plus trailer.
pub(crate) const FIXED_LEN: u64 = (HEADER_LEN + TRAILER_LEN) as u64;

// Header fields: (start, end) byte ranges.
pub(crate) const MAGIC: (usize, usize) = (0, 8);
pub(crate) const VERSION: (usize, usize) = (8, 10);
pub(crate) const TAG_KIND: usize = 10;
pub(crate) const FLAGS: usize = 11;
pub(crate) const DISK_INDEX: (usize, usize) = (12, 16);
pub(crate) const MACHINE_ID: (usize, usize) = (16, 32);
pub(crate) const SEQUENCE: (usize, usize) = (32, 40);
pub(crate) const POINT_ID: (usize, usize) = (40, 48);
pub(crate) const TOTAL_LEN: (usize, usize) = (48, 56);
pub(crate) const EXTENT_COUNT: (usize, usize) = (56, 60);
pub(crate) const HEADER_CRC: (usize, usize) = (60, 64);

// Extent-table entry fields, relative to the entry.
pub(crate) const E_OFFSET: (usize, usize) = (0, 8);
pub(crate) const E_LENGTH: (usize, usize) = (8, 16);
pub(crate) const E_KIND: usize = 16;
pub(crate) const E_RESERVED: (usize, usize) = (17, 24);

/// Tag-kind byte values.
pub(crate) const TAG_NONE: u8 = 0;
pub(crate) const TAG_CRASH: u8 = 1;
pub(crate) const TAG_APP: u8 = 2;

/// Extent-kind byte values.
pub(crate) const KIND_DATA: u8 = 0;
pub(crate) const KIND_ZERO: u8 = 1;
