//! Hash comparisons of a disk with its replica, and reverse replication (reprotect, failback).

use crate::{DiskCursor, DiskSize};
use serde::{Deserialize, Serialize};

/// A comparison of one disk with its replica, asked for by the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    /// Disk index.
    pub disk: u32,
    /// Names this request; echoed in [`CompareBlocks`] and [`CompareDone`].
    pub token: u64,
}

/// `POST /api/v1/compare` (process server, agent certificate): hashes of a range of one
/// of the agent's disks, as [`ReverseDiff`] carries them ([`reverse_block_hash`] of
/// [`REVERSE_BLOCK`] blocks, at most [`REVERSE_MAX_BLOCKS`]); the answer
/// ([`CompareAnswer`]) names the blocks whose replica differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareBlocks {
    /// Disk index.
    pub disk: u32,
    /// The request's token.
    pub token: u64,
    /// A multiple of [`REVERSE_BLOCK`], inside the disk.
    pub offset: u64,
    /// One hash per block from `offset` (the last block of the disk may be shorter).
    pub hashes: Vec<String>,
}

impl CompareBlocks {
    /// Shape checks against a disk of `disk_size` bytes.
    pub fn check(&self, disk_size: u64) -> Result<(), String> {
        ReverseDiff { disk: self.disk, offset: self.offset, hashes: self.hashes.clone() }
            .check(disk_size)
    }
}

/// The answer to [`CompareBlocks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareAnswer {
    /// Indexes (into `hashes`) of the blocks whose replica differs, ascending.
    pub differ: Vec<u32>,
}

/// `POST /api/v1/compare/done`: the whole disk was compared, and the blocks that differed
/// are in the cycle that tagged `point`; the replica is whole again from that point on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareDone {
    /// Disk index.
    pub disk: u32,
    /// The request's token.
    pub token: u64,
    /// The point of the cycle that sent the differing blocks.
    pub point: u64,
}

/// Block size of reverse replication (reprotect): the unit whose hashes are compared.
pub const REVERSE_BLOCK: u32 = 64 << 10;

/// Most block hashes in one [`ReverseDiff`] (16 MiB of disk).
pub const REVERSE_MAX_BLOCKS: usize = 256;

/// The hash reverse replication compares a block by: xxh3-128 of its bytes, 32 hex digits.
/// (Accidental collisions are out of reach at 128 bits; the blocks come from the
/// machine's own disks and the appliance's own target, not from an adversary.)
pub fn reverse_block_hash(data: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

/// `GET /api/v1/reverse`: whether the machine's disks are to be written from the target
/// (after a failover, from reprotect until failback) and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseStatus {
    /// `reverse` (pull the failed-over disks' differing blocks into this machine's disks)
    /// or `forward` (nothing to pull: replicate as usual).
    pub mode: String,
    /// Passes completed so far.
    pub passes: u64,
    /// The pass to start now is failback's last one: the failed-over VM is stopped, and
    /// once this pass is done replication goes forward again.
    pub final_pass: bool,
    /// [`REVERSE_BLOCK`].
    pub block_size: u32,
    /// The machine's disks as the appliance knows them.
    pub disks: Vec<DiskSize>,
}

/// `POST /api/v1/reverse/diff`: the hashes of consecutive blocks of one of the machine's
/// disks from `offset`; the answer is a batch with the target's content of every block
/// whose hash differs (zero extents where it reads as zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseDiff {
    /// Disk index.
    pub disk: u32,
    /// A multiple of [`REVERSE_BLOCK`], inside the disk.
    pub offset: u64,
    /// [`reverse_block_hash`] of each block (the last block of the disk may be shorter),
    /// 1 to [`REVERSE_MAX_BLOCKS`] of them, not past the end of the disk.
    pub hashes: Vec<String>,
}

impl ReverseDiff {
    /// Shape checks against a disk of `disk_size` bytes.
    pub fn check(&self, disk_size: u64) -> Result<(), String> {
        let b = u64::from(REVERSE_BLOCK);
        if !self.offset.is_multiple_of(b) || self.offset >= disk_size {
            return Err(format!(
                "offset: {} is not a multiple of {b} inside the disk ({disk_size} bytes)",
                self.offset
            ));
        }
        if self.hashes.is_empty() || self.hashes.len() > REVERSE_MAX_BLOCKS {
            return Err(format!("hashes: expected 1 to {REVERSE_MAX_BLOCKS}"));
        }
        if self.offset + (self.hashes.len() as u64 - 1) * b >= disk_size {
            return Err("hashes: more blocks than the disk has from offset".into());
        }
        for (i, h) in self.hashes.iter().enumerate() {
            if h.len() != 32 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("hashes[{i}]: expected 32 hex digits"));
            }
        }
        Ok(())
    }
}

/// `POST /api/v1/reverse/done`: a reverse pass over every disk is complete and durable
/// (the disks were flushed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseDone {
    /// The pass was started as the final one ([`ReverseStatus::final_pass`]).
    pub final_pass: bool,
    /// Bytes of blocks the pass received and wrote.
    pub received_bytes: u64,
    /// Where the agent's numbering of each disk's batches stands: forward replication
    /// resumes from there after failback.
    pub next_sequences: Vec<DiskCursor>,
}
