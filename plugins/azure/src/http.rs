//! The SDK's HTTP client (`lifeboat_sdk::http`), shared with the VMware target.
pub use lifeboat_sdk::http::*;
