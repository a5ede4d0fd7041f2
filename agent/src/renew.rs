//! Keeping the agent's identity current: the CAs it trusts follow the appliance's CA
//! rotation, and its certificate is renewed before it expires or once it is not from the
//! active CA (`GET /api/v1/trust`, `POST /api/v1/renew`; docs/agent.md, "Certificates").
//! Checked when the agent starts and every `trust_check_secs`; `lifeboat-agent renew`
//! forces a renewal. The same answer carries the machine's policy's crash-consistent
//! interval, which the running agent takes over its own `interval_secs`.

use std::path::Path;

use http::{HeaderMap, Method};
use lifeboat_api::{RenewAnswer, RenewRequest, TrustAnswer};
use lifeboat_net::Identity;

use crate::registration::Registration;

/// What a check changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refreshed {
    /// The trusted CAs changed.
    pub trust: bool,
    /// The certificate was renewed.
    pub renewed: bool,
    /// The machine's policy's crash-consistent interval, if it sets one.
    pub interval_secs: Option<u64>,
    /// The policy's app-consistent interval, if it sets one.
    pub app_interval_secs: Option<u64>,
    /// The policy's bandwidth schedule, if it sets one.
    pub bandwidth: Option<lifeboat_api::PolicyBandwidth>,
    /// Disks to compare with their replicas (see [`crate::compare`]).
    pub compare: Vec<lifeboat_api::CompareRequest>,
    /// The consistency group the appliance puts this machine in.
    pub group: Option<lifeboat_api::GroupAssignment>,
}

impl Refreshed {
    /// Something changed: connections should be made anew.
    pub fn changed(&self) -> bool {
        self.trust || self.renewed
    }
}

/// Asks the appliance what to trust and whether to renew; renews when told to (or when
/// `force`). Updates `reg` and its files in `state_dir`.
pub async fn refresh(
    reg: &mut Registration,
    state_dir: &Path,
    force: bool,
) -> anyhow::Result<Refreshed> {
    let client = lifeboat_net::Client::new(&reg.record.process_server_url, reg.tls()?)?
        .with_timeout(std::time::Duration::from_secs(30));
    let (status, _, body) =
        client.request(Method::GET, "/api/v1/trust", bytes::Bytes::new(), HeaderMap::new()).await?;
    if !status.is_success() {
        anyhow::bail!("trust check answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let t: TrustAnswer = serde_json::from_slice(&body)?;
    let fp = lifeboat_net::ca::fingerprint_pem(&t.ca_pem)?;
    if fp != t.active_ca {
        anyhow::bail!("the trust bundle does not start with the active CA it names");
    }
    let mut out = Refreshed {
        interval_secs: t.interval_secs.filter(|i| (1..=86_400).contains(i)),
        app_interval_secs: t.app_interval_secs.filter(|i| (1..=7 * 86_400).contains(i)),
        bandwidth: t.bandwidth.clone(),
        compare: t.compare.clone(),
        group: t.group.clone(),
        ..Default::default()
    };
    if t.ca_pem != reg.ca_pem {
        reg.replace_trust(state_dir, t.ca_pem.clone())?;
        tracing::info!(active_ca = %t.active_ca, "trusted CAs updated (CA rotation)");
        out.trust = true;
    }
    if force || t.renew.is_some() {
        let reason = t.renew.unwrap_or_else(|| "asked for".into());
        let (key_pem, csr_pem) = Identity::generate_csr(&reg.record.machine_id)?;
        let (status, _, body) =
            client.post_json("/api/v1/renew", &RenewRequest { csr_pem }, HeaderMap::new()).await?;
        if !status.is_success() {
            anyhow::bail!("renewal answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let a: RenewAnswer = serde_json::from_slice(&body)?;
        let identity = Identity { cert_pem: a.cert_pem, key_pem };
        // The new pair must work with what it is to be trusted with before it replaces
        // the old one.
        lifeboat_net::client_config(lifeboat_net::Trust::Ca(a.ca_pem.clone()), Some(&identity))?;
        reg.replace_identity(state_dir, identity, a.ca_pem)?;
        tracing::info!(%reason, "agent certificate renewed");
        out.renewed = true;
    }
    Ok(out)
}

/// `lifeboat-agent renew`: one check, renewing whether or not it is due.
pub fn renew_now(state_dir: &Path) -> anyhow::Result<Refreshed> {
    let mut reg = Registration::load(state_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(refresh(&mut reg, state_dir, true))
}
