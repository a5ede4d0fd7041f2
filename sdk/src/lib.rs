//! Write Lifeboat plugins in Rust.
//!
//! A Lifeboat plugin is a WebAssembly component that the appliance (or, for quiescers,
//! the agent) loads at run time and runs sandboxed. It implements one *world* of the
//! WIT contract in `sdk/wit/lifeboat-plugins@<version>/`:
//!
//! | world | trait | export macro | what it does |
//! | --- | --- | --- | --- |
//! | codec | [`codec::Codec`] | [`export_codec!`] | compresses replication chunks |
//! | cipher | [`cipher::Cipher`] | [`export_cipher!`] | seals chunks, through the host's native AEAD |
//! | target | [`target::Target`] | [`export_target!`] | keeps replica disks, recovery points, logs, VMs |
//! | quiescer | [`quiescer::Quiescer`] | [`export_quiescer!`] | freezes an application for app-consistent points |
//! | action | `action::Action` | `export_action!` | a recovery plan's pre or post action |
//!
//! Enable the cargo feature named after your world (and only that one: a component
//! declares and must implement every export of the world compiled into it), implement
//! the trait, and call the export macro once:
//!
//! ```toml
//! [package]
//! name = "my-target"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! lifeboat-sdk = { version = "0.1", features = ["target"] }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component. Next to it goes a manifest
//! (`my-target.toml`, see the appliance docs) naming the world, the capabilities the
//! plugin asks for, and the sha256 of the `.wasm`.
//!
//! # Example: a codec
//!
//! ```
//! # #[cfg(feature = "codec")] mod doc {
//! use lifeboat_sdk::codec::Codec;
//! use lifeboat_sdk::{PluginError, Settings};
//!
//! /// Run-length encodes zero bytes; everything else is stored as is.
//! struct ZeroRle;
//!
//! impl Codec for ZeroRle {
//!     fn init(_settings: Settings) -> Result<Self, PluginError> {
//!         Ok(ZeroRle)
//!     }
//!     fn compress(&mut self, _level: i32, data: &[u8]) -> Result<Vec<u8>, PluginError> {
//!         if data.iter().all(|b| *b == 0) {
//!             return Ok((data.len() as u32).to_le_bytes().to_vec());
//!         }
//!         // Not smaller: the SDK then stores the input raw, as the contract requires.
//!         Ok(data.to_vec())
//!     }
//!     fn decompress(&mut self, data: &[u8], expected_len: usize) -> Result<Vec<u8>, PluginError> {
//!         Ok(vec![0; expected_len])
//!     }
//! }
//!
//! lifeboat_sdk::export_codec!(ZeroRle);
//! # }
//! ```
//!
//! # Instance lifetime and state
//!
//! The host creates one instance per configured plugin and role, calls `init` once
//! with the plugin's settings, then makes every call on that instance until the plugin
//! is reloaded or the process stops. The value your `init` returns lives in the
//! instance, so state that must last across calls (a nonce counter, a lease being
//! renewed, a database session held between `freeze` and `thaw`) simply lives in your
//! struct. Calls on one instance never overlap. Codecs and ciphers may be instantiated
//! several times to work on several disks in parallel, so they must not rely on being
//! the only instance. State that must survive a restart belongs in a directory the
//! configuration grants to the plugin (it appears as a preopened directory).
//!
//! A call that traps, runs past its deadline or exceeds its memory limit ends the
//! instance; the host starts a new one (calling `init` again) for the next call and
//! treats the failed call's work as not done.
#![deny(missing_docs)]

extern crate self as lifeboat_sdk;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The settings table given to `init`: the plugin's `settings` from the appliance
/// configuration, as key/value strings.
pub type Settings = Vec<(String, String)>;

/// Shorthand for results of plugin calls.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// Looks up `key` in `settings`.
pub fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Looks up a setting the plugin cannot work without; its absence is an `invalid` error
/// that names the key.
pub fn required_setting<'a>(
    settings: &'a [(String, String)],
    key: &str,
) -> Result<&'a str, PluginError> {
    setting(settings, key).ok_or_else(|| {
        PluginError::Invalid(format!(
            "missing setting `{key}`: add it under the plugin's `settings` table"
        ))
    })
}

/// Why a plugin call failed; see the WIT `plugin-error` variant. Identical across worlds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// Transient; the host retries later.
    Retryable(String),
    /// The named object does not exist.
    NotFound(String),
    /// Bad request or configuration; retrying will not help.
    Invalid(String),
    /// Refused (credentials, permissions, an ungranted capability).
    Denied(String),
    /// Anything else.
    Internal(String),
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::Retryable(m) => write!(f, "retryable: {m}"),
            PluginError::NotFound(m) => write!(f, "not found: {m}"),
            PluginError::Invalid(m) => write!(f, "invalid: {m}"),
            PluginError::Denied(m) => write!(f, "denied: {m}"),
            PluginError::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => PluginError::NotFound(e.to_string()),
            K::PermissionDenied => PluginError::Denied(e.to_string()),
            K::InvalidInput | K::InvalidData => PluginError::Invalid(e.to_string()),
            K::Interrupted | K::TimedOut | K::WouldBlock => PluginError::Retryable(e.to_string()),
            _ => PluginError::Internal(e.to_string()),
        }
    }
}

/// Converts between the SDK's error and one world's generated `plugin-error` type.
macro_rules! error_conversions {
    ($generated:path) => {
        impl From<$crate::PluginError> for $generated {
            fn from(e: $crate::PluginError) -> Self {
                use $generated as G;
                match e {
                    $crate::PluginError::Retryable(m) => G::Retryable(m),
                    $crate::PluginError::NotFound(m) => G::NotFound(m),
                    $crate::PluginError::Invalid(m) => G::Invalid(m),
                    $crate::PluginError::Denied(m) => G::Denied(m),
                    $crate::PluginError::Internal(m) => G::Internal(m),
                }
            }
        }
        impl From<$generated> for $crate::PluginError {
            fn from(e: $generated) -> Self {
                use $generated as G;
                match e {
                    G::Retryable(m) => $crate::PluginError::Retryable(m),
                    G::NotFound(m) => $crate::PluginError::NotFound(m),
                    G::Invalid(m) => $crate::PluginError::Invalid(m),
                    G::Denied(m) => $crate::PluginError::Denied(m),
                    G::Internal(m) => $crate::PluginError::Internal(m),
                }
            }
        }
    };
}

/// Holds the one live plugin value of an instance. Wasm instances are single-threaded,
/// so a thread-local is the instance's global state.
#[allow(dead_code)]
mod slot {
    use std::any::Any;
    use std::cell::RefCell;

    pub(crate) struct Slot(RefCell<Option<Box<dyn Any>>>);

    impl Slot {
        pub(crate) const fn new() -> Self {
            Slot(RefCell::new(None))
        }
        pub(crate) fn set<T: 'static>(&self, value: T) {
            *self.0.borrow_mut() = Some(Box::new(value));
        }
        pub(crate) fn with<T: 'static, R>(
            &self,
            f: impl FnOnce(&mut T) -> Result<R, crate::PluginError>,
        ) -> Result<R, crate::PluginError> {
            let mut guard = self.0.borrow_mut();
            let value = guard.as_mut().and_then(|b| b.downcast_mut::<T>()).ok_or_else(|| {
                crate::PluginError::Invalid(
                    "plugin not initialised: the host must call init first".into(),
                )
            })?;
            f(value)
        }
    }
}

#[cfg(feature = "codec")]
pub mod codec;

#[cfg(feature = "cipher")]
pub mod cipher;

#[cfg(feature = "target")]
pub mod target;

#[cfg(feature = "action")]
pub mod action;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "quiescer")]
pub mod quiescer;
