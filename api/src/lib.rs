//! `lifeboat-api`: the JSON bodies of Lifeboat's HTTP APIs, protocol version 1: what agents
//! and the appliance say to each other, and the administrator API the CLI (and the web UI)
//! use. One crate for the appliance, the agent, the CLI and the tests; the binary formats
//! are in `lifeboat-wire`.
//!
//! | endpoint | server | auth | body → answer |
//! | --- | --- | --- | --- |
//! | `POST /api/v1/register` | configuration server (443) | one-time passphrase | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `POST /api/v1/hello` | process server (9443) | client certificate | [`Hello`] → [`HelloResponse`] |
//! | `PUT /api/v1/batches` | process server | client certificate | an encoded batch → [`BatchAck`] |
//! | `POST /api/v1/progress` | process server | client certificate | [`Progress`] → `{}` |
//! | `GET /api/v1/machines/<id>/points` | process server | client certificate (own machine) | → [`PointList`] |
//! | `POST /api/v1/groups/points` | process server | client certificate (a member) | [`GroupPoint`] → `{}` |
//! | `POST /api/v1/churn` | process server | client certificate | [`ChurnReport`] → `{}` |
//! | `POST /api/v1/agent-alerts` | process server | client certificate | [`AgentAlert`] → `{}` |
//! | `GET /api/v1/trust` | process server | client certificate | → [`TrustAnswer`] |
//! | `POST /api/v1/renew` | process server | client certificate | [`RenewRequest`] → [`RenewAnswer`] |
//! | `GET /api/v1/reverse` | process server | client certificate | → [`ReverseStatus`] |
//! | `POST /api/v1/reverse/diff` | process server | client certificate | [`ReverseDiff`] → a batch (wire format v1) of the blocks that differ |
//! | `POST /api/v1/reverse/done` | process server | client certificate | [`ReverseDone`] → `{}` |
//!
//! The administrator API on the configuration server is described by its OpenAPI document
//! (`GET /api/v1/openapi.json`, `appliance/openapi.json`); its bodies are the types below
//! from [`SetupStatus`] on.
//!
//! Errors are `{"error": "...", "code": "..."}` with an HTTP status. A full cache answers
//! `429` with `Retry-After`; a batch out of sequence answers `409` with code
//! `sequence-gap` and the sequence the appliance expects. New fields are added with
//! `#[serde(default)]` so both sides of a minor upgrade understand each other; anything
//! incompatible is a new protocol version, agreed on in `register` and `hello`.

mod admin;
mod agent;
mod ca;
mod error;
mod failover;
mod plan;
mod policy;
mod reverse;
mod states;
mod trust;

pub use admin::*;
pub use agent::*;
pub use ca::*;
pub use error::*;
pub use failover::*;
pub use plan::*;
pub use policy::*;
pub use reverse::*;
pub use states::*;
pub use trust::*;

#[cfg(test)]
mod tests;
