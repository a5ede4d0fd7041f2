//! Choosing and setting up each disk's change tracker: eBPF block-layer tracking where it can
//! be loaded and the disk is a block device, the hash scan otherwise.

use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;
use std::sync::Arc;

use lifeboat_api::DiskDescriptor;
use lifeboat_wire::MachineId;

use super::{RunError, disk_id};
use crate::config::{AgentConfig, TrackerChoice};
use crate::cycle::DiskSlot;
use crate::layout::map_path;
use crate::tracker::ebpf::{Bpf, Ebpf, words_for};
use crate::tracker::{HashScan, HashScanConfig, Tracker, TrackerError};

/// Loads (or re-opens, when pinned) the eBPF tracker for the machine's block devices. `Err`
/// holds why the hash scan is used instead; with `tracker = "ebpf"` that is an error.
pub(super) fn load_bpf(
    cfg: &AgentConfig,
    machine: MachineId,
    disks: &[DiskDescriptor],
) -> Result<Result<Arc<Bpf>, String>, RunError> {
    if cfg.tracker == TrackerChoice::Hashscan {
        return Ok(Err("configured (tracker = \"hashscan\")".into()));
    }
    let sizes: Vec<u64> = disks
        .iter()
        .filter(|d| std::fs::metadata(&d.path).is_ok_and(|m| m.file_type().is_block_device()))
        .map(|d| d.size)
        .collect();
    if sizes.is_empty() {
        return Ok(Err("no disk is a block device".into()));
    }
    match Bpf::open_or_load(&format!("agent-{machine}"), words_for(&sizes)) {
        Ok((bpf, reused)) => {
            if reused {
                tracing::info!(dir = %bpf.dir().display(), "eBPF write tracking went on while the agent was stopped: reusing the pinned tracker");
            }
            Ok(Ok(Arc::new(bpf)))
        }
        Err(e) if cfg.tracker == TrackerChoice::Ebpf => Err(RunError::Tracker {
            index: 0,
            source: TrackerError::Config { tracker: "ebpf", reason: e.to_string() },
        }),
        Err(e) => Ok(Err(format!(
            "the eBPF tracker cannot be loaded here ({e}); it needs root, a kernel with BTF (CONFIG_DEBUG_INFO_BTF) and tracing allowed"
        ))),
    }
}

/// One [`DiskSlot`] per configured disk, each with its tracker (see [`tracker_for`]); `bpf`
/// is what [`load_bpf`] answered.
pub(super) fn open_slots(
    cfg: &AgentConfig,
    machine: MachineId,
    bpf: &Result<Arc<Bpf>, String>,
) -> Result<Vec<DiskSlot>, RunError> {
    let mut slots = Vec::with_capacity(cfg.disks.len());
    for (index, path) in (0u32..).zip(&cfg.disks) {
        let map = map_path(&cfg.state_dir, index);
        let tracker = tracker_for(cfg, machine, bpf, index, path, &map)?;
        slots.push(DiskSlot { index, path: path.clone(), tracker, baseline_path: Some(map) });
    }
    Ok(slots)
}

/// The hash-scan tracker of disk `index`, its map at `map`, reading at the configured rate.
fn hash_scan(
    cfg: &AgentConfig,
    machine: MachineId,
    index: u32,
    map: &Path,
) -> Result<HashScan, RunError> {
    let mut hcfg = HashScanConfig::new(map);
    hcfg.disk_id = disk_id(machine, index);
    let mut hs = HashScan::new(hcfg).map_err(|source| RunError::Tracker { index, source })?;
    hs.set_read_rate(cfg.read_rate());
    Ok(hs)
}

/// The tracker of disk `index` at `path`: eBPF when it is loaded and the disk is a block
/// device, else the hash scan, saying which and why. With `tracker = "ebpf"`, a disk that
/// cannot be tracked that way is an error.
fn tracker_for(
    cfg: &AgentConfig,
    machine: MachineId,
    bpf: &Result<Arc<Bpf>, String>,
    index: u32,
    path: &Path,
    map: &Path,
) -> Result<Box<dyn Tracker>, RunError> {
    let hs = hash_scan(cfg, machine, index, map)?;
    let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    Ok(match (bpf, is_block) {
        (Ok(bpf), true) => match Ebpf::new(hs, bpf.clone(), path) {
            Ok(t) => {
                tracing::info!(disk = index, path = %path.display(), tracker = "ebpf", "change tracker: eBPF block-layer tracking (no kernel module); pinned in {}", bpf.dir().display());
                Box::new(t)
            }
            Err(e) => {
                if cfg.tracker == TrackerChoice::Ebpf {
                    return Err(RunError::Tracker { index, source: e });
                }
                tracing::warn!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because eBPF tracking of this disk failed: {e}");
                Box::new(hash_scan(cfg, machine, index, map)?)
            }
        },
        (Ok(_), false) | (Err(_), false) => {
            if cfg.tracker == TrackerChoice::Ebpf {
                return Err(RunError::Tracker {
                    index,
                    source: TrackerError::Config {
                        tracker: "ebpf",
                        reason: format!(
                            "{} is not a block device (tracker = \"ebpf\" needs block devices; use \"auto\" to fall back to the hash scan)",
                            path.display()
                        ),
                    },
                });
            }
            let why = match cfg.tracker {
                TrackerChoice::Hashscan => "configured (tracker = \"hashscan\")",
                _ => {
                    "it is an image file, not a block device (block-layer tracking sees block devices only)"
                }
            };
            tracing::info!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because {why}");
            Box::new(hs)
        }
        (Err(why), true) => {
            tracing::info!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because {why}");
            Box::new(hs)
        }
    })
}
