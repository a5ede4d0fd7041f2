//! The machines' history for the UI's plots: every `sample_secs` (60 by default) the
//! configuration server records, per machine, the age of its newest point (the achieved
//! RPO), the bytes the process server received from it since the last sample, and its
//! backlog; once an hour it thins what is older than 7 days to one sample per hour and
//! drops what is older than 90 days (`store::history`).
//!
//! The bytes are counted in memory by the process server of the same appliance; after a
//! restart the first sample covers only the time since the start.

use crate::store::{SampleRow, State, StateError, now_ms};
use lifeboat_wire::MachineId;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Takes the samples: remembers what each disk had received at the last one.
#[derive(Debug, Default)]
pub struct Sampler {
    received: HashMap<(MachineId, u32), u64>,
    last_unix_ms: Option<u64>,
}

impl Sampler {
    /// Records one sample of every registered machine at `now_unix_ms`; `every` is the
    /// span of the first one. Returns how many were stored.
    pub fn sample(
        &mut self,
        state: &State,
        now_unix_ms: u64,
        every: Duration,
    ) -> Result<usize, StateError> {
        let span_ms = match self.last_unix_ms {
            Some(last) => now_unix_ms.saturating_sub(last),
            None => crate::millis(every),
        };
        let span_secs = span_ms.div_ceil(1000).max(1);
        let mut rows = Vec::new();
        for (id, _, _) in state.machines()? {
            let rpo_secs = state
                .newest_point(id)?
                .map(|p| now_unix_ms.saturating_sub(p.created_unix_ms) / 1000);
            let mut received_bytes = 0u64;
            let mut backlog_batches = 0u64;
            for (disk, _) in state.disks(id)? {
                let total = state.received_bytes(id, disk)?;
                let before = self.received.insert((id, disk), total).unwrap_or(0);
                received_bytes += total.saturating_sub(before);
                let received = state.received_next(id, disk)?;
                let (applied, _) = state.applied(id, disk)?;
                backlog_batches += received.saturating_sub(applied);
            }
            rows.push(SampleRow {
                machine_id: id,
                unix_ms: now_unix_ms,
                span_secs,
                rpo_secs,
                received_bytes,
                backlog_batches,
            });
        }
        state.add_samples(&rows)?;
        self.last_unix_ms = Some(now_unix_ms);
        Ok(rows.len())
    }
}

/// Samples every `every` and thins hourly, until `shutdown`.
pub async fn run(state: State, every: Duration, shutdown: CancellationToken) {
    let mut sampler = Sampler::default();
    let mut thinned_unix_ms = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = now_ms();
        if let Err(e) = sampler.sample(&state, now, every) {
            tracing::warn!(error = %e, "history sample not recorded");
        }
        if now.saturating_sub(thinned_unix_ms) >= 3600 * 1000 {
            match state.thin_samples(now) {
                Ok((merged, dropped)) => {
                    thinned_unix_ms = now;
                    if merged + dropped > 0 {
                        tracing::info!(merged, dropped, "history thinned");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "history not thinned"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PointRow;
    use lifeboat_api::PointKind;

    #[test]
    fn a_sample_has_the_rpo_the_bytes_since_the_last_one_and_the_backlog() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("state.db")).unwrap();
        let m = MachineId([7; 16]);
        s.add_passphrase("alpha-bravo").unwrap();
        assert!(s.register_machine("alpha-bravo", m, "web-1").unwrap());
        s.upsert_disk(m, 0, 1 << 20, "/dev/a").unwrap();
        s.upsert_disk(m, 1, 1 << 20, "/dev/b").unwrap();
        let mut sampler = Sampler::default();
        let every = Duration::from_secs(60);
        assert_eq!(sampler.sample(&s, 1_000_000, every).unwrap(), 1);
        let first = s.samples(m, 0).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].rpo_secs, first[0].received_bytes, first[0].span_secs), (None, 0, 60));

        s.add_received_bytes(m, 0, 300).unwrap();
        s.add_received_bytes(m, 1, 200).unwrap();
        s.set_received_next(m, 0, 4).unwrap();
        s.set_applied(m, 0, 1, None).unwrap();
        s.add_point(&PointRow {
            id: "p1".into(),
            machine_id: m,
            point: 1,
            kind: PointKind::Crash,
            created_unix_ms: 1_010_000,
            disks: vec![0, 1],
        })
        .unwrap();
        sampler.sample(&s, 1_030_500, every).unwrap();
        s.add_received_bytes(m, 0, 50).unwrap();
        sampler.sample(&s, 1_090_500, every).unwrap();
        let all = s.samples(m, 0).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|r| (r.span_secs, r.rpo_secs, r.received_bytes, r.backlog_batches))
            .collect();
        assert_eq!(got, vec![(60, None, 0, 0), (31, Some(20), 500, 3), (60, Some(80), 50, 3)]);
    }
}
