//! The crate's one error type.

use std::path::PathBuf;

use crate::{RecordKey, RecordRef};

/// Everything that can go wrong in the cache. Each message says what was wrong
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed.
    #[error(
        "cache I/O failed: could not {op} {path}: {source}; check that the cache disk is mounted, writable and not failing (dmesg), then restart the process server"
    )]
    Io {
        /// What the cache was doing ("fsync", "create", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The [`CacheConfig`](crate::CacheConfig) is unusable.
    #[error("invalid cache configuration: {0}; fix the process server's cache settings")]
    InvalidConfig(String),

    /// Another `Cache` (in this or another process) has the directory open.
    #[error(
        "cache directory {dir} is already open in another process server (or another Cache in this one); run one process server per cache directory, or give each its own directory"
    )]
    Locked {
        /// The cache directory.
        dir: PathBuf,
    },

    /// A segment file's header is malformed, of another version, or names another
    /// segment number than its file name.
    #[error(
        "segment file {path} has a bad header: {reason}; the cache will not open with it. If it is not a Lifeboat segment, move it out of the cache directory; if it is, it may hold unshipped data: keep a copy and restore a good one, or move it aside and force a resync of the affected disks"
    )]
    BadSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A record that may have been acknowledged to an agent is damaged.
    #[error(
        "corrupt record in segment {path} at byte offset {offset}: {reason}; this data may have been acknowledged to an agent, so the cache refuses to skip it. Check the disk, keep a copy of the segment, and either restore it or move it aside and force a resync of the affected disks"
    )]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record header in the file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },

    /// A release log's header is malformed or names another segment.
    #[error(
        "release log {path} has a bad header: {reason}; move it aside (its segment's records will then be replayed and re-shipped, which targets tolerate) and restart"
    )]
    BadReleaseLog {
        /// The release-log file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// The payload is bigger than a batch may be.
    #[error(
        "batch payload is {len} bytes, more than the {max}-byte limit; the agent must split it into smaller batches"
    )]
    PayloadTooLarge {
        /// The payload's length.
        len: u64,
        /// [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES).
        max: u64,
    },

    /// Storing the batch would take the cache past `max_bytes`. Nothing was stored.
    #[error(
        "cache full: {usage} bytes used, {needed} more needed, limit {max_bytes}; nothing was stored: ask the agent to retry later, after the pipeline has shipped and released records (or raise max_bytes)"
    )]
    Full {
        /// Bytes in use.
        usage: u64,
        /// Bytes the refused append needed.
        needed: u64,
        /// The configured limit.
        max_bytes: u64,
    },

    /// A key that is already cached arrived again with different contents.
    #[error(
        "batch {key} is already cached with a different payload ({stored_len} bytes, crc32c {stored_crc:#010x}; now {new_len} bytes, crc32c {new_crc:#010x}); the agent reused a sequence number: it must resend the original batch or start a new sequence"
    )]
    KeyConflict {
        /// The key.
        key: RecordKey,
        /// Length of the payload already stored.
        stored_len: u64,
        /// crc32c of the payload already stored.
        stored_crc: u32,
        /// Length of the payload offered now.
        new_len: u64,
        /// crc32c of the payload offered now.
        new_crc: u32,
    },

    /// A [`RecordRef`] that this cache never handed out, or that is stale.
    #[error(
        "record {record} is not a live record of this cache (it was released, or it comes from another cache directory); use the RecordRef returned by append or open"
    )]
    UnknownRecord {
        /// The reference.
        record: RecordRef,
    },

    /// An earlier write or fsync failed, so the state of the files is unknown.
    #[error(
        "the cache stopped accepting writes after an earlier write or fsync failure; drop this Cache and open the directory again (open repairs a torn tail), after fixing the disk problem"
    )]
    Poisoned,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
