//! The sender: ships the journal's batches to the process server, in order per disk, and
//! deletes each one only when the appliance says it is durable.
//!
//! # Protocol (see `lifeboat_api`)
//!
//! A session starts with `POST /api/v1/hello` (disks and protocol versions). The answer's
//! `next_sequence` per disk is what the appliance expects next, everything before it being
//! durable there. The sender reconciles it with the journal:
//!
//! | appliance expects `n` | meaning | action |
//! | --- | --- | --- |
//! | first pending ≤ `n` ≤ journal's next | normal | drop the batches below `n`, send from `n` |
//! | journal's next < `n` ≤ journal's reservation | batches kept in memory were lost in a crash after the appliance got them; their cycle was not committed | continue numbering at `n` |
//! | `n` > journal's reservation | this agent's state was lost (state dir restored, reinstalled) | continue numbering at `n`, mark the disk for a full hash-compare resync |
//! | `n` < first pending (or < next with nothing pending) | the appliance lost batches it had acknowledged | continue at `n`, full resync |
//!
//! A full resync goes through the journal's resync mark: the cycle invalidates the whole disk
//! in its tracker, which then compares every block again and sends whatever differs (every
//! block it cannot vouch for). Nothing is lost, at the cost of reading the disk once.
//!
//! Then `PUT /api/v1/batches` with each pending batch, the disks interleaved round-robin,
//! one batch in flight at a time:
//!
//! - `200` with a [`BatchAck`]: delete the batch (and any before it) from the journal; wait
//!   `slow_down_ms` if the appliance asks (its cache is above its high-water mark);
//! - `429`: wait `Retry-After` seconds, send the same batch again;
//! - `409` (sequence gap) with `expected_sequence`: reconcile as after a hello and resend
//!   from there;
//! - anything else, or a connection error: back off (exponential from 0.5 s, capped at 30 s,
//!   with jitter) and start a new session. Forever: the journal holds the data, so waiting
//!   loses nothing.
//!
//! The network bandwidth cap ([`Limiter`]) is taken before each batch, so the average rate
//! follows the schedule. Progress is posted to `POST /api/v1/progress` at most every two
//! seconds, only what changed. Shutdown is checked between batches: a batch in flight is
//! finished (or its connection fails) first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use lifeboat_api::{BatchAck, DiskDescriptor, Hello, HelloResponse, Progress, SystemInfo};
use lifeboat_net::{Client, ClientError};
use rand::Rng as _;
use tokio::sync::watch;

use crate::bandwidth::{Limiter, Schedule};
use crate::journal::{Journal, JournalError, PendingBatch};
use crate::progress::ProgressBoard;

/// Path of the hello endpoint.
pub const HELLO_PATH: &str = "/api/v1/hello";
/// Path of the batch endpoint.
pub const BATCHES_PATH: &str = "/api/v1/batches";
/// Path of the progress endpoint.
pub const PROGRESS_PATH: &str = "/api/v1/progress";

/// Shortest interval between two progress posts.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// First back-off after a failure.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Wait after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest wait the appliance may ask for at once (429 or `slow_down_ms`).
const MAX_ASKED_WAIT: Duration = Duration::from_secs(300);
/// Timeout of a small request (hello, progress).
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a batch upload (an 8 MiB batch over a 1 Mbit/s link takes 70 s).
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// What the sender needs besides the journal.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// The process server, `https://host:9443`.
    pub url: String,
    /// TLS client configuration (appliance CA, agent certificate).
    pub tls: Arc<rustls::ClientConfig>,
    /// The machine's disks, as sent in every hello.
    pub disks: Vec<DiskDescriptor>,
    /// The machine's firmware, CPUs, memory and interfaces, as sent in every hello.
    pub system: Option<SystemInfo>,
    /// A renewed certificate or changed trusted CAs: the sender reconnects with them.
    pub tls_updates: Option<watch::Receiver<Arc<rustls::ClientConfig>>>,
    /// A new bandwidth schedule (the machine's policy changed).
    pub schedule_updates: Option<watch::Receiver<Schedule>>,
    /// The disks with a new size (a disk grew while protected): announced in a new hello
    /// before the next batch is sent.
    pub disk_updates: Option<watch::Receiver<Vec<DiskDescriptor>>>,
    /// The bandwidth schedule.
    pub schedule: Schedule,
    /// Where progress comes from, if it is to be reported.
    pub progress: Option<Arc<ProgressBoard>>,
}

/// Errors that stop the sender. Network trouble never does: it is retried.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The journal failed (reading a batch, deleting it).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The process server URL is not usable.
    #[error("process server address from the registration: {0}; register again")]
    Url(#[source] ClientError),
}

/// What a sender did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Batches acknowledged.
    pub acked: u64,
    /// Bytes of batches acknowledged.
    pub acked_bytes: u64,
    /// Sessions started (hellos answered).
    pub sessions: u64,
    /// Failures that led to a back-off.
    pub failures: u64,
    /// `409` answers handled.
    pub gaps: u64,
    /// Disks reset for a full resync.
    pub resyncs: u64,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// Start a new session at once (a disk's new size is to be announced).
    Again(String),
    /// Back off, then start a new session.
    Retry(String),
    Fatal(SenderError),
}

impl From<JournalError> for End {
    fn from(e: JournalError) -> Self {
        End::Fatal(e.into())
    }
}

/// The human part of an error answer: `{"error": …, "code": …}` or the raw body.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.get("error").is_some() => {
            let msg = v["error"].as_str().unwrap_or_default();
            match v.get("code").and_then(|c| c.as_str()) {
                Some(code) => format!("{msg} ({code})"),
                None => msg.to_string(),
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no message)".to_string()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

/// Exponential back-off with jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_START }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// The wait before the next attempt: a random point in the upper half of the current
    /// step, so that many agents cut off together do not come back together.
    fn step(&mut self) -> Duration {
        let cur = self.next;
        self.next = (cur * 2).min(BACKOFF_MAX);
        let half = cur / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// The sender; see the module documentation.
#[derive(Debug)]
pub struct Sender {
    url: String,
    journal: Arc<Journal>,
    small: Client,
    big: Client,
    disks: Vec<DiskDescriptor>,
    system: Option<SystemInfo>,
    tls_updates: Option<watch::Receiver<Arc<rustls::ClientConfig>>>,
    schedule_updates: Option<watch::Receiver<Schedule>>,
    disk_updates: Option<watch::Receiver<Vec<DiskDescriptor>>>,
    limiter: Limiter,
    progress: Option<Arc<ProgressBoard>>,
    last_progress: Option<Instant>,
    reported: Vec<Option<Progress>>,
    next_disk: usize,
    backoff: Backoff,
    stats: SenderStats,
}

async fn blocking<T: Send + 'static>(
    journal: &Arc<Journal>,
    f: impl FnOnce(&Journal) -> T + Send + 'static,
) -> T {
    let j = journal.clone();
    match tokio::task::spawn_blocking(move || f(&j)).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Sender {
    /// A sender over `journal`.
    pub fn new(journal: Arc<Journal>, opts: SenderOptions) -> Result<Self, SenderError> {
        let client = Client::new(&opts.url, opts.tls).map_err(SenderError::Url)?;
        let n = opts.disks.len();
        Ok(Self {
            url: opts.url,
            journal,
            small: client.clone().with_timeout(SMALL_TIMEOUT),
            big: client.with_timeout(BATCH_TIMEOUT),
            disks: opts.disks,
            system: opts.system,
            tls_updates: opts.tls_updates,
            schedule_updates: opts.schedule_updates,
            disk_updates: opts.disk_updates,
            limiter: Limiter::new(opts.schedule),
            progress: opts.progress,
            last_progress: None,
            reported: vec![None; n],
            next_disk: 0,
            backoff: Backoff::new(),
            stats: SenderStats::default(),
        })
    }

    /// Sends until `shutdown` becomes true (or its sender is dropped). Returns only on
    /// shutdown or a journal failure; network failures are retried forever.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<SenderStats, SenderError> {
        loop {
            if stopping(&shutdown) {
                return Ok(self.stats);
            }
            self.take_tls_update()?;
            match self.session(&mut shutdown).await {
                End::Shutdown => return Ok(self.stats),
                End::Fatal(e) => return Err(e),
                End::Again(reason) => tracing::info!("starting a new session: {reason}"),
                End::Retry(reason) => {
                    self.stats.failures += 1;
                    let wait = self.backoff.step();
                    tracing::warn!(
                        url = %self.url,
                        retry_in_ms = crate::millis(wait),
                        "cannot ship batches to the process server: {reason}; retrying (the journal keeps everything meanwhile)"
                    );
                    if sleep_or_shutdown(wait, &mut shutdown).await {
                        return Ok(self.stats);
                    }
                }
            }
        }
    }

    async fn hello(&mut self) -> Result<(), End> {
        if let Some(rx) = &mut self.disk_updates {
            self.disks = rx.borrow_and_update().clone();
        }
        let hello = Hello {
            protocol_versions: lifeboat_wire::PROTOCOL_VERSIONS.to_vec(),
            disks: self.disks.clone(),
            system: self.system.clone(),
        };
        let (status, _, body) = self
            .small
            .post_json(HELLO_PATH, &hello, HeaderMap::new())
            .await
            .map_err(|e| End::Retry(e.to_string()))?;
        if status != StatusCode::OK {
            return Err(End::Retry(format!(
                "hello answered HTTP {status}: {}",
                error_message(&body)
            )));
        }
        let answer: HelloResponse = serde_json::from_slice(&body)
            .map_err(|e| End::Retry(format!("hello answer is not a HelloResponse: {e}")))?;
        if !lifeboat_wire::PROTOCOL_VERSIONS.contains(&answer.protocol_version) {
            return Err(End::Retry(format!(
                "the appliance chose protocol version {}, this agent speaks {:?}: upgrade the agent",
                answer.protocol_version,
                lifeboat_wire::PROTOCOL_VERSIONS
            )));
        }
        let indexes: Vec<u32> = self.disks.iter().map(|d| d.index).collect();
        for index in indexes {
            let Some(cursor) = answer.disks.iter().find(|c| c.index == index) else {
                return Err(End::Retry(format!("hello answer has no cursor for disk {index}")));
            };
            self.reconcile(index, cursor.next_sequence).await?;
        }
        self.stats.sessions += 1;
        tracing::info!(
            cursors = ?answer.disks.iter().map(|c| (c.index, c.next_sequence)).collect::<Vec<_>>(),
            pending_batches = self.journal.len(),
            "connected to the process server"
        );
        Ok(())
    }

    /// Makes the journal agree with an appliance that expects `expected` next for `disk`.
    async fn reconcile(&mut self, disk: u32, expected: u64) -> Result<(), End> {
        let (next, first, reserved) = blocking(&self.journal, move |j| {
            Ok::<_, JournalError>((
                j.next_sequence(disk)?,
                j.first_pending(disk)?,
                j.reserved(disk)?,
            ))
        })
        .await?;
        let first = first.map_or(next, |p| p.seq);
        if expected > next && expected <= reserved {
            // Batches that were only in memory when this agent stopped, and that the
            // appliance had received: their cycle was never committed, so its changes are
            // collected again. Nothing to resend, no resync.
            tracing::info!(
                disk,
                expected,
                journal_next = next,
                "the appliance holds batches this agent had in memory when it stopped: continuing at its number"
            );
            blocking(&self.journal, move |j| j.advance_to(disk, expected)).await?;
        } else if expected > next || expected < first {
            if expected > next {
                tracing::warn!(
                    disk,
                    expected,
                    journal_next = next,
                    "the appliance expects a later batch than this agent ever wrote: the agent's state was lost or restored from an old copy. Continuing at the appliance's number with a full hash-compare resync of the disk"
                );
            } else {
                tracing::warn!(
                    disk,
                    expected,
                    journal_first = first,
                    "the appliance expects a batch it had already acknowledged (it lost data): continuing at its number with a full hash-compare resync of the disk"
                );
            }
            blocking(&self.journal, move |j| j.reset(disk, expected)).await?;
            self.stats.resyncs += 1;
        } else {
            blocking(&self.journal, move |j| j.skip_to(disk, expected)).await?;
        }
        Ok(())
    }

    /// The next batch to send: the oldest of the next disk round-robin that has one.
    async fn next_batch(&mut self) -> Result<Option<PendingBatch>, End> {
        let n = self.disks.len();
        let start = self.next_disk;
        let indexes: Vec<u32> = (0..n).map(|i| self.disks[(start + i) % n].index).collect();
        let found = blocking(&self.journal, move |j| {
            for (i, d) in indexes.into_iter().enumerate() {
                if let Some(p) = j.first_pending(d)? {
                    return Ok::<_, JournalError>(Some((i, p)));
                }
            }
            Ok(None)
        })
        .await?;
        Ok(found.map(|(i, p)| {
            self.next_disk = (start + i + 1) % n.max(1);
            p
        }))
    }

    /// New clients (new connections) if the TLS identity or trust changed.
    fn take_tls_update(&mut self) -> Result<(), SenderError> {
        let Some(rx) = &mut self.tls_updates else { return Ok(()) };
        if rx.has_changed().unwrap_or(false) {
            let tls = rx.borrow_and_update().clone();
            let client = Client::new(&self.url, tls).map_err(SenderError::Url)?;
            self.small = client.clone().with_timeout(SMALL_TIMEOUT);
            self.big = client.with_timeout(BATCH_TIMEOUT);
            tracing::info!("reconnecting with the renewed certificate or trusted CAs");
        }
        Ok(())
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> End {
        if let Err(end) = self.hello().await {
            return end;
        }
        self.backoff.reset();
        let mut changed = self.journal.subscribe();
        loop {
            if stopping(shutdown) {
                return End::Shutdown;
            }
            if self.tls_updates.as_ref().is_some_and(|r| r.has_changed().unwrap_or(false)) {
                return End::Retry("the agent's certificate or trusted CAs changed".into());
            }
            if let Some(rx) = &mut self.schedule_updates
                && rx.has_changed().unwrap_or(false)
            {
                self.limiter = Limiter::new(rx.borrow_and_update().clone());
            }
            self.report_progress().await;
            changed.borrow_and_update();
            let next = match self.next_batch().await {
                Ok(n) => n,
                Err(end) => return end,
            };
            match next {
                Some(p) => {
                    if let Err(end) = self.send(p, shutdown).await {
                        return end;
                    }
                }
                None => {
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(PROGRESS_INTERVAL) => {}
                    }
                }
            }
        }
    }

    async fn send(
        &mut self,
        p: PendingBatch,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        let (disk, seq) = (p.disk, p.seq);
        let Some(bytes) = blocking(&self.journal, move |j| j.read(disk, seq)).await? else {
            // Acknowledged or dropped meanwhile.
            return Ok(());
        };
        // Checked after reading the batch: a size is published before the batches that
        // need it are journaled, so a batch past the announced end is never sent.
        if self.disk_updates.as_ref().is_some_and(|r| r.has_changed().unwrap_or(false)) {
            return Err(End::Again("a disk was resized: announcing its new size".into()));
        }
        let len = bytes.len() as u64;
        tokio::select! {
            _ = self.limiter.acquire(len) => {}
            _ = shutdown.changed() => return Err(End::Shutdown),
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let (status, resp_headers, body) = self
            .big
            .request(Method::PUT, BATCHES_PATH, bytes, headers)
            .await
            .map_err(|e| End::Retry(e.to_string()))?;
        match status {
            StatusCode::OK => {
                let ack: BatchAck = serde_json::from_slice(&body)
                    .map_err(|e| End::Retry(format!("batch answer is not a BatchAck: {e}")))?;
                if ack.disk != disk || ack.sequence != seq {
                    return Err(End::Retry(format!(
                        "sent disk {disk} batch {seq}, the appliance acknowledged disk {} batch {}",
                        ack.disk, ack.sequence
                    )));
                }
                blocking(&self.journal, move |j| j.ack(disk, seq)).await?;
                self.stats.acked += 1;
                self.stats.acked_bytes += len;
                self.backoff.reset();
                tracing::debug!(
                    disk,
                    seq,
                    bytes = len,
                    duplicate = ack.duplicate,
                    "batch acknowledged"
                );
                if ack.slow_down_ms > 0 {
                    let wait = Duration::from_millis(ack.slow_down_ms).min(MAX_ASKED_WAIT);
                    tracing::debug!(
                        wait_ms = crate::millis(wait),
                        "the appliance asks to slow down"
                    );
                    if sleep_or_shutdown(wait, shutdown).await {
                        return Err(End::Shutdown);
                    }
                }
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = resp_headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
                    .min(MAX_ASKED_WAIT);
                tracing::info!(
                    wait_s = wait.as_secs(),
                    "the appliance's cache is full (429): waiting as it asks"
                );
                if sleep_or_shutdown(wait, shutdown).await {
                    return Err(End::Shutdown);
                }
                Ok(())
            }
            StatusCode::CONFLICT => {
                let expected = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("expected_sequence").and_then(|e| e.as_u64()));
                self.stats.gaps += 1;
                match expected {
                    Some(expected) => {
                        tracing::info!(
                            disk,
                            sent = seq,
                            expected,
                            "the appliance expects another batch (409 sequence gap): resending from there"
                        );
                        self.reconcile(disk, expected).await
                    }
                    None => Err(End::Retry(format!(
                        "batch {seq} of disk {disk} refused with HTTP 409 without an expected sequence: {}",
                        error_message(&body)
                    ))),
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(End::Retry(format!(
                "the appliance refuses this agent (HTTP {status}: {}); if the machine was removed from the appliance, register it again",
                error_message(&body)
            ))),
            _ => Err(End::Retry(format!(
                "batch {seq} of disk {disk} answered HTTP {status}: {}",
                error_message(&body)
            ))),
        }
    }

    /// Posts what changed in the progress board, at most every [`PROGRESS_INTERVAL`].
    /// Failures are only logged: the batches are what matters.
    async fn report_progress(&mut self) {
        let Some(board) = &self.progress else { return };
        if self.last_progress.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.last_progress = Some(Instant::now());
        for report in board.reports() {
            let i = report.disk as usize;
            let same = self.reported.get(i).and_then(|r| r.as_ref()).is_some_and(|r| {
                (r.done_bytes, r.sent_bytes, r.total_bytes, &r.phase)
                    == (report.done_bytes, report.sent_bytes, report.total_bytes, &report.phase)
            });
            if same {
                continue;
            }
            match self.small.post_json(PROGRESS_PATH, &report, HeaderMap::new()).await {
                Ok((StatusCode::OK, _, _)) => {
                    if let Some(slot) = self.reported.get_mut(i) {
                        *slot = Some(report);
                    }
                }
                Ok((status, _, body)) => {
                    tracing::debug!(%status, "progress report refused: {}", error_message(&body));
                }
                Err(e) => tracing::debug!("progress report failed: {e}"),
            }
        }
        if let Some(alert) = board.take_alert() {
            match self.small.post_json("/api/v1/agent-alerts", &alert, HeaderMap::new()).await {
                Ok((StatusCode::OK, _, _)) => {}
                Ok((status, _, body)) => {
                    tracing::debug!(%status, "alert refused: {}", error_message(&body));
                }
                // Not lost: sent with the next report.
                Err(_) => board.raise(alert),
            }
        }
    }
}

/// Whether shutdown was asked for (or whoever could ask is gone).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Sleeps for `d`; true when shutdown was asked for meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if stopping(shutdown) {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => stopping(shutdown),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

#[cfg(test)]
mod tests;
