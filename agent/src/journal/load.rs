//! Opening the journal: taking its lock, and loading each disk's queue from its files, every
//! batch checked (see the module documentation of [`crate::journal`] for what is repaired and
//! what is an error).

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use lifeboat_wire::MachineId;

use super::{
    BATCH_EXT, DiskQueue, Entry, Inner, Journal, JournalError, NEXT_POINT, NEXT_SEQUENCE, RESERVED,
    RESYNC, batch_name, io_err, read_counter, sync_dir, write_counter,
};

impl Journal {
    /// Opens (or creates) the journal in `dir` for a machine with `disks` disks, checking
    /// every batch file; see the module documentation for what is repaired and what is an
    /// error.
    pub fn open(dir: &Path, disks: u32, machine: MachineId) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "create the journal directory"))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open"))?;
        lifeboat_common::lock::lock_exclusive(&lock)
            .map_err(|_| JournalError::Locked { path: lock_path.clone() })?;

        let point_path = dir.join(NEXT_POINT);
        let existing = point_path.exists();
        let next_point = match read_counter(&point_path)? {
            Some(n) => n,
            None => {
                write_counter(&point_path, 1)?;
                1
            }
        };
        let mut queues = Vec::with_capacity(disks as usize);
        let mut bytes = 0;
        for d in 0..disks {
            let q = Self::load_disk(dir, d, machine, existing)?;
            bytes += q.entries.iter().map(|e| e.len).sum::<u64>();
            queues.push(q);
        }
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            dir: dir.to_path_buf(),
            machine,
            inner: Mutex::new(Inner {
                disks: queues,
                next_point,
                bytes,
                mem_bytes: 0,
                mem_budget: 0,
                last_ack: std::time::Instant::now(),
                version: 0,
            }),
            room: Condvar::new(),
            changed,
            _lock: lock,
        })
    }

    fn load_disk(
        root: &Path,
        disk: u32,
        machine: MachineId,
        journal_existed: bool,
    ) -> Result<DiskQueue, JournalError> {
        let dir = root.join(format!("d{disk}"));
        let mut resync = None;
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
            sync_dir(root)?;
            if journal_existed {
                tracing::warn!(
                    dir = %dir.display(),
                    disk,
                    "the journal has no directory for this disk (new disk, or deleted to recover): the whole disk is compared again and what differs is re-sent"
                );
                write_counter(&dir.join(RESYNC), 1)?;
                resync = Some(1);
            }
        } else {
            resync = read_counter(&dir.join(RESYNC))?;
        }
        let persisted_next = read_counter(&dir.join(NEXT_SEQUENCE))?.unwrap_or(0);

        let mut seqs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "list"))? {
            let entry = entry.map_err(io_err(&dir, "list"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // An append or counter update that never reached its rename.
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err(&p, "remove the leftover"))?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(&format!(".{BATCH_EXT}")) {
                match stem.parse::<u64>() {
                    Ok(seq) if stem.len() == 20 => seqs.push(seq),
                    _ => {
                        return Err(JournalError::Misplaced {
                            path: entry.path(),
                            dir: dir.clone(),
                            what: "is not named <20-digit sequence>.batch".into(),
                        });
                    }
                }
            }
        }
        seqs.sort_unstable();
        let mut entries = VecDeque::with_capacity(seqs.len());
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(batch_name(seq));
            let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
            let header = match lifeboat_wire::decode(&bytes) {
                Ok(batch) => *batch.header(),
                Err(source) if i + 1 == seqs.len() => {
                    tracing::warn!(
                        file = %path.display(),
                        "removing a torn batch at the end of the journal ({source}): it was being written when the agent stopped; its changes are collected again"
                    );
                    fs::remove_file(&path).map_err(io_err(&path, "remove the torn batch"))?;
                    sync_dir(&dir)?;
                    break;
                }
                Err(source) => return Err(JournalError::Corrupt { path, dir, source }),
            };
            let misplaced = |what: String| JournalError::Misplaced {
                path: path.clone(),
                dir: dir.clone(),
                what,
            };
            if header.machine != machine {
                return Err(misplaced(format!(
                    "belongs to machine {}, this agent is machine {machine}",
                    header.machine
                )));
            }
            if header.disk_index != disk || header.sequence != seq {
                return Err(misplaced(format!(
                    "holds disk {} sequence {}, its name says disk {disk} sequence {seq}",
                    header.disk_index, header.sequence
                )));
            }
            if let Some(prev) = entries.back().map(|e: &Entry| e.seq)
                && seq != prev + 1
            {
                return Err(JournalError::Gap { dir, missing: prev + 1 });
            }
            entries.push_back(Entry { seq, len: bytes.len() as u64, mem: None });
        }
        let next_seq = entries.back().map_or(0, |e| e.seq + 1).max(persisted_next);
        let reserved = read_counter(&dir.join(RESERVED))?.unwrap_or(0).max(next_seq);
        let unsure = reserved > next_seq;
        Ok(DiskQueue { dir, next_seq, persisted_next, reserved, entries, resync, unsure })
    }
}
