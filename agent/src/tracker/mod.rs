//! Change tracking: finding what must be sent so that the target's replica equals the disk.
//!
//! A [`Tracker`] keeps a *baseline*: what it believes the target's replica holds. Each cycle,
//! [`Tracker::collect`] visits every range where the disk may differ from the baseline, in
//! ascending offset order, handing each to a sink (the agent's journal) with its current data
//! ([`Change::Data`]) or as zeros ([`Change::Zero`]). Once everything visited is durable
//! downstream the agent calls [`Tracker::commit`], which makes the new state the baseline.
//!
//! The contract, for every implementation:
//!
//! - **Never lose a change.** Until `commit` returns, the old baseline stays. If `collect`
//!   fails, the sink refuses a change, or the process dies at any moment, the next `collect`
//!   reports again everything the failed one reported (and anything new).
//! - **Never trust a range the target may not hold.** A change handed to the sink may reach
//!   the target even when its cycle is never committed (the journal ships what it made
//!   durable). Such ranges are reported again in the next cycle *whatever the disk holds
//!   then*, even if it went back to the old baseline's content.
//! - **Bounded memory.** Changes borrow the tracker's read buffer; a sink that keeps data must
//!   copy it. Memory does not grow with the disk's size or the amount of change.
//!
//! Implementations: [`hashscan::HashScan`], the universal fallback that hashes the whole disk
//! each cycle, and [`ebpf::Ebpf`], block-layer write tracking through a BPF program.

pub mod ebpf;
pub mod hashscan;
pub mod throttle;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use self::hashscan::{HashScan, HashScanConfig};
pub use self::throttle::{Clock, MonotonicClock, ReadThrottle};
use crate::disk::{Disk, DiskError};

/// One range of the disk that may differ from the target's replica.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// The range `offset .. offset + data.len()` now holds `data`. `data` borrows the
    /// tracker's buffer and is valid only during the sink call.
    Data {
        /// Byte offset on the disk.
        offset: u64,
        /// The disk's current content there.
        data: &'a [u8],
    },
    /// The range `offset .. offset + len` now reads as zeros. The target may write zeros,
    /// discard or punch a hole: anything after which the range reads as zeros.
    Zero {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Change<'_> {
    /// Byte offset where the change starts.
    pub fn offset(&self) -> u64 {
        match *self {
            Change::Data { offset, .. } | Change::Zero { offset, .. } => offset,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            Change::Data { data, .. } => data.len() as u64,
            Change::Zero { len, .. } => len,
        }
    }

    /// Whether the change covers no bytes (trackers never report such changes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte offset just past the change.
    pub fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

impl fmt::Debug for Change<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Data { offset, data } => {
                f.debug_struct("Data").field("offset", offset).field("len", &data.len()).finish()
            }
            Change::Zero { offset, len } => {
                f.debug_struct("Zero").field("offset", offset).field("len", len).finish()
            }
        }
    }
}

/// The sink's reason for refusing a change (journal full, I/O error, shutdown requested).
/// The collect stops and returns [`TrackerError::Sink`]; nothing is lost.
#[derive(Debug)]
pub struct SinkError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl SinkError {
    /// Wraps any error.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(err.into())
    }

    /// The wrapped error.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.0
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<io::Error> for SinkError {
    fn from(e: io::Error) -> Self {
        Self::new(e)
    }
}

impl From<anyhow::Error> for SinkError {
    fn from(e: anyhow::Error) -> Self {
        Self(e.into())
    }
}

impl From<&str> for SinkError {
    fn from(e: &str) -> Self {
        Self::new(e)
    }
}

impl From<String> for SinkError {
    fn from(e: String) -> Self {
        Self::new(e)
    }
}

/// What one [`Tracker::collect`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CycleStats {
    /// The disk's size during the cycle.
    pub disk_size: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes reported as [`Change::Data`].
    pub data_bytes: u64,
    /// Bytes reported as [`Change::Zero`].
    pub zero_bytes: u64,
    /// Number of changes reported (extents).
    pub extents: u64,
    /// Bytes read that were all zeros and matched the baseline, so were not reported (on an
    /// initial copy: the zero blocks the target's blank replica already has).
    pub zero_bytes_skipped: u64,
    /// Bytes not read at all because they are holes of a sparse image.
    pub hole_bytes_skipped: u64,
    /// Bytes not read at all because the mounted filesystem on the disk reported them free
    /// when the collect started (see [`crate::freespace`]). Where the baseline is known they
    /// are not sent either (the target keeps what it holds there); where it is not
    /// (`unknown_bytes`), they are sent as [`Change::Zero`] and also count in `zero_bytes`.
    pub free_bytes_skipped: u64,
    /// Bytes compared against no baseline and so reported whatever they hold: no usable
    /// baseline (corrupt or foreign map), a grown disk's new tail, ranges a failed or
    /// uncommitted cycle may have half-shipped, ranges invalidated by the agent.
    pub unknown_bytes: u64,
    /// Whether this cycle ran against an empty baseline (the initial copy to a blank replica).
    pub initial: bool,
    /// Time spent waiting for the read throttle.
    pub throttled: Duration,
    /// Wall-clock time of the whole collect.
    pub duration: Duration,
}

impl CycleStats {
    /// Bytes reported as changed, data and zeros.
    pub fn bytes_changed(&self) -> u64 {
        self.data_bytes + self.zero_bytes
    }
}

/// Errors from a tracker. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Reading the disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The sink refused a change.
    #[error(
        "the change sink refused the change at offset {offset} of disk {disk}: {source}; nothing is lost, the next collect reports it again"
    )]
    Sink {
        /// The disk's path.
        disk: PathBuf,
        /// Where the refused change starts.
        offset: u64,
        /// The sink's error.
        source: SinkError,
    },
    /// Reading or writing the tracker's own state (baseline map, intent log) failed.
    #[error(
        "cannot {action} {path}: {source}; check free space and permissions in that directory (the agent keeps its change-tracking state there)"
    )]
    State {
        /// The state file or directory.
        path: PathBuf,
        /// What was being done, e.g. "write the baseline map".
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// [`Tracker::commit`] was called without a successful collect since the last commit.
    #[error(
        "nothing to commit for {tracker} tracker: commit only after a collect that returned Ok (a failed collect's changes are reported again by the next collect)"
    )]
    NothingToCommit {
        /// The tracker's name.
        tracker: &'static str,
    },
    /// The tracker was set up with values it cannot work with.
    #[error("invalid {tracker} tracker configuration: {reason}")]
    Config {
        /// The tracker's name.
        tracker: &'static str,
        /// What is wrong and what to use instead.
        reason: String,
    },
}

/// The sink a tracker hands changes to; see [`Tracker::collect`].
pub type Sink<'s> = dyn FnMut(Change<'_>) -> Result<(), SinkError> + 's;

/// A change tracker for one disk.
pub trait Tracker: Send {
    /// A short, stable name for logs and metrics, e.g. `"hashscan"`.
    fn name(&self) -> &'static str;

    /// Visits every range of `disk` that may differ from the baseline, in ascending offset
    /// order without overlaps, calling `sink` once per change. Returns when the whole disk was
    /// covered. A sink error stops the collect ([`TrackerError::Sink`]).
    ///
    /// Collect does not change the baseline: calling it again without [`Tracker::commit`]
    /// reports the same changes again (plus any new ones).
    fn collect(&mut self, disk: &Disk, sink: &mut Sink<'_>) -> Result<CycleStats, TrackerError>;

    /// Makes what the last successful `collect` saw the new baseline, durably. Call it once
    /// every change that collect visited is durable downstream (in the agent's journal). Until
    /// it returns, a crash leaves the old baseline in place. Returns
    /// [`TrackerError::NothingToCommit`] when the last collect failed or was already committed.
    fn commit(&mut self) -> Result<(), TrackerError>;

    /// Tells the tracker that the target may not hold the baseline in `offset .. offset + len`
    /// (a verification found a difference, the target lost data, the replica was replaced):
    /// the next collect reports that range with the disk's current content, whatever the
    /// baseline says. Durable when it returns. `len` may run past the end of the disk
    /// (`u64::MAX` from 0 means the whole disk: a full resync).
    fn invalidate(&mut self, offset: u64, len: u64) -> Result<(), TrackerError>;

    /// Cuts under a filesystem freeze (see `crate::cycle`), step 1, before the freeze: makes
    /// durable whatever must be, because nothing may be written while the filesystems (maybe
    /// the agent's own) are frozen. `false`: this tracker cannot capture under a freeze now
    /// (the hash scan never can; the eBPF tracker not before a pending whole-disk compare).
    fn prepare_cut(&mut self, _disk: &Disk) -> Result<bool, TrackerError> {
        Ok(false)
    }

    /// Step 2, under the freeze: takes the changes since the last collect into memory,
    /// writing nothing to any filesystem and reading at most `max_bytes`. After
    /// [`Capture::Captured`], the next `collect` hands exactly those changes to the sink.
    fn capture(&mut self, _disk: &Disk, _max_bytes: u64) -> Result<Capture, TrackerError> {
        Ok(Capture::Refused("this tracker cannot capture under a freeze".into()))
    }

    /// After the thaw, when the cut was abandoned: makes what step 2 took durable again (it
    /// is reported by the next collect).
    fn abort_cut(&mut self) -> Result<(), TrackerError> {
        Ok(())
    }
}

/// What [`Tracker::capture`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// The changes are in memory.
    Captured {
        /// Bytes read.
        bytes: u64,
    },
    /// Not captured, and why; the cut is abandoned.
    Refused(String),
}

/// The `N` bytes of `record` from `at`, to read a field of a fixed binary layout (the
/// tracker's map and intent log, the records shared with the BPF program). `at + N` must
/// lie within `record`, as a slice `record[at..at + N]` would.
pub(crate) fn field<const N: usize>(record: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&record[at..at + N]);
    out
}
