//! `lifeboat-agent reprotect`: reverse replication after a failover. The machine's own
//! disks are brought to what the failed-over disks at the target hold, moving only the
//! blocks that differ (see the appliance's `reverse` module for the protocol): for each
//! 16 MiB range of each disk, the agent posts the hashes of its 64 KiB blocks
//! (`POST /api/v1/reverse/diff`), writes the blocks the appliance answers with, and after
//! the last disk flushes them all and says the pass is done (`POST /api/v1/reverse/done`,
//! with where its numbering of batches stands, so forward replication resumes from there
//! after failback).
//!
//! It holds the journal's lock, so it never runs beside `lifeboat-agent run` (whose
//! hellos the appliance refuses while the machine is failed over anyway). One pass by
//! default; `--watch` repeats passes until failback's final pass is done.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use http::{HeaderMap, Method};
use lifeboat_api::{
    DiskCursor, REVERSE_BLOCK, REVERSE_MAX_BLOCKS, ReverseDiff, ReverseDone, ReverseStatus,
    reverse_block_hash,
};
use lifeboat_wire::Extent;

use crate::config::AgentConfig;
use crate::journal::Journal;

/// What a `reprotect` run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReverseReport {
    /// Passes completed.
    pub passes: u64,
    /// Bytes of disk compared, over all passes.
    pub compared_bytes: u64,
    /// Bytes of blocks received and written (zero extents count their length).
    pub received_bytes: u64,
    /// The last pass was failback's final one: the appliance makes the replicas anew and
    /// then takes forward replication (`lifeboat failback` says when it is done).
    pub failed_back: bool,
}

/// Runs reverse passes for the machine of `cfg`: one, or with `watch` one every
/// `every` until the appliance no longer asks for them.
pub fn reprotect(cfg: &AgentConfig, watch: bool, every: Duration) -> anyhow::Result<ReverseReport> {
    let reg = crate::registration::Registration::load(&cfg.state_dir)?;
    let disk_count = u32::try_from(cfg.disks.len())
        .context("more disks in the configuration than a 32-bit disk index can number")?;
    let journal =
        Journal::open(&cfg.state_dir.join(crate::layout::JOURNAL_DIR), disk_count, reg.machine)
            .context("the journal (is `lifeboat-agent run` still running? stop it first)")?;
    let client = lifeboat_net::Client::new(&reg.record.process_server_url, reg.tls()?)?
        .with_timeout(Duration::from_secs(120));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = ReverseReport::default();
    loop {
        let (status, _, body) = rt.block_on(client.request(
            Method::GET,
            "/api/v1/reverse",
            bytes::Bytes::new(),
            HeaderMap::new(),
        ))?;
        if !status.is_success() {
            bail!("the appliance answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let st: ReverseStatus = serde_json::from_slice(&body).context("GET /api/v1/reverse")?;
        if st.mode != "reverse" {
            if report.passes == 0 {
                tracing::info!("the appliance asks for no reverse replication: nothing to do");
            }
            return Ok(report);
        }
        if st.block_size != REVERSE_BLOCK {
            bail!(
                "the appliance compares {} byte blocks; this agent {REVERSE_BLOCK}",
                st.block_size
            );
        }
        let final_pass = st.final_pass;
        tracing::info!(pass = st.passes + 1, final_pass, "reverse pass starting");
        let mut received = 0;
        let mut files = Vec::new();
        for (index, path) in (0u32..).zip(&cfg.disks) {
            let size = crate::disk::Disk::open(path)?.size();
            match st.disks.iter().find(|d| d.index == index) {
                Some(d) if d.size == size => {}
                other => bail!(
                    "disk {index} ({}) has {size} bytes; the appliance knows it as {:?}: the configuration does not match the protected machine",
                    path.display(),
                    other.map(|d| d.size)
                ),
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("open {} for writing", path.display()))?;
            received += pass_disk(&rt, &client, &reg.machine, index, &f, size, path)?;
            report.compared_bytes += size;
            files.push((f, path));
        }
        for (f, path) in &files {
            f.sync_all().with_context(|| format!("flush {}", path.display()))?;
        }
        let mut next_sequences = Vec::new();
        for i in 0..disk_count {
            next_sequences.push(DiskCursor { index: i, next_sequence: journal.next_sequence(i)? });
        }
        let done = ReverseDone { final_pass, received_bytes: received, next_sequences };
        let (status, _, body) =
            rt.block_on(client.post_json("/api/v1/reverse/done", &done, HeaderMap::new()))?;
        if !status.is_success() {
            bail!("the appliance refused the pass: {status}: {}", String::from_utf8_lossy(&body));
        }
        report.passes += 1;
        report.received_bytes += received;
        tracing::info!(
            pass = st.passes + 1,
            final_pass,
            received_bytes = received,
            "reverse pass done"
        );
        if final_pass {
            report.failed_back = true;
            return Ok(report);
        }
        if !watch {
            return Ok(report);
        }
        std::thread::sleep(every);
    }
}

/// One disk of a pass; returns the bytes received.
fn pass_disk(
    rt: &tokio::runtime::Runtime,
    client: &lifeboat_net::Client,
    machine: &lifeboat_wire::MachineId,
    index: u32,
    f: &std::fs::File,
    size: u64,
    path: &Path,
) -> anyhow::Result<u64> {
    let block_len = REVERSE_BLOCK as usize;
    let range_len = block_len * REVERSE_MAX_BLOCKS;
    let mut buf = vec![0u8; range_len];
    let mut received = 0;
    let mut offset = 0;
    while offset < size {
        let len = usize::try_from(size - offset).map_or(range_len, |left| left.min(range_len));
        f.read_exact_at(&mut buf[..len], offset)
            .with_context(|| format!("read {} at {offset}", path.display()))?;
        let hashes = buf[..len].chunks(block_len).map(reverse_block_hash).collect();
        let diff = ReverseDiff { disk: index, offset, hashes };
        let (status, _, body) =
            rt.block_on(client.post_json("/api/v1/reverse/diff", &diff, HeaderMap::new()))?;
        if !status.is_success() {
            bail!(
                "reverse diff of disk {index} at {offset}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let batch =
            lifeboat_wire::decode(&body).context("the appliance's answer is not a batch")?;
        let h = batch.header();
        if h.machine != *machine || h.disk_index != index {
            bail!(
                "the appliance answered blocks of another disk ({} disk {})",
                h.machine,
                h.disk_index
            );
        }
        let end = offset + len as u64;
        for e in batch.extents() {
            if e.offset() < offset || e.end() > end {
                bail!("the appliance answered a block outside {offset}..{end}");
            }
            match e {
                Extent::Data { offset: at, data } => f.write_all_at(data, *at)?,
                Extent::Zero { offset: at, length } => {
                    // Within the range asked for (checked above), so it fits.
                    let len = usize::try_from(*length).context("a zero extent too long")?;
                    let zeros = vec![0u8; len];
                    f.write_all_at(&zeros, *at)?;
                }
            }
            received += e.length();
        }
        offset = end;
    }
    let _ = std::io::stderr().flush();
    Ok(received)
}
