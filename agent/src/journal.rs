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

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Opens (or creates) the journal in `dir` for a machine with `disks` disks, checking
    /// every batch file; see the module documentation for what is repaired and what is an
    /// error.
    pub fn open(dir: &Path, disks: u32, machine: MachineId) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "create the journal directory"))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open"))?;
        lifeboat_common::lock::lock_exclusive(&lock)
            .map_err(|_| JournalError::Locked { path: lock_path.clone() })?;

        let point_path = dir.join(NEXT_POINT);
        let existing = point_path.exists();
        let next_point = match read_counter(&point_path)? {
            Some(n) => n,
            None => {
                write_counter(&point_path, 1)?;
                1
            }
        };
        let mut queues = Vec::with_capacity(disks as usize);
        let mut bytes = 0;
        for d in 0..disks {
            let q = Self::load_disk(dir, d, machine, existing)?;
            bytes += q.entries.iter().map(|e| e.len).sum::<u64>();
            queues.push(q);
        }
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            dir: dir.to_path_buf(),
            machine,
            inner: Mutex::new(Inner {
                disks: queues,
                next_point,
                bytes,
                mem_bytes: 0,
                mem_budget: 0,
                last_ack: std::time::Instant::now(),
                version: 0,
            }),
            room: Condvar::new(),
            changed,
            _lock: lock,
        })
    }

    fn load_disk(
        root: &Path,
        disk: u32,
        machine: MachineId,
        journal_existed: bool,
    ) -> Result<DiskQueue, JournalError> {
        let dir = root.join(format!("d{disk}"));
        let mut resync = None;
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
            sync_dir(root)?;
            if journal_existed {
                tracing::warn!(
                    dir = %dir.display(),
                    disk,
                    "the journal has no directory for this disk (new disk, or deleted to recover): the whole disk is compared again and what differs is re-sent"
                );
                write_counter(&dir.join(RESYNC), 1)?;
                resync = Some(1);
            }
        } else {
            resync = read_counter(&dir.join(RESYNC))?;
        }
        let persisted_next = read_counter(&dir.join(NEXT_SEQUENCE))?.unwrap_or(0);

        let mut seqs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "list"))? {
            let entry = entry.map_err(io_err(&dir, "list"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // An append or counter update that never reached its rename.
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err(&p, "remove the leftover"))?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(&format!(".{BATCH_EXT}")) {
                match stem.parse::<u64>() {
                    Ok(seq) if stem.len() == 20 => seqs.push(seq),
                    _ => {
                        return Err(JournalError::Misplaced {
                            path: entry.path(),
                            dir: dir.clone(),
                            what: "is not named <20-digit sequence>.batch".into(),
                        });
                    }
                }
            }
        }
        seqs.sort_unstable();
        let mut entries = VecDeque::with_capacity(seqs.len());
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(batch_name(seq));
            let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
            let header = match lifeboat_wire::decode(&bytes) {
                Ok(batch) => *batch.header(),
                Err(source) if i + 1 == seqs.len() => {
                    tracing::warn!(
                        file = %path.display(),
                        "removing a torn batch at the end of the journal ({source}): it was being written when the agent stopped; its changes are collected again"
                    );
                    fs::remove_file(&path).map_err(io_err(&path, "remove the torn batch"))?;
                    sync_dir(&dir)?;
                    break;
                }
                Err(source) => return Err(JournalError::Corrupt { path, dir, source }),
            };
            let misplaced = |what: String| JournalError::Misplaced {
                path: path.clone(),
                dir: dir.clone(),
                what,
            };
            if header.machine != machine {
                return Err(misplaced(format!(
                    "belongs to machine {}, this agent is machine {machine}",
                    header.machine
                )));
            }
            if header.disk_index != disk || header.sequence != seq {
                return Err(misplaced(format!(
                    "holds disk {} sequence {}, its name says disk {disk} sequence {seq}",
                    header.disk_index, header.sequence
                )));
            }
            if let Some(prev) = entries.back().map(|e: &Entry| e.seq)
                && seq != prev + 1
            {
                return Err(JournalError::Gap { dir, missing: prev + 1 });
            }
            entries.push_back(Entry { seq, len: bytes.len() as u64, mem: None });
        }
        let next_seq = entries.back().map_or(0, |e| e.seq + 1).max(persisted_next);
        let reserved = read_counter(&dir.join(RESERVED))?.unwrap_or(0).max(next_seq);
        let unsure = reserved > next_seq;
        Ok(DiskQueue { dir, next_seq, persisted_next, reserved, entries, resync, unsure })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, inner: &mut Inner) {
        inner.version += 1;
        self.changed.send_replace(inner.version);
    }

    fn queue(inner: &mut Inner, disk: u32) -> Result<&mut DiskQueue, JournalError> {
        let disks = inner.disks.len() as u32;
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
        self.lock().disks.len() as u32
    }

    /// Appends a batch for `disk`: `make` gets the sequence number the batch must carry and
    /// returns the encoded batch. Returns the sequence once the batch is durable.
    pub fn append(
        &self,
        disk: u32,
        make: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let seq = q.next_seq;
        let bytes = make(seq);
        match lifeboat_wire::read_header(&bytes) {
            Ok(h) if h.header.sequence == seq && h.header.disk_index == disk => {}
            Ok(h) => {
                return Err(JournalError::BadAppend {
                    disk,
                    seq,
                    what: format!(
                        "it says disk {} sequence {}",
                        h.header.disk_index, h.header.sequence
                    ),
                });
            }
            Err(e) => return Err(JournalError::BadAppend { disk, seq, what: e.to_string() }),
        }
        let len = bytes.len() as u64;
        if len > inner.mem_budget {
            // Too large to keep: everything older goes to files first (files before memory).
            Self::spill(&mut inner, disk, u64::MAX)?;
            let q = Self::queue(&mut inner, disk)?;
            write_atomic(&q.dir.join(batch_name(seq)), &bytes)?;
            q.entries.push_back(Entry { seq, len, mem: None });
        } else {
            let over = (inner.mem_bytes + len).saturating_sub(inner.mem_budget);
            if over > 0 {
                Self::spill_any(&mut inner, over)?;
            }
            let q = Self::queue(&mut inner, disk)?;
            if seq >= q.reserved {
                let reserved = seq + RESERVE_STEP;
                write_counter(&q.dir.join(RESERVED), reserved)?;
                q.reserved = reserved;
            }
            q.entries.push_back(Entry { seq, len, mem: Some(bytes::Bytes::from(bytes)) });
            inner.mem_bytes += len;
        }
        let q = Self::queue(&mut inner, disk)?;
        q.next_seq = seq + 1;
        inner.bytes += len;
        self.bump(&mut inner);
        Ok(seq)
    }

    /// Writes the oldest batches of `disk` held in memory to files until at least `bytes`
    /// bytes were freed (all of them with `u64::MAX`). Returns the bytes freed.
    fn spill(inner: &mut Inner, disk: u32, bytes: u64) -> Result<u64, JournalError> {
        let q = Self::queue(inner, disk)?;
        let mut freed = 0;
        let mut wrote = false;
        for e in q.entries.iter_mut() {
            if freed >= bytes {
                break;
            }
            let Some(b) = &e.mem else { continue };
            write_file(&q.dir.join(batch_name(e.seq)), b)?;
            wrote = true;
            e.mem = None;
            freed += e.len;
        }
        if wrote {
            sync_dir(&q.dir)?;
        }
        inner.mem_bytes -= freed;
        Ok(freed)
    }

    /// Spills at least `bytes` bytes, oldest-first within each disk, from the disks holding
    /// the most in memory.
    fn spill_any(inner: &mut Inner, bytes: u64) -> Result<(), JournalError> {
        let mut left = bytes;
        while left > 0 {
            let held = |q: &DiskQueue| {
                q.entries.iter().filter(|e| e.mem.is_some()).map(|e| e.len).sum::<u64>()
            };
            let Some((disk, _)) = inner
                .disks
                .iter()
                .enumerate()
                .map(|(i, q)| (i, held(q)))
                .filter(|(_, h)| *h > 0)
                .max_by_key(|(_, h)| *h)
            else {
                break;
            };
            left = left.saturating_sub(Self::spill(inner, disk as u32, left)?);
        }
        Ok(())
    }

    /// Sets the most bytes of unacknowledged batches kept in memory (0, the default: every
    /// batch is written to a file when appended). See the module documentation.
    pub fn set_memory_budget(&self, bytes: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        inner.mem_budget = bytes;
        let over = inner.mem_bytes.saturating_sub(bytes);
        if over > 0 {
            Self::spill_any(&mut inner, over)?;
        }
        Ok(())
    }

    /// Writes every batch of `disk` held in memory to its file, durably. Call it before the
    /// disk's tracker commits.
    pub fn persist(&self, disk: u32) -> Result<(), JournalError> {
        Self::spill(&mut self.lock(), disk, u64::MAX).map(|_| ())
    }

    /// Bytes of batches held in memory, all disks.
    pub fn memory_bytes(&self) -> u64 {
        self.lock().mem_bytes
    }

    /// The durable upper bound of the sequences `disk` handed out (see the module
    /// documentation).
    pub fn reserved(&self, disk: u32) -> Result<u64, JournalError> {
        Ok(Self::queue(&mut self.lock(), disk)?.reserved)
    }

    /// The appliance expects `next_seq`, past this journal's next sequence but within its
    /// reservation: batches that were in memory when the agent stopped, some of which the
    /// appliance acknowledged. Drops the queue (the appliance holds all of it) and continues
    /// at `next_seq`; the lost batches belonged to an uncommitted cycle, so nothing else is
    /// needed.
    pub fn advance_to(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        if next_seq <= q.next_seq {
            drop(inner);
            return self.skip_to(disk, next_seq);
        }
        // Only ever after a restart, before anything was appended (`wait_until_settled`):
        // the queue holds files only, all below `next_seq`.
        if next_seq > q.reserved {
            return Err(JournalError::BadAppend {
                disk,
                seq: next_seq,
                what: format!("beyond the reservation {}", q.reserved),
            });
        }
        write_counter(&q.dir.join(NEXT_SEQUENCE), next_seq)?;
        q.persisted_next = next_seq;
        q.next_seq = next_seq;
        drop(inner);
        self.ack(disk, next_seq - 1)?;
        self.settle(disk)
    }

    /// The sequence the next batch of `disk` gets.
    pub fn next_sequence(&self, disk: u32) -> Result<u64, JournalError> {
        Ok(Self::queue(&mut self.lock(), disk)?.next_seq)
    }

    /// The batches of `disk` not acknowledged yet, in sequence order (a snapshot).
    pub fn pending(&self, disk: u32) -> Result<Vec<PendingBatch>, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        Ok(q.entries.iter().map(|e| PendingBatch { disk, seq: e.seq, len: e.len }).collect())
    }

    /// The oldest batch of `disk` not acknowledged yet.
    pub fn first_pending(&self, disk: u32) -> Result<Option<PendingBatch>, JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        Ok(q.entries.front().map(|e| PendingBatch { disk, seq: e.seq, len: e.len }))
    }

    /// The batch of `disk` with sequence `seq`, if still in the journal.
    pub fn read(&self, disk: u32, seq: u64) -> Result<Option<bytes::Bytes>, JournalError> {
        let path = {
            let mut inner = self.lock();
            let q = Self::queue(&mut inner, disk)?;
            let Some(e) = q.entries.iter().find(|e| e.seq == seq) else {
                return Ok(None);
            };
            if let Some(b) = &e.mem {
                return Ok(Some(b.clone()));
            }
            q.dir.join(batch_name(seq))
        };
        match fs::read(&path) {
            Ok(b) => Ok(Some(b.into())),
            // Acknowledged (and deleted) meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    /// The appliance holds every batch of `disk` up to `seq` durably: deletes them.
    pub fn ack(&self, disk: u32, seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let mut doomed = Vec::new();
        while q.entries.front().is_some_and(|e| e.seq <= seq) {
            doomed.push(q.entries.pop_front().expect("checked"));
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // The files say the next sequence; before they go, the counter must. Only up to
        // what is acknowledged: later numbers may belong to batches in memory, which a
        // crash loses (see `advance_to`).
        let acked_next = doomed.last().expect("not empty").seq + 1;
        if doomed.iter().any(|e| e.mem.is_none()) && q.persisted_next < acked_next {
            write_counter(&q.dir.join(NEXT_SEQUENCE), acked_next)?;
            q.persisted_next = acked_next;
        }
        let (mut freed, mut freed_mem) = (0, 0);
        for e in &doomed {
            freed += e.len;
            if e.mem.is_some() {
                freed_mem += e.len;
                continue;
            }
            let p = q.dir.join(batch_name(e.seq));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "delete the acknowledged batch")(e)),
            }
        }
        // No directory fsync: a deleted file that reappears after a crash is re-sent, and the
        // appliance answers that it is a duplicate.
        inner.bytes -= freed;
        inner.mem_bytes -= freed_mem;
        inner.last_ack = std::time::Instant::now();
        self.bump(&mut inner);
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// Before appending `incoming` bytes: while the memory budget has no room for them but
    /// the appliance is acknowledging (an ack in the last [`ACK_PATIENCE`]), waits for
    /// acknowledgements instead of letting the append spill batches to files. So an agent
    /// whose appliance keeps up, only a little slower than the disks are read, is paced by
    /// it and writes nothing; one whose appliance stopped answering spills at once. Returns
    /// false when `stop` is set.
    pub fn wait_for_memory(&self, incoming: u64, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if incoming > inner.mem_budget
                || inner.mem_bytes + incoming <= inner.mem_budget
                || inner.last_ack.elapsed() > ACK_PATIENCE
            {
                return true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The appliance does not hold what the journal already dropped, or expects a sequence
    /// this journal never reached (this agent's state was lost). Marks `disk` for a full
    /// resync (durably, first), drops its queue and continues at `next_seq`.
    pub fn reset(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let q = Self::queue(&mut inner, disk)?;
        let token = q.resync.unwrap_or(0) + 1;
        write_counter(&q.dir.join(RESYNC), token)?;
        q.resync = Some(token);
        write_counter(&q.dir.join(NEXT_SEQUENCE), next_seq)?;
        q.persisted_next = next_seq;
        q.next_seq = next_seq;
        q.reserved = q.reserved.max(next_seq);
        let dropped: Vec<_> = q.entries.drain(..).collect();
        let dir = q.dir.clone();
        let (mut freed, mut freed_mem) = (0, 0);
        for e in dropped {
            freed += e.len;
            if e.mem.is_some() {
                freed_mem += e.len;
                continue;
            }
            let p = dir.join(batch_name(e.seq));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "delete the dropped batch")(e)),
            }
        }
        sync_dir(&dir)?;
        inner.bytes -= freed;
        inner.mem_bytes -= freed_mem;
        Self::queue(&mut inner, disk)?.unsure = false;
        self.bump(&mut inner);
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// Drops the batches of `disk` below `next_seq`: the appliance says it holds them.
    pub fn skip_to(&self, disk: u32, next_seq: u64) -> Result<(), JournalError> {
        if next_seq > 0 {
            self.ack(disk, next_seq - 1)?;
        }
        self.settle(disk)
    }

    /// A reconcile with the appliance happened: appends may go on.
    fn settle(&self, disk: u32) -> Result<(), JournalError> {
        let mut inner = self.lock();
        Self::queue(&mut inner, disk)?.unsure = false;
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    /// Blocks while a disk's numbering waits for the first reconcile with the appliance
    /// after a crash (see `DiskQueue::unsure`), until it happened or `stop` is set. Call it
    /// before a cycle appends anything. Returns false when stopped.
    pub fn wait_until_settled(&self, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        let mut said = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if !inner.disks.iter().any(|q| q.unsure) {
                return true;
            }
            if !said {
                tracing::info!(
                    "waiting for the appliance to confirm the batch numbers before collecting (batches held in memory may have been lost when the agent stopped)"
                );
                said = true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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

    /// Blocks while the journal holds more than `max_bytes - incoming` bytes (and is not
    /// empty), until acks make room or `stop` is set. Returns false when stopped.
    pub fn wait_for_room(&self, max_bytes: u64, incoming: u64, stop: &AtomicBool) -> bool {
        let mut inner = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if inner.bytes == 0 || inner.bytes.saturating_add(incoming) <= max_bytes {
                return true;
            }
            inner = self
                .room
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests;
