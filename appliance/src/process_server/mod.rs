//! The process server: receives batches from agents, makes them durable in the cache,
//! and ships them — compressed, encrypted — to the target's log area.
//!
//! # Flow and acknowledgements
//!
//! A batch is decoded and fully verified (every block checksum) before anything else,
//! so the cache never holds data that would fail later. It must come from the machine
//! whose client certificate presented it (an agent writes only its own disks) and be the
//! next in its disk's sequence: an older one is a re-send after a lost answer and is
//! acknowledged again without being stored; a newer one means a gap, answered `409` with
//! the sequence expected. The batch is appended to the cache and fsynced, the disk's
//! cursor advances, and only then does the agent get its acknowledgement.
//!
//! One shipping task per disk takes the disk's cached batches in sequence order, runs
//! them through the codec plugin and the cipher plugin, and puts them at the target as
//! log objects (see [`crate::logobj`]). A batch leaves the cache only after the target
//! has stored it durably (`put-log` returned). Disks ship in parallel, each in order. A
//! plugin failure (error, trap, deadline) leaves the batch in the cache and the task
//! retries with backoff; nothing is acknowledged that was not done.
//!
//! # Memory
//!
//! A batch is read back from the cache only when it was not kept in memory: the received
//! bytes stay in the disk's queue while the queues together hold less than
//! [`HOT_BUDGET`] (the process server keeps up), so shipping reads nothing from disk. After
//! `put-log`, a master target in the same process gets the clear batch through the
//! [`Handoff`] instead of reading, decrypting and decompressing the log it was just given.
//!
//! # Back-pressure
//!
//! Above the cache's high-water mark every acknowledgement carries `slow_down_ms`, so
//! agents pace themselves instead of failing; at the cache's limit a batch is refused
//! with `429` and `Retry-After`, and the agent keeps it in its journal.
//!
//! # Restart
//!
//! The cache replays every batch not yet shipped, and the disk cursors are reconciled
//! with it (a batch cached just before a crash that the database did not yet count).

mod control;
pub mod reverse;
mod shipping;

pub use shipping::ShipError;

use crate::config;
use crate::handoff::Handoff;
use crate::logobj::{LogHeader, disk_id, log_name};
use crate::store::{State, StateError};
use lifeboat_api::{BatchAck, DiskCursor, Hello, HelloResponse};
use lifeboat_cache::{Cache, CacheConfig, Pressure, RecordKey, RecordRef};
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::{CallError, CipherInstance, CodecInstance, TargetInstance};
use lifeboat_wire::MachineId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What kind of failure a [`ProcessError`] is; the HTTP layer maps it to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The caller may not do this (another machine's disk, an unregistered machine).
    Forbidden,
    /// The request is malformed or inconsistent.
    Invalid,
    /// The request conflicts with what the appliance knows (a sequence gap, a shrunk disk).
    Conflict,
    /// The agent speaks a protocol version this appliance does not.
    UpgradeRequired,
    /// The appliance cannot take more now (the cache is full): retry later.
    TooBusy,
    /// A dependency (the target, the cache) is unavailable: retry later.
    Unavailable,
    /// The appliance failed.
    Internal,
}

/// A failure of the process server: its kind, a stable machine-readable code, and a
/// message that says what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessError {
    /// What kind of failure.
    pub kind: Kind,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// For `sequence-gap`.
    pub expected_sequence: Option<u64>,
    /// For `cache-full`: seconds to wait.
    pub retry_after: Option<u64>,
}

impl ProcessError {
    pub(crate) fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        ProcessError {
            kind,
            code,
            message: message.into(),
            expected_sequence: None,
            retry_after: None,
        }
    }
}

impl From<StateError> for ProcessError {
    fn from(e: StateError) -> Self {
        tracing::error!(error = %e, "state database failure");
        ProcessError::new(Kind::Internal, "internal", format!("appliance state error: {e}"))
    }
}

/// Most bytes of received batches kept in memory, over all queues, for shipping without
/// reading the cache back.
pub const HOT_BUDGET: usize = 256 << 20;

/// A cached batch waiting to be shipped, with its bytes when they are kept in memory.
#[derive(Clone)]
struct Queued {
    record: RecordRef,
    payload: Option<bytes::Bytes>,
    /// [`State::durable_mark`] right after the disk's cursor counted this batch.
    mark: u64,
}

/// One disk's shipping queue.
struct DiskQueue {
    /// Serialises the sequence check and append of one disk.
    order: tokio::sync::Mutex<()>,
    queue: Mutex<VecDeque<Queued>>,
    notify: Notify,
    /// The disk's size as its agent last announced it (0: not read yet), so that a batch
    /// is checked against it without a database read.
    size: std::sync::atomic::AtomicU64,
    /// The machine's number in cache records, once read.
    number: std::sync::OnceLock<u64>,
}

struct Inner {
    state: State,
    cache: Mutex<Cache>,
    registry: Arc<Registry>,
    cfg: config::ProcessServer,
    disks: Mutex<HashMap<(MachineId, u32), Arc<DiskQueue>>>,
    control: tokio::sync::Mutex<Option<TargetInstance>>,
    shutdown: tokio_util::sync::CancellationToken,
    /// Bytes of payloads held in the queues.
    hot_bytes: std::sync::atomic::AtomicUsize,
    /// A master target in this process, if any.
    handoff: Option<Arc<Handoff>>,
    /// When each machine was last recorded as heard from (recorded at most every 10 s).
    seen: Mutex<HashMap<MachineId, std::time::Instant>>,
    /// The cache's usage and pressure as of its last change, for async code: the cache's
    /// mutex is held across `fdatasync` by appends and releases (on the blocking pool), so
    /// async code never takes it.
    cache_usage: std::sync::atomic::AtomicU64,
    cache_pressure: std::sync::atomic::AtomicU8,
    cache_limits: (u64, u64),
    /// The data keys, to seal and open control objects (see [`crate::control`]).
    keys: std::sync::OnceLock<lifeboat_plugin_host::keys::KeyRing>,
}

impl Inner {
    /// Records the cache's usage and pressure (called with the cache locked, after a change).
    fn note_cache(&self, c: &Cache) {
        use std::sync::atomic::Ordering::Relaxed;
        self.cache_usage.store(c.usage(), Relaxed);
        let p = match c.pressure() {
            Pressure::Ok => 0,
            Pressure::SlowDown => 1,
            Pressure::Full => 2,
        };
        self.cache_pressure.store(p, Relaxed);
    }
}

/// The process server role.
#[derive(Clone)]
pub struct ProcessServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessServer").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessServer {
    /// Opens the cache (replaying what was not shipped) and starts the shipping tasks.
    pub fn start(
        state: State,
        registry: Arc<Registry>,
        cfg: config::ProcessServer,
        cache_dir: &std::path::Path,
        shutdown: tokio_util::sync::CancellationToken,
        handoff: Option<Arc<Handoff>>,
    ) -> Result<ProcessServer, ShipError> {
        let cache_cfg = CacheConfig {
            max_bytes: cfg.cache_max_mib << 20,
            high_water_bytes: cfg.cache_high_water_mib << 20,
            ..CacheConfig::with_max_bytes(cfg.cache_max_mib << 20)
        };
        let (cache, pending) = Cache::open(cache_dir, cache_cfg)?;
        let cache_limits = (cache.config().high_water_bytes, cache.config().max_bytes);
        let me = ProcessServer {
            inner: Arc::new(Inner {
                state,
                cache: Mutex::new(cache),
                registry,
                cfg,
                disks: Mutex::new(HashMap::new()),
                control: tokio::sync::Mutex::new(None),
                shutdown,
                hot_bytes: Default::default(),
                handoff,
                seen: Mutex::new(HashMap::new()),
                cache_usage: Default::default(),
                cache_pressure: Default::default(),
                cache_limits,
                keys: std::sync::OnceLock::new(),
            }),
        };
        me.inner.note_cache(&lock(&me.inner.cache));
        let mut replayed = 0usize;
        for p in pending {
            let payload = lock(&me.inner.cache).read(&p.record)?;
            let frame = lifeboat_wire::read_header(&payload)?;
            let (machine, disk, seq) =
                (frame.header.machine, frame.header.disk_index, frame.header.sequence);
            me.inner.state.set_received_next(machine, disk, seq + 1)?;
            let mark = me.inner.state.durable_mark();
            let q = me.queue(machine, disk);
            lock(&q.queue).push_back(Queued { record: p.record, payload: None, mark });
            q.notify.notify_one();
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(batches = replayed, "replaying cached batches not yet shipped");
        }
        Ok(me)
    }

    /// The disk's queue, starting its shipping task the first time.
    fn queue(&self, machine: MachineId, disk: u32) -> Arc<DiskQueue> {
        let mut disks = lock(&self.inner.disks);
        if let Some(q) = disks.get(&(machine, disk)) {
            return q.clone();
        }
        let q = Arc::new(DiskQueue {
            order: tokio::sync::Mutex::new(()),
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            size: Default::default(),
            number: std::sync::OnceLock::new(),
        });
        disks.insert((machine, disk), q.clone());
        let me = self.clone();
        let q2 = q.clone();
        tokio::spawn(async move { me.ship_loop(machine, disk, q2).await });
        q
    }

    /// `POST /api/v1/hello`: version negotiation, disks, cursors.
    pub async fn hello(
        &self,
        machine_id: MachineId,
        hello: Hello,
    ) -> Result<HelloResponse, ProcessError> {
        let machine = machine_id;
        if !self.inner.state.machine_exists(machine_id)? {
            return Err(ProcessError::new(
                Kind::Forbidden,
                "unknown-machine",
                format!("machine {machine_id} is not registered with this appliance"),
            ));
        }
        let version = lifeboat_wire::negotiate(lifeboat_wire::PROTOCOL_VERSIONS, &hello.protocol_versions)
            .ok_or_else(|| {
                ProcessError::new(Kind::UpgradeRequired,
                    "protocol-version",
                    format!(
                        "the agent speaks protocol versions {:?}, this appliance {:?}: upgrade the older side",
                        hello.protocol_versions,
                        lifeboat_wire::PROTOCOL_VERSIONS
                    ),
                )
            })?;
        let mut cursors = Vec::new();
        let known = self.inner.state.disks(machine_id)?;
        let max = self.inner.cfg.max_disk_gib.saturating_mul(1 << 30);
        // Every disk is checked before the target is asked for anything.
        for d in &hello.disks {
            if d.size == 0 || d.size > max || !d.size.is_multiple_of(lifeboat_wire::SECTOR_SIZE) {
                return Err(ProcessError::new(
                    Kind::Invalid,
                    "bad-disk-size",
                    format!(
                        "disk {} is announced with {} bytes: a disk is a non-zero multiple of 512 bytes up to {} GiB (process_server.max_disk_gib)",
                        d.index, d.size, self.inner.cfg.max_disk_gib
                    ),
                ));
            }
            if let Some((_, size)) = known.iter().find(|(i, _)| *i == d.index)
                && d.size < *size
            {
                let message = format!(
                    "disk {} ({}) shrank from {size} to {} bytes while protected; its replica keeps {size} bytes and nothing more is accepted for this machine: grow the disk back to {size} bytes, or revoke the machine and register it again to protect it at its new size",
                    d.index, d.path, d.size
                );
                self.inner.state.set_disk_alert(
                    machine_id,
                    d.index,
                    lifeboat_api::DiskAlertKind::DiskShrunk,
                    &message,
                )?;
                tracing::error!(machine = %machine_id, disk = d.index, "{message}");
                return Err(ProcessError::new(Kind::Conflict, "disk-shrunk", message));
            }
        }
        for d in &hello.disks {
            let id = disk_id(machine, d.index);
            let mut t = self.control_target().await?;
            match known.iter().find(|(i, _)| *i == d.index) {
                Some((_, size)) if *size != d.size => {
                    // Grown while protected (shrinking was refused above): the replica
                    // grows before any batch for the new space is accepted.
                    t.resize_disk(&id, d.size).await.map_err(call_failure)?;
                    tracing::info!(
                        machine = %machine_id,
                        disk = d.index,
                        from = size,
                        to = d.size,
                        "disk grew: replica resized"
                    );
                }
                _ => t.create_disk(&id, d.size).await.map_err(call_failure)?,
            }
            drop(t);
            self.inner.state.upsert_disk(machine_id, d.index, d.size, &d.path)?;
            self.inner.state.clear_disk_alert(
                machine_id,
                d.index,
                lifeboat_api::DiskAlertKind::DiskShrunk,
            )?;
            cursors.push(DiskCursor {
                index: d.index,
                next_sequence: self.inner.state.received_next(machine_id, d.index)?,
            });
            self.queue(machine, d.index).size.store(d.size, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(HelloResponse { protocol_version: version, disks: cursors })
    }

    /// `PUT /api/v1/batches`: verify, order, cache durably, acknowledge.
    pub async fn batch(
        &self,
        machine_id: MachineId,
        body: bytes::Bytes,
    ) -> Result<BatchAck, ProcessError> {
        let batch = lifeboat_wire::decode(&body).map_err(|e| {
            ProcessError::new(Kind::Invalid, "bad-batch", format!("batch refused: {e}"))
        })?;
        let h = *batch.header();
        let end = batch.extents().last().map_or(0, |e| e.end());
        drop(batch);
        if h.machine != machine_id {
            return Err(ProcessError::new(
                Kind::Forbidden,
                "forbidden",
                format!(
                    "machine {machine_id} may write only its own disks; this batch is for {}",
                    h.machine
                ),
            ));
        }
        let q = self.queue(h.machine, h.disk_index);
        // The size as last read; read again when it does not cover the batch (the disk
        // may have grown since).
        let mut size = q.size.load(std::sync::atomic::Ordering::SeqCst);
        if end > size || size == 0 {
            let known = self.inner.state.disks(machine_id)?;
            let Some(&(_, now)) = known.iter().find(|(i, _)| *i == h.disk_index) else {
                return Err(ProcessError::new(
                    Kind::Conflict,
                    "unknown-disk",
                    format!("disk {} was not announced: send hello first", h.disk_index),
                ));
            };
            q.size.store(now, std::sync::atomic::Ordering::SeqCst);
            size = now;
        }
        // Extents are sorted and disjoint (the decoder checked): the last one ends last.
        if end > size {
            return Err(ProcessError::new(
                Kind::Invalid,
                "extent-out-of-range",
                format!(
                    "batch {} of disk {} writes up to byte {end}, past the disk's announced size of {size} bytes: announce the new size (hello) before sending data for it",
                    h.sequence, h.disk_index
                ),
            ));
        }
        let _order = q.order.lock().await;
        let expected = self.inner.state.received_next(machine_id, h.disk_index)?;
        if h.sequence < expected {
            self.inner.state.count(&[
                (crate::store::Counter::DuplicateBatches, 1),
                (crate::store::Counter::DuplicateBytes, body.len() as u64),
            ])?;
            return Ok(self.ack(h.disk_index, h.sequence, true));
        }
        if h.sequence > expected {
            let mut f = ProcessError::new(
                Kind::Conflict,
                "sequence-gap",
                format!(
                    "disk {} batch {} arrived but {expected} is expected next: resend from {expected}",
                    h.disk_index, h.sequence
                ),
            );
            f.expected_sequence = Some(expected);
            return Err(f);
        }
        let number = match q.number.get() {
            Some(&n) => n,
            None => {
                let n = self.inner.state.machine_number(machine_id)?.ok_or_else(|| {
                    ProcessError::new(
                        Kind::Forbidden,
                        "unknown-machine",
                        "machine is not registered",
                    )
                })?;
                *q.number.get_or_init(|| n)
            }
        };
        let key = RecordKey { machine: number, disk: h.disk_index, sequence: h.sequence };
        let inner = self.inner.clone();
        let len = body.len() as u64;
        let kept = body.clone();
        let record = tokio::task::spawn_blocking(move || {
            let mut c = lock(&inner.cache);
            let r = c.append(key, &body);
            inner.note_cache(&c);
            r
        })
        .await
        .map_err(|e| ProcessError::new(Kind::Internal, "internal", e.to_string()))?
        .map_err(|e| match e {
            lifeboat_cache::Error::Full { .. } => {
                let mut f = ProcessError::new(
                    Kind::TooBusy,
                    "cache-full",
                    format!("the appliance cache is full ({e}); retry later"),
                );
                f.retry_after = Some(5);
                f
            }
            other => {
                tracing::error!(error = %other, "cache append failed");
                ProcessError::new(Kind::Unavailable, "cache-error", format!("cache: {other}"))
            }
        })?;
        self.inner.state.set_received_next(machine_id, h.disk_index, h.sequence + 1)?;
        self.inner.state.add_received_bytes(machine_id, h.disk_index, len)?;
        self.inner.state.count(&[
            (crate::store::Counter::ReceivedBatches, 1),
            (crate::store::Counter::ReceivedBytes, len),
        ])?;
        // Taken after the cursor (and counts) moved: the sync before this batch leaves the
        // cache covers them.
        let mark = self.inner.state.durable_mark();
        let payload = self.hold(kept);
        lock(&q.queue).push_back(Queued { record, payload, mark });
        q.notify.notify_one();
        Ok(self.ack(h.disk_index, h.sequence, false))
    }

    /// Keeps `payload` in memory if the budget allows.
    fn hold(&self, payload: bytes::Bytes) -> Option<bytes::Bytes> {
        use std::sync::atomic::Ordering::Relaxed;
        let len = payload.len();
        let hot = &self.inner.hot_bytes;
        let mut cur = hot.load(Relaxed);
        loop {
            if cur + len > HOT_BUDGET {
                return None;
            }
            match hot.compare_exchange_weak(cur, cur + len, Relaxed, Relaxed) {
                Ok(_) => return Some(payload),
                Err(now) => cur = now,
            }
        }
    }

    fn ack(&self, disk: u32, sequence: u64, duplicate: bool) -> BatchAck {
        let slow_down_ms =
            match self.inner.cache_pressure.load(std::sync::atomic::Ordering::Relaxed) {
                0 => 0,
                1 => 200,
                _ => 2000,
            };
        BatchAck { disk, sequence, duplicate, slow_down_ms }
    }

    /// The machine's agent was heard from: recorded in the state store, at most every 10 s.
    pub fn seen(&self, machine: MachineId) -> Result<(), StateError> {
        let mut seen = lock(&self.inner.seen);
        let due = seen.get(&machine).is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            seen.insert(machine, std::time::Instant::now());
            drop(seen);
            self.inner.state.machine_seen(machine)?;
        }
        Ok(())
    }

    /// The cache's (usage, high-water mark, limit) in bytes.
    pub fn cache_status(&self) -> (u64, u64, u64) {
        let (high, max) = self.inner.cache_limits;
        (self.inner.cache_usage.load(std::sync::atomic::Ordering::Relaxed), high, max)
    }

    /// Batches cached and not yet shipped, over all disks.
    pub fn backlog(&self) -> usize {
        lock(&self.inner.disks).values().map(|q| lock(&q.queue).len()).sum()
    }
}

pub(crate) fn call_failure(e: CallError) -> ProcessError {
    let retryable = e.is_retryable() || matches!(e, CallError::Failed { .. });
    ProcessError::new(
        if retryable { Kind::Unavailable } else { Kind::Internal },
        "target-error",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests;
