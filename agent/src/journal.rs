//! The agent's journal: a durable on-disk queue of encoded batches that the appliance has not
//! acknowledged yet, one queue per disk, in sequence order.
//!
//! # Why a journal
//!
//! Collecting changes (reading disks) and sending them (a WAN link that comes and goes) run at
//! different speeds and fail for different reasons. The journal decouples them: a cycle makes
//! its batches durable here, and only then tells the tracker to advance its baseline
//! ([`crate::tracker::Tracker::commit`]). From that moment the changes exist in exactly one
//! place that survives a crash, the journal, until the appliance says they are durable on its
//! side (an ack), and only then are they deleted. A network outage therefore never forces a
//! full resync: the journal keeps what was collected, and when it is full the agent stops
//! collecting and lets the tracker's map accumulate the difference instead (the next collect
//! reports exactly the blocks that changed meanwhile).
//!
//! # Batches kept in memory
//!
//! Writing every batch to disk and reading it back costs the protected server a second
//! write of everything it sends. With a memory budget ([`Journal::set_memory_budget`]),
//! appended batches stay in memory while the unacknowledged ones held there fit in it; the
//! sender sends them from memory and, when the appliance keeps up, they are acknowledged
//! without ever touching the disk. The oldest are written out (*spilled*) when the budget
//! would be exceeded, so the batches on disk are always the oldest of a disk's queue and
//! the ones in memory the newest. Before a tracker commits a cycle, [`Journal::persist`]
//! spills every batch still in memory: a committed change is always either acknowledged
//! or in a file. A batch lost from memory in a crash therefore belongs to a cycle that was
//! not committed, whose changes the tracker reports again.
//!
//! Sequence numbers handed out to batches in memory are covered by a durable reservation
//! (`reserved`, advanced [`RESERVE_STEP`] at a time), so that after a crash the agent knows
//! which numbers it may have sent: an appliance that expects a number up to the reservation
//! lost nothing the agent had committed ([`Journal::advance_to`]); beyond it, this agent's
//! state was lost.
//!
//! # Layout
//!
//! ```text
//! <dir>/lock                          advisory lock: one agent per journal
//! <dir>/next-point                    next recovery point number of the machine (decimal)
//! <dir>/d<index>/<seq:020>.batch      one encoded batch (lifeboat-wire format v1)
//! <dir>/d<index>/next-sequence        a lower bound of the disk's next sequence (decimal)
//! <dir>/d<index>/reserved             an upper bound of every sequence handed out (decimal)
//! <dir>/d<index>/resync               present: the whole disk must be compared again
//! ```
//!
//! One file per batch keeps every operation simple and crash-safe: an append writes
//! `<name>.tmp`, fsyncs it, renames it into place and fsyncs the directory, so a batch file
//! either exists whole or not at all; an ack deletes whole files. Sequence numbers are the file
//! names, zero-padded so that the names sort in order.
//!
//! The next sequence of a disk is `max(next-sequence, last file + 1)`. Appends do not touch
//! `next-sequence` (the files say it); an ack writes it (atomically) *before* deleting files,
//! so the number never goes backwards even when the queue becomes empty. The recovery point
//! number is reserved ([`Journal::reserve_point`]) durably before the first batch carrying it
//! is written, so a crash can leave a point incomplete but never reuses its number.
//!
//! # Load
//!
//! Every file is decoded ([`lifeboat_wire::decode`], all checksums) when the journal opens, and
//! its header must name this machine, this disk and the sequence of its file name; the
//! sequences must be contiguous. A file that does not decode and is the *last* of its disk is a
//! batch torn by a crash while it was written (on a filesystem that reordered the rename before
//! the data): it was never acknowledged nor committed in the tracker, so it is removed with a
//! warning and its changes are collected again. Any other damage is an error naming the file;
//! deleting that disk's directory makes the agent re-send the whole disk (a missing disk
//! directory in an existing journal is created with the `resync` mark).
//!
//! # Resync marks
//!
//! When the appliance turns out not to hold what the journal already dropped (its cache was
//! lost, or this agent's state was), [`Journal::reset`] writes `resync` durably, drops the
//! queue and sets the next sequence. The cycle sees the mark
//! ([`Journal::resync_requested`]), invalidates the whole disk in its tracker (durable), and
//! only then clears the mark ([`Journal::clear_resync`]), so a crash in between repeats the
//! invalidation rather than losing it.

mod ack;
mod append;
mod load;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use lifeboat_wire::{MachineId, WireError};

const BATCH_EXT: &str = "batch";
const NEXT_POINT: &str = "next-point";
const NEXT_SEQUENCE: &str = "next-sequence";
const RESYNC: &str = "resync";
const RESERVED: &str = "reserved";

/// How recent the last acknowledgement must be for an append to wait for room in memory
/// rather than spill (see [`Journal::wait_for_memory`]).
pub const ACK_PATIENCE: Duration = Duration::from_secs(2);

/// Sequence numbers reserved at a time for batches kept in memory.
pub const RESERVE_STEP: u64 = 64;

/// Errors of the journal. Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A consistency group asked for a point number this machine already used.
    #[error("point {point} is already taken on this machine (the next free number is {next})")]
    PointTaken {
        /// The number asked for.
        point: u64,
        /// The next free number.
        next: u64,
    },
    /// A file or directory operation failed.
    #[error(
        "cannot {action} {path}: {source}; check free space and permissions of the agent's state directory"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A batch file that is not the last of its disk does not decode.
    #[error(
        "journal file {path} is corrupt ({source}); it is not the last batch of its disk, so it is not a torn write. Stop the agent and delete the directory {dir}: the agent then compares the whole disk again and re-sends what differs"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The disk's journal directory.
        dir: PathBuf,
        /// What the decoder found.
        source: WireError,
    },
    /// A batch file decodes but does not belong where it is.
    #[error(
        "journal file {path} {what}; was the state directory copied from another machine? Stop the agent and delete the directory {dir} to re-send that disk"
    )]
    Misplaced {
        /// The file.
        path: PathBuf,
        /// The disk's journal directory.
        dir: PathBuf,
        /// What does not match.
        what: String,
    },
    /// Batch files of a disk are not contiguous.
    #[error(
        "journal directory {dir} lacks batch {missing} between the batches it holds; stop the agent and delete {dir} to re-send that disk"
    )]
    Gap {
        /// The disk's journal directory.
        dir: PathBuf,
        /// The missing sequence.
        missing: u64,
    },
    /// A counter file does not hold a number.
    #[error(
        "journal file {path} should hold a decimal number but holds {text:?}; stop the agent and delete it (and for a disk, its whole directory) to recover"
    )]
    Counter {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// Another process holds the journal.
    #[error(
        "the journal {path} is in use by another process (is another lifeboat-agent running with the same state_dir?)"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A disk index past the disks the journal was opened with.
    #[error("disk index {disk} is not in the journal (it has {disks} disks)")]
    NoSuchDisk {
        /// The index asked for.
        disk: u32,
        /// How many disks the journal has.
        disks: u32,
    },
    /// The bytes handed to [`Journal::append`] are not a batch for that place.
    #[error(
        "refusing to journal batch for disk {disk} sequence {seq}: {what} (a bug in the agent)"
    )]
    BadAppend {
        /// The disk.
        disk: u32,
        /// The sequence it was to get.
        seq: u64,
        /// What is wrong.
        what: String,
    },
}

/// One batch waiting in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingBatch {
    /// The disk index.
    pub disk: u32,
    /// The batch's sequence number.
    pub seq: u64,
    /// Size of the encoded batch in bytes.
    pub len: u64,
}

/// A batch in a disk's queue: in a file, or (the newest ones) in memory.
#[derive(Debug)]
struct Entry {
    seq: u64,
    len: u64,
    mem: Option<bytes::Bytes>,
}

#[derive(Debug)]
struct DiskQueue {
    dir: PathBuf,
    /// The sequence the next append gets.
    next_seq: u64,
    /// What `next-sequence` holds.
    persisted_next: u64,
    /// What `reserved` holds (at least `next_seq`).
    reserved: u64,
    /// Ascending and contiguous; the ones in files before the ones in memory.
    entries: VecDeque<Entry>,
    /// The resync mark's token, when present.
    resync: Option<u64>,
    /// Opened with a reservation beyond the next sequence: batches that were only in memory
    /// may have reached the appliance, so nothing is appended until a reconcile with it
    /// ([`Journal::skip_to`], [`Journal::advance_to`], [`Journal::reset`]) said where to go
    /// on; otherwise new batches could reuse those numbers.
    unsure: bool,
}

#[derive(Debug)]
struct Inner {
    disks: Vec<DiskQueue>,
    next_point: u64,
    bytes: u64,
    /// Bytes of the batches held in memory.
    mem_bytes: u64,
    /// Most bytes of batches held in memory.
    mem_budget: u64,
    /// When the appliance last acknowledged something (or the journal opened).
    last_ack: std::time::Instant,
    /// Bumped at every change, for [`Journal::subscribe`].
    version: u64,
}

/// The journal; see the module documentation. Shared between the cycle (appends) and the
/// sender (reads and acks): every method takes `&self`.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    machine: MachineId,
    inner: Mutex<Inner>,
    /// Signalled when bytes leave the journal.
    room: Condvar,
    changed: tokio::sync::watch::Sender<u64>,
    _lock: File,
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> JournalError + use<> {
    let path = path.to_path_buf();
    move |source| JournalError::Io { path, action, source }
}

fn batch_name(seq: u64) -> String {
    format!("{seq:020}.{BATCH_EXT}")
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    lifeboat_common::fs::sync_dir(dir).map_err(io_err(dir, "sync the directory"))
}

/// Writes `bytes` to `path` atomically and durably (see `lifeboat_common::fs`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    lifeboat_common::fs::write_atomic(path, bytes, None).map_err(io_err(path, "write"))
}

/// [`write_atomic`] without the directory fsync (the caller does it once for many files).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    lifeboat_common::fs::write_file(path, bytes, None).map_err(io_err(path, "write"))
}

fn read_counter(path: &Path) -> Result<Option<u64>, JournalError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| JournalError::Counter { path: path.to_path_buf(), text }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "read")(e)),
    }
}

fn write_counter(path: &Path, value: u64) -> Result<(), JournalError> {
    write_atomic(path, format!("{value}\n").as_bytes())
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, inner: &mut Inner) {
        inner.version += 1;
        self.changed.send_replace(inner.version);
    }

    /// Number of disks.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "Journal::open makes one queue per disk of a u32 count, and none is added later"
    )]
    fn count(inner: &Inner) -> u32 {
        inner.disks.len() as u32
    }

    fn queue(inner: &mut Inner, disk: u32) -> Result<&mut DiskQueue, JournalError> {
        let disks = Self::count(inner);
        inner.disks.get_mut(disk as usize).ok_or(JournalError::NoSuchDisk { disk, disks })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The machine whose batches the journal holds.
    pub fn machine(&self) -> MachineId {
        self.machine
    }

    /// Number of disks.
    pub fn disk_count(&self) -> u32 {
        Self::count(&self.lock())
    }

    /// The token of `disk`'s resync mark, when the whole disk must be compared again.
    pub fn resync_requested(&self, disk: u32) -> Result<Option<u64>, JournalError> {
        Ok(Self::queue(&mut self.lock(), disk)?.resync)
    }

    /// Removes `disk`'s resync mark if it still has `token` (no new reset came meanwhile).
    /// Call it after the tracker's invalidation is durable.
    pub fn clear_resync(&self, disk: u32, token: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        if q.resync != Some(token) {
            return Ok(());
        }
        let p = q.dir.join(RESYNC);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p, "remove the resync mark")(e)),
        }
        sync_dir(&q.dir)?;
        q.resync = None;
        Ok(())
    }

    /// The number the next recovery point gets.
    pub fn next_point(&self) -> u64 {
        self.lock().next_point
    }

    /// Reserves the next recovery point number, durably: it is never handed out again.
    pub fn reserve_point(&self) -> Result<u64, JournalError> {
        let mut inner = self.lock();
        let n = inner.next_point;
        write_counter(&self.dir.join(NEXT_POINT), n + 1)?;
        inner.next_point = n + 1;
        Ok(n)
    }

    /// Reserves exactly point `n` (a consistency group's agreed number), durably; numbers
    /// between the next one and `n` are skipped, never used. Fails if `n` was already
    /// reserved or passed.
    pub fn reserve_point_at(&self, n: u64) -> Result<u64, JournalError> {
        let mut inner = self.lock();
        if n < inner.next_point {
            return Err(JournalError::PointTaken { point: n, next: inner.next_point });
        }
        write_counter(&self.dir.join(NEXT_POINT), n + 1)?;
        inner.next_point = n + 1;
        Ok(n)
    }

    /// Bytes of batches in the journal.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Number of batches in the journal, all disks.
    pub fn len(&self) -> usize {
        self.lock().disks.iter().map(|q| q.entries.len()).sum()
    }

    /// Whether every batch was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that sees a new value at every append, ack and reset.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests;
