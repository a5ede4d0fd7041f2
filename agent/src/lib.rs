//! Lifeboat agent library: what runs on each protected server.
//!
//! # How the agent protects a machine
//!
//! Each protected disk has a change **tracker** ([`tracker`]) that keeps a baseline, what it
//! believes the appliance's replica holds, and reports every range that may differ. A
//! **cycle** ([`cycle`]) collects every disk, cuts the changes into batches of the wire format
//! and appends them to the **journal** ([`journal`]), a durable queue on the agent's own disk;
//! the cycle's last batch of every disk carries the same crash-consistent point tag, so a
//! recovery point covers the whole machine. Only once a disk's batches are durable in the
//! journal does its tracker advance its baseline. The **sender** ([`sender`]) ships the
//! journal to the appliance's process server over mutual TLS and deletes each batch once
//! the appliance says it is durable there.
//!
//! Every hand-over is "durable before acknowledged", so killing the agent at any moment loses
//! nothing: the journal keeps what was collected, the tracker's intent log what was handed to
//! the journal, and a restart resumes from there. An appliance that is away fills the journal
//! up to its limit; then cycles pause and the tracker's map accumulates the difference, so
//! even a long outage ends with a delta, not a full resync.
//!
//! # Modules
//!
//! - [`config`]: the configuration file, `agent.toml`.
//! - [`registration`]: first contact with the appliance, the agent's identity on disk.
//! - [`disk`]: read-only access to a protected disk (image file, loop or block device).
//! - [`tracker`]: change tracking; [`tracker::HashScan`] is the universal fallback.
//! - [`freespace`]: the free space of a mounted ext4 or XFS filesystem on a disk
//!   (`FS_IOC_GETFSMAP`), which the tracker neither reads nor sends.
//! - [`journal`], [`cycle`], [`sender`]: see above.
//! - [`bandwidth`]: the network cap and its weekly schedule.
//! - [`progress`]: what the agent is doing, for the dashboard and the terminal.
//! - [`layout`]: where the journal and the trackers' state live in the state directory.
//! - [`run`]: `lifeboat-agent run`, tying it together.

#![deny(missing_docs)]

pub mod bandwidth;
pub mod churn;
pub mod compare;
pub mod config;
pub mod cycle;
pub mod disk;
pub mod freespace;
pub mod freeze;
pub mod group;
pub mod journal;
pub mod layout;
pub mod progress;
pub mod quiesce;
pub mod registration;
pub mod renew;
pub mod reverse;
pub mod run;
pub mod sender;
pub mod system;
pub mod tracker;

#[cfg(test)]
mod testutil;

/// `d` in whole milliseconds, for logs and messages; saturates at `u64::MAX` (585 million
/// years) instead of wrapping.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
