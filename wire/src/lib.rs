//! Lifeboat's batch format: what an agent sends for one disk, what the process server caches,
//! and what a master target applies. Format v1 is frozen; docs/formats/batch.md is the
//! reference for people and other implementations.
//!
//! # Layout (v1, all integers little-endian)
//!
//! ```text
//! header        64 B   magic, version, tag, disk, machine, sequence, point id,
//!                      total length, extent count, crc32c of the first 60 bytes
//! extent table  24 B x extent count: offset, length, kind (data / zero), 7 reserved bytes
//! payload       the bytes of every data extent, back to back, in table order
//! checksums     8 B x data blocks: xxh3-64 of each 4 KiB block of each data extent
//! trailer       8 B    xxh3-64 of everything before it
//! ```
//!
//! # Why this shape
//!
//! *The header has its own checksum and the total length.* A reader on a socket must know how
//! much to read and must refuse a 2 GiB "batch" before buffering it; it can only trust the
//! length once the header's crc32c (60 bytes, one instruction per 8 bytes) holds.
//! [`read_header`] is that step on its own.
//!
//! *A table first, then the payload.* Every rule about extents (sorted, non-overlapping,
//! 512-aligned, lengths adding up to the batch size) is checked from the table alone, before
//! the payload is touched, and the whole layout is known from the table, so the decoder hands
//! out each data extent as a slice of the input: zero copy, no allocation per extent or per
//! block. A master target then writes each slice to the replica with one positioned write.
//!
//! *Checksums after the payload.* The header needs only sizes, which a sender knows up front,
//! so a sender can stream: header, table, payload (hashing as it goes), then the checksums and
//! trailer it has just computed, without holding the batch twice.
//!
//! *Two levels of checksum.* The per-block xxh3-64 is computed where the data is read (see
//! [`BatchBuilder::push`]) and travels with the data end to end; it says which block of which
//! extent is damaged, and it is kept beside replicas for scrubbing. The trailer covers every
//! byte (header, table and checksums included), so any corruption in transit or in a cache
//! segment is reported as such before per-block checksums are looked at; a batch whose trailer
//! holds but a block does not was damaged before it was framed. Decoding checks both in one pass
//! over the payload. xxh3 because it runs at memory speed; none of this is authentication,
//! which mTLS and the cipher plugin's AEAD provide.
//!
//! *4 KiB blocks, 512-byte granularity.* 4 KiB is the page and filesystem block size, the
//! natural unit of change tracking; 512 bytes is the smallest sector any disk has, so any
//! write a disk accepts can be carried without read-modify-write at the sender.
//!
//! *Zero extents.* Zeroed and discarded ranges cost 24 bytes whatever their size, which keeps
//! the initial copy of a mostly empty disk and TRIM storms cheap.
//!
//! *Magic per version.* As in Proxmox Backup Server's file formats, the magic is derived from
//! a versioned string and never changes; a new layout gets a new magic. The version number is
//! also written at offset 8 for humans with a hex dump, and the magics of versions 2..=8 are
//! known in advance so an old reader says "format v2, upgrade" rather than "not a batch".
//!
//! *Limits.* [`MAX_BATCH_BYTES`] (64 MiB) bounds a batch so a process server can hold a few
//! per connection in memory and fsync one in well under a second; [`MAX_EXTENTS`] bounds the
//! extent list the decoder allocates. Both are checked from the header before any allocation.
//!
//! # Use
//!
//! Build with [`Batch::builder`], encode with [`encode`] or [`encode_into`], decode with
//! [`decode`] (zero-copy, fully verified). Connections agree on a protocol version with
//! [`negotiate`] over [`PROTOCOL_VERSIONS`].

#![deny(missing_docs)]

mod batch;
mod decode;
mod encode;
mod error;
mod layout;
mod version;

#[cfg(test)]
mod tests;

pub use batch::{Batch, BatchBuilder, BatchHeader, ConsistencyTag, Extent, MachineId, PointKind};
pub use decode::{FrameHeader, decode, read_header};
pub use encode::{encode, encode_into};
pub use error::WireError;
pub use version::{FORMAT_VERSION, FORMAT_VERSIONS, MAGIC_BATCH_V1, PROTOCOL_VERSIONS, negotiate};

/// Largest encoded batch, header and trailer included: 64 MiB.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Most extents one batch may hold.
pub const MAX_EXTENTS: usize = 65_536;

/// Size of the blocks that carry one checksum each; the last block of an extent may be
/// shorter (a multiple of [`SECTOR_SIZE`]).
pub const BLOCK_SIZE: usize = 4096;

/// Granularity of extent offsets and lengths.
pub const SECTOR_SIZE: u64 = 512;

/// Size of the batch header: what [`read_header`] needs.
pub const HEADER_LEN: usize = layout::HEADER_LEN;

/// The checksum the format carries for each block: xxh3-64 with the default secret, seed 0.
pub fn block_checksum(block: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(block)
}
