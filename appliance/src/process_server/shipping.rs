//! Shipping: one task per disk takes the disk's cached batches in sequence order, runs
//! them through the codec and cipher plugins, and puts them at the target as log objects;
//! a batch leaves the cache only after `put-log` returned.

use super::*;

/// A failure between the cache and the target: replaying the cache at start, or shipping
/// a batch (which then stays in the cache and is tried again).
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// A plugin call (codec, cipher, target) failed.
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The cache could not be read.
    #[error(transparent)]
    Cache(#[from] lifeboat_cache::Error),
    /// The state database refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// A cached batch does not decode.
    #[error(transparent)]
    Wire(#[from] lifeboat_wire::WireError),
    /// A blocking task panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

impl ProcessServer {
    /// Ships one disk's queue: an encoder (codec, cipher) and a putter (`put-log`, then the
    /// batch leaves the cache) run concurrently, two sealed logs apart at most, so that
    /// compressing the next batch overlaps storing this one. Both keep the disk's order.
    pub(super) async fn ship_loop(self, machine: MachineId, disk: u32, q: Arc<DiskQueue>) {
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
        let mut stage = Stage { machine, encrypt: true, ..Default::default() };
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
                    tracing::warn!(%machine, disk, sequence, error = %e, retry_in_ms = crate::millis(backoff), "compressing or encrypting failed; the batch stays in the cache");
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
                        tracing::warn!(%machine, disk, sequence, error = %e, retry_in_ms = crate::millis(backoff), "storing the log at the target failed; the batch stays in the cache");
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
    ) -> Result<Sealed, ShipError> {
        stage.refresh(&self.inner.registry, &self.inner.state, &self.inner.cfg).await?;
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
            let policy = self.inner.state.policy_of(stage.machine)?;
            stage.level = policy.compression_level.unwrap_or(self.inner.cfg.codec_level);
            stage.encrypt = policy.encryption.unwrap_or(true);
            stage.level_at = Some(std::time::Instant::now());
        }
        let codec = loaded(&mut stage.codec, "codec")?;
        let encoded = codec.compress(stage.level, &payload).await?;
        let t1 = std::time::Instant::now();
        // The cache holds batches of at most MAX_BATCH_BYTES, so this fits.
        let batch_len = u32::try_from(payload.len()).map_err(|_| {
            ShipError::Failed(format!(
                "a cached batch of {} bytes is over the log object's 32-bit length",
                payload.len()
            ))
        })?;
        let header = LogHeader {
            compressed: !encoded.raw,
            sealed: stage.encrypt,
            batch_len,
            machine,
            disk,
            sequence,
        }
        .encode();
        let body: &[u8] = if encoded.raw { &payload } else { &encoded.data };
        let envelope = if stage.encrypt {
            loaded(&mut stage.cipher, "cipher")?.seal(&header, body).await?
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
            compress_us = crate::micros(t1 - t0),
            seal_us = crate::micros(t1.elapsed()),
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
    ) -> Result<(), ShipError> {
        stage.refresh(&self.inner.registry, &self.inner.state, &self.inner.cfg).await?;
        let record = sealed.queued.record;
        let mark = sealed.queued.mark;
        let sequence = record.key().sequence;
        let t0 = std::time::Instant::now();
        loaded(&mut stage.target, "target")?
            .put_log(&log_name(machine, disk, sequence), &sealed.obj)
            .await?;
        let put_us = crate::micros(t0.elapsed());
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
            Ok::<_, ShipError>(r?)
        })
        .await??;
        self.inner.state.count(&[
            (crate::store::Counter::ShippedObjects, 1),
            (crate::store::Counter::ShippedBytes, sealed.obj.len() as u64),
        ])?;
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
    machine: MachineId,
    level: i32,
    encrypt: bool,
    level_at: Option<std::time::Instant>,
}

/// The plugin instance in `slot`, which [`Stage::refresh`] fills before any use; a use
/// before it is an error naming the plugin, not a panic.
fn loaded<'a, T>(slot: &'a mut Option<T>, what: &str) -> Result<&'a mut T, ShipError> {
    slot.as_mut().ok_or_else(|| {
        ShipError::Failed(format!("the {what} plugin is not loaded (no refresh before its use)"))
    })
}

impl Stage {
    async fn refresh(
        &mut self,
        registry: &Registry,
        state: &crate::store::State,
        cfg: &config::ProcessServer,
    ) -> Result<(), ShipError> {
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
                ShipError::Failed(format!("plugin {name:?} is not loaded; see the appliance log"))
            })
        };
        self.codec = Some(CodecInstance::new(get(&cfg.codec)?).await?);
        self.cipher = Some(CipherInstance::new(get(&cfg.cipher)?).await?);
        let target = crate::config_server::targets::chosen(state, &cfg.target);
        self.target = Some(TargetInstance::new(get(&target)?).await?);
        self.generation = current;
        Ok(())
    }
}
