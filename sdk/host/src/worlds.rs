//! Bindings per world (`bindgen!` in private modules), the errors of plugin calls and
//! the linkers. The typed instances built on them are in `instance.rs`.

use crate::state::HostState;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

#[allow(missing_docs)]
pub(crate) mod gen_codec {
    wasmtime::component::bindgen!({
        path: "../wit/lifeboat-plugins@0.1.0",
        world: "codec-plugin",
        exports: { default: async },
    });
}

#[allow(missing_docs)]
pub(crate) mod gen_cipher {
    wasmtime::component::bindgen!({
        path: "../wit/lifeboat-plugins@0.1.0",
        world: "cipher-plugin",
        exports: { default: async },
        with: { "lifeboat:plugins/types": crate::worlds::gen_codec::lifeboat::plugins::types },
    });
}

#[allow(missing_docs)]
pub(crate) mod gen_target {
    wasmtime::component::bindgen!({
        path: "../wit/lifeboat-plugins@0.1.0",
        world: "target-plugin",
        exports: { default: async },
        with: { "lifeboat:plugins/types": crate::worlds::gen_codec::lifeboat::plugins::types },
    });
}

#[allow(missing_docs)]
pub(crate) mod gen_quiescer {
    wasmtime::component::bindgen!({
        path: "../wit/lifeboat-plugins@0.1.0",
        world: "quiescer-plugin",
        imports: { "lifeboat:plugins/commands.run": async, default: },
        exports: { default: async },
        with: { "lifeboat:plugins/types": crate::worlds::gen_codec::lifeboat::plugins::types },
    });
}

#[allow(missing_docs)]
pub(crate) mod gen_action {
    wasmtime::component::bindgen!({
        path: "../wit/lifeboat-plugins@0.1.0",
        world: "action-plugin",
        exports: { default: async },
        with: { "lifeboat:plugins/types": crate::worlds::gen_codec::lifeboat::plugins::types },
    });
}

pub(crate) type GenError = gen_codec::lifeboat::plugins::types::PluginError;

/// Types of the action world, as the host sees them.
pub mod action {
    pub use super::gen_action::exports::lifeboat::plugins::action::{PlanContext, PlanMachine};
}

/// Types of the target world, as the host sees them.
pub mod target {
    pub use super::gen_target::exports::lifeboat::plugins::target::{
        DiskInfo, Extent, Firmware, MaterializedDisk, NicSpec, PointInfo, PowerState,
        TargetCapabilities, VmSpec, ZeroRange,
    };
}

/// The output of a codec's `compress`.
pub use gen_codec::exports::lifeboat::plugins::codec::Encoded;

/// An error a plugin returned, as a value (the plugin kept running).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Transient: retry later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Bad request or configuration.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Refused.
    #[error("denied: {0}")]
    Denied(String),
    /// Anything else.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<GenError> for PluginError {
    fn from(e: GenError) -> Self {
        match e {
            GenError::Retryable(m) => PluginError::Retryable(m),
            GenError::NotFound(m) => PluginError::NotFound(m),
            GenError::Invalid(m) => PluginError::Invalid(m),
            GenError::Denied(m) => PluginError::Denied(m),
            GenError::Internal(m) => PluginError::Internal(m),
        }
    }
}

/// Why a plugin call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin returned an error value; the instance is still usable.
    #[error("plugin {plugin}: {call} failed: {error}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// The call.
        call: &'static str,
        /// What it returned.
        error: PluginError,
    },
    /// The plugin was stopped (trap, deadline, memory) or could not be instantiated. The
    /// instance was discarded; the next call starts a fresh one.
    #[error("plugin {plugin}: {call} stopped: {reason}")]
    Failed {
        /// Plugin name.
        plugin: String,
        /// The call.
        call: &'static str,
        /// What stopped it.
        reason: FailReason,
    },
}

impl CallError {
    /// The plugin's own error, if it returned one.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            CallError::Plugin { error, .. } => Some(error),
            CallError::Failed { .. } => None,
        }
    }
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Plugin { error: PluginError::Retryable(_), .. })
    }
}

/// What stopped a plugin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// It ran past its per-call deadline.
    #[error("ran past its deadline of {0} ms")]
    Deadline(u64),
    /// It tried to grow its memory past the granted limit.
    #[error("exceeded its memory limit of {0} MiB")]
    Memory(u64),
    /// It trapped (panic, unreachable, out-of-bounds access …).
    #[error("trapped: {0}")]
    Trap(String),
    /// The host could not run it (instantiation or linking failed).
    #[error("{0}")]
    Host(String),
}

pub(crate) fn codec_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
    gen_codec::CodecPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    Ok(l)
}

/// WASI (and `wasi:http` where the world may use it) plus the shared `types` interface:
/// what every world but the codec's links before its own interfaces.
fn linker_with_types(engine: &Engine, http: bool) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
    if http {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    }
    gen_codec::lifeboat::plugins::types::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut l,
        |s| s,
    )?;
    Ok(l)
}

pub(crate) fn cipher_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = linker_with_types(engine, false)?;
    gen_cipher::CipherPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    Ok(l)
}

pub(crate) fn target_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = linker_with_types(engine, true)?;
    gen_target::TargetPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    Ok(l)
}

pub(crate) fn quiescer_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = linker_with_types(engine, false)?;
    gen_quiescer::QuiescerPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    Ok(l)
}

pub(crate) fn action_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = linker_with_types(engine, true)?;
    gen_action::ActionPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    Ok(l)
}
