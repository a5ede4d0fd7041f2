//! Shared plumbing for Lifeboat's binaries.
//!
//! * [`config`]: versioned TOML configuration files. Every role (agent, appliance) has
//!   one static file; a bad file is reported with the file's path, the key that is wrong
//!   and what was expected, and nothing is started.
//! * [`logging`]: `tracing` set up once per process, human-readable by default and JSON
//!   lines with `--log-json` (for log shippers).
//! * [`lock`]: exclusive locks on state directories, patient for a moment.
//! * [`fs`]: crash-safe small-file writes (temporary file, fsync, rename, directory fsync).
#![deny(missing_docs)]

pub mod config;
pub mod fs;
pub mod lock;
pub mod logging;
