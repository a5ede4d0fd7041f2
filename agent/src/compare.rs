//! Comparing a disk with its replica by block hashes, when the appliance asks for it.
//!
//! The master target asks (`compare` in the answer of `GET /api/v1/trust`) when logs of a
//! disk went missing at the target: the replica then lacks writes this agent sent and
//! forgot, and neither side knows which. It asks too after failing a machine back into a
//! new VM at another target: the replica was made anew from disks this agent never read. Rather than sending the whole disk again, the
//! agent reads its disk in ranges of [`REVERSE_MAX_BLOCKS`] blocks of [`REVERSE_BLOCK`]
//! bytes, posts their hashes (`POST /api/v1/compare`, the hashing of reverse replication),
//! and marks the blocks whose replica differs as uncertain in its tracker
//! ([`crate::tracker::Tracker::invalidate`], durable). The cycle that runs right after the
//! comparison sends exactly those blocks; once it has tagged its point, the agent says so
//! (`POST /api/v1/compare/done` with that point), and the master target cuts points again
//! from that one on.
//!
//! Blocks still on their way to the replica when it is read may be reported as differing:
//! they are sent once more, never missed. A comparison interrupted by an error is redone
//! whole at the next cycle (the request stays open at the appliance until it is done).

use std::sync::{Arc, Mutex};

use lifeboat_api::{
    CompareAnswer, CompareBlocks, CompareDone, CompareRequest, REVERSE_BLOCK, REVERSE_MAX_BLOCKS,
    reverse_block_hash,
};

use crate::disk::Disk;
use crate::tracker::Tracker;

/// Talks to the appliance for [`compare_disk`].
pub trait CompareClient: Send {
    /// `POST /api/v1/compare`: the indexes of the blocks whose replica differs.
    fn differ(&self, c: &CompareBlocks) -> Result<Vec<u32>, String>;
    /// `POST /api/v1/compare/done`.
    fn done(&self, d: &CompareDone) -> Result<(), String>;
}

/// The comparisons the appliance asked for and the client to answer them with.
pub struct Comparisons {
    /// Asked for and not yet compared (filled by the trust check).
    pub pending: Arc<Mutex<Vec<CompareRequest>>>,
    /// Compared, waiting for the point of the cycle that sent the differences.
    pub compared: Vec<CompareRequest>,
    /// The appliance.
    pub client: Box<dyn CompareClient>,
}

impl std::fmt::Debug for Comparisons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comparisons").field("compared", &self.compared).finish_non_exhaustive()
    }
}

/// Adds requests to `pending`, each once (a request the trust check sees again while it is
/// being compared is not queued twice).
pub fn queue(pending: &Mutex<Vec<CompareRequest>>, requests: &[CompareRequest]) {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    for r in requests {
        if !p.contains(r) {
            tracing::warn!(
                disk = r.disk,
                "the appliance asked to compare this disk with its replica (logs were lost at the target, or a failback made the replica anew): comparing by block hashes at the next cycle"
            );
            p.push(*r);
        }
    }
}

/// Compares the whole of `disk` (index `index`) with its replica for request `token`,
/// invalidating in `tracker` every block that differs. Returns the bytes that differ.
pub fn compare_disk(
    disk: &Disk,
    index: u32,
    token: u64,
    tracker: &mut dyn Tracker,
    client: &dyn CompareClient,
) -> Result<u64, String> {
    let b = u64::from(REVERSE_BLOCK);
    let block_len = REVERSE_BLOCK as usize;
    let range_len = block_len * REVERSE_MAX_BLOCKS;
    let size = disk.size();
    let mut buf = vec![0u8; range_len];
    let mut differing = 0;
    let mut offset = 0;
    while offset < size {
        let len = usize::try_from(size - offset).map_or(range_len, |left| left.min(range_len));
        disk.read_at(offset, &mut buf[..len]).map_err(|e| e.to_string())?;
        let hashes = buf[..len].chunks(block_len).map(reverse_block_hash).collect::<Vec<_>>();
        let n = hashes.len();
        let c = CompareBlocks { disk: index, token, offset, hashes };
        for i in client.differ(&c)? {
            if i as usize >= n {
                return Err(format!("the appliance named block {i} of {n}"));
            }
            let at = offset + u64::from(i) * b;
            tracker.invalidate(at, b.min(size - at)).map_err(|e| e.to_string())?;
            differing += b.min(size - at);
        }
        offset += len as u64;
    }
    Ok(differing)
}

/// [`CompareClient`] over the process server's mutual TLS.
pub struct HttpCompareClient {
    /// The process server.
    pub url: String,
    /// The agent's current TLS identity and trust.
    pub tls: tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>,
    /// Where requests run (the cycle thread is not async).
    pub runtime: tokio::runtime::Handle,
}

impl HttpCompareClient {
    fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<bytes::Bytes, String> {
        let tls = self.tls.borrow().clone();
        let client = lifeboat_net::Client::new(&self.url, tls)
            .map_err(|e| e.to_string())?
            .with_timeout(std::time::Duration::from_secs(120));
        let (status, _, answer) = self
            .runtime
            .block_on(client.post_json(path, body, http::HeaderMap::new()))
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{path} answered {status}: {}",
                crate::sender::error_message(&answer)
            ));
        }
        Ok(answer)
    }
}

impl CompareClient for HttpCompareClient {
    fn differ(&self, c: &CompareBlocks) -> Result<Vec<u32>, String> {
        let body = self.post("/api/v1/compare", c)?;
        let a: CompareAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("the compare answer is not a CompareAnswer: {e}"))?;
        Ok(a.differ)
    }

    fn done(&self, d: &CompareDone) -> Result<(), String> {
        self.post("/api/v1/compare/done", d).map(|_| ())
    }
}
