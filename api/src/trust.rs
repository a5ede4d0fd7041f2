//! What keeps an agent trusted: its alerts, the trust check, certificate renewal.

use crate::{CompareRequest, GroupAssignment, PolicyBandwidth};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/agent-alerts` (process server, agent certificate): something went wrong on
/// the machine that the appliance should alert on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentAlert {
    /// `quiesce-failed`: an app-consistent point failed and a crash-consistent one was cut.
    pub kind: String,
    /// What happened, for people (at most 2000 bytes).
    pub message: String,
}

impl AgentAlert {
    /// Shape checks.
    pub fn check(&self) -> Result<(), String> {
        if self.kind != "quiesce-failed" {
            return Err(format!("kind: {:?} is not quiesce-failed", self.kind));
        }
        if self.message.len() > 2000 {
            return Err("message: longer than 2000 bytes".into());
        }
        Ok(())
    }
}

/// `GET /api/v1/trust` (process server, agent certificate): the CAs to trust, and whether
/// the certificate the agent presented should be renewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustAnswer {
    /// Every CA certificate to trust (PEM), the active one first.
    pub ca_pem: String,
    /// The active CA's fingerprint.
    pub active_ca: String,
    /// Why the presented certificate should be renewed, if it should.
    pub renew: Option<String>,
    /// The machine's policy's crash-consistent interval, if it sets one (overrides the
    /// agent's `interval_secs`).
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// The policy's app-consistent interval, if it sets one.
    #[serde(default)]
    pub app_interval_secs: Option<u64>,
    /// The policy's bandwidth schedule, if it sets one.
    #[serde(default)]
    pub bandwidth: Option<PolicyBandwidth>,
    /// Disks the appliance asks the agent to compare with their replicas by block hashes
    /// ([`CompareBlocks`]): the master target found logs of theirs missing at the target.
    /// Absent when there are none (answers without it are what earlier appliances sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<CompareRequest>,
    /// The consistency group this machine is in, as the administrator defined it (absent:
    /// none). An agent takes part in rounds only of this group, with these members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupAssignment>,
}

/// `POST /api/v1/renew` (process server, agent certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR for the agent's new key.
    pub csr_pem: String,
}

/// The answer to [`RenewRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewAnswer {
    /// The new client certificate, from the active CA.
    pub cert_pem: String,
    /// Every CA certificate to trust.
    pub ca_pem: String,
}
