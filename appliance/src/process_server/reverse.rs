//! Reverse replication after a failover (reprotect → failback): the original machine's
//! agent pulls, block by block, what differs between its own disks and the failed-over
//! disks at the target, and writes it into its disks.
//!
//! The agent hashes a range of one of its disks ([`REVERSE_BLOCK`] blocks, xxh3-128) and
//! posts the hashes (`POST /api/v1/reverse/diff`); the process server reads the same
//! range of the failed-over disk through the target plugin, hashes it the same way and
//! answers a batch (wire format v1) with the blocks whose hashes differ: data extents, or
//! zero extents where the failed-over disk reads as zeros. So only blocks that differ
//! cross the network — those the failed-over machine changed since the failover, and
//! those the source itself changed after the failover point — never a full copy while the
//! original disks exist. Both sides are read in full: the price of needing no change
//! tracking inside the failed-over VM.
//!
//! A pass is every disk from start to end, then `POST /api/v1/reverse/done` once the agent
//! flushed its disks. Reprotect ends with the first pass. Failback stops the failed-over
//! VM, freezes copies of its disks (a point, materialised), asks for a final pass over
//! those (`final_pass` in `GET /api/v1/reverse`) and, once it is done — it counts only if
//! it began at the first disk's start after the request and compared every byte — makes the
//! replicas from the same copies; replication goes forward again from the agent's
//! numbering (`failover.rs`).

use bytes::Bytes;
use lifeboat_api::{
    CompareAnswer, CompareBlocks, DiskSize, REVERSE_BLOCK, ReverseDiff, ReverseDone, ReverseStatus,
    reverse_block_hash,
};
use lifeboat_wire::{Batch, BatchHeader, MachineId};

use crate::process_server::{Kind, ProcessError, ProcessServer, call_failure};
use crate::store::State;

fn not_reverse(machine: MachineId) -> ProcessError {
    ProcessError::new(
        Kind::Conflict,
        "not-reprotected",
        format!("machine {machine} is not being reprotected: start `lifeboat reprotect` first"),
    )
}

/// Whether `machine` is in reverse replication into its own disks (by its agent). A machine
/// reprotected into another target is not: the master target writes those disks, and the
/// original machine's agent has nothing to pull.
fn in_reverse(state: &State, machine: MachineId) -> Result<bool, ProcessError> {
    Ok(state
        .failover_state(machine)?
        .is_some_and(|s| lifeboat_api::FailoverState::REVERSE.contains(&s))
        && state.reverse(machine)?.is_none_or(|r| r.destination.is_none()))
}

/// `GET /api/v1/reverse`.
pub fn status(state: &State, machine: MachineId) -> Result<ReverseStatus, ProcessError> {
    let disks =
        state.disks(machine)?.into_iter().map(|(index, size)| DiskSize { index, size }).collect();
    let (mode, passes, final_pass) = match state.reverse(machine)? {
        Some(r) if in_reverse(state, machine)? => {
            ("reverse", r.passes, r.final_requested && !r.final_done)
        }
        _ => ("forward", 0, false),
    };
    Ok(ReverseStatus { mode: mode.into(), passes, final_pass, block_size: REVERSE_BLOCK, disks })
}

/// Reads `blocks` [`REVERSE_BLOCK`] blocks of the target's disk `disk` (of `size` bytes)
/// from `offset`, the last one shorter at the disk's end; returns them and their length.
async fn read_blocks(
    ps: &ProcessServer,
    disk: &str,
    offset: u64,
    blocks: usize,
    size: u64,
) -> Result<(Vec<u8>, u64), ProcessError> {
    let len = (blocks as u64 * u64::from(REVERSE_BLOCK)).min(size - offset);
    // The request's check allows at most REVERSE_MAX_BLOCKS blocks, so this fits.
    let len32 = u32::try_from(len).map_err(|_| {
        ProcessError::new(
            Kind::Invalid,
            "invalid",
            format!("hashes: {blocks} blocks are more than one read of the target returns"),
        )
    })?;
    let data = {
        let mut t = ps.control_target().await?;
        t.read_extent(disk, offset, len32).await.map_err(call_failure)?
    };
    if data.len() as u64 != len {
        return Err(ProcessError::new(
            Kind::Internal,
            "short-read",
            format!("the target read {} of {len} bytes of {disk}", data.len()),
        ));
    }
    Ok((data, len))
}

/// `POST /api/v1/reverse/diff`: the encoded batch of the blocks that differ.
pub async fn diff(
    ps: &ProcessServer,
    state: &State,
    machine: MachineId,
    d: ReverseDiff,
) -> Result<Bytes, ProcessError> {
    if !in_reverse(state, machine)? {
        return Err(not_reverse(machine));
    }
    let size =
        state.disks(machine)?.into_iter().find(|(i, _)| *i == d.disk).map(|(_, s)| s).ok_or_else(
            || ProcessError::new(Kind::Invalid, "invalid", format!("disk: no disk {}", d.disk)),
        )?;
    d.check(size).map_err(|e| ProcessError::new(Kind::Invalid, "invalid", e))?;
    let fo = state.failovers(Some(machine))?.pop().ok_or_else(|| not_reverse(machine))?;
    // Failback's final pass reads its frozen copies; other passes the failed-over disks.
    let rev = state.reverse(machine)?.unwrap_or_default();
    let sources = if rev.source_disks.is_empty() { fo.disks } else { rev.source_disks };
    let suffix = format!("-d{}", d.disk);
    let source = sources.iter().find(|x| x.ends_with(&suffix)).cloned().ok_or_else(|| {
        ProcessError::new(
            Kind::Conflict,
            "no-failover-disk",
            format!("the failover has no disk {}", d.disk),
        )
    })?;
    let (data, len) = read_blocks(ps, &source, d.offset, d.hashes.len(), size).await?;
    let mid = machine;
    let mut builder =
        Batch::builder(BatchHeader { machine: mid, disk_index: d.disk, sequence: 0, tag: None });
    let mut sent = 0u64;
    for (i, want) in d.hashes.iter().enumerate() {
        let start = i * REVERSE_BLOCK as usize;
        let block = &data[start..(start + REVERSE_BLOCK as usize).min(data.len())];
        if reverse_block_hash(block).eq_ignore_ascii_case(want) {
            continue;
        }
        let offset = d.offset + start as u64;
        let r = if block.iter().all(|&x| x == 0) {
            builder.push_zero(offset, block.len() as u64)
        } else {
            sent += block.len() as u64;
            builder.push_data(offset, block)
        };
        r.map_err(|e| {
            ProcessError::new(Kind::Internal, "internal", format!("building the answer: {e}"))
        })?;
    }
    let first = state.disks(machine)?.first().map(|x| x.0) == Some(d.disk) && d.offset == 0;
    state.reverse_progress(machine, first, len, sent)?;
    Ok(Bytes::from(lifeboat_wire::encode(&builder.build())))
}

/// `POST /api/v1/compare`: which blocks of a range of the machine's replica differ from
/// the hashes the agent sent, for a comparison the master target asked for (logs of the
/// disk were lost at the target). The same hashing as reverse replication, in the forward
/// direction: only hashes cross the network, and then only the blocks that differ.
pub async fn compare(
    ps: &ProcessServer,
    state: &State,
    machine: MachineId,
    c: CompareBlocks,
) -> Result<CompareAnswer, ProcessError> {
    if !state.compares(machine)?.iter().any(|x| x.0 == c.disk && x.1 == c.token && x.2.is_none()) {
        return Err(ProcessError::new(
            Kind::Conflict,
            "no-compare",
            format!("no comparison {} of disk {} is open", c.token, c.disk),
        ));
    }
    let size =
        state.disks(machine)?.into_iter().find(|(i, _)| *i == c.disk).map(|(_, s)| s).ok_or_else(
            || ProcessError::new(Kind::Invalid, "invalid", format!("disk: no disk {}", c.disk)),
        )?;
    c.check(size).map_err(|e| ProcessError::new(Kind::Invalid, "invalid", e))?;
    let mid = machine;
    let replica = crate::logobj::disk_id(mid, c.disk);
    let (data, len) = read_blocks(ps, &replica, c.offset, c.hashes.len(), size).await?;
    let b = u64::from(REVERSE_BLOCK);
    let differ = (0u32..)
        .zip(&c.hashes)
        .filter(|(i, want)| {
            let start = *i as usize * REVERSE_BLOCK as usize;
            let block = &data[start..(start + REVERSE_BLOCK as usize).min(data.len())];
            !reverse_block_hash(block).eq_ignore_ascii_case(want)
        })
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    state.count(&[
        (crate::store::Counter::ComparedBytes, len),
        (crate::store::Counter::ComparedDifferingBytes, differ.len() as u64 * b),
    ])?;
    Ok(CompareAnswer { differ })
}

/// `POST /api/v1/reverse/done`.
pub fn done(state: &State, machine: MachineId, d: ReverseDone) -> Result<(), ProcessError> {
    if !in_reverse(state, machine)? {
        return Err(not_reverse(machine));
    }
    let known = state.disks(machine)?;
    for k in &known {
        if !d.next_sequences.iter().any(|c| c.index == k.0) {
            return Err(ProcessError::new(
                Kind::Invalid,
                "invalid",
                format!("next_sequences: no cursor for disk {}", k.0),
            ));
        }
    }
    for (i, c) in d.next_sequences.iter().enumerate() {
        let bad = |why: &str| {
            ProcessError::new(Kind::Invalid, "invalid", format!("next_sequences[{i}]: {why}"))
        };
        if !known.iter().any(|k| k.0 == c.index) {
            return Err(bad("no such disk"));
        }
        if d.next_sequences[..i].iter().any(|o| o.index == c.index) {
            return Err(bad("the disk is listed twice"));
        }
        if c.next_sequence > i64::MAX as u64 {
            return Err(bad("next_sequence is out of range"));
        }
    }
    let json = serde_json::to_string(&d.next_sequences)
        .map_err(|e| ProcessError::new(Kind::Internal, "internal", e.to_string()))?;
    state.reverse_pass_done(machine, d.final_pass, &json)?;
    tracing::info!(%machine, final_pass = d.final_pass, received_bytes = d.received_bytes, "reverse pass done");
    Ok(())
}
