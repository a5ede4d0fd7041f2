//! The process server's side of the control objects of a split deployment (see
//! [`crate::control`]): reading the compare requests a master target at another site left
//! at the target, and answering when the agent is done.

use super::*;

impl ProcessServer {
    /// Gives the process server the data keys and starts reading the control objects at
    /// the target: comparisons a master target at another site asks for reach the agents
    /// through this appliance's state (see [`crate::control`]).
    pub fn with_keys(self, keys: lifeboat_plugin_host::keys::KeyRing) -> Self {
        if self.inner.keys.set(keys).is_ok() {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = me.read_compare_requests().await {
                        tracing::warn!(error = %e.message, "cannot read the compare requests at the target; tried again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        _ = me.inner.shutdown.cancelled() => return,
                    }
                }
            });
        }
        self
    }

    /// Records the compare requests a master target left at the target for machines of
    /// this appliance. Objects that do not open under its keys (another appliance's, or
    /// forged) are ignored.
    async fn read_compare_requests(&self) -> Result<(), ProcessError> {
        use crate::control::{COMPARE_REQUEST, CompareRequested, open, parse_name};
        let Some(keys) = self.inner.keys.get() else { return Ok(()) };
        let mut t = self.control_target().await?;
        for name in t.list_logs(COMPARE_REQUEST).await.map_err(call_failure)? {
            let Some((machine, disk)) = parse_name(COMPARE_REQUEST, &name) else { continue };
            let mid = machine;
            if !self.inner.state.machine_exists(mid)? {
                continue;
            }
            let bytes = t.get_log(&name).await.map_err(call_failure)?;
            let request = open(keys, &name, &bytes).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<CompareRequested>(&b).map_err(|e| e.to_string())
            });
            match request {
                Ok(r) => {
                    if self.inner.state.record_compare(mid, disk, r.token)? {
                        tracing::warn!(machine = %mid, disk, token = r.token, "the master target asks for a comparison of this disk with its replica (its logs went missing at the target)");
                    }
                }
                Err(e) => {
                    tracing::debug!(object = %name, error = %e, "ignoring a control object this appliance cannot open")
                }
            }
        }
        Ok(())
    }

    /// Tells the master target, through the target, that a disk's comparison is done.
    pub async fn publish_compare_done(
        &self,
        machine: MachineId,
        disk: u32,
        token: u64,
        point: u64,
    ) -> Result<(), ProcessError> {
        use crate::control::{COMPARE_DONE, CompareFinished, name, seal};
        let Some(keys) = self.inner.keys.get() else { return Ok(()) };
        let n = name(COMPARE_DONE, machine, disk);
        let body = serde_json::to_vec(&CompareFinished { token, point })
            .map_err(|e| ProcessError::new(Kind::Internal, "internal", e.to_string()))?;
        let sealed = seal(keys, &n, &body)
            .map_err(|e| ProcessError::new(Kind::Internal, "internal", e.to_string()))?;
        let mut t = self.control_target().await?;
        t.put_log(&n, &sealed).await.map_err(call_failure)
    }

    pub(crate) async fn control_target(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, TargetInstance>, ProcessError> {
        let mut g = self.inner.control.lock().await;
        let name =
            &crate::config_server::targets::chosen(&self.inner.state, &self.inner.cfg.target);
        let stale = g.as_ref().is_none_or(|t| {
            !self.inner.registry.get(name).is_some_and(|p| Arc::ptr_eq(t.plugin(), &p))
        });
        if stale {
            let plugin = self.inner.registry.get(name).ok_or_else(|| {
                ProcessError::new(
                    Kind::Unavailable,
                    "target-unavailable",
                    format!("target plugin {name:?} is not loaded; see the appliance log"),
                )
            })?;
            *g = Some(TargetInstance::new(plugin).await.map_err(call_failure)?);
        }
        tokio::sync::MutexGuard::try_map(g, Option::as_mut).map_err(|_| {
            ProcessError::new(Kind::Internal, "internal", "the control target was not loaded")
        })
    }
}
