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
//! * [`config`] — `appliance.toml`.
//! * [`state`] — SQLite state store with migrations.
//! * [`process`] — receiving, caching, shipping.
//! * [`master`] — applying, points, retention.
//! * [`logobj`] — the frozen log-object format between the two.
//! * [`control`] — sealed control objects between the roles of a split deployment.
//! * [`http`] — the routes of both listeners.
//! * [`run`] — starting the roles.

pub mod admin;
pub mod catalogue;
pub mod config;
pub mod control;
pub mod failover;
pub mod handoff;
pub mod http;
pub mod keys;
pub mod logobj;
pub mod master;
pub mod pki;
pub mod plan;
pub mod policy;
pub mod process;
pub mod qemu;
pub mod reverse;
pub mod run;
pub mod state;
pub mod tools;
