//! Lifeboat agent library: what runs on each protected server.
//!
//! - [`disk`]: read-only access to a protected disk (image file, loop or block device):
//!   positional reads and where the data is (`SEEK_DATA`/`SEEK_HOLE`).
//! - [`tracker`]: change tracking. The [`tracker::Tracker`] trait reports, each cycle, every
//!   range where the disk may differ from the target's replica; [`tracker::HashScan`] is the
//!   universal fallback that needs nothing from the kernel.

pub mod bandwidth;
pub mod config;
pub mod cycle;
pub mod disk;
pub mod journal;
pub mod progress;
pub mod tracker;
