//! The Lifeboat appliance: configuration server, process server and master target in
//! one binary, each a role the configuration turns on or off.
//!
//! ```text
//! agent ──HTTPS 9443 (mTLS)──▶ process server ──▶ cache (fsync) ──▶ codec ▶ cipher ▶ target.put-log
//!   │                                                                                  │
//!   └──HTTPS 443: register (passphrase) ──▶ configuration server (CA, state)           ▼
//!                                      master target ◀── get-log ◀── target log area
//!                                           │ open ▶ decompress ▶ verify ▶ write replica ▶ points
//! ```
//!
//! The tree follows the roles:
//!
//! * [`config_server`] — the control plane (HTTPS 443): administrators, certificate
//!   authorities, data keys, policies and alerts, recovery plans.
//! * [`process_server`] — receiving agents' batches (HTTPS 9443), caching them durably,
//!   shipping them compressed and sealed to the target.
//! * [`master_target`] — applying logs to replica disks, points and retention, the
//!   catalogue at the target, failover, test failover, failback (reverse replication).
//! * [`store`] — the state database (SQLite, versioned migrations), split by resource.
//! * [`http`] — the routes of both listeners; the only place errors become status codes.
//! * Between the roles: [`logobj`] (the frozen log-object format), [`control`] (sealed
//!   control objects of a split deployment), [`handoff`] (batches handed from the process
//!   server to a master target in the same process).
//! * [`config`] — `appliance.toml`.
//!
//! The binary (`main.rs`) adds starting the roles (`run.rs`) and the offline subcommands
//! (`tools.rs`).

#![deny(missing_docs)]

pub mod config;
pub mod config_server;
pub mod control;
pub mod handoff;
pub mod http;
pub mod logobj;
pub mod master_target;
pub mod process_server;
pub mod store;

/// `d` in whole milliseconds, for logs, timestamps and messages; saturates at `u64::MAX`
/// (585 million years) instead of wrapping.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole microseconds, for logs; saturates at `u64::MAX` instead of wrapping.
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
