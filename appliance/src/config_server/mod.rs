//! The configuration server role: the control plane on HTTPS 443.
//!
//! It owns who may do what and what the appliance protects: the administrators and their
//! sessions ([`admin`]), the certificate authorities that agents trust and the appliance
//! signs with ([`pki`]), the data keys the other roles seal with ([`keys`]), replication
//! policies and alerts ([`policy`]) and recovery plans ([`plan`]). Its routes are in
//! [`crate::http`]; what it stores is in [`crate::store`].

pub mod admin;
pub mod keys;
pub mod pki;
pub mod plan;
pub mod policy;
