//! The master target: applies shipped logs to replica disks in sequence order and cuts
//! recovery points at consistency tags.
//!
//! # Applying
//!
//! For each replica disk at the target (`<machine>-d<index>`), the logs
//! `<machine>-d<index>.<sequence>` are applied strictly in sequence: open (cipher
//! plugin, with the clear header as associated data), decompress (codec plugin), decode
//! (every block checksum verified), write the extents and zero ranges. Every few logs
//! (and at every tag) the disk is flushed, then the disk's new cursor recorded and made
//! durable (it must survive a power cut: see [`crate::store`]), and only then are those
//! logs deleted. A crash anywhere re-applies at most the logs since the
//! last flush, and applying a log twice leaves the same bytes
//! (writes are at absolute offsets and logs are applied in order), so nothing is applied
//! twice "in a way that changes the result".
//!
//! # Points across the disks of a machine
//!
//! A recovery point covers every disk of a machine. The agent ends each cycle with a
//! batch tagged with point `N` on every disk. When a disk has applied its tagged batch
//! it stops there — applying past it would carry that disk beyond point `N` — until
//! every disk of the machine has reached `N`. Then the point is created at the target
//! (snapshots / reflinks of all the machine's disks together), recorded, retention
//! runs, and the disks move on.
//!
//! # Retention
//!
//! At most `keep_points` points per machine, and none older than `keep_hours`, except
//! that the newest point is always kept. Tiered thinning comes with the lifecycle work.

pub mod catalogue;
mod error;
pub mod failover;
pub mod qemu;
pub mod retention;

pub use error::MasterError;

use crate::config;
use crate::handoff::Handoff;
use crate::logobj::{LogHeader, log_prefix, log_sequence, parse_disk_id, point_id};
use crate::store::{PointRow, State, now_ms};
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::target::{Extent, ZeroRange};
use lifeboat_plugin_host::{CipherInstance, CodecInstance, TargetInstance};
use lifeboat_wire::{ConsistencyTag, MachineId, PointKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Logs applied between two flushes of a replica disk.
const FLUSH_EVERY: usize = 16;

/// The master target role.
pub struct MasterTarget {
    state: State,
    registry: Arc<Registry>,
    cfg: config::MasterTarget,
    generation: u64,
    target: Option<TargetInstance>,
    codec: Option<CodecInstance>,
    cipher: Option<CipherInstance>,
    handoff: Option<Arc<Handoff>>,
    /// The data directory, when the catalogue is to be written at the target.
    catalogue_dir: Option<std::path::PathBuf>,
    /// When the catalogue was last considered, and a hash of what was last written.
    catalogue_at: Option<std::time::Instant>,
    catalogue_hash: Option<[u8; 32]>,
    /// The last pass failed.
    failing: bool,
    /// Disks whose last apply failed: when to try again and how often it failed.
    troubled: std::collections::HashMap<(MachineId, u32), Trouble>,
    /// Disks whose next log is missing while later ones exist: the cursor and since when.
    gaps: std::collections::HashMap<(MachineId, u32), (u64, std::time::Instant)>,
    /// The data keys, to seal and open control objects (see [`crate::control`]).
    keys: Option<lifeboat_plugin_host::keys::KeyRing>,
    /// When the compare-done objects at the target were last read.
    control_at: Option<std::time::Instant>,
}

/// The plugin instance in `slot`, which [`MasterTarget::refresh`] fills before any use; a
/// use before it is an error naming the plugin, not a panic.
fn loaded<'a, T>(slot: &'a mut Option<T>, what: &str) -> Result<&'a mut T, MasterError> {
    slot.as_mut().ok_or_else(|| {
        MasterError::msg(format!("the {what} plugin is not loaded (no refresh before its use)"))
    })
}

/// A disk (or with `disk == u32::MAX`, a machine's point) that failed: it backs off,
/// every other disk keeps applying.
#[derive(Debug, Clone, Copy)]
struct Trouble {
    failures: u32,
    retry_at: std::time::Instant,
}

/// First wait after a disk failed; doubles per failure up to [`DISK_BACKOFF_MAX`].
const DISK_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a failing disk.
const DISK_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl std::fmt::Debug for MasterTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterTarget").finish_non_exhaustive()
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Logs applied.
    pub applied: u64,
    /// Points created.
    pub points: u64,
    /// Disks (or points) that failed in this pass and now back off; the others went on.
    pub failed: u64,
}

impl MasterTarget {
    /// A master target over `state` using the plugins of `registry`.
    /// With `handoff`, batches a process server in this process shipped are taken from
    /// memory instead of being read back from the target.
    pub fn new(
        state: State,
        registry: Arc<Registry>,
        cfg: config::MasterTarget,
        handoff: Option<Arc<Handoff>>,
    ) -> MasterTarget {
        MasterTarget {
            state,
            registry,
            cfg,
            generation: 0,
            target: None,
            codec: None,
            cipher: None,
            handoff,
            catalogue_dir: None,
            catalogue_at: None,
            catalogue_hash: None,
            failing: false,
            troubled: Default::default(),
            gaps: Default::default(),
            keys: None,
            control_at: None,
        }
    }

    /// Writes the catalogue at the target (sealed under the recovery passphrase, once one
    /// is set in `data_dir`), see [`crate::master_target::catalogue`].
    pub fn with_catalogue(mut self, data_dir: std::path::PathBuf) -> Self {
        self.catalogue_dir = Some(data_dir);
        self
    }

    /// Gives the master target the data keys: it then asks for comparisons through the
    /// target as well (for a process server at another site, see [`crate::control`]) and
    /// reads when they are done.
    pub fn with_keys(mut self, keys: lifeboat_plugin_host::keys::KeyRing) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Writes a compare request for a disk at the target.
    async fn publish_compare_request(
        &mut self,
        machine: MachineId,
        disk: u32,
        token: u64,
    ) -> Result<(), MasterError> {
        use crate::control::{COMPARE_REQUEST, CompareRequested, name, seal};
        let Some(keys) = &self.keys else { return Ok(()) };
        let n = name(COMPARE_REQUEST, machine, disk);
        let sealed = seal(keys, &n, &serde_json::to_vec(&CompareRequested { token })?)?;
        loaded(&mut self.target, "target")?.put_log(&n, &sealed).await?;
        Ok(())
    }

    /// Reads the compare-done objects at the target (every 5 s at most): a comparison an
    /// agent finished through a process server at another site. Each one read, with its
    /// request, is deleted; objects this appliance cannot open are left alone.
    async fn read_compare_done(&mut self) -> Result<(), MasterError> {
        use crate::control::{
            COMPARE_DONE, COMPARE_REQUEST, CompareFinished, name, open, parse_name,
        };
        if self.control_at.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return Ok(());
        }
        self.control_at = Some(std::time::Instant::now());
        let Some(keys) = self.keys.clone() else { return Ok(()) };
        let target = loaded(&mut self.target, "target")?;
        for n in target.list_logs(COMPARE_DONE).await? {
            let Some((machine, disk)) = parse_name(COMPARE_DONE, &n) else { continue };
            let bytes = target.get_log(&n).await?;
            let done = match open(&keys, &n, &bytes).map_err(MasterError::from).and_then(|b| {
                serde_json::from_slice::<CompareFinished>(&b).map_err(MasterError::from)
            }) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(object = %n, error = %e, "ignoring a control object this appliance cannot open");
                    continue;
                }
            };
            let mid = machine;
            if self.state.compare_done(mid, disk, done.token, done.point)? {
                tracing::info!(%machine, disk, point = done.point, "the disk's comparison is done (reported through the target)");
            }
            target.delete_log(&n).await?;
            let _ = target.delete_log(&name(COMPARE_REQUEST, machine, disk)).await;
        }
        Ok(())
    }

    /// Writes the catalogue if it changed and [`crate::master_target::catalogue::WRITE_EVERY`] passed.
    async fn maybe_write_catalogue(&mut self) -> Result<(), MasterError> {
        use crate::master_target::catalogue::{OBJECT, Sealer, WRITE_EVERY, build};
        use sha2::Digest as _;
        let Some(dir) = self.catalogue_dir.clone() else { return Ok(()) };
        if self.catalogue_at.is_some_and(|t| t.elapsed() < WRITE_EVERY) {
            return Ok(());
        }
        self.catalogue_at = Some(std::time::Instant::now());
        let Some(sealer) = Sealer::load(&dir)? else { return Ok(()) };
        let mut c = build(&self.state, &dir.join("keys"))?;
        // An appliance with no machines (a fresh one at the target site, before `recover`)
        // never overwrites the catalogue a lost appliance left there.
        if c.machines.is_empty() {
            return Ok(());
        }
        let mut h = sha2::Sha256::new();
        h.update(serde_json::to_vec(&c)?);
        h.update(sealer.salt.as_bytes());
        let hash: [u8; 32] = h.finalize().into();
        if self.catalogue_hash == Some(hash) {
            return Ok(());
        }
        c.written_unix_ms = now_ms();
        let sealed = sealer.seal(&serde_json::to_vec(&c)?)?;
        self.refresh().await?;
        loaded(&mut self.target, "target")?.put_log(OBJECT, &sealed).await?;
        self.catalogue_hash = Some(hash);
        self.state.set_setting("catalogue_written_unix_ms", &c.written_unix_ms.to_string())?;
        tracing::info!(
            bytes = sealed.len(),
            machines = c.machines.len(),
            "catalogue written at the target"
        );
        Ok(())
    }

    /// Applies until `shutdown`; idle passes sleep `poll_ms`.
    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut backoff = Duration::from_millis(self.cfg.poll_ms);
        loop {
            if let Err(e) = self.maybe_write_catalogue().await {
                tracing::warn!(error = %format!("{e:#}"), "the catalogue could not be written at the target; retried");
            }
            let idle = match self.pass().await {
                Ok(r) => {
                    backoff = Duration::from_millis(self.cfg.poll_ms);
                    if std::mem::take(&mut self.failing) {
                        let _ =
                            self.state.set_setting("master_last_ok_unix_ms", &now_ms().to_string());
                    }
                    r.applied == 0 && r.points == 0
                }
                Err(e) => {
                    // For the `plugin` alert, until a pass succeeds again.
                    self.failing = true;
                    let _ = self.state.set_setting("master_last_error", &format!("{e:#}"));
                    let _ =
                        self.state.set_setting("master_last_error_unix_ms", &now_ms().to_string());
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = crate::millis(backoff), "master target pass failed; logs stay at the target");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
            } else if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn refresh(&mut self) -> Result<(), MasterError> {
        let current = self.registry.current().generation;
        if current == self.generation && self.target.is_some() {
            return Ok(());
        }
        let get = |name: &str| {
            self.registry.get(name).ok_or_else(|| {
                MasterError::msg(format!("plugin {name:?} is not loaded; see the appliance log"))
            })
        };
        let target = crate::config_server::targets::chosen(&self.state, &self.cfg.target);
        self.target = Some(TargetInstance::new(get(&target)?).await?);
        self.codec = Some(CodecInstance::new(get(&self.cfg.codec)?).await?);
        self.cipher = Some(CipherInstance::new(get(&self.cfg.cipher)?).await?);
        self.generation = current;
        Ok(())
    }

    /// Whether `(machine, disk)` is backing off after a failure.
    fn backing_off(&self, machine: MachineId, disk: u32) -> bool {
        self.troubled.get(&(machine, disk)).is_some_and(|t| t.retry_at > std::time::Instant::now())
    }

    /// Records a failure of one disk (or with `u32::MAX`, of a machine's point): it backs
    /// off and an alert names it until it works again.
    fn disk_failed(&mut self, machine: MachineId, disk: u32, e: &MasterError) {
        let t = self
            .troubled
            .entry((machine, disk))
            .or_insert(Trouble { failures: 0, retry_at: std::time::Instant::now() });
        t.failures += 1;
        let wait = DISK_BACKOFF_START
            .saturating_mul(1u32 << t.failures.min(16).saturating_sub(1))
            .min(DISK_BACKOFF_MAX);
        t.retry_at = std::time::Instant::now() + wait;
        let mid = machine;
        let (alert_disk, what) = if disk == u32::MAX {
            (0, "creating its recovery point failed")
        } else {
            (disk, "its logs cannot be applied")
        };
        let message = format!(
            "{what}, retried every {} s at most, other disks keep applying: {e:#}",
            DISK_BACKOFF_MAX.as_secs()
        );
        if let Err(err) = self.state.set_disk_alert(
            mid,
            alert_disk,
            lifeboat_api::DiskAlertKind::ApplyFailed,
            &message,
        ) {
            tracing::error!(error = %err, "cannot record a disk's alert");
        }
        tracing::warn!(%machine, disk = alert_disk, failures = t.failures, retry_in_s = wait.as_secs(), error = %format!("{e:#}"), "{what}; this disk backs off, the others go on");
    }

    /// Clears a disk's failure after it worked.
    fn disk_ok(&mut self, machine: MachineId, disk: u32) {
        if self.troubled.remove(&(machine, disk)).is_some() {
            let alert_disk = if disk == u32::MAX { 0 } else { disk };
            let _ = self.state.clear_disk_alert(
                machine,
                alert_disk,
                lifeboat_api::DiskAlertKind::ApplyFailed,
            );
            tracing::info!(%machine, disk = alert_disk, "applying works again");
        }
    }

    /// One pass over every replica disk: apply what is ready, cut points. A failure of
    /// one disk (a log that cannot be read, opened or applied) or of one machine's point
    /// stops only that disk or machine, which backs off with an alert naming it; a
    /// failure that concerns every disk (the plugins, listing the target) fails the pass.
    pub async fn pass(&mut self) -> Result<PassReport, MasterError> {
        self.refresh().await?;
        if let Err(e) = self.read_compare_done().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the compare-done objects at the target; tried again");
        }
        let mut report = PassReport::default();
        let disks = loaded(&mut self.target, "target")?.list_disks().await?;
        let mut machines: BTreeMap<MachineId, Vec<u32>> = BTreeMap::new();
        for d in disks {
            if let Some((m, i)) = parse_disk_id(&d.id) {
                machines.entry(m).or_default().push(i);
            }
        }
        for (machine, disks) in machines {
            let mid = machine;
            // A failed-over machine's replica and points stay as the failover left them;
            // while it is failing over, what was received is still applied (`latest`).
            if self
                .state
                .failover_state(mid)?
                .is_some_and(|s| s != lifeboat_api::FailoverState::FailingOver)
            {
                continue;
            }
            let last_point = self.last_point(mid)?;
            for &disk in &disks {
                if self.backing_off(machine, disk) {
                    continue;
                }
                match self.apply_disk(machine, disk, last_point).await {
                    Ok(n) => {
                        report.applied += n;
                        self.disk_ok(machine, disk);
                    }
                    Err(e) => {
                        report.failed += 1;
                        self.disk_failed(machine, disk, &e);
                    }
                }
            }
            // A point exists once every disk reached the same tag past the last point.
            let mut reached = Vec::new();
            for &disk in &disks {
                reached.push(self.state.applied(mid, disk)?.1);
            }
            if let Some(Some(p)) = reached.first().copied()
                && p > last_point
                && reached.iter().all(|r| *r == Some(p))
                && !self.backing_off(machine, u32::MAX)
            {
                // A disk whose logs went missing is not whole again before the point its
                // agent named when it finished comparing: no point before that.
                let compares = self.state.compares(mid)?;
                if let Some((disk, _, done)) =
                    compares.iter().find(|(_, _, d)| d.is_none_or(|d| d > p))
                {
                    self.state.set_setting(&format!("skipped_point:{mid}"), &p.to_string())?;
                    tracing::warn!(%machine, point = p, disk, whole_from = ?done, "no recovery point: the disk is being compared with its replica after logs went missing");
                    continue;
                }
                // App-consistent only if every disk's tag says so.
                let mut kind = lifeboat_api::PointKind::App;
                for &disk in &disks {
                    if self.state.applied_kind(mid, disk)? != lifeboat_api::PointKind::App {
                        kind = lifeboat_api::PointKind::Crash;
                    }
                }
                match self.cut_point(machine, &disks, p, kind).await {
                    Ok(()) => {
                        report.points += 1;
                        self.disk_ok(machine, u32::MAX);
                        for disk in self.state.end_compares(mid, p)? {
                            self.state.clear_disk_alert(
                                mid,
                                disk,
                                lifeboat_api::DiskAlertKind::CursorStuck,
                            )?;
                            tracing::info!(%machine, disk, point = p, "the disk is whole again after its comparison: points resume");
                        }
                    }
                    Err(e) => {
                        report.failed += 1;
                        self.disk_failed(machine, u32::MAX, &e);
                    }
                }
            }
        }
        Ok(report)
    }

    /// The machine's last point: the newest one cut, or one passed without a point while a
    /// disk was being compared.
    fn last_point(&self, mid: MachineId) -> Result<u64, MasterError> {
        let cut = self.state.points(mid)?.last().map(|p| p.point).unwrap_or(0);
        let skipped = self
            .state
            .setting(&format!("skipped_point:{mid}"))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(cut.max(skipped))
    }

    /// The disk's next log `next` is missing while `first` and later ones are there. Once
    /// that has lasted `gap_grace_secs` (the process server stores a disk's logs in order,
    /// so the missing ones are lost, not late), the disk continues at `first`, an alert
    /// names it, and its agent is asked to compare the disk with the replica. Returns the
    /// sequence to continue from and the comparison's token, if the gap is declared.
    fn gap(
        &mut self,
        machine: MachineId,
        disk: u32,
        next: u64,
        first: u64,
    ) -> Result<Option<(u64, u64)>, MasterError> {
        let since = match self.gaps.get(&(machine, disk)) {
            Some((n, since)) if *n == next => *since,
            _ => {
                self.gaps.insert((machine, disk), (next, std::time::Instant::now()));
                tracing::warn!(%machine, disk, next, first, "log {next} is missing at the target while later ones are there");
                return Ok(None);
            }
        };
        if since.elapsed() < Duration::from_secs(self.cfg.gap_grace_secs) {
            return Ok(None);
        }
        self.gaps.remove(&(machine, disk));
        let mid = machine;
        self.state.set_applied(mid, disk, first, None)?;
        self.state.make_durable()?;
        let token = self.state.request_compare(mid, disk)?;
        let message = format!(
            "logs {next} to {} are missing at the target (lost there, or the appliance's cursor went back in a power cut): the disk continued at log {first}; its agent compares the disk with the replica by block hashes and sends what differs, and no point is cut until that is done",
            first - 1
        );
        self.state.set_disk_alert(mid, disk, lifeboat_api::DiskAlertKind::CursorStuck, &message)?;
        self.state.count(&[(crate::store::Counter::LogGaps, 1)])?;
        tracing::error!(%machine, disk, token, "{message}");
        Ok(Some((first, token)))
    }

    /// Applies a disk's ready logs; stops after a tag beyond `last_point`.
    async fn apply_disk(
        &mut self,
        machine: MachineId,
        disk: u32,
        last_point: u64,
    ) -> Result<u64, MasterError> {
        let mid = machine;
        let prefix = log_prefix(machine, disk);
        let target = loaded(&mut self.target, "target")?;
        let mut logs: Vec<(u64, String)> = target
            .list_logs(&prefix)
            .await?
            .into_iter()
            .filter_map(|n| log_sequence(&n, &prefix).map(|s| (s, n)))
            .collect();
        logs.sort();
        // Logs applied since the last flush: made durable together (one flush of the
        // replica per group, not per log), then recorded, then deleted.
        let mut unflushed: Vec<(u64, String, Option<ConsistencyTag>)> = Vec::new();
        let mut applied = 0;
        let (mut next, reached) = self.state.applied(mid, disk)?;
        if reached.is_some_and(|p| p > last_point) {
            return Ok(0); // waiting at a tag for the machine's other disks
        }
        match logs.iter().map(|l| l.0).find(|s| *s >= next) {
            Some(first) if first > next => {
                if let Some((resume, token)) = self.gap(machine, disk, next, first)? {
                    next = resume;
                    self.publish_compare_request(machine, disk, token).await?;
                }
            }
            _ => {
                self.gaps.remove(&(machine, disk));
            }
        }
        for (seq, name) in logs {
            if seq < next {
                // Applied before a crash that happened before the delete.
                loaded(&mut self.target, "target")?.delete_log(&name).await?;
                continue;
            }
            if seq > next {
                break; // not shipped yet (the process server ships in order)
            }
            let tag = self.apply_log(machine, disk, seq, &name).await?;
            unflushed.push((seq, name, tag));
            next = seq + 1;
            applied += 1;
            let at_tag = tag.is_some_and(|t| t.point_id > last_point);
            if at_tag || unflushed.len() >= FLUSH_EVERY {
                self.commit_applied(machine, disk, &mut unflushed).await?;
            }
            if at_tag {
                break; // the disk waits here for the machine's other disks
            }
        }
        self.commit_applied(machine, disk, &mut unflushed).await?;
        Ok(applied)
    }

    /// Flushes the replica, records the cursor past the applied logs, deletes them.
    async fn commit_applied(
        &mut self,
        machine: MachineId,
        disk: u32,
        unflushed: &mut Vec<(u64, String, Option<ConsistencyTag>)>,
    ) -> Result<(), MasterError> {
        let Some((last, _, _)) = unflushed.last() else {
            return Ok(());
        };
        let target = loaded(&mut self.target, "target")?;
        target.flush_disk(&crate::logobj::disk_id(machine, disk)).await?;
        let tag = unflushed.iter().filter_map(|u| u.2).max_by_key(|t| t.point_id).map(|t| {
            let kind = match t.kind {
                PointKind::App => lifeboat_api::PointKind::App,
                PointKind::Crash => lifeboat_api::PointKind::Crash,
            };
            (t.point_id, kind)
        });
        let mid = machine;
        self.state.set_applied(mid, disk, last + 1, tag)?;
        self.state.count(&[(crate::store::Counter::AppliedBatches, unflushed.len() as u64)])?;
        // Deleting the logs cannot be undone: the cursor past them must survive a power
        // cut first, or the disk would wait for them forever.
        self.state.make_durable()?;
        for (_, name, _) in unflushed.drain(..) {
            target.delete_log(&name).await?;
        }
        Ok(())
    }

    async fn apply_log(
        &mut self,
        machine: MachineId,
        disk: u32,
        seq: u64,
        name: &str,
    ) -> Result<Option<ConsistencyTag>, MasterError> {
        let t0 = std::time::Instant::now();
        let handed = self.handoff.as_ref().and_then(|h| h.take(name));
        let from_memory = handed.is_some();
        let encoded: bytes::Bytes = match handed {
            Some(b) => b,
            None => {
                let obj = loaded(&mut self.target, "target")?.get_log(name).await?;
                let (header, envelope) = LogHeader::decode(&obj)?;
                header.expect(machine, disk, seq)?;
                let sealed_header = &obj[..crate::logobj::HEADER_LEN];
                let body = if header.sealed {
                    loaded(&mut self.cipher, "cipher")?.open(sealed_header, envelope).await?
                } else {
                    // Only a machine whose policy turned encryption off may have data in the
                    // clear: anyone able to write to the target could forge the flag.
                    let policy = self.state.policy_of(machine)?;
                    if policy.encryption.unwrap_or(true) {
                        return Err(MasterError::msg(format!(
                            "log {name} is not sealed, but the policy of machine {machine} requires encryption: refused"
                        )));
                    }
                    self.state.count(&[(crate::store::Counter::UnsealedLogs, 1)])?;
                    envelope.to_vec()
                };
                let encoded = if header.compressed {
                    loaded(&mut self.codec, "codec")?.decompress(&body, header.batch_len).await?
                } else {
                    body
                };
                encoded.into()
            }
        };
        let batch = lifeboat_wire::decode(&encoded)
            .map_err(|e| MasterError::msg(format!("log {name}: {e}")))?;
        let t1 = std::time::Instant::now();
        let h = batch.header();
        if (h.machine, h.disk_index, h.sequence) != (machine, disk, seq) {
            return Err(MasterError::msg(format!(
                "log {name} holds batch {}/{}/{}",
                h.machine, h.disk_index, h.sequence
            )));
        };
        let tag = h.tag;
        let target = loaded(&mut self.target, "target")?;
        let max =
            target.capabilities().map(|c| c.max_write_bytes as usize).unwrap_or(4 << 20).max(4096);
        let disk_id = crate::logobj::disk_id(machine, disk);
        let mut extents: Vec<Extent> = Vec::new();
        let mut zeros: Vec<ZeroRange> = Vec::new();
        let mut pending = 0usize;
        for e in batch.extents() {
            match e {
                lifeboat_wire::Extent::Data { offset, data } => {
                    for (i, piece) in data.chunks(max).enumerate() {
                        if pending + piece.len() > max && !extents.is_empty() {
                            target.write_extents(&disk_id, &extents, &zeros).await?;
                            extents.clear();
                            zeros.clear();
                            pending = 0;
                        }
                        extents.push(Extent {
                            offset: offset + (i * max) as u64,
                            data: piece.to_vec(),
                        });
                        pending += piece.len();
                    }
                }
                lifeboat_wire::Extent::Zero { offset, length } => {
                    zeros.push(ZeroRange { offset: *offset, length: *length })
                }
            }
        }
        if !extents.is_empty() || !zeros.is_empty() {
            target.write_extents(&disk_id, &extents, &zeros).await?;
        }
        tracing::debug!(
            log = name,
            from_memory,
            read_us = crate::micros(t1 - t0),
            write_us = crate::micros(t1.elapsed()),
            "applied"
        );
        Ok(tag)
    }

    async fn cut_point(
        &mut self,
        machine: MachineId,
        disks: &[u32],
        point: u64,
        kind: lifeboat_api::PointKind,
    ) -> Result<(), MasterError> {
        let id = point_id(machine, point);
        let disk_ids: Vec<String> =
            disks.iter().map(|d| crate::logobj::disk_id(machine, *d)).collect();
        let target = loaded(&mut self.target, "target")?;
        let t0 = std::time::Instant::now();
        let info = target.create_point(&id, &format!("{kind}:{point}"), &disk_ids).await?;
        tracing::debug!(point, create_ms = crate::millis(t0.elapsed()), "create-point");
        let mid = machine;
        self.state.add_point(&PointRow {
            id: id.clone(),
            machine_id: mid,
            point,
            kind,
            created_unix_ms: if info.created_unix_ms > 0 { info.created_unix_ms } else { now_ms() },
            disks: disks.to_vec(),
        })?;
        tracing::info!(%machine, point, %kind, id = %id, "recovery point created");
        self.prune(mid).await
    }

    async fn prune(&mut self, machine_id: MachineId) -> Result<(), MasterError> {
        let points = self.state.points(machine_id)?;
        // The machine's policy thins by tiers when it has a retention.
        if let Some(tiers) = self.state.policy_of(machine_id)?.retention {
            // Group points (of complete or not group records with this machine) and
            // app-consistent points survive thinning first.
            let grouped: std::collections::BTreeSet<u64> = self
                .state
                .group_points(None)?
                .into_iter()
                .filter(|g| g.members.contains(&machine_id))
                .map(|g| g.point)
                .collect();
            let aged: Vec<(String, u64, u8)> = points
                .iter()
                .map(|p| {
                    let rank = if grouped.contains(&p.point) {
                        2
                    } else if p.kind == lifeboat_api::PointKind::App {
                        1
                    } else {
                        0
                    };
                    (p.id.clone(), p.created_unix_ms, rank)
                })
                .collect();
            for id in retention::thin(&aged, now_ms(), &tiers) {
                loaded(&mut self.target, "target")?.delete_point(&id).await?;
                self.state.delete_point(&id)?;
                tracing::info!(point = %id, "recovery point thinned by the machine's policy");
            }
            return Ok(());
        }
        let keep = self.cfg.keep_points.max(1) as usize;
        let cutoff = (self.cfg.keep_hours > 0)
            .then(|| now_ms().saturating_sub(self.cfg.keep_hours * 3_600_000));
        let n = points.len();
        for (i, p) in points.iter().enumerate() {
            let newest = i + 1 == n;
            let too_many = n - i > keep;
            let too_old = cutoff.is_some_and(|c| p.created_unix_ms < c);
            if !newest && (too_many || too_old) {
                loaded(&mut self.target, "target")?.delete_point(&p.id).await?;
                self.state.delete_point(&p.id)?;
                tracing::info!(point = %p.id, "recovery point pruned by retention");
            }
        }
        Ok(())
    }
}
