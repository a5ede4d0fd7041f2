//! The error body of every API answer.

use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong and what to do, for people.
    pub error: String,
    /// Stable machine-readable code (`sequence-gap`, `cache-full`, `forbidden`, …).
    pub code: String,
    /// For `sequence-gap`: the sequence the appliance expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sequence: Option<u64>,
}
