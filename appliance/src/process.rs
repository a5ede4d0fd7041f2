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

use crate::config;
use crate::handoff::Handoff;
use crate::logobj::{LogHeader, disk_id, log_name};
use crate::state::{State, StateError};
use lifeboat_cache::{Cache, CacheConfig, Pressure, RecordKey, RecordRef};
use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::{CallError, CipherInstance, CodecInstance, TargetInstance};
use lifeboat_wire::MachineId;
use lifeboat_wire::api::{BatchAck, DiskCursor, Hello, HelloResponse};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// An API failure: HTTP status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// For `sequence-gap`.
    pub expected_sequence: Option<u64>,
    /// For `cache-full`: seconds to wait.
    pub retry_after: Option<u64>,
}

impl ApiFailure {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            code,
            message: message.into(),
            expected_sequence: None,
            retry_after: None,
        }
    }
}

impl From<StateError> for ApiFailure {
    fn from(e: StateError) -> Self {
        tracing::error!(error = %e, "state database failure");
        ApiFailure::new(500, "internal", format!("appliance state error: {e}"))
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
    seen: Mutex<HashMap<String, std::time::Instant>>,
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
    ) -> anyhow::Result<ProcessServer> {
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
            me.inner.state.set_received_next(&machine.to_string(), disk, seq + 1)?;
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
    async fn read_compare_requests(&self) -> Result<(), ApiFailure> {
        use crate::control::{COMPARE_REQUEST, CompareRequested, open, parse_name};
        let Some(keys) = self.inner.keys.get() else { return Ok(()) };
        let mut target = self.control_target().await?;
        let t = target.as_mut().expect("set by control_target");
        for name in t.list_logs(COMPARE_REQUEST).await.map_err(call_failure)? {
            let Some((machine, disk)) = parse_name(COMPARE_REQUEST, &name) else { continue };
            let mid = machine.to_string();
            if !self.inner.state.machine_exists(&mid)? {
                continue;
            }
            let bytes = t.get_log(&name).await.map_err(call_failure)?;
            let request = open(keys, &name, &bytes).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<CompareRequested>(&b).map_err(|e| e.to_string())
            });
            match request {
                Ok(r) => {
                    if self.inner.state.record_compare(&mid, disk, r.token)? {
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
    ) -> Result<(), ApiFailure> {
        use crate::control::{COMPARE_DONE, CompareFinished, name, seal};
        let Some(keys) = self.inner.keys.get() else { return Ok(()) };
        let n = name(COMPARE_DONE, machine, disk);
        let body = serde_json::to_vec(&CompareFinished { token, point })
            .map_err(|e| ApiFailure::new(500, "internal", e.to_string()))?;
        let sealed =
            seal(keys, &n, &body).map_err(|e| ApiFailure::new(500, "internal", e.to_string()))?;
        let mut target = self.control_target().await?;
        let t = target.as_mut().expect("set by control_target");
        t.put_log(&n, &sealed).await.map_err(call_failure)
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
        });
        disks.insert((machine, disk), q.clone());
        let me = self.clone();
        let q2 = q.clone();
        tokio::spawn(async move { me.ship_loop(machine, disk, q2).await });
        q
    }

    pub(crate) async fn control_target(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<TargetInstance>>, ApiFailure> {
        let mut g = self.inner.control.lock().await;
        let name = &self.inner.cfg.target;
        let stale = g.as_ref().is_none_or(|t| {
            !self.inner.registry.get(name).is_some_and(|p| Arc::ptr_eq(t.plugin(), &p))
        });
        if stale {
            let plugin = self.inner.registry.get(name).ok_or_else(|| {
                ApiFailure::new(
                    503,
                    "target-unavailable",
                    format!("target plugin {name:?} is not loaded; see the appliance log"),
                )
            })?;
            *g = Some(TargetInstance::new(plugin).await.map_err(call_failure)?);
        }
        Ok(g)
    }

    /// `POST /api/v1/hello`: version negotiation, disks, cursors.
    pub async fn hello(&self, machine_id: &str, hello: Hello) -> Result<HelloResponse, ApiFailure> {
        let machine: MachineId =
            machine_id.parse().map_err(|e: String| ApiFailure::new(403, "forbidden", e))?;
        if !self.inner.state.machine_exists(machine_id)? {
            return Err(ApiFailure::new(
                403,
                "unknown-machine",
                format!("machine {machine_id} is not registered with this appliance"),
            ));
        }
        let version = lifeboat_wire::negotiate(lifeboat_wire::PROTOCOL_VERSIONS, &hello.protocol_versions)
            .ok_or_else(|| {
                ApiFailure::new(
                    426,
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
                return Err(ApiFailure::new(
                    400,
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
                self.inner.state.set_disk_alert(machine_id, d.index, "disk-shrunk", &message)?;
                tracing::error!(machine = machine_id, disk = d.index, "{message}");
                return Err(ApiFailure::new(409, "disk-shrunk", message));
            }
        }
        for d in &hello.disks {
            let id = disk_id(machine, d.index);
            let mut target = self.control_target().await?;
            let t = target.as_mut().expect("set above");
            match known.iter().find(|(i, _)| *i == d.index) {
                Some((_, size)) if *size != d.size => {
                    // Grown while protected (shrinking was refused above): the replica
                    // grows before any batch for the new space is accepted.
                    t.resize_disk(&id, d.size).await.map_err(call_failure)?;
                    tracing::info!(
                        machine = machine_id,
                        disk = d.index,
                        from = size,
                        to = d.size,
                        "disk grew: replica resized"
                    );
                }
                _ => t.create_disk(&id, d.size).await.map_err(call_failure)?,
            }
            drop(target);
            self.inner.state.upsert_disk(machine_id, d.index, d.size, &d.path)?;
            self.inner.state.clear_disk_alert(machine_id, d.index, "disk-shrunk")?;
            cursors.push(DiskCursor {
                index: d.index,
                next_sequence: self.inner.state.received_next(machine_id, d.index)?,
            });
            self.queue(machine, d.index);
        }
        Ok(HelloResponse { protocol_version: version, disks: cursors })
    }

    /// `PUT /api/v1/batches`: verify, order, cache durably, acknowledge.
    pub async fn batch(
        &self,
        machine_id: &str,
        body: bytes::Bytes,
    ) -> Result<BatchAck, ApiFailure> {
        let batch = lifeboat_wire::decode(&body)
            .map_err(|e| ApiFailure::new(400, "bad-batch", format!("batch refused: {e}")))?;
        let h = *batch.header();
        let end = batch.extents().last().map_or(0, |e| e.end());
        drop(batch);
        if h.machine.to_string() != machine_id {
            return Err(ApiFailure::new(
                403,
                "forbidden",
                format!(
                    "machine {machine_id} may write only its own disks; this batch is for {}",
                    h.machine
                ),
            ));
        }
        let known = self.inner.state.disks(machine_id)?;
        let Some(&(_, size)) = known.iter().find(|(i, _)| *i == h.disk_index) else {
            return Err(ApiFailure::new(
                409,
                "unknown-disk",
                format!("disk {} was not announced: send hello first", h.disk_index),
            ));
        };
        // Extents are sorted and disjoint (the decoder checked): the last one ends last.
        if end > size {
            return Err(ApiFailure::new(
                400,
                "extent-out-of-range",
                format!(
                    "batch {} of disk {} writes up to byte {end}, past the disk's announced size of {size} bytes: announce the new size (hello) before sending data for it",
                    h.sequence, h.disk_index
                ),
            ));
        }
        let q = self.queue(h.machine, h.disk_index);
        let _order = q.order.lock().await;
        let expected = self.inner.state.received_next(machine_id, h.disk_index)?;
        if h.sequence < expected {
            self.inner
                .state
                .count(&[("duplicate_batches", 1), ("duplicate_bytes", body.len() as u64)])?;
            return Ok(self.ack(h.disk_index, h.sequence, true));
        }
        if h.sequence > expected {
            let mut f = ApiFailure::new(
                409,
                "sequence-gap",
                format!(
                    "disk {} batch {} arrived but {expected} is expected next: resend from {expected}",
                    h.disk_index, h.sequence
                ),
            );
            f.expected_sequence = Some(expected);
            return Err(f);
        }
        let number =
            self.inner.state.machine_number(machine_id)?.ok_or_else(|| {
                ApiFailure::new(403, "unknown-machine", "machine is not registered")
            })?;
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
        .map_err(|e| ApiFailure::new(500, "internal", e.to_string()))?
        .map_err(|e| match e {
            lifeboat_cache::Error::Full { .. } => {
                let mut f = ApiFailure::new(
                    429,
                    "cache-full",
                    format!("the appliance cache is full ({e}); retry later"),
                );
                f.retry_after = Some(5);
                f
            }
            other => {
                tracing::error!(error = %other, "cache append failed");
                ApiFailure::new(503, "cache-error", format!("cache: {other}"))
            }
        })?;
        self.inner.state.set_received_next(machine_id, h.disk_index, h.sequence + 1)?;
        let mark = self.inner.state.durable_mark();
        self.inner.state.count(&[("received_batches", 1), ("received_bytes", len)])?;
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
    pub fn seen(&self, machine: &str) -> Result<(), StateError> {
        let mut seen = lock(&self.inner.seen);
        let due = seen.get(machine).is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            seen.insert(machine.to_owned(), std::time::Instant::now());
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

    /// Ships one disk's queue: an encoder (codec, cipher) and a putter (`put-log`, then the
    /// batch leaves the cache) run concurrently, two sealed logs apart at most, so that
    /// compressing the next batch overlaps storing this one. Both keep the disk's order.
    async fn ship_loop(self, machine: MachineId, disk: u32, q: Arc<DiskQueue>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Sealed>(2);
        let putter = tokio::spawn(self.clone().put_loop(machine, disk, q.clone(), rx));
        self.encode_loop(machine, disk, q, tx).await;
        let _ = putter.await;
    }

    /// Waits out a failure's back-off; false when shutting down.
    async fn backoff(&self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (wait * 2).min(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.inner.shutdown.cancelled() => false,
        }
    }

    async fn encode_loop(
        self,
        machine: MachineId,
        disk: u32,
        q: Arc<DiskQueue>,
        tx: tokio::sync::mpsc::Sender<Sealed>,
    ) {
        let mut stage = Stage { machine: machine.to_string(), encrypt: true, ..Default::default() };
        let mut backoff = Duration::from_millis(100);
        // The first sequence not handed to the putter yet.
        let mut next = 0u64;
        loop {
            let found = lock(&q.queue).iter().find(|e| e.record.key().sequence >= next).cloned();
            let Some(queued) = found else {
                tokio::select! {
                    _ = q.notify.notified() => continue,
                    _ = self.inner.shutdown.cancelled() => return,
                }
            };
            let sequence = queued.record.key().sequence;
            match self.encode(&mut stage, machine, disk, &queued).await {
                Ok(sealed) => {
                    backoff = Duration::from_millis(100);
                    next = sequence + 1;
                    tokio::select! {
                        r = tx.send(sealed) => if r.is_err() { return },
                        _ = self.inner.shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(%machine, disk, sequence, error = %e, retry_in_ms = backoff.as_millis() as u64, "compressing or encrypting failed; the batch stays in the cache");
                    if !self.backoff(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    async fn put_loop(
        self,
        machine: MachineId,
        disk: u32,
        q: Arc<DiskQueue>,
        mut rx: tokio::sync::mpsc::Receiver<Sealed>,
    ) {
        let mut stage = Stage::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let sealed = tokio::select! {
                s = rx.recv() => match s { Some(s) => s, None => return },
                _ = self.inner.shutdown.cancelled() => return,
            };
            let sequence = sealed.queued.record.key().sequence;
            loop {
                match self.put(&mut stage, machine, disk, &sealed).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(%machine, disk, sequence, error = %e, retry_in_ms = backoff.as_millis() as u64, "storing the log at the target failed; the batch stays in the cache");
                        if !self.backoff(&mut backoff).await {
                            return;
                        }
                    }
                }
            }
            backoff = Duration::from_millis(100);
            let mut queue = lock(&q.queue);
            debug_assert_eq!(queue.front().map(|e| e.record.key().sequence), Some(sequence));
            if let Some(done) = queue.pop_front()
                && let Some(p) = done.payload
            {
                self.inner.hot_bytes.fetch_sub(p.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Compresses and encrypts a batch into its log object.
    async fn encode(
        &self,
        stage: &mut Stage,
        machine: MachineId,
        disk: u32,
        queued: &Queued,
    ) -> anyhow::Result<Sealed> {
        stage.refresh(&self.inner.registry, &self.inner.cfg).await?;
        let record = &queued.record;
        let payload = match &queued.payload {
            Some(p) => p.clone(),
            None => {
                let inner = self.inner.clone();
                let r = *record;
                bytes::Bytes::from(
                    tokio::task::spawn_blocking(move || lock(&inner.cache).read(&r)).await??,
                )
            }
        };
        let sequence = record.key().sequence;
        let t0 = std::time::Instant::now();
        // The machine's policy may set its level (looked up at most every 10 s).
        if stage.level_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            let policy = crate::policy::of_machine(&self.inner.state, &stage.machine)?;
            stage.level = policy.compression_level.unwrap_or(self.inner.cfg.codec_level);
            stage.encrypt = policy.encryption.unwrap_or(true);
            stage.level_at = Some(std::time::Instant::now());
        }
        let codec = stage.codec.as_mut().expect("refreshed");
        let encoded = codec.compress(stage.level, &payload).await?;
        let t1 = std::time::Instant::now();
        let header = LogHeader {
            compressed: !encoded.raw,
            sealed: stage.encrypt,
            batch_len: payload.len() as u32,
            machine,
            disk,
            sequence,
        }
        .encode();
        let body: &[u8] = if encoded.raw { &payload } else { &encoded.data };
        let envelope = if stage.encrypt {
            stage.cipher.as_mut().expect("refreshed").seal(&header, body).await?
        } else {
            body.to_vec()
        };
        let mut obj = Vec::with_capacity(header.len() + envelope.len());
        obj.extend_from_slice(&header);
        obj.extend_from_slice(&envelope);
        tracing::trace!(
            %machine,
            disk,
            sequence,
            compress_us = (t1 - t0).as_micros() as u64,
            seal_us = t1.elapsed().as_micros() as u64,
            "sealed"
        );
        Ok(Sealed { queued: queued.clone(), payload, obj })
    }

    /// Stores a log object at the target; then the batch may leave the cache.
    async fn put(
        &self,
        stage: &mut Stage,
        machine: MachineId,
        disk: u32,
        sealed: &Sealed,
    ) -> anyhow::Result<()> {
        stage.refresh(&self.inner.registry, &self.inner.cfg).await?;
        let record = sealed.queued.record;
        let mark = sealed.queued.mark;
        let sequence = record.key().sequence;
        let t0 = std::time::Instant::now();
        stage
            .target
            .as_mut()
            .expect("refreshed")
            .put_log(&log_name(machine, disk, sequence), &sealed.obj)
            .await?;
        let put_us = t0.elapsed().as_micros() as u64;
        if let Some(h) = &self.inner.handoff {
            h.offer(log_name(machine, disk, sequence), sealed.payload.clone());
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // The disk's received cursor counts this batch: it must survive a power cut
            // before the batch leaves the cache, or the cursor could fall back behind
            // batches that exist nowhere on the appliance any more. One sync covers every
            // batch counted before it.
            inner.state.make_durable_since(mark)?;
            let mut c = lock(&inner.cache);
            let r = c.release(&record);
            inner.note_cache(&c);
            Ok::<_, anyhow::Error>(r?)
        })
        .await??;
        self.inner
            .state
            .count(&[("shipped_objects", 1), ("shipped_bytes", sealed.obj.len() as u64)])?;
        tracing::debug!(%machine, disk, sequence, bytes = sealed.obj.len(), put_us, "shipped");
        Ok(())
    }
}

/// A batch sealed into its log object, on its way to the target.
struct Sealed {
    queued: Queued,
    /// The clear batch, for the hand-off.
    payload: bytes::Bytes,
    obj: Vec<u8>,
}

/// The plugin instances one shipping task uses, rebuilt when the plugins are reloaded.
#[derive(Default)]
struct Stage {
    generation: u64,
    codec: Option<CodecInstance>,
    cipher: Option<CipherInstance>,
    target: Option<TargetInstance>,
    /// The machine this stage encodes for, its codec level, whether its data is sealed,
    /// and when that was looked up.
    machine: String,
    level: i32,
    encrypt: bool,
    level_at: Option<std::time::Instant>,
}

impl Stage {
    async fn refresh(
        &mut self,
        registry: &Registry,
        cfg: &config::ProcessServer,
    ) -> anyhow::Result<()> {
        let current = registry.current().generation;
        if current == self.generation
            && self.codec.is_some()
            && self.cipher.is_some()
            && self.target.is_some()
        {
            return Ok(());
        }
        let get = |name: &str| {
            registry.get(name).ok_or_else(|| {
                anyhow::anyhow!("plugin {name:?} is not loaded; see the appliance log")
            })
        };
        self.codec = Some(CodecInstance::new(get(&cfg.codec)?).await?);
        self.cipher = Some(CipherInstance::new(get(&cfg.cipher)?).await?);
        self.target = Some(TargetInstance::new(get(&cfg.target)?).await?);
        self.generation = current;
        Ok(())
    }
}

pub(crate) fn call_failure(e: CallError) -> ApiFailure {
    let retryable = e.is_retryable() || matches!(e, CallError::Failed { .. });
    ApiFailure::new(if retryable { 503 } else { 500 }, "target-error", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_plugin_host::Host;
    use lifeboat_plugin_host::config::PluginsConfig;
    use lifeboat_plugin_host::keys::KeyRing;
    use lifeboat_wire::{Batch, BatchHeader};

    fn batch(machine: MachineId, disk: u32, sequence: u64) -> bytes::Bytes {
        let mut b = Batch::builder(BatchHeader { machine, disk_index: disk, sequence, tag: None });
        b.push_data(4096, vec![7u8; 4096]).unwrap();
        lifeboat_wire::encode(&b.build()).into()
    }

    /// A process server with no plugins: receiving works, shipping waits (and retries).
    fn server(dir: &std::path::Path) -> (ProcessServer, State) {
        let state = State::open(&dir.join("state.db")).unwrap();
        let plugins = PluginsConfig {
            dir: dir.join("plugins"),
            cache_dir: None,
            trusted_keys: vec![],
            allow_unsigned: false,
            grants: Default::default(),
        };
        let registry = Arc::new(Registry::new(Host::new(KeyRing::default()).unwrap(), plugins));
        let ps = ProcessServer::start(
            state.clone(),
            registry,
            config::ProcessServer::default(),
            &dir.join("cache"),
            tokio_util::sync::CancellationToken::new(),
            None,
        )
        .unwrap();
        (ps, state)
    }

    #[tokio::test]
    async fn an_agent_writes_only_its_own_disks_in_sequence() {
        let d = tempfile::tempdir().unwrap();
        let (ps, state) = server(d.path());
        let a = MachineId([1; 16]);
        let b = MachineId([2; 16]);
        state.add_passphrase("p").unwrap();
        assert!(state.register_machine("p", &a.to_string(), "a").unwrap());
        state.upsert_disk(&a.to_string(), 0, 1 << 20, "/dev/a").unwrap();

        // Machine a presenting a batch of machine b's disk: refused.
        let e = ps.batch(&a.to_string(), batch(b, 0, 0)).await.unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"), "{}", e.message);
        // A disk never announced: refused.
        let e = ps.batch(&a.to_string(), batch(a, 1, 0)).await.unwrap_err();
        assert_eq!(e.code, "unknown-disk");
        // In order: stored; again: a duplicate; ahead: a gap naming the expected one.
        let ack = ps.batch(&a.to_string(), batch(a, 0, 0)).await.unwrap();
        assert!(!ack.duplicate);
        let ack = ps.batch(&a.to_string(), batch(a, 0, 0)).await.unwrap();
        assert!(ack.duplicate);
        let e = ps.batch(&a.to_string(), batch(a, 0, 5)).await.unwrap_err();
        assert_eq!((e.status, e.expected_sequence), (409, Some(1)));
        // A corrupt batch never reaches the cache.
        let mut bad = batch(a, 0, 1).to_vec();
        let n = bad.len();
        bad[n / 2] ^= 1;
        let e = ps.batch(&a.to_string(), bad.into()).await.unwrap_err();
        assert_eq!(e.code, "bad-batch");
        assert_eq!(state.received_next(&a.to_string(), 0).unwrap(), 1);
        assert_eq!(ps.backlog(), 1, "the stored batch waits to be shipped");
    }

    /// Issue 11, finding 3: extents past the disk's end were accepted and stalled the
    /// master target; hello sizes had no bound; a shrink went through silently.
    #[tokio::test]
    async fn extents_past_the_end_and_bad_sizes_are_refused_before_anything_is_cached() {
        let d = tempfile::tempdir().unwrap();
        let (ps, state) = server(d.path());
        let a = MachineId([1; 16]);
        let id = a.to_string();
        state.add_passphrase("p").unwrap();
        assert!(state.register_machine("p", &id, "a").unwrap());
        // The test batch writes 4096 bytes at 4096: it ends at 8192.
        state.upsert_disk(&id, 0, 8192 - 512, "/dev/a").unwrap();
        let e = ps.batch(&id, batch(a, 0, 0)).await.unwrap_err();
        assert_eq!((e.status, e.code), (400, "extent-out-of-range"), "{}", e.message);
        assert!(e.message.contains("8192"), "{}", e.message);
        assert_eq!(ps.backlog(), 0, "nothing cached");
        assert_eq!(state.received_next(&id, 0).unwrap(), 0);
        state.upsert_disk(&id, 0, 8192, "/dev/a").unwrap();
        assert!(ps.batch(&id, batch(a, 0, 0)).await.is_ok(), "exactly to the end is fine");

        let hello = |size: u64| Hello {
            protocol_versions: lifeboat_wire::PROTOCOL_VERSIONS.to_vec(),
            disks: vec![lifeboat_wire::api::DiskDescriptor {
                index: 0,
                size,
                path: "/dev/a".into(),
            }],
            system: None,
        };
        for bad in [0, 1000, (64u64 << 40) + 512] {
            let e = ps.hello(&id, hello(bad)).await.unwrap_err();
            assert_eq!((e.status, e.code), (400, "bad-disk-size"), "{bad}: {}", e.message);
        }
        let e = ps.hello(&id, hello(4096)).await.unwrap_err();
        assert_eq!((e.status, e.code), (409, "disk-shrunk"), "{}", e.message);
        assert_eq!(state.disks(&id).unwrap(), vec![(0, 8192)], "the replica's size is kept");
        let alerts = state.disk_alerts().unwrap();
        assert_eq!((alerts.len(), alerts[0].kind.as_str()), (1, "disk-shrunk"));
        assert!(crate::policy::alerts(&state).unwrap().iter().any(|a| a.kind == "disk-shrunk"));
    }

    /// Issue 11, finding 8: acknowledgements read the cache's pressure under the cache's
    /// mutex, which appends and releases hold across `fdatasync`, so async workers waited
    /// on the disk. With the mutex held (as by a slow fsync), an acknowledgement and the
    /// cache status are still answered.
    #[tokio::test]
    async fn acknowledging_never_waits_for_the_cache_lock() {
        let d = tempfile::tempdir().unwrap();
        let (ps, _state) = server(d.path());
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let inner = ps.inner.clone();
        let holder = std::thread::spawn(move || {
            let _g = lock(&inner.cache);
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
        });
        held_rx.recv().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let ps2 = ps.clone();
        std::thread::spawn(move || {
            let ack = ps2.ack(0, 1, false);
            let status = ps2.cache_status();
            done_tx.send((ack.slow_down_ms, status.2)).unwrap();
        });
        let answered = done_rx.recv_timeout(Duration::from_secs(20));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let (slow_down, max) = answered.expect("answered while the cache was locked");
        assert_eq!((slow_down, max), (0, (16 * 1024) << 20));
    }
}
