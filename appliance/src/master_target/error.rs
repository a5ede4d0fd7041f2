//! The master target's error type.

use crate::store::StateError;
use lifeboat_plugin_host::CallError;

/// A failure of the master target: applying, points, the catalogue, failover. What it
/// says is meant for the administrator (in a job's message, an alert or the log).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The state database refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// A plugin call (the target, the codec, the cipher) failed.
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// A file of the appliance could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON document (a spec, a catalogue, a control object) did not parse.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A control object did not open.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// A log object at the target is malformed or not the one its name says.
    #[error(transparent)]
    Log(#[from] crate::logobj::LogError),
    /// A stored key is not hex.
    #[error("malformed stored key: {0}")]
    Hex(#[from] hex::FromHexError),
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

impl MasterError {
    /// A failure said in words.
    pub fn msg(message: impl Into<String>) -> Self {
        MasterError::Failed(message.into())
    }
}

impl From<String> for MasterError {
    fn from(message: String) -> Self {
        MasterError::Failed(message)
    }
}
