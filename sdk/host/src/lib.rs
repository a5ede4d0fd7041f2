//! Runs Lifeboat plugins: WebAssembly components loaded at run time, sandboxed by
//! wasmtime.
//!
//! # Design
//!
//! **Loading.** A plugin is `<name>.wasm` plus a `<name>.toml` [`manifest`]. Loading
//! checks, in this order, and refuses with an error naming the plugin and the reason:
//! the manifest parses and names a WIT version this host implements; the file's sha256
//! equals the manifest's (corruption); the plugin is *trusted* — its sha256 is pinned in
//! the configuration, or the manifest carries an ed25519 signature by a configured
//! publisher key, or the configuration explicitly allows unsigned plugins; every
//! capability it requests is granted; the bytes are a valid component; and it exports
//! the interface of the world its manifest claims. Nothing is instantiated until all of
//! that passed.
//!
//! **Compiling.** Cranelift compiles a component in about half a second; a precompiled
//! artifact loads in about a millisecond. Compiled artifacts are cached on disk under a
//! key made of the wasmtime version, the engine's compatibility hash (target, tunables,
//! features) and the plugin's sha256, so a changed engine or plugin never meets a stale
//! artifact. The cache is written atomically (temporary file, rename).
//!
//! **Instances.** One engine per process with the pooling allocator, so instantiating
//! costs microseconds: the host pre-links each plugin once (`InstancePre`) and creates
//! instances from it. An instance lives as long as its owner keeps it — the process
//! server keeps one codec and one cipher instance per worker, the master target one
//! target instance — and calls on an instance never overlap (`&mut self`). Plugin
//! state across calls (nonce counters, leases, a database session between freeze and
//! thaw) therefore lives in the instance; state that must survive a restart lives in a
//! granted directory.
//!
//! **Limits.** Every call runs under an epoch deadline (a ticker thread advances the
//! epoch every [`EPOCH_TICK`]) and a memory limit enforced by a store limiter; a call
//! that traps, passes its deadline or outgrows its memory fails with
//! [`CallError::Failed`] naming the plugin and the reason, and the instance is discarded
//! and rebuilt (with `init`) before its next call. The caller treats the failed call's
//! work as not done: nothing it produced is acknowledged.
//!
//! **Capabilities** are deny-by-default. A plugin gets: the directories it requested and
//! the configuration granted (as WASI preopens), HTTP to granted authorities only
//! (checked on every request), granted commands and socket addresses, real clocks only
//! if granted, random numbers, and nothing else — no environment, no arguments, no
//! inherited filesystem or network.
//!
//! **Reloading.** [`registry::Registry`] holds the current set of loaded plugins behind
//! an `Arc`; reloading builds a new set and swaps it in. Instances made from the old set
//! keep their `Arc` and finish their calls; new instances come from the new set.
#![deny(missing_docs)]

pub mod config;
pub mod contract;
pub mod keys;
pub mod manifest;
pub mod registry;

mod beneath;
mod caps;
mod disks;
mod engine;
mod hostfns;
mod instance;
mod load;
mod state;
mod worlds;

pub use engine::{EPOCH_TICK, Host};
pub use instance::{
    ActionInstance, CipherInstance, CodecInstance, QuiescerInstance, TargetInstance,
};
pub use load::{LoadError, LoadedPlugin, Refusal, TrustBasis, signed_by};
pub use worlds::{CallError, Encoded, FailReason, PluginError, action, target};
