//! The JSON bodies of the agent ↔ appliance HTTP API, protocol version 1.
//!
//! | endpoint | server | auth | body → answer |
//! | --- | --- | --- | --- |
//! | `POST /api/v1/register` | configuration server (443) | one-time passphrase | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `POST /api/v1/hello` | process server (9443) | client certificate | [`Hello`] → [`HelloResponse`] |
//! | `PUT /api/v1/batches` | process server | client certificate | an encoded batch → [`BatchAck`] |
//! | `POST /api/v1/progress` | process server | client certificate | [`Progress`] → `{}` |
//! | `GET /api/v1/machines/<id>/points` | process server | client certificate (own machine) | → [`PointList`] |
//! | `POST /api/v1/groups/points` | process server | client certificate (a member) | [`GroupPoint`] → `{}` |
//!
//! Errors are `{"error": "...", "code": "..."}` with an HTTP status. A full cache answers
//! `429` with `Retry-After`; a batch out of sequence answers `409` with code
//! `sequence-gap` and the sequence the appliance expects. New fields are added with
//! `#[serde(default)]` so both sides of a minor upgrade understand each other; anything
//! incompatible is a new protocol version, agreed on in `register` and `hello`.

use serde::{Deserialize, Serialize};

/// An agent's first contact: it proves it may join with the passphrase and sends a CSR
/// for the key it generated (the key never leaves the agent).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The one-time registration passphrase the administrator gave the agent.
    pub passphrase: String,
    /// The machine's host name, for people.
    pub hostname: String,
    /// Protocol versions the agent speaks.
    pub protocol_versions: Vec<u16>,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
}

/// What a registered agent needs from then on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The identity the appliance assigned (UUID).
    pub machine_id: String,
    /// The agent's client certificate (PEM), signed by the appliance CA.
    pub cert_pem: String,
    /// The appliance CA (PEM): trust anchor for every later connection.
    pub ca_pem: String,
    /// The protocol version chosen.
    pub protocol_version: u16,
    /// Where to send data (`https://host:9443`).
    pub process_server_url: String,
}

/// One protected disk as the agent describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDescriptor {
    /// Position of the disk in the machine (0 = boot disk).
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device or image path on the source, for people.
    pub path: String,
}

/// Sent at every (re)connection to the process server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol versions the agent speaks.
    pub protocol_versions: Vec<u16>,
    /// The machine's disks now.
    pub disks: Vec<DiskDescriptor>,
}

/// Where the appliance stands for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCursor {
    /// Disk index.
    pub index: u32,
    /// The sequence number the appliance expects next (everything before it is durable
    /// on the appliance).
    pub next_sequence: u64,
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloResponse {
    /// The protocol version chosen.
    pub protocol_version: u16,
    /// One cursor per disk of the hello.
    pub disks: Vec<DiskCursor>,
}

/// The answer to a batch: it is durable on the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchAck {
    /// Disk index.
    pub disk: u32,
    /// The sequence acknowledged.
    pub sequence: u64,
    /// True when the appliance already had it (a re-send after a lost answer).
    pub duplicate: bool,
    /// The appliance asks the agent to wait this long before the next batch (its cache is
    /// above the high-water mark); 0 normally.
    pub slow_down_ms: u64,
}

/// Initial-copy and cycle progress of one disk, for the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Disk index.
    pub disk: u32,
    /// What the agent is doing: `initial-copy` or `delta`.
    pub phase: String,
    /// Bytes of the disk examined so far in this cycle.
    pub done_bytes: u64,
    /// Size of the disk.
    pub total_bytes: u64,
    /// Bytes found changed and sent so far in this cycle.
    pub sent_bytes: u64,
}

/// A recovery point as the appliance lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSummary {
    /// Point id at the target.
    pub id: String,
    /// The agent's point number (the consistency tag's point id).
    pub point: u64,
    /// `crash` or `app`.
    pub kind: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Disk indexes it covers.
    pub disks: Vec<u32>,
}

/// `GET …/points`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointList {
    /// Points, oldest first.
    pub points: Vec<PointSummary>,
}

/// Sent by a consistency group's coordinator once every member recorded point `point`
/// (the same number on every member): the appliance lists it as a group point when every
/// member's point `point` is at the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPoint {
    /// The group's name: 1 to 64 ASCII letters, digits, `-`, `_`.
    pub group: String,
    /// The point number every member tagged.
    pub point: u64,
    /// Every member's machine id, the caller's included.
    pub members: Vec<String>,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
