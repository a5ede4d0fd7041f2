//! The machine's policy as the appliance states it (interval, app-consistent interval,
//! bandwidth, comparisons, group), and the certificate and trust check that fetches it: once
//! at start, then periodically while the agent runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_api::{CompareRequest, PolicyBandwidth};
use tokio::sync::watch;

use super::RunError;
use crate::bandwidth::Schedule;
use crate::group::GroupView;
use crate::registration::Registration;
use crate::renew::Refreshed;

/// Checks the certificate and the CAs to trust with the appliance once at start (a CA
/// rotation, an expiry), and applies the policy's interval to `interval_secs`. Returns what
/// the machine's policy said, or None when the appliance cannot be reached now (checked
/// again later).
pub(super) fn check_at_start(
    registration: &mut Registration,
    state_dir: &Path,
    interval_secs: &AtomicU64,
) -> Result<Option<Refreshed>, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RunError::Runtime { what: "start the async runtime", source })?;
    match rt.block_on(crate::renew::refresh(registration, state_dir, false)) {
        Ok(r) => {
            if let Some(i) = r.interval_secs {
                tracing::info!(
                    interval_secs = i,
                    "the machine's policy sets the interval between points"
                );
                interval_secs.store(i, Ordering::Relaxed);
            }
            Ok(Some(r))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot check the certificate and trusted CAs with the appliance now; checked again later");
            Ok(None)
        }
    }
}

/// The machine's policy's bandwidth schedule, None (with a warning) when it is not usable.
fn policy_schedule(b: &PolicyBandwidth) -> Option<Schedule> {
    crate::config::BandwidthConfig::from_policy(b)
        .schedule(Path::new("the machine's policy (bandwidth)"))
        .map_err(|e| tracing::warn!(error = %e, "the policy's bandwidth schedule is not usable; the agent's own applies"))
        .ok()
}

/// The bandwidth schedule at start: the machine's policy's (`applied`) when it sets a usable
/// one, else the configuration's (`own`).
pub(super) fn start_schedule(applied: Option<&PolicyBandwidth>, own: Schedule) -> Schedule {
    match applied.and_then(policy_schedule) {
        Some(s) => {
            tracing::info!("the machine's policy sets the bandwidth schedule");
            s
        }
        None => own,
    }
}

/// The periodic certificate and trust check. A change of identity or trust reaches the
/// sender (which reconnects with it); the policy's intervals, bandwidth schedule, group and
/// comparisons reach whoever uses them.
pub(super) struct TrustCheck {
    /// The agent's registration, updated by each check.
    pub(super) registration: Registration,
    /// Where the registration's files live.
    pub(super) state_dir: PathBuf,
    /// The time between checks.
    pub(super) every: Duration,
    /// Comparisons of disks with their replicas the appliance asks for.
    pub(super) compares: Arc<Mutex<Vec<CompareRequest>>>,
    /// The group the appliance puts this machine in.
    pub(super) view: GroupView,
    /// The configuration's interval between points, used when the policy sets none.
    pub(super) own_interval: u64,
    /// The interval between points in use.
    pub(super) interval_secs: Arc<AtomicU64>,
    /// The interval between app-consistent points in use and the configuration's, with
    /// quiescers.
    pub(super) app_interval: Option<(Arc<AtomicU64>, u64)>,
    /// The policy's bandwidth schedule in use, if any.
    pub(super) applied_bandwidth: Option<PolicyBandwidth>,
    /// The configuration's bandwidth schedule, used when the policy sets none.
    pub(super) own_schedule: Schedule,
    /// Where a new bandwidth schedule goes.
    pub(super) schedule_tx: watch::Sender<Schedule>,
    /// Where a new TLS configuration goes.
    pub(super) tls_tx: watch::Sender<Arc<rustls::ClientConfig>>,
}

impl TrustCheck {
    /// Checks every `every`, forever (the task is aborted at shutdown).
    pub(super) async fn run(mut self) {
        loop {
            tokio::time::sleep(self.every).await;
            let r = crate::renew::refresh(&mut self.registration, &self.state_dir, false).await;
            if let Ok(r) = &r {
                self.apply_policy(r);
            }
            match r {
                Ok(r) if r.changed() => match self.registration.tls() {
                    Ok(tls) => {
                        let _ = self.tls_tx.send(tls);
                    }
                    Err(e) => tracing::error!(error = %e, "the renewed identity cannot be used"),
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "certificate and trust check failed; tried again later")
                }
            }
        }
    }

    /// Applies what the machine's policy says now.
    fn apply_policy(&mut self, r: &Refreshed) {
        crate::compare::queue(&self.compares, &r.compare);
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = r.group.clone();
        let want = r.interval_secs.unwrap_or(self.own_interval);
        if self.interval_secs.swap(want, Ordering::Relaxed) != want {
            tracing::info!(
                interval_secs = want,
                "interval between points changed (machine policy)"
            );
        }
        if let Some((handle, own)) = &self.app_interval {
            let want = r.app_interval_secs.unwrap_or(*own);
            if handle.swap(want, Ordering::Relaxed) != want {
                tracing::info!(
                    app_interval_secs = want,
                    "interval between app-consistent points changed (machine policy)"
                );
            }
        }
        if r.bandwidth != self.applied_bandwidth {
            self.applied_bandwidth = r.bandwidth.clone();
            let next = self
                .applied_bandwidth
                .as_ref()
                .and_then(policy_schedule)
                .unwrap_or_else(|| self.own_schedule.clone());
            tracing::info!(
                from_policy = self.applied_bandwidth.is_some(),
                "bandwidth schedule changed"
            );
            let _ = self.schedule_tx.send(next);
        }
    }
}
